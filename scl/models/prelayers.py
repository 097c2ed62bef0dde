"""Trainable pre-layers L before the stochastic layer (spec §5.1: ``x -> L -> S -> N``)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from scl.errors import ConfigError
from scl.io import register_module
from scl.validation import check_tensor


@register_module
class ResidualPreLayers(nn.Module):
    """``L(x) = x + conv(relu(conv(x)))``: two 3 x 3 convolutions on a residual path.

    The second convolution starts at zero, so L starts as the identity and a pipeline that adds
    pre-layers starts where it would without them; training moves L only where the objective
    and the task gain from it. The output has the input's shape, so any layer that takes x takes
    L(x).

    Args:
        channels: channels of x (and of L(x)).
        width: hidden channels of the residual path.
    """

    def __init__(self, channels: int, *, width: int = 16) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive int, but got {value!r}")
        self.channels, self.width = channels, width
        last = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)  # type: ignore[arg-type]  # Conv2d has a bias by default
        self.path = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), last)

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, "x", ndim=4, channels=self.channels, finite=False)
        return x + self.path(x)

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "width": self.width}
