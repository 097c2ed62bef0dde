"""The stage code every pipeline shares: a run's randomness, the task network, the layer and where
it starts, the privacy objectives, the utility budget and constrained training. Classification's
stage functions, which federated reuses, still live in ``classification.py``.

Privacy at a utility budget.

A user says how much accuracy they may lose (``max_accuracy_loss``, in points); each stage that
shapes a release (stage 1, the soft selection, the gated selection) then makes the release as
private as it can within that loss. Three pieces, each used by every stage:

* :class:`PrivacyObjective` - what "private" means: a differentiable term to minimise, computed on
  the release ``h`` (and its distribution) of a batch ``(x, y)``, some with an adversary that
  trains beside the layer.
* :class:`UtilityBudget` - the constraint, measured on a validation part of the obfuscator split
  (never the test split): accuracy of the frozen task network on the release, paired with its
  accuracy on the same clean images.
* :func:`train_within_budget` - constrained training by dual ascent on a Lagrange multiplier.

Why dual ascent on a multiplier and not a constant weight: a weight that gives a 1-point loss on
one data set gives 15 or 40 on another (measured, see the issue "Privacy at a utility budget"),
and the user cannot know it in advance. The stage minimises ``privacy + mu * task_loss``
(normalised by ``1 + mu``); after every step ``log mu`` moves by ``rate * (loss - budget)`` with
``loss`` the validation accuracy drop in points (smoothed over steps). The constraint is measured
as a rate (accuracy) while the stage descends its differentiable surrogate (cross-entropy): the
proxy-Lagrangian of Cotter, Jiang and Sridharan (2019), with the multiplicative update of GECO
(Rezende and Viola, 2018) so that ``mu`` keeps its scale for any objective. The stage keeps the
weights of the last epoch whose validation loss was within the budget (averaged over 8 noise
draws); when no epoch was, it keeps the closest one and says so.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scl.errors import ConfigError, DataError
from scl.io import load
from scl.layers import StochasticConditionalAdditive, StochasticConditionalConv2d, StochasticConditionalLayer
from scl.pipelines import engine
from scl.progress import task
from scl.random import deterministic
from scl.training import shuffled_batches

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = [
    "AUTO_INIT_FRACTION",
    "OBJECTIVES",
    "BudgetResult",
    "DetectionBudget",
    "PrivacyObjective",
    "UtilityBudget",
    "build_image_layer",
    "class_mean_init",
    "conv_class_mean_init",
    "distance_correlation_term",
    "identity_init",
    "init_scale",
    "layer_start",
    "load_task_network",
    "privacy_term",
    "run_noise",
    "stage_generator",
    "train_task_network",
    "train_within_budget",
    "validation_cut",
    "within_class_information",
]

#: The privacy objectives a stage can minimise (``stage1.privacy``).
OBJECTIVES = ("within", "dcor", "adversarial", "attribute", "entropy", "ssim", "both")

#: ``h = release(x, y)`` with its distribution: ``(h, dist)``.
Release = Callable[[Tensor, Tensor], tuple[Tensor, torch.distributions.Distribution]]


# -- a run's randomness -------------------------------------------------------------------------
class Seeded(Protocol):
    """What a run's randomness reads of its config: every pipeline's config has these two fields."""

    @property
    def seed(self) -> int: ...

    @property
    def reproducible(self) -> bool: ...


@contextlib.contextmanager
def run_noise(config: Seeded) -> Iterator[None]:
    """The noise of a run's block: seeded from ``config.seed`` when ``config.reproducible``
    (:func:`scl.random.deterministic`), else the layers' default, the cipher stream."""
    if config.reproducible:
        with deterministic(config.seed):
            yield
    else:
        yield


def stage_generator(config: Seeded, offset: int) -> torch.Generator:
    """The seeded generator of one use in a run (batch order, a validation cut, a calibration
    draw), ``offset`` telling the uses apart: 1 the task network, 2 stage 1, 3 the selections,
    5 the budget's validation cut, 7 plain noise's calibration draw."""
    return torch.Generator().manual_seed(config.seed * 1000 + offset)


# -- the task network ----------------------------------------------------------------------------
TaskNetwork = TypeVar("TaskNetwork", bound=nn.Module)


def load_task_network(path: str | Path, kind: type[TaskNetwork], *, channels: int, num_classes: int,
                      option: str) -> TaskNetwork:
    """A task network N saved by ``scl.save`` at ``path``: a ``kind`` for ``channels`` input channels
    and ``num_classes`` classes, or a :class:`ConfigError` naming the setting ``option`` that gave it."""
    network = load(path)
    if (not isinstance(network, kind) or getattr(network, "in_channels", None) != channels
            or getattr(network, "num_classes", None) != num_classes):
        raise ConfigError(
            f"{option} {str(path)!r} must be a {kind.__name__} for {channels} channels and {num_classes} classes"
        )
    return network


