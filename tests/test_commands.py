"""The real commands as users run them: subprocesses with the progress display ON.

Each command runs twice, once with its output piped (as in a log or CI) and once under a
pseudo-terminal (as in a user's shell, where rich redraws the progress bars live). The settings
are the smallest that still run every stage, so the whole file takes about a minute on 2 cores.
The piped demo runs through `make demo` itself, the README's first command, in its quick form.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scl.pipelines import MODULES

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
MODES = ("pipe", "pty")

#: The smallest settings that still run every stage of each command.
TINY_DEMO = [
    "--set", "network.epochs=2", "--set", "stage1.epochs=2", "--set", "stage2.epochs=1",
    "--set", "gated.epochs=1", "--set", "attacks.max_epochs=1",
    "--set", "attacks.whitebox_images=4", "--set", "attacks.whitebox_steps=2",
]
TINY_DETECT = [
    "--set", "num_images=120", "--set", "detector.epochs=1", "--set", "stage1.epochs=1",
    "--set", "stage2.epochs=1", "--set", "attacks.max_epochs=1",
]
TINY_FEDERATED = [
    "--set", "network.epochs=1", "--set", "stage1.epochs=1", "--set", "federated.min_steps=2",
    "--set", "federated.max_share=0.1", "--set", "federated.rounds=1",
]


def _scl() -> list[str]:
    """The `scl` entry point of this interpreter's environment, as a user would call it."""
    script = shutil.which("scl", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "scl.cli"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM", "COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", COLUMNS="120", LINES="40", PYTHONUNBUFFERED="1")
    return env


def _run_piped(command: list[str], cwd: Path) -> tuple[int, str]:
    done = subprocess.run(command, cwd=cwd, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=TIMEOUT_S, check=False)
    return done.returncode, done.stdout.decode(errors="replace")


def _run_pty(command: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``command`` with stdin, stdout and stderr on a pseudo-terminal of 120 x 40."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(command, cwd=cwd, env=_env(), stdin=slave, stdout=slave, stderr=slave,
                               start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while True:
            if time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"{command} ran past {TIMEOUT_S} s")
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: every holder of the terminal's other end has closed it
                break
            if not data:
                break
            chunks.append(data)
        code = process.wait(timeout=30)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    return code, b"".join(chunks).decode(errors="replace")


def run_command(args: list[str], mode: str, cwd: Path, *, progress: bool = True) -> str:
    """Run ``scl ARGS`` in ``mode``; fail with its output unless it exits 0; return the output.

    ``progress``: the command shows a progress display, so under a terminal its ETA column must
    appear (the display really was drawn).
    """
    command = [*_scl(), *args]
    code, output = (_run_pty if mode == "pty" else _run_piped)(command, cwd)
    assert code == 0, f"`{' '.join(args)}` ({mode}) exited {code}:\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    if progress and mode == "pty":
        assert "ETA" in output, output[-2000:]
    return output


def assert_run_folder(out: Path, checkpoints: set[str], figures: set[str]) -> dict:
    for name in ("config.json", "metrics.json", "log.txt", "report.html"):
        assert (out / name).is_file(), f"{out} has no {name}"
    assert checkpoints <= {p.name for p in (out / "checkpoints").iterdir()}
    written = {p.name for p in (out / "figures").glob("*.png")}
    assert figures <= written, f"missing figures {figures - written}"
    for png in (out / "figures").glob("*.png"):
        with Image.open(png) as image:
            assert min(image.size) > 50, png
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]
    assert_checkpoints_load_after_import_scl(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics.get("pipeline") in MODULES, "metrics.json must say which pipeline wrote it"
    return metrics


def assert_checkpoints_load_after_import_scl(out: Path) -> None:
    """Every checkpoint the command wrote rebuilds with ``scl.load`` in a fresh interpreter that
    imported nothing but ``scl``, as a user's own script would."""
    files = sorted(str(p) for p in (out / "checkpoints").glob("*.safetensors"))
    code = "import sys, scl\nfor path in sys.argv[1:]:\n    print(type(scl.load(path)).__name__)"
    result = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, check=False,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, f"scl.load after `import scl` failed on {out}:\n{result.stderr[-3000:]}"
    assert len(result.stdout.split()) == len(files)


def _make_is_ready() -> bool:
    """The project's .venv is built and current, so `make demo` runs the demo without installing."""
    stamp = subprocess.run(["make", "-q", ".venv/.scl-installed"], cwd=REPO, check=False, capture_output=True)
    return stamp.returncode == 0 and Path(sys.prefix).resolve() == (REPO / ".venv").resolve()


@pytest.fixture(scope="module", params=MODES)
def demo_run(request, tmp_path_factory) -> tuple[str, Path, str]:
    """The tiny demo in each mode. Piped, it runs through `make demo` itself, the README's first
    command (its output then reaches a pipe through make, as in CI), when this interpreter is the
    project's current .venv; else through the `scl` script."""
    mode = request.param
    out = tmp_path_factory.mktemp(f"demo-{mode}") / "run"
    args = ["--quick", "--out", str(out), *TINY_DEMO]
    if mode == "pipe" and _make_is_ready():
        code, output = _run_piped(["make", "demo", f"DEMO_ARGS={' '.join(args)}"], REPO)
        assert code == 0, f"`make demo` exited {code}:\n{output[-4000:]}"
        assert "Traceback" not in output, output[-4000:]
        return "make", out, output
    return mode, out, run_command(["demo", *args], mode, out.parent)


def test_demo_quick_with_progress(demo_run):
    mode, out, output = demo_run
    metrics = assert_run_folder(
        out, {"network.safetensors", "obfuscator.safetensors", "gated.safetensors"},
        {"samples.png", "training_curves.png", "selection_maps.png"},
    )
    assert set(metrics["accuracy"]) == {"clean", "hard", "soft", "gated"}
    assert {"decoder_ssim", "decoder_ssim_label_floor", "attribute_accuracy", "dcor"} <= set(metrics["privacy"])
    assert "report.html" in output


def test_export_of_the_demo_run(demo_run):
    mode, out, _ = demo_run
    onnx_file = out.parent / f"obfuscator-{mode}.onnx"
    output = run_command(["export", str(out), "--out", str(onnx_file)], mode, out.parent, progress=False)
    assert onnx_file.is_file() and onnx_file.stat().st_size > 1000
    assert "wrote" in output


def test_obfuscate_with_the_demo_run(demo_run, tmp_path):
    mode, out, _ = demo_run
    source = tmp_path / "photos"
    source.mkdir()
    for i in range(3):
        pixels = (np.random.default_rng(i).random((20, 24, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(source / f"img{i}.png")
    pngs, npz_out = tmp_path / "pngs", tmp_path / "h.npz"
    run_command(["obfuscate", "--run", str(out), "--input", str(source), "--out", str(pngs)], mode, tmp_path,
                progress=False)
    assert sorted(p.name for p in pngs.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    run_command(["obfuscate", "--run", str(out), "--input", str(source), "--out", str(npz_out),
                 "--selection", "gated"], mode, tmp_path, progress=False)
    with np.load(npz_out) as data:
        assert data["h"].shape == (3, 3, 16, 16)


@pytest.mark.parametrize("mode", MODES)
def test_detect_quick_with_progress(mode, tmp_path):
    out = tmp_path / "detect"
    run_command(["detect", "--quick", "--out", str(out), *TINY_DETECT], mode, tmp_path)
    metrics = assert_run_folder(out, {"detector.safetensors", "obfuscator.safetensors"}, {"samples.png"})
    assert {"clean", "hard", "soft"} <= set(metrics["map"])


@pytest.mark.parametrize("mode", MODES)
def test_federated_quick_local_with_progress(mode, tmp_path):
    out = tmp_path / "federated"
    run_command(["federated", "--quick", "--engine", "local", "--out", str(out), *TINY_FEDERATED], mode, tmp_path)
    metrics = assert_run_folder(out, set(), set())
    assert metrics["engine"] == "local" and metrics["rounds"] >= 1
    assert list(out.glob("figures/*.png")), "the federated run wrote no figure"


def test_make_demo_quick(demo_run):
    """The README's first command, `make demo`, in its quick form, through the Makefile itself."""
    mode, out, _ = demo_run
    if mode == "pty":
        pytest.skip("make runs in the piped mode")
    if mode != "make":
        pytest.skip("the project's .venv is missing or out of date (make test builds it); `make demo` would "
                    "install it first")
    assert_run_folder(out, {"obfuscator.safetensors"}, {"samples.png"})
