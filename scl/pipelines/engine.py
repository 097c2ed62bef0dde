"""Training and evaluation loops shared by the pipelines, with rich progress bars."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from scl.progress import task

if TYPE_CHECKING:
    from rich.progress import Progress

LossFn = Callable[..., tuple[Tensor, dict[str, float]]]


@contextlib.contextmanager
def threads(count: int | None) -> Iterator[None]:
    """Torch's intra-op threads set to ``count`` for the block (``None`` or 0: as they are), and
    restored after it, however it ends: the setting is the whole process's."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    progress: Progress | None = None,
    description: str = "training",
    cosine: bool = False,
) -> dict[str, list[float]]:
    """Adam on ``loss_fn(*batch) -> (loss, stats)``; returns per-epoch means of loss and stats.

    ``cosine`` anneals the learning rate to 0 over all the steps: a network trained to the end
    at a constant rate keeps whatever its last steps did (the digits' task network at seed 1 lost
    17 points of test accuracy in its 40th epoch to one such spike of Adam).
    """
    optimiser = torch.optim.Adam(list(parameters), lr=lr)
    n = data[0].shape[0]
    steps = epochs * -(-n // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(steps, 1)) if cosine else None
    history: dict[str, list[float]] = {}
    with task(progress, description, epochs) as advance:
        for _ in range(epochs):
            sums: dict[str, float] = {}
            count = 0
            for index in batches(n, batch_size, generator):
                loss, stats = loss_fn(*(d[index] for d in data))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                if schedule is not None:
                    schedule.step()
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