def train_task_network(
    network: nn.Module, loss_fn: engine.LossFn, data: Sequence[Tensor], *,
    epochs: int, lr: float, batch_size: int, generator: torch.Generator, progress: Progress | None,
    description: str,
) -> dict[str, list[float]]:
    """Train N on clean data, ``loss_fn(*batch) -> (loss, stats)`` over the tensors ``data``, with a
    cosine schedule (see :func:`scl.training.fit`); returns the per-epoch history."""
    network.train()
    return engine.train(loss_fn, list(network.parameters()), data, epochs=epochs, lr=lr, batch_size=batch_size,
                        generator=generator, progress=progress, description=description, cosine=True)


# -- the layer and where it starts ---------------------------------------------------------------
#: ``layer.init_scale = "auto"``: the initial noise scale as this fraction of the inputs' spread.
#: At 0.1 the stages started from a release N reads and the privacy term never raised the noise
#: in the few hundred steps of stage 1 (median scale 0.026 -> 0.035, every test release
#: re-identified); at 1 (noise as large as the signal) they start infeasible, and the budget's
#: multiplier lowers the noise only where N needs the signal.
AUTO_INIT_FRACTION = 1.0


def init_scale(value: float | str, images: Tensor) -> float:
    """The layer's initial noise scale: a number as given, or ``"auto"``: the standard deviation of
    the data's pixels ``images`` (:data:`AUTO_INIT_FRACTION` of it), so the noise starts on the
    data's own scale on any data set and the budget, not a constant, decides where it can be
    lowered."""
    if value != "auto":
        return float(value)
    return max(AUTO_INIT_FRACTION * float(images.std()), 2e-3)


def build_image_layer(layer: Mapping[str, Any], images: Tensor, num_classes: int) -> StochasticConditionalLayer:
    """The stochastic conditional layer of an image pipeline, from its ``layer`` config: image in,
    image-shaped sample out (N reads it). ``images``: ``Tensor[N, C, H, W]``, the data whose shape
    it takes and whose spread ``init_scale = "auto"`` reads. ``layer.kind``: ``"conv"`` (default) or
    ``"additive"``; a Gaussian or Laplace conv layer starts at the identity (:func:`identity_init`)."""
    shape = tuple(int(d) for d in images.shape[1:])
    options = {"init_scale": init_scale(layer["init_scale"], images)} \
        if layer["distribution"] in ("gaussian", "laplace") else {}
    if layer.get("kind", "conv") == "additive":
        return StochasticConditionalAdditive(
            shape, num_classes, distribution=layer["distribution"], distribution_options=options,
            learn_gain=bool(layer.get("learn_gain", False)),
        )
    conv = StochasticConditionalConv2d(
        shape[0], shape[0], layer["kernel_size"], num_classes, padding="same", distribution=layer["distribution"],
        distribution_options=options, selection_at=layer.get("selection_at", "input"),
    )
    if options:
        identity_init(conv)
    return conv


def identity_init(layer: StochasticConditionalConv2d) -> None:
    """Start every class's mean kernels at the identity and its scale kernels at 0: the first
    release is ``x`` plus noise of the initial scale, constant over the input (as the ``within``
    objective's bound assumes), instead of a random convolution of ``x`` that N cannot read (it cost
    60 points of accuracy at the first epoch and most of stage 1 to undo)."""
    out = layer.out_channels
    with torch.no_grad():
        torch.nn.init.dirac_(layer.weight[0, :out])
        layer.weight[:, :out] = layer.weight[0, :out].clone()
        layer.weight[:, out:] = 0.0
        layer.bias[:, :out] = 0.0
    layer.invalidate_cache()


def layer_start(layer: Mapping[str, Any]) -> str:
    """``layer.start`` resolved from the ``layer`` config: ``"class_mean"`` or ``"input"`` (``auto``:
    class_mean where the layer can turn x off, the additive layer with a gain; configs of earlier
    versions: input)."""
    start = layer.get("start", "input")
    if start == "auto":
        return "class_mean" if layer.get("kind", "conv") == "additive" and layer.get("learn_gain", False) else "input"
    return str(start)


def class_mean_init(layer: StochasticConditionalAdditive, x: Tensor, y: Tensor) -> None:
    """Start the additive layer at the release that carries the class and nothing else: every
    gain at 0 and class c's mean map at the mean of its images in ``x`` (so the release is a
    class's mean image plus noise, which N mostly reads as the class). The budget then lets x in
    where N needs it, instead of the privacy term having to take it out from an identity start
    (which it did not, within stage 1's steps: 98% of hard releases stayed re-identified)."""
    if layer.gains is None:
        raise ConfigError("layer.start=class_mean needs layer.learn_gain=true")
    present = torch.bincount(y, minlength=layer.num_classes)
    if bool((present == 0).any()):
        missing = [int(c) for c in torch.nonzero(present == 0).flatten()]
        raise ConfigError(
            f"layer.start=class_mean needs images of every class in the obfuscator split, but classes "
            f"{missing} have none; use more data or set layer.start=input"
        )
    with torch.no_grad():
        layer.gains.zero_()
        for c in range(layer.num_classes):
            layer.offsets[c, 0] = x[y == c].mean(0)


