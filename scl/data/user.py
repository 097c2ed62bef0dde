"""Load a user's own data set: an image folder or an ``.npz`` file.

Image folder (one sub-folder per class; folder names, sorted, are the class names)::

    data/
      cat/  001.png 002.jpg ...
      dog/  001.png ...

``.npz`` file (``np.savez(path, x=images, y=labels)``, optionally ``attribute=...``)::

    x          uint8 (0..255) or float (0..1), N x H x W or N x C x H x W with C in {1, 3}
    y          N integer class labels >= 0 (classes are 0..max(y), at least 2 distinct)
    attribute  optional, N integers >= 0 (a private attribute)
    class_names, attribute_names   optional string arrays

Pickled content is never loaded (``allow_pickle=False``).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from scl.errors import DataError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from scl.data import Dataset

__all__ = ["IMAGE_SUFFIXES", "load_images", "load_user_data"]

#: Image file suffixes read from class folders (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_NPZ_HINT = "save it with np.savez(path, x=images, y=labels[, attribute=...])"


def load_user_data(path: str | os.PathLike[str]) -> Dataset:
    """Read a user data set from an image folder or an ``.npz`` file.

    **Folder**: one sub-folder per class; sorted folder names give the class indices and
    ``class_names``. Files ending in .png, .jpg, .jpeg, .bmp, .gif or .webp (any case) are read
    with Pillow (first frame of an animation); hidden files and other files are skipped, and
    sub-folders are not searched. All images are converted to greyscale ("L", 1 channel) when
    every image is greyscale, else to RGB (3 channels; alpha is dropped), scaled by 1/255 and
    must all have the same width and height.

    **.npz**: ``x`` is ``N x H x W`` or ``N x C x H x W`` (C in {1, 3}), either uint8 (divided
    by 255) or float with values in [0, 1]; ``y`` holds N non-negative integer labels with at
    least 2 distinct classes (``num_classes = max(y) + 1``); an optional ``attribute`` holds
    N non-negative integers; optional string arrays ``class_names`` / ``attribute_names`` name
    them. Loaded with ``allow_pickle=False``: object arrays are refused.

    Args:
        path: a directory or an ``.npz`` file.

    Returns:
        A Dataset with ``x: Tensor[N, C, H, W]`` float32 in [0, 1], named after the path.

    Raises:
        DataError: if the path does not exist, has another suffix, or the data are unusable
            (the message names the file, what was expected and what was found).

    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(
            f"{p}: no such file or directory; give an image folder (one sub-folder per class) or an .npz file"
        )
    if p.is_dir():
        return _load_folder(p)
    if p.suffix.lower() == ".npz":
        return _load_npz(p)
    raise DataError(
        f"{p}: unsupported data file suffix {p.suffix or '(none)'!r}; expected an image folder "
        f"(one sub-folder per class) or an .npz file ({_NPZ_HINT})"
    )


# --------------------------------------------------------------------------- image folder


