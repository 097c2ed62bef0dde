"""The command line as a user runs it: `scl demo --quick` end to end, then the other commands."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from scl.cli import app
from tests.test_commands import TINY_DEMO  # the smallest settings that still run every stage

runner = CliRunner()
#: The keys DESIGN.md promises, spelled out as a user's script reads metrics.json (the other tests
#: take them from scl.metrics; tests/test_metrics.py pins that those constants are these strings).
DESIGN_PRIVACY_KEYS = {
    "decoder_ssim", "decoder_ssim_label_floor", "decoder_psnr", "whitebox_ssim",
    "attribute_accuracy", "attribute_chance", "dcor",
}


#: `--quick` with every attacker capped at two epochs: the attacks' code paths at a quarter of
#: their cost (the uncapped quick demo is the slow test below, and `make demo` before a release).
CAPPED_ATTACKS = ["--set", "attacks.max_epochs=2"]


def _demo_quick(out, *extra):
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--no-progress", *extra])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return _demo_quick(tmp_path_factory.mktemp("runs") / "quick", *CAPPED_ATTACKS)


@pytest.mark.slow
def test_demo_quick_uncapped_writes_every_privacy_key(tmp_path):
    out, output = _demo_quick(tmp_path / "quick")
    assert json.loads((out / "config.json").read_text())["attacks"]["max_epochs"] is None
    metrics = json.loads((out / "metrics.json").read_text())
    assert DESIGN_PRIVACY_KEYS <= set(metrics["privacy"]) and "label-only floor" in output


def test_demo_quick_writes_the_whole_run_folder(quick_run):
    out, output = quick_run
    for name in ("config.json", "metrics.json", "log.txt", "report.html"):
        assert (out / name).is_file(), name
    assert {p.name for p in (out / "checkpoints").iterdir()} == {
        "network.safetensors", "obfuscator.safetensors", "gated.safetensors"}
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"samples.png", "training_curves.png", "selection_maps.png"} <= figures
    for png in (out / "figures").iterdir():
        with Image.open(png) as image:
            assert image.size[0] > 100 and image.size[1] > 100
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "digits-tinted" and metrics["num_classes"] == 10
    # images per split, which the budget's test check reads (a small test split widens its margin)
    assert set(metrics["splits"]) == {"task", "obfuscator", "attacker", "test"}
    assert sum(metrics["splits"].values()) == 1797
    assert set(metrics["accuracy"]) == {"clean", "hard", "soft", "gated"}
    assert DESIGN_PRIVACY_KEYS <= set(metrics["privacy"])
    assert {"base", "stage1", "stage2", "attacks"} <= set(metrics["seconds"])
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    assert "label-only floor" in output and "report.html" in output
    html = (out / "report.html").read_text()
    assert "figures/samples.png" in html and ".partial" not in html


def test_evaluate_updates_the_run(quick_run):
    out, _ = quick_run
    result = runner.invoke(app, ["evaluate", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["accuracy"]) == {"clean", "hard", "soft", "gated"}
    assert "privacy" in metrics  # kept from the demo


def test_train_then_attack_fills_the_privacy_block(tmp_path):
    out = tmp_path / "trained"
    # the attack command reads its settings from the run's config.json, TINY_DEMO's caps included
    result = runner.invoke(app, ["train", "--quick", "--out", str(out), "--no-progress", *TINY_DEMO])
    assert result.exit_code == 0, result.output
    assert "privacy" not in json.loads((out / "metrics.json").read_text())
    result = runner.invoke(app, ["attack", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    privacy = json.loads((out / "metrics.json").read_text())["privacy"]
    assert DESIGN_PRIVACY_KEYS <= set(privacy)
    assert "Privacy" in (out / "report.html").read_text()


def test_obfuscate_images_to_pngs_and_npz(quick_run, tmp_path):
    out, _ = quick_run
    source = tmp_path / "photos"
    source.mkdir()
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((20, 24, 3)) * 255).astype(np.uint8)).save(
            source / f"img{i}.png")
    pngs = tmp_path / "obfuscated"
    result = runner.invoke(app, ["obfuscate", "--run", str(out), "--input", str(source), "--out", str(pngs)])
    assert result.exit_code == 0, result.output
    assert "AES-256-CTR cipher stream" in result.output  # the noise source, scl.random.describe()
    assert sorted(p.name for p in pngs.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    with Image.open(pngs / "img0.png") as image:
        assert image.size == (16, 16)
    npz_in = tmp_path / "in.npz"
    np.savez(npz_in, x=np.random.default_rng(0).random((4, 3, 16, 16)).astype(np.float32))
    npz_out = tmp_path / "out.npz"
    result = runner.invoke(app, ["obfuscate", "--run", str(out), "--input", str(npz_in), "--out", str(npz_out),
                                 "--selection", "gated"])
    assert result.exit_code == 0, result.output
    with np.load(npz_out) as data:
        assert data["h"].shape == (4, 3, 16, 16)
    # fresh cipher-stream noise each time: two obfuscations of the same input differ
    again = tmp_path / "again.npz"
    runner.invoke(app, ["obfuscate", "--run", str(out), "--input", str(npz_in), "--out", str(again),
                        "--selection", "gated"])
    with np.load(npz_out) as a, np.load(again) as b:
        assert not np.allclose(a["h"], b["h"])


def test_bad_data_is_one_line_and_exit_code_2(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 8, 8), np.uint8))
    result = runner.invoke(app, ["demo", "--quick", "--data", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "missing key(s) ['y']" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--set", "stage1.lamda=2"], "unknown config key 'stage1.lamda'"),
        (["evaluate", "/nonexistent/run"], "is not a run folder"),
        (["obfuscate", "--run", "/nonexistent/run", "--input", "x", "--out", "y"], "has no checkpoints"),
    ],
)
def test_user_errors_exit_with_code_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


@pytest.mark.parametrize("command", ["demo", "train", "evaluate", "attack", "obfuscate", "bench", "detect"])
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output
