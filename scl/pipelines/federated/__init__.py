"""Federated learning with stochastic conditional layers (spec §2.3, §2.3.1): ``scl federated``.

* :mod:`.task` - the procedure (shares, NN-p, SL-p, obfuscation, screening, FedAvg rounds), once;
* :mod:`.local` - the single-process transport (``--engine local``);
* :mod:`.server_app`, :mod:`.client_app` - the Flower transport (``--engine flower``, the default),
  imported only when used, so scl works without Flower installed;
* :mod:`.screening` - random screening of obfuscated samples (§2.3.1).

Example::

    from scl.pipelines import federated
    config = federated.build_config(quick=True, overrides={"federated": {"engine": "local"}})
    folder, metrics = federated.run(config, "runs/fed")
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scl.errors import ConfigError
from scl.pipelines import classification
from scl.pipelines.federated.screening import screen, screening_mask
from scl.pipelines.federated.task import FederatedConfig, build_config, run_procedure, shares
from scl.progress import make_progress
from scl.runs import CHECKPOINTS, RunLog, run_folder, write_log, write_results

__all__ = [
    "CAPTIONS",
    "NAME",
    "build_config",
    "flower_installed",
    "require_flower",
    "run",
    "run_procedure",
    "screen",
    "screening_mask",
    "shares",
    "summary",
]

#: The name this pipeline records in ``metrics.json`` (:class:`scl.pipelines.Pipeline`).
NAME = "federated"
#: Its figure captions beyond the report's own (none).
CAPTIONS: dict[str, str] = {}

INSTALL_HINT = "pip install 'scl[federated]'"


def flower_installed() -> bool:
    """Whether Flower (``flwr``) can be imported, without importing it."""
    return importlib.util.find_spec("flwr") is not None


def require_flower() -> None:
    """Raise :class:`ConfigError` with the install command when Flower is missing."""
    if not flower_installed():
        raise ConfigError(
            f"--engine flower needs Flower, which is not installed; install it with `{INSTALL_HINT}` "
            "or run without it with `--engine local`"
        )


def write_outputs(result: Any, config: FederatedConfig, folder: Path, log: RunLog, name: str) -> None:
    """Checkpoints, figures, metrics.json, config.json, log.txt and report.html of a federated run."""
    from scl import figures
    from scl.io import save
    from scl.report import write_report

    save(result.network, folder / "checkpoints" / CHECKPOINTS["network"])
    save(result.obfuscator, folder / "checkpoints" / CHECKPOINTS["obfuscator"])
    fig = folder / "figures"
    figures.accuracy_vs_share(result.metrics["series"], fig / "accuracy_vs_share.png")
    figures.image_grid(result.samples, fig / "client_samples.png", title="A client's data, and what N trains on")
    data = classification.load_dataset(config)
    shape = list(data.image_shape)
    result.metrics.update({"pipeline": NAME, "dataset": data.name, "num_classes": data.num_classes,
                           "input_shape": shape})
    write_results(folder, config, result.metrics)
    write_log(folder, log)
    write_report(folder, name=name)


def run(
    config: Mapping[str, Any],
    out: str | Path,
    *,
    console: Any = None,
    show_progress: bool = True,
    inspect: Any = None,
) -> tuple[Path, dict[str, Any]]:
    """The federated procedure into the run folder ``out`` (written under a temporary name).

    Args:
        config: from :func:`build_config`; ``federated.engine`` picks the transport.
        out: the run folder to create.
        console: a rich console for the log and progress (``None``: silent).
        show_progress: rich progress bars.
        inspect: test hook, see :class:`~.local.LocalTransport` and :class:`~.server_app.FlowerTransport`.

    Returns:
        ``(out, metrics)``.

    """
    config = FederatedConfig.coerce(config)
    out = Path(out)
    if config.federated.engine == "flower":
        require_flower()
    log = RunLog(console)
    start = time.perf_counter()
    with run_folder(out) as folder:
        progress = make_progress(show_progress, console)
        with progress if progress is not None else contextlib.nullcontext():
            if config.federated.engine == "flower":
                from scl.pipelines.federated.server_app import run_flower

                result = run_flower(config, progress, log, inspect)
            else:
                from scl.pipelines.federated.local import LocalTransport

                result = run_procedure(config, LocalTransport(config, inspect), progress, log)
        result.metrics["seconds"]["total"] = time.perf_counter() - start
        write_outputs(result, config, folder, log, out.name)
    return out, result.metrics


def summary(metrics: Mapping[str, Any]) -> list[Any]:
    """The run's results for the terminal (:class:`scl.pipelines.Pipeline`): test accuracy against
    the clean share p, the ceiling, the target and the clients' failures."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"scl federated ({metrics.get('engine')}): test accuracy against the clean share p")
    columns = [
        ("p", "p"),
        ("clean share only", "accuracy_clean_share"),
        ("no screening", "accuracy_no_screening"),
        ("screening", "accuracy_screening"),
        ("rounds", "rounds"),
        ("failures", "failures"),
    ]
    for title, _ in columns:
        table.add_column(title, justify="right")
    for stage in metrics.get("stages", []):
        cells = []
        for _, key in columns:
            value = stage.get(key)
            if value is None:
                cells.append("-")
            elif key == "p" or key.startswith("accuracy"):
                cells.append(f"{100 * value:.1f}%")
            else:
                cells.append(str(value))
        table.add_row(*cells)
    out: list[Any] = [table]
    if "accuracy_all_clean" in metrics:
        out.append(Text(f"  all data clean (ceiling): {100 * metrics['accuracy_all_clean']:.1f}%"))
    reached = metrics.get("target_reached")
    line = Text(f"  target accuracy {100 * metrics.get('target_accuracy', 0):.1f}%: ")
    line.append("reached" if reached else "not reached", style="green" if reached else "yellow")
    out.append(line)
    out.append(Text(f"  client failures: {metrics.get('failures', 0)} in {metrics.get('rounds', 0)} rounds"))
    return out

