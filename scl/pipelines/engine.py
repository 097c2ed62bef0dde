"""What the pipelines share to train and evaluate: the training loop fed by tensors, predictions
and accuracy, and the thread setting of a run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scl import training

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
    """Adam on ``loss_fn(*batch) -> (loss, stats)`` over the tensors ``data`` (cut along their first
    dimension): scl's one training loop, :func:`scl.training.fit` (``cosine``: see there). The
    caller sets the modules' training mode. Returns per-epoch means of loss and stats."""
    return training.fit(
        lambda index: loss_fn(*(d[index] for d in data)), parameters, data[0].shape[0], epochs=epochs, lr=lr,
        batch_size=batch_size, generator=generator, progress=progress, description=description, cosine=cosine,
    ).history


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
    """The fraction of rows of ``probabilities`` (or logits) ``Tensor[N, K]`` whose argmax is ``y``."""
    return float((probabilities.argmax(-1) == y).float().mean())


def classification_loss(logits: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
    """A classifier's training loss and its batch accuracy: ``(cross_entropy, {"accuracy": ...})``,
    the :data:`LossFn` form every stage that trains on a classification task returns."""
    return F.cross_entropy(logits, y), {"accuracy": accuracy(logits, y)}
