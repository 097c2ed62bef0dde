"""Detection data: generated digit scenes (embedded) and the user's boxes (.npz or COCO JSON).

:func:`make_scenes` pastes 1 to 4 handwritten digits of three categories ("0", "1", "7", from the
embedded scikit-learn digits) at random, non-overlapping positions on a dark, slightly noisy
canvas. Every digit is upscaled from 8x8 to 12, 16 or 20 pixels; its box is the tight box around
its ink. The scenes are a pure function of ``seed``.

:func:`load_detection_data` reads the user's data:

* ``.npz`` (read with ``allow_pickle=False``): ``images`` ``[N, H, W]`` or ``[N, C, H, W]``
  (uint8 0..255 or floats in [0, 1]); ``boxes`` ``float[M, 4]`` (x0, y0, x1, y1 pixels),
  ``box_labels`` ``int[M]`` and ``box_image`` ``int[M]`` (the image each box belongs to): a flat,
  object-free layout; optional ``class_names`` (a string array).
* COCO JSON: ``images`` (``id``, ``file_name``), ``annotations`` (``image_id``,
  ``category_id``, ``bbox`` = [x, y, w, h]) and ``categories`` (``id``, ``name``); image files
  next to the JSON (or under the ``file_name`` path relative to it). Images are resized to
  ``image_size`` and their boxes scaled with them.

Every problem is a :class:`~scl.errors.DataError` of one line: what is wrong, what was expected,
what was found and what to do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from scl.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_FRACTIONS",
    "SCENE_DIGITS",
    "DetectionData",
    "load_detection_data",
    "make_scenes",
    "split_detection",
]

#: The digits used as the three object categories of the embedded scenes.
SCENE_DIGITS: tuple[int, ...] = (0, 1, 7)
#: Partition of a detection data set: N's training data, the obfuscator's (stages 1-2), the
#: attacker's own data and the held-out test set.
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.4, "obfuscator": 0.2, "attacker": 0.2, "test": 0.2}
_SIZES = (12, 16, 20)
_NPZ_HINT = (
    "np.savez(path, images=uint8[N, H, W], boxes=float[M, 4] (x0, y0, x1, y1), "
    "box_labels=int[M], box_image=int[M])"
)


@dataclass(frozen=True, eq=False, repr=False)
class DetectionData:
    """Images with boxes, held in memory.

    Attributes:
        images: ``Tensor[N, C, H, W]`` float32 in [0, 1].
        boxes: N tensors ``Tensor[K_i, 4]`` (x0, y0, x1, y1) in pixels, float32.
        labels: N tensors ``Tensor[K_i]`` int64 in ``[0, num_classes)``.
        class_names: one name per category.
        name: short name for logs and ``metrics.json``.
    """

    images: Tensor
    boxes: list[Tensor]
    labels: list[Tensor]
    class_names: list[str]
    name: str

    def __post_init__(self) -> None:
        x = self.images
        if not isinstance(x, Tensor) or x.dim() != 4 or x.dtype != torch.float32:
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise DataError(f"DetectionData.images must be a float32 Tensor[N, C, H, W], but got {got}")
        if len(self.boxes) != len(x) or len(self.labels) != len(x):
            raise DataError(
                f"DetectionData needs one boxes and one labels tensor per image ({len(x)}), "
                f"but got {len(self.boxes)} and {len(self.labels)}"
            )
        if not self.class_names:
            raise DataError("DetectionData.class_names must name at least one category, but is empty")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (f"DetectionData(name={self.name!r}, images={tuple(self.images.shape)}, "
                f"objects={self.num_objects}, classes={self.class_names})")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def num_objects(self) -> int:
        return sum(int(b.shape[0]) for b in self.boxes)

    def targets(self, index: Sequence[int] | Tensor | None = None) -> list[dict[str, Tensor]]:
        """``[{"boxes": Tensor[K, 4], "labels": Tensor[K]}, ...]`` for the images ``index``."""
        rows = range(len(self)) if index is None else [int(i) for i in index]
        return [{"boxes": self.boxes[i], "labels": self.labels[i]} for i in rows]

    def subset(self, index: Sequence[int] | Tensor) -> DetectionData:
        rows = [int(i) for i in index]
        return DetectionData(
            images=self.images[rows].contiguous(),
            boxes=[self.boxes[i] for i in rows],
            labels=[self.labels[i] for i in rows],
            class_names=list(self.class_names),
            name=self.name,
        )


# -- embedded scenes ---------------------------------------------------------------------------------
def _digit_patches() -> tuple[dict[int, list[np.ndarray]], ...]:
    """Per size, per category: the upscaled digits ``float[s, s]`` in [0, 1]."""
    from scl.data.digits import _raw

    images, target = _raw()
    per_size = []
    for size in _SIZES:
        patches: dict[int, list[np.ndarray]] = {}
        for label, digit in enumerate(SCENE_DIGITS):
            x = torch.from_numpy(images[target == digit].astype(np.float32) / 16.0).unsqueeze(1)
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
            patches[label] = list(x[:, 0].numpy())
        per_size.append(patches)
    return tuple(per_size)


def make_scenes(num_images: int = 1600, *, size: int = 48, seed: int = 0, max_objects: int = 4,
                noise: float = 0.03) -> DetectionData:
    """Seeded scenes of 1..``max_objects`` digits "0", "1", "7" on a ``size`` x ``size`` canvas.

    Args:
        num_images: N.
        size: side of the square images in pixels (at least 24).
        seed: everything (digits, sizes, positions, background noise) follows from it.
        max_objects: at most this many objects per image (1..4 are drawn uniformly; an object
            that finds no free place after 30 tries is left out, so a few images hold fewer).
        noise: standard deviation of the Gaussian background noise (clipped to [0, 1]).

    Returns:
        :class:`DetectionData` named ``"scenes"``: ``images: Tensor[N, 1, size, size]``, boxes
        tight around each digit's ink, labels 0, 1, 2 for the digits 0, 1, 7.
    """
    for value, name, low in ((num_images, "num_images", 1), (size, "size", 24), (max_objects, "max_objects", 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an int >= {low}, but got {value!r}")
    rng = np.random.default_rng(seed)
    patches = _digit_patches()
    images = np.clip(rng.normal(0.0, noise, size=(num_images, size, size)), 0.0, 1.0).astype(np.float32)
    all_boxes, all_labels = [], []
    for n in range(num_images):
        placed: list[tuple[float, float, float, float]] = []
        labels: list[int] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            label = int(rng.integers(0, len(SCENE_DIGITS)))
            which = int(rng.integers(0, len(_SIZES)))
            s = _SIZES[which]
            if s > size:
                continue
            pool = patches[which][label]
            patch = pool[int(rng.integers(0, len(pool)))]
            ink_rows = np.flatnonzero(patch.max(1) > 0.2)
            ink_cols = np.flatnonzero(patch.max(0) > 0.2)
            if not len(ink_rows) or not len(ink_cols):
                continue
            for _ in range(30):
                y0, x0 = (int(v) for v in rng.integers(0, size - s + 1, size=2))
                box = (x0 + ink_cols[0], y0 + ink_rows[0], x0 + ink_cols[-1] + 1.0, y0 + ink_rows[-1] + 1.0)
                if all(box[0] >= b[2] + 1 or b[0] >= box[2] + 1 or box[1] >= b[3] + 1 or b[1] >= box[3] + 1
                       for b in placed):
                    images[n, y0:y0 + s, x0:x0 + s] = np.maximum(images[n, y0:y0 + s, x0:x0 + s], patch)
                    placed.append(tuple(float(v) for v in box))  # type: ignore[arg-type]
                    labels.append(label)
                    break
        all_boxes.append(torch.tensor(placed, dtype=torch.float32).reshape(-1, 4))
        all_labels.append(torch.tensor(labels, dtype=torch.int64))
    return DetectionData(
        images=torch.from_numpy(images).unsqueeze(1).contiguous(),
        boxes=all_boxes,
        labels=all_labels,
        class_names=[str(d) for d in SCENE_DIGITS],
        name="scenes",
    )


def split_detection(data: DetectionData, fractions: Mapping[str, float] | None = None, *,
                    seed: int = 0) -> dict[str, DetectionData]:
    """Disjoint, seeded partitions (default: train / obfuscator / attacker / test = 40/20/20/20%)."""
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    total = sum(fractions.values())
    if not fractions or any(f <= 0 for f in fractions.values()) or total > 1 + 1e-9:
        raise ConfigError(f"fractions must be positive and sum to at most 1, but got {fractions}")
    n = len(data)
    counts = [int(math.floor(f * n)) for f in fractions.values()]
    if min(counts) < 2:
        raise DataError(
            f"{data.name}: {n} images are too few to split into {list(fractions)} "
            f"(each part needs at least 2 images); provide at least {math.ceil(2 / min(fractions.values()))} images"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = {}, 0
    for name, count in zip(fractions, counts, strict=True):
        parts[name] = data.subset(order[start:start + count].sort().values)
        start += count
    return parts


# -- user data ---------------------------------------------------------------------------------------
def load_detection_data(path: str | Path, *, image_size: int = 48) -> DetectionData:
    """The user's detection data: an ``.npz`` (see the module docstring) or a COCO ``.json``.

    Raises:
        DataError: a missing or unreadable file, missing keys, wrong shapes, boxes outside
            their image, labels out of range, or too few images.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file; pass an .npz ({_NPZ_HINT}) or a COCO .json")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        data = _load_npz(p)
    elif suffix == ".json":
        data = _load_coco(p, image_size)
    else:
        raise DataError(
            f"{p}: unsupported detection data {p.suffix or '(no suffix)'!r}; expected an .npz "
            f"({_NPZ_HINT}) or a COCO .json with image files beside it"
        )
    h, w = data.image_size
    if h % 4 or w % 4 or min(h, w) < 16:
        raise DataError(
            f"{p}: images are {h}x{w} but the detector needs sides that are multiples of 4 and at "
            "least 16 pixels; pad or resize the images (and their boxes)"
        )
    return data


