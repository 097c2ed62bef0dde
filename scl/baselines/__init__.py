"""Reference obfuscators that scl's releases are measured against (``scl bench privacy``).

Every baseline is an ``nn.Module`` with scl's obfuscator interface, ``forward(x, labels=None) -> h``
of ``x``'s shape; none of them knows a class, so ``labels`` is accepted and ignored. Each has one
strength knob, or is trained under the same utility budget as scl's stages:

- :class:`Identity`: ``h = x``; no privacy, the ceilings of every attack.
- :class:`GaussianNoise` and :class:`LaplaceNoise`: plain noise ``x + scale * eps`` of one fixed
  scale (the knob); :func:`calibrate_scale` finds the scale at which the task network keeps a given
  accuracy, so a learned release can be compared with plain noise at equal utility.
- :class:`Shredder`: learned additive noise, one distribution for all inputs, trained with
  Shredder's objective (the task loss plus the noise's magnitude).
- :class:`Cloak`: a learned per-feature gain, mean and scale that do not depend on the class:
  scl's additive layer with a single class, so it is also the ablation of the conditioning.
- :class:`NoPeek`: a learned transform regularised by the distance correlation to the input.

The learned ones are trained by :func:`scl.pipelines.bench_privacy.train_baseline` (the budget's
dual ascent of :mod:`scl.pipelines.stages`), with the objective each names in ``objective``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from scl.baselines.learned import Cloak, LearnedBaseline, NoPeek, Shredder
from scl.distributions import laplace_from_uniform
from scl.errors import ConfigError

__all__ = [
    "Cloak",
    "GaussianNoise",
    "Identity",
    "LaplaceNoise",
    "LearnedBaseline",
    "NoPeek",
    "PlainNoise",
    "Shredder",
    "calibrate_scale",
]


class Identity(nn.Module):
    """No obfuscation: ``h = x`` (labels ignored). What every attack's ceiling is measured on."""

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return x


class PlainNoise(nn.Module):
    """Plain noise of one fixed scale: ``h = x + scale * eps``, ``eps`` of unit scale, fresh on every
    call (subclasses say which distribution). ``scale`` is the strength knob.

    The same interface as :class:`scl.Obfuscator`: ``forward(x, labels=None)``; labels are ignored
    (the noise knows no class). Noise comes from torch's global generator, or ``generator``: this is
    a reference for measurements, not a release to deploy.

    Shape:
        ``Tensor[N, ...] -> Tensor[N, ...]``.
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0 or math.isinf(scale):
            raise ConfigError(f"scale must be a finite number >= 0, but got {scale!r}")
        self.scale = float(scale)

    @staticmethod
    def unit_noise(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A draw of ``eps`` of ``x``'s shape (scale 1)."""
        raise NotImplementedError

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return x + self.scale * self.unit_noise(x)

    @classmethod
    def calibrate(
        cls, x: Tensor, utility: Callable[[Tensor], float], target: float, *, generator: torch.Generator,
        steps: int = 16,
    ) -> tuple[float, float]:
        """The largest scale at which ``utility(x + scale * eps)`` is still at least ``target``, by
        :func:`calibrate_scale` on one fixed draw ``eps`` (from ``generator``), so that the utility
        is a deterministic function of the scale: ``(scale, utility at it)``."""
        eps = cls.unit_noise(x, generator=generator)
        return calibrate_scale(lambda scale: utility(x + scale * eps), target, steps=steps)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.4g}"


class GaussianNoise(PlainNoise):
    """Plain Gaussian noise: ``h = x + scale * eps``, ``eps ~ N(0, 1)`` (see :class:`PlainNoise`)."""

    @staticmethod
    def unit_noise(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


class LaplaceNoise(PlainNoise):
    """Plain Laplace noise: ``h = x + scale * eps``, ``eps ~ Laplace(0, 1)`` (see :class:`PlainNoise`);
    the noise of the Laplace mechanism of differential privacy."""

    @staticmethod
    def unit_noise(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        # torch.distributions' Laplace.sample takes no generator, and the bench needs one fixed draw
        return laplace_from_uniform(torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device))


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
