"""Stochastic conditional additive layer: per-class learned noise added to the input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from scl.errors import ConfigError, ShapeError
from scl.io import register_module
from scl.layers.base import StochasticConditionalLayer, _broadcast_check
from scl.selection import ClassIndex, Selection, SharedSelection
from scl.validation import check_tensor


@register_module
class StochasticConditionalAdditive(StochasticConditionalLayer):
    """Per-class noise parameters of the input's shape, added to the input.

    Class c owns one tensor per distribution parameter, ``m[c, p]: Tensor[*shape]``. The first
    parameter map is ``x + m[c, 0]`` (for the gaussian: the mean is the input shifted by a learned
    offset), the others are ``m[c, p]`` (e.g. the raw scale). With a selection the class terms are
    weighted by ``pi_c`` and summed: ``sum_c pi_c * (x + m[c, 0])``, ``sum_c pi_c * m[c, p]``.
    The layer is elementwise, so selecting at the input or at the output is the same; there is no
    ``selection_at`` argument.

    With ``learn_gain=True`` class c also owns a gain map ``g[c]: Tensor[*shape]`` (initialised
    to 1) and its mean is ``g[c] * x + m[c, 0]``: the layer can then turn the input down where
    the task does not need it, down to a release that is the class's mean map plus noise and
    carries nothing of ``x`` beyond the class.

    Args:
        shape: the shape of one input sample, e.g. ``(3, 32, 32)``.
        num_classes: C.
        distribution, distribution_options: as for the convolution.
        learn_gain: learn a per-class gain on the input (default: the input passes unscaled).
    """

    def __init__(
        self,
        shape: Sequence[int],
        num_classes: int,
        *,
        distribution: str = "gaussian",
        distribution_options: dict[str, Any] | None = None,
        learn_gain: bool = False,
    ) -> None:
        super().__init__(
            num_classes, distribution=distribution, distribution_options=distribution_options
        )
        try:
            self.shape = tuple(int(s) for s in shape)
        except TypeError as exc:
            raise ConfigError(f"shape must be a sequence of positive ints, but got {shape!r}") from exc
        if not self.shape or any(s <= 0 for s in self.shape):
            raise ConfigError(f"shape must be a non-empty sequence of positive ints, but got {shape!r}")
        init = torch.tensor(self.noise.initial_bias())
        offsets = init.reshape(1, -1, *([1] * len(self.shape))).expand(
            self.num_classes, self.num_params, *self.shape
        )
        self.offsets = nn.Parameter(offsets.clone())
        if not isinstance(learn_gain, bool):
            raise ConfigError(f"learn_gain must be True or False, but got {learn_gain!r}")
        self.learn_gain = learn_gain
        self.gains = nn.Parameter(torch.ones(self.num_classes, *self.shape)) if learn_gain else None

    def params(self, x: Tensor, pi: Selection) -> list[Tensor]:
        """Raw parameter maps, each ``Tensor[B, *shape]``."""
        check_tensor(x, "x", ndim=len(self.shape) + 1)
        if tuple(x.shape[1:]) != self.shape:
            raise ShapeError(
                f"x must have shape [B, {', '.join(map(str, self.shape))}], but got {tuple(x.shape)}"
            )
        sel = self._selection(pi, x.shape[0])
        if isinstance(sel, ClassIndex):
            maps = self.offsets[sel.labels]  # [B, P, *shape]
            first = (x if self.gains is None else self.gains[sel.labels] * x) + maps[:, 0]
        else:
            values = sel.values.unsqueeze(0) if isinstance(sel, SharedSelection) else sel
            _broadcast_check("input", tuple(values.shape[2:]), self.shape)
            weights = values.reshape(*values.shape, *([1] * (len(self.shape) + 2 - values.dim())))
            if values.dim() == 2:
                # one weight per class (a gate's [B, C]): a matrix product, ten times faster on
                # CPU than the einsum below over the expanded weights
                rows = values.shape[0]
                maps = (values @ self.offsets.flatten(1)).reshape(rows, *self.offsets.shape[1:])
                gain = weights.sum(1) if self.gains is None else \
                    (values @ self.gains.flatten(1)).reshape(rows, *self.shape)
            else:
                expanded = weights.expand(-1, -1, *self.shape)
                maps = torch.einsum("nc...,cp...->np...", expanded, self.offsets)
                gain = weights.sum(1) if self.gains is None else torch.einsum("nc...,c...->n...", expanded, self.gains)
            maps = maps.expand(x.shape[0], *maps.shape[1:])  # a shared selection has one row
            first = gain * x + maps[:, 0]
        return [first, *maps[:, 1:].unbind(1)] if self.num_params > 1 else [first]

    def extra_repr(self) -> str:
        gain = ", learn_gain=True" if self.learn_gain else ""
        return f"shape={self.shape}, num_classes={self.num_classes}, distribution={self.noise!r}{gain}"

    def config(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "num_classes": self.num_classes,
            "distribution": self.noise.name,
            "distribution_options": self.noise.config(),
            "learn_gain": self.learn_gain,
        }