def _npz_array(npz: Any, key: str, path: Path) -> np.ndarray:
    if key not in npz.files:
        raise DataError(f"{path}: missing array {key!r} (found {sorted(npz.files)}); expected {_NPZ_HINT}")
    try:
        return np.asarray(npz[key])
    except ValueError as exc:
        raise DataError(
            f"{path}: {key!r} is an object array (pickle), which scl never loads; store plain "
            f"numeric arrays: {_NPZ_HINT}"
        ) from exc


def _images_to_tensor(arr: np.ndarray, where: str) -> Tensor:
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise DataError(
            f"{where}: 'images' must be [N, H, W] or [N, C, H, W] with C = 1 or 3, but has shape "
            f"{arr.shape}; transpose channels-last images with images.transpose(0, 3, 1, 2)"
        )
    if np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        if arr.min() < 0 or arr.max() > 255:
            raise DataError(f"{where}: integer 'images' must be in 0..255, but range over "
                            f"{arr.min()}..{arr.max()}; rescale them")
        return torch.from_numpy(arr.astype(np.float32) / 255.0)
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{where}: 'images' must be uint8 or float, but has dtype {arr.dtype}")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise DataError(
            f"{where}: float 'images' must be finite and in [0, 1], but range over "
            f"{np.nanmin(arr):g}..{np.nanmax(arr):g}; divide by 255 or clip them"
        )
    return torch.from_numpy(arr.astype(np.float32))


