"""Reference obfuscators that scl's releases are measured against.

- :class:`GaussianNoise`: plain noise ``x + scale * eps`` with one fixed scale, no training and no
  classes; :func:`calibrate_scale` finds the scale at which the task network keeps a given accuracy,
  so a learned release can be compared with plain noise at equal utility.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from scl.errors import ConfigError

__all__ = ["GaussianNoise", "calibrate_scale"]


class GaussianNoise(nn.Module):
    """Plain Gaussian noise: ``h = x + scale * eps``, ``eps ~ N(0, 1)`` fresh on every call.

    The same interface as :class:`scl.Obfuscator`: ``forward(x, labels=None)``; labels are
    ignored (the noise knows no class). Noise comes from torch's global generator: this is a
    reference for measurements, not a release to deploy.

    Shape:
        ``Tensor[N, ...] -> Tensor[N, ...]``.
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0:
            raise ConfigError(f"scale must be a number >= 0, but got {scale!r}")
        self.scale = float(scale)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return x + self.scale * torch.randn_like(x)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.4g}"


def calibrate_scale(
    accuracy_at: Callable[[float], float],
    target: float,
    *,
    low: float = 1e-3,
    high: float = 4.0,
    steps: int = 16,
) -> tuple[float, float]:
    """The largest noise scale whose accuracy is still at least ``target``, by bisection.

    Args:
        accuracy_at: ``scale -> accuracy`` of the task network on inputs with noise of that
            scale; expected to fall as the scale grows (evaluate it on one fixed noise draw, so
            that it is a deterministic function of the scale).
        target: the accuracy to match, e.g. that of the release being compared.
        low, high: the search interval (bisection runs on the log of the scale).
        steps: bisection steps.

    Returns:
        ``(scale, accuracy)``: the scale found and the accuracy measured at it. When even
        ``low`` falls below ``target`` it returns ``low``; when ``high`` still reaches it,
        ``high``.
    """
    if not 0 < low < high:
        raise ConfigError(f"need 0 < low < high, but got low={low!r}, high={high!r}")
    acc_low, acc_high = accuracy_at(low), accuracy_at(high)
    if acc_low < target:
        return low, acc_low
    if acc_high >= target:
        return high, acc_high
    lo, hi, best = math.log(low), math.log(high), (low, acc_low)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        accuracy = accuracy_at(math.exp(mid))
        if accuracy >= target:
            lo, best = mid, (math.exp(mid), accuracy)
        else:
            hi = mid
    return best