def _read_image(path: Path) -> tuple[str, PILImage]:
    """Open and decode one image; ``(mode, PIL image)``."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            opened.load()  # decodes the first frame of an animation
            img = opened.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # UnidentifiedImageError (not an image) is an OSError; truncated files raise OSError
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: cannot read this image ({reason}); remove or replace the file") from e
    return img.mode, img


def _load_folder(root: Path) -> Dataset:
    from scl.data import Dataset

    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"{root}: no class sub-folders found; put each class's images in its own "
            "sub-folder (e.g. data/cat/*.png, data/dog/*.png)"
        )
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        found = sorted(
            f for f in d.iterdir() if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if not found:
            raise DataError(
                f"{d}: class folder has no images; expected files ending in "
                f"{', '.join(IMAGE_SUFFIXES)}; add images or remove the folder"
            )
        files.extend((f, label) for f in found)
    if len(class_dirs) < 2:
        raise DataError(
            f"{root}: found one class folder ({class_dirs[0].name!r}) but a classifier needs "
            "at least 2; add a sub-folder per class"
        )
    images = [_read_image(f) for f, _ in files]
    grey = all(mode in _GREY_MODES for mode, _ in images)
    target_mode = "L" if grey else "RGB"
    first_path = files[0][0]
    expected = images[0][1].size  # (width, height)
    arrays: list[np.ndarray] = []
    for (f, _), (_, img) in zip(files, images, strict=True):
        if img.size != expected:
            raise DataError(
                f"{f}: image is {img.size[0]}x{img.size[1]} pixels (width x height) but "
                f"{first_path} is {expected[0]}x{expected[1]}; all images must have the same "
                "size, resize them first"
            )
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        else:
            arr = np.asarray(img.convert(target_mode), dtype=np.uint8)
        if target_mode == "RGB" and arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        arrays.append(arr)
    stack = np.stack(arrays)  # [N, H, W] or [N, H, W, 3]
    x = torch.from_numpy(stack).float().div_(255.0)
    x = x.unsqueeze(1) if grey else x.permute(0, 3, 1, 2)
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    return Dataset(
        x=x.contiguous(),
        y=y,
        attribute=None,
        num_classes=len(class_dirs),
        class_names=[d.name for d in class_dirs],
        attribute_names=None,
        name=root.name or "data",
    )


# --------------------------------------------------------------------------- .npz file


def _get(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(npz[key])
    except ValueError as e:
        if "pickle" not in str(e):  # a damaged .npy header inside the archive
            raise DataError(f"{path}: {key!r} cannot be read ({e}); the file is damaged") from e
        raise DataError(  # "Object arrays cannot be loaded when allow_pickle=False"
            f"{path}: {key!r} is an object array (stored with pickle), which scl never loads "
            "for safety; store plain numeric arrays, e.g. np.savez(path, x=images, y=labels)"
        ) from e
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
        raise DataError(f"{path}: {key!r} cannot be read ({e}); the file is damaged") from e


def _labels(arr: np.ndarray, key: str, n: int, path: Path) -> np.ndarray:
    """Validate a vector of non-negative integer labels; int64[N]."""
    if arr.ndim != 1:
        raise DataError(
            f"{path}: {key!r} must be a vector of N labels, but has shape {arr.shape}; "
            f"flatten it (e.g. {key}.reshape(-1))"
        )
    if len(arr) != n:
        raise DataError(f"{path}: {key!r} has {len(arr)} labels but 'x' has {n} images; they must have the same length")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(
            f"{path}: {key!r} must hold integer labels, but has dtype {arr.dtype}; "
            f"convert it with {key}.astype(np.int64)"
        )
    if np.issubdtype(arr.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise DataError(
                f"{path}: {key!r} contains {bad.size} NaN/infinite value(s) (first at index "
                f"{bad[0]}); every sample needs an integer label"
            )
        bad = np.flatnonzero(arr != np.round(arr))
        if bad.size:
            first = bad[0]
            raise DataError(
                f"{path}: {key!r} must hold integer labels, but got {arr[first].item()!r} at index "
                f"{first} ({bad.size} non-integer value(s)); use class indices 0, 1, 2, ..."
            )
    if n and arr.min() < 0:
        i = int(np.argmin(arr))
        raise DataError(
            f"{path}: {key!r} must be non-negative, but got {arr[i].item()!r} at index {i}; "
            "use class indices 0, 1, 2, ..."
        )
    return arr.astype(np.int64)


def _names(npz: np.lib.npyio.NpzFile, key: str, count: int, path: Path) -> list[str] | None:
    if key not in npz.files:
        return None
    arr = _get(npz, key, path)
    if arr.ndim != 1 or arr.dtype.kind not in "US":
        raise DataError(
            f"{path}: {key!r} must be a 1-D array of strings, but got shape {arr.shape} dtype "
            f"{arr.dtype}; e.g. np.array(['cat', 'dog'])"
        )
    if len(arr) != count:
        raise DataError(
            f"{path}: {key!r} has {len(arr)} names but the labels need {count} "
            f"(0..{count - 1}); give one name per value"
        )
    return [v.decode() if isinstance(v, bytes) else str(v) for v in arr.tolist()]


def _load_npz(path: Path) -> Dataset:
    from scl.data import Dataset

    try:
        npz = np.load(path, allow_pickle=False)
    except ValueError as e:  # neither zip nor .npy: numpy assumes a pickle and refuses it
        raise DataError(
            f"{path}: not an .npz archive (neither a zip archive nor a .npy array; pickles are "
            f"never loaded); {_NPZ_HINT}"
        ) from e
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read this .npz file ({e}); {_NPZ_HINT}") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: is a single .npy array, not an .npz archive with 'x' and 'y'; {_NPZ_HINT}")
    with npz:
        missing = [k for k in ("x", "y") if k not in npz.files]
        if missing:
            raise DataError(
                f"{path}: missing key(s) {missing}; found {sorted(npz.files)}; "
                f"expected 'x' (images) and 'y' (labels); {_NPZ_HINT}"
            )
        x = _images(_get(npz, "x", path), path)
        n = len(x)
        y = _labels(_get(npz, "y", path), "y", n, path)
        classes = np.unique(y)
        if len(classes) < 2:
            raise DataError(
                f"{path}: 'y' has only one class ({classes.tolist()}) but a classifier needs at least 2 distinct labels"
            )
        num_classes = int(y.max()) + 1
        class_names = _names(npz, "class_names", num_classes, path)
        attribute: np.ndarray | None = None
        attribute_names: list[str] | None = None
        if "attribute" in npz.files:
            attribute = _labels(_get(npz, "attribute", path), "attribute", n, path)
            k = int(attribute.max()) + 1 if n else 1
            attribute_names = _names(npz, "attribute_names", k, path) or [str(i) for i in range(k)]
        elif "attribute_names" in npz.files:
            raise DataError(
                f"{path}: has 'attribute_names' but no 'attribute'; add the attribute values or drop the names"
            )
    return Dataset(
        x=x,
        y=torch.from_numpy(y),
        attribute=None if attribute is None else torch.from_numpy(attribute),
        num_classes=num_classes,
        class_names=class_names or [str(i) for i in range(num_classes)],
        attribute_names=attribute_names,
        name=path.stem,
    )


def _images(x: np.ndarray, path: Path) -> torch.Tensor:
    """Validate ``x`` and convert it to ``Tensor[N, C, H, W]`` float32 in [0, 1]."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[1] not in (1, 3):
            if x.shape[-1] in (1, 3):
                raise DataError(
                    f"{path}: 'x' has shape {x.shape}, which looks channels-last (N x H x W x C);"
                    " scl expects N x C x H x W: save x.transpose(0, 3, 1, 2)"
                )
            raise DataError(
                f"{path}: 'x' has {x.shape[1]} channels (shape {x.shape}) but expected 1 "
                "(greyscale) or 3 (RGB) in N x C x H x W"
            )
    else:
        raise DataError(
            f"{path}: 'x' must be N x H x W or N x C x H x W images, but has shape {x.shape} ({x.ndim} dimensions)"
        )
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise DataError(f"{path}: 'x' is empty (shape {x.shape}); it needs at least one image")
    if x.dtype == np.uint8:
        return torch.from_numpy(x.astype(np.float32) / 255.0).contiguous()
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(
            f"{path}: 'x' must be uint8 (0..255) or float (0..1), but has dtype {x.dtype}; "
            "convert it with x.astype(np.uint8) or x.astype(np.float32) / 255"
        )
    finite = np.isfinite(x)
    if not finite.all():
        bad = int((~finite).sum())
        first = int(np.flatnonzero(~finite.reshape(len(x), -1).all(axis=1))[0])
        raise DataError(
            f"{path}: 'x' contains {bad} NaN/infinite value(s) (first in image {first}); "
            "images must be finite values in [0, 1]"
        )
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        hint = "divide by 255 or save as uint8" if hi <= 255.0 and lo >= 0.0 else "rescale them"
        raise DataError(f"{path}: float 'x' values must be in [0, 1], but found min {lo:.6g} and max {hi:.6g}; {hint}")
    return torch.from_numpy(x.astype(np.float32)).contiguous()


