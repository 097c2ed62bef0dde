"""Errors raised by scl.

Every error says what was wrong, what was expected and the value that was received, e.g.
``labels must be in [0, 4), but got 7 at index 3``.
"""

from __future__ import annotations


class SCLError(ValueError):
    """Base class of every error scl raises on bad input or configuration."""


class ShapeError(SCLError):
    """A tensor has the wrong rank, size, channel count or dtype."""


class LabelError(SCLError):
    """Labels (or boxes) are out of range, of the wrong length or of the wrong type."""


class ConfigError(SCLError):
    """An unknown name (distribution, placement, merge, ...) or an invalid option."""


class CheckpointError(SCLError):
    """A checkpoint cannot be read: not safetensors, unknown class, or mismatched tensors."""


class DataError(SCLError):
    """A user data set cannot be used: missing keys, mismatched lengths, unreadable files."""
