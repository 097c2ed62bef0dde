"""Random screening (spec §2.3.1): hide random patches of obfuscated samples at every iteration.

Noisy data from SL-p is biased towards the small clean share it was trained on; hiding random
parts of it, with fresh masks at every training iteration, keeps the network from fitting that bias.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scl.errors import ConfigError

__all__ = ["screen", "screening_mask"]


def _check(share: float, patch: int) -> None:
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 <= share <= 1.0:
        raise ConfigError(f"the screening share must be in [0, 1], but got {share!r}")
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise ConfigError(f"the screening patch size must be a positive int (pixels), but got {patch!r}")


def screening_mask(
    n: int, height: int, width: int, *, share: float, patch: int, generator: torch.Generator | None = None
) -> Tensor:
    """Keep-masks that hide ``round(share * P)`` of the ``P`` patches of each sample.

    The image is cut into a grid of ``patch x patch`` squares (``P = ceil(H / patch) * ceil(W / patch)``,
    the last row and column cropped); each sample hides its own random choice of squares.

    Returns:
        ``Tensor[n, 1, height, width]`` float, 1 where visible and 0 where screened.

    """
    _check(share, patch)
    rows, cols = math.ceil(height / patch), math.ceil(width / patch)
    hidden = round(share * rows * cols)
    scores = torch.rand(n, rows * cols, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    keep = (ranks >= hidden).float().view(n, 1, rows, cols)
    keep = keep.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)
    return keep[:, :, :height, :width].contiguous()


def screen(x: Tensor, *, share: float, patch: int, generator: torch.Generator | None = None) -> Tensor:
    """``x`` with random patches zeroed: a fresh mask per sample and per call.

    Args:
        x: ``Tensor[N, C, H, W]`` obfuscated samples.
        share: fraction of each sample's patches to hide, in [0, 1] (0 returns ``x``).
        patch: side of the square patches in pixels.
        generator: source of the masks (``None``: torch's global generator).

    Returns:
        ``Tensor[N, C, H, W]``, the same channels hidden at each screened pixel.

    """
    if x.dim() != 4:
        raise ConfigError(f"screen expects Tensor[N, C, H, W], but got shape {tuple(x.shape)}")
    if share == 0:
        _check(share, patch)
        return x
    mask = screening_mask(x.shape[0], x.shape[2], x.shape[3], share=share, patch=patch, generator=generator)
    return x * mask.to(x.device, x.dtype)