# --------------------------------------------------------------------------- unlabelled inputs


def load_images(
    path: str | os.PathLike[str], *, channels: int, size: tuple[int, int]
) -> tuple[torch.Tensor, list[str]]:
    """Images to obfuscate, without labels: ``(Tensor[N, channels, H, W] in [0, 1], names)``.

    ``path`` is one image file, a folder of images (not searched recursively), or an ``.npz`` with
    ``x``. Images are converted to greyscale or RGB (``channels`` 1 or 3) and resized with
    bilinear interpolation to ``size`` (the size the obfuscator was trained at).
    """
    import torch.nn.functional as F

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass an image, a folder of images or an .npz")
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "x" not in npz.files:
                    raise DataError(f"{path}: missing key 'x' (found {sorted(npz.files)}); save the images "
                                    "with np.savez(path, x=images)")
                x = _images(_get(npz, "x", path), path)
        except DataError:
            raise  # already says what is wrong (DataError is a ValueError)
        except (ValueError, zipfile.BadZipFile, OSError, EOFError) as e:
            raise DataError(f"{path}: cannot read this .npz file ({e}); {_NPZ_HINT}") from e
        names = [f"{i:05d}" for i in range(x.shape[0])]
    else:
        if path.is_dir():
            files = sorted(
                f
                for f in path.iterdir()
                if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise DataError(f"{path}: no images found; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
        else:
            files = [path]
        mode = "L" if channels == 1 else "RGB"
        tensors = []
        for f in files:
            _, img = _read_image(f)
            arr = np.asarray(img.convert(mode), dtype=np.float32) / 255.0
            t = torch.from_numpy(arr)
            t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
            tensors.append(F.interpolate(t[None], size=size, mode="bilinear", align_corners=False)[0])
        x = torch.stack(tensors)
        names = [f.stem for f in files]
    if x.shape[1] != channels:
        if x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and channels == 1:
            x = x.mean(1, keepdim=True)
    if tuple(x.shape[2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.clamp(0, 1).contiguous(), names
