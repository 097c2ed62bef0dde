"""Learned-decoder inversion: how much of each image can an attacker rebuild from ``h``.

The attacker holds a split of (image, label) pairs and query access to the obfuscator. It
trains a decoder ``h -> x`` on ``(obfuscate(x, y), x)`` pairs, with fresh noise every batch of
every epoch, and is scored on a disjoint test split by SSIM and PSNR. The number only means
something beside two references computed by the SAME decoder architecture and training:

- the label-only floor: the decoder sees only the one-hot label. Class-conditional noise
  reveals the class by design, so the best an obfuscator can hope for is to leak nothing
  beyond it; this decoder learns the class-conditional mean image.
- the clean ceiling: the decoder sees the clean image (identity obfuscator).

An obfuscated-input score near the floor means the noise hides the image; near the ceiling
means it hides nothing. Averaging ``k`` noisy copies of each test input before decoding
(``decoder_ssim_avg8``) tests whether the noise is simply averaged away.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

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
    one_hot_maps,
    predict,
    resolve_device,
    seeded,
    unpack_split,
)
from scl.attacks.budget import AttackBudget, Attacker, attackers, get_budget
from scl.attacks.metrics import luma, psnr, ssim
from scl.errors import ConfigError, ShapeError
from scl.metrics import CEILING_SUFFIX, DECODER_PSNR, DECODER_SSIM, DECODER_SSIM_LUMA, FLOOR_SUFFIX, averaged, floor_of
from scl.selection import check_labels

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = [
    "Decoder",
    "DecoderAttackResult",
    "DecoderAttackReport",
    "UNetDecoder",
    "build_decoder",
    "clean_ceiling_attack",
    "decoder_attack",
    "label_floor_attack",
    "run_decoder_attacks",
]

#: Number of test images whose reconstructions are returned for figures.
NUM_FIGURE_IMAGES = 8


class Decoder(nn.Module):
    """The fixed inversion decoder shared by every variant of the attack.

    ``BatchNorm2d(in)`` (so the attack does not depend on the scale of ``h``) -> bilinear
    resize to ``out_size`` when ``h`` has another spatial size -> two coordinate channels
    appended (y and x in [-1, 1]) -> four 3 x 3 convolutions (``in + 2 -> width -> width ->
    width -> out``, padding 1, ReLU between), linear (clamped to [0, 1] in eval mode).

    The coordinate channels matter for inputs that carry no position, such as the label-only
    floor's constant one-hot maps: without them a convolution turns a constant input into a
    (nearly) constant image and the floor would be artificially low; with them the decoder can
    learn each class's mean image, the best reconstruction from the label alone.

    Args:
        in_channels: channels ``C'`` of ``h``.
        out_channels: channels ``C`` of the image to rebuild.
        out_size: ``(H, W)`` (or one int for square images) of the image to rebuild.
        width: hidden channels (32; wider decoders are stronger attackers but cost more).

    Shape:
        ``Tensor[N, C', H', W'] -> Tensor[N, C, H, W]``, in [0, 1] in eval mode.

    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        out_size: int | tuple[int, int],
        *,
        width: int = 32,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        check_positive_int(width, "width")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.out_size = _size(out_size)
        self.width = width
        self.norm = nn.BatchNorm2d(in_channels)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels + 2, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, 3, padding=1),
        )

    def forward(self, h: Tensor) -> Tensor:
        _check_input(h, self.in_channels, type(self).__name__)
        return _output(self.body(_with_coordinates(self.norm(h), self.out_size)), self.training)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"out_size={self.out_size}, width={self.width}")


