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
from scl.metrics import WHITEBOX_SSIM
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
    pre: torch.nn.Module | None = None,
) -> tuple[Tensor, Tensor]:
    """Invert observed samples ``Tensor[N, ...]``; returns ``(x_hat: Tensor[N, *image_shape],
    best_class: Tensor[N])``. The layer's parameters are not changed. With pre-layers ``pre``
    (spec §5.1, ``h = S(L(x))``), the attacker inverts them too: it knows their weights."""
    if observed.dim() < 2:
        raise ShapeError(f"observed must be a batch [N, ...], but got shape {tuple(observed.shape)}")
    n, c = observed.shape[0], layer.num_classes
    modules = [layer] if pre is None else [layer, pre]
    training = [m.training for m in modules]
    for m in modules:
        m.eval()
    params = [p for m in modules for p in m.parameters()]
    requires = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        # one candidate input per (image, class); all optimised together
        target = observed.detach().unsqueeze(1)  # [N, 1, ...] against [N, C, ...]
        logits = torch.zeros(n, c, *image_shape, device=observed.device, requires_grad=True)
        optimiser = torch.optim.Adam([logits], lr=lr)
        for _ in range(steps):
            optimiser.zero_grad()
            _objective(layer, logits, target, tv_weight, pre).sum().backward()
            optimiser.step()
        with torch.no_grad():
            best = _objective(layer, logits, target, tv_weight, pre).argmin(1)
            x_hat = torch.sigmoid(logits)[torch.arange(n), best]
    finally:
        for p, r in zip(params, requires, strict=True):
            p.requires_grad_(r)
        for m, mode in zip(modules, training, strict=True):
            m.train(mode)
    return x_hat, best


def _objective(
    layer: StochasticConditionalLayer, logits: Tensor, target: Tensor, tv_weight: float,
    pre: torch.nn.Module | None = None,
) -> Tensor:
    """``Tensor[N, C]``: mean negative log-likelihood of the observation plus the TV prior."""
    n, c = logits.shape[:2]
    x_hat = torch.sigmoid(logits)
    per_class = getattr(layer, "params_per_class", None)
    if per_class is not None and pre is None:  # conv / linear: every class's kernels at once
        dist = layer.noise.build(per_class(x_hat))
        log_p = dist.log_prob(target.expand(n, c, *target.shape[2:]))
    else:
        flat = x_hat.flatten(0, 1) if pre is None else pre(x_hat.flatten(0, 1))
        classes = torch.arange(c, device=logits.device).repeat(n)
        dist = layer.distribution(flat, ClassIndex(classes, c))
        log_p = dist.log_prob(target.expand(n, c, *target.shape[2:]).flatten(0, 1))
    nll = -log_p.reshape(n, c, -1).mean(-1)
    return nll + tv_weight * total_variation(x_hat.flatten(0, 1)).view(n, c)


def whitebox_attack(
    layer: StochasticConditionalLayer,
    x: Tensor,
    y: Tensor,
    *,
    steps: int = 100,
    lr: float = 0.1,
    tv_weight: float = 0.05,
    observe: Any = None,
    pre: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Obfuscate ``x`` with hard selection (or ``observe(x, y)``), invert, and score.

    Returns ``{"whitebox_ssim", "whitebox_psnr", "whitebox_class_accuracy", "reconstructions"}``;
    the class accuracy says how often the attacker's best class was the true one.
    """
    with torch.no_grad():
        if observe is None:
            features = x if pre is None else pre(x)
            observed = layer(features, ClassIndex(y, layer.num_classes))
        else:
            observed = observe(x, y)
    x_hat, best = invert(layer, observed, tuple(x.shape[1:]), steps=steps, lr=lr, tv_weight=tv_weight,
                         pre=pre)
    return {
        WHITEBOX_SSIM: ssim(x_hat, x),
        "whitebox_psnr": psnr(x_hat, x),
        "whitebox_class_accuracy": float((best == y).float().mean()),
        "reconstructions": x_hat[:8],
    }
