"""The embedded handwritten digits (scikit-learn's ``load_digits``; UCI optdigits test set).

``digits.npz`` beside this module holds ``images: uint8[1797, 8, 8]`` (values 0..16) and
``target: uint8[1797]`` (0..9); see ``LICENSE-digits.txt`` for origin and licence.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from scl.errors import ConfigError

if TYPE_CHECKING:
    from scl.data import Dataset

__all__ = ["TINT_COLOURS", "load_digits"]

#: Colours of the private attribute of ``load_digits(attribute=True)``: name -> RGB multiplier
#: applied to the (greyscale) stroke intensity; the background stays black.
TINT_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}

_MAX_VALUE = 16.0  # the 8x8 images count "on" pixels in 4x4 blocks: 0..16


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8[N, 8, 8], target int64[N])`` read once from the packaged file."""
    ref = resources.files("scl.data").joinpath("digits.npz")
    try:
        with ref.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
            images = np.asarray(npz["images"], dtype=np.uint8)
            target = np.asarray(npz["target"], dtype=np.int64)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"the embedded digits file is missing ({ref}); reinstall scl (pip install -e .)"
        ) from err
    images.setflags(write=False)
    target.setflags(write=False)
    return images, target


def load_digits(*, size: int = 16, attribute: bool = False, seed: int = 0) -> Dataset:
    """The 1797 handwritten digits (10 classes), as a :class:`~scl.data.Dataset`.

    The original images are 8x8 with integer values 0..16. They are scaled to [0, 1] by
    dividing by 16, then resized to ``size x size`` with bilinear interpolation
    (``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``, no
    antialiasing); values stay in [0, 1]. ``size=8`` keeps the original resolution.

    With ``attribute=True`` every image gets a private attribute that is independent of its
    class: one of the colours of :data:`TINT_COLOURS` (red, green, blue, yellow), drawn
    uniformly and independently per image with ``numpy.random.default_rng(seed)``. The image
    becomes RGB: each channel is the stroke intensity times the colour's multiplier, so the
    digit is coloured on a black background. Without attribute ``seed`` is unused.

    Args:
        size: side of the output images in pixels (a positive int; default 16).
        attribute: add the colour attribute and return 3-channel images.
        seed: seed of the colour draw (a non-negative int).

    Returns:
        A Dataset named ``"digits"`` with ``x: Tensor[1797, 1, size, size]``, or
        ``"digits-tinted"`` with ``x: Tensor[1797, 3, size, size]``,
        ``attribute: Tensor[1797]`` and ``attribute_names == ["red", "green", "blue",
        "yellow"]``; ``class_names == ["0", ..., "9"]``.

    Raises:
        ConfigError: if ``size`` or ``seed`` is not a valid int.

    """
    from scl.data import Dataset

    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ConfigError(f"size must be a positive int (pixels per side), but got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative int, but got {seed!r}")
    images, target = _raw()
    x = torch.from_numpy(images.astype(np.float32) / _MAX_VALUE).unsqueeze(1)  # [N, 1, 8, 8]
    if int(size) != x.shape[-1]:
        x = F.interpolate(x, size=(int(size), int(size)), mode="bilinear", align_corners=False)
    x = x.clamp_(0.0, 1.0)
    y = torch.from_numpy(target.copy())
    class_names = [str(i) for i in range(10)]
    if not attribute:
        return Dataset(
            x=x.contiguous(),
            y=y,
            attribute=None,
            num_classes=10,
            class_names=class_names,
            attribute_names=None,
            name="digits",
        )
    names = list(TINT_COLOURS)
    rng = np.random.default_rng(int(seed))
    colour = torch.from_numpy(rng.integers(0, len(names), size=len(target)).astype(np.int64))
    palette = torch.tensor([TINT_COLOURS[n] for n in names], dtype=torch.float32)  # [K, 3]
    x = x * palette[colour][:, :, None, None]  # [N, 1, H, W] * [N, 3, 1, 1] -> [N, 3, H, W]
    return Dataset(
        x=x.contiguous(),
        y=y,
        attribute=colour,
        num_classes=10,
        class_names=class_names,
        attribute_names=names,
        name="digits-tinted",
    )