def conv_class_mean_init(layer: StochasticConditionalConv2d, x: Tensor, weights: Tensor) -> None:
    """Start a convolutional layer at the release that carries the selection and nothing else:
    every mean kernel at 0 and class c's mean bias at the mean of x over what c selects, per
    channel. ``weights``: the hard selection, ``[N, C]`` (one class per image) or
    ``[N, C, 1, *spatial]`` (per pixel, e.g. box masks). The scale kernels and biases are kept.
    The budget then lets x in where the task needs it (see :func:`class_mean_init`)."""
    if weights.dim() == 2:  # one class per image: each of its pixels
        weights = weights.reshape(*weights.shape, *([1] * (x.dim() - 1))).expand(*weights.shape, 1, *x.shape[2:])
    mass = weights.sum(dim=(0, *range(2, weights.dim()))).flatten()  # [C]
    if bool((mass == 0).any()):
        missing = [int(c) for c in torch.nonzero(mass == 0).flatten()]
        raise ConfigError(
            f"layer.start=class_mean needs every class selected somewhere in the obfuscator split, but "
            f"classes {missing} are not; use more data or set layer.start=input"
        )
    spatial = tuple(range(2, x.dim()))
    # [N, C, 1, *S] x [N, 1, ch, *S] summed over N and S: each class's per-channel pixel sum
    sums = (weights * x.unsqueeze(1)).sum(dim=(0, *(d + 1 for d in spatial)))  # [C, ch]
    out = layer.out_channels
    if sums.shape[1] != out:
        raise ConfigError(f"layer.start=class_mean needs as many output channels as input channels "
                          f"({sums.shape[1]}), but the layer has {out}")
    with torch.no_grad():
        layer.weight[:, :out] = 0.0
        layer.bias[:, :out] = sums / mass[:, None]
    layer.invalidate_cache()


