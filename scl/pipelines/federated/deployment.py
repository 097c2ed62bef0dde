"""The deployment ServerApp of §2.3: ``flwr run flower-app <connection>`` against a SuperLink.

The ServerApp runs the whole procedure, :func:`~.task.run_procedure` (every share ``p`` of the
schedule: NN-p and SL-p on the server, ``federated.rounds`` FedAvg rounds per share on the
SuperNodes), through the same :class:`~.server_app.FlowerTransport` as the simulation engine, and
writes the run folder as ``scl federated`` does. The SuperNodes run the ClientApp of
:mod:`.client_app`; each needs ``--node-config "partition-id=<k>"`` with ``k`` in
``[0, federated.clients)``, and the SuperLink waits for ``federated.clients`` of them.

Run config (``[tool.flwr.app.config]`` of ``flower-app/pyproject.toml``, overridable with
``flwr run --run-config``):

* ``quick`` (bool): the ``--quick`` settings;
* ``config-file`` (str): a JSON config file ("" for none);
* ``set`` (str): space-separated ``key=value`` assignments, as ``scl federated --set``;
* ``out`` (str): the run folder to create (relative paths are relative to the SuperLink's
  working directory, where its ServerApp process runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from scl.pipelines.federated import task, write_outputs
from scl.pipelines.federated.server_app import FlowerTransport
from scl.runs import RunLog, run_folder

app = ServerApp()


def config_from_run_config(run_config: dict[str, Any]) -> task.FederatedConfig:
    """The procedure's config from the Flower run config (keys ``quick``, ``config-file``, ``set``)."""
    config_file = str(run_config.get("config-file", "")) or None
    assignments = str(run_config.get("set", "")).split()
    return task.build_config(
        quick=bool(run_config.get("quick", False)),
        config_file=config_file,
        assignments=assignments,
        overrides={"federated": {"engine": "flower"}},
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run §2.3 on the connected SuperNodes and write the run folder ``out``."""
    config = config_from_run_config(dict(context.run_config))
    out = Path(str(context.run_config.get("out", "runs/federated-deployment")))
    log = RunLog(None)
    with run_folder(out) as folder:
        result = task.run_procedure(config, FlowerTransport(grid, config), None, log)
        result.metrics["runtime"] = "deployment"
        write_outputs(result, config, folder, log, out.name)
