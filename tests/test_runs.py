"""The run folder (scl.runs): written atomically, its log resumed, and a run's label-free
obfuscator and recorded shape read back, with errors that say what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import scl
from scl.errors import CheckpointError, ConfigError
from scl.runs import (
    CHECKPOINTS,
    RunLog,
    load_checkpoint,
    load_label_free,
    read_run,
    recorded_shape,
    run_folder,
    write_log,
    write_results,
)

C = 3


def _run(tmp_path: Path, *, gated: bool, shape: list[int] | None = (1, 4, 4)) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    layer = scl.StochasticConditionalAdditive((1, 4, 4), C)
    scl.save(scl.Obfuscator(layer, scl.SoftSelection(C)), run / "checkpoints" / CHECKPOINTS["obfuscator"])
    if gated:
        scl.save(scl.GatedSelection(C, 1), run / "checkpoints" / CHECKPOINTS["gated"])
    if shape is not None:
        (run / "metrics.json").write_text(json.dumps({"input_shape": list(shape)}))
    return run


def test_run_folder_leaves_nothing_when_interrupted(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), run_folder(out) as folder:
        (folder / "metrics.json").write_text("{}")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_run_folder_appears_whole_on_success(tmp_path):
    out = tmp_path / "run"
    with run_folder(out) as folder:
        (folder / "metrics.json").write_text("{}")
        assert not out.exists()  # nothing half-written under the final name
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "figures", "metrics.json"]


def test_run_folder_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        with run_folder(tmp_path / "run"):
            pass
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


def test_a_resumed_log_goes_on_from_log_txt(tmp_path):
    log = RunLog()
    log("first")
    write_log(tmp_path, log)
    resumed = RunLog.resume(tmp_path)
    resumed("second")
    assert [line.split(" ", 1)[1] for line in resumed.lines] == ["first", "second"]
    assert RunLog.resume(tmp_path / "elsewhere").lines == []


def test_the_label_free_obfuscator_is_the_gated_one_when_the_run_has_it(tmp_path):
    obfuscator, selection = load_label_free(_run(tmp_path, gated=True))
    assert selection == "gated" and isinstance(obfuscator.selection, scl.GatedSelection)
    assert not obfuscator.training
    soft, selection = load_label_free(tmp_path / "run", "soft")
    assert selection == "soft" and isinstance(soft.selection, scl.SoftSelection)
    with torch.no_grad():
        assert obfuscator(torch.rand(2, 1, 4, 4)).shape == (2, 1, 4, 4)


def test_without_a_gated_checkpoint_soft_is_loaded_and_gated_is_refused(tmp_path):
    run = _run(tmp_path, gated=False)
    assert load_label_free(run)[1] == "soft"
    with pytest.raises(ConfigError, match="no checkpoints/gated.safetensors; use --selection soft"):
        load_label_free(run, "gated")
    with pytest.raises(ConfigError, match="selection must be 'soft' or 'gated', but got 'hard'"):
        load_label_free(run, "hard")


def test_a_folder_without_an_obfuscator_or_holding_another_module_is_explained(tmp_path):
    with pytest.raises(ConfigError, match=r"has no checkpoints/obfuscator.safetensors; pass a run folder written "
                                          r"by `scl train` or `scl demo`$"):
        load_label_free(tmp_path)
    # scl export also takes a checkpoint file, and says so
    with pytest.raises(ConfigError, match=r"`scl demo`, or an obfuscator checkpoint \(.safetensors\)$"):
        load_label_free(tmp_path, instead="an obfuscator checkpoint (.safetensors)")
    run = _run(tmp_path, gated=True)
    (run / "checkpoints" / CHECKPOINTS["gated"]).replace(run / "checkpoints" / CHECKPOINTS["obfuscator"])
    with pytest.raises(CheckpointError, match="holds a GatedSelection, not an Obfuscator"):
        load_label_free(run, "soft")


def test_the_recorded_shape_is_read_or_none(tmp_path):
    assert recorded_shape(_run(tmp_path, gated=False)) == (1, 4, 4)
    assert recorded_shape(tmp_path / "nowhere") is None
    (tmp_path / "run" / "metrics.json").write_text("{not json")
    assert recorded_shape(tmp_path / "run") is None


def test_results_written_are_read_back_and_a_missing_config_is_explained(tmp_path):
    # prepare
    folder = tmp_path / "run"
    folder.mkdir()
    # execute
    write_results(folder, {"seed": 3}, {"pipeline": "classification", "accuracy": {"clean": 0.9}})
    config, metrics = read_run(folder)
    # assert
    assert config == {"seed": 3} and metrics["accuracy"] == {"clean": 0.9}
    (folder / "metrics.json").unlink()
    assert read_run(folder) == ({"seed": 3}, {})  # a run still training has no metrics yet
    with pytest.raises(ConfigError, match=r"is not a run folder \(no config.json\); run `scl train`"):
        read_run(tmp_path / "elsewhere")


def test_a_checkpoint_is_loaded_by_role_or_its_absence_named(tmp_path):
    run = _run(tmp_path, gated=False)
    assert isinstance(load_checkpoint(run, "obfuscator"), scl.Obfuscator)
    with pytest.raises(ConfigError, match=r"has no checkpoints/gated.safetensors; the run is incomplete"):
        load_checkpoint(run, "gated")
