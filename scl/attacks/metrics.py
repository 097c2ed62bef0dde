"""Image similarity (SSIM, PSNR) and distance correlation, the yardsticks of the attacks.

SSIM and PSNR compare a reconstruction with the original image, both ``Tensor[N, C, H, W]`` in
[0, 1] (``data_range = 1``), and average over the batch. Distance correlation (Székely, Rizzo
and Bakirov 2007) measures any dependence, linear or not, between the flattened inputs and the
obfuscated outputs: 0 if and only if they are independent (in the population), 1 when one is a
similarity transform (``a * x + b``, rotation) of the other.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scl.errors import ConfigError, ShapeError

__all__ = ["distance_correlation", "psnr", "ssim", "ssim_kernel_size"]

#: PSNR of a perfect reconstruction is infinite; per-image values are capped here (dB).
PSNR_MAX_DB = 100.0

_SSIM_SIGMA = 1.5
_SSIM_KERNEL = 11


def ssim_kernel_size(height: int, width: int) -> int:
    """Gaussian window used by :func:`ssim` for ``height x width`` images.

    The standard window (Wang et al. 2004) is 11 x 11 with sigma 1.5. It is used whenever the
    image is at least 22 pixels on its short side; smaller images get the largest odd window not
    above half the short side (16 x 16 -> 7, 8 x 8 -> 3), at least 3, so that the window never
    covers more than half the image and SSIM keeps a valid region to average. Sigma stays 1.5.

    Raises:
        ShapeError: if the image is smaller than 3 x 3.

    """
    short = min(height, width)
    if short < 3:
        raise ShapeError(
            f"ssim needs images of at least 3 x 3 pixels, but got {height} x {width}"
        )
    half = short // 2
    odd = half if half % 2 == 1 else half - 1
    return max(3, min(_SSIM_KERNEL, odd))


def _check_pair(pred: Tensor, target: Tensor, name: str) -> None:
    for label, t in (("pred", pred), ("target", target)):
        if not isinstance(t, Tensor):
            raise ShapeError(f"{name}: {label} must be a Tensor[N, C, H, W], but got "
                             f"{type(t).__name__}")
        if t.dim() != 4:
            raise ShapeError(
                f"{name}: {label} must be a Tensor[N, C, H, W], but got shape {tuple(t.shape)}"
            )
    if pred.shape != target.shape:
        raise ShapeError(
            f"{name}: pred and target must have the same shape, but got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    if pred.shape[0] < 1:
        raise ShapeError(f"{name}: needs at least one image, but got shape {tuple(pred.shape)}")


@torch.no_grad()
def ssim(pred: Tensor, target: Tensor) -> float:
    """Mean structural similarity of ``pred`` to ``target``.

    Args:
        pred: ``Tensor[N, C, H, W]`` in [0, 1], the reconstruction.
        target: ``Tensor[N, C, H, W]`` in [0, 1], the original.

    Returns:
        SSIM averaged over the batch (and channels, pixels), computed by
        ``torchmetrics.functional.structural_similarity_index_measure`` with ``data_range=1.0``,
        a Gaussian window of sigma 1.5 and the size given by :func:`ssim_kernel_size`
        (11 for images of 22 pixels and more, 7 for 16 x 16). In [-1, 1]; 1 means identical.

    Raises:
        ShapeError: if the tensors are not 4-D, differ in shape, or are smaller than 3 x 3.

    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(pred, target, "ssim")
    k = ssim_kernel_size(pred.shape[-2], pred.shape[-1])
    value: Tensor = structural_similarity_index_measure(  # type: ignore[assignment]
        pred.detach().float(),
        target.detach().float(),
        data_range=1.0,
        kernel_size=k,
        sigma=_SSIM_SIGMA,
        reduction="elementwise_mean",
    )
    return float(value)


