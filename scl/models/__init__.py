"""Small task networks used by the pipelines (and usable on their own)."""

from scl.models.classifier import SmallCNN
from scl.models.detector import CenterNet
from scl.models.prelayers import ResidualPreLayers

__all__ = ["CenterNet", "ResidualPreLayers", "SmallCNN"]
