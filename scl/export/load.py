"""The obfuscator to export, from a run folder or a checkpoint (for ``scl export``), through
:mod:`scl.runs`."""

from __future__ import annotations

import os
from pathlib import Path

from scl.errors import CheckpointError, ConfigError
from scl.obfuscator import Obfuscator
from scl.runs import load_label_free, load_obfuscator, recorded_shape
from scl.selection import SoftSelection


def load_for_export(
    source: str | os.PathLike[str], *, selection: str | None = None
) -> tuple[Obfuscator, tuple[int, ...] | None]:
    """The obfuscator to export from a run folder or a checkpoint, and its input shape if recorded.

    Args:
        source: a run folder written by ``scl train``/``scl demo`` (its
            ``checkpoints/obfuscator.safetensors``, with ``gated.safetensors`` for
            ``selection="gated"``), or an obfuscator checkpoint written by ``scl.save``.
        selection: for a run folder, ``"soft"`` or ``"gated"`` (``None``: the gated one when the run
            has it, the headline label-free release, else soft); for a checkpoint, the selection it
            must hold (``None``: whichever it holds).

    The input shape comes from the run's ``metrics.json`` (also for a checkpoint inside a run's
    ``checkpoints/`` folder); ``None`` when it is not recorded.
    """
    if selection not in (None, "soft", "gated"):
        raise ConfigError(f"selection must be 'soft' or 'gated', but got {selection!r}")
    source = Path(source)
    if source.is_dir():
        obfuscator, _ = load_label_free(source, selection, instead="an obfuscator checkpoint (.safetensors)")
        return obfuscator, recorded_shape(source)
    if not source.is_file():
        raise CheckpointError(
            f"{str(source)!r} does not exist; pass a run folder written by `scl train` or `scl demo`, "
            "or an obfuscator checkpoint (.safetensors) written by scl.save"
        )
    obfuscator = load_obfuscator(source)
    held = "soft" if isinstance(obfuscator.selection, SoftSelection) else "gated"
    if selection is not None and obfuscator.selection is not None and held != selection:
        raise ConfigError(
            f"{str(source)!r} holds a {held} selection, not a {selection} one; drop --selection or pass "
            "the run folder"
        )
    run = source.parent.parent if source.parent.name == "checkpoints" else None
    return obfuscator, recorded_shape(run) if run is not None else None

