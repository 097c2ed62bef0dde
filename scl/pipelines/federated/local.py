"""The single-process engine (``--engine local``): the clients of §2.3 as function calls, no Flower.

It runs exactly the stage logic of :mod:`.task`; only the transport differs from the Flower engine:
each client's :func:`~.task.client_update` is a call, and FedAvg is :func:`~.task.fedavg`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from scl.pipelines.federated import task


class LocalTransport:
    """Runs a round's clients one after another in this process.

    Args:
        config: the run's config (``federated.clients`` clients).
        inspect: optional ``inspect(client, update)`` called with every client's returned
            :class:`~.task.Update` (what would cross the wire); used by tests.

    """

    name = "local"

    def __init__(self, config: task.FederatedConfig, inspect: Callable[[int, task.Update], None] | None = None) -> None:
        self.config = config
        self.inspect = inspect

    def round(
        self,
        arrays: dict[str, Tensor],
        layer_arrays: dict[str, Tensor],
        clean: task.Update,
        info: task.RoundInfo,
    ) -> task.RoundResult:
        updates = [clean]
        errors: list[str] = []
        for client in range(self.config.federated.clients):
            try:
                update = task.client_update(self.config, arrays, layer_arrays, client=client, info=info)
            except Exception as exc:  # a failing client must not stop the round (issue 5, faults)
                errors.append(f"client {client}: {type(exc).__name__}: {exc}")
                continue
            if self.inspect is not None:
                self.inspect(client, update)
            updates.append(update)
        ok = len(updates) - 1
        return task.RoundResult(task.fedavg(updates), ok, len(errors), errors)
