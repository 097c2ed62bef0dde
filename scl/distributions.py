"""Noise distributions a stochastic conditional layer can parameterise.

A registry maps a name to a :class:`NoiseDistribution` subclass. Each one knows how many parameter
maps it needs (``num_params``), turns the raw maps a layer computes into a
:class:`torch.distributions.Distribution` (``build``), and draws a sample from it with an explicit
generator (``sample``), reparameterised in training mode so gradients reach the layer's kernels.

Torch's own ``rsample`` always uses the global generator; scl needs a source it chooses (the
cipher stream at inference, see :mod:`scl.random`), which is why sampling is written here with the
same formulas torch uses.

==============  =========================  ====================================================
name            parameter maps             sample
==============  =========================  ====================================================
``gaussian``    loc, scale                 ``loc + scale * eps``, ``scale = softplus(raw) + min_scale``
``laplace``     loc, scale                 inverse-CDF of a uniform, same scale transform
``binomial``    logits                     fraction of successes in ``total_count`` trials, in
                                           [0, 1]; relaxed Bernoulli trials at ``temperature`` in
                                           training, exact trials (``u < p``) in eval
``multinomial`` K logits, K values         per element one of K learnable values (see below)
==============  =========================  ====================================================

Multinomial semantics: for every output element the layer computes K logits and K values (both
from the class's parameter networks, so they are learnable and class-conditional). A sample picks
one of the K values with probabilities ``softmax(logits)``. In training the choice is a straight-
through Gumbel-softmax: the forward value is exactly one of the K values, the gradient flows to the
logits through the relaxed one-hot and to the chosen value directly. In eval the choice is an exact
categorical draw.

Every sample is made from standard noise (``noise_kind``: N(0, 1) or uniform in [0, 1), shaped like
``noise_like(dist)``) by ``from_noise``, the one place each formula lives: ``sample`` draws that
noise from the chosen source (``generator``: a ``torch.Generator``, a
:class:`scl.random.CipherStream`, or ``None`` for torch's global generator), and ``scl export``
makes it an input of the ONNX model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.distributions import Binomial, Categorical, Distribution, Laplace, Normal, constraints

from scl.errors import ConfigError
from scl.random import CipherStream, rand, randn

_REGISTRY: dict[str, type[NoiseDistribution]] = {}


def register(cls: type[NoiseDistribution]) -> type[NoiseDistribution]:
    """Class decorator: add a distribution to the registry under ``cls.name`` (never overwrite)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{cls.__name__} needs a non-empty string attribute 'name'")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ConfigError(
            f"a distribution named {name!r} is already registered ({_REGISTRY[name].__name__}); "
            "choose another name"
        )
    _REGISTRY[name] = cls
    return cls


def names() -> list[str]:
    """The registered distribution names, sorted."""
    return sorted(_REGISTRY)


def get(spec: str | NoiseDistribution, **options: Any) -> NoiseDistribution:
    """Build a distribution from its name (with options) or return an instance unchanged."""
    if isinstance(spec, NoiseDistribution):
        if options:
            raise ConfigError("options can only be given with a distribution name, not an instance")
        return spec
    if not isinstance(spec, str) or spec not in _REGISTRY:
        raise ConfigError(
            f"unknown distribution {spec!r}; expected one of {names()} "
            "(or register your own with scl.distributions.register)"
        )
    return _REGISTRY[spec](**options)


def _open(u: Tensor) -> Tensor:
    """Uniform noise in [0, 1) moved into the open interval (0, 1) (logs of it stay finite)."""
    eps = torch.finfo(u.dtype).eps
    return u.clamp(eps, 1.0 - eps)


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a positive number, but got {value!r}")
    return float(value)


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, but got {value!r}")
    return value


