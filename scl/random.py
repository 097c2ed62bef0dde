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
import itertools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import torch
from torch import Tensor

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


# -- drawing large noise tensors on several threads ---------------------------------------------
#
# Torch's CPU samplers (``normal_``, ``uniform_``) run on one thread: for a 1M-element layer output
# drawing the noise takes longer than the convolution that computes its parameters. No library
# offers a parallel CPU sampler for torch tensors, so scl splits a large draw into fixed-size
# chunks, seeds one generator per chunk from the caller's generator and fills the chunks on a
# small thread pool (torch releases the GIL inside the fill). The chunk size is fixed, so the
# result depends on the caller's generator only, not on the number of threads. Tensors below two
# chunks, and tensors on other devices (whose samplers are already parallel), are drawn directly.

CHUNK_ELEMENTS = 1 << 18
_POOL: ThreadPoolExecutor | None = None
_POOL_KEY: tuple[int, int] | None = None
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_KEY
    key = (os.getpid(), workers)  # a forked child has no pool threads: build its own
    with _POOL_LOCK:
        if _POOL_KEY != key:
            if _POOL is not None and _POOL_KEY is not None and _POOL_KEY[0] == os.getpid():
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scl-noise")
            _POOL_KEY = key
        return cast(ThreadPoolExecutor, _POOL)  # built above whenever the key changed


def _fill(out: Tensor, kind: str, generator: torch.Generator | None) -> Tensor:
    def fill(t: Tensor, g: torch.Generator | None) -> None:
        if kind == "normal":
            t.normal_(generator=g)
        else:
            t.uniform_(generator=g)

    n = out.numel()
    if out.device.type != "cpu" or n < 2 * CHUNK_ELEMENTS:
        fill(out, generator)
        return out
    flat = out.view(-1)
    chunks = -(-n // CHUNK_ELEMENTS)
    seeds = torch.randint(0, 2**63 - 1, (chunks,), generator=generator).tolist()

    def work(i: int) -> None:
        g = torch.Generator()
        g.manual_seed(seeds[i])
        fill(flat[i * CHUNK_ELEMENTS : (i + 1) * CHUNK_ELEMENTS], g)

    counter = itertools.count()  # each thread takes the next chunk (next() is atomic under the GIL)
    # Inference mode is per thread, and a tensor made under it can only be filled under it.
    inference = torch.is_inference_mode_enabled()

    def drain() -> None:
        with torch.inference_mode(inference):
            while (i := next(counter)) < chunks:
                work(i)

    helpers = min(torch.get_num_threads(), chunks) - 1
    futures = [] if helpers < 1 else [_pool(helpers).submit(drain) for _ in range(helpers)]
    drain()  # the calling thread works too
    for future in futures:
        future.result()
    return out


def randn(
    shape: torch.Size | tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Standard normal samples of ``shape``, as ``torch.randn`` (large CPU draws use several threads)."""
    return _fill(torch.empty(shape, device=device, dtype=dtype), "normal", generator)


def rand(
    shape: torch.Size | tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Uniform samples in [0, 1) of ``shape``, as ``torch.rand`` (large CPU draws use several threads)."""
    return _fill(torch.empty(shape, device=device, dtype=dtype), "uniform", generator)
