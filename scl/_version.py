"""The package's version, in one place: the project metadata (``pyproject.toml``) reads it from
here, and checkpoints record it."""

__version__ = "0.1.0"
