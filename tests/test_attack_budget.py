"""Attack budgets (quick | standard | strong), early stopping, and sanity checks that can fail.

Reuses the blobs-and-bars problem of ``test_attacks`` (16 x 16 grey, 4 classes). Budgets are
capped to a few epochs (``AttackBudget.capped``) so the file runs in seconds; the nesting that
makes budgets monotone survives the cap.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scl.attacks import decoder_attack
from scl.attacks._common import fit, holdout, native_bfloat16
from scl.attacks.budget import BUDGETS, AttackBudget, Attacker, attackers, get_budget
from scl.attacks.decoder import UNetDecoder, clean_ceiling_attack, label_floor_attack
from scl.baselines import GaussianNoise, calibrate_scale
from scl.errors import ConfigError
from scl.metrics import DECODER_SSIM, ceiling_of, floor_of
from tests.test_attacks import NUM_CLASSES, make_data

OPTIONS = dict(num_classes=NUM_CLASSES, batch_size=32, lr=3e-3, seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def splits():
    return make_data(192, 0), make_data(96, 1)


@pytest.fixture(scope="module")
def digits():
    """The embedded tinted digits at 8 x 8: 240 attacker and 160 test images, 10 classes."""
    from scl.data import load_digits, split

    parts = split(load_digits(size=8, attribute=True, seed=0), seed=0)
    a, t = parts["attacker"], parts["test"]
    return (a.x[:240], a.y[:240]), (t.x[:160], t.y[:160])


DIGITS = dict(num_classes=10, batch_size=32, lr=3e-3, seed=0)


def budget(name: str, epochs: int = 4):
    return get_budget(name).capped(epochs)


#: One plain decoder trained long enough on this small split to converge (early-stopped).
CONVERGED = AttackBudget("converged", (Attacker("plain", 32, 40, 8),), (Attacker("plain", 32, 40, 8),),
                         attribute_epochs=40)


def test_budgets_are_nested_and_named():
    assert [len(attackers(n)) for n in ("quick", "standard", "strong")] == [1, 2, 3]
    assert attackers("strong")[:2] == attackers("standard") and attackers("standard")[:1] == attackers("quick")
    assert BUDGETS["standard"].decoders[-1].architecture == "unet"
    with pytest.raises(ConfigError, match=r"attacks.budget must be one of \['quick', 'standard', 'strong'\]"):
        get_budget("paranoid")
    capped = budget("strong", 2)
    assert all(a.epochs == 2 for a in capped.decoders + capped.embeddings) and capped.attribute_epochs == 2


def test_a_stronger_budget_never_scores_lower(splits):
    attacker, test = splits

    def noisy(x, y):
        return x + 0.3 * torch.randn_like(x)

    scores = [decoder_attack(noisy, attacker, test, budget=budget(name, 3), **OPTIONS).metrics[DECODER_SSIM]
              for name in ("quick", "standard", "strong")]
    assert scores[0] <= scores[1] <= scores[2], scores


def test_identity_is_within_005_of_its_ceiling_and_class_mean_within_005_of_the_floor(digits):
    attacker, test = digits
    b = CONVERGED
    ceiling = clean_ceiling_attack(attacker, test, budget=b, **DIGITS).metrics[ceiling_of(DECODER_SSIM)]
    floor = label_floor_attack(attacker, test, budget=b, **DIGITS).metrics[floor_of(DECODER_SSIM)]
    identity = decoder_attack(lambda x, y: x, attacker, test, budget=b, **DIGITS).metrics[DECODER_SSIM]
    assert ceiling > floor + 0.3  # the yardstick separates
    assert identity >= ceiling - 0.05
    xa, ya = attacker
    means = torch.stack([xa[ya == c].mean(0) for c in range(10)])

    def class_mean_plus_noise(x, y):
        return means[y] + 0.1 * torch.randn_like(x)

    leak = decoder_attack(class_mean_plus_noise, attacker, test, budget=b, **DIGITS).metrics[DECODER_SSIM]
    assert abs(leak - floor) <= 0.05, (leak, floor)


def test_decoder_ssim_falls_with_the_noise_scale(digits):
    attacker, test = digits
    b = CONVERGED
    scores = [decoder_attack(GaussianNoise(s), attacker, test, budget=b, **DIGITS).metrics[DECODER_SSIM]
              for s in (0.05, 0.4, 1.6)]
    assert scores[0] > scores[1] > scores[2], scores


def test_unet_decoder_shapes():
    decoder = UNetDecoder(5, 3, (12, 10), width=8)
    assert decoder(torch.randn(2, 5, 6, 5)).shape == (2, 3, 12, 10)
    assert "width=8" in repr(decoder)


def test_fit_stops_early_and_keeps_the_best_epoch():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.randn(4, 1)
    model = torch.nn.Linear(4, 1)
    train, validation = holdout(64, 0.25, torch.Generator().manual_seed(0))
    assert validation is not None and validation.numel() == 16 and set(train.tolist()).isdisjoint(validation.tolist())
    losses = []

    def make_batch(index):
        return x[index], y[index]

    def loss_fn(prediction, target):
        loss = F.mse_loss(prediction, target)
        losses.append(float(loss.detach()))
        return loss

    # a learning rate so large that training diverges after the first epochs: early stopping
    # must stop long before 200 epochs and restore a good epoch
    fit(model, make_batch, train, loss_fn=loss_fn, epochs=200, batch_size=16, lr=5.0,
        generator=torch.Generator().manual_seed(0), progress=None, description="t", validation=validation, patience=3)
    with torch.no_grad():
        restored = float(F.mse_loss(model(x[validation]), y[validation]))
    assert len(losses) < 200 * 4
    assert restored <= min(losses) * 10 + 1e-6 or restored < float(F.mse_loss(torch.zeros_like(y), y))


def test_fit_with_a_cosine_schedule_anneals_before_it_stops():
    """On a plateau, a cosine-scheduled attacker anneals to rate 0 over `patience` more epochs
    (decoders decode best at a low rate); without a schedule it stops at once."""
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    train, validation = holdout(32, 0.25, torch.Generator().manual_seed(0))

    def epochs_run(cosine: bool) -> int:
        model = torch.nn.Linear(4, 1)
        steps = []

        def loss_fn(prediction, target):
            if torch.is_grad_enabled():
                steps.append(1)
            return F.mse_loss(prediction, target)

        # lr 0: the validation loss never improves after the first epoch
        fit(model, lambda i: (x[i], y[i]), train, loss_fn=loss_fn, epochs=30, batch_size=8, lr=0.0,
            generator=torch.Generator().manual_seed(0), progress=None, description="t",
            validation=validation, patience=3, cosine=cosine)
        return len(steps) // 3  # 24 training samples in batches of 8

    assert epochs_run(cosine=False) == 10  # a third of 30 epochs, then the patience has run out
    assert epochs_run(cosine=True) == 13  # and 3 more epochs of annealing


def test_fit_under_bfloat16_trains_a_float32_model_that_decodes():
    """The standard budget's precision: autocast in training only; weights and outputs float32."""
    x = make_data(64, 0)[0]
    decoder = UNetDecoder(x.shape[1], x.shape[1], tuple(x.shape[2:]), width=8)
    with torch.no_grad():
        before = float(F.mse_loss(decoder.eval()(x), x))
    fit(decoder, lambda i: (x[i], x[i]), 64, loss_fn=F.mse_loss, epochs=30, batch_size=16, lr=3e-3,
        generator=torch.Generator().manual_seed(0), progress=None, description="t", bfloat16=True)
    assert all(p.dtype == torch.float32 for p in decoder.parameters())
    with torch.no_grad():
        out = decoder(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert float(F.mse_loss(out, x)) < 0.5 * before
    assert isinstance(native_bfloat16(torch.device("cpu")), bool)
    assert native_bfloat16(torch.device("meta")) is False


def test_standard_and_strong_attackers_train_in_bfloat16_and_quick_in_float32():
    assert not any(a.bfloat16 for a in get_budget("quick").decoders + get_budget("quick").embeddings)
    for name in ("standard", "strong"):
        own = get_budget(name).decoders[-1], get_budget(name).embeddings[-1]
        assert all(a.bfloat16 for a in own)


def test_calibrate_scale_matches_a_target_accuracy():
    def accuracy_at(scale):  # falls from 1 to 0 as the scale grows
        return 1.0 / (1.0 + scale**2)

    scale, accuracy = calibrate_scale(accuracy_at, 0.5)
    assert abs(scale - 1.0) < 0.01 and accuracy >= 0.5
    assert calibrate_scale(accuracy_at, 1.5)[0] == pytest.approx(1e-3)  # unreachable: the smallest scale
    with pytest.raises(ConfigError, match="need 0 < low < high"):
        calibrate_scale(accuracy_at, 0.5, low=1.0, high=0.5)
    with pytest.raises(ConfigError, match="scale must be a finite number >= 0"):
        GaussianNoise(-1.0)
