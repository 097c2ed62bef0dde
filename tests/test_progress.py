"""One way to add a progress task: every task carries the fields the display's columns read."""

import io

import pytest
from rich.console import Console

from scl.progress import TASK_FIELDS, make_progress, task


def test_every_task_carries_the_status_field_and_renders():
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    progress = make_progress(True, console)
    with progress:
        with task(progress, "decoder attack", 3) as advance:
            (only,) = progress.tasks
            assert set(TASK_FIELDS) <= set(only.fields)
            advance()
            advance("loss=0.123")
            progress.refresh()  # the status column reads task.fields["status"]; a missing one raises
            assert only.completed == 2 and only.fields["status"] == "loss=0.123"
        assert not only.visible
    assert "loss=0.123" in console.file.getvalue()


def test_a_task_is_hidden_when_its_body_fails():
    progress = make_progress(True, Console(file=io.StringIO()))
    with pytest.raises(RuntimeError):
        with task(progress, "stage 1", 2):
            raise RuntimeError("boom")
    assert not progress.tasks[0].visible


def test_no_display_means_no_op():
    assert make_progress(False) is None
    with task(None, "anything", 5) as advance:
        advance()
        advance("status")
