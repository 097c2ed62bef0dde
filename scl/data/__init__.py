"""Data sets for scl: the embedded handwritten digits, user data and the experiment partitions.

A :class:`Dataset` holds images ``x: Tensor[N, C, H, W]`` (float32 in [0, 1]), class labels
``y: Tensor[N]`` (int64) and, optionally, a private attribute ``attribute: Tensor[N]`` (int64)
that an attacker should not be able to infer from obfuscated data.

* :func:`load_digits` - scikit-learn's 1797 handwritten 8x8 digits, shipped with scl, upsampled;
  optionally tinted with a random colour (the private attribute).
* :func:`load_user_data` - an image folder (one sub-folder per class) or an ``.npz`` file.
* :func:`split` - stratified, disjoint, seeded partitions (task / obfuscator / attacker / test).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from scl.data.digits import load_digits
from scl.data.user import load_images, load_user_data
from scl.errors import DataError

__all__ = ["DEFAULT_FRACTIONS", "Dataset", "load_digits", "load_images", "load_user_data", "split"]

#: Default partition of a data set: the task network, the obfuscator (stages 1-2), the
#: attacker's own training data, and the held-out test set.
DEFAULT_FRACTIONS: dict[str, float] = {"task": 0.4, "obfuscator": 0.2, "attacker": 0.2, "test": 0.2}


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """An image classification data set held in memory.

    Attributes:
        x: ``Tensor[N, C, H, W]``, float32, values in [0, 1].
        y: ``Tensor[N]``, int64 class labels in ``[0, num_classes)``.
        attribute: ``Tensor[N]``, int64 private attribute in ``[0, len(attribute_names))``, or
            ``None`` when the data set has none.
        num_classes: number of classes ``C`` (some may have no sample in a subset).
        class_names: ``num_classes`` names, index ``i`` names label ``i``.
        attribute_names: names of the attribute values, or ``None`` without attribute.
        name: short name used in logs and ``metrics.json`` (e.g. ``"digits"``).

    Raises:
        DataError: if the fields are inconsistent (shapes, dtypes, lengths, label ranges).

    """

    x: Tensor
    y: Tensor
    attribute: Tensor | None
    num_classes: int
    class_names: list[str]
    attribute_names: list[str] | None
    name: str

    def __post_init__(self) -> None:
        x, y, a = self.x, self.y, self.attribute
        if not isinstance(x, Tensor) or x.dim() != 4 or x.dtype != torch.float32:
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise DataError(f"Dataset.x must be a float32 Tensor[N, C, H, W], but got {got}")
        if not isinstance(y, Tensor) or y.dim() != 1 or y.dtype != torch.int64:
            got = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
            raise DataError(f"Dataset.y must be an int64 Tensor[N], but got {got}")
        if len(y) != len(x):
            raise DataError(
                f"Dataset.y has {len(y)} labels but x has {len(x)} images; "
                "they must have the same length"
            )
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise DataError(f"num_classes must be an int, but got {self.num_classes!r}")
        if self.num_classes < 1:
            raise DataError(f"num_classes must be at least 1, but got {self.num_classes}")
        if len(self.class_names) != self.num_classes:
            raise DataError(
                f"class_names has {len(self.class_names)} names but num_classes is "
                f"{self.num_classes}; give one name per class"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise DataError(
                f"labels must be in [0, {self.num_classes}), but got values from "
                f"{int(y.min())} to {int(y.max())}"
            )
        if a is None:
            if self.attribute_names is not None:
                raise DataError("attribute_names is given but attribute is None; give both or none")
            return
        if not isinstance(a, Tensor) or a.dim() != 1 or a.dtype != torch.int64:
            got = f"{tuple(a.shape)} {a.dtype}" if isinstance(a, Tensor) else type(a).__name__
            raise DataError(f"Dataset.attribute must be an int64 Tensor[N] or None, but got {got}")
        if len(a) != len(x):
            raise DataError(
                f"Dataset.attribute has {len(a)} values but x has {len(x)} images; "
                "they must have the same length"
            )
        if self.attribute_names is None:
            raise DataError("attribute is given but attribute_names is None; name every value")
        k = len(self.attribute_names)
        if len(a) and (int(a.min()) < 0 or int(a.max()) >= k):
            raise DataError(
                f"attribute values must be in [0, {k}) (one per attribute name), but got values "
                f"from {int(a.min())} to {int(a.max())}"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        attr = "None" if self.attribute_names is None else f"{self.attribute_names}"
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes}, attribute={attr})"
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        _, c, h, w = self.x.shape
        return int(c), int(h), int(w)

    @property
    def channels(self) -> int:
        """Number of image channels ``C`` (1 for greyscale, 3 for RGB)."""
        return int(self.x.shape[1])

    @property
    def num_attributes(self) -> int | None:
        """Number of values of the private attribute, or ``None`` without attribute."""
        return None if self.attribute_names is None else len(self.attribute_names)

    def class_counts(self) -> Tensor:
        """Number of samples per class, ``Tensor[num_classes]`` int64."""
        return torch.bincount(self.y, minlength=self.num_classes)

    def subset(self, indices: Sequence[int] | np.ndarray | Tensor) -> Dataset:
        """The samples at ``indices``, in that order, with the same classes and names.

        Args:
            indices: integer indices (``Tensor[M]``, array or sequence) or a boolean mask
                ``Tensor[N]``.

        Returns:
            A new :class:`Dataset` of ``M`` samples (tensors are copies).

        Raises:
            IndexError: if an index is outside ``[-N, N)`` or a mask has the wrong length.

        """
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, Tensor) else indices)
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise IndexError(
                    f"a boolean mask must have shape ({len(self)},), but got {tuple(idx.shape)}"
                )
            idx = idx.nonzero().flatten()
        if idx.numel() == 0:
            idx = idx.to(torch.int64).reshape(0)
        if idx.dim() != 1 or idx.dtype.is_floating_point or idx.dtype.is_complex:
            raise IndexError(
                f"indices must be a 1-D sequence of integers, but got {tuple(idx.shape)} "
                f"{idx.dtype}"
            )
        idx = idx.to(torch.int64)
        n = len(self)
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            bad = int(idx.max()) if int(idx.max()) >= n else int(idx.min())
            raise IndexError(f"index {bad} is out of range for a data set of {n} samples")
        return Dataset(
            x=self.x[idx].contiguous(),
            y=self.y[idx].contiguous(),
            attribute=None if self.attribute is None else self.attribute[idx].contiguous(),
            num_classes=self.num_classes,
            class_names=list(self.class_names),
            attribute_names=None if self.attribute_names is None else list(self.attribute_names),
            name=self.name,
        )


def _check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(fractions, Mapping) or not fractions:
        raise DataError(
            f"fractions must be a non-empty dict of part name -> fraction, but got {fractions!r}"
        )
    out: dict[str, float] = {}
    for key, value in fractions.items():
        if not isinstance(key, str) or not key:
            raise DataError(f"fraction names must be non-empty strings, but got {key!r}")
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
            raise DataError(f"fraction {key!r} must be a number, but got {value!r}")
        v = float(value)
        if not math.isfinite(v) or v <= 0:
            raise DataError(f"fraction {key!r} must be positive, but got {value!r}")
        out[key] = v
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise DataError(
            f"fractions must sum to 1, but {out} sums to {total:.6g}; rescale them so they add up"
        )
    return out


def _allocate(n_per_class: np.ndarray, fracs: np.ndarray) -> np.ndarray:
    """Sample counts ``[num_classes, parts]`` of a stratified split.

    Each row sums to its class size with every entry within 1 of ``n_c * f``, and each column's
    total is within 1 of ``N * f``: largest remainder per class, the leftover units of every
    class going to the parts that are furthest behind overall.
    """
    counts = np.zeros((len(n_per_class), len(fracs)), dtype=np.int64)
    target = np.zeros(len(fracs))
    assigned = np.zeros(len(fracs))
    for c, n_c in enumerate(n_per_class):
        exact = n_c * fracs
        base = np.floor(exact + 1e-9).astype(np.int64)
        rest = int(n_c - base.sum())
        target += exact
        deficit = target - (assigned + base)
        order = np.argsort(-deficit, kind="stable")
        base[order[:rest]] += 1
        counts[c] = base
        assigned += base
    return counts


def split(
    dataset: Dataset, *, fractions: Mapping[str, float] | None = None, seed: int = 0
) -> dict[str, Dataset]:
    """Partition ``dataset`` into disjoint parts, stratified by class.

    Every sample lands in exactly one part. Within each class the samples are shuffled with a
    ``numpy.random.Generator`` seeded by ``seed`` and cut so that each part receives (within
    one sample) its fraction of that class; the part sizes are also within one sample of
    ``len(dataset) * fraction``. The same data set, fractions and seed always give the same
    parts; samples keep their original order inside each part.

    Args:
        dataset: the data set to partition.
        fractions: part name -> fraction; positive and summing to 1 (within 1e-6). Defaults to
            :data:`DEFAULT_FRACTIONS` ``{"task": 0.4, "obfuscator": 0.2, "attacker": 0.2,
            "test": 0.2}``.
        seed: seed of the shuffle (a non-negative int).

    Returns:
        ``{part name: Dataset}`` in the order of ``fractions``.

    Raises:
        DataError: if the fractions are invalid or a part would be empty.

    """
    fr = _check_fractions(DEFAULT_FRACTIONS if fractions is None else fractions)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DataError(f"seed must be a non-negative int, but got {seed!r}")
    names = list(fr)
    fracs = np.array([fr[k] for k in names])
    y = dataset.y.numpy()
    classes = np.unique(y)
    n_per_class = np.array([(y == c).sum() for c in classes], dtype=np.int64)
    counts = _allocate(n_per_class, fracs)
    totals = counts.sum(axis=0)
    if (totals == 0).any():
        empty = [names[i] for i in np.flatnonzero(totals == 0)]
        raise DataError(
            f"split of {len(dataset)} samples with fractions {fr} leaves part(s) {empty} empty; "
            "use more data or larger fractions"
        )
    rng = np.random.default_rng(int(seed))
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for c, row in zip(classes, counts, strict=True):
        members = rng.permutation(np.flatnonzero(y == c))
        bounds = np.concatenate([[0], np.cumsum(row)])
        for k in range(len(names)):
            parts[k].append(members[bounds[k] : bounds[k + 1]])
    out: dict[str, Dataset] = {}
    for k, name in enumerate(names):
        idx = np.sort(np.concatenate(parts[k])) if parts[k] else np.zeros(0, dtype=np.int64)
        out[name] = dataset.subset(idx)
    return out
