"""Input checks at public boundaries, with messages that say what to change."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from scl.errors import ConfigError, ShapeError


def check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, but got {num_classes!r}")
    return num_classes


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, but got {value!r}")
    return value


def check_tensor(
    x: Any,
    name: str,
    *,
    ndim: int | tuple[int, ...] | None = None,
    min_ndim: int | None = None,
    channels: int | None = None,
    channel_dim: int = 1,
    finite: bool = True,
) -> Tensor:
    """Check a floating-point tensor's type, rank, channel count and values.

    Raises:
        ShapeError: not a tensor, wrong dtype, rank or channel count, or NaN/Inf values.
    """
    if not isinstance(x, Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, but got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise ShapeError(
            f"{name} must be a floating-point tensor, but got dtype {x.dtype}; "
            f"convert with {name}.float() (images scaled to [0, 1])"
        )
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if x.dim() not in allowed:
            expected = " or ".join(str(a) for a in allowed)
            raise ShapeError(
                f"{name} must have {expected} dimensions, but got shape {tuple(x.shape)}"
            )
    if min_ndim is not None and x.dim() < min_ndim:
        raise ShapeError(
            f"{name} must have at least {min_ndim} dimensions, but got shape {tuple(x.shape)}"
        )
    if channels is not None and x.shape[channel_dim] != channels:
        axis = "channels" if channel_dim == 1 else "features"
        raise ShapeError(
            f"{name} must have {channels} {axis} (dim {channel_dim}), "
            f"but got {x.shape[channel_dim]} in shape {tuple(x.shape)}"
        )
    # NaN and Inf propagate through a sum, so one reduction screens the tensor; only a non-finite
    # sum (or an overflow of large finite values) pays for the elementwise check.
    if finite and x.numel() and not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ShapeError(f"{name} must be finite, but has {bad} NaN or Inf values")
    return x


def fingerprint(tensor: Tensor) -> tuple[int, int]:
    """Identifies a tensor's current values for caches without reading them (no reduction, no
    host sync): its storage and its version counter, which every in-place change bumps (an
    optimiser step, ``load_state_dict``, edits under ``torch.no_grad()``), a swap of two rows that
    keeps their sum included. Edits through ``.data`` bypass the counter: the modules that cache
    say so and have ``invalidate_cache()``."""
    return (tensor.data_ptr(), tensor._version)
