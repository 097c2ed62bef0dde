"""The Flower side of §2.3: the server holds the clean share and drives the rounds with FedAvg.

The server runs :func:`~.task.run_procedure` (steps 1, 2 and its own share of step 4); each round
of step 4 goes to the clients through :class:`FlowerTransport`: Flower's ``FedAvg`` builds the
train messages (N's parameters, SL-p's parameters and a config record), the grid delivers them,
and ``FedAvg`` aggregates the replies; the server's own update on its clean share is then averaged
in by sample count (:func:`~.task.fedavg`), so the result is FedAvg over every participant.
A client whose reply is an error is left out of the round and counted in ``failures``.

:func:`run_flower` runs it all in Flower's simulation runtime (``run_simulation``, Ray backend).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from flwr.app import ArrayRecord, ConfigRecord, ConfigRecordValues, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch import Tensor

from scl.pipelines import engine
from scl.pipelines.federated import task
from scl.runs import RunLog

if TYPE_CHECKING:
    from rich.progress import Progress

Inspect = Callable[[str, Message], None]


class ClientsFedAvg(FedAvg):
    """Flower's FedAvg that also keeps the replies that failed (for the failure count)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failed: list[Message] = []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.failed = [m for m in replies if m.has_error()]
        return super().aggregate_train(server_round, replies)


def _reason(message: Message) -> str:
    """The client's own error message out of the (long) remote traceback Flower reports."""
    reason = str(message.error.reason)
    if "Message: " in reason:
        reason = reason.rsplit("Message: ", 1)[1].split("\n", 1)[0].rstrip("'>")
    return f"node {message.metadata.src_node_id}: {reason[:300]}"


class FlowerTransport:
    """One round of step 4 on the clients through a Flower ``Grid``.

    Args:
        grid: the grid the ServerApp was given.
        config: the run's config (sent to the clients as JSON in the config record).
        inspect: optional ``inspect(direction, message)`` with ``"out"`` for every train message
            and ``"in"`` for every reply (tests check that replies hold parameters and scalars only).
        timeout: seconds to wait for the replies of a round.

    """

    name = "flower"

    def __init__(
        self, grid: Grid, config: task.FederatedConfig, inspect: Inspect | None = None, timeout: float | None = 600.0
    ) -> None:
        self.grid, self.config, self.inspect, self.timeout = grid, config, inspect, timeout
        self.config_json = json.dumps(config.to_dict())

    def round(
        self,
        arrays: dict[str, Tensor],
        layer_arrays: dict[str, Tensor],
        clean: task.Update,
        info: task.RoundInfo,
    ) -> task.RoundResult:
        k = self.config.federated.clients
        strategy = ClientsFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=k, min_available_nodes=k)
        record = ConfigRecord(
            {
                "scl-config": self.config_json,
                "p": float(info.p),
                "stage": int(info.stage),
                "round": int(info.round),
                "screening": bool(info.screening),
            }
        )
        messages = list(strategy.configure_train(info.round, ArrayRecord(arrays), record, self.grid))
        for message in messages:
            message.content["layer"] = ArrayRecord(layer_arrays)
            if self.inspect is not None:
                self.inspect("out", message)
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        if self.inspect is not None:
            for reply in replies:
                self.inspect("in", reply)
        aggregated, _ = strategy.aggregate_train(info.round, replies)
        errors = [_reason(m) for m in strategy.failed]
        missing = len(messages) - len(replies)  # no reply before the timeout counts as a failure
        errors += [f"no reply within {self.timeout} s"] * missing
        ok = len(replies) - len(strategy.failed)
        if aggregated is None or ok == 0:
            return task.RoundResult(dict(arrays), 0, len(errors), errors)
        weight = sum(int(cast(int, m.content["metrics"]["num-examples"])) for m in replies if not m.has_error())
        clients = task.Update(aggregated.to_torch_state_dict(), weight)
        return task.RoundResult(task.fedavg([clean, clients]), ok, len(errors), errors)


@contextmanager
def quiet_flower(level: int = logging.CRITICAL) -> Iterator[None]:
    """Silence Flower's logs for the duration of a run.

    Flower logs a line per round and node, and a remote traceback for every failed client; the
    run's own log reports each failure in one line instead.
    """
    logger = logging.getLogger("flwr")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


#: What a simulation sets in the environment, unless the user set it: Flower's telemetry off
#: (nothing outside the machine may be reached) and Ray's warning about an accelerator variable it
#: will override on machines without one. Set for the run only (Ray's workers inherit it), and
#: restored after it.
SIMULATION_ENVIRONMENT = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
                          # what flwr.simulation sets for Ray when it is first imported
                          "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


@contextmanager
def simulation_environment() -> Iterator[None]:
    """:data:`SIMULATION_ENVIRONMENT` for the block, and Flower's telemetry switch in this process
    (which Flower read from the environment when it was imported). After the block the
    environment is put back exactly as it was: Ray and Flower also set variables of their own while
    a simulation runs, and the caller's process keeps none of them."""
    from flwr.supercore import telemetry

    before = dict(os.environ)
    added = {k: v for k, v in SIMULATION_ENVIRONMENT.items() if k not in os.environ}
    switch = getattr(telemetry, "FLWR_TELEMETRY_ENABLED", None)
    os.environ.update(added)
    if "FLWR_TELEMETRY_ENABLED" in added and switch is not None:
        telemetry.FLWR_TELEMETRY_ENABLED = added["FLWR_TELEMETRY_ENABLED"]
    try:
        yield
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        if switch is not None:
            telemetry.FLWR_TELEMETRY_ENABLED = switch


def run_flower(
    config: task.FederatedConfig, progress: Progress | None, log: RunLog, inspect: Inspect | None = None
) -> task.Result:
    """The procedure on Flower's simulation runtime with ``federated.clients`` SuperNodes (Ray)."""
    from scl.pipelines.federated.client_app import app as client_app

    holder: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            holder["result"] = task.run_procedure(config, FlowerTransport(grid, config, inspect), progress, log)
        except BaseException as exc:  # re-raised in the caller's thread below
            holder["error"] = exc

    backend: dict[str, dict[str, ConfigRecordValues]] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"logging_level": logging.ERROR, "log_to_driver": False},
    }
    # the server's own training shares the cores with the simulated clients: one intra-op thread
    # each avoids oversubscription (OpenMP threads spinning against each other)
    with engine.threads(1), simulation_environment(), quiet_flower():
        # imported inside: on its first import flwr.simulation sets an environment variable for Ray
        from flwr.simulation import run_simulation

        run_simulation(server, client_app, num_supernodes=config.federated.clients, backend_config=backend)
    if "error" in holder:
        raise holder["error"]
    if "result" not in holder:
        raise task.SCLError("the Flower simulation ended without a result; rerun with --engine local to compare")
    return holder["result"]
