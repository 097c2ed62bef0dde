"""The learned baselines of ``scl bench privacy``: Shredder, Cloak and NoPeek, each with scl's
obfuscator interface (``forward(x, labels=None)``, labels ignored: none of them knows a class).

Each is trained like scl's stages, within the same utility budget and by the same dual ascent
(:func:`scl.pipelines.bench_privacy.train_baseline`), on the privacy objective of its paper
(``objective``, a kind of :class:`scl.pipelines.stages.PrivacyObjective`). What each trains is
``modules()``; ``start(x)`` sets its initial state from the training images.

- Shredder (Mireshghallah et al., ASPLOS 2020): additive Laplace noise with a learned location and
  scale per element, one distribution for every input; objective: the noise's magnitude
  (``entropy``: minus the mean log scale).
- Cloak (Mireshghallah et al., WWW 2021): a learned per-element gain, mean and scale, the same for
  every input: scl's :class:`~scl.layers.StochasticConditionalAdditive` with **one** class, trained
  on scl's default objective (``within``, the Gaussian bound on what ``h`` carries about ``x``).
  Beside scl's release it is the ablation of the conditioning on the class.
- NoPeek (Vepakomma et al., 2020): a learned deterministic transform ``h = x + f(x)`` (three 3 x 3
  convolutions, started at the identity); objective: dCor(x, h) over the batch (``dcor`` with one
  class for every image, as each baseline's objective sees it).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from scl.errors import ConfigError
from scl.layers import StochasticConditionalAdditive
from scl.selection import ClassIndex
from scl.validation import check_tensor

__all__ = ["Cloak", "LearnedBaseline", "NoPeek", "Shredder"]


def _image_shape(shape: tuple[int, ...] | list[int]) -> tuple[int, int, int]:
    try:
        dims = tuple(int(s) for s in shape)
    except TypeError as exc:
        raise ConfigError(f"shape must be (C, H, W), but got {shape!r}") from exc
    if len(dims) != 3 or any(s <= 0 for s in dims):
        raise ConfigError(f"shape must be (C, H, W) of positive sizes, but got {shape!r}")
    return dims[0], dims[1], dims[2]


class LearnedBaseline(nn.Module):
    """What the learned baselines share: ``forward(x, labels=None)`` as released at inference,
    ``sample_with_distribution(x, labels=None)`` for training, the objective they are trained on,
    and the modules trained."""

    #: the :class:`scl.pipelines.stages.PrivacyObjective` kind the baseline is trained on
    objective: ClassVar[str]
    #: a few words for tables and logs
    description: ClassVar[str]

    def modules_trained(self) -> list[nn.Module]:
        """The modules whose parameters train (and whose state the budget keeps)."""
        return [self]

    def start(self, x: Tensor) -> None:
        """Set the initial state from the training images ``x`` (default: as built)."""

    def sample_with_distribution(
        self, x: Tensor, labels: Tensor | None = None
    ) -> tuple[Tensor, torch.distributions.Distribution | None]:
        raise NotImplementedError

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.sample_with_distribution(x, labels)[0]


class _OneClassAdditive(LearnedBaseline):
    """scl's additive layer with a single class: the same distribution for every input."""

    def __init__(self, shape: tuple[int, ...] | list[int], *, distribution: str, init_scale: float,
                 learn_gain: bool) -> None:
        super().__init__()
        self.shape = _image_shape(shape)
        self.layer = StochasticConditionalAdditive(
            self.shape, 1, distribution=distribution, distribution_options={"init_scale": float(init_scale)},
            learn_gain=learn_gain,
        )

    def sample_with_distribution(
        self, x: Tensor, labels: Tensor | None = None
    ) -> tuple[Tensor, torch.distributions.Distribution | None]:
        check_tensor(x, "x", ndim=4)
        one = ClassIndex(torch.zeros(x.shape[0], dtype=torch.long, device=x.device), 1)
        return self.layer.sample_with_distribution(x, one)

    def scale(self) -> Tensor:
        """The noise scale of each element, ``Tensor[C, H, W]`` (the same for every input)."""
        probe = torch.zeros(1, *self.shape, device=self.layer.offsets.device)
        one = ClassIndex(torch.zeros(1, dtype=torch.long, device=probe.device), 1)
        with torch.no_grad():
            return self.layer.distribution(probe, one).scale[0]  # type: ignore[attr-defined]