@torch.no_grad()
def psnr(pred: Tensor, target: Tensor) -> float:
    """Mean peak signal-to-noise ratio (dB) of ``pred`` against ``target``.

    Args:
        pred: ``Tensor[N, C, H, W]`` in [0, 1], the reconstruction.
        target: ``Tensor[N, C, H, W]`` in [0, 1], the original.

    Returns:
        ``10 log10(1 / MSE)`` computed per image by
        ``torchmetrics.functional.peak_signal_noise_ratio`` (``data_range=1.0``), each capped at
        :data:`PSNR_MAX_DB` (a perfect copy would be infinite), then averaged over the batch.

    Raises:
        ShapeError: if the tensors are not 4-D or differ in shape.

    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(pred, target, "psnr")
    per_image = peak_signal_noise_ratio(
        pred.detach().double(),
        target.detach().double(),
        data_range=1.0,
        reduction="none",
        dim=(1, 2, 3),
    )
    per_image = torch.nan_to_num(per_image, nan=PSNR_MAX_DB, posinf=PSNR_MAX_DB)
    return float(per_image.clamp(max=PSNR_MAX_DB).mean())


def luma(images: Tensor) -> Tensor:
    """Per-pixel mean over channels, ``Tensor[N, C, H, W] -> Tensor[N, 1, H, W]``.

    SSIM over colour channels rewards a black image wherever a channel is empty (two empty
    patches compare as identical): on images coloured one channel at a time, a blank guess scores
    high. SSIM of the luminance scores the shape of what was rebuilt, whatever its colour.
    """
    return images.mean(1, keepdim=True)


def _centred_distances(z: Tensor) -> Tensor:
    """Double-centred Euclidean distance matrix ``A`` of ``Tensor[n, d]`` rows (float64)."""
    d = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")
    return d - d.mean(dim=0, keepdim=True) - d.mean(dim=1, keepdim=True) + d.mean()


def _u_centred_distances(z: Tensor) -> Tensor:
    """U-centred distance matrix (zero diagonal) of ``Tensor[n, d]`` rows, for the unbiased dCov."""
    n = z.shape[0]
    d = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")
    rows = d.sum(dim=1, keepdim=True) / (n - 2)
    cols = d.sum(dim=0, keepdim=True) / (n - 2)
    u = d - rows - cols + d.sum() / ((n - 1) * (n - 2))
    u.fill_diagonal_(0.0)
    return u


@torch.no_grad()
def distance_correlation(
    x: Tensor,
    h: Tensor,
    *,
    max_samples: int = 1000,
    generator: torch.Generator | None = None,
    bias_corrected: bool = False,
) -> float:
    """Distance correlation between per-sample ``x`` and ``h`` (Székely's V-statistic).

    With ``bias_corrected=True`` the U-centred estimator of Székely and Rizzo (2014) is used
    instead: unbiased for ``dCov^2``, about 0 for independent data at any ``n`` and dimension
    (the V-statistic of independent high-dimensional data is far above 0). The value returned is
    then ``sqrt(max(R*, 0))`` with ``R*`` the bias-corrected squared dCor, on the same scale.

    Each sample is flattened (``Tensor[N, ...] -> Tensor[N, D]``). With ``A`` and ``B`` the
    double-centred Euclidean distance matrices of the rows of ``x`` and ``h``,
    ``dCov^2 = mean(A * B)``, ``dVar_x^2 = mean(A * A)``, ``dVar_h^2 = mean(B * B)`` and
    ``dCor = sqrt(dCov^2 / sqrt(dVar_x^2 * dVar_h^2))`` (0 when either variance is 0), all in
    float64. The V-statistic is biased upwards for small ``n`` (independent data give about
    ``1 / sqrt(n)``-sized values, not 0), so compare values computed on the same ``n``.

    Args:
        x: ``Tensor[N, ...]``, e.g. the images ``Tensor[N, C, H, W]``.
        h: ``Tensor[N, ...]``, e.g. the obfuscated outputs ``Tensor[N, C', H', W']``.
        max_samples: at most this many rows are used (the cost is ``O(n^2)`` memory); when
            ``N`` is larger, a random subset of rows is drawn, the same rows for ``x`` and ``h``.
        generator: source of that subset; ``None`` uses a generator seeded with 0 so the value
            is reproducible.

    Returns:
        dCor in [0, 1].

    Raises:
        ShapeError: if ``x`` and ``h`` are not tensors with the same ``N >= 2``.
        ConfigError: if ``max_samples < 2``.

    """
    for label, t in (("x", x), ("h", h)):
        if not isinstance(t, Tensor):
            raise ShapeError(
                f"distance_correlation: {label} must be a Tensor[N, ...], but got "
                f"{type(t).__name__}"
            )
        if t.dim() < 1:
            raise ShapeError(
                f"distance_correlation: {label} must be a Tensor[N, ...], but got a scalar"
            )
    if x.shape[0] != h.shape[0]:
        raise ShapeError(
            f"distance_correlation: x and h must have the same number of samples N, but got "
            f"{x.shape[0]} and {h.shape[0]}"
        )
    n = x.shape[0]
    if n < 2:
        raise ShapeError(f"distance_correlation needs N >= 2 samples, but got {n}")
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 2:
        raise ConfigError(f"max_samples must be an integer >= 2, but got {max_samples!r}")

    xs = x.detach().reshape(n, -1)
    hs = h.detach().reshape(n, -1)
    if n > max_samples:
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        index = torch.randperm(n, generator=generator)[:max_samples]
        xs, hs = xs[index.to(xs.device)], hs[index.to(hs.device)]
    xs = xs.to(torch.float64)
    hs = hs.to(device=xs.device, dtype=torch.float64)

    if bias_corrected:
        if xs.shape[0] < 4:
            raise ShapeError(f"the bias-corrected dCor needs N >= 4 samples, but got {xs.shape[0]}")
        a, b = _u_centred_distances(xs), _u_centred_distances(hs)
        m = xs.shape[0]
        scale = 1.0 / (m * (m - 3))
        dcov2 = float((a * b).sum()) * scale
        dvar2 = float((a * a).sum()) * scale * float((b * b).sum()) * scale
    else:
        a = _centred_distances(xs)
        b = _centred_distances(hs)
        dcov2 = float((a * b).mean())
        dvar2 = float((a * a).mean()) * float((b * b).mean())
    if dvar2 <= 0.0:
        return 0.0
    dcor2 = max(dcov2, 0.0) / math.sqrt(dvar2)
    return min(1.0, math.sqrt(dcor2))
