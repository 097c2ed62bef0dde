"""Shared plumbing of the attacks: data splits, validation, seeding and their use of the training loop.

Private to :mod:`scl.attacks`; nothing here is public API.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

import torch
from torch import Tensor, nn

from scl import training
from scl.errors import ConfigError, DataError, ShapeError

if TYPE_CHECKING:  # rich is only needed for type hints; callers pass their own Progress
    from rich.progress import Progress

#: An obfuscator seen from the outside: ``h = obfuscate(x, labels)``.
#: ``x`` is ``Tensor[N, C, H, W]`` in [0, 1], ``labels`` is ``Tensor[N]`` (int64) and ``h`` is a
#: fresh noisy sample each call, ``Tensor[N, C', H', W']`` (any ``C'``, any ``H' x W'``), or any
#: ``Tensor[N, ...]`` that the attacks read as ``Tensor[N, F, 1, 1]``.
Obfuscate: TypeAlias = Callable[[Tensor, Tensor], Tensor]

#: A split given to an attack: ``(x, y)``, ``(x, y, attribute)`` or any object with ``.x``,
#: ``.y`` (and ``.attribute`` for attribute inference) attributes.
Split: TypeAlias = Any


class SplitTensors(NamedTuple):
    x: Tensor
    y: Tensor
    attribute: Tensor | None


def unpack_split(split: Split, name: str, *, need_attribute: bool = False) -> SplitTensors:
    """Read ``(x, y[, attribute])`` from a tuple or from an object with attributes."""
    if isinstance(split, (tuple, list)):
        if len(split) not in (2, 3):
            raise DataError(
                f"{name} must be (x, y) or (x, y, attribute), but got a sequence of "
                f"length {len(split)}"
            )
        x, y = split[0], split[1]
        attribute = split[2] if len(split) == 3 else None
    elif hasattr(split, "x") and hasattr(split, "y"):
        x, y = split.x, split.y
        attribute = getattr(split, "attribute", None)
    else:
        raise DataError(
            f"{name} must be a tuple (x, y[, attribute]) or an object with .x and .y, "
            f"but got {type(split).__name__}"
        )
    if need_attribute and attribute is None:
        raise DataError(
            f"{name} must carry a private attribute: pass (x, y, attribute) or an object "
            f"with .attribute, but got none"
        )
    return SplitTensors(x, y, attribute)


def check_images(x: Any, name: str) -> Tensor:
    """Validate ``Tensor[N, C, H, W]`` floating point in [0, 1]; returns ``x``."""
    if not isinstance(x, Tensor):
        raise ShapeError(f"{name} must be a Tensor[N, C, H, W], but got {type(x).__name__}")
    if x.dim() != 4:
        raise ShapeError(
            f"{name} must be a Tensor[N, C, H, W] (4 dimensions), but got shape {tuple(x.shape)}"
        )
    if x.shape[0] < 1:
        raise ShapeError(f"{name} must hold at least 1 image, but got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ShapeError(f"{name} must be a floating point tensor, but got dtype {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise DataError(f"{name} must have values in [0, 1], but got values in [{lo:g}, {hi:g}]")
    return x


def check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, but got {value!r}")
    return value


def check_positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a number > 0, but got {value!r}")
    return float(value)


def as_feature_map(h: Any, n: int, name: str = "obfuscate(x, y)") -> Tensor:
    """Read an obfuscator output as ``Tensor[N, C', H', W']`` float.

    A 4-D output is kept; any other ``Tensor[N, ...]`` (e.g. the ``Tensor[N, F]`` of a linear
    layer or the ``Tensor[N, L, D]`` of a recurrent one) becomes ``Tensor[N, F, 1, 1]``.
    Integer outputs (binomial or multinomial counts) are converted to float.
    """
    if not isinstance(h, Tensor):
        raise ShapeError(f"{name} must return a Tensor, but got {type(h).__name__}")
    if h.dim() < 2 or h.shape[0] != n:
        raise ShapeError(
            f"{name} must return a Tensor[N, ...] with N = {n} (one output per input), "
            f"but got shape {tuple(h.shape)}"
        )
    h = h.detach()
    if not h.is_floating_point():
        h = h.float()
    if h.dim() != 4:
        h = h.reshape(n, -1, 1, 1)
    return h


def one_hot_maps(y: Tensor, num_classes: int, size: tuple[int, int]) -> Tensor:
    """``Tensor[N]`` labels -> ``Tensor[N, num_classes, H, W]`` constant one-hot maps."""
    onehot = torch.nn.functional.one_hot(y, num_classes).to(torch.float32)
    return onehot[:, :, None, None].expand(-1, -1, size[0], size[1]).contiguous()


def resolve_device(device: torch.device | str | None, x: Tensor) -> torch.device:
    return torch.device(device) if device is not None else x.device


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG for the body and restore the caller's RNG state afterwards.

    Module initialisation draws from the global RNG, so the attack seeds it from ``seed``; the
    fork keeps the caller's random stream untouched.
    """
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def holdout(n: int, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """Shuffled ``(train, validation)`` indices of ``range(n)``; ``validation`` holds
    ``round(fraction * n)`` of them (``None`` when that leaves fewer than 2 on either side)."""
    order = torch.randperm(n, generator=generator)
    k = int(round(fraction * n))
    if k < 2 or n - k < 2:
        return order, None
    return order[k:], order[:k]


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions and matrix products in hardware.

    On a CPU, oneDNN's check (AVX512-BF16 or AMX); on CUDA, ``torch.cuda.is_bf16_supported``.
    Elsewhere, and on CPUs that would emulate bfloat16 (slower than float32), ``False``.
    """
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return False


def fit(
    model: nn.Module,
    make_batch: Callable[[Tensor], tuple[Tensor, Tensor]],
    n: int | Tensor,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    progress: Progress | None,
    description: str,
    validation: Tensor | None = None,
    patience: int | None = None,
    cosine: bool = False,
    bfloat16: bool = False,
) -> int:
    """Train ``model`` with Adam over at most ``epochs`` shuffled passes: scl's one training loop
    (:func:`scl.training.fit`) fed by a batch maker.

    ``n`` is the number of samples (indices ``0..n-1``) or the tensor of training indices.
    ``make_batch(indices)`` returns ``(inputs, targets)`` for a batch; it is called for every
    batch of every epoch, so obfuscated inputs carry fresh noise each time. A trailing batch of
    a single sample is dropped (batch norm needs two).

    With ``validation`` indices, ``loss_fn(outputs, targets)`` over all of them at once is
    measured after every epoch, and the weights of the best epoch are restored at the end (early
    stopping after ``patience`` epochs without improvement, see :func:`scl.training.fit`). The
    loss sees the whole validation part at once, so a loss that depends on the batch (a
    contrastive one) is measured the same way every epoch. The model is left in eval mode.

    With ``bfloat16``, the model's forward pass in training runs under bfloat16 autocast where
    the device computes bfloat16 natively (:func:`native_bfloat16`; float32 elsewhere). The
    weights, the optimiser, the loss and the validation stay float32. On the demo's 2-core CPU
    this trains the encoder-decoder 1.7x faster, and the decoders it trains score the same SSIM
    as float32 ones within their run-to-run spread (``benchmarks/attacker_precision.py``).

    Returns:
        the number of epochs of training that the model's final weights hold (the best epoch
        with ``validation``, else the epochs run).
    """
    device = next(iter(model.parameters())).device
    use_bf16 = bfloat16 and native_bfloat16(device)
    if use_bf16 and device.type == "cpu":
        # oneDNN's bfloat16 convolutions run faster on channels-last tensors (29 -> 24 ms a step)
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def step(index: Tensor) -> tuple[Tensor, dict[str, float]]:
        inputs, targets = make_batch(index)
        # autocast casts the losses (MSE, cross-entropy) back to float32 itself
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            return loss_fn(model(inputs), targets).float(), {}

    validate = None if validation is None else (
        lambda: _validation_value(model, make_batch, validation, loss_fn, 4 * batch_size))
    return training.fit(
        step, model.parameters(), n, epochs=epochs, lr=lr, batch_size=batch_size, generator=generator,
        progress=progress, description=description, cosine=cosine, min_batch=2, modules=(model,),
        validate=validate, patience=patience,
    ).epochs


@torch.no_grad()
def _validation_value(
    model: nn.Module,
    make_batch: Callable[[Tensor], tuple[Tensor, Tensor]],
    index: Tensor,
    criterion: Callable[[Tensor, Tensor], Tensor],
    batch_size: int,
) -> float:
    """``criterion`` of the model's outputs on all of ``index`` at once, in eval mode."""
    model.eval()
    outputs, targets = [], []
    for start in range(0, index.numel(), batch_size):
        inputs, target = make_batch(index[start : start + batch_size])
        outputs.append(model(inputs))
        targets.append(target)
    return float(criterion(torch.cat(outputs), torch.cat(targets)))


@torch.no_grad()
def predict(
    model: nn.Module, make_inputs: Callable[[Tensor], Tensor], n: int, batch_size: int
) -> Tensor:
    """Concatenate ``model(make_inputs(indices))`` over ``n`` samples in order."""
    outputs = []
    for start in range(0, n, batch_size):
        index = torch.arange(start, min(start + batch_size, n))
        outputs.append(model(make_inputs(index)))
    return torch.cat(outputs)
