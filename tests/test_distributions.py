"""Seeded statistical tests of the noise distributions, directly and through the layers."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Binomial, Laplace, Normal

import scl
from scl import distributions as D

N = 200_000  # elements per statistical test
C = 3


def raw_scale(scale: float, min_scale: float = 1e-3) -> float:
    """The raw parameter that the softplus scale transform maps to ``scale``."""
    target = scale - min_scale
    return target + math.log(-math.expm1(-target))


def additive_layer(distribution: str, maps: list[float], cls: int = 1, **options: Any) -> Any:
    """An additive layer over N/4 elements whose class ``cls`` has constant parameter maps."""
    layer = scl.StochasticConditionalAdditive(
        (N // 4,), C, distribution=distribution, distribution_options=options or None
    )
    with torch.no_grad():
        layer.offsets.zero_()
        for p, value in enumerate(maps):
            layer.offsets[cls, p] = value
    return layer


def sample_class(layer: Any, cls: int = 1, *, training: bool = False) -> Tensor:
    x = torch.zeros(4, N // 4)
    layer.train(training)
    with scl.deterministic(0):
        return layer(x, torch.full((4,), cls)).flatten()


# --------------------------------------------------------------------------- registry


def test_names_are_sorted_and_include_the_four_builtins() -> None:
    names = D.names()
    assert names == sorted(names)
    assert {"binomial", "gaussian", "laplace", "multinomial"} <= set(names)


def test_get_builds_a_named_distribution_with_options() -> None:
    noise = D.get("binomial", total_count=5)
    assert noise.name == "binomial" and noise.total_count == 5 and noise.num_params == 1
    assert D.get("gaussian").num_params == 2
    assert D.get("multinomial", num_choices=3).num_params == 6


def test_get_refuses_an_unknown_name() -> None:
    with pytest.raises(scl.SCLError, match=r"unknown distribution 'poisson'; expected one of"):
        D.get("poisson")


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("gaussian", {"min_scale": -1.0}, "min_scale must be a positive number, but got -1.0"),
        ("laplace", {"init_scale": 1e-4}, "init_scale must be larger than min_scale"),
        ("binomial", {"total_count": 0}, "total_count must be an integer >= 1, but got 0"),
        ("binomial", {"temperature": 0}, "temperature must be a positive number, but got 0"),
        ("multinomial", {"num_choices": 1}, "num_choices must be an integer >= 2, but got 1"),
    ],
)
def test_invalid_options_are_refused(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(scl.SCLError, match=message):
        D.get(name, **options)


def test_registering_another_class_under_a_taken_name_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(D, "_REGISTRY", dict(D._REGISTRY))

    class Impostor(D.Gaussian):
        name = "gaussian"

    with pytest.raises(scl.SCLError, match="a distribution named 'gaussian' is already registered"):
        D.register(Impostor)
    assert D.get("gaussian").__class__ is D.Gaussian


def test_a_registered_distribution_can_be_used_by_a_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    # prepare
    monkeypatch.setattr(D, "_REGISTRY", dict(D._REGISTRY))

    @D.register
    class Shift(D.NoiseDistribution):
        name = "shift"

        @property
        def param_names(self) -> tuple[str, ...]:
            return ("loc",)

        def build(self, params: Any) -> Normal:
            return Normal(params[0], torch.ones_like(params[0]))

        def sample(self, dist: Any, *, training: bool, generator: Any = None) -> Tensor:
            return dist.loc + 1.0

    layer = scl.StochasticConditionalLinear(3, 2, C, distribution="shift")
    x = torch.randn(4, 3)

    # execute
    out = layer(x, torch.tensor([0, 1, 2, 0]))

    # assert
    assert "shift" in D.names()
    expected = torch.cat(layer.params(x, torch.tensor([0, 1, 2, 0])), -1) + 1.0
    torch.testing.assert_close(out, expected)


# --------------------------------------------------------------------------- initial state


@pytest.mark.parametrize("distribution", ["gaussian", "laplace"])
@pytest.mark.parametrize("init_scale", [0.5, 0.2])
def test_a_fresh_layer_starts_at_zero_mean_and_the_initial_scale(
    distribution: str, init_scale: float
) -> None:
    layer = scl.StochasticConditionalConv2d(
        2, 3, 3, C, distribution=distribution, distribution_options={"init_scale": init_scale}
    )
    dist = layer.distribution(torch.zeros(2, 2, 5, 5), torch.tensor([0, 2]))
    torch.testing.assert_close(dist.loc, torch.zeros_like(dist.loc))
    torch.testing.assert_close(dist.scale, torch.full_like(dist.scale, init_scale))


# --------------------------------------------------------------------------- gaussian / laplace


@pytest.mark.parametrize("via", ["distribution", "layer"])
def test_gaussian_samples_have_the_loc_and_scale(via: str) -> None:
    # prepare
    loc, scale = 1.5, 0.7
    noise = D.get("gaussian")

    # execute
    if via == "distribution":
        dist = noise.build([torch.full((N,), loc), torch.full((N,), raw_scale(scale))])
        gen = torch.Generator().manual_seed(0)
        sample = noise.sample(dist, training=False, generator=gen)
    else:
        sample = sample_class(additive_layer("gaussian", [loc, raw_scale(scale)]))

    # assert: 5 standard errors
    assert abs(sample.mean().item() - loc) < 5 * scale / math.sqrt(N)
    assert abs(sample.std().item() - scale) < 5 * scale / math.sqrt(2 * N)
    # mean absolute deviation of a normal: sqrt(2/pi) * scale
    mad = (sample - loc).abs().mean().item()
    assert abs(mad - math.sqrt(2 / math.pi) * scale) < 0.005


@pytest.mark.parametrize("via", ["distribution", "layer"])
def test_laplace_samples_have_the_loc_and_scale(via: str) -> None:
    # prepare
    loc, scale = -0.5, 0.4
    noise = D.get("laplace")

    # execute
    if via == "distribution":
        dist = noise.build([torch.full((N,), loc), torch.full((N,), raw_scale(scale))])
        sample = noise.sample(dist, training=False, generator=torch.Generator().manual_seed(0))
    else:
        sample = sample_class(additive_layer("laplace", [loc, raw_scale(scale)]))

    # assert: std = sqrt(2) * scale, mean absolute deviation = scale
    std = math.sqrt(2) * scale
    assert abs(sample.mean().item() - loc) < 5 * std / math.sqrt(N)
    assert abs(sample.std().item() - std) < 0.01 * std
    assert abs((sample - loc).abs().mean().item() - scale) < 0.005
    assert abs(sample.median().item() - loc) < 0.01


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
def test_location_scale_training_samples_are_reparameterised(name: str) -> None:
    # prepare
    noise = D.get(name)
    loc = torch.zeros(1000, requires_grad=True)
    raw = torch.zeros(1000, requires_grad=True)

    # execute
    sample = noise.sample(
        noise.build([loc, raw]), training=True, generator=torch.Generator().manual_seed(0)
    )
    sample.sum().backward()

    # assert: d h / d loc = 1 and d h / d raw = eps * softplus'(raw) = eps * sigmoid(raw)
    eps = (sample.detach() - loc.detach()) / noise.scale(raw.detach())
    torch.testing.assert_close(loc.grad, torch.ones(1000))
    torch.testing.assert_close(raw.grad, eps * torch.sigmoid(raw.detach()))


@pytest.mark.parametrize("name,torch_cls", [("gaussian", Normal), ("laplace", Laplace)])
def test_location_scale_log_prob_uses_the_transformed_scale(name: str, torch_cls: Any) -> None:
    noise = D.get(name, min_scale=0.01, init_scale=0.5)
    loc, raw, value = torch.randn(50), torch.randn(50), torch.randn(50)
    expected = torch_cls(loc, F.softplus(raw) + 0.01).log_prob(value)
    torch.testing.assert_close(noise.build([loc, raw]).log_prob(value), expected)


# --------------------------------------------------------------------------- binomial


@pytest.mark.parametrize("total_count", [8, 5])
@pytest.mark.parametrize("via", ["distribution", "layer"])
def test_binomial_eval_samples_are_fractions_with_the_binomial_moments(
    via: str, total_count: int
) -> None:
    # prepare
    p = 0.3
    logit = math.log(p / (1 - p))
    noise = D.get("binomial", total_count=total_count)

    # execute
    if via == "distribution":
        dist = noise.build([torch.full((N,), logit)])
        sample = noise.sample(dist, training=False, generator=torch.Generator().manual_seed(0))
    else:
        sample = sample_class(additive_layer("binomial", [logit], total_count=total_count))

    # assert
    counts = sample * total_count
    torch.testing.assert_close(counts, counts.round(), rtol=0, atol=1e-5)
    assert sample.min() >= 0 and sample.max() <= 1
    var = p * (1 - p) / total_count
    assert abs(sample.mean().item() - p) < 5 * math.sqrt(var / N)
    assert abs(sample.var().item() - var) < 0.02 * var


def test_binomial_training_samples_are_differentiable_and_in_the_unit_interval() -> None:
    # prepare
    layer = scl.StochasticConditionalConv2d(2, 3, 3, C, distribution="binomial").train()
    x = torch.randn(4, 2, 6, 6)

    # execute
    out = layer(x, torch.tensor([0, 1, 2, 0]))
    out.sum().backward()

    # assert
    assert out.requires_grad
    assert out.min() >= 0 and out.max() <= 1
    assert torch.count_nonzero(layer.weight.grad) > 0
    assert torch.count_nonzero(layer.bias.grad) > 0


def test_binomial_fraction_log_prob_is_the_binomial_pmf() -> None:
    # prepare
    n, logits = 6, torch.randn(20)
    dist = D.get("binomial", total_count=n).build([logits])
    ks = torch.arange(n + 1, dtype=torch.float32)

    # execute
    log_prob = torch.stack([dist.log_prob(torch.full_like(logits, k / n)) for k in ks])

    # assert
    expected = torch.stack(
        [Binomial(n, logits=logits).log_prob(torch.full_like(logits, k)) for k in ks]
    )
    torch.testing.assert_close(log_prob, expected)
    torch.testing.assert_close(log_prob.exp().sum(0), torch.ones(20))
    torch.testing.assert_close(dist.mean, torch.sigmoid(logits))
    torch.testing.assert_close(dist.variance, torch.sigmoid(logits) * torch.sigmoid(-logits) / n)


# --------------------------------------------------------------------------- multinomial

LOGITS = [0.5, -1.0, 0.0, 1.0]
VALUES = [-2.0, -0.5, 1.0, 3.0]


@pytest.mark.parametrize("via", ["distribution", "layer"])
def test_multinomial_eval_samples_take_the_values_with_softmax_frequencies(via: str) -> None:
    # prepare
    noise = D.get("multinomial")
    if via == "distribution":
        maps = [torch.full((N,), v) for v in LOGITS + VALUES]
        dist = noise.build(maps)
        sample = noise.sample(dist, training=False, generator=torch.Generator().manual_seed(0))
    else:
        sample = sample_class(additive_layer("multinomial", LOGITS + VALUES))

    # execute
    values = torch.tensor(VALUES)
    frequencies = torch.stack([(sample == v).float().mean() for v in values])

    # assert
    assert set(sample.unique().tolist()) <= set(VALUES)
    probs = torch.softmax(torch.tensor(LOGITS), 0)
    tolerance = 5 * torch.sqrt(probs * (1 - probs) / N)
    assert torch.all((frequencies - probs).abs() < tolerance), (frequencies, probs)


def test_multinomial_training_samples_are_exact_values_with_gradients() -> None:
    # prepare
    noise = D.get("multinomial")
    k, n = noise.num_choices, 5000
    logits = torch.randn(n, k, requires_grad=True)
    values = torch.randn(n, k, requires_grad=True)
    dist = noise.build([*logits.unbind(-1), *values.unbind(-1)])

    # execute
    sample = noise.sample(dist, training=True, generator=torch.Generator().manual_seed(0))
    (sample * torch.randn(n)).sum().backward()

    # assert: forward is exactly one value per element; gradients reach logits and values
    assert (sample.detach().unsqueeze(-1) == values.detach()).any(-1).all()
    assert torch.count_nonzero(logits.grad) > 0
    assert torch.count_nonzero(values.grad) > 0
    # only the chosen value of an element gets a gradient (straight through)
    assert torch.all(torch.count_nonzero(values.grad, dim=-1) <= 1)


def test_multinomial_training_through_a_layer_reaches_both_heads() -> None:
    # prepare
    layer = scl.StochasticConditionalLinear(4, 6, C, distribution="multinomial").train()
    x = torch.randn(32, 4)

    # execute
    out = layer(x, torch.randint(0, C, (32,)))
    (out * torch.randn_like(out)).sum().backward()

    # assert: rows [0, 4*6) are the logit heads, the rest the value heads
    grad = layer.weight.grad
    assert torch.count_nonzero(grad[:, : 4 * 6]) > 0
    assert torch.count_nonzero(grad[:, 4 * 6 :]) > 0


def test_multinomial_eval_through_a_layer_returns_one_of_the_values_per_element() -> None:
    # prepare
    layer = scl.StochasticConditionalLinear(4, 6, C, distribution="multinomial").eval()
    x, labels = torch.randn(8, 4), torch.randint(0, C, (8,))

    # execute
    sample = layer(x, labels)
    dist = layer.distribution(x, labels)

    # assert
    assert (sample.unsqueeze(-1) == dist.values).any(-1).all()


def test_choice_log_prob_mean_and_variance() -> None:
    # prepare
    logits = torch.tensor([LOGITS])
    values = torch.tensor([VALUES])
    dist = D.get("multinomial").build([*logits.unbind(-1), *values.unbind(-1)])
    probs = torch.softmax(logits, -1)

    # execute
    log_probs = torch.stack([dist.log_prob(torch.tensor([v])) for v in VALUES], -1)

    # assert
    torch.testing.assert_close(log_probs, probs.log())
    assert dist.log_prob(torch.tensor([0.123])).item() == -math.inf
    torch.testing.assert_close(dist.mean, (probs * values).sum(-1))
    torch.testing.assert_close(dist.variance, (probs * values**2).sum(-1) - dist.mean**2)


# --------------------------------------------------------------------------- consistency


@pytest.mark.parametrize("distribution", D.names())
def test_log_prob_of_the_layers_own_eval_samples_is_finite(distribution: str) -> None:
    # prepare
    layer = scl.StochasticConditionalConv2d(2, 3, 3, C, distribution=distribution).eval()
    x, labels = torch.randn(4, 2, 6, 6), torch.tensor([0, 1, 2, 1])

    # execute
    with scl.deterministic(0):
        sample = layer(x, labels)
    log_prob = layer.distribution(x, labels).log_prob(sample)

    # assert
    assert log_prob.shape == sample.shape
    assert torch.isfinite(log_prob).all()


@pytest.mark.parametrize("distribution", D.names())
def test_eval_samples_average_to_the_distribution_mean(distribution: str) -> None:
    # prepare: one input repeated, so each output element is sampled many times
    layer = scl.StochasticConditionalLinear(3, 2, C, distribution=distribution).eval()
    x = torch.randn(1, 3).expand(20_000, 3)
    labels = torch.full((20_000,), 1)

    # execute
    with scl.deterministic(0):
        sample = layer(x, labels)
    dist = layer.distribution(x[:1], labels[:1])

    # assert
    std = dist.variance.sqrt()[0]
    error = (sample.mean(0) - dist.mean[0]).abs()
    assert torch.all(error < 5 * std / math.sqrt(20_000) + 1e-6), (error, std)


# -- the fused Gaussian sample of conv/linear layers equals build + sample ----------------------
def _reference(layer: Any, x: Tensor, pi: Any, seed: int) -> tuple[Tensor, Any]:
    dist = layer.distribution(x, pi)
    sample = layer.noise.sample(dist, training=True, generator=torch.Generator().manual_seed(seed))
    return sample, dist


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("loss_uses", ["sample", "sample+scale+loc", "scale only"])
def test_fused_gaussian_sample_matches_build_then_sample(kind: str, loss_uses: str) -> None:
    torch.manual_seed(0)
    if kind == "conv":
        layer = scl.StochasticConditionalConv2d(2, 3, 3, C, padding=1)
        x = torch.randn(4, 2, 6, 6, requires_grad=True)
    else:
        layer = scl.StochasticConditionalLinear(5, 3, C)
        x = torch.randn(4, 5, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 2])

    def loss_of(sample: Tensor, dist: Any) -> Tensor:
        weights = torch.linspace(-1, 1, sample.numel()).view_as(sample)
        if loss_uses == "sample":
            return (sample * weights).sum()
        if loss_uses == "scale only":
            return dist.scale.log().mean()
        return (sample * weights).sum() - dist.scale.log().mean() + dist.loc.square().mean()

    grads = []
    for fused in (True, False):
        layer.zero_grad()
        x.grad = None
        if fused:
            sample, dist = layer.sample_with_distribution(x, labels, generator=torch.Generator().manual_seed(5))
        else:
            sample, dist = _reference(layer, x, labels, 5)
        loss_of(sample, dist).backward()
        grads.append(
            (sample.detach(), dist.scale.detach(), x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone())
        )
    for got, expected in zip(*grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_fused_gaussian_sample_without_grad_matches_build_then_sample() -> None:
    layer = scl.StochasticConditionalConv2d(2, 3, 3, C, padding=1).eval()
    x, labels = torch.randn(4, 2, 6, 6), torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        got, dist = layer.sample_with_distribution(x, labels, generator=torch.Generator().manual_seed(5))
        expected, ref = _reference(layer, x, labels, 5)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(dist.scale, ref.scale)


# -- one formula per distribution: sample() is from_noise() of standard noise ------------------
@pytest.mark.parametrize("name", ["gaussian", "laplace", "binomial", "multinomial"])
@pytest.mark.parametrize("training", [True, False])
def test_sample_is_from_noise_of_standard_noise_from_the_same_generator(name: str, training: bool) -> None:
    noise = D.get(name)
    torch.manual_seed(0)
    params = [torch.randn(2, 3, 4, 4) for _ in range(noise.num_params)]
    dist = noise.build(params)
    like = noise.noise_like(dist)
    draw = torch.randn if noise.noise_kind == "standard_normal" else torch.rand
    standard = draw(like.shape, generator=torch.Generator().manual_seed(3))
    expected = noise.from_noise(dist, standard, training=training)
    got = noise.sample(dist, training=training, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert got.shape == (2, 3, 4, 4)
    assert like.shape[noise.noise_batch_axis] == 2  # the batch sits where the export puts it


def test_binomial_eval_counts_the_trials_whose_uniform_is_below_p() -> None:
    noise = D.get("binomial", total_count=4)
    dist = noise.build([torch.zeros(1, 3)])  # p = 0.5 everywhere
    u = torch.tensor([[[0.1, 0.6, 0.49]], [[0.2, 0.7, 0.51]], [[0.3, 0.8, 0.0]], [[0.4, 0.9, 0.99]]])
    got = noise.from_noise(dist, u, training=False)
    torch.testing.assert_close(got, torch.tensor([[1.0, 0.0, 0.5]]))


def test_from_noise_does_not_modify_the_noise_it_is_given() -> None:
    for name in ["gaussian", "laplace", "binomial", "multinomial"]:
        noise = D.get(name)
        dist = noise.build([torch.randn(2, 5) for _ in range(noise.num_params)])
        standard = torch.rand(noise.noise_like(dist).shape)
        before = standard.clone()
        with torch.no_grad():
            noise.from_noise(dist, standard, training=False)
        assert torch.equal(standard, before), name
