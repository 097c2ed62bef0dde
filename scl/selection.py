"""Selection layers: which class's parameter networks each input (or each pixel) goes through.

A stochastic conditional layer takes a selection ``pi`` beside its input. It may be

* a :class:`ClassIndex` (``HardSelection(C)(labels)``, or a plain ``int64`` label tensor): one
  class per sample, the hard selection of classification. Layers take a fast path: they gather
  each sample's class parameters and run one batched op, at about the cost of one plain layer.
* a :class:`SharedSelection` (``SoftSelection(C, shape)()``): one set of C tensors for the whole
  batch. Layers mix the class kernels once and, in eval mode, cache the mixed kernels.
* a dense ``Tensor[B, C, *S]`` with values in [0, 1]: one selection per sample, e.g. a
  :class:`GatedSelection` output ``Tensor[B, C]`` or the box masks of detection
  ``Tensor[B, C, 1, H, W]``.

``S`` is ``()`` (one value per class) or has the rank of the selected features (``(channels, H,
W)`` for a convolution, ``(..., features)`` for a linear layer), each size 1 or equal to the
feature's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scl.errors import ConfigError, LabelError, ShapeError
from scl.io import register_module
from scl.validation import check_num_classes, check_tensor, fingerprint


@dataclass(frozen=True, eq=False)
class ClassIndex:
    """Hard selection with one class per sample: ``labels: Tensor[B]`` (int64)."""

    labels: Tensor
    num_classes: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def dense(self, rank: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
        """The same selection as 0/1 tensors: ``Tensor[B, C, 1 (x rank)]``."""
        onehot = torch.nn.functional.one_hot(self.labels, self.num_classes).to(dtype)
        return onehot.reshape(*onehot.shape, *([1] * rank))


@dataclass(frozen=True, eq=False)
class SharedSelection:
    """One selection for the whole batch: ``values: Tensor[C, *S]``.

    ``key`` identifies the values' source and version; layers cache kernels mixed with these values
    in eval mode while the key is unchanged. ``None`` disables caching.
    """

    values: Tensor
    key: tuple[Any, ...] | None = None

    @property
    def num_classes(self) -> int:
        return int(self.values.shape[0])


Selection = ClassIndex | SharedSelection | Tensor


def check_labels(labels: Any, num_classes: int, batch_size: int | None = None, *, name: str = "labels") -> Tensor:
    """Validate class labels and return them as ``int64`` (``name`` is used in the messages).

    Raises:
        LabelError: wrong type, rank, length, or a label outside ``[0, num_classes)``.
    """
    if not isinstance(labels, Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise LabelError(f"{name} must be a tensor of class indices, but got {labels!r}") from exc
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise LabelError(
            f"{name} must be integer class indices, but got dtype {labels.dtype}; "
            f"convert with {name.rsplit('.', 1)[-1]}.long()"
        )
    if labels.dim() != 1:
        raise LabelError(f"{name} must be a 1-D tensor [B], but got shape {tuple(labels.shape)}")
    if batch_size is not None and labels.shape[0] != batch_size:
        raise LabelError(
            f"{name} must have one entry per sample ({batch_size}), but got {labels.shape[0]}"
        )
    if labels.numel():
        bad = (labels < 0) | (labels >= num_classes)
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            raise LabelError(
                f"{name} must be in [0, {num_classes}), but got {int(labels[index])} at index {index}"
            )
    return labels.long()


@register_module
class HardSelection(nn.Module):
    """Fixed 0/1 selection from labels (classification) or boxes (detection).

    Args:
        num_classes: C, the number of classes.
        background: for boxes, the class whose tensor is 1 at pixels outside every box; ``None``
            (default) leaves those pixels at 0 in every class tensor.

    ``HardSelection(C)(labels)`` returns a :class:`ClassIndex` (the fast path);
    ``from_boxes(targets, size, image_size)`` returns masks ``Tensor[B, C, 1, H, W]``.
    """

    def __init__(self, num_classes: int, *, background: int | None = None) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        if background is not None and not 0 <= background < self.num_classes:
            raise ConfigError(
                f"background must be None or a class in [0, {self.num_classes}), "
                f"but got {background!r}"
            )
        self.background = background

    def forward(self, labels: Tensor) -> ClassIndex:
        """``labels: Tensor[B]`` -> :class:`ClassIndex`."""
        return ClassIndex(check_labels(labels, self.num_classes), self.num_classes)

    def from_boxes(
        self,
        targets: Sequence[Mapping[str, Tensor] | tuple[Tensor, Tensor]],
        size: tuple[int, int],
        image_size: tuple[int, int],
    ) -> Tensor:
        """Masks ``Tensor[B, C, 1, H, W]``: ``pi_c = 1`` on the union of class-c boxes.

        Args:
            targets: per image, ``{"boxes": Tensor[N, 4], "labels": Tensor[N]}`` or a tuple
                ``(boxes, labels)``; boxes are ``(x0, y0, x1, y1)`` in pixels of the image.
            size: ``(H, W)`` of the masks (the resolution where the selection is applied).
            image_size: ``(H0, W0)`` of the images the boxes refer to.

        A mask pixel is 1 when the box overlaps it at all, so a small box still selects at least
        one pixel at a coarse resolution.
        """
        h, w = (int(v) for v in size)
        h0, w0 = (int(v) for v in image_size)
        if min(h, w, h0, w0) <= 0:
            raise ShapeError(f"size and image_size must be positive, but got {size} and {image_size}")
        masks = torch.zeros(len(targets), self.num_classes, 1, h, w)
        ys = torch.arange(h, dtype=torch.float32)
        xs = torch.arange(w, dtype=torch.float32)
        for i, target in enumerate(targets):
            boxes, labels = _unpack_target(target, i)
            labels = check_labels(labels, self.num_classes, boxes.shape[0])
            if boxes.numel():
                scaled = boxes.float() * torch.tensor([w / w0, h / h0, w / w0, h / h0])
                # pixel [y, y+1) overlaps [y0, y1) when y < y1 and y + 1 > y0
                inside_y = (ys[None] < scaled[:, 3:4]) & (ys[None] + 1 > scaled[:, 1:2])
                inside_x = (xs[None] < scaled[:, 2:3]) & (xs[None] + 1 > scaled[:, 0:1])
                inside = (inside_y[:, :, None] & inside_x[:, None, :]).float()  # [N, H, W]
                onehot = torch.nn.functional.one_hot(labels, self.num_classes).float()
                masks[i, :, 0] = (torch.einsum("nc,nhw->chw", onehot, inside) > 0).float()
            if self.background is not None:
                masks[i, self.background, 0] = torch.maximum(
                    masks[i, self.background, 0], (masks[i, :, 0].sum(0) == 0).float()
                )
        return masks

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, background={self.background}"

    def config(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "background": self.background}


def _unpack_target(target: Any, index: int) -> tuple[Tensor, Tensor]:
    if isinstance(target, Mapping):
        if "boxes" not in target or "labels" not in target:
            raise LabelError(
                f"target {index} must have keys 'boxes' and 'labels', but has {sorted(target)}"
            )
        boxes, labels = target["boxes"], target["labels"]
    elif isinstance(target, (tuple, list)) and len(target) == 2:
        boxes, labels = target
    else:
        raise LabelError(
            f"target {index} must be a dict with 'boxes' and 'labels' or a (boxes, labels) tuple, "
            f"but got {type(target).__name__}"
        )
    boxes = torch.as_tensor(boxes)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise LabelError(
            f"boxes of target {index} must have shape [N, 4] (x0, y0, x1, y1), "
            f"but got {tuple(boxes.shape)}"
        )
    if boxes.numel() and bool((boxes[:, 2:] < boxes[:, :2]).any()):
        raise LabelError(f"boxes of target {index} must have x1 >= x0 and y1 >= y0, but got {boxes}")
    return boxes, torch.as_tensor(labels)


@register_module
class SoftSelection(nn.Module):
    """Trainable selection shared by the batch: C tensors of ``shape`` with values in [0, 1].

    Values are ``sigmoid(logits)``. They start at ``1 / C`` everywhere, so an untrained soft
    selection computes the average of the class layers (for a convolution or linear layer with the
    selection at its input, exactly the layer whose kernels are the mean of the class kernels).

    Args:
        num_classes: C.
        shape: the shape S of each class tensor: ``()`` for one value per class, ``(channels, 1,
            1)`` per channel, ``(1, H, W)`` or ``(channels, H, W)`` for spatial maps.
        init: initial value in (0, 1) instead of ``1 / C``.

    Calling the module returns a :class:`SharedSelection` that layers accept as ``pi``.
    """

    def __init__(
        self, num_classes: int, shape: Sequence[int] = (), *, init: float | None = None
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        shape = tuple(int(s) for s in shape)
        if any(s <= 0 for s in shape):
            raise ShapeError(f"shape must contain positive sizes, but got {shape}")
        self.shape = shape
        value = 1.0 / self.num_classes if init is None else float(init)
        if not 0.0 < value < 1.0:
            raise ConfigError(f"init must be in (0, 1), but got {init!r}")
        self.init = init
        self.logits = nn.Parameter(torch.full((self.num_classes, *shape), math.log(value / (1 - value))))
        self._cache: tuple[tuple[Any, ...], Tensor] | None = None
        self._generation = 0  # bumped by invalidate_cache(): part of the key layers cache under

    def invalidate_cache(self) -> None:
        """Forget the cached values, and make every layer's kernels cached for them stale. Needed
        only after editing ``logits`` through ``.data``, which PyTorch's version counter does not
        see; optimiser steps, ``load_state_dict`` and edits under ``torch.no_grad()`` are seen."""
        self._cache = None
        self._generation += 1

    @property
    def values(self) -> Tensor:
        """``Tensor[C, *shape]`` in [0, 1]."""
        return torch.sigmoid(self.logits)

    def forward(self, x: Tensor | None = None) -> SharedSelection:
        """Return the selection (``x`` is accepted and ignored, so it fits a pipeline)."""
        key = (id(self), self._generation, *fingerprint(self.logits))
        if self.logits.requires_grad and torch.is_grad_enabled():
            return SharedSelection(self.values, key)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.values.detach())
        return SharedSelection(self._cache[1], key)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, shape={self.shape}"

    def config(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "shape": list(self.shape), "init": self.init}


@register_module
class GatedSelection(nn.Module):
    """Extension beyond the spec: a small network that predicts ``pi`` from the input itself.

    For label-free inference that adapts to each input: ``Tensor[B, C]``, a softmax over classes
    (so the class layers are mixed by a convex combination). ``features="image"`` expects
    ``Tensor[B, in_channels, H, W]``; ``features="vector"`` expects ``Tensor[B, in_channels]``.

    ``network``: start the gate from a classifier of ``x`` instead of a small network of its own:
    the gate holds that module (its logits, softmaxed) and trains it from there. The owner holds
    the task network N to train the layer anyway; a copy of N picks the class as well as N reads
    it, where a small gate trained on the obfuscator split alone picks it worse. Pass a copy
    (``copy.deepcopy(network)``): the gate's training changes the module. For checkpoints it must
    be an scl module (e.g. a network of :mod:`scl.models`).

    ``pick``: ``"softmax"`` mixes the classes by the gate's probabilities; ``"argmax"`` does so
    while training (so gradients flow) and, in eval mode, gives the one-hot row of the most
    probable class, so the release is that one class's and carries nothing of the gate's
    doubts. On 1,200 real photographs with the class-mean layer, argmax kept 96.6% against the
    softmax's 95.4% (clean 97.1%).
    """

    def __init__(
        self, num_classes: int, in_channels: int, *, hidden: int = 32, features: str = "image",
        network: nn.Module | None = None, pick: str = "softmax",
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels <= 0:
            raise ConfigError(f"in_channels must be a positive int, but got {in_channels!r}")
        if features not in ("image", "vector"):
            raise ConfigError(f"features must be 'image' or 'vector', but got {features!r}")
        self.in_channels, self.hidden, self.features = in_channels, hidden, features
        if pick not in ("softmax", "argmax"):
            raise ConfigError(f"pick must be 'softmax' or 'argmax', but got {pick!r}")
        self.pick = pick
        if network is not None and not isinstance(network, nn.Module):
            raise ConfigError(f"network must be an nn.Module (a classifier of x), but got {type(network).__name__}")
        self.from_network = network is not None
        if network is not None:
            self.net: nn.Module = network
            for parameter in network.parameters():
                parameter.requires_grad_(True)
        elif features == "image":
            self.net = nn.Sequential(
                nn.Conv2d(in_channels, hidden, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(hidden, num_classes),
            )
        else:
            self.net = nn.Sequential(
                nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
            )

    def forward(self, x: Tensor) -> Tensor:
        """``x`` -> ``Tensor[B, C]`` (rows sum to 1)."""
        rank = 4 if self.features == "image" else 2
        check_tensor(x, "x", ndim=rank, channels=self.in_channels)
        logits = self.net(x)
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ShapeError(
                f"the gate's network must give logits of shape [B, {self.num_classes}], "
                f"but gave {tuple(logits.shape)}"
            )
        if self.pick == "argmax" and not self.training:
            return F.one_hot(logits.argmax(-1), self.num_classes).to(logits.dtype)
        return torch.softmax(logits, dim=-1)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, in_channels={self.in_channels}, "
            f"features={self.features!r}" + (", from a network" if self.from_network else "")
            + (", pick='argmax'" if self.pick == "argmax" else "")
        )

    def config(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "hidden": self.hidden,
            "features": self.features,
            **({"network": self.net} if self.from_network else {}),
            **({"pick": self.pick} if self.pick != "softmax" else {}),
        }
