"""Stochastic conditional fully connected layer (spec §1.2.3)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from scl.io import register_module
from scl.layers.base import ClassLinearMap
from scl.validation import check_tensor


@register_module
class StochasticConditionalLinear(ClassLinearMap):
    """Per-class weights ``W_c`` whose outputs parameterise a noise distribution.

    ``layer(x, pi)`` with ``x: Tensor[B, ..., in_features]`` returns a sample
    ``Tensor[B, ..., out_features]``. A selection's class tensors have shape ``()`` or the rank of
    ``x[0]`` (e.g. ``(1, in_features)`` for ``x: [B, T, in_features]``), sizes 1 or equal.

    Args:
        in_features, out_features: as ``nn.Linear``.
        num_classes: C, one weight matrix and bias per class and per distribution parameter.
        distribution, distribution_options, selection_at: see
            :class:`scl.StochasticConditionalConv2d`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_classes: int,
        *,
        distribution: str = "gaussian",
        distribution_options: dict[str, Any] | None = None,
        selection_at: str = "input",
    ) -> None:
        super().__init__(
            in_features,
            out_features,
            num_classes,
            (),
            distribution=distribution,
            distribution_options=distribution_options,
            selection_at=selection_at,
        )

    @property
    def in_features(self) -> int:
        return self.in_channels

    @property
    def out_features(self) -> int:
        return self.out_channels

    def _check_input(self, x: Tensor) -> None:
        check_tensor(x, "x", min_ndim=2, channels=self.in_channels, channel_dim=-1)

    # Internally features are moved to dim 1 ("channel-first"), so the linear layer shares every
    # path with the convolution: a linear map is a 1x1 convolution over the middle dimensions.
    def _to_cf(self, x: Tensor) -> Tensor:
        return x.movedim(-1, 1)

    def _from_cf(self, y: Tensor) -> Tensor:
        return y.movedim(1, -1)

    def _selection_to_cf(self, values: Tensor) -> Tensor:
        return values.movedim(-1, 2) if values.dim() > 2 else values

    def _param_dim(self, x: Tensor) -> int:
        return -1

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return F.linear(x.movedim(1, -1), weight, bias).movedim(-1, 1)

    def _op_per_sample(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        b = x.shape[0]
        y = torch.baddbmm(bias.unsqueeze(-1), weight, x.reshape(b, self.in_channels, -1))
        return y.reshape(b, -1, *x.shape[2:])

    def _op_per_class(self, x: Tensor) -> Tensor:
        # x: [B, C, ..., in] -> [B, C, rows, ...] (channel-first like the other paths)
        y = torch.einsum("bc...i,coi->bc...o", x, self.weight)
        y = y + self.bias.reshape(1, self.num_classes, *([1] * (y.dim() - 3)), -1)
        return y.movedim(-1, 2)

    def extra_repr(self) -> str:
        return f"in_features={self.in_channels}, out_features={self.out_channels}, " + super().extra_repr()

    def config(self) -> dict[str, Any]:
        return {
            "in_features": self.in_channels,
            "out_features": self.out_channels,
            "num_classes": self.num_classes,
            "distribution": self.noise.name,
            "distribution_options": self.noise.config(),
            "selection_at": self.selection_at,
        }
