"""Re-identification: picking the source image of each release out of a gallery of clean images.

The gallery is the clean test split. Every test image is released once (one fresh noisy sample
of ``obfuscate(x, y)``) and the attacker ranks the whole gallery for each release; the release
of test image ``i`` is re-identified at ``k`` when image ``i`` is among the ``k`` best-ranked.
Top-1 and top-5 are reported for two matchers:

- **decoder**: the nearest clean image (Euclidean) to the decoder attack's reconstruction of the
  release (:func:`~scl.attacks.decoder.decoder_attack`, ``test_reconstructions``);
- **embedding**: a learned :class:`EmbeddingMatcher`, a pair of encoders (one for releases, one
  for clean images) trained contrastively on the attacker split so that a release and its clean
  source land close together; the nearest clean embedding (cosine similarity) wins.

Each figure stands beside two references:

- the **label-only floor** (:func:`reidentification_floor`): class-conditional noise reveals
  the class by design, so an attacker can always pick ``k`` gallery images of the release's
  class; it succeeds with probability ``min(k, n_c) / n_c`` for a class of ``n_c`` gallery
  images;
- the **clean ceiling**: the nearest-neighbour matcher given the clean test image itself, which
  is 1.0 unless the gallery holds duplicates.

Ties always count against the attacker (see :func:`nearest_neighbour_ranks`), so a matcher that
sees nothing scores no better than chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scl.attacks._common import (
    Obfuscate,
    Split,
    as_feature_map,
    check_images,
    check_positive_float,
    check_positive_int,
    fit,
    holdout,
    resolve_device,
    seeded,
    unpack_split,
)
from scl.attacks.budget import AttackBudget, Attacker, attackers, get_budget
from scl.errors import ConfigError, DataError, LabelError, ShapeError
from scl.metrics import REID_CLEAN_TOP1, REID_CLEAN_TOP5, REID_FLOOR_TOP1, REID_FLOOR_TOP5, REID_TOP1, REID_TOP5
from scl.selection import check_labels

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = [
    "EmbeddingMatcher",
    "ReidentificationResult",
    "nearest_neighbour_ranks",
    "reidentification_attack",
    "reidentification_floor",
    "top_k",
]

#: The ``k`` of the second reported figure (``reid_*_top5``); capped at the gallery size.
TOP_K = 5


# -- metrics -----------------------------------------------------------------------------------


def reidentification_floor(labels: Tensor, k: int) -> float:
    """The label-only floor of top-``k`` re-identification.

    An attacker who knows only the class of a release picks ``k`` gallery images of that class
    at random; with ``n_c`` gallery images in class ``c`` it finds the source with probability
    ``min(k, n_c) / n_c``. The floor is that probability averaged over the gallery (the test
    split), so larger classes weigh in proportion to their size.

    Args:
        labels: ``Tensor[N]`` integer class labels of the gallery (>= 0).
        k: how many guesses (>= 1).

    Returns:
        The mean over the ``N`` samples of ``min(k, n_c) / n_c``, a fraction in (0, 1].

    Raises:
        LabelError: ``labels`` is not a non-empty 1-D tensor of non-negative integers.
        ConfigError: ``k`` is not a positive integer.

    """
    check_positive_int(k, "k")
    labels = _check_class_indices(labels, "labels")
    sizes = torch.bincount(labels).to(torch.float64)[labels]
    return float((sizes.clamp(max=k) / sizes).mean())


def nearest_neighbour_ranks(queries: Tensor, gallery: Tensor, *, batch_size: int = 512) -> Tensor:
    """Rank of each query's true match in the gallery, by Euclidean distance.

    Query ``i``'s true match is ``gallery[i]`` (so ``N <= M``; in the attack the queries are
    the ``N = M`` releases and the gallery the clean test images). Its rank is the number of
    gallery items at a distance smaller than **or equal to** that of the true match, less one
    for the match itself: ties count against the attacker, so a query at the same distance
    from every gallery item gets the worst rank ``M - 1``, never the best. Distances are
    computed in float64 and "equal" allows for float64 rounding only.

    For L2-normalised embeddings the Euclidean order is the cosine-similarity order.

    Args:
        queries: ``Tensor[N, D...]`` (flattened to ``Tensor[N, D]``), finite.
        gallery: ``Tensor[M, D...]`` with ``M >= N`` and the same number of features ``D``.
        batch_size: queries per distance computation (memory ``batch_size x M`` float64).

    Returns:
        ``Tensor[N]`` int64 ranks in ``[0, M)`` (0 = the true match is the nearest), on the
        device of ``queries`` (computed on the CPU for an MPS device, which lacks float64).

    Raises:
        ShapeError: the tensors are not ``Tensor[N, ...]`` / ``Tensor[M, ...]`` with the same
            number of features, or ``N > M``.
        DataError: a value is NaN or infinite.
        ConfigError: ``batch_size`` is not a positive integer.

    """
    check_positive_int(batch_size, "batch_size")
    q = _flat_vectors(queries, "queries")
    device = queries.device
    g = _flat_vectors(gallery, "gallery").to(q.device)
    if q.shape[0] > g.shape[0]:
        raise ShapeError(
            f"queries must not outnumber the gallery (query i's match is gallery[i]), but got "
            f"{q.shape[0]} queries and {g.shape[0]} gallery items"
        )
    if q.shape[1] != g.shape[1]:
        raise ShapeError(
            f"queries and gallery must have the same number of features, but got "
            f"{tuple(queries.shape)} ({q.shape[1]}) and {tuple(gallery.shape)} ({g.shape[1]})"
        )
    # Centring leaves distances unchanged and keeps the norms (hence the rounding) small.
    centre = g.mean(0, keepdim=True)
    q, g = q - centre, g - centre
    g_norm = g.square().sum(1)
    # Bound on the float64 rounding of ||q - g||^2 = |q|^2 + |g|^2 - 2 q.g, with a margin.
    slack = 8.0 * (q.shape[1] + 2) * torch.finfo(torch.float64).eps
    ranks = []
    for start in range(0, q.shape[0], batch_size):
        qb = q[start : start + batch_size]
        index = torch.arange(start, start + qb.shape[0], device=q.device)
        q_norm = qb.square().sum(1, keepdim=True)
        dist = q_norm + g_norm[None, :] - 2.0 * (qb @ g.T)  # Tensor[B, M]
        true = dist.gather(1, index[:, None])
        tolerance = slack * (2.0 * q_norm + g_norm[None, :] + g_norm[index][:, None])
        ranks.append((dist <= true + tolerance).sum(1) - 1)
    return torch.cat(ranks).long().to(device)


def top_k(ranks: Tensor, k: int) -> float:
    """Fraction of queries whose true match ranks among the ``k`` best (``rank < k``).

    Args:
        ranks: ``Tensor[N]`` integer ranks, as from :func:`nearest_neighbour_ranks`.
        k: how many guesses (>= 1).

    Returns:
        A fraction in [0, 1].

    """
    check_positive_int(k, "k")
    if not isinstance(ranks, Tensor):
        raise ShapeError(f"ranks must be a Tensor[N] of integer ranks, but got {type(ranks).__name__}")
    if ranks.dim() != 1 or ranks.numel() == 0:
        raise ShapeError(f"ranks must be a non-empty Tensor[N], but got shape {tuple(ranks.shape)}")
    if ranks.is_floating_point() or ranks.is_complex() or ranks.dtype == torch.bool:
        raise ShapeError(f"ranks must be integer ranks, but got dtype {ranks.dtype}")
    return float((ranks < k).double().mean())


def _check_class_indices(labels: Any, name: str) -> Tensor:
    if not isinstance(labels, Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise LabelError(f"{name} must be a tensor of class indices, but got {labels!r}") from exc
    integer = not (labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool)
    if integer and labels.dim() == 1 and bool((labels < 0).any()):
        index = int((labels < 0).nonzero()[0, 0])
        raise LabelError(
            f"{name} must be non-negative class indices, but got {int(labels[index])} at index {index}"
        )
    labels = check_labels(labels, torch.iinfo(torch.int64).max, name=name)
    if labels.numel() == 0:
        raise LabelError(f"{name} must hold at least 1 label, but got shape {tuple(labels.shape)}")
    return labels.cpu()


def _flat_vectors(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ShapeError(f"{name} must be a Tensor[N, D...], but got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ShapeError(f"{name} must be a non-empty Tensor[N, D...], but got shape {tuple(x.shape)}")
    if x.is_complex():
        raise ShapeError(f"{name} must be real, but got dtype {x.dtype}")
    x = x.detach()
    if x.device.type == "mps":  # no float64 there
        x = x.cpu()
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    if flat.shape[1] == 0:
        raise ShapeError(f"{name} must have at least 1 feature, but got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(flat).all()):
        raise DataError(f"{name} must be finite, but got NaN or infinite values")
    return flat


# -- the learned matcher -----------------------------------------------------------------------


class _Encoder(nn.Module):
    """``BatchNorm2d(in)`` -> convs ``in -> w -> w``, stride-2 ``w -> 2w``, ``2w -> 2w`` (3 x 3,
    or 1 x 1 when ``pointwise``; ReLU between) -> ``AdaptiveAvgPool2d(4)`` (``1`` when
    ``pointwise``) -> linear -> ``dim`` -> L2 normalisation."""

    def __init__(self, in_channels: int, width: int, dim: int, *, pointwise: bool = False) -> None:
        super().__init__()
        kernel, padding, pool = (1, 0, 1) if pointwise else (3, 1, 4)
        self.features = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, width, kernel, padding=padding), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, kernel, padding=padding), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, kernel, stride=2, padding=padding), nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, kernel, padding=padding), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
        )
        self.project = nn.Linear(2 * width * pool * pool, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.project(self.features(x)), dim=1)


class EmbeddingMatcher(nn.Module):
    """A pair of encoders that map a release and its clean source close together.

    Each encoder is ``BatchNorm2d(in)`` (so the matcher does not depend on the scale of its
    input) -> four 3 x 3 convolutions (``in -> width -> width``, a stride-2 ``width -> 2 width``,
    ``2 width -> 2 width``; ReLU between) -> ``AdaptiveAvgPool2d(4)`` (any input size) ->
    linear ``32 width -> dim`` -> L2 normalisation. The release encoder reads ``h`` as the
    attacks see it (``Tensor[N, C', H', W']``); the clean encoder reads images. A release that
    is a feature vector (``release_size == (1, 1)``, e.g. a linear layer's output) gets 1 x 1
    convolutions and no pooling instead, i.e. an MLP: a 3 x 3 kernel on a 1 x 1 map would use
    only its centre tap, initialised a third of the right scale at every layer.

    Trained with the symmetric InfoNCE (CLIP) loss :meth:`loss` over in-batch negatives, with a
    learnable temperature (initially ``temperature``, at least 0.01).

    Args:
        release_channels: channels ``C'`` of the release ``h``.
        image_channels: channels ``C`` of the clean images.
        release_size: spatial size ``(H', W')`` (or one int) of the releases, when known; only
            ``(1, 1)`` changes the release encoder (to an MLP). Any size is accepted at run time.
        width: hidden channels of each encoder.
        dim: embedding dimension ``D``.
        temperature: initial softmax temperature of the loss, in (0, 1].

    Shape:
        :meth:`release` (and ``forward``): ``Tensor[N, C', H', W'] -> Tensor[N, D]``;
        :meth:`clean`: ``Tensor[N, C, H, W] -> Tensor[N, D]``; rows have unit L2 norm.

    """

    def __init__(
        self,
        release_channels: int,
        image_channels: int,
        *,
        release_size: int | tuple[int, int] | None = None,
        width: int = 32,
        dim: int = 128,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        check_positive_int(release_channels, "release_channels")
        check_positive_int(image_channels, "image_channels")
        check_positive_int(width, "width")
        check_positive_int(dim, "dim")
        check_positive_float(temperature, "temperature")
        if temperature > 1:
            raise ConfigError(f"temperature must be in (0, 1], but got {temperature!r}")
        self.release_channels = release_channels
        self.image_channels = image_channels
        self.width = width
        self.dim = dim
        self.release_size = None if release_size is None else _size(release_size)
        pointwise = self.release_size == (1, 1)
        self.release_encoder = _Encoder(release_channels, width, dim, pointwise=pointwise)
        self.clean_encoder = _Encoder(image_channels, width, dim)
        #: log of the inverse temperature (the logit scale), learned; capped at 1 / 0.01.
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def release(self, h: Tensor) -> Tensor:
        """Embed releases: ``Tensor[N, C', H', W'] -> Tensor[N, D]``, unit norm."""
        _check_input(h, self.release_channels, "EmbeddingMatcher.release")
        return self.release_encoder(h)

    def clean(self, x: Tensor) -> Tensor:
        """Embed clean images: ``Tensor[N, C, H, W] -> Tensor[N, D]``, unit norm."""
        _check_input(x, self.image_channels, "EmbeddingMatcher.clean")
        return self.clean_encoder(x)

    def forward(self, h: Tensor) -> Tensor:
        """Same as :meth:`release`."""
        return self.release(h)

    @property
    def scale(self) -> Tensor:
        """The logit scale ``1 / temperature``, in [1, 100]."""
        return self.log_scale.clamp(0.0, math.log(100.0)).exp()

    def loss(self, release_embedding: Tensor, x: Tensor) -> Tensor:
        """Symmetric InfoNCE between releases and their sources, other pairs as negatives.

        Args:
            release_embedding: ``Tensor[B, D]``, :meth:`release` of the batch's releases.
            x: ``Tensor[B, C, H, W]``, the batch's clean images, row ``i`` the source of
                release ``i``.

        Returns:
            The mean of the release-to-image and image-to-release cross-entropies.

        """
        logits = self.scale * release_embedding @ self.clean(x).T  # Tensor[B, B]
        target = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    def extra_repr(self) -> str:
        return (f"release_channels={self.release_channels}, image_channels={self.image_channels}, "
                f"release_size={self.release_size}, width={self.width}, dim={self.dim}")


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair)):
        raise ShapeError(f"release_size must be an int or (H, W) of positive ints, but got {size!r}")
    return (pair[0], pair[1])


def _check_input(x: Tensor, channels: int, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ShapeError(f"{name} expects Tensor[N, {channels}, H, W], but got {shape}")


# -- the attack --------------------------------------------------------------------------------


@dataclass
class ReidentificationResult:
    """Outcome of :func:`reidentification_attack`.

    Attributes:
        metrics: fractions in [0, 1]: ``reid_top1``/``reid_top5`` (the best matcher),
            ``reid_embedding_top1``/``_top5``, ``reid_decoder_top1``/``_top5`` (with
            reconstructions only), ``reid_floor_top1``/``_top5`` (label-only floor) and
            ``reid_clean_top1``/``_top5`` (clean ceiling).
        matcher: the trained :class:`EmbeddingMatcher` with the best test top-1 (eval mode).
        attacker: which matcher gave the embedding scores, e.g. ``"plain matcher, width 32"``.

    """

    metrics: dict[str, float]
    matcher: EmbeddingMatcher | None = field(default=None, repr=False)
    attacker: str = ""


def reidentification_attack(
    obfuscate: Obfuscate,
    attacker: Split,
    test: Split,
    *,
    num_classes: int,
    budget: str | AttackBudget = "standard",
    reconstructions: Tensor | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> ReidentificationResult:
    """Re-identify each test image from its release, against a gallery of the clean test images.

    The embedding matcher: for each of the budget's nested embedding attackers
    (``attackers(budget, "embedding")``, weakest first), an :class:`EmbeddingMatcher` is
    trained (Adam, symmetric InfoNCE over in-batch negatives) on ``(obfuscate(x, y), x)``
    pairs of the attacker split, calling ``obfuscate`` (under ``torch.no_grad()``) for every
    batch of every epoch so each epoch sees fresh noise, and early-stopped on a validation
    part of that split. Every test image is then released once, and its source ranked among
    the clean test images by cosine similarity of the embeddings. The best top-``k`` over the
    budget's matchers is reported, so a stronger budget never scores lower.

    The decoder matcher (when ``reconstructions`` is given): the source of each release is
    ranked among the clean test images by Euclidean distance to the decoder's reconstruction.

    References: the label-only floor (:func:`reidentification_floor` of the test labels) and the
    clean ceiling (the nearest-neighbour matcher with the clean test image itself as the query:
    1.0 unless the test split holds duplicate images). Ties count against the attacker.

    Args:
        obfuscate: ``h = obfuscate(x, y)``, as for :func:`~scl.attacks.decoder.decoder_attack`;
            ``h`` may have any channel count and spatial size (``Tensor[B, ...]`` that is not
            4-D is read as ``Tensor[B, F, 1, 1]``).
        attacker: the attacker's split, ``(x, y)`` or an object with ``.x`` and ``.y``:
            ``x`` ``Tensor[N, C, H, W]`` in [0, 1], ``y`` ``Tensor[N]`` in ``[0, num_classes)``.
        test: the gallery and the released images, same form and image shape, disjoint from
            ``attacker``.
        num_classes: number of classes (validates the labels).
        budget: ``"quick"``, ``"standard"`` or ``"strong"`` (:mod:`scl.attacks.budget`), or an
            :class:`~scl.attacks.budget.AttackBudget`: its embedding attackers' widths, epochs
            and patience, and the validation fraction.
        reconstructions: ``Tensor[N_test, C, H, W]``, the decoder's reconstruction of each test
            release in test order (e.g. ``DecoderAttackResult.test_reconstructions``); adds
            the decoder matcher.
        batch_size: training batch size (>= 2), which is also the number of in-batch
            candidates of the contrastive loss.
        lr: Adam learning rate.
        seed: seeds initialisation, shuffling and anything the obfuscator draws from torch's
            global RNG; the caller's global RNG state is restored afterwards.
        device: where the matcher runs and where batches are sent before ``obfuscate`` is
            called; default: the device of the attacker's ``x``.
        progress: an optional ``rich.progress.Progress``; one task per matcher trained.

    Returns:
        :class:`ReidentificationResult` whose ``metrics`` hold ``reid_top1``, ``reid_top5``
        (the max over the matchers run), ``reid_embedding_top1``, ``reid_embedding_top5``,
        ``reid_decoder_top1``, ``reid_decoder_top5`` (only with ``reconstructions``),
        ``reid_floor_top1``, ``reid_floor_top5``, ``reid_clean_top1``, ``reid_clean_top5``.
        "top5" uses ``k = min(5, N_test)``.

    Raises:
        ShapeError, LabelError, DataError, ConfigError: on invalid splits, outputs or options.

    """
    check_positive_int(num_classes, "num_classes")
    check_positive_int(batch_size, "batch_size", minimum=2)
    check_positive_float(lr, "lr")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, but got {seed!r}")
    chosen = get_budget(budget)
    specs = attackers(chosen, "embedding")
    for spec in specs:
        if spec.architecture != "plain":
            raise ConfigError(
                f"embedding architecture must be 'plain', but got {spec.architecture!r}"
            )
    xa, ya = _split_images(attacker, "attacker", num_classes)
    xt, yt = _split_images(test, "test", num_classes)
    if xa.shape[0] < 2:
        raise ShapeError(f"attacker must hold at least 2 images, but got {xa.shape[0]}")
    if xa.shape[1:] != xt.shape[1:]:
        raise ShapeError(
            f"attacker and test images must have the same [C, H, W], but got "
            f"{tuple(xa.shape[1:])} and {tuple(xt.shape[1:])}"
        )
    if reconstructions is not None:
        reconstructions = check_images(reconstructions, "reconstructions")
        if reconstructions.shape != xt.shape:
            raise ShapeError(
                f"reconstructions must be Tensor[N_test, C, H, W] = {tuple(xt.shape)} (one per "
                f"test image, in test order), but got shape {tuple(reconstructions.shape)}"
            )
    dev = resolve_device(device, xa)
    k = min(TOP_K, xt.shape[0])
    gallery = xt.detach().float().cpu()

    best_top1, best_top5, matcher, name = _embedding_matchers(
        obfuscate, xa, ya, xt, yt, specs=specs, fraction=chosen.validation_fraction, k=k,
        batch_size=batch_size, lr=lr, seed=seed, device=dev, progress=progress,
    )
    metrics = {"reid_embedding_top1": best_top1, "reid_embedding_top5": best_top5}
    if reconstructions is not None:
        ranks = nearest_neighbour_ranks(reconstructions.detach().float().cpu(), gallery)
        metrics["reid_decoder_top1"] = top_k(ranks, 1)
        metrics["reid_decoder_top5"] = top_k(ranks, k)
    metrics[REID_TOP1] = max(v for key, v in metrics.items() if key.endswith("_top1"))
    metrics[REID_TOP5] = max(v for key, v in metrics.items() if key.endswith("_top5"))
    metrics[REID_FLOOR_TOP1] = reidentification_floor(yt, 1)
    metrics[REID_FLOOR_TOP5] = reidentification_floor(yt, k)
    clean = nearest_neighbour_ranks(gallery, gallery)
    metrics[REID_CLEAN_TOP1] = top_k(clean, 1)
    metrics[REID_CLEAN_TOP5] = top_k(clean, k)
    return ReidentificationResult(metrics=metrics, matcher=matcher, attacker=name)


def _split_images(split: Split, name: str, num_classes: int) -> tuple[Tensor, Tensor]:
    x, y, _ = unpack_split(split, name)
    x = check_images(x, f"{name}.x")
    y = check_labels(y, num_classes, x.shape[0], name=f"{name}.y")
    return x, y


def _embedding_matchers(
    obfuscate: Obfuscate,
    xa: Tensor,
    ya: Tensor,
    xt: Tensor,
    yt: Tensor,
    *,
    specs: list[Attacker],
    fraction: float,
    k: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    progress: Progress | None,
) -> tuple[float, float, EmbeddingMatcher, str]:
    """Train one :class:`EmbeddingMatcher` per spec; the best top-1 and top-``k`` over them.

    The matchers train one after another from the same seeded streams, so the first ``j``
    matchers of a budget are exactly those of the budget with ``j`` attackers; each is scored
    on the same test releases (drawn in a fork of the RNG seeded with ``seed + 1``).
    """
    generator = torch.Generator().manual_seed(seed)
    train_index, validation = holdout(xa.shape[0], fraction, generator)
    eval_batch = 4 * batch_size
    xt_d, yt_d = xt.to(device), yt.to(device)
    best: tuple[float, float, EmbeddingMatcher, Attacker] | None = None
    top5 = 0.0
    with seeded(seed, device):

        @torch.no_grad()
        def release(x: Tensor, y: Tensor) -> Tensor:
            return as_feature_map(obfuscate(x, y), x.shape[0]).to(device)

        probe = release(xa[:2].to(device), ya[:2].to(device))

        def make_batch(index: Tensor) -> tuple[Tensor, Tensor]:
            xb, yb = xa[index].to(device), ya[index].to(device)
            return release(xb, yb), xb

        for spec in specs:
            matcher = EmbeddingMatcher(
                probe.shape[1], xa.shape[1], release_size=(probe.shape[2], probe.shape[3]),
                width=spec.width,
            ).to(device)
            fit(matcher, make_batch, train_index, loss_fn=matcher.loss, epochs=spec.epochs,
                batch_size=batch_size, lr=lr, generator=generator, progress=progress,
                description=f"re-identification matcher ({spec.architecture} {spec.width})",
                validation=validation, patience=spec.patience if validation is not None else None,
                bfloat16=spec.bfloat16)
            with torch.no_grad(), seeded(seed + 1, device):
                queries = torch.cat([
                    matcher.release(release(xt_d[i : i + eval_batch], yt_d[i : i + eval_batch]))
                    for i in range(0, xt.shape[0], eval_batch)
                ])
                keys = torch.cat([
                    matcher.clean(xt_d[i : i + eval_batch]) for i in range(0, xt.shape[0], eval_batch)
                ])
            ranks = nearest_neighbour_ranks(queries, keys)
            score1, score5 = top_k(ranks, 1), top_k(ranks, k)
            top5 = max(top5, score5)
            if best is None or (score1, score5) > (best[0], best[1]):
                best = (score1, score5, matcher, spec)
    if best is None:
        raise ConfigError("the attack budget holds no embedding attacker")
    top1, _, matcher, spec = best
    return top1, top5, matcher, f"{spec.architecture} matcher, width {spec.width}"
