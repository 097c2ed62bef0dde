"""The federated procedure (spec §2.3, §2.3.1): schedule, screening, partitions, engines, faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from scl.data.partition import dirichlet_partition, iid_partition, partition, share_order
from scl.errors import ConfigError
from scl.pipelines import federated, stages
from scl.pipelines.federated import task
from scl.pipelines.federated.screening import screen, screening_mask

# A tiny run: two clients, shares 5% and 10%, one round per variant, a few optimisation steps.
TINY = {
    "network": {"epochs": 1},
    "stage1": {"epochs": 1},
    "federated": {"clients": 2, "max_share": 0.1, "rounds": 1, "min_steps": 4, "target_accuracy": 1.0},
}


def tiny(**federated_overrides: object) -> dict:
    overrides = json.loads(json.dumps(TINY))
    overrides["federated"].update(federated_overrides)
    return federated.build_config(overrides=overrides)


# -- the share schedule -----------------------------------------------------------------------------
def test_schedule_grows_by_step_up_to_the_maximum() -> None:
    config = federated.build_config(overrides={"federated": {"start": 0.05, "step": 0.05, "max_share": 0.3}})

    schedule = federated.shares(config)

    assert schedule == [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]


def test_schedule_with_a_maximum_between_steps_stops_below_it() -> None:
    config = federated.build_config(overrides={"federated": {"start": 0.05, "step": 0.1, "max_share": 0.3}})

    assert federated.shares(config) == [0.05, 0.15, 0.25]


def test_clean_shares_are_nested_and_stratified() -> None:
    config = tiny()
    data = task.prepare_data(config)

    small, large = data.clean_indices(0.05), data.clean_indices(0.1)

    assert set(small.tolist()) <= set(large.tolist())
    counts = torch.bincount(data.train.y[large], minlength=10)
    assert int(counts.max() - counts.min()) <= 2  # a stratified prefix: within a sample or two per class


def test_the_run_stops_when_the_target_accuracy_is_reached(tmp_path: Path) -> None:
    config = tiny(engine="local", target_accuracy=0.0, ablation=False)

    _, metrics = federated.run(config, tmp_path / "run", show_progress=False)

    assert [s["p"] for s in metrics["stages"]] == [0.05]
    assert metrics["target_reached"] is True


def test_invalid_config_values_are_explained() -> None:
    with pytest.raises(ConfigError, match="federated.engine must be one of"):
        federated.build_config(overrides={"federated": {"engine": "grpc"}})
    with pytest.raises(ConfigError, match="federated.screening.share must be a number in"):
        federated.build_config(assignments=["federated.screening.share=1.5"])
    with pytest.raises(ConfigError, match="federated.max_share"):
        federated.build_config(overrides={"federated": {"start": 0.2, "max_share": 0.1}})
    with pytest.raises(ConfigError, match="layer.pre='residual' is not supported by the federated"):
        federated.build_config(assignments=["layer.pre=residual"])


# -- random screening (§2.3.1) ------------------------------------------------------------------------
def test_screening_hides_the_configured_share_in_square_patches() -> None:
    generator = torch.Generator().manual_seed(0)

    mask = screening_mask(64, 16, 16, share=0.25, patch=4, generator=generator)

    assert mask.shape == (64, 1, 16, 16)
    hidden = 1 - mask.mean(dim=(1, 2, 3))
    assert torch.allclose(hidden, torch.full((64,), 0.25))  # 4 of 16 patches per sample
    blocks = mask.view(64, 1, 4, 4, 4, 4).permute(0, 1, 2, 4, 3, 5).reshape(64, 16, 16)
    assert bool(((blocks == 0).all(-1) | (blocks == 1).all(-1)).all())  # each 4x4 patch all hidden or all shown


def test_screening_masks_are_fresh_at_every_iteration() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.ones(32, 3, 16, 16)

    first = screen(x, share=0.5, patch=4, generator=generator)
    second = screen(x, share=0.5, patch=4, generator=generator)

    assert not torch.equal(first, second)
    assert not torch.equal(first[0], first[1])  # and different per sample
    assert torch.equal(first[:, 0], first[:, 2])  # the same pixels hidden in every channel


def test_screening_share_holds_for_partial_patches_within_tolerance() -> None:
    mask = screening_mask(200, 15, 15, share=0.3, patch=4, generator=torch.Generator().manual_seed(1))

    assert abs(float(1 - mask.mean()) - 0.3) < 0.05


def test_screening_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="share must be in"):
        screen(torch.ones(1, 1, 8, 8), share=1.5, patch=2)
    with pytest.raises(ConfigError, match="patch size must be a positive int"):
        screen(torch.ones(1, 1, 8, 8), share=0.2, patch=0)
    assert torch.equal(screen(torch.ones(2, 1, 8, 8), share=0.0, patch=2), torch.ones(2, 1, 8, 8))


# -- partitions --------------------------------------------------------------------------------------
def _assert_exact_cover(parts: list[torch.Tensor], n: int) -> None:
    everything = torch.cat(parts)
    assert len(everything) == n
    assert torch.equal(everything.sort().values, torch.arange(n))


def test_iid_partition_is_balanced_and_covers_every_sample_once() -> None:
    parts = iid_partition(1001, 4, seed=3)

    _assert_exact_cover(parts, 1001)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_partition_is_skewed_and_covers_every_sample_once() -> None:
    labels = torch.arange(10).repeat(100)

    parts = dirichlet_partition(labels, 5, alpha=0.1, seed=0)

    _assert_exact_cover(parts, 1000)
    shares = torch.stack([torch.bincount(labels[p], minlength=10).float() / len(p) for p in parts])
    assert float(shares.max(dim=1).values.mean()) > 0.4  # each client dominated by a few classes
    iid = torch.stack([torch.bincount(labels[p], minlength=10).float() / len(p) for p in iid_partition(1000, 5)])
    assert float(iid.max(dim=1).values.mean()) < 0.2


def test_partitions_are_seeded() -> None:
    labels = torch.arange(10).repeat(50)

    for kind in ("iid", "dirichlet"):
        a = partition(labels, 3, kind, seed=7)
        b = partition(labels, 3, kind, seed=7)
        c = partition(labels, 3, kind, seed=8)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_partition_errors_say_what_to_change() -> None:
    with pytest.raises(ConfigError, match="use fewer clients"):
        iid_partition(3, 5)
    with pytest.raises(ConfigError, match="partition must be one of"):
        partition(torch.zeros(10, dtype=torch.long), 2, "pathological")
    with pytest.raises(ConfigError, match="alpha must be a positive number"):
        dirichlet_partition(torch.zeros(10, dtype=torch.long), 2, alpha=0.0)


def test_share_order_is_a_permutation() -> None:
    labels = torch.arange(3).repeat(20)

    order = share_order(labels, seed=0)

    assert torch.equal(order.sort().values, torch.arange(60))


# -- the local engine ----------------------------------------------------------------------------------
def test_local_engine_end_to_end_writes_the_run_folder(tmp_path: Path) -> None:
    config = tiny(engine="local")

    out, metrics = federated.run(config, tmp_path / "fed", show_progress=False)

    assert metrics["engine"] == "local"
    assert [s["p"] for s in metrics["stages"]] == [0.05, 0.1]
    for stage in metrics["stages"]:
        for key in ("accuracy_clean_share", "accuracy_no_screening", "accuracy_screening"):
            assert 0.0 <= stage[key] <= 1.0
        assert stage["rounds"] == 2 and stage["failures"] == 0
    assert 0.0 <= metrics["accuracy_all_clean"] <= 1.0
    for name in ("config.json", "metrics.json", "log.txt", "report.html", "figures/accuracy_vs_share.png",
                 "checkpoints/network.safetensors", "checkpoints/obfuscator.safetensors"):
        assert (out / name).is_file(), name
    assert "Federated learning" in (out / "report.html").read_text()
    assert not list(tmp_path.glob(".*partial*"))


def test_local_clients_return_only_parameters_and_scalars(tmp_path: Path) -> None:
    config = tiny(engine="local", ablation=False, max_share=0.05)
    network = task.build_network(config, task.prepare_data(config).dataset)
    expected = {k: v.shape for k, v in network.state_dict().items()}
    seen: list[int] = []

    def inspect(client: int, update: task.Update) -> None:
        seen.append(client)
        assert {k: v.shape for k, v in update.arrays.items()} == expected
        assert isinstance(update.num_examples, int)
        assert all(isinstance(v, float) for v in update.metrics.values())

    federated.run(config, tmp_path / "run", show_progress=False, inspect=inspect)

    assert sorted(seen) == [0, 1]


def test_a_failing_client_does_not_stop_the_run(tmp_path: Path) -> None:
    config = tiny(engine="local", ablation=False, fail=[[1, 1]])

    _, metrics = federated.run(config, tmp_path / "run", show_progress=False)

    assert metrics["failures"] == 1
    assert [s["failures"] for s in metrics["stages"]] == [1, 0]
    assert "client 1 fails in round 1" in (tmp_path / "run" / "log.txt").read_text()


def test_every_client_failing_is_an_error(tmp_path: Path) -> None:
    config = tiny(engine="local", ablation=False, fail=[[0, 1], [1, 1]])

    with pytest.raises(federated.task.SCLError, match="every client failed in round 1"):
        federated.run(config, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


# -- Flower ---------------------------------------------------------------------------------------------
def test_scl_imports_without_flower() -> None:
    code = "import sys, scl, scl.cli, scl.pipelines.federated; print('flwr' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "False"


def test_flower_engine_without_flower_exits_2_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from scl.cli import app

    monkeypatch.setattr(federated, "flower_installed", lambda: False)

    result = CliRunner().invoke(app, ["federated", "--quick", "--engine", "flower", "--out", str(tmp_path / "r")])

    assert result.exit_code == 2
    assert "pip install 'scl[federated]'" in " ".join(result.output.split())


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("flwr", reason="Flower is not installed: pip install 'scl[federated]'")
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

    # one stage, one variant, two rounds: Ray's start-up dominates, keep the rest small
    config = tiny(engine="flower", ablation=False, max_share=0.05, rounds=2, fail=[[1, 2]])
    messages: dict[str, list] = {"out": [], "in": []}

    def inspect(direction: str, message: object) -> None:
        summary = {"error": message.has_error(), "records": {}}  # type: ignore[attr-defined]
        if not message.has_error():  # type: ignore[attr-defined]
            for key, record in message.content.items():  # type: ignore[attr-defined]
                if isinstance(record, ArrayRecord):
                    value = {k: tuple(v.shape) for k, v in record.to_torch_state_dict().items()}
                elif isinstance(record, (MetricRecord, ConfigRecord)):
                    value = dict(record)
                else:
                    value = type(record).__name__
                summary["records"][key] = (type(record).__name__, value)
        messages[direction].append(summary)

    folder = tmp_path_factory.mktemp("flower") / "fed"
    before = _process_settings()
    out, metrics = federated.run(config, folder, show_progress=False, inspect=inspect)
    return {"config": config, "out": out, "metrics": metrics, "messages": messages,
            "settings": (before, _process_settings())}


def _process_settings() -> dict:
    """What a run could change for the whole process: the environment, torch's threads, Flower's
    telemetry switch."""
    from flwr.supercore import telemetry

    return {"environ": dict(os.environ), "threads": torch.get_num_threads(),
            "telemetry": telemetry.FLWR_TELEMETRY_ENABLED}


def test_a_flower_run_leaves_the_process_as_it_found_it(flower_run: dict) -> None:
    before, after = flower_run["settings"]
    changed = sorted(set(before["environ"].items()) ^ set(after["environ"].items()))
    assert changed == [], f"environment variables left changed: {changed}"
    assert after == before


def test_the_simulation_environment_is_set_for_the_run_only_and_keeps_the_users_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("flwr", reason="Flower is not installed: pip install 'scl[federated]'")
    from flwr.supercore import telemetry

    from scl.pipelines.federated.server_app import simulation_environment

    monkeypatch.delenv("FLWR_TELEMETRY_ENABLED", raising=False)
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")  # the user's own choice
    monkeypatch.setattr(telemetry, "FLWR_TELEMETRY_ENABLED", "1")
    with pytest.raises(RuntimeError), simulation_environment():
        assert os.environ["FLWR_TELEMETRY_ENABLED"] == "0" and telemetry.FLWR_TELEMETRY_ENABLED == "0"
        assert os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "1"
        os.environ["SCL_TEST_SET_BY_RAY"] = "1"  # what Ray or Flower set during a run goes too
        os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "2"
        raise RuntimeError("a failing run restores them too")
    assert "FLWR_TELEMETRY_ENABLED" not in os.environ and telemetry.FLWR_TELEMETRY_ENABLED == "1"
    assert os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "1" and "SCL_TEST_SET_BY_RAY" not in os.environ


def test_importing_the_flower_apps_changes_no_environment_variable() -> None:
    pytest.importorskip("flwr", reason="Flower is not installed: pip install 'scl[federated]'")
    code = ("import os; before = dict(os.environ)\n"
            "import scl.pipelines.federated.server_app, scl.pipelines.federated.client_app\n"
            "print(sorted(set(os.environ.items()) ^ set(before.items())))")
    unset = ("FLWR_TELEMETRY_ENABLED", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_flower_engine_end_to_end(flower_run: dict) -> None:
    metrics, out = flower_run["metrics"], flower_run["out"]

    assert metrics["engine"] == "flower"
    assert [s["p"] for s in metrics["stages"]] == [0.05]
    assert 0.0 <= metrics["stages"][0]["accuracy_screening"] <= 1.0
    assert (out / "figures" / "accuracy_vs_share.png").is_file()
    assert (out / "report.html").is_file()


def test_flower_failing_client_is_counted_and_the_round_completes(flower_run: dict) -> None:
    metrics = flower_run["metrics"]

    assert metrics["failures"] == 1
    assert metrics["stages"][0]["failures"] == 1
    assert metrics["rounds"] == 2
    assert sum(m["error"] for m in flower_run["messages"]["in"]) == 1


def test_flower_messages_carry_only_parameters_and_scalars(flower_run: dict) -> None:
    config = flower_run["config"]
    data = task.prepare_data(config)
    network_shapes = {k: tuple(v.shape) for k, v in task.build_network(config, data.dataset).state_dict().items()}
    layer = stages.build_image_layer(config["layer"], data.dataset.x, data.dataset.num_classes)
    layer_shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    replies = [m for m in flower_run["messages"]["in"] if not m["error"]]
    assert len(replies) == 2 * 2 - 1  # two clients, two rounds, one injected failure

    for reply in replies:
        assert set(reply["records"]) == {"arrays", "metrics"}
        kind, shapes = reply["records"]["arrays"]
        assert kind == "ArrayRecord" and shapes == network_shapes
        kind, values = reply["records"]["metrics"]
        assert kind == "MetricRecord" and all(isinstance(v, int | float) for v in values.values())
        assert values["num-examples"] > 0
    for sent in flower_run["messages"]["out"]:
        assert set(sent["records"]) == {"arrays", "layer", "config"}
        assert sent["records"]["arrays"][1] == network_shapes
        assert sent["records"]["layer"][1] == layer_shapes
        config_values = sent["records"]["config"][1]
        assert all(isinstance(v, str | int | float | bool) for v in config_values.values())


def test_flower_and_local_engines_run_the_same_procedure(flower_run: dict, tmp_path: Path) -> None:
    config = dict(flower_run["config"], federated={**flower_run["config"]["federated"], "engine": "local"})

    _, local = federated.run(config, tmp_path / "local", show_progress=False)

    for a, b in zip(flower_run["metrics"]["stages"], local["stages"], strict=True):
        for key in ("accuracy_clean_share", "accuracy_screening", "failures", "rounds"):
            assert a[key] == pytest.approx(b[key], abs=0.02), key


@pytest.mark.slow
def test_cli_quick_flower_run_with_three_clients(tmp_path: Path) -> None:
    pytest.importorskip("flwr", reason="Flower is not installed: pip install 'scl[federated]'")
    from scl.cli import app

    out = tmp_path / "fed"

    result = CliRunner().invoke(
        app, ["federated", "--quick", "--engine", "flower", "--clients", "3", "--no-progress", "--out", str(out)]
    )

    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["engine"] == "flower" and metrics["clients"] == 3
    assert [s["p"] for s in metrics["stages"]] == [0.05, 0.1, 0.15]
    assert set(metrics["series"]) == {
        "clean share only", "procedure, no screening", "procedure, screening", "all data clean (ceiling)"
    }