def _check_boxes(boxes: np.ndarray, labels: np.ndarray, owner: np.ndarray, n: int, num_classes: int,
                 size: tuple[int, int], where: str) -> None:
    h, w = size
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(f"{where}: 'boxes' must be float[M, 4] (x0, y0, x1, y1), but has shape {boxes.shape}")
    if labels.shape != (len(boxes),) or owner.shape != (len(boxes),):
        raise DataError(
            f"{where}: 'box_labels' and 'box_image' must be int[M] with M = {len(boxes)} (one per box), "
            f"but have shapes {labels.shape} and {owner.shape}"
        )
    for key, arr in (("box_labels", labels), ("box_image", owner)):
        if len(arr) and not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"{where}: {key!r} must hold integers, but has dtype {arr.dtype}; use .astype(np.int64)")
    if not np.isfinite(boxes).all():
        raise DataError(f"{where}: 'boxes' holds NaN or infinite values; remove those boxes")
    if len(boxes):
        bad = np.flatnonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
        if len(bad):
            raise DataError(f"{where}: box {bad[0]} is {boxes[bad[0]].tolist()} but needs x1 > x0 and y1 > y0 "
                            "(x0, y0, x1, y1 in pixels, not x, y, w, h); fix or drop it")
        outside = np.flatnonzero((boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > w) | (boxes[:, 3] > h))
        if len(outside):
            raise DataError(f"{where}: box {outside[0]} is {boxes[outside[0]].tolist()} but images are "
                            f"{w}x{h} (width x height); clip boxes to the image")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DataError(f"{where}: 'box_labels' must be in [0, {num_classes}), but range over "
                            f"{labels.min()}..{labels.max()}; number categories from 0 (or add class_names)")
        if owner.min() < 0 or owner.max() >= n:
            raise DataError(f"{where}: 'box_image' must index the {n} images (0..{n - 1}), but ranges over "
                            f"{owner.min()}..{owner.max()}")


def _group(boxes: np.ndarray, labels: np.ndarray, owner: np.ndarray, n: int) -> tuple[list[Tensor], list[Tensor]]:
    all_boxes, all_labels = [], []
    for i in range(n):
        rows = owner == i
        all_boxes.append(torch.from_numpy(boxes[rows].astype(np.float32)).reshape(-1, 4))
        all_labels.append(torch.from_numpy(labels[rows].astype(np.int64)))
    return all_boxes, all_labels


