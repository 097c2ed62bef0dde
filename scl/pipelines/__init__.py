"""End-to-end experiments, one module each, all with the same small interface, :class:`Pipeline`:
classification (``scl demo``, ``scl train``), detection (``scl detect``), federated
(``scl federated``) and the privacy frontier (``scl bench privacy``).

The command line builds a config, runs it and prints the summary through this interface; the
report (:func:`scl.report.write_report`) takes the pipeline's own figure captions. Which pipeline
wrote a run is recorded in its ``metrics.json`` (``"pipeline"``, :func:`scl.report.pipeline_of`), so
a run folder's summary can be printed again by :func:`get` of that name.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from scl.errors import ConfigError

if TYPE_CHECKING:
    from scl.pipelines.config import Section

__all__ = ["MODULES", "Pipeline", "get", "noise_verdict_lines", "summary_lines", "target_lines"]

#: The pipelines by the name they record in ``metrics.json``, and the module of each (imported on
#: first use: the federated one needs Flower, the others matplotlib only for their reports).
MODULES = {
    "classification": "scl.pipelines.classification",
    "detection": "scl.pipelines.detection",
    "federated": "scl.pipelines.federated",
    "bench_privacy": "scl.pipelines.bench_privacy",
}


class Pipeline(Protocol):
    """What every pipeline module provides (a module satisfies it with module-level names).

    Attributes:
        NAME: the name recorded as ``metrics["pipeline"]`` (a key of :data:`MODULES`).
        CAPTIONS: the report's figure captions, by file stem, beyond :data:`scl.report.CAPTIONS`.
    """

    NAME: str
    CAPTIONS: Mapping[str, str]

    def build_config(
        self, *, quick: bool = False, config_file: str | Path | None = None, assignments: Iterable[str] = (),
        overrides: Mapping[str, Any] | None = None,
    ) -> Section:
        """The resolved config, a frozen :class:`~scl.pipelines.config.Section`: the defaults (or the
        quick ones), then a JSON file, ``--set`` assignments and the command's own options
        (``overrides``); validated, with an error that says what to change."""
        ...

    def run(
        self, config: Mapping[str, Any], out: Path, *, console: Any = None, show_progress: bool = True
    ) -> tuple[Path, dict[str, Any]]:
        """Run the whole experiment into the new run folder ``out``: ``(folder, metrics)``. ``config``
        is :meth:`build_config`'s, or a mapping of the same JSON (checked as one)."""
        ...

    def summary(self, metrics: Mapping[str, Any]) -> list[Any]:
        """The run's results for the terminal: rich renderables (tables, styled text), in order."""
        ...


def get(name: str) -> Pipeline:
    """The pipeline recorded as ``name`` (see :data:`MODULES`)."""
    if name not in MODULES:
        raise ConfigError(f"unknown pipeline {name!r}; scl has {sorted(MODULES)}")
    return cast(Pipeline, importlib.import_module(MODULES[name]))


# -- what the pipelines' summaries share -----------------------------------------------------------
def summary_lines(lines: Iterable[tuple[str, bool]], *, failed: str = "bold red") -> list[Any]:
    """Indented terminal lines of ``(text, ok)``: green where ``ok``, else in the style ``failed``."""
    from rich.text import Text

    return [Text(f"  {text}", style="green" if ok else failed) for text, ok in lines]


def noise_verdict_lines(verdicts: Iterable[str]) -> list[Any]:
    """:func:`scl.report.gaussian_verdicts`'s sentences, red where a release does NOT beat plain noise."""
    return summary_lines(((line, "NOT" not in line) for line in verdicts), failed="red")


def target_lines(metrics: Mapping[str, Any]) -> list[Any]:
    """One line per target of ``metrics["targets"]``, met or not (every pipeline that sets targets)."""
    from rich.text import Text

    lines = []
    for target in metrics.get("targets", []):
        line = Text(f"  target {target['name']}: {target['value']:.3f} {target['target']} ")
        line.append("met" if target["met"] else "not met", style="green" if target["met"] else "red")
        lines.append(line)
    return lines

