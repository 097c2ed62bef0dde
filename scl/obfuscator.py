"""The obfuscator: optional pre-layers L, a stochastic conditional layer S and its selection."""

from __future__ import annotations

from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from scl.errors import ConfigError, LabelError
from scl.io import register_module
from scl.layers.base import StochasticConditionalLayer
from scl.random import CipherStream
from scl.selection import (
    ClassIndex,
    GatedSelection,
    HardSelection,
    Selection,
    SoftSelection,
    check_labels,
)
from scl.validation import check_tensor

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def freeze(module: ModuleT) -> ModuleT:
    """Stop gradients to every parameter of ``module`` (stage 2 trains the selection only)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


@register_module
class Obfuscator(nn.Module):
    """``x -> L -> S``: obfuscate inputs with a stochastic conditional layer.

    Args:
        layer: a stochastic conditional layer (S).
        selection: the label-free selection used when no labels or boxes are given: a
            :class:`SoftSelection` (spec §2.1.1) or a :class:`GatedSelection`.
        pre: optional regular layers L applied before S (spec §5.1). A gated selection reads the
            input x, not L(x): it predicts the class of what the owner holds (a gate started
            from the task network N reads images, and L(x) is not one N was trained on).
        box_background: with ``boxes``, the class whose selection is 1 outside every box
            (``None``: those pixels go through no class; see :class:`HardSelection`).

    ``obfuscator(x, labels=labels)`` uses a hard selection (stage 1, or inference when labels are
    known); ``obfuscator(x, boxes=targets)`` a hard selection from boxes (detection);
    ``obfuscator(x)`` the attached soft or gated selection (label-free inference, spec §3.2).
    """

    def __init__(
        self,
        layer: StochasticConditionalLayer,
        selection: SoftSelection | GatedSelection | None = None,
        pre: nn.Module | None = None,
        *,
        box_background: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(layer, StochasticConditionalLayer):
            raise ConfigError(
                f"layer must be a stochastic conditional layer, but got {type(layer).__name__}"
            )
        if selection is not None:
            if not isinstance(selection, (SoftSelection, GatedSelection)):
                raise ConfigError(
                    "selection must be a SoftSelection or a GatedSelection, "
                    f"but got {type(selection).__name__}"
                )
            if selection.num_classes != layer.num_classes:
                raise ConfigError(
                    f"the selection has {selection.num_classes} classes but the layer has "
                    f"{layer.num_classes}"
                )
        self.layer = layer
        self.selection = selection
        self.pre = pre
        self.hard = HardSelection(layer.num_classes, background=box_background)

    @property
    def num_classes(self) -> int:
        return self.layer.num_classes

    def select(
        self,
        features: Tensor,
        labels: Tensor | None = None,
        boxes: Any = None,
        *,
        image_size: tuple[int, int] | None = None,
        inputs: Tensor | None = None,
    ) -> Selection:
        """The selection for ``features`` (the layer's input): hard, soft or gated. A gated
        selection reads ``inputs`` (x before the pre-layers) when given, else ``features``."""
        if labels is not None and boxes is not None:
            raise LabelError("pass either labels (classification) or boxes (detection), not both")
        if labels is not None:
            return ClassIndex(check_labels(labels, self.num_classes, features.shape[0]), self.num_classes)
        if boxes is not None:
            if len(boxes) != features.shape[0]:
                raise LabelError(
                    f"boxes must have one target per image ({features.shape[0]}), but got {len(boxes)}"
                )
            size = cast("tuple[int, int]", tuple(features.shape[-2:]))
            if self.layer.selection_at == "output":
                size = cast("tuple[int, int]", self.layer.output_spatial(features))
            masks = self.hard.from_boxes(boxes, size, image_size or cast("tuple[int, int]", tuple(features.shape[-2:])))
            return masks.to(features.device, features.dtype)
        if isinstance(self.selection, SoftSelection):
            return self.selection()
        if isinstance(self.selection, GatedSelection):
            return self.selection(features if inputs is None else inputs)
        raise ConfigError(
            "no labels or boxes were given and the obfuscator has no soft or gated selection: "
            "pass labels= for a hard selection, or train a selection (stage 2) and attach it "
            "with Obfuscator(layer, selection=...)"
        )

    def sample(
        self,
        features: Tensor,
        labels: Tensor | None = None,
        boxes: Any = None,
        *,
        image_size: tuple[int, int] | None = None,
        generator: torch.Generator | CipherStream | None = None,
        inputs: Tensor | None = None,
    ) -> Tensor:
        """Apply S (without L) to ``features``; a gated selection reads ``inputs`` when given."""
        pi = self.select(features, labels, boxes, image_size=image_size, inputs=inputs)
        return self.layer(features, pi, generator=generator)

    def features(self, x: Tensor) -> Tensor:
        """``L(x)`` (or ``x`` without pre-layers)."""
        check_tensor(x, "x", min_ndim=2)
        return self.pre(x) if self.pre is not None else x

    def forward(
        self,
        x: Tensor,
        labels: Tensor | None = None,
        boxes: Any = None,
        *,
        generator: torch.Generator | CipherStream | None = None,
    ) -> Tensor:
        """An obfuscated sample of ``x`` (noise: the cipher stream in eval mode, see :mod:`scl.random`)."""
        image_size = (x.shape[-2], x.shape[-1]) if x.dim() >= 3 else None
        return self.sample(self.features(x), labels, boxes, image_size=image_size, generator=generator,
                           inputs=x)

    def sample_with_distribution(
        self, x: Tensor, labels: Tensor | None = None, boxes: Any = None
    ) -> tuple[Tensor, Distribution]:
        """``(sample, distribution)`` from one computation (for losses that need both)."""
        h = self.features(x)
        image_size = (x.shape[-2], x.shape[-1]) if x.dim() >= 3 else None
        return self.layer.sample_with_distribution(
            h, self.select(h, labels, boxes, image_size=image_size, inputs=x))

    def distribution(self, x: Tensor, labels: Tensor | None = None, boxes: Any = None) -> Distribution:
        """The distribution the obfuscated sample is drawn from."""
        h = self.features(x)
        image_size = (x.shape[-2], x.shape[-1]) if x.dim() >= 3 else None
        return self.layer.distribution(h, self.select(h, labels, boxes, image_size=image_size, inputs=x))

    def with_selection(self, selection: SoftSelection | GatedSelection | None) -> Obfuscator:
        """An obfuscator with this one's layer and pre-layers (shared, not copied) and another
        label-free selection, e.g. a gated selection beside the soft one."""
        return Obfuscator(self.layer, selection, self.pre, box_background=self.hard.background)

    def freeze_layer(self) -> Obfuscator:
        """Freeze L and S so that only the selection trains (spec §3.1.2); returns ``self``."""
        freeze(self.layer)
        if self.pre is not None:
            freeze(self.pre)
        return self

    def invalidate_cache(self) -> None:
        """Forget what the layer and the selection cache for inference (see
        :meth:`scl.layers.ClassLinearMap.invalidate_cache`): needed only after editing their
        parameters through ``.data``."""
        for module in self.modules():
            invalidate = getattr(module, "invalidate_cache", None)
            if module is not self and callable(invalidate):
                invalidate()

    def selection_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of the attached selection (for stage 2's optimiser)."""
        if self.selection is None:
            raise ConfigError("the obfuscator has no selection to train; attach one first")
        return [p for p in self.selection.parameters() if p.requires_grad]

    def config(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "selection": self.selection,
            "pre": self.pre,
            "box_background": self.hard.background,
        }
