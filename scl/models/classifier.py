"""A small CNN classifier: the task network N of ``scl demo``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from scl.io import register_module
from scl.validation import check_tensor


@register_module
class SmallCNN(nn.Module):
    """Conv(32) -> Conv(32) -> pool -> Conv(64) -> pool -> 2x2 average -> Linear.

    ``forward(x: Tensor[B, in_channels, H, W]) -> Tensor[B, num_classes]`` (logits). Works at any
    image size of at least 8x8.
    """

    def __init__(self, in_channels: int, num_classes: int, *, width: int = 32) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.width = in_channels, num_classes, width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * width, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, "x", ndim=4, channels=self.in_channels, finite=False)
        return self.head(self.features(x))

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "width": self.width}