class Shredder(_OneClassAdditive):
    """Shredder: ``h = x + m + b * eps``, ``eps ~ Laplace(0, 1)``, with a learned location ``m`` and
    scale ``b`` per element that do not depend on the input; trained to raise the noise (minus the
    mean log scale) within the budget.

    Args:
        shape: ``(C, H, W)`` of an input.
        init_scale: the initial scale ``b`` (e.g. the pixels' standard deviation).
    """

    objective = "entropy"
    description = "learned additive Laplace noise, one distribution for all inputs"

    def __init__(self, shape: tuple[int, ...] | list[int], *, init_scale: float = 0.3) -> None:
        super().__init__(shape, distribution="laplace", init_scale=init_scale, learn_gain=False)


class Cloak(_OneClassAdditive):
    """Cloak, and the ablation of scl's conditioning: ``h = g * x + m + s * eps`` with a learned gain
    ``g``, mean ``m`` and scale ``s`` per element, the same for every input (scl's additive layer
    with one class), trained on scl's default objective.

    Args:
        shape: ``(C, H, W)`` of an input.
        init_scale: the initial noise scale ``s``.
        start_at: ``"input"`` (``g = 1``, ``m = 0``: the first release is ``x`` plus noise, scl's
            ``layer.start=input``) or ``"mean"`` (``g = 0`` and ``m`` the training images' mean:
            scl's class-mean start with one class, a release that carries nothing of ``x``, from
            which the budget lets ``x`` in where the task needs it). On the digits at a 1-point
            budget the mean start never came within the budget in 71 epochs (10.3 points lost at
            best): with one class that start is one image for every input, which N reads as one
            digit, so ``scl bench privacy`` starts Cloak at the input.
    """

    objective = "within"
    description = "learned per-feature gain, mean and scale without classes (scl with one class)"

    def __init__(self, shape: tuple[int, ...] | list[int], *, init_scale: float = 0.3,
                 start_at: str = "input") -> None:
        super().__init__(shape, distribution="gaussian", init_scale=init_scale, learn_gain=True)
        if start_at not in ("input", "mean"):
            raise ConfigError(f"start_at must be 'input' or 'mean', but got {start_at!r}")
        self.start_at = start_at

    def start(self, x: Tensor) -> None:
        check_tensor(x, "x", ndim=4)
        if x.shape[0] == 0:
            raise ConfigError("Cloak.start needs at least one training image")
        if self.start_at == "input":
            return  # as built: gain 1, mean offset 0
        gains = self.layer.gains
        assert gains is not None  # built with learn_gain=True
        with torch.no_grad():
            gains.zero_()
            self.layer.offsets[0, 0] = x.mean(0)


class NoPeek(LearnedBaseline):
    """NoPeek: a learned deterministic transform ``h = x + f(x)``, ``f`` three 3 x 3 convolutions whose
    last one starts at zero (so the first release is ``x``), trained to lower dCor(x, h) within the
    budget.

    Args:
        channels: the inputs' channels.
        width: hidden channels of ``f``.
    """

    objective = "dcor"  # within one class, i.e. over the whole batch: NoPeek's own term
    description = "learned transform regularised by dCor to the input"

    def __init__(self, channels: int, *, width: int = 16) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ConfigError(f"channels must be a positive int, but got {channels!r}")
        self.channels = channels
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, channels, 3, padding=1),
        )
        last = self.net[-1]
        assert isinstance(last, nn.Conv2d)
        with torch.no_grad():
            last.weight.zero_()
            if last.bias is not None:
                last.bias.zero_()

    def sample_with_distribution(
        self, x: Tensor, labels: Tensor | None = None
    ) -> tuple[Tensor, torch.distributions.Distribution | None]:
        check_tensor(x, "x", ndim=4)
        if x.shape[1] != self.channels:
            raise ConfigError(f"NoPeek was built for {self.channels} channels, but x has {x.shape[1]}")
        return x + self.net(x), None  # deterministic: no distribution
