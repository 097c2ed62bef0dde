"""Embodiments of spec §5: where the stochastic conditional layer sits relative to the network N.

* :class:`ObfuscatedNetwork` (§5.1): ``x -> L -> S -> N``.
* :class:`SplitNetwork` (§5.2 and §5.3): N is split into ``N1`` and ``N2``; ``O1 = N1(x)`` and
  ``O2 = L(x)`` are merged (by concatenation along channels or by sum) either before S
  (``order="merge_first"``: ``N2(S(merge(O1, O2)))``, §5.2) or after it
  (``order="obfuscate_first"``: ``N2(merge(O1, S(O2)))``, §5.3).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from scl.errors import ShapeError
from scl.obfuscator import Obfuscator
from scl.validation import check_choice

MERGES = ("concat", "sum")
ORDERS = ("merge_first", "obfuscate_first")


def merge(a: Tensor, b: Tensor, how: str) -> Tensor:
    """Merge two activations: ``"concat"`` along dim 1 or ``"sum"``."""
    check_choice("merge", how, MERGES)
    if how == "concat":
        if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
            raise ShapeError(
                "to concatenate, O1 and O2 must match in every dim but 1, "
                f"but got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        return torch.cat([a, b], 1)
    if a.shape != b.shape:
        raise ShapeError(f"to sum, O1 and O2 must have the same shape, but got {tuple(a.shape)} and {tuple(b.shape)}")
    return a + b


class ObfuscatedNetwork(nn.Module):
    """§5.1: ``N(S(L(x)))``. ``forward(x, labels=None, boxes=None)`` as :class:`Obfuscator`."""

    def __init__(self, obfuscator: Obfuscator, network: nn.Module) -> None:
        super().__init__()
        self.obfuscator = obfuscator
        self.network = network

    def forward(self, x: Tensor, labels: Tensor | None = None, boxes: Any = None) -> Tensor:
        return self.network(self.obfuscator(x, labels, boxes))


class SplitNetwork(nn.Module):
    """§5.2/§5.3: N split into ``n1`` and ``n2``, the obfuscated branch merged before or after S.

    Args:
        n1: the first part of N, applied to x (``O1``).
        n2: the second part of N, applied to the merged (or obfuscated-then-merged) activations.
        obfuscator: S with its selection; its ``pre`` layers are L (``O2 = L(x)``).
        merge: ``"concat"`` (along channels) or ``"sum"``.
        order: ``"merge_first"`` (§5.2) or ``"obfuscate_first"`` (§5.3).
    """

    def __init__(
        self,
        n1: nn.Module,
        n2: nn.Module,
        obfuscator: Obfuscator,
        *,
        merge: str = "concat",
        order: str = "merge_first",
    ) -> None:
        super().__init__()
        self.n1, self.n2, self.obfuscator = n1, n2, obfuscator
        self.merge = check_choice("merge", merge, MERGES)
        self.order = check_choice("order", order, ORDERS)

    def forward(self, x: Tensor, labels: Tensor | None = None, boxes: Any = None) -> Tensor:
        o1 = self.n1(x)
        o2 = self.obfuscator.features(x)
        image_size = (x.shape[-2], x.shape[-1]) if x.dim() >= 3 else None
        if self.order == "merge_first":
            merged = merge(o1, o2, self.merge)
            h = self.obfuscator.sample(merged, labels, boxes, image_size=image_size)
            return self.n2(h)
        h = self.obfuscator.sample(o2, labels, boxes, image_size=image_size)
        return self.n2(merge(o1, h, self.merge))

    def extra_repr(self) -> str:
        return f"merge={self.merge!r}, order={self.order!r}"
