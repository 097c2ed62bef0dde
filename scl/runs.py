"""The run folder, in one place: its layout, its atomic writing, its log, and reading a run back
(its config and metrics, its checkpoints, its label-free obfuscator and the input shape it
recorded). Every command writes its folder
through :func:`run_folder`; ``scl obfuscate``, ``scl export`` and ``scl evaluate`` read it back here.

A run folder::

    RUN/
      config.json        the resolved configuration
      metrics.json       every figure, and ``"pipeline"``: which command wrote it
      log.txt            the run's messages, time-stamped
      report.html        the report (scl.report)
      checkpoints/       safetensors checkpoints (CHECKPOINTS)
      figures/           PNGs
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from scl.errors import CheckpointError, ConfigError
from scl.io import atomic_write, load, write_json
from scl.obfuscator import Obfuscator
from scl.selection import GatedSelection

__all__ = [
    "CHECKPOINTS",
    "RunLog",
    "load_checkpoint",
    "load_label_free",
    "read_run",
    "recorded_shape",
    "run_folder",
    "run_selection",
    "write_log",
    "write_results",
]

#: The checkpoints a run may hold, by role, in ``RUN/checkpoints/``.
CHECKPOINTS = {"network": "network.safetensors", "obfuscator": "obfuscator.safetensors", "gated": "gated.safetensors"}


class RunLog:
    """Messages for the terminal and for ``log.txt``."""

    def __init__(self, console: Any = None) -> None:
        self.console = console
        self.lines: list[str] = []

    @classmethod
    def resume(cls, run: Path, console: Any = None) -> RunLog:
        """A log that goes on from a run folder's ``log.txt`` (empty where it has none)."""
        log = cls(console)
        path = Path(run) / "log.txt"
        if path.is_file():
            log.lines.extend(path.read_text().splitlines())
        return log

    def __call__(self, message: str) -> None:
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        self.lines.append(f"{stamp} {message}")
        if self.console is not None:
            self.console.print(f"[dim]{stamp}[/dim] {message}")


@contextlib.contextmanager
def run_folder(out: Path) -> Iterator[Path]:
    """Write into a hidden temporary folder beside ``out``; rename it to ``out`` on success, so that
    an interrupted or failing run leaves no half-written folder."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"the run folder {str(out)!r} already exists and is not empty; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "checkpoints").mkdir(parents=True)
    (tmp / "figures").mkdir()
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_log(folder: Path, log: RunLog) -> None:
    """``log.txt``: every message of the run, one a line."""
    with atomic_write(Path(folder) / "log.txt") as handle:
        handle.write("\n".join(log.lines) + "\n")


def run_selection(checkpoints: Path, selection: str | None) -> str:
    """The label-free selection to load from a run's ``checkpoints`` folder: ``selection`` as
    given, or (``None``) the gated one when the run has it (the headline label-free release),
    else soft."""
    if selection is None:
        return "gated" if (Path(checkpoints) / CHECKPOINTS["gated"]).is_file() else "soft"
    return selection


def write_results(folder: Path, config: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
    """``config.json`` and ``metrics.json`` of a run, each written atomically."""
    write_json(Path(folder) / "metrics.json", dict(metrics))
    write_json(Path(folder) / "config.json", dict(config))


def read_run(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run folder's ``(config, metrics)``; metrics ``{}`` where the run has none yet (``scl train``
    writes them as it goes). A :class:`ConfigError` when ``run`` is not a run folder."""
    run = Path(run)
    try:
        config = json.loads((run / "config.json").read_text())
    except OSError:
        raise ConfigError(
            f"{str(run)!r} is not a run folder (no config.json); run `scl train` or `scl demo` first"
        ) from None
    metrics_path = run / "metrics.json"
    return config, json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}


def load_checkpoint(run: Path, role: str) -> Any:
    """The module a run saved as ``role`` (a key of :data:`CHECKPOINTS`), or a :class:`ConfigError`
    naming the missing file."""
    path = Path(run) / "checkpoints" / CHECKPOINTS[role]
    if not path.is_file():
        raise ConfigError(f"{str(run)!r} has no checkpoints/{CHECKPOINTS[role]}; the run is incomplete")
    return load(path)


def load_obfuscator(path: Path) -> Obfuscator:
    """The :class:`~scl.obfuscator.Obfuscator` saved at ``path``, or a :class:`CheckpointError`
    that says what the file holds instead."""
    module = load(path)
    if not isinstance(module, Obfuscator):
        hint = " (a run's gated selection: pass the run folder with --selection gated)" if isinstance(
            module, GatedSelection
        ) else ""
        raise CheckpointError(
            f"{str(path)!r} holds a {type(module).__name__}, not an Obfuscator{hint}; save the "
            "obfuscator itself with scl.save(obfuscator, path)"
        )
    return module


def load_label_free(run: Path, selection: str | None = None, *, instead: str = "") -> tuple[Obfuscator, str]:
    """The run's obfuscator with its label-free selection attached, in eval mode, and which one:
    ``selection`` ``"soft"`` or ``"gated"`` (``None``: see :func:`run_selection`). ``instead``: what
    else the caller takes, for the message when ``run`` has no obfuscator (``"an obfuscator
    checkpoint (.safetensors)"``)."""
    run = Path(run)
    ckpt = run / "checkpoints"
    selection = run_selection(ckpt, selection)
    if selection not in ("soft", "gated"):
        raise ConfigError(f"selection must be 'soft' or 'gated', but got {selection!r}")
    path = ckpt / CHECKPOINTS["obfuscator"]
    if not path.is_file():
        raise ConfigError(
            f"{str(run)!r} has no checkpoints/{CHECKPOINTS['obfuscator']}; pass a run folder written by "
            f"`scl train` or `scl demo`{', or ' + instead if instead else ''}"
        )
    obfuscator = load_obfuscator(path)
    if selection == "gated":
        gated_path = ckpt / CHECKPOINTS["gated"]
        if not gated_path.is_file():
            raise ConfigError(f"{str(run)!r} has no checkpoints/{CHECKPOINTS['gated']}; use --selection soft")
        obfuscator = obfuscator.with_selection(load(gated_path))
    return obfuscator.eval(), selection


def recorded_shape(run: Path) -> tuple[int, ...] | None:
    """The input shape ``(C, H, W)`` the run recorded in ``metrics.json`` (``input_shape``), or
    ``None`` where it is not recorded."""
    try:
        shape = json.loads((Path(run) / "metrics.json").read_text())["input_shape"]
        return tuple(int(s) for s in shape)
    except (OSError, ValueError, KeyError, TypeError):
        return None
