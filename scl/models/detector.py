"""A small single-stage, anchor-free detector in the style of CenterNet (Zhou et al., 2019).

The task network N of ``scl detect``: a few convolutions down to stride 4, then three heads:

* ``heatmap``: ``Tensor[B, C, H/4, W/4]`` logits of a per-class centre heatmap, trained with
  CenterNet's penalty-reduced focal loss against Gaussian peaks at the box centres;
* ``size``: ``Tensor[B, 2, H/4, W/4]`` box width and height in output cells (L1 at centres);
* ``offset``: ``Tensor[B, 2, H/4, W/4]`` sub-cell centre offset in [0, 1) (L1 at centres).

Decoding (:func:`decode`) keeps the local maxima of the heatmap (3 x 3 max-pooling, no NMS
library), the top ``k`` over all classes and positions, and those scoring at least
``threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scl.errors import ConfigError, ShapeError
from scl.io import register_module
from scl.validation import check_tensor

__all__ = ["CenterNet", "decode", "encode_targets", "gaussian_radius"]

Detections = list[dict[str, Tensor]]


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius: a centre shifted by it still gives a box of IoU >= ``min_overlap``."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def encode_targets(
    targets: Sequence[Mapping[str, Tensor]],
    num_classes: int,
    out_size: tuple[int, int],
    stride: int,
) -> dict[str, Tensor]:
    """Training targets for a batch of images.

    Args:
        targets: per image ``{"boxes": Tensor[K, 4] (x0, y0, x1, y1 input pixels), "labels": Tensor[K]}``.
        num_classes: C.
        out_size: ``(h, w)`` of the heatmap.
        stride: input pixels per heatmap cell.

    Returns:
        ``heatmap`` ``Tensor[B, C, h, w]`` (Gaussian peaks, exactly 1 at centres), ``size`` and
        ``offset`` ``Tensor[B, 2, h, w]``, and ``mask`` ``Tensor[B, 1, h, w]`` (1 at centres).
    """
    h, w = out_size
    b = len(targets)
    heat = torch.zeros(b, num_classes, h, w)
    size = torch.zeros(b, 2, h, w)
    offset = torch.zeros(b, 2, h, w)
    mask = torch.zeros(b, 1, h, w)
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    for i, target in enumerate(targets):
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            x0, y0, x1, y1 = (v / stride for v in box)
            bw, bh = x1 - x0, y1 - y0
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            ix, iy = min(max(int(cx), 0), w - 1), min(max(int(cy), 0), h - 1)
            radius = max(0, int(gaussian_radius(math.ceil(bh), math.ceil(bw))))
            sigma = (2 * radius + 1) / 6
            peak = torch.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma**2))
            heat[i, label] = torch.maximum(heat[i, label], peak)
            size[i, :, iy, ix] = torch.tensor([bw, bh])
            offset[i, :, iy, ix] = torch.tensor([cx - ix, cy - iy])
            mask[i, 0, iy, ix] = 1.0
    return {"heatmap": heat, "size": size, "offset": offset, "mask": mask}


def focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss (alpha 2, beta 4), per positive."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = torch.log(1 - p) * p**2 * (1 - target) ** 4 * (1 - pos)
    num_pos = pos.sum().clamp_min(1.0)
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos


def decode(
    heatmap: Tensor,
    size: Tensor,
    offset: Tensor,
    *,
    stride: int,
    image_size: tuple[int, int] | None = None,
    k: int = 20,
    threshold: float = 0.05,
) -> Detections:
    """Peaks of the heatmap -> boxes.

    Args:
        heatmap: ``Tensor[B, C, h, w]`` probabilities (after the sigmoid).
        size: ``Tensor[B, 2, h, w]`` box width and height in cells.
        offset: ``Tensor[B, 2, h, w]`` centre offsets in cells.
        stride: input pixels per cell.
        image_size: ``(H, W)`` to clip boxes to (default ``(h * stride, w * stride)``).
        k: at most this many detections per image.
        threshold: the lowest score kept.

    Returns:
        Per image ``{"boxes": Tensor[K, 4] (x0, y0, x1, y1 input pixels), "scores": Tensor[K],
        "labels": Tensor[K] int64}``, by decreasing score.
    """
    if heatmap.dim() != 4 or size.shape != (heatmap.shape[0], 2, *heatmap.shape[2:]) or size.shape != offset.shape:
        raise ShapeError(
            "decode expects heatmap Tensor[B, C, h, w] and size, offset Tensor[B, 2, h, w], but got "
            f"{tuple(heatmap.shape)}, {tuple(size.shape)} and {tuple(offset.shape)}"
        )
    b, c, h, w = heatmap.shape
    height, width = image_size or (h * stride, w * stride)
    peaks = heatmap * (F.max_pool2d(heatmap, 3, stride=1, padding=1) == heatmap).float()
    scores, index = peaks.flatten(1).topk(min(k, c * h * w), dim=1)
    labels = index // (h * w)
    pos = index % (h * w)
    ys, xs = (pos // w).float(), (pos % w).float()
    size_flat, offset_flat = size.flatten(2), offset.flatten(2)
    out: Detections = []
    for i in range(b):
        bw = size_flat[i, 0, pos[i]]
        bh = size_flat[i, 1, pos[i]]
        cx = xs[i] + offset_flat[i, 0, pos[i]]
        cy = ys[i] + offset_flat[i, 1, pos[i]]
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1) * stride
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = scores[i] >= threshold
        out.append({"boxes": boxes[keep], "scores": scores[i][keep], "labels": labels[i][keep]})
    return out


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation), nn.BatchNorm2d(cout), nn.ReLU()
    )


@register_module
class CenterNet(nn.Module):
    """A small CenterNet: ``x: Tensor[B, in_channels, H, W]`` -> heads at stride 4.

    ``forward(x)`` returns ``{"heatmap": Tensor[B, C, H/4, W/4] (logits), "size": Tensor[B, 2,
    H/4, W/4], "offset": Tensor[B, 2, H/4, W/4]}``; ``loss(x, targets)`` the training loss;
    ``detect(x)`` the decoded boxes. H and W must be multiples of 4.

    Args:
        in_channels: image channels.
        num_classes: C object categories.
        width: channels of the first block (later blocks use 2x).
    """

    stride = 4

    def __init__(self, in_channels: int, num_classes: int, *, width: int = 16) -> None:
        super().__init__()
        for value, name in ((in_channels, "in_channels"), (num_classes, "num_classes"), (width, "width")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, but got {value!r}")
        self.in_channels, self.num_classes, self.width = in_channels, num_classes, width
        wide = 2 * width
        self.backbone = nn.Sequential(
            _block(in_channels, width, stride=2),
            _block(width, wide, stride=2),
            _block(wide, wide),
            _block(wide, wide, dilation=2),
        )
        self.heatmap = nn.Conv2d(wide, num_classes, 1)
        self.size = nn.Conv2d(wide, 2, 1)
        self.offset = nn.Conv2d(wide, 2, 1)
        nn.init.constant_(cast(Tensor, self.heatmap.bias), -2.19)  # prior 0.1, as CenterNet

    def _check(self, x: Tensor) -> None:
        check_tensor(x, "x", ndim=4, channels=self.in_channels, finite=False)
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ShapeError(f"CenterNet needs H and W that are multiples of {self.stride}, but got "
                             f"{tuple(x.shape[-2:])}; pad or resize the images")

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self._check(x)
        features = self.backbone(x)
        return {"heatmap": self.heatmap(features), "size": self.size(features),
                "offset": torch.sigmoid(self.offset(features))}

    def encode(self, targets: Sequence[Mapping[str, Tensor]], image_size: tuple[int, int]) -> dict[str, Tensor]:
        """:func:`encode_targets` at this network's output size."""
        out = (image_size[0] // self.stride, image_size[1] // self.stride)
        return encode_targets(targets, self.num_classes, out, self.stride)

    def loss_from_encoded(
        self, outputs: Mapping[str, Tensor], encoded: Mapping[str, Tensor]
    ) -> tuple[Tensor, dict[str, float]]:
        """Focal heatmap loss + 0.1 x size L1 + offset L1 (the L1 terms at centres, per object)."""
        mask = encoded["mask"]
        num = mask.sum().clamp_min(1.0)
        heat = focal_loss(outputs["heatmap"], encoded["heatmap"])
        size = (F.l1_loss(outputs["size"], encoded["size"], reduction="none") * mask).sum() / num
        off = (F.l1_loss(outputs["offset"], encoded["offset"], reduction="none") * mask).sum() / num
        total = heat + 0.1 * size + off
        return total, {"heatmap_loss": float(heat.detach()), "size_loss": float(size.detach()),
                       "offset_loss": float(off.detach())}

    def loss(self, x: Tensor, targets: Sequence[Mapping[str, Tensor]]) -> tuple[Tensor, dict[str, float]]:
        """The training loss of ``x: Tensor[B, C, H, W]`` against per-image boxes and labels."""
        return self.loss_from_encoded(self(x), self.encode(targets, (x.shape[-2], x.shape[-1])))

    @torch.no_grad()
    def detect(self, x: Tensor, *, k: int = 20, threshold: float = 0.05) -> Detections:
        """Boxes, scores and labels per image (see :func:`decode`)."""
        out = self(x)
        return decode(torch.sigmoid(out["heatmap"]), out["size"], out["offset"], stride=self.stride,
                      image_size=(x.shape[-2], x.shape[-1]), k=k, threshold=threshold)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, num_classes={self.num_classes}, width={self.width}, "
                f"stride={self.stride}")

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "width": self.width}
