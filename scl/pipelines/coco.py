"""COCO mAP with pycocotools, from in-memory boxes (no files, no printing).

:func:`coco_map` builds the ground truth and the detections as COCO dictionaries, runs
``COCOeval`` (``iouType="bbox"``, the standard 10 IoU thresholds .50:.05:.95, 101 recall points,
100 detections per image) with its prints silenced, and returns ``stats[0:3]``: mAP@[.5:.95],
mAP@.5 and mAP@.75 (area "all").

A category with no ground-truth object in the evaluated images is left out of the mean, as
COCOeval does; when there are no detections at all the mAPs are 0.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from scl.errors import LabelError

__all__ = ["coco_map", "to_coco"]


def _xywh(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def to_coco(
    targets: Sequence[Mapping[str, Tensor]],
    detections: Sequence[Mapping[str, Tensor]],
    *,
    num_classes: int,
    image_size: tuple[int, int],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(ground-truth dataset dict, detection result list)`` in COCO format.

    Image ids are ``1..N`` (in order), category ids ``1..C`` (label + 1), boxes ``[x, y, w, h]``.
    """
    if len(targets) != len(detections):
        raise LabelError(
            f"targets and detections must hold one entry per image, but got {len(targets)} and {len(detections)}"
        )
    h, w = image_size
    images = [{"id": i + 1, "width": int(w), "height": int(h)} for i in range(len(targets))]
    annotations: list[dict[str, Any]] = []
    results = []
    for i, (target, det) in enumerate(zip(targets, detections, strict=True)):
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            xywh = _xywh(box)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                                "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0})
        for box, label, score in zip(det["boxes"].tolist(), det["labels"].tolist(), det["scores"].tolist(),
                                     strict=True):
            results.append({"image_id": i + 1, "category_id": int(label) + 1, "bbox": _xywh(box),
                            "score": float(score)})
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    return gt, results


def coco_map(
    targets: Sequence[Mapping[str, Tensor]],
    detections: Sequence[Mapping[str, Tensor]],
    *,
    num_classes: int,
    image_size: tuple[int, int],
) -> dict[str, float]:
    """COCO box mAP of ``detections`` against ``targets``.

    Args:
        targets: per image ``{"boxes": Tensor[K, 4] (x0, y0, x1, y1), "labels": Tensor[K]}``.
        detections: per image ``{"boxes": Tensor[D, 4], "scores": Tensor[D], "labels": Tensor[D]}``.
        num_classes: C (labels in ``[0, C)``).
        image_size: ``(H, W)`` of the images.

    Returns:
        ``{"map": mAP@[.5:.95], "map50": mAP@.5, "map75": mAP@.75}`` in [0, 1].
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_dict, results = to_coco(targets, detections, num_classes=num_classes, image_size=image_size)
    if not results or not gt_dict["annotations"]:
        return {"map": 0.0, "map50": 0.0, "map75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [max(0.0, float(v)) for v in evaluator.stats[:3]]  # -1 means "no category with objects"
    return {"map": stats[0], "map50": stats[1], "map75": stats[2]}
