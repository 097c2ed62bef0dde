"""The progress display of the commands: one way to build it and one way to add a task to it.

Every caller (the training loops, the attacks, the federated rounds) adds its tasks through
:func:`task`, never with ``Progress.add_task`` directly: the display's columns read the task fields
set here (``status``), and a task added without them crashes the display at its next refresh.
rich is imported only when a display is built, so ``import scl`` stays light.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress

#: The fields every task carries, with their initial values; the display's columns read them.
TASK_FIELDS: dict[str, Any] = {"status": ""}


def make_progress(enabled: bool = True, console: Any = None) -> Progress | None:
    """A rich progress display with ETA and a status column, or ``None`` when disabled."""
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


@contextlib.contextmanager
def task(progress: Progress | None, description: str, total: int) -> Iterator[Callable[..., None]]:
    """Add a task of ``total`` steps to ``progress`` for the body; yields ``advance(status="")``.

    ``advance`` moves the task one step and shows ``status`` beside it. With ``progress=None``
    it does nothing, so callers need no branch. The task is hidden when the body ends, also on
    an error. Works with any ``rich.progress.Progress``, a user's own included.
    """
    if progress is None:
        yield lambda status="": None
        return
    task_id = progress.add_task(description, total=total, **TASK_FIELDS)

    def advance(status: str = "") -> None:
        progress.update(task_id, advance=1, status=status)

    try:
        yield advance
    finally:
        progress.update(task_id, visible=False)