# -- the objectives ------------------------------------------------------------------------------
def privacy_term(
    kind: str, x: Tensor, h: Tensor, dist: torch.distributions.Distribution
) -> tuple[Tensor, dict[str, float]]:
    """The terms of earlier versions, minimised beside the task loss (weighted by ``stage1.lam``
    without a budget; :class:`PrivacyObjective` kinds ``entropy``, ``ssim`` and ``both``).

    ``entropy``: ``-mean(log scale)``, raising the noise (Shredder's idea); needs a location-scale
    distribution. ``ssim``: ``SSIM(x, h)``, pushing the samples away from the inputs' structure.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

    from scl.attacks.metrics import ssim_kernel_size

    terms: dict[str, Tensor] = {}
    if kind in ("entropy", "both"):
        scale = getattr(dist, "scale", None)
        if scale is None:
            raise ConfigError(
                "stage1.privacy='entropy' needs a gaussian or laplace layer; use "
                "--set stage1.privacy=ssim for other distributions"
            )
        terms["neg_log_scale"] = -torch.log(scale).mean()
    if kind in ("ssim", "both"):
        if h.shape != x.shape:
            raise ConfigError("stage1.privacy='ssim' needs samples shaped like the inputs")
        size = ssim_kernel_size(*x.shape[-2:])
        terms["ssim"] = ssim_fn(h, x, data_range=1.0, kernel_size=size)  # type: ignore[assignment]
    total = sum(terms.values())
    return total, {k: float(v.detach()) for k, v in terms.items()}  # type: ignore[return-value]


def within_class_information(y: Tensor, loc: Tensor, variance: Tensor) -> Tensor:
    """``mean over elements of 1/2 log(1 + Var(mu | c) / sigma^2)``, pooled over the batch's classes.

    For a release ``h = mu(x) + sigma * eps`` with Gaussian ``eps`` independent of ``x`` and, given
    the class, ``sigma`` not depending on ``x``, each element ``h_j`` is a Gaussian channel with
    signal power ``Var(mu_j | c)``, so ``I(h_j; x | c) <= 1/2 log(1 + Var(mu_j | c) / sigma_j^2)``;
    the elements are independent given ``x``, so ``I(h; x | c)`` is at most the sum over ``j``.
    This returns that bound per element (nats), estimated on the batch: ``Var(mu | c)`` is the
    unbiased variance of ``loc`` over the batch's samples of class ``c`` and ``sigma^2`` their mean
    ``variance`` (an approximation when ``sigma`` depends on ``x``; for a Laplace release it is
    the bound of a Gaussian of the same variance, which is not a bound). Classes with fewer than 2
    samples in the batch are skipped; each class weighs by its count.

    Per-pixel classes (detection, where a box's class holds inside the box and the background
    class outside every box): ``y`` of shape ``[B, H, W]`` for ``loc`` of shape ``[B, C, H, W]``.
    Every pixel is then one sample of its class, and the spread is pooled over the images and the
    positions of that class. That is a surrogate, not the bound: it also counts a mean that varies
    with the position alone, which carries nothing beyond the boxes; it is zero exactly when the
    release's mean is one constant per class, i.e. when the release shows the box masks and nothing
    else.

    Args:
        y: ``Tensor[B]`` int64 labels, or ``Tensor[B, *S]`` per-element labels for ``loc`` of
            shape ``[B, C, *S]``.
        loc: ``Tensor[B, ...]`` the release's mean.
        variance: ``Tensor[B, ...]`` its variance (same shape).
    """
    if y.dim() > 1:
        if y.shape[0] != loc.shape[0] or tuple(y.shape[1:]) != tuple(loc.shape[2:]):
            raise DataError(
                f"per-pixel classes must have the release's shape without its channels, "
                f"{(loc.shape[0], *loc.shape[2:])}, but got {tuple(y.shape)}"
            )
        channels = loc.shape[1]
        loc = loc.movedim(1, -1).reshape(-1, channels)
        variance = variance.movedim(1, -1).reshape(-1, channels)
        y = y.reshape(-1)
    flat_loc = loc.reshape(loc.shape[0], -1)
    flat_var = variance.reshape(variance.shape[0], -1)
    onehot = F.one_hot(y, int(y.max()) + 1).to(flat_loc.dtype)  # [B, C]
    counts = onehot.sum(0)  # [C]
    keep = counts >= 2
    if not bool(keep.any()):
        return flat_loc.sum() * 0.0
    onehot, counts = onehot[:, keep], counts[keep]
    mean = onehot.T @ flat_loc / counts[:, None]
    square = onehot.T @ flat_loc.square() / counts[:, None]
    spread = (square - mean.square()).clamp_min(0.0) * (counts / (counts - 1))[:, None]
    noise = (onehot.T @ flat_var / counts[:, None]).clamp_min(1e-12)
    per_class = 0.5 * torch.log1p(spread / noise).mean(1)  # [C]
    return (per_class * counts).sum() / counts.sum()


def distance_correlation_term(y: Tensor, x: Tensor, h: Tensor) -> Tensor:
    """Squared distance correlation between ``x`` and ``h`` within each class of the batch
    (NoPeek's term, taken within classes so that carrying the class is not penalised).

    Differentiable; classes with fewer than 4 samples in the batch are skipped; each class weighs
    by its count. V-statistic, so compare values on the same batch size.
    """
    total, weight = h.sum() * 0.0, 0
    for c in torch.unique(y).tolist():
        index = (y == c).nonzero().flatten()
        if index.numel() < 4:
            continue
        a = _centred(x[index].reshape(index.numel(), -1).double())
        b = _centred(h[index].reshape(index.numel(), -1).double())
        dvar = ((a * a).mean() * (b * b).mean()).clamp_min(1e-24).sqrt()
        total = total + index.numel() * ((a * b).mean() / dvar).to(h.dtype)
        weight += index.numel()
    return total / max(weight, 1)


def _centred(z: Tensor) -> Tensor:
    # torch.cdist's gradient is nan at zero distance (the diagonal); the square root of a clamped
    # squared distance is not
    d = (z[:, None, :] - z[None, :, :]).square().sum(-1).clamp_min(1e-12).sqrt()
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


class _Decoder(nn.Module):
    """The adversarial decoder trained beside the layer: ``(h, one-hot class maps) -> x``.

    It is given the class, so what it gains over the class-mean image is what ``h`` carries beyond
    the class: the quantity the layer is asked to hide.
    """

    def __init__(self, in_channels: int, num_classes: int, out_channels: int, width: int = 32) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(
            nn.Conv2d(in_channels + num_classes, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, out_channels, 3, padding=1), nn.Sigmoid(),
        )

    def forward(self, h: Tensor, y: Tensor) -> Tensor:
        maps = F.one_hot(y, self.num_classes).to(h.dtype)[:, :, None, None].expand(-1, -1, *h.shape[-2:])
        return self.net(torch.cat([h, maps], 1))


class _AttributeAdversary(nn.Module):
    """The attribute adversary trained beside the layer: ``h -> attribute`` logits."""

    def __init__(self, in_channels: int, num_attributes: int, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_attributes),
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class PrivacyObjective(nn.Module):
    """A privacy term to minimise, and the adversary behind it where it has one.

    ``kind`` is one of :data:`OBJECTIVES`:

    * ``within``: :func:`within_class_information`, the Gaussian bound on what ``h`` carries about
      ``x`` beyond the class; needs a location-scale release.
    * ``dcor``: :func:`distance_correlation_term` between ``x`` and ``h`` within each class.
    * ``adversarial``: a decoder, given ``h`` and the class, trains to rebuild ``x``; the term is
      minus its mean squared error (min-max, as DeepObfuscator).
    * ``attribute``: an adversary trains to predict the private attribute from ``h``; the term is
      minus the entropy of its prediction (it is best for the layer when the adversary can only
      guess uniformly), needs data with an attribute.
    * ``entropy``: minus the mean log noise scale (Shredder's term); ``ssim``: ``SSIM(x, h)``;
      ``both``: their sum (the terms of earlier versions).

    Args:
        kind: the objective.
        num_classes: classes of the task.
        image_shape: ``(C, H, W)`` of the release (the adversaries' input).
        in_shape: ``(C, H, W)`` of ``x`` (the decoder's output); default ``image_shape``.
        num_attributes: values of the private attribute (``attribute`` only).
        lr: the adversary's learning rate.
    """

    def __init__(
        self,
        kind: str,
        *,
        num_classes: int,
        image_shape: Sequence[int],
        in_shape: Sequence[int] | None = None,
        num_attributes: int | None = None,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        if kind not in OBJECTIVES:
            raise ConfigError(f"the privacy objective must be one of {list(OBJECTIVES)}, but got {kind!r}")
        self.kind, self.num_classes = kind, num_classes
        channels = int(image_shape[0])
        self.adversary: nn.Module | None = None
        if kind == "adversarial":
            if len(image_shape) != 3:
                raise ConfigError(
                    f"the adversarial objective needs image releases (C, H, W), but got {tuple(image_shape)}"
                )
            out = int((in_shape or image_shape)[0])
            self.adversary = _Decoder(channels, num_classes, out)
        elif kind == "attribute":
            if num_attributes is None or num_attributes < 2:
                raise DataError(
                    "the attribute objective needs data with a private attribute (2 or more values); "
                    "this data set has none: choose another objective, e.g. --set stage1.privacy=within"
                )
            self.adversary = _AttributeAdversary(channels, num_attributes)
        self.optimiser = torch.optim.Adam(self.adversary.parameters(), lr=lr) if self.adversary is not None else None

    def term(
        self, x: Tensor, y: Tensor, h: Tensor, dist: torch.distributions.Distribution, attribute: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """The term to minimise for the batch, and its parts for the history."""
        if self.kind in ("entropy", "ssim", "both"):
            return privacy_term(self.kind, x, h, dist)
        if y.is_floating_point():  # a hard selection pi [B, K, 1, *S] (detection): per-pixel classes
            if self.kind != "within":
                raise ConfigError(
                    f"the {self.kind!r} objective needs one class per image; with per-pixel classes "
                    "(detection) use within, entropy, ssim or both"
                )
            y = y.argmax(1).flatten(1, 2) if y.dim() == 5 else y.argmax(1)
        if self.kind == "within":
            loc, variance = _moments(dist)
            value = within_class_information(y, loc, variance)
        elif self.kind == "dcor":
            value = distance_correlation_term(y, x, h)
        elif self.kind == "adversarial":
            assert self.adversary is not None
            value = -F.mse_loss(self.adversary(h, y), x)
        else:
            assert self.adversary is not None
            if attribute is None:
                raise DataError("the attribute objective needs the batch's attribute")
            log_p = torch.log_softmax(self.adversary(h), -1)
            value = (log_p.exp() * log_p).sum(-1).mean()  # minus the entropy
        return value, {self.kind: float(value.detach())}

    def adversary_step(self, x: Tensor, y: Tensor, h: Tensor, attribute: Tensor | None = None) -> None:
        """One step of the adversary on the batch's release (detached): the max of the min-max."""
        if self.adversary is None or self.optimiser is None:
            return
        h = h.detach()
        if self.kind == "adversarial":
            loss = F.mse_loss(self.adversary(h, y), x)
        elif attribute is None:
            raise DataError("the attribute objective needs the batch's attribute")
        else:
            loss = F.cross_entropy(self.adversary(h), attribute)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()


def _moments(dist: torch.distributions.Distribution) -> tuple[Tensor, Tensor]:
    loc = getattr(dist, "loc", None)
    if loc is None:
        raise ConfigError(
            "the 'within' objective needs a gaussian or laplace layer (a mean and a scale); "
            "use --set stage1.privacy=dcor for other distributions"
        )
    return loc, dist.variance


# -- the budget ----------------------------------------------------------------------------------
def validation_cut(n: int, fraction: float, generator: torch.Generator, option: str) -> tuple[Tensor, Tensor]:
    """A seeded cut of ``n`` items into ``(train, validation)`` indices, ``fraction`` of them held
    out to measure the budget; a clear error when either part would hold fewer than 2 (``option``
    is the setting that turns the budget off, for the message)."""
    order = torch.randperm(n, generator=generator)
    k = int(round(fraction * n))
    if k < 2 or n - k < 2:
        raise ConfigError(
            f"the obfuscator split has {n} images: too few to hold out {fraction:g} of them to "
            f"measure the budget; use more data or --set {option}=null"
        )
    return order[k:], order[:k]


@dataclass
class UtilityBudget:
    """The accuracy a release may lose, measured on a validation split.

    Args:
        max_loss: the most accuracy the release may lose against clean images, in points.
        network: the frozen task network N.
        x, y: the validation images and labels (a part of the obfuscator split).
        draws: noise draws averaged per image when the loss is checked.
    """

    max_loss: float
    network: nn.Module
    x: Tensor
    y: Tensor
    draws: int = 8
    clean: float = field(init=False)

    #: what the budget is a loss of, and the option that sets it (for messages)
    measure: ClassVar[str] = "accuracy"
    option: ClassVar[str] = "--max-accuracy-loss"

    def __post_init__(self) -> None:
        _check_budget(self.max_loss, self.measure, self.x)
        with torch.no_grad():
            self.clean = engine.accuracy(self.network(self.x), self.y)

    @torch.no_grad()
    def loss(self, release: Callable[[Tensor, Tensor], Tensor], draws: int | None = None) -> float:
        """Accuracy lost on the validation split, in points: clean minus the release's, one noise
        draw per image as at inference, averaged over ``draws`` independent draws (which lowers
        the noise of the estimate, not the accuracy it estimates)."""
        count = draws or self.draws
        correct = 0.0
        for _ in range(count):
            correct += engine.accuracy(self.network(release(self.x, self.y)), self.y)
        return 100.0 * (self.clean - correct / count)


def _check_budget(value: Any, measure: str, x: Tensor) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 100:
        raise ConfigError(f"the {measure} budget must be a number of points in [0, 100), but got {value!r}")
    if x.shape[0] < 2:
        raise DataError(f"the budget needs a validation split of at least 2 images, but got {x.shape[0]}")


@dataclass
class DetectionBudget:
    """The mAP@.5 a release may lose, measured on a validation split (detection).

    The same interface as :class:`UtilityBudget`; the release is ``release(x, y)`` with ``y`` the
    images' hard selection (box masks), and the loss is COCO mAP@.5 of the detector on clean
    images minus its mAP@.5 on the release, in points, one noise draw per image, averaged over
    ``draws`` draws. COCO mAP is a set measure (it ranks every detection of the split), so each
    check runs the detector on the whole validation split; at a few hundred images that costs a
    fraction of a second, so :func:`train_within_budget` checks it once per epoch
    (``dual_every_step=False``), not after every step.

    Args:
        max_loss: the most mAP@.5 the release may lose against clean images, in points.
        network: the frozen detector (``detect(x, k=, threshold=)`` and ``num_classes``).
        x: the validation images; y: their hard selections; targets: their boxes and labels.
        top_k, score_threshold: the detector's decoding, as in the run's evaluation.
        draws: noise draws averaged per check.
    """

    max_loss: float
    network: nn.Module
    x: Tensor
    y: Tensor
    targets: Sequence[Any]
    top_k: int = 20
    score_threshold: float = 0.01
    draws: int = 2
    batch_size: int = 128
    clean: float = field(init=False)

    measure: ClassVar[str] = "mAP@.5"
    option: ClassVar[str] = "--max-map-loss"

    def __post_init__(self) -> None:
        _check_budget(self.max_loss, self.measure, self.x)
        if len(self.targets) != self.x.shape[0]:
            raise DataError(f"the budget needs one target per validation image, but got {len(self.targets)} "
                            f"for {self.x.shape[0]} images")
        self.clean = self._map50(lambda x, y: x)

    @torch.no_grad()
    def _map50(self, release: Callable[[Tensor, Tensor], Tensor]) -> float:
        from scl.pipelines.coco import coco_map

        detections: list[Any] = []
        for start in range(0, self.x.shape[0], self.batch_size):
            part = slice(start, start + self.batch_size)
            h = release(self.x[part], self.y[part])
            detections.extend(self.network.detect(h, k=self.top_k, threshold=self.score_threshold))  # type: ignore[operator]
        result = coco_map(self.targets, detections, num_classes=int(self.network.num_classes),  # type: ignore[arg-type]
                          image_size=(int(self.x.shape[-2]), int(self.x.shape[-1])))
        return float(result["map50"])

    @torch.no_grad()
    def loss(self, release: Callable[[Tensor, Tensor], Tensor], draws: int | None = None) -> float:
        """mAP@.5 lost on the validation split, in points, averaged over ``draws`` noise draws."""
        count = draws or self.draws
        return 100.0 * (self.clean - sum(self._map50(release) for _ in range(count)) / count)


@dataclass
class BudgetResult:
    """What a constrained stage reached: for ``metrics.json`` and the report."""

    budget: float
    feasible: bool
    validation_loss: float
    epoch: int
    multiplier: list[float]
    validation: list[float]
    clean_validation: float
    validation_images: int
    measure: str = "accuracy"
    option: str = "--max-accuracy-loss"
    #: the epochs the stage was given (it ran fewer when it gave up on an out-of-reach budget)
    epochs_asked: int = 0

    @property
    def epochs_run(self) -> int:
        """The epochs the stage trained: one validation loss each."""
        return len(self.validation)

    def as_dict(self) -> dict[str, Any]:
        key = "max_accuracy_loss" if self.measure == "accuracy" else "max_map_loss"
        return {
            "measure": self.measure,
            "max_loss": self.budget,
            key: self.budget,
            "feasible": self.feasible,
            "validation_loss": self.validation_loss,
            "epoch": self.epoch,
            "multiplier": self.multiplier,
            "validation_losses": self.validation,
            "clean_validation_accuracy": self.clean_validation,
            "validation_images": self.validation_images,
            "epochs_run": self.epochs_run,
            "epochs_asked": self.epochs_asked,
        }

    def record(self, metrics: dict[str, Any], stage: str, log: Callable[[str], None] | None = None) -> None:
        """Write this result as ``metrics["utility"][stage]`` (the stage's release, e.g. "soft") and
        log its :meth:`message`."""
        metrics.setdefault("utility", {})[stage] = self.as_dict()
        if log is not None:
            log(self.message(stage))

    def message(self, stage: str) -> str:
        unit = "points" if self.measure == "accuracy" else f"points of {self.measure}"
        epoch = "the start, epoch 0" if self.epoch == 0 else f"epoch {self.epoch}"
        if self.feasible:
            return (f"{stage}: within the budget, {self.validation_loss:.1f} {unit} lost on validation "
                    f"(budget {self.budget:g}), {epoch}")
        stopped = gave_up(self.as_dict())
        return (f"{stage}: the budget of {budget_words(self.budget, self.measure)} CANNOT be met: the closest "
                f"point reached loses {points(self.validation_loss, self.budget)} points on validation ({epoch}). "
                f"More data, a larger budget ({self.option}) or a stronger layer would help"
                + (f" ({stopped})" if stopped else ""))


def budget_words(budget: float, measure: str = "accuracy") -> str:
    """A budget as words: ``"1 point"``, ``"2.5 points"``, ``"3 points of mAP@.5"``."""
    of = "" if measure == "accuracy" else f" of {measure}"
    return f"{budget:g} {'point' if budget == 1 else 'points'}{of}"


def points(value: float, budget: float | None = None) -> str:
    """``value`` points to one decimal, or to as many more (at most 3) as it takes not to read as
    the budget itself: a loss of 1.04 against a budget of 1 is ``"1.04"``, not ``"1.0"``."""
    digits = 1
    while budget is not None and digits < 3 and value != budget and round(value, digits) == round(budget, digits):
        digits += 1
    return f"{value:.{digits}f}"


def gave_up(record: Mapping[str, Any]) -> str:
    """``"it gave up after 22 of 80 epochs ..."`` for a stage that stopped early on an
    out-of-reach budget (``utility.patience``), else ``""``; ``record`` is
    :meth:`BudgetResult.as_dict`'s (also as read back from ``metrics.json``)."""
    run, asked = record.get("epochs_run"), record.get("epochs_asked")
    if not isinstance(run, int) or not isinstance(asked, int) or not 0 < run < asked:
        return ""
    return f"it gave up after {run} of {asked} epochs, none of the last ones closer: utility.patience"


def train_within_budget(
    parameters: Sequence[nn.Parameter],
    modules: Sequence[nn.Module],
    release: Release,
    objective: PrivacyObjective,
    budget: UtilityBudget | DetectionBudget,
    data: Sequence[Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    evaluate: Callable[[Tensor, Tensor], Tensor],
    progress: Progress | None = None,
    description: str = "training within the budget",
    rate: float = 0.05,
    supervised: Callable[[Tensor, Tensor], Tensor] | None = None,
    task_loss: Callable[[Tensor, Sequence[Tensor]], Tensor] | None = None,
    dual_every_step: bool = True,
    patience: int | None = None,
) -> tuple[dict[str, list[float]], BudgetResult]:
    """Minimise ``objective`` subject to ``budget`` by dual ascent on a multiplier.

    Args:
        parameters: what the stage trains (Adam).
        modules: the modules whose state is kept from the best epoch (``state_dict`` copies).
        release: ``(x, y) -> (h, dist)`` in training mode (reparameterised samples).
        objective: the privacy term and its adversary.
        budget: the constraint and its validation split.
        data: ``(x, y, ...)`` of the training part: ``(x, y)`` or ``(x, y, attribute)`` for
            classification; ``y`` is what ``release`` and the objective take as the class (labels,
            or a hard selection of box masks), the rest is the task loss's (see ``task_loss``).
        evaluate: ``(x, y) -> h`` as released at inference (eval mode), for the budget checks.
        rate: the dual step: ``log mu`` moves by ``rate`` per point of validation loss over budget.
        supervised: an extra utility loss ``(x, y) -> Tensor`` added to the task loss (e.g. the
            gated selection's cross-entropy on the labels).
        task_loss: ``(h, batch) -> Tensor``, the differentiable utility loss of the release
            (default: cross-entropy of ``budget.network(h)`` on ``batch[1]``).
        dual_every_step: update the multiplier after every step from a 1-draw check of the
            budget (cheap for accuracy); else once per epoch from the epoch's full check, by
            ``rate`` times the steps of the epoch (for a budget measured on the whole split at
            once, such as mAP).
        patience: give up after this many epochs in a row without an epoch within the budget
            and without one closer to it than any before (``None``: run every epoch). The kept
            weights are then the closest point's, as at the end. A stage that has met the budget
            always runs every epoch: its privacy can still improve (stopping a class-mean start
            on a plateau of its privacy term left the gains jittering at Adam's step size, +-0.03
            on x, and the decoder read it: SSIM 0.193 -> 0.242 on the digits).

    Returns:
        the per-epoch history (task loss, privacy term, multiplier, validation loss) and the
        :class:`BudgetResult`; the modules hold the kept epoch's weights.
    """
    optimiser = torch.optim.Adam(list(parameters), lr=lr)
    network = budget.network
    n = data[0].shape[0]
    log_mu, smoothed = 0.0, None
    history: dict[str, list[float]] = {}
    kept: tuple[float, int, list[dict[str, Tensor]]] | None = None  # (loss, epoch, states), feasible
    stale = 0  # epochs in a row, while infeasible, that came no closer (see ``patience``)

    def set_mode(train: bool) -> None:
        for module in modules:
            module.train(train)

    # the start is a candidate too (epoch 0): a stage that starts within the budget (e.g. a gate
    # started from N) never returns something that meets it less well
    set_mode(False)
    start = budget.loss(evaluate)
    states0 = [copy.deepcopy(m.state_dict()) for m in modules]
    closest = (start, 0, states0)
    if start <= budget.max_loss:
        kept = (start, 0, states0)
    with task(progress, description, epochs) as advance:
        for epoch in range(1, epochs + 1):
            sums: dict[str, float] = {}
            count = steps = 0
            set_mode(True)
            for index in shuffled_batches(torch.arange(n), batch_size, generator, min_batch=2):
                batch = [d[index] for d in data]
                x, y = batch[0], batch[1]
                attribute = batch[2] if objective.kind == "attribute" and len(batch) > 2 else None
                h, dist = release(x, y)
                utility = F.cross_entropy(network(h), y) if task_loss is None else task_loss(h, batch)
                if supervised is not None:
                    utility = utility + supervised(x, y)
                privacy, stats = objective.term(x, y, h, dist, attribute)
                mu = math.exp(log_mu)
                loss = (privacy + mu * utility) / (1.0 + mu)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                objective.adversary_step(x, y, h, attribute)
                steps += 1
                if dual_every_step:
                    # the dual player: the validation loss of this step (fresh noise, 1 draw), smoothed
                    set_mode(False)
                    step_loss = budget.loss(evaluate, draws=1)
                    set_mode(True)
                    smoothed = step_loss if smoothed is None else 0.7 * smoothed + 0.3 * step_loss
                    log_mu = _dual_step(log_mu, rate * (smoothed - budget.max_loss))
                weight = index.numel()
                count += weight
                for key, value in {"task_loss": float(utility.detach()), "privacy": float(privacy.detach()),
                                   **stats}.items():
                    sums[key] = sums.get(key, 0.0) + value * weight
            set_mode(False)
            checked = budget.loss(evaluate)
            if not dual_every_step:
                log_mu = _dual_step(log_mu, rate * steps * (checked - budget.max_loss))
            steps = 0
            for key, value in sums.items():
                history.setdefault(key, []).append(value / max(count, 1))
            history.setdefault("multiplier", []).append(math.exp(log_mu))
            history.setdefault("validation_loss", []).append(checked)
            states = [copy.deepcopy(m.state_dict()) for m in modules]
            if checked <= budget.max_loss:
                kept = (checked, epoch, states)
            stale = stale + 1 if kept is None and checked >= closest[0] else 0
            if checked < closest[0]:
                closest = (checked, epoch, states)
            advance(f"val loss={checked:.1f}pt mu={math.exp(log_mu):.3g} privacy={history['privacy'][-1]:.3f}")
            if patience is not None and stale >= patience:
                break  # the budget is out of reach: more epochs of the same would not reach it
    chosen = kept if kept is not None else closest
    for module, state in zip(modules, chosen[2], strict=True):
        module.load_state_dict(state)
    set_mode(False)
    result = BudgetResult(
        budget=budget.max_loss, feasible=kept is not None, validation_loss=chosen[0], epoch=chosen[1],
        multiplier=history.get("multiplier", []), validation=history.get("validation_loss", []),
        clean_validation=budget.clean, validation_images=int(budget.x.shape[0]),
        measure=budget.measure, option=budget.option, epochs_asked=epochs,
    )
    return history, result


def _dual_step(log_mu: float, step: float) -> float:
    # |log mu| <= 5: beyond e^5 the privacy term weighs less than 1% and a stage that starts far
    # over budget would spend most of its steps climbing back down
    return min(max(log_mu + step, -5.0), 5.0)
