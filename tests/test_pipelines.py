"""The pipelines' one interface (scl.pipelines.Pipeline): every command's pipeline builds a config,
runs, and summarises through it, and the report takes its captions."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import pytest
from rich.console import Console

from scl import pipelines
from scl.errors import ConfigError
from scl.report import pipeline_of


@pytest.mark.parametrize("name", sorted(pipelines.MODULES))
def test_every_pipeline_provides_the_interface_under_the_name_it_records(name):
    # prepare / execute
    pipeline = pipelines.get(name)
    # assert
    assert pipeline.NAME == name and pipeline_of({"pipeline": name}) == name
    assert isinstance(pipeline.CAPTIONS, Mapping)
    for function in ("build_config", "run", "summary"):
        assert callable(getattr(pipeline, function)), f"{name} has no {function}"
    run = inspect.signature(pipeline.run).parameters
    assert list(run)[:2] == ["config", "out"] and {"console", "show_progress"} <= set(run)
    config = pipeline.build_config(quick=True, assignments=["seed=3"])
    assert config["seed"] == 3


@pytest.mark.parametrize("name", sorted(pipelines.MODULES))
def test_every_summary_prints_for_a_run_that_recorded_little(name):
    # `scl evaluate` on a run without attacks, or a run of an earlier version: no key may be assumed
    console = Console(record=True, width=120)
    for item in pipelines.get(name).summary({"pipeline": name}):
        console.print(item)
    assert console.export_text().strip() != ""


def test_an_unknown_pipeline_is_named_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown pipeline 'nope'; scl has \['bench_privacy', 'classification'"):
        pipelines.get("nope")


def test_a_task_network_checkpoint_of_the_wrong_kind_or_shape_names_its_setting(tmp_path):
    # prepare
    import scl
    from scl.models import SmallCNN
    from scl.pipelines import stages

    path = tmp_path / "n.safetensors"
    scl.save(SmallCNN(1, 10, width=4), path)
    # execute / assert: the right kind loads; another channel count, class count or kind is refused
    assert isinstance(stages.load_task_network(path, SmallCNN, channels=1, num_classes=10, option="--network"),
                      SmallCNN)
    with pytest.raises(ConfigError, match=r"--network '.*n.safetensors' must be a SmallCNN for 3 channels and 10"):
        stages.load_task_network(path, SmallCNN, channels=3, num_classes=10, option="--network")
    with pytest.raises(ConfigError, match=r"must be a SmallCNN for 1 channels and 4 classes"):
        stages.load_task_network(path, SmallCNN, channels=1, num_classes=4, option="--network")
    from scl.models.detector import CenterNet

    with pytest.raises(ConfigError, match=r"detector.checkpoint '.*' must be a CenterNet"):
        stages.load_task_network(path, CenterNet, channels=1, num_classes=10, option="detector.checkpoint")


@pytest.mark.parametrize("name", sorted(pipelines.MODULES))
def test_a_runs_config_json_builds_the_same_config_again(tmp_path, name):
    # config.json of a run, passed back as --config, must give the run's config (to re-run it)
    from scl.runs import read_run, write_results

    pipeline = pipelines.get(name)
    config = pipeline.build_config(quick=True, assignments=["seed=5"])
    write_results(tmp_path, config, {"pipeline": name})
    saved, _ = read_run(tmp_path)
    assert saved == config
    assert pipeline.build_config(config_file=tmp_path / "config.json") == config


def test_federated_configs_are_checked_by_classifications_checks_without_its_other_sections():
    # federated shares classification's network, layer and stage1 sections, and has no attacks,
    # budget or gate: the shared checks run on what it has, nothing is filled in to satisfy them
    from scl.pipelines.federated import task

    config = task.build_config(quick=True)
    assert not {"attacks", "utility", "gated", "stage2"} & set(config)
    with pytest.raises(ConfigError, match=r"stage1.lam must be a number >= 0, but got -1"):
        task.build_config(assignments=["stage1.lam=-1"])
    with pytest.raises(ConfigError, match=r"layer.kind must be one of \['additive', 'conv'\], but got 'dense'"):
        task.build_config(assignments=["layer.kind=dense"])
    with pytest.raises(ConfigError, match=r"network.epochs must be a positive integer, but got 0"):
        task.build_config(assignments=["network.epochs=0"])


def test_the_terminal_privacy_table_formats_values_as_the_report_does():
    # prepare: a release with a non-finite measure (an attack that failed)
    from scl.metrics import DECODER_PSNR, DECODER_SSIM, REID_TOP1
    from scl.report import format_value

    metrics = {"pipeline": "classification", "accuracy": {"clean": 0.95, "gated": 0.94},
               "privacy": {"gated": {REID_TOP1: 0.031, DECODER_SSIM: float("nan"), DECODER_PSNR: 13.14}}}
    # execute
    console = Console(record=True, width=160)
    for item in pipelines.get("classification").summary(metrics):
        console.print(item)
    text = console.export_text()
    # assert: percent, dB and a dash, never "nan"
    assert "Decoder inversion, SSIM" in text and "3.1%" in text and "13.1 dB" in text
    assert "nan" not in text.lower()
    assert format_value(float("nan"), "pct") == format_value(None) == "—"