def _load_npz(path: Path) -> DetectionData:
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read this .npz ({exc}); expected {_NPZ_HINT}") from exc
    with npz:
        images = _images_to_tensor(_npz_array(npz, "images", path), str(path))
        boxes = _npz_array(npz, "boxes", path)
        if not (np.issubdtype(boxes.dtype, np.number) and boxes.dtype != np.bool_):
            raise DataError(f"{path}: 'boxes' must be float[M, 4], but has dtype {boxes.dtype}")
        boxes = boxes.astype(np.float64, copy=False)
        labels = _npz_array(npz, "box_labels", path)
        owner = _npz_array(npz, "box_image", path)
        names = None
        if "class_names" in npz.files:
            raw = _npz_array(npz, "class_names", path)
            if raw.dtype.kind not in "US" or raw.ndim != 1:
                raise DataError(f"{path}: 'class_names' must be a 1-D string array, but has dtype {raw.dtype} "
                                f"and shape {raw.shape}")
            names = [str(v) for v in raw]
    n = len(images)
    num_classes = len(names) if names else (int(labels.max()) + 1 if len(labels) and labels.dtype.kind in "iu" else 1)
    _check_boxes(boxes, labels, owner, n, num_classes, (images.shape[2], images.shape[3]), str(path))
    if not len(boxes):
        raise DataError(f"{path}: 'boxes' is empty; a detector needs annotated objects")
    grouped = _group(boxes, labels, owner, n)
    return DetectionData(images.contiguous(), grouped[0], grouped[1],
                         names or [str(i) for i in range(num_classes)], path.stem or "data")


def _load_coco(path: Path, image_size: int) -> DetectionData:
    from PIL import Image

    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read this file ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); expected a COCO file with images, "
                        "annotations and categories") from exc
    keys = ("images", "annotations", "categories")
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), list) for k in keys):
        found = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise DataError(f"{path}: a COCO file needs lists 'images', 'annotations' and 'categories', "
                        f"but has {found}")
    try:
        categories = sorted((int(c["id"]), str(c.get("name", c["id"]))) for c in spec["categories"])
        cat_index = {cid: k for k, (cid, _) in enumerate(categories)}
        image_ids = [int(im["id"]) for im in spec["images"]]
        files = [str(im["file_name"]) for im in spec["images"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: every category needs an 'id' (and 'name') and every image an 'id' and "
                        f"a 'file_name'; missing or invalid {exc}") from exc
    if not categories or not image_ids:
        raise DataError(f"{path}: needs at least one category and one image, but has "
                        f"{len(categories)} and {len(image_ids)}")
    arrays, scales, grey = [], [], True
    opened = []
    for file in files:
        image_path = path.parent / file
        try:
            with Image.open(image_path) as loaded:
                loaded.load()
                opened.append(loaded.copy())
        except (OSError, ValueError) as exc:
            raise DataError(f"{image_path}: cannot read this image ({exc}); COCO 'file_name' paths are read "
                            f"relative to {path.parent}") from exc
        grey = grey and opened[-1].mode in ("L", "1", "I", "I;16", "F")
    for img in opened:
        w0, h0 = img.size
        scales.append((image_size / w0, image_size / h0))
        arr = np.asarray(img.convert("L" if grey else "RGB").resize((image_size, image_size)), dtype=np.uint8)
        arrays.append(arr if grey else arr.transpose(2, 0, 1))
    images = _images_to_tensor(np.stack(arrays), str(path))
    row_of = {iid: r for r, iid in enumerate(image_ids)}
    boxes, labels, owner = [], [], []
    for k, ann in enumerate(spec["annotations"]):
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
            row = row_of[int(ann["image_id"])]
            label = cat_index[int(ann["category_id"])]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: annotation {k} needs 'image_id' and 'category_id' that exist and a "
                            f"'bbox' [x, y, w, h]; problem with {exc}") from exc
        sx, sy = scales[row]
        boxes.append([x * sx, y * sy, (x + w) * sx, (y + h) * sy])
        labels.append(label)
        owner.append(row)
    box_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(box_arr):
        box_arr = np.clip(box_arr, 0, image_size)
    label_arr, owner_arr = np.asarray(labels, dtype=np.int64), np.asarray(owner, dtype=np.int64)
    _check_boxes(box_arr, label_arr, owner_arr, len(images), len(categories), (image_size, image_size), str(path))
    if not len(box_arr):
        raise DataError(f"{path}: no annotations; a detector needs annotated objects")
    grouped = _group(box_arr, label_arr, owner_arr, len(images))
    return DetectionData(images.contiguous(), grouped[0], grouped[1], [n for _, n in categories],
                         path.stem or "coco")
