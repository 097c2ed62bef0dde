"""Small task networks used by the pipelines (and usable on their own)."""

from scl.models.classifier import SmallCNN

__all__ = ["SmallCNN"]
