"""Where the noise comes from.

Noise that an attacker can regenerate can be subtracted, so in eval mode scl draws noise from a
generator seeded from OS entropy (``os.urandom``), never from the global torch seed: two processes
that both call ``torch.manual_seed(0)`` still draw different inference noise.

Order of precedence for a layer's noise:

1. an explicit ``generator=`` argument;
2. the generator of an enclosing ``with scl.deterministic(seed):`` block (reproducible runs for
   experiments and tests);
3. in training mode, torch's global generator (so ``torch.manual_seed`` makes training
   reproducible);
4. in eval mode, a per-device generator seeded from OS entropy.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

import torch

_DETERMINISTIC: contextvars.ContextVar[dict[str, torch.Generator] | None] = contextvars.ContextVar(
    "scl_deterministic", default=None
)
_DETERMINISTIC_SEED: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "scl_deterministic_seed", default=None
)
_ENTROPY: dict[str, torch.Generator] = {}
_ENTROPY_PID: int | None = None


def _device_key(device: torch.device) -> str:
    return f"{device.type}:{device.index}" if device.index is not None else device.type


def _new_generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def entropy_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for ``device`` seeded from OS entropy (re-seeded after a fork)."""
    global _ENTROPY_PID
    device = torch.device(device)
    if _ENTROPY_PID != os.getpid():  # a forked child must not share its parent's stream
        _ENTROPY.clear()
        _ENTROPY_PID = os.getpid()
    key = _device_key(device)
    if key not in _ENTROPY:
        _ENTROPY[key] = _new_generator(device, int.from_bytes(os.urandom(8), "little") >> 1)
    return _ENTROPY[key]


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Make every scl layer's noise reproducible inside the block, in train and eval mode.

    Example::

        with scl.deterministic(0):
            h = layer(x, pi)   # the same h in every process
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        from scl.errors import ConfigError

        raise ConfigError(f"seed must be an int, but got {seed!r} of type {type(seed).__name__}")
    token = _DETERMINISTIC.set({})
    seed_token = _DETERMINISTIC_SEED.set(seed)
    try:
        yield
    finally:
        _DETERMINISTIC.reset(token)
        _DETERMINISTIC_SEED.reset(seed_token)


def noise_generator(
    device: torch.device, *, training: bool, generator: torch.Generator | None = None
) -> torch.Generator | None:
    """The generator a layer must draw from now (``None`` means torch's global generator)."""
    if generator is not None:
        return generator
    generators = _DETERMINISTIC.get()
    if generators is not None:
        key = _device_key(device)
        if key not in generators:
            seed = _DETERMINISTIC_SEED.get()
            generators[key] = _new_generator(device, 0 if seed is None else seed)
        return generators[key]
    if training:
        return None
    return entropy_generator(device)
