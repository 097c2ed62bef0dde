"""The one training loop: Adam over shuffled epochs, an optional cosine schedule, and early stopping
on a validation loss with the best epoch's weights kept.

Every trained part of scl runs through :func:`fit`: the task networks and the fixed-λ stages
(through :func:`scl.pipelines.engine.train`, which feeds it tuples of tensors) and every attack
(through :func:`scl.attacks._common.fit`, which feeds it a model and a batch maker). Constrained
training at a utility budget (:func:`scl.pipelines.stages.train_within_budget`) is another
algorithm, a primal-dual one whose kept epoch is the last feasible one, not the lowest validation
loss; it shares :func:`shuffled_batches` with this loop.

Written by hand because no library used here has one loop for both: Lightning or ignite would bring
a framework for the forty lines below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from scl.progress import task

if TYPE_CHECKING:  # rich is only needed for type hints; callers pass their own Progress
    from rich.progress import Progress

#: ``step(indices) -> (loss, stats)``: the loss of one batch (to descend) and scalar statistics to
#: average over the epoch (``{"accuracy": 0.93}``; may be empty).
Step = Callable[[Tensor], tuple[Tensor, Mapping[str, float]]]

#: Weight of the past in the exponential average of the validation loss that early stopping reads.
SMOOTHING = 0.8


class Fit(NamedTuple):
    """What :func:`fit` returns."""

    #: per-epoch means of ``loss`` and of each statistic, and ``validation`` (with ``validate``)
    history: dict[str, list[float]]
    #: the epochs of training the final weights hold: the best epoch's with ``validate``, else the
    #: epochs run
    epochs: int


def shuffled_batches(
    index: Tensor, batch_size: int, generator: torch.Generator | None, *, min_batch: int = 1
) -> Iterator[Tensor]:
    """``index`` in a fresh random order (from ``generator``), cut into batches of ``batch_size``;
    a trailing batch smaller than ``min_batch`` is dropped (batch norm needs 2 in training)."""
    order = index[torch.randperm(index.numel(), generator=generator)]
    for batch in order.split(batch_size):
        if batch.numel() >= min_batch:
            yield batch


def fit(
    step: Step,
    parameters: Iterable[nn.Parameter],
    index: int | Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    description: str = "training",
    cosine: bool = False,
    min_batch: int = 1,
    modules: Sequence[nn.Module] = (),
    validate: Callable[[], float] | None = None,
    patience: int | None = None,
) -> Fit:
    """Adam on ``step`` over at most ``epochs`` shuffled passes of ``index``.

    Args:
        step: the loss of a batch, given its indices (called for every batch of every epoch, so a
            release in it carries fresh noise each time).
        parameters: what Adam trains.
        index: the number of samples (indices ``0..n-1``) or the tensor of training indices.
        cosine: anneal the learning rate to 0 over all the steps: a network trained to the end at
            a constant rate keeps whatever its last steps did (the digits' task network at seed 1
            lost 17 points of test accuracy in its 40th epoch to one such spike of Adam).
        min_batch: drop a trailing batch smaller than this (see :func:`shuffled_batches`).
        modules: put in training mode at the start of every epoch and in eval mode at the end;
            with ``validate``, the modules whose best epoch's state is restored.
        validate: a validation loss, measured after every epoch (it may put ``modules`` in eval
            mode). The weights of the epoch with the lowest one are restored at the end. Once an
            exponential average of it has not improved for ``patience`` epochs (default: never),
            and not before a third of ``epochs``, training stops; with ``cosine`` it first anneals
            the rate linearly to 0 over ``patience`` more epochs.

    Returns:
        :class:`Fit`: the per-epoch history and the epochs the final weights hold.
    """
    index = torch.arange(index) if isinstance(index, int) else index
    optimiser = torch.optim.Adam(list(parameters), lr=lr)
    per_epoch = -(-index.numel() // batch_size)
    schedule: torch.optim.lr_scheduler.LRScheduler | None = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(epochs * per_epoch, 1)) if cosine else None)
    history: dict[str, list[float]] = {}
    best_loss, best_state, best_epochs, ran = float("inf"), None, 0, 0
    smooth: float | None = None
    best_smooth, stale = float("inf"), 0
    finish_at: int | None = None  # with a cosine schedule: the epoch at which the last anneal ends
    with task(progress, description, epochs) as advance:
        for epoch in range(epochs):
            if finish_at is not None and epoch >= finish_at:
                break
            ran = epoch + 1
            for module in modules:
                module.train()
            sums: dict[str, float] = {}
            count = 0
            # the loss is summed on its device and read once an epoch: no host sync per step (on a
            # GPU each would stall the queue); float64, as the stats' Python floats are summed
            loss_sum: Tensor | None = None
            for batch in shuffled_batches(index, batch_size, generator, min_batch=min_batch):
                loss, stats = step(batch)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                if schedule is not None:
                    schedule.step()
                weight = batch.numel()
                count += weight
                weighted = loss.detach().double() * weight
                loss_sum = weighted if loss_sum is None else loss_sum + weighted
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value * weight
            if loss_sum is not None:
                history.setdefault("loss", []).append(float(loss_sum) / count)
            for key, value in sums.items():
                history.setdefault(key, []).append(value / count)
            if validate is not None:
                value = float(validate())
                history.setdefault("validation", []).append(value)
                if value < best_loss:
                    best_loss, best_epochs = value, epoch + 1
                    best_state = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]
                # Read the trend, not single epochs: an exponential average of the validation loss
                # must stop improving. At a high learning rate the raw loss swings by +-50% from one
                # epoch to the next.
                smooth = value if smooth is None else SMOOTHING * smooth + (1 - SMOOTHING) * value
                if smooth < best_smooth:
                    best_smooth, stale = smooth, 0
                else:
                    stale += 1
                    # never before a third of the epochs: decoders can sit on a plateau (predicting
                    # the mean image) for several epochs before they start to use their input
                    if (patience is not None and stale >= patience and epoch + 1 >= epochs // 3
                            and finish_at is None):
                        if schedule is None:
                            advance(_postfix(history))
                            break
                        # A cosine-annealed model decodes best once its rate is low: rather than
                        # stop at a high rate, anneal linearly to 0 over `patience` more epochs,
                        # then stop (plain noise on the digits: SSIM 0.869 when stopped, 0.962
                        # annealed).
                        finish_at = epoch + 1 + patience
                        schedule = torch.optim.lr_scheduler.LinearLR(
                            optimiser, start_factor=1.0, end_factor=0.0, total_iters=patience * per_epoch)
            advance(_postfix(history))
    if best_state is not None:
        for module, state in zip(modules, best_state, strict=True):
            module.load_state_dict(state)
        ran = best_epochs
    for module in modules:
        module.eval()
    return Fit(history, ran)


def _postfix(history: Mapping[str, list[float]]) -> str:
    return " ".join(f"{k}={v[-1]:.3f}" if k != "validation" else f"val={v[-1]:.4f}" for k, v in history.items())
