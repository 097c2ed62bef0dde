"""White-box inversion: an attacker who knows the layer, its weights and its noise law.

For an observed sample ``h`` the attacker optimises an input ``x_hat`` in [0, 1] so that ``h`` is
as likely as possible under the layer's distribution, with a total-variation prior:

    minimise  -log p(h | x_hat, class c) / numel(h)  +  tv_weight * TV(x_hat)

The class is unknown to the attacker, so every class's kernels are tried (all at once, as one
batch) and the class with the lowest objective is kept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from scl.attacks.metrics import psnr, ssim
from scl.errors import ShapeError
from scl.layers.base import StochasticConditionalLayer
from scl.selection import ClassIndex


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference of neighbouring pixels, per image: ``Tensor[N]``."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


def invert(
    layer: StochasticConditionalLayer,
    observed: Tensor,
    image_shape: tuple[int, ...],
    *,
    steps: int = 100,
    lr: float = 0.1,
    tv_weight: float = 0.05,
    chunk: int = 4096,
) -> tuple[Tensor, Tensor]:
    """Invert observed samples ``Tensor[N, ...]``; returns ``(x_hat: Tensor[N, *image_shape],
    best_class: Tensor[N])``. The layer's parameters are not changed."""
    if observed.dim() < 2:
        raise ShapeError(f"observed must be a batch [N, ...], but got shape {tuple(observed.shape)}")
    n, c = observed.shape[0], layer.num_classes
    was_training = layer.training
    layer.eval()
    requires = [p.requires_grad for p in layer.parameters()]
    for p in layer.parameters():
        p.requires_grad_(False)
    try:
        # every (image, class) pair is one row of the batch
        target = observed.detach().repeat_interleave(c, 0)
        classes = torch.arange(c, device=observed.device).repeat(n)
        logits = torch.zeros(n * c, *image_shape, device=observed.device, requires_grad=True)
        optimiser = torch.optim.Adam([logits], lr=lr)
        for _ in range(steps):
            optimiser.zero_grad()
            objective = _objective(layer, logits, target, classes, tv_weight, chunk)
            objective.sum().backward()
            optimiser.step()
        with torch.no_grad():
            final = _objective(layer, logits, target, classes, tv_weight, chunk).view(n, c)
            best = final.argmin(1)
            x_hat = torch.sigmoid(logits).view(n, c, *image_shape)
            x_hat = x_hat[torch.arange(n), best]
    finally:
        for p, r in zip(layer.parameters(), requires):
            p.requires_grad_(r)
        layer.train(was_training)
    return x_hat, best


def _objective(
    layer: StochasticConditionalLayer,
    logits: Tensor,
    target: Tensor,
    classes: Tensor,
    tv_weight: float,
    chunk: int,
) -> Tensor:
    parts = []
    for start in range(0, logits.shape[0], chunk):  # bounded memory; not a loop over classes
        stop = start + chunk
        x_hat = torch.sigmoid(logits[start:stop])
        dist = layer.distribution(x_hat, ClassIndex(classes[start:stop], layer.num_classes))
        nll = -dist.log_prob(target[start:stop]).flatten(1).mean(1)
        parts.append(nll + tv_weight * total_variation(x_hat))
    return torch.cat(parts)


def whitebox_attack(
    layer: StochasticConditionalLayer,
    x: Tensor,
    y: Tensor,
    *,
    steps: int = 100,
    lr: float = 0.1,
    tv_weight: float = 0.05,
    observe: Any = None,
) -> dict[str, Any]:
    """Obfuscate ``x`` with hard selection (or ``observe(x, y)``), invert, and score.

    Returns ``{"whitebox_ssim", "whitebox_psnr", "whitebox_class_accuracy", "reconstructions"}``;
    the class accuracy says how often the attacker's best class was the true one.
    """
    with torch.no_grad():
        if observe is None:
            observed = layer(x, ClassIndex(y, layer.num_classes))
        else:
            observed = observe(x, y)
    x_hat, best = invert(layer, observed, tuple(x.shape[1:]), steps=steps, lr=lr, tv_weight=tv_weight)
    return {
        "whitebox_ssim": ssim(x_hat, x),
        "whitebox_psnr": psnr(x_hat, x),
        "whitebox_class_accuracy": float((best == y).float().mean()),
        "reconstructions": x_hat[:8],
    }
