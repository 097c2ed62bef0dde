"""Tests of scl.attacks: metrics with known answers, attacks with teeth, validation.

The attacks run on a tiny synthetic set (16 x 16 grey images, 4 classes, a binary private
attribute): each image is a Gaussian blob at a random position whose width depends on the
class, overlaid with a bar whose orientation is the attribute (0: horizontal, 1: vertical) at a
random row or column. The attribute is independent of the class, so the label alone says
nothing about it, and the within-class variation (positions) keeps the label-only floor low.

Tolerances (attacker split 256, test split 160, seeded):
- identity / clean decoder SSIM > 0.8 (observed ~0.94) and at least 0.4 above the floor
  (observed floor ~0.24);
- an obfuscator independent of x: SSIM at most the floor + 0.05 (it cannot even use the class);
- attribute accuracy from pure noise within 0.15 of chance (4 standard errors at n = 160);
  from an informative obfuscator within 0.1 of the clean ceiling (observed 1.0 vs 1.0).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from scl.attacks import (
    AttributeClassifier,
    Decoder,
    attribute_attack,
    decoder_attack,
    distance_correlation,
    label_floor_attack,
    psnr,
    run_decoder_attacks,
    ssim,
    ssim_kernel_size,
)
from scl.errors import ConfigError, DataError, LabelError, SCLError, ShapeError
from scl.metrics import (
    ATTRIBUTE_ACCURACY,
    ATTRIBUTE_CHANCE,
    ATTRIBUTE_CLEAN,
    ATTRIBUTE_LABEL_FLOOR,
    DECODER_PSNR,
    DECODER_PSNR_AVG8,
    DECODER_SSIM,
    DECODER_SSIM_AVG8,
    DECODER_SSIM_LUMA,
    averaged,
    ceiling_of,
    floor_of,
)

NUM_CLASSES = 4
SIZE = 16
# Small budget that reliably reaches the thresholds above on 2 CPU cores.
FAST: dict[str, Any] = dict(epochs=10, batch_size=32, lr=3e-3)


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic blobs and bars: x Tensor[n, 1, 16, 16] in [0, 1], y Tensor[n], a Tensor[n]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    attribute = torch.randint(0, 2, (n,), generator=g)
    r = torch.arange(SIZE, dtype=torch.float32)
    cy = torch.rand(n, generator=g) * (SIZE - 6) + 3
    cx = torch.rand(n, generator=g) * (SIZE - 6) + 3
    sigma = 1.0 + 0.5 * y.float()
    d2 = (r[None, :, None] - cy[:, None, None]) ** 2 + (r[None, None, :] - cx[:, None, None]) ** 2
    blob = torch.exp(-d2 / (2 * sigma[:, None, None] ** 2))
    pos = torch.randint(2, SIZE - 2, (n,), generator=g)
    horizontal = (r[None, :, None] == pos[:, None, None]).float().expand(n, SIZE, SIZE)
    vertical = (r[None, None, :] == pos[:, None, None]).float().expand(n, SIZE, SIZE)
    bar = torch.where(attribute[:, None, None] == 0, horizontal, vertical) * 0.7
    return torch.maximum(blob, bar)[:, None].contiguous(), y, attribute


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Train on one thread, then restore the caller's setting.

    The attacks use torch's thread setting as they find it. These tiny convolutions gain little
    from a second thread, and on a busy 2-core machine OpenMP barriers make them many times
    slower, so the module pins one thread for a predictable run time.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def splits() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return {"attacker": make_data(256, 0), "test": make_data(160, 1)}


def pure_noise(seed: int = 5):
    """An obfuscator whose output is independent of x and y."""
    g = torch.Generator().manual_seed(seed)
    return lambda x, y: torch.rand(x.shape, generator=g)


def pooled_noisy(sigma: float, seed: int = 7):
    """Leaky obfuscator with another shape: Tensor[N, 1, 16, 16] -> Tensor[N, 2, 8, 8]."""
    g = torch.Generator().manual_seed(seed)

    def obfuscate(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, 2).repeat(1, 2, 1, 1)
        return pooled + sigma * torch.randn(pooled.shape, generator=g)

    return obfuscate


def identity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x.clone()


# ----------------------------------------------------------------------------- metrics


def test_ssim_kernel_size_fits_small_images() -> None:
    assert ssim_kernel_size(16, 16) == 7
    assert ssim_kernel_size(28, 28) == 11
    assert ssim_kernel_size(32, 64) == 11
    assert ssim_kernel_size(8, 8) == 3
    assert ssim_kernel_size(3, 40) == 3
    with pytest.raises(ShapeError, match="at least 3 x 3"):
        ssim_kernel_size(2, 16)


def test_ssim_and_psnr_known_answers() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(4, 3, SIZE, SIZE, generator=g, dtype=torch.float64) * 0.9
    assert ssim(target, target) == pytest.approx(1.0, abs=1e-5)
    assert psnr(target, target) == pytest.approx(100.0)  # perfect copy: capped
    shifted = target + 0.1  # MSE = 0.01 everywhere -> 20 dB for every image
    assert psnr(shifted, target) == pytest.approx(20.0, abs=1e-6)
    eps = torch.randn(target.shape, generator=g, dtype=torch.float64)
    slightly, very = (target + 0.05 * eps).clamp(0, 1), (target + 0.3 * eps).clamp(0, 1)
    assert 1.0 > ssim(slightly, target) > ssim(very, target) > 0.0
    assert psnr(slightly, target) > psnr(shifted, target) > psnr(very, target)
    # mean over the batch of per-image PSNR: one exact copy and one 20 dB image -> 60 dB
    pair = torch.stack([target[0], shifted[1]])
    assert psnr(pair, target[:2]) == pytest.approx(60.0, abs=1e-6)


def test_ssim_psnr_validate_shapes() -> None:
    x = torch.rand(2, 1, SIZE, SIZE)
    with pytest.raises(ShapeError, match="same shape"):
        ssim(x, torch.rand(2, 1, SIZE, 8))
    with pytest.raises(ShapeError, match=r"Tensor\[N, C, H, W\]"):
        psnr(x[0], x[0])


def test_dcor_hand_computed_case() -> None:
    # x = [0, 1, 2], h = [0, 1, 0]: dCov^2 = 72/729, dVar_x^2 = 360/729, dVar_h^2 = 144/729,
    # so dCor^2 = 72 / sqrt(360 * 144) = 1 / sqrt(10) and dCor = 10 ** -0.25.
    x = torch.tensor([[0.0], [1.0], [2.0]])
    h = torch.tensor([[0.0], [1.0], [0.0]])
    assert distance_correlation(x, h) == pytest.approx(10**-0.25, abs=1e-12)
    assert distance_correlation(h, x) == pytest.approx(10**-0.25, abs=1e-12)


def test_dcor_known_answers() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(200, 3, 4, 4, generator=g)
    assert distance_correlation(x, x) == pytest.approx(1.0, abs=1e-9)
    assert distance_correlation(x, 3.0 * x + 2.0) == pytest.approx(1.0, abs=1e-9)
    # any shapes per sample: only N must agree
    assert distance_correlation(x, (0.5 * x).reshape(200, -1)) == pytest.approx(1.0, abs=1e-9)
    assert distance_correlation(x, torch.ones(200, 7)) == 0.0
    # independent samples: the V-statistic is small but biased above 0 (~0.06 at n = 500 in
    # one dimension; the bias grows with the dimension)
    u = torch.rand(500, 1, generator=g) * 2 - 1
    v = torch.rand(500, 1, generator=g)
    assert distance_correlation(u, v) < 0.1
    # non-linear dependence is detected although the Pearson correlation of u and u**2 is ~0
    assert distance_correlation(u, u**2) > 0.4


def test_dcor_subsample_is_deterministic() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1200, 5, generator=g)
    h = x + 0.5 * torch.rand(1200, 5, generator=g)
    first = distance_correlation(x, h, max_samples=300, generator=torch.Generator().manual_seed(3))
    again = distance_correlation(x, h, max_samples=300, generator=torch.Generator().manual_seed(3))
    other = distance_correlation(x, h, max_samples=300, generator=torch.Generator().manual_seed(4))
    assert first == again
    assert first != other
    assert distance_correlation(x, h, max_samples=300) == distance_correlation(
        x, h, max_samples=300
    )
    assert 0.5 < first < 1.0


def test_dcor_validation() -> None:
    with pytest.raises(ShapeError, match="same number of samples N, but got 4 and 5"):
        distance_correlation(torch.rand(4, 2), torch.rand(5, 2))
    with pytest.raises(ShapeError, match="N >= 2"):
        distance_correlation(torch.rand(1, 2), torch.rand(1, 2))
    with pytest.raises(ConfigError, match="max_samples"):
        distance_correlation(torch.rand(4, 2), torch.rand(4, 2), max_samples=1)
    with pytest.raises(SCLError):
        distance_correlation([1, 2], torch.rand(2, 2))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- decoder


def test_decoder_shapes() -> None:
    decoder = Decoder(3, 1, (SIZE, SIZE))
    with torch.no_grad():
        out = decoder.eval()(5 * torch.randn(5, 3, 8, 8))
        linear = decoder.train()(5 * torch.randn(5, 3, 8, 8))
    assert out.shape == (5, 1, SIZE, SIZE)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0  # images in eval mode
    assert float(linear.min()) < 0.0  # a linear output while training (gradients everywhere)
    assert Decoder(2, 3, 12)(torch.randn(2, 2, 12, 12)).shape == (2, 3, 12, 12)
    assert "out_size=(16, 16)" in repr(decoder)
    with pytest.raises(ShapeError, match=r"Tensor\[N, 3, H', W'\], but got shape \(5, 2, 8, 8\)"):
        decoder(torch.randn(5, 2, 8, 8))


@pytest.fixture(scope="module")
def noise_report(splits):
    attacker, test = splits["attacker"][:2], splits["test"][:2]
    return run_decoder_attacks(pure_noise(), attacker, test, num_classes=NUM_CLASSES, **FAST)


def test_run_decoder_attacks_floor_and_ceiling(noise_report) -> None:
    m = noise_report.metrics
    assert set(m) == {
        DECODER_SSIM,
        DECODER_PSNR,
        DECODER_SSIM_AVG8,
        DECODER_PSNR_AVG8,
        floor_of(DECODER_SSIM),
        floor_of(DECODER_PSNR),
        ceiling_of(DECODER_SSIM),
        ceiling_of(DECODER_PSNR),
        "decoder_ssim_label_decoder",
        "decoder_psnr_label_decoder",
        "ssim_class_mean",
        "psnr_class_mean",
        "ssim_blank",
        DECODER_SSIM_LUMA,
        floor_of(DECODER_SSIM_LUMA),
        ceiling_of(DECODER_SSIM_LUMA),
        "ssim_luma_class_mean",
        "ssim_luma_blank",
    }
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())
    # the floor is the better label-only reconstruction: learned decoder or class-mean image
    assert m[floor_of(DECODER_SSIM)] == max(m["decoder_ssim_label_decoder"], m["ssim_class_mean"])
    # the clean ceiling rebuilds the images; the label alone does not
    assert m[ceiling_of(DECODER_SSIM)] > 0.8
    assert m[ceiling_of(DECODER_SSIM)] - m[floor_of(DECODER_SSIM)] > 0.4
    assert m[ceiling_of(DECODER_PSNR)] > m[floor_of(DECODER_PSNR)] + 8.0
    # noise independent of x (and of y) leaks nothing: at most the label-only floor
    assert m[DECODER_SSIM] < m[floor_of(DECODER_SSIM)] + 0.05
    assert m[DECODER_SSIM_AVG8] < m[floor_of(DECODER_SSIM)] + 0.05
    assert m[DECODER_PSNR] < m[floor_of(DECODER_PSNR)] + 1.0

    rec = noise_report.reconstructions
    assert set(rec) == {"original", "obfuscated", "decoder", "decoder_avg", "label_floor", "clean"}
    for name, tensor in rec.items():
        assert tensor.shape == (8, 1, SIZE, SIZE), name
        assert tensor.device.type == "cpu"


def test_identity_decoder_attack_matches_clean_ceiling(splits, noise_report) -> None:
    # Same architecture, data, budget and seed: the identity attack IS the clean ceiling.
    result = decoder_attack(
        identity, splits["attacker"][:2], splits["test"][:2], num_classes=NUM_CLASSES, **FAST
    )
    m = result.metrics
    assert m[DECODER_SSIM] > 0.8
    assert m[DECODER_SSIM] == pytest.approx(noise_report.metrics[ceiling_of(DECODER_SSIM)], abs=1e-6)
    assert m[DECODER_SSIM] - noise_report.metrics[floor_of(DECODER_SSIM)] > 0.4
    assert result.reconstructions.shape == (8, 1, SIZE, SIZE)
    assert isinstance(result.decoder, Decoder) and not result.decoder.training


def test_leaky_obfuscator_of_another_shape_and_averaging(splits, noise_report) -> None:
    # 2 channels at 8 x 8 with Gaussian noise: between floor and ceiling (observed 0.54);
    # averaging 8 copies divides the noise variance by 8 and the attack gets better (0.68).
    result = decoder_attack(
        pooled_noisy(0.2),
        splits["attacker"][:2],
        splits["test"][:2],
        num_classes=NUM_CLASSES,
        **FAST,
    )
    m = result.metrics
    floor = noise_report.metrics[floor_of(DECODER_SSIM)]
    clean = noise_report.metrics[ceiling_of(DECODER_SSIM)]
    assert floor + 0.05 < m[DECODER_SSIM] < clean - 0.05
    assert m[DECODER_SSIM_AVG8] > m[DECODER_SSIM] + 0.02
    assert m[DECODER_PSNR_AVG8] > m[DECODER_PSNR]
    assert result.reconstructions_avg is not None
    assert result.reconstructions_avg.shape == (8, 1, SIZE, SIZE)


def test_decoder_attack_accepts_flat_outputs_objects_and_progress(splits) -> None:
    from rich.progress import Progress

    class Split:
        def __init__(self, x, y):
            self.x, self.y = x, y

    x, y, _ = splits["test"]
    attacker, test = Split(x[:64], y[:64]), Split(x[64:80], y[64:80])
    with Progress(disable=True) as progress:
        result = decoder_attack(
            lambda x, y: x.flatten(1)[:, ::4].clone(),
            attacker,
            test,
            num_classes=NUM_CLASSES,
            epochs=2,
            batch_size=32,
            averaged_copies=3,
            progress=progress,
        )
        (task,) = progress.tasks
        assert task.total == 2 and task.completed == 2
    assert {averaged(DECODER_SSIM, 3), averaged(DECODER_PSNR, 3)} <= set(result.metrics)
    assert result.decoder is not None and result.decoder.in_channels == SIZE * SIZE // 4


def test_attacks_are_seeded_and_leave_global_rng_alone(splits) -> None:
    x, y, _ = splits["test"]
    data = (x[:48], y[:48]), (x[48:64], y[48:64])
    state = torch.get_rng_state()
    first = label_floor_attack(*data, num_classes=NUM_CLASSES, epochs=1, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    again = label_floor_attack(*data, num_classes=NUM_CLASSES, epochs=1, seed=3)
    assert first.metrics == again.metrics
    assert set(first.metrics) == {
        floor_of(DECODER_SSIM), floor_of(DECODER_PSNR), "decoder_ssim_label_decoder",
        "decoder_psnr_label_decoder", "ssim_class_mean", "psnr_class_mean",
        "ssim_luma_class_mean", floor_of(DECODER_SSIM_LUMA)}


# ----------------------------------------------------------------------------- attribute


def test_attribute_classifier_any_shape() -> None:
    model = AttributeClassifier(5, 3)
    assert model(torch.randn(2, 5, 16, 16)).shape == (2, 3)
    assert model(torch.randn(2, 5, 1, 1)).shape == (2, 3)
    assert model(torch.randn(2, 5, 7, 3)).shape == (2, 3)
    with pytest.raises(ShapeError, match="but got shape"):
        model(torch.randn(2, 4, 8, 8))


def test_attribute_attack_pure_noise_is_at_chance(splits) -> None:
    result = attribute_attack(
        pure_noise(), splits["attacker"], splits["test"], num_attributes=2, **FAST
    )
    assert set(result) == {
        ATTRIBUTE_ACCURACY,
        ATTRIBUTE_CHANCE,
        ATTRIBUTE_LABEL_FLOOR,
        ATTRIBUTE_CLEAN,
    }
    test_attribute = splits["test"][2]
    chance = float(torch.bincount(test_attribute).max()) / len(test_attribute)
    assert result[ATTRIBUTE_CHANCE] == pytest.approx(chance)
    assert abs(result[ATTRIBUTE_ACCURACY] - chance) < 0.15
    # the attribute is independent of the class: the label alone is at chance too
    assert abs(result[ATTRIBUTE_LABEL_FLOOR] - chance) < 0.15
    assert result[ATTRIBUTE_CLEAN] > 0.9


def test_attribute_attack_leaky_obfuscator_is_near_clean(splits) -> None:
    result = attribute_attack(
        pooled_noisy(0.1),
        splits["attacker"],
        splits["test"],
        num_attributes=2,
        num_classes=NUM_CLASSES,
        **FAST,
    )
    assert result[ATTRIBUTE_CLEAN] > 0.9
    assert result[ATTRIBUTE_ACCURACY] > result[ATTRIBUTE_CLEAN] - 0.1
    assert result[ATTRIBUTE_ACCURACY] > result[ATTRIBUTE_CHANCE] + 0.3


# ----------------------------------------------------------------------------- validation


def test_validation_errors(splits) -> None:
    x, y, a = splits["test"]
    good = (x[:16], y[:16])
    tiny: dict[str, Any] = dict(num_classes=NUM_CLASSES, epochs=1)

    with pytest.raises(LabelError, match=r"must have one entry per sample \(16\), but got 15"):
        decoder_attack(identity, (x[:16], y[:15]), good, **tiny)
    with pytest.raises(ShapeError, match=r"Tensor\[N, C, H, W\].*but got shape \(16, 16, 16\)"):
        decoder_attack(identity, (x[:16, 0], y[:16]), good, **tiny)
    with pytest.raises(ShapeError, match=r"same \[C, H, W\], but got \(1, 16, 16\) and"):
        decoder_attack(identity, good, (x[:16, :, :8, :8], y[:16]), **tiny)
    with pytest.raises(LabelError, match=r"must be in \[0, 4\), but got 9 at index 2"):
        decoder_attack(identity, (x[:4], torch.tensor([0, 1, 9, 2])), good, **tiny)
    with pytest.raises(DataError, match=r"values in \[0, 1\]"):
        decoder_attack(identity, (x[:16] * 2.0 + 0.5, y[:16]), good, **tiny)
    with pytest.raises(DataError, match="tuple"):
        decoder_attack(identity, x[:16], good, **tiny)
    with pytest.raises(ShapeError, match="N = 2"):
        decoder_attack(lambda x, y: x[:1], good, good, **tiny)
    with pytest.raises(ShapeError, match="must return a Tensor"):
        decoder_attack(lambda x, y: x.numpy(), good, good, **tiny)  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError, match="averaged_copies must be an integer >= 1, but got 0"):
        decoder_attack(identity, good, good, averaged_copies=0, **tiny)
    with pytest.raises(ConfigError, match="epochs"):
        decoder_attack(identity, good, good, num_classes=NUM_CLASSES, epochs=0)
    with pytest.raises(ConfigError, match="lr"):
        label_floor_attack(good, good, num_classes=NUM_CLASSES, lr=-1.0)

    with pytest.raises(DataError, match="private attribute"):
        attribute_attack(identity, good, good, num_attributes=2, epochs=1)
    with pytest.raises(LabelError, match=r"attacker.attribute must be in \[0, 2\)"):
        attribute_attack(
            identity,
            (x[:16], y[:16], a[:16] + 5),
            (x[:16], y[:16], a[:16]),
            num_attributes=2,
            epochs=1,
        )
    with pytest.raises(ConfigError, match="num_attributes"):
        attribute_attack(identity, splits["test"], splits["test"], num_attributes=1)
    # every error is an SCLError, hence a ValueError
    with pytest.raises(ValueError):
        run_decoder_attacks(identity, (x[:16], y[:15]), good, **tiny)


def test_bias_corrected_dcor_is_near_zero_for_independent_high_dimensional_data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 3, 16, 16, generator=g)
    h = torch.rand(300, 3, 16, 16, generator=g)
    biased = distance_correlation(x, h)
    corrected = distance_correlation(x, h, bias_corrected=True)
    assert biased > 0.5  # the V-statistic is far from 0 here
    assert corrected < 0.1


def test_bias_corrected_dcor_is_one_for_a_linear_copy():
    x = torch.rand(100, 20, generator=torch.Generator().manual_seed(1))
    assert distance_correlation(x, 2 * x + 1, bias_corrected=True) == pytest.approx(1.0, abs=1e-6)


def test_label_floor_rebuilds_images_that_the_class_determines():
    # Toy case: each class is one fixed image (a bright bar at a class-specific place). The label
    # alone then determines x, so the label-only floor must be near the ceiling, not near 0.
    n, size = 240, 16
    y = torch.arange(n) % 3
    x = torch.zeros(n, 1, size, size)
    for c in range(3):
        x[y == c, :, 5 * c : 5 * c + 4, 2:14] = 0.9
    attacker, test = (x[:160], y[:160]), (x[160:], y[160:])
    result = label_floor_attack(attacker, test, num_classes=3, epochs=40, lr=3e-3, batch_size=32)
    assert result.metrics[floor_of(DECODER_SSIM)] > 0.8


def test_luma_ssim_does_not_reward_a_blank_guess_on_single_channel_colour():
    from scl.attacks.metrics import luma

    coarse = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x = torch.zeros(16, 3, 16, 16)
    x[:, :1] = F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)  # red only
    blank = torch.zeros_like(x)
    assert ssim(blank, x) > 0.6  # colour SSIM rewards the two empty channels
    assert ssim(luma(blank), luma(x)) < 0.1
    assert ssim(luma(x), luma(x)) == pytest.approx(1.0, abs=1e-5)