class UNetDecoder(nn.Module):
    """An encoder-decoder over two scales with a skip connection: the stronger budgets' decoder.

    ``BatchNorm2d(in)`` -> bilinear resize to ``out_size`` -> two coordinate channels (as in
    :class:`Decoder`) -> two 3 x 3 convolutions at full resolution (``width``) -> a stride-2
    convolution and another 3 x 3 at half resolution (``2 * width``) -> bilinear upsampling,
    concatenated with the full-resolution features (the skip) -> two 3 x 3 convolutions ->
    a 3 x 3 convolution to ``out``, linear (clamped to [0, 1] in eval mode). ReLU between
    convolutions.

    Args:
        in_channels: channels ``C'`` of ``h``.
        out_channels: channels ``C`` of the image to rebuild.
        out_size: ``(H, W)`` (or one int for square images) of the image to rebuild.
        width: hidden channels at full resolution.

    Shape:
        ``Tensor[N, C', H', W'] -> Tensor[N, C, H, W]``, in [0, 1] in eval mode.

    """

    def __init__(self, in_channels: int, out_channels: int, out_size: int | tuple[int, int], *,
                 width: int = 64) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        check_positive_int(width, "width")
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, width
        self.out_size = _size(out_size)
        self.norm = nn.BatchNorm2d(in_channels)
        self.encode = nn.Sequential(
            nn.Conv2d(in_channels + 2, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.down = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.decode = nn.Sequential(
            nn.Conv2d(3 * width, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, 3, padding=1),
        )

    def forward(self, h: Tensor) -> Tensor:
        _check_input(h, self.in_channels, type(self).__name__)
        z = _with_coordinates(self.norm(h), self.out_size)
        full = self.encode(z)
        half = F.interpolate(self.down(full), size=self.out_size, mode="bilinear", align_corners=False)
        return _output(self.decode(torch.cat([full, half], 1)), self.training)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"out_size={self.out_size}, width={self.width}")


def _output(z: Tensor, training: bool) -> Tensor:
    """The decoders' linear output, clamped to [0, 1] in eval mode.

    Not a sigmoid: on mostly dark images a sigmoid decoder sits for many epochs on the plateau
    of predicting the mean pixel (measured: SSIM 0.49 against 0.72 for this output at noise
    0.2 on the digits), and an early-stopped attacker then stops there. Clamping only in eval
    mode keeps the gradient of pixels predicted outside [0, 1] while training.
    """
    return z if training else z.clamp(0.0, 1.0)


def _size(out_size: int | tuple[int, int]) -> tuple[int, int]:
    size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ShapeError(f"out_size must be an int or (H, W) of positive ints, but got {out_size!r}")
    return (size[0], size[1])


def _check_input(h: Tensor, in_channels: int, name: str) -> None:
    if h.dim() != 4 or h.shape[1] != in_channels:
        raise ShapeError(f"{name} expects Tensor[N, {in_channels}, H', W'], but got shape {tuple(h.shape)}")


def _with_coordinates(z: Tensor, out_size: tuple[int, int]) -> Tensor:
    """``z`` resized to ``out_size`` with two coordinate channels (y and x in [-1, 1]) appended."""
    if tuple(z.shape[-2:]) != out_size:
        z = F.interpolate(z, size=out_size, mode="bilinear", align_corners=False)
    ys = torch.linspace(-1.0, 1.0, out_size[0], device=z.device, dtype=z.dtype)
    xs = torch.linspace(-1.0, 1.0, out_size[1], device=z.device, dtype=z.dtype)
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).expand(z.shape[0], -1, -1, -1)
    return torch.cat([z, coords], 1)


def build_decoder(attacker: Attacker, in_channels: int, out_channels: int, out_size: tuple[int, int]) -> nn.Module:
    """The decoder an :class:`~scl.attacks.budget.Attacker` describes."""
    if attacker.architecture == "unet":
        return UNetDecoder(in_channels, out_channels, out_size, width=attacker.width)
    if attacker.architecture == "plain":
        return Decoder(in_channels, out_channels, out_size, width=attacker.width)
    raise ConfigError(f"decoder architecture must be 'plain' or 'unet', but got {attacker.architecture!r}")


@dataclass
class DecoderAttackResult:
    """Outcome of one decoder attack.

    Attributes:
        metrics: ``decoder_ssim``/``decoder_psnr`` and ``decoder_ssim_avg{k}``/
            ``decoder_psnr_avg{k}`` (``k = averaged_copies``) for :func:`decoder_attack`;
            ``decoder_ssim_label_floor``/``decoder_psnr_label_floor`` for
            :func:`label_floor_attack`; ``decoder_ssim_clean``/``decoder_psnr_clean`` for
            :func:`clean_ceiling_attack`.
        reconstructions: ``Tensor[k, C, H, W]`` on the CPU, the decoded first
            ``k = min(8, N_test)`` test images (from one noisy sample each).
        reconstructions_avg: same, decoded from the average of ``averaged_copies`` noisy
            copies; ``None`` for the floor and ceiling.
        decoder: the trained decoder (eval mode): the best of the budget's decoders.
        test_reconstructions: ``Tensor[N_test, C, H, W]`` on the CPU, every test image decoded
            from one noisy sample (what re-identification by nearest neighbour matches).
        attacker: which decoder gave the reported scores, e.g. ``"unet decoder, width 64"``.

    """

    metrics: dict[str, float]
    reconstructions: Tensor
    reconstructions_avg: Tensor | None = None
    decoder: nn.Module | None = field(default=None, repr=False)
    test_reconstructions: Tensor | None = field(default=None, repr=False)
    attacker: str = ""


