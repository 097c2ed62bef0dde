"""Training and evaluation loops shared by the pipelines, with rich progress bars."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import torch
from torch import Tensor, nn

LossFn = Callable[..., tuple[Tensor, dict[str, float]]]


def make_progress(enabled: bool = True, console: object | None = None) -> object | None:
    """A rich progress display with ETA, or ``None`` when disabled."""
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
        console=console,  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def _task(progress: object | None, description: str, total: int) -> Iterator[Callable[[str], None]]:
    if progress is None:
        yield lambda status: None
        return
    task = progress.add_task(description, total=total, status="")  # type: ignore[attr-defined]

    def advance(status: str) -> None:
        progress.update(task, advance=1, status=status)  # type: ignore[attr-defined]

    try:
        yield advance
    finally:
        progress.update(task, visible=False)  # type: ignore[attr-defined]


def batches(n: int, batch_size: int, generator: torch.Generator | None, shuffle: bool = True) -> list[Tensor]:
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return list(order.split(batch_size))


def train(
    loss_fn: LossFn,
    parameters: Sequence[nn.Parameter],
    data: Sequence[Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator | None = None,
    progress: object | None = None,
    description: str = "training",
) -> dict[str, list[float]]:
    """Adam on ``loss_fn(*batch) -> (loss, stats)``; returns per-epoch means of loss and stats."""
    optimiser = torch.optim.Adam(list(parameters), lr=lr)
    n = data[0].shape[0]
    history: dict[str, list[float]] = {}
    with _task(progress, description, epochs) as advance:
        for _ in range(epochs):
            sums: dict[str, float] = {}
            count = 0
            for index in batches(n, batch_size, generator):
                loss, stats = loss_fn(*(d[index] for d in data))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                weight = index.numel()
                count += weight
                for key, value in {"loss": float(loss.detach()), **stats}.items():
                    sums[key] = sums.get(key, 0.0) + value * weight
            for key, value in sums.items():
                history.setdefault(key, []).append(value / count)
            advance(" ".join(f"{k}={v[-1]:.3f}" for k, v in history.items()))
    return history


@torch.no_grad()
def predict_proba(
    network: nn.Module,
    x: Tensor,
    transform: Callable[[Tensor, Tensor], Tensor] | None = None,
    y: Tensor | None = None,
    *,
    samples: int = 1,
    batch_size: int = 256,
) -> Tensor:
    """Softmax of ``network(transform(x, y))`` averaged over ``samples`` draws: ``Tensor[N, K]``."""
    outputs = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        yb = None if y is None else y[start : start + batch_size]
        total: Tensor | int = 0
        for _ in range(samples):
            h = xb if transform is None else transform(xb, yb)  # type: ignore[arg-type]
            total = total + torch.softmax(network(h), -1)
        outputs.append(cast(Tensor, total) / samples)
    return torch.cat(outputs)


def accuracy(probabilities: Tensor, y: Tensor) -> float:
    return float((probabilities.argmax(-1) == y).float().mean())
