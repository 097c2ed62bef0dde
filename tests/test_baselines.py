"""The baselines of `scl bench privacy`: the interface, each one's training step, its knob's
direction (more strength, more distortion) and errors on bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scl.baselines import Cloak, GaussianNoise, Identity, LaplaceNoise, NoPeek, Shredder
from scl.errors import ConfigError
from scl.pipelines.bench_privacy import calibrate_noise, train_baseline
from scl.pipelines.stages import UtilityBudget

SHAPE = (1, 4, 4)


class _Energy(nn.Module):
    """A frozen two-class 'task network' that noise hurts: class 1 when the mean of h^2 is above
    0.3 (dark images of class 0 have 0.04, bright ones of class 1 0.64; noise of scale s adds s^2)."""

    def forward(self, h):
        score = 10 * (h.square().mean(dim=(1, 2, 3)) - 0.3)
        return torch.stack([-score, score], -1)


def _data(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (0.2 + 0.6 * y.float())[:, None, None, None] + 0.05 * torch.randn(n, *SHAPE, generator=g)
    return x, y


def _learned(name: str):
    torch.manual_seed(0)
    if name == "shredder":
        return Shredder(SHAPE, init_scale=0.3)
    if name == "cloak":
        return Cloak(SHAPE, init_scale=0.3)
    return NoPeek(SHAPE[0], width=4)


LEARNED = ("shredder", "cloak", "nopeek")


def _fit(name: str, budget: float, epochs: int = 12):
    method = _learned(name)
    x, y = _data()
    xv, yv = _data(seed=1)
    _, result = train_baseline(
        method, UtilityBudget(budget, _Energy(), xv, yv), (x, y), num_classes=2, epochs=epochs,
        lr=1e-2 if name == "nopeek" else 0.05, batch_size=16, generator=torch.Generator().manual_seed(0),
    )
    method.eval()
    return method, result


def _distortion(method, seed: int = 3) -> float:
    x, _ = _data(seed=2)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        return float((method(x) - x).abs().mean())


# -- the interface ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["identity", "gaussian", "laplace", *LEARNED])
def test_every_baseline_keeps_the_shape_and_ignores_labels(name):
    method = {"identity": Identity(), "gaussian": GaussianNoise(0.2), "laplace": LaplaceNoise(0.2)}.get(name) \
        or _learned(name)
    x, y = _data(8)
    outputs = []
    for labels in (None, y, 1 - y):  # no label, the right ones, wrong ones: the same release
        with torch.random.fork_rng():
            torch.manual_seed(5)
            outputs.append(method(x, labels))
    assert outputs[0].shape == x.shape
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


def test_identity_releases_the_input_itself():
    x, _ = _data(4)
    assert torch.equal(Identity()(x), x)


@pytest.mark.parametrize(("noise", "spread"),
                         [(GaussianNoise, lambda d: d.std()), (LaplaceNoise, lambda d: d.abs().mean())])
def test_plain_noise_has_its_scale(noise, spread):
    torch.manual_seed(0)
    x = torch.zeros(200_000)
    assert float(spread(noise(0.3)(x) - x)) == pytest.approx(0.3, rel=0.02)  # std of N(0, s), E|L(0, s)| = s


def test_laplace_unit_noise_is_laplace_and_follows_its_generator():
    eps = LaplaceNoise.unit_noise(torch.zeros(200_000), generator=torch.Generator().manual_seed(1))
    assert float(eps.mean()) == pytest.approx(0.0, abs=0.02)
    assert float(eps.var()) == pytest.approx(2.0, rel=0.03)  # Var of Laplace(0, 1) is 2
    again = LaplaceNoise.unit_noise(torch.zeros(200_000), generator=torch.Generator().manual_seed(1))
    assert torch.equal(eps, again) and torch.isfinite(eps).all()


@pytest.mark.parametrize("noise", [GaussianNoise, LaplaceNoise])
def test_plain_noise_knob_more_scale_more_distortion(noise):
    assert [_distortion(noise(s)) for s in (0.0, 0.1, 0.5)] == sorted(_distortion(noise(s)) for s in (0.0, 0.1, 0.5))
    assert _distortion(noise(0.0)) == 0.0 and _distortion(noise(0.5)) > 3 * _distortion(noise(0.1))


@pytest.mark.parametrize("bad", [-0.1, float("inf"), float("nan"), "0.1", True])
def test_plain_noise_rejects_a_bad_scale(bad):
    with pytest.raises(ConfigError, match="scale must be a finite number >= 0"):
        GaussianNoise(bad)


def test_learned_baselines_reject_bad_input():
    with pytest.raises(ConfigError, match=r"shape must be \(C, H, W\)"):
        Shredder((4, 4))
    with pytest.raises(ConfigError, match="channels must be a positive int"):
        NoPeek(0)
    with pytest.raises(ConfigError, match="built for 1 channels, but x has 3"):
        NoPeek(1)(torch.rand(2, 3, 4, 4))
    with pytest.raises(ConfigError, match="at least one training image"):
        Cloak(SHAPE).start(torch.rand(0, *SHAPE))


# -- training ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LEARNED)
def test_a_training_step_reaches_every_learned_baseline(name):
    method = _learned(name)
    method.train()
    x, y = _data(16)
    h, _ = method.sample_with_distribution(x)
    nn.functional.cross_entropy(_Energy()(h), y).backward()
    grads = [p.grad for p in method.parameters() if p.requires_grad]
    assert grads and any(g is not None and float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("name", LEARNED)
def test_learned_baselines_train_within_the_budget(name):
    before = {k: v.clone() for k, v in _learned(name).state_dict().items()}
    method, result = _fit(name, 5.0)
    assert result.feasible and result.validation_loss <= 5.0, result.message(name)
    after = method.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), f"{name} did not train"


def test_cloak_starts_at_the_input_or_at_the_mean_image_with_no_gain():
    x, _ = _data()
    method = Cloak(SHAPE, init_scale=0.01)
    method.start(x)
    method.eval()
    assert torch.equal(method.layer.gains, torch.ones_like(method.layer.gains))
    with torch.no_grad():
        assert float((method(x) - x).abs().max()) < 0.1  # x plus noise of scale 0.01
    method = Cloak(SHAPE, start_at="mean")
    method.start(x)
    assert torch.equal(method.layer.gains, torch.zeros_like(method.layer.gains))
    assert torch.allclose(method.layer.offsets[0, 0], x.mean(0))
    with pytest.raises(ConfigError, match="start_at must be 'input' or 'mean'"):
        Cloak(SHAPE, start_at="zero")


@pytest.mark.parametrize("name", LEARNED)
def test_learned_knob_a_larger_budget_gives_more_distortion(name):
    tight, _ = _fit(name, 0.0)
    loose, _ = _fit(name, 40.0)
    assert _distortion(loose) > 1.2 * _distortion(tight), (name, _distortion(tight), _distortion(loose))


def test_calibrated_noise_loses_at_most_the_budget_and_grows_with_it():
    xv, yv = _data(seed=1)
    scales = []
    for budget in (0.0, 10.0, 40.0):
        limit = UtilityBudget(budget, _Energy(), xv, yv)
        scale, loss = calibrate_noise(GaussianNoise, limit, torch.Generator().manual_seed(0))
        assert loss <= budget
        scales.append(scale)
    assert scales == sorted(scales) and scales[-1] > scales[0]


@pytest.mark.parametrize("noise", [GaussianNoise, LaplaceNoise])
def test_calibrate_finds_the_largest_scale_at_the_target_on_one_fixed_draw(noise):
    x = torch.zeros(64, *SHAPE)

    def utility(noisy):  # falls as the noise grows: 1 at no noise, 0 when its RMS reaches 1
        return 1.0 - float(noisy.square().mean().sqrt().clamp(max=1.0))

    scale, value = noise.calibrate(x, utility, 0.5, generator=torch.Generator().manual_seed(3))
    again = noise.calibrate(x, utility, 0.5, generator=torch.Generator().manual_seed(3))

    assert value >= 0.5 and value == pytest.approx(0.5, abs=0.01)  # the largest scale, not any
    assert again == (scale, value)  # one fixed draw: the same answer from the same generator
    rms = float(noise.unit_noise(x, generator=torch.Generator().manual_seed(3)).square().mean().sqrt())
    assert scale * rms == pytest.approx(0.5, abs=0.01)


def test_a_baseline_objective_sees_one_class_whatever_the_labels():
    from scl.pipelines.bench_privacy import _ClassFree
    from scl.pipelines.stages import PrivacyObjective

    method = Cloak(SHAPE)
    x, y = _data(16)
    method.start(x)
    with torch.no_grad():
        method.layer.gains.fill_(0.5)  # some of x in: the term is not 0
        h, dist = method.sample_with_distribution(x)
    free = _ClassFree("within", num_classes=2, image_shape=SHAPE)
    value = free.term(x, y, h, dist)[0]
    assert torch.equal(value, free.term(x, 1 - y, h, dist)[0])
    assert torch.allclose(value, PrivacyObjective("within", num_classes=2, image_shape=SHAPE).term(
        x, torch.zeros_like(y), h, dist)[0])
    # with the labels it would measure only what h carries beyond them: less, here
    assert float(PrivacyObjective("within", num_classes=2, image_shape=SHAPE).term(x, y, h, dist)[0]) < float(value)