@dataclass
class DecoderAttackReport:
    """Outcome of :func:`run_decoder_attacks`.

    Attributes:
        metrics: ``decoder_ssim``, ``decoder_psnr``, ``decoder_ssim_avg8``,
            ``decoder_psnr_avg8`` (the 8 is ``averaged_copies``), ``decoder_ssim_label_floor``,
            ``decoder_psnr_label_floor``, ``decoder_ssim_clean``, ``decoder_psnr_clean``.
        reconstructions: ``Tensor[k, C, H, W]`` CPU tensors for figures, ``k = min(8, N_test)``:
            ``"original"`` (the test images), ``"obfuscated"`` (one sample of ``h``,
            ``Tensor[k, C', H', W']``, as the attacks read it), ``"decoder"``,
            ``"decoder_avg"``, ``"label_floor"``, ``"clean"``.

    """

    metrics: dict[str, float]
    reconstructions: dict[str, Tensor]


def _split_images(split: Split, name: str, num_classes: int) -> tuple[Tensor, Tensor]:
    x, y, _ = unpack_split(split, name)
    x = check_images(x, f"{name}.x")
    y = check_labels(y, num_classes, x.shape[0], name=f"{name}.y")
    return x, y


def _check_common(
    attacker: Split, test: Split, num_classes: int, epochs: int, batch_size: int, lr: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    check_positive_int(num_classes, "num_classes")
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size", minimum=2)
    check_positive_float(lr, "lr")
    xa, ya = _split_images(attacker, "attacker", num_classes)
    xt, yt = _split_images(test, "test", num_classes)
    if xa.shape[0] < 2:
        raise ShapeError(f"attacker must hold at least 2 images, but got {xa.shape[0]}")
    if xa.shape[1:] != xt.shape[1:]:
        raise ShapeError(
            f"attacker and test images must have the same [C, H, W], but got "
            f"{tuple(xa.shape[1:])} and {tuple(xt.shape[1:])}"
        )
    return xa, ya, xt, yt


def _attackers(
    budget: str | AttackBudget | None, epochs: int, width: int
) -> tuple[list[Attacker], float | None]:
    """The decoders to train and the validation fraction: the budget's nested attackers with
    early stopping, or (``budget=None``) one plain decoder of ``width`` for ``epochs`` epochs."""
    if budget is None:
        return [Attacker("plain", width, epochs, 0)], None
    chosen = get_budget(budget)
    return attackers(chosen), chosen.validation_fraction


def _train_and_score(
    features: Obfuscate,
    xa: Tensor,
    ya: Tensor,
    xt: Tensor,
    yt: Tensor,
    *,
    suffix: str,
    averaged_copies: int | None,
    budget: str | AttackBudget | None,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    width: int,
    device: torch.device,
    progress: Progress | None,
) -> DecoderAttackResult:
    """Train the decoders of ``budget`` on ``features(x, y) -> x``; score the best on the test split.

    Each decoder trains on the attacker split (less its validation part, on which it is
    early-stopped) and decodes the test split; the one with the highest test SSIM is reported,
    so a budget's score is the worst case over its attackers.
    """
    specs, fraction = _attackers(budget, epochs, width)
    generator = torch.Generator().manual_seed(seed)
    target = xt.detach().float().cpu()
    with seeded(seed, device):

        @torch.no_grad()
        def inputs(x: Tensor, y: Tensor) -> Tensor:
            return as_feature_map(features(x, y), x.shape[0]).to(device)

        probe = inputs(xa[:2].to(device), ya[:2].to(device))

        def make_batch(index: Tensor) -> tuple[Tensor, Tensor]:
            xb, yb = xa[index].to(device), ya[index].to(device)
            return inputs(xb, yb), xb

        if fraction is None:
            train_index, validation = torch.arange(xa.shape[0]), None
        else:
            train_index, validation = holdout(xa.shape[0], fraction, generator)
        eval_batch = 4 * batch_size
        xt_d, yt_d = xt.to(device), yt.to(device)
        best: tuple[float, nn.Module, Tensor, Attacker] | None = None
        for spec in specs:
            name = f"decoder attack{suffix.replace('_', ' ')} ({spec.architecture} {spec.width})"
            decoder = build_decoder(spec, probe.shape[1], xa.shape[1], (xa.shape[2], xa.shape[3])).to(device)
            spec_batch = spec.batch_size or batch_size
            best_epochs = fit(decoder, make_batch, train_index, loss_fn=F.mse_loss, epochs=spec.epochs,
                              batch_size=spec_batch, lr=lr, generator=generator, progress=progress,
                              description=name, validation=validation,
                              patience=spec.patience if validation is not None else None, cosine=spec.cosine,
                              bfloat16=spec.bfloat16)
            if spec.refit and validation is not None:
                # the epoch count found on the validation part, then all of the attacker's data
                decoder = build_decoder(spec, probe.shape[1], xa.shape[1], (xa.shape[2], xa.shape[3])).to(device)
                fit(decoder, make_batch, xa.shape[0], loss_fn=F.mse_loss, epochs=best_epochs, batch_size=spec_batch,
                    lr=lr, generator=generator, progress=progress, description=f"{name}, refit on all",
                    cosine=spec.cosine, bfloat16=spec.bfloat16)
            decoded = predict(decoder, lambda i: inputs(xt_d[i], yt_d[i]), xt.shape[0], eval_batch).cpu()
            score = ssim(decoded, target)
            if best is None or score > best[0]:
                best = (score, decoder, decoded, spec)
        if best is None:
            raise ConfigError("the attack budget holds no decoder")
        score, decoder, decoded, spec = best
        metrics = {
            DECODER_SSIM + suffix: score,
            DECODER_PSNR + suffix: psnr(decoded, target),
            DECODER_SSIM_LUMA + suffix: ssim(luma(decoded), luma(target)),
        }
        decoded_avg = None
        if averaged_copies is not None:

            def copies_averaged(i: Tensor) -> Tensor:
                xb, yb = xt_d[i], yt_d[i]
                total = inputs(xb, yb)
                for _ in range(averaged_copies - 1):
                    total = total + inputs(xb, yb)
                return total / averaged_copies

            decoded_avg = predict(decoder, copies_averaged, xt.shape[0], eval_batch).cpu()
            metrics[averaged(DECODER_SSIM + suffix, averaged_copies)] = ssim(decoded_avg, target)
            metrics[averaged(DECODER_PSNR + suffix, averaged_copies)] = psnr(decoded_avg, target)
    k = min(NUM_FIGURE_IMAGES, xt.shape[0])
    return DecoderAttackResult(
        metrics=metrics,
        reconstructions=decoded[:k].clone(),
        reconstructions_avg=None if decoded_avg is None else decoded_avg[:k].clone(),
        decoder=decoder,
        test_reconstructions=decoded,
        attacker=f"{spec.architecture} decoder, width {spec.width}",
    )


def decoder_attack(
    obfuscate: Obfuscate,
    attacker: Split,
    test: Split,
    *,
    num_classes: int,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    averaged_copies: int = 8,
    seed: int = 0,
    width: int = 32,
    budget: str | AttackBudget | None = None,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> DecoderAttackResult:
    """Invert ``obfuscate`` with a learned :class:`Decoder`.

    Trains the decoder (Adam, MSE) on ``(obfuscate(x, y), x)`` pairs of the attacker split,
    calling ``obfuscate`` (under ``torch.no_grad()``) for every batch of every epoch so each
    epoch sees fresh noise; scores it on the test split only.

    Args:
        obfuscate: ``h = obfuscate(x, y)``; ``x`` is ``Tensor[B, C, H, W]`` in [0, 1], ``y`` is
            ``Tensor[B]`` int64, both on ``device``; ``h`` is a fresh noisy sample,
            ``Tensor[B, C', H', W']`` (any channels and spatial size; other shapes
            ``Tensor[B, ...]`` are read as ``Tensor[B, F, 1, 1]``).
        attacker: the attacker's split, ``(x, y)`` or an object with ``.x`` and ``.y``:
            ``x`` ``Tensor[N, C, H, W]`` in [0, 1], ``y`` ``Tensor[N]`` in
            ``[0, num_classes)``.
        test: the evaluation split, same form and image shape, disjoint from ``attacker``.
        num_classes: number of classes (validates the labels).
        epochs: passes over the attacker split (used when ``budget`` is ``None``).
        batch_size: training batch size (>= 2).
        lr: Adam learning rate.
        averaged_copies: ``k`` noisy copies of each test input averaged before decoding for
            the ``_avg{k}`` scores.
        width: hidden channels of the :class:`Decoder` (used when ``budget`` is ``None``).
        budget: ``"quick"``, ``"standard"`` or ``"strong"`` (:mod:`scl.attacks.budget`): the
            budget's nested decoders, each early-stopped on a validation part of the attacker
            split, the best on the test split reported. ``None``: one :class:`Decoder` of
            ``width`` trained for ``epochs`` on the whole attacker split.
        seed: seeds decoder initialisation, shuffling and anything the obfuscator draws from
            torch's global RNG; the caller's global RNG state is restored afterwards.
        device: where the decoder runs and where batches are sent before ``obfuscate`` is
            called; default: the device of the attacker's ``x``.
        progress: an optional ``rich.progress.Progress``; one task (total = epochs) is added.

    Returns:
        :class:`DecoderAttackResult` with metrics ``decoder_ssim``, ``decoder_psnr``,
        ``decoder_ssim_avg{k}``, ``decoder_psnr_avg{k}`` (``k = averaged_copies``, so
        ``_avg8`` by default) and the first 8 test reconstructions.

    Raises:
        ShapeError, LabelError, DataError, ConfigError: on invalid splits, outputs or options.

    """
    xa, ya, xt, yt = _check_common(attacker, test, num_classes, epochs, batch_size, lr)
    check_positive_int(averaged_copies, "averaged_copies")
    return _train_and_score(
        obfuscate, xa, ya, xt, yt, suffix="", averaged_copies=averaged_copies,
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        width=width, budget=budget, device=resolve_device(device, xa), progress=progress,
    )


def label_floor_attack(
    attacker: Split,
    test: Split,
    *,
    num_classes: int,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    width: int = 32,
    budget: str | AttackBudget | None = None,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> DecoderAttackResult:
    """The label-only floor: the budget's weakest decoder given only the class of each image,
    and each class's mean image.

    The decoder input is the one-hot label as ``num_classes`` constant maps of the image size,
    ``Tensor[N, num_classes, H, W]``; everything else is as in :func:`decoder_attack`. The
    decoder can at best learn the class-conditional mean image, which is what any
    class-conditional obfuscator reveals by design. That mean image (of the attacker split) is
    also scored directly, and the floor is the better of the two label-only reconstructions.

    Returns:
        :class:`DecoderAttackResult` with metrics ``decoder_ssim_label_floor`` and
        ``decoder_psnr_label_floor`` (the floor), ``decoder_ssim_label_decoder`` /
        ``decoder_psnr_label_decoder`` (the learned decoder alone) and ``ssim_class_mean`` /
        ``psnr_class_mean`` (the class-mean image alone).

    """
    xa, ya, xt, yt = _check_common(attacker, test, num_classes, epochs, batch_size, lr)
    size = (xa.shape[2], xa.shape[3])

    def labels_only(x: Tensor, y: Tensor) -> Tensor:
        return one_hot_maps(y, num_classes, size).to(x.device)

    # Only the budget's weakest decoder learns from the label: the MSE-optimal label-only
    # reconstruction is each class's mean image, scored in closed form below, and a larger decoder
    # only creeps towards it (on the digits the standard budget's encoder-decoder reached SSIM
    # 0.075 against the class mean's 0.216, for 16 s of the demo's attack time).
    if budget is not None:
        chosen = get_budget(budget)
        budget = replace(chosen, decoders=chosen.decoders[:1])
    result = _train_and_score(
        labels_only, xa, ya, xt, yt, suffix=FLOOR_SUFFIX, averaged_copies=None,
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        width=width, budget=budget, device=resolve_device(device, xa), progress=progress,
    )
    # The MSE-optimal label-only reconstruction is each class's mean image; a decoder trained
    # for a few epochs may not reach it, so the floor is the better of the two (both are
    # label-only), and each is also reported on its own.
    means = torch.zeros(num_classes, *xa.shape[1:])
    for c in range(num_classes):  # C small means, once per attack (not a layer's hot path)
        members = xa[ya == c]
        means[c] = members.float().mean(0).cpu() if members.shape[0] else xa.float().mean(0).cpu()
    target = xt.detach().float().cpu()
    class_mean = means[yt.cpu()]
    learned = dict(result.metrics)
    metrics = {
        "decoder_ssim_label_decoder": learned[floor_of(DECODER_SSIM)],
        "decoder_psnr_label_decoder": learned[floor_of(DECODER_PSNR)],
        "ssim_class_mean": ssim(class_mean, target),
        "psnr_class_mean": psnr(class_mean, target),
    }
    metrics[floor_of(DECODER_SSIM)] = max(metrics["decoder_ssim_label_decoder"], metrics["ssim_class_mean"])
    metrics["ssim_luma_class_mean"] = ssim(luma(class_mean), luma(target))
    metrics[floor_of(DECODER_SSIM_LUMA)] = max(learned[floor_of(DECODER_SSIM_LUMA)], metrics["ssim_luma_class_mean"])
    metrics[floor_of(DECODER_PSNR)] = max(metrics["decoder_psnr_label_decoder"], metrics["psnr_class_mean"])
    result.metrics = metrics
    return result


def clean_ceiling_attack(
    attacker: Split,
    test: Split,
    *,
    num_classes: int,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    width: int = 32,
    budget: str | AttackBudget | None = None,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> DecoderAttackResult:
    """The clean ceiling: the same decoder given the clean image (identity obfuscator).

    Returns:
        :class:`DecoderAttackResult` with metrics ``decoder_ssim_clean`` and
        ``decoder_psnr_clean``.

    """
    xa, ya, xt, yt = _check_common(attacker, test, num_classes, epochs, batch_size, lr)
    return _train_and_score(
        _identity, xa, ya, xt, yt, suffix=CEILING_SUFFIX, averaged_copies=None,
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        width=width, budget=budget, device=resolve_device(device, xa), progress=progress,
    )


def run_decoder_attacks(
    obfuscate: Obfuscate,
    attacker: Split,
    test: Split,
    *,
    num_classes: int,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    averaged_copies: int = 8,
    seed: int = 0,
    width: int = 32,
    budget: str | AttackBudget | None = None,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> DecoderAttackReport:
    """Decoder attack on ``obfuscate`` beside its label-only floor and clean ceiling.

    Runs :func:`decoder_attack`, :func:`label_floor_attack` and :func:`clean_ceiling_attack`
    with the same architecture, data, budget and seed (arguments as in
    :func:`decoder_attack`).

    Returns:
        :class:`DecoderAttackReport`: ``.metrics`` (a ``dict[str, float]`` with
        ``decoder_ssim``, ``decoder_psnr``, ``decoder_ssim_avg8``, ``decoder_psnr_avg8``,
        ``decoder_ssim_label_floor``, ``decoder_psnr_label_floor``, ``decoder_ssim_clean``,
        ``decoder_psnr_clean``) and ``.reconstructions`` (CPU tensors of the first 8 test
        images: ``original``, ``obfuscated``, ``decoder``, ``decoder_avg``, ``label_floor``,
        ``clean``).

    """
    attack = decoder_attack(obfuscate, attacker, test, num_classes=num_classes, epochs=epochs,
                            batch_size=batch_size, lr=lr, averaged_copies=averaged_copies,
                            seed=seed, width=width, budget=budget, device=device, progress=progress)
    floor = label_floor_attack(attacker, test, num_classes=num_classes, epochs=epochs,
                               batch_size=batch_size, lr=lr, seed=seed, width=width,
                               budget=budget, device=device, progress=progress)
    clean = clean_ceiling_attack(attacker, test, num_classes=num_classes, epochs=epochs,
                                 batch_size=batch_size, lr=lr, seed=seed, width=width,
                                 budget=budget, device=device, progress=progress)

    xt, yt = _split_images(test, "test", num_classes)
    k = min(NUM_FIGURE_IMAGES, xt.shape[0])
    dev = resolve_device(device, xt)
    with torch.no_grad(), seeded(seed + 1, dev):
        sample = as_feature_map(obfuscate(xt[:k].to(dev), yt[:k].to(dev)), k).cpu()
    decoded_avg = attack.reconstructions_avg
    # A black image knows nothing; on images with empty channels (e.g. tinted digits) SSIM
    # still rewards it, so its score is reported to read the others against.
    blank = torch.zeros_like(xt.detach().float().cpu())
    references = {
        "ssim_blank": ssim(blank, xt.detach().float().cpu()),
        "ssim_luma_blank": ssim(luma(blank), luma(xt.detach().float().cpu())),
    }
    return DecoderAttackReport(
        metrics={**attack.metrics, **floor.metrics, **clean.metrics, **references},
        reconstructions={
            "original": xt[:k].detach().float().cpu().clone(),
            "obfuscated": sample,
            "decoder": attack.reconstructions,
            "decoder_avg": attack.reconstructions if decoded_avg is None else decoded_avg,
            "label_floor": floor.reconstructions,
            "clean": clean.reconstructions,
        },
    )


def _identity(x: Tensor, y: Tensor) -> Tensor:
    return x

