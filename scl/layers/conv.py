"""Stochastic conditional convolution (spec §1.1.3)."""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from scl.errors import ConfigError
from scl.io import register_module
from scl.layers.base import ClassLinearMap
from scl.validation import check_tensor


def _pair(value: Any, name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(pair) != 2 or any(
        isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in pair
    ):
        raise ConfigError(f"{name} must be an int >= {minimum} or a pair of them, but got {value!r}")
    return pair


@register_module
class StochasticConditionalConv2d(ClassLinearMap):
    """Per-class convolution kernels whose outputs parameterise a noise distribution.

    ``layer(x, pi)`` with ``x: Tensor[B, in_channels, H, W]`` returns a sample
    ``Tensor[B, out_channels, H', W']``; ``layer.distribution(x, pi)`` its distribution. With a
    hard selection each sample goes through its class's kernels only (``k_mu_c``, ``k_sigma_c``).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation: as ``nn.Conv2d``
            (zero padding; ``padding="same"`` with stride 1).
        num_classes: C, one set of kernels per class and per distribution parameter.
        distribution: a name from ``scl.distributions.names()`` or an instance.
        distribution_options: options of the named distribution (e.g. ``{"init_scale": 0.3}``).
        selection_at: ``"input"`` or ``"output"`` (spec §2.1.1, see :mod:`scl.layers.base`).
    """

    kernel_rank = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        num_classes: int,
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        distribution: str = "gaussian",
        distribution_options: dict[str, Any] | None = None,
        selection_at: str = "input",
    ) -> None:
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.dilation = _pair(dilation, "dilation", 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ConfigError(f"padding must be an int, a pair, 'same' or 'valid', but got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ConfigError("padding='same' needs stride 1, as in nn.Conv2d")
            self.padding: tuple[int, int] | str = padding
        else:
            self.padding = _pair(padding, "padding", 0)
        super().__init__(
            in_channels,
            out_channels,
            num_classes,
            self.kernel_size,
            distribution=distribution,
            distribution_options=distribution_options,
            selection_at=selection_at,
        )

    def _check_input(self, x: Tensor) -> None:
        check_tensor(x, "x", ndim=4, channels=self.in_channels)

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None, groups: int = 1) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return self._conv(x, weight, bias)

    def _op_per_sample(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        # Sample b with its own kernels as one batched matmul over im2col patches. (A grouped
        # convolution with groups=B is as fast forward, but its backward is >10x slower on CPU.)
        b = x.shape[0]
        left, right, top, bottom = self._explicit_padding(x.shape[2:])
        if left == right and top == bottom:  # unfold pads symmetric borders itself
            pad = (top, left)
            padded: tuple[int, ...] = (x.shape[2] + 2 * top, x.shape[3] + 2 * left)
        else:
            x = F.pad(x, (left, right, top, bottom))
            pad, padded = (0, 0), tuple(x.shape[2:])
        patches = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=pad, stride=self.stride)
        y = torch.baddbmm(bias.unsqueeze(-1), weight.flatten(2), patches)
        return y.reshape(b, weight.shape[1], *self._out_spatial_padded(padded))

    def _op_per_class(self, x: Tensor) -> Tensor:
        # one grouped convolution with C groups: group c is class c's kernels on x[:, c]
        b, c = x.shape[:2]
        y = self._conv(x.flatten(1, 2), self.weight.flatten(0, 1), self.bias.flatten(), c)
        return y.reshape(b, c, -1, *y.shape[2:])

    def _explicit_padding(self, spatial: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zero padding equivalent to ``self.padding``."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":  # as F.conv2d: the extra pixel of an even kernel goes last
            (th, tw) = (d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=False))
            return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
        ph, pw = cast("tuple[int, int]", self.padding)  # a pair: the strings were handled above
        return (pw, pw, ph, ph)

    def _out_spatial_padded(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(
            (size - d * (k - 1) - 1) // s + 1
            for size, d, k, s in zip(spatial, self.dilation, self.kernel_size, self.stride, strict=False)
        )

    def _out_spatial(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        if self.padding == "same":
            return spatial
        pad = (0, 0) if self.padding == "valid" else cast("tuple[int, int]", self.padding)
        return tuple(
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip(spatial, pad, self.dilation, self.kernel_size, self.stride, strict=False)
        )

    def _pool_gate(self, gate: Tensor, spatial: tuple[int, ...]) -> Tensor:
        if tuple(gate.shape[2:]) == spatial:
            return gate
        return F.adaptive_avg_pool2d(gate, cast("tuple[int, int]", spatial))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, " + super().extra_repr()
        )

    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "num_classes": self.num_classes,
            "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "dilation": list(self.dilation),
            "distribution": self.noise.name,
            "distribution_options": self.noise.config(),
            "selection_at": self.selection_at,
        }