class NoiseDistribution:
    """Base class of the registry's entries (subclass it and decorate with :func:`register`)."""

    name: ClassVar[str] = ""
    #: the standard noise samples are made from: "standard_normal" (N(0, 1)) or "uniform" ([0, 1))
    noise_kind: ClassVar[str] = "uniform"
    #: where the batch dimension of the layer's output sits in the noise's shape
    noise_batch_axis: ClassVar[int] = 0

    @property
    def num_params(self) -> int:
        """How many parameter maps the layer must compute."""
        return len(self.param_names)

    @property
    def param_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def initial_bias(self) -> list[float]:
        """The initial bias of each parameter map (e.g. the raw scale that gives a small noise)."""
        return [0.0] * self.num_params

    def build(self, params: Sequence[Tensor]) -> Distribution:
        """Turn the raw parameter maps into a distribution over the layer's output."""
        raise NotImplementedError

    def noise_like(self, dist: Distribution) -> Tensor:
        """A tensor (maybe an expanded view) with the shape, dtype and device of the standard noise
        a sample of ``dist`` is made from (of kind ``noise_kind``; its batch dim at
        ``noise_batch_axis``)."""
        raise NotImplementedError

    def from_noise(self, dist: Distribution, noise: Tensor, *, training: bool) -> Tensor:
        """The sample of ``dist`` made from standard ``noise`` shaped like :meth:`noise_like`;
        reparameterised (differentiable) when ``training``. Deterministic given ``noise``: this
        is the one place each distribution's sampling formula lives (``scl export`` feeds the
        noise as a model input)."""
        raise NotImplementedError

    def sample(
        self, dist: Distribution, *, training: bool, generator: torch.Generator | CipherStream | None = None
    ) -> Tensor:
        """One sample of ``dist``; reparameterised (differentiable) when ``training``: standard
        noise drawn from ``generator`` (a ``torch.Generator``, a :class:`~scl.random.CipherStream`,
        or ``None``: torch's global generator), then :meth:`from_noise`."""
        like = self.noise_like(dist)
        draw = randn if self.noise_kind == "standard_normal" else rand
        noise = draw(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        return self.from_noise(dist, noise, training=training)

    def sample_joint(
        self, joint: Tensor, dim: int, *, training: bool, generator: torch.Generator | CipherStream | None = None
    ) -> tuple[Tensor, Distribution]:
        """``(sample, distribution)`` from the raw maps stacked along ``dim``: ``num_params`` equal
        slices in ``param_names`` order, as a layer computes them in one op. The same as
        ``build`` then ``sample``; a subclass may fuse the two (see :class:`Gaussian`)."""
        params = list(joint.split(joint.shape[dim] // self.num_params, dim))
        dist = self.build(params)
        return self.sample(dist, training=training, generator=generator), dist

    def config(self) -> dict[str, Any]:
        """Constructor options, for checkpoints."""
        return {}

    def check_params(self, params: Sequence[Tensor]) -> None:
        if len(params) != self.num_params:
            raise ConfigError(
                f"the {self.name} distribution needs {self.num_params} parameter maps "
                f"({', '.join(self.param_names)}), but got {len(params)}"
            )

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{self.name}({options})"


class _LocationScale(NoiseDistribution):
    """Shared scale transform of the gaussian and laplace entries."""

    def __init__(self, *, min_scale: float = 1e-3, init_scale: float = 0.5) -> None:
        self.min_scale = _positive_float("min_scale", min_scale)
        self.init_scale = _positive_float("init_scale", init_scale)
        if self.init_scale <= self.min_scale:
            raise ConfigError(
                f"init_scale must be larger than min_scale ({self.min_scale}), but got {init_scale}"
            )

    @property
    def param_names(self) -> tuple[str, ...]:
        return ("loc", "scale")

    def initial_bias(self) -> list[float]:
        target = self.init_scale - self.min_scale
        return [0.0, target + math.log(-math.expm1(-target))]  # softplus^-1(target)

    def noise_like(self, dist: Distribution) -> Tensor:
        return dist.loc  # type: ignore[attr-defined]

    def scale(self, raw: Tensor) -> Tensor:
        if torch.is_grad_enabled() and raw.requires_grad:
            return F.softplus(raw) + self.min_scale
        return F.softplus(raw).add_(self.min_scale)

    def config(self) -> dict[str, Any]:
        return {"min_scale": self.min_scale, "init_scale": self.init_scale}


@register
class Gaussian(_LocationScale):
    """Normal noise: ``h = loc + scale * eps``, ``eps ~ N(0, 1)``."""

    name = "gaussian"

    def build(self, params: Sequence[Tensor]) -> Normal:
        self.check_params(params)
        return Normal(params[0], self.scale(params[1]), validate_args=False)

    noise_kind = "standard_normal"

    def from_noise(self, dist: Distribution, noise: Tensor, *, training: bool) -> Tensor:
        return torch.addcmul(dist.loc, dist.scale, noise)  # type: ignore[attr-defined]

    def sample_joint(
        self, joint: Tensor, dim: int, *, training: bool, generator: torch.Generator | CipherStream | None = None
    ) -> tuple[Tensor, Normal]:
        n = joint.shape[dim] // 2
        loc, raw = joint.narrow(dim, 0, n), joint.narrow(dim, n, n)
        eps = randn(loc.shape, generator=generator, device=joint.device, dtype=joint.dtype)
        if torch.is_grad_enabled() and joint.requires_grad:
            sample, scale = _GaussianSample.apply(joint, eps, dim, self.min_scale)
            return sample, Normal(loc, scale, validate_args=False)
        dist = Normal(loc, F.softplus(raw).add_(self.min_scale), validate_args=False)
        return self.from_noise(dist, eps, training=training), dist


class _GaussianSample(torch.autograd.Function):
    """``loc + (softplus(raw) + min_scale) * eps`` and the scale, from ``joint = [loc | raw]``.

    Written by hand because autograd's version makes four passes over the output in backward plus
    a concatenation of the two gradients; this one writes the gradient of ``joint`` in place, in
    two passes. Returns ``(sample, scale)``; the scale is differentiable too (privacy losses use
    it).
    """

    @staticmethod
    def forward(ctx: Any, joint: Tensor, eps: Tensor, dim: int, min_scale: float) -> tuple[Tensor, Tensor]:
        n = joint.shape[dim] // 2
        loc, raw = joint.narrow(dim, 0, n), joint.narrow(dim, n, n)
        scale = F.softplus(raw).add_(min_scale)
        ctx.save_for_backward(joint, eps)
        ctx.dim = dim
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None, not zeros
        return torch.addcmul(loc, scale, eps), scale

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_sample: Tensor | None, grad_scale: Tensor | None) -> tuple[Tensor | None, ...]:
        joint, eps = ctx.saved_tensors
        n = joint.shape[ctx.dim] // 2
        grad = torch.empty_like(joint)
        grad_loc, grad_raw = grad.narrow(ctx.dim, 0, n), grad.narrow(ctx.dim, n, n)
        if grad_sample is None:
            grad_loc.zero_()
            through_scale = grad_scale if grad_scale is not None else torch.zeros_like(eps)
        else:
            grad_loc.copy_(grad_sample)
            through_scale = grad_sample * eps
            if grad_scale is not None:
                through_scale.add_(grad_scale)
        torch.mul(through_scale, torch.sigmoid(joint.narrow(ctx.dim, n, n)), out=grad_raw)  # softplus' = sigmoid
        return grad, None, None, None


@register
class LaplaceNoise(_LocationScale):
    """Laplace noise (heavier tails at the same scale), sampled by the inverse CDF."""

    name = "laplace"

    def build(self, params: Sequence[Tensor]) -> Laplace:
        self.check_params(params)
        return Laplace(params[0], self.scale(params[1]), validate_args=False)

    def from_noise(self, dist: Distribution, noise: Tensor, *, training: bool) -> Tensor:
        loc, scale = dist.loc, dist.scale  # type: ignore[attr-defined]
        return loc + scale * laplace_from_uniform(noise)


def laplace_from_uniform(uniform: Tensor) -> Tensor:
    """Standard Laplace(0, 1) draws from uniforms in [0, 1), by the inverse CDF:
    ``-sign(u) * log1p(-|u|)`` with ``u = 2 * uniform - 1``, the uniform first kept inside the open
    interval. scl's one Laplace formula: the layers' samples, plain Laplace noise and the ONNX graph
    all make theirs with it. Written by hand because ``torch.distributions.Laplace`` samples from
    torch's generator only, not from given uniforms (the cipher stream's, or one fixed draw)."""
    u = _open(uniform) * 2.0 - 1.0
    return -u.sign() * torch.log1p(-u.abs())


class BinomialFraction(Distribution):
    """The fraction ``k / n`` of successes in ``n`` Bernoulli trials, a value in [0, 1].

    ``log_prob`` and the moments are those of ``Binomial(n, logits) / n``.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, total_count: int, logits: Tensor) -> None:
        self.total_count = total_count
        self.logits = logits
        self._binomial = Binomial(total_count=total_count, logits=logits, validate_args=False)
        super().__init__(batch_shape=logits.shape, validate_args=False)

    @property
    def probs(self) -> Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def variance(self) -> Tensor:
        p = self.probs
        return p * (1 - p) / self.total_count

    def sample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        return self._binomial.sample(torch.Size(sample_shape)) / self.total_count

    def log_prob(self, value: Tensor) -> Tensor:
        return self._binomial.log_prob(torch.round(value * self.total_count))


@register
class BinomialNoise(NoiseDistribution):
    """Binomial noise: the fraction of ``total_count`` trials that succeed, with ``p = sigmoid``."""

    name = "binomial"

    def __init__(self, *, total_count: int = 8, temperature: float = 0.5) -> None:
        self.total_count = _positive_int("total_count", total_count)
        self.temperature = _positive_float("temperature", temperature)

    @property
    def param_names(self) -> tuple[str, ...]:
        return ("logits",)

    def build(self, params: Sequence[Tensor]) -> BinomialFraction:
        self.check_params(params)
        return BinomialFraction(self.total_count, params[0])

    noise_batch_axis = 1  # one uniform per trial: [total_count, *output]

    def noise_like(self, dist: Distribution) -> Tensor:
        logits: Tensor = dist.logits  # type: ignore[attr-defined]
        return logits.unsqueeze(0).expand(self.total_count, *logits.shape)

    def from_noise(self, dist: Distribution, noise: Tensor, *, training: bool) -> Tensor:
        logits: Tensor = dist.logits  # type: ignore[attr-defined]
        if training:  # relaxed Bernoulli trials (Maddison et al., 2017): differentiable
            u = _open(noise)
            logistic = torch.log(u) - torch.log1p(-u)
            return torch.sigmoid((logits + logistic) / self.temperature).mean(0)
        # exact trials: P(u < p) = p for u uniform in [0, 1)
        probs = torch.sigmoid(logits.detach())
        return (noise < probs).to(probs.dtype).mean(0)

    def config(self) -> dict[str, Any]:
        return {"total_count": self.total_count, "temperature": self.temperature}


class Choice(Distribution):
    """Per element, one of K values ``values[..., k]`` with probabilities ``softmax(logits)``."""

    arg_constraints = {"logits": constraints.real, "values": constraints.real}
    support = constraints.real
    has_rsample = False

    def __init__(self, logits: Tensor, values: Tensor) -> None:
        self.logits = logits
        self.values = values
        self._categorical = Categorical(logits=logits, validate_args=False)
        super().__init__(batch_shape=logits.shape[:-1], validate_args=False)

    @property
    def probs(self) -> Tensor:
        return self._categorical.probs

    @property
    def mean(self) -> Tensor:
        return (self.probs * self.values).sum(-1)

    @property
    def variance(self) -> Tensor:
        return (self.probs * self.values.square()).sum(-1) - self.mean.square()

    def sample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        index = self._categorical.sample(torch.Size(sample_shape))
        values = self.values.expand(*index.shape, self.values.shape[-1])
        return values.gather(-1, index.unsqueeze(-1)).squeeze(-1)

    def log_prob(self, value: Tensor) -> Tensor:
        hit = torch.isclose(value.unsqueeze(-1), self.values, rtol=1e-5, atol=1e-6)
        log_p = torch.log_softmax(self.logits, -1).masked_fill(~hit, float("-inf"))
        return torch.logsumexp(log_p, -1)


@register
class MultinomialNoise(NoiseDistribution):
    """Per element a choice among ``num_choices`` learnable values (see the module docstring)."""

    name = "multinomial"

    def __init__(self, *, num_choices: int = 4, temperature: float = 0.5) -> None:
        self.num_choices = _positive_int("num_choices", num_choices, minimum=2)
        self.temperature = _positive_float("temperature", temperature)

    @property
    def param_names(self) -> tuple[str, ...]:
        k = range(self.num_choices)
        return tuple(f"logit{i}" for i in k) + tuple(f"value{i}" for i in k)

    def initial_bias(self) -> list[float]:
        # Spread the initial values over [-1, 1] so the choices start distinct.
        k = self.num_choices
        return [0.0] * k + [-1.0 + 2.0 * i / (k - 1) for i in range(k)]

    def build(self, params: Sequence[Tensor]) -> Choice:
        self.check_params(params)
        k = self.num_choices
        logits = torch.stack(list(params[:k]), -1)
        values = torch.stack(list(params[k:]), -1)
        return Choice(logits, values)

    def noise_like(self, dist: Distribution) -> Tensor:
        return dist.logits  # type: ignore[attr-defined]

    def from_noise(self, dist: Distribution, noise: Tensor, *, training: bool) -> Tensor:
        logits: Tensor = dist.logits  # type: ignore[attr-defined]
        values: Tensor = dist.values  # type: ignore[attr-defined]
        gumbel = -torch.log(-torch.log(_open(noise)))
        if training:  # straight-through Gumbel-softmax (Jang et al., 2017)
            soft = torch.softmax((logits + gumbel) / self.temperature, -1)
            hard = F.one_hot(soft.argmax(-1), self.num_choices).to(soft.dtype)
            return ((hard - soft.detach() + soft) * values).sum(-1)
        index = (logits.detach() + gumbel).argmax(-1, keepdim=True)  # Gumbel-max: exact draw
        return values.detach().gather(-1, index).squeeze(-1)

    def config(self) -> dict[str, Any]:
        return {"num_choices": self.num_choices, "temperature": self.temperature}
