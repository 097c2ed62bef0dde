"""Where the noise comes from.

Noise that an attacker can regenerate can be subtracted, so in eval mode scl draws noise from a
cryptographic stream: AES-256-CTR keystream through ``cryptography`` (OpenSSL), keyed with 256
bits from ``os.urandom`` per process and renewed after a fork (:mod:`scl.cipher`). It never
depends on the global torch seed: two processes that both call ``torch.manual_seed(0)`` still draw
different inference noise. A ``torch.Generator`` (MT19937) is never used for it: its outputs are
linear in its state, which a few thousand of them give away, and a receiver who knows one input
and the layer reads those outputs back from a release. :func:`describe` says which source is in
use, for a security review.

Order of precedence for a layer's noise:

1. an explicit ``generator=`` argument (a ``torch.Generator``, or a :class:`CipherStream` with a
   key and counter of your own);
2. the generator of an enclosing ``with scl.deterministic(seed):`` block (reproducible runs for
   experiments and tests, never for releases);
3. in training mode, torch's global generator (so ``torch.manual_seed`` makes training
   reproducible);
4. in eval mode, the process's cipher stream (:func:`stream`).

:func:`randn` and :func:`rand` draw from either kind of source. From a cipher stream, uniforms are
the low 24 bits of each 32-bit keystream word times 2^-24 (as torch makes float32 uniforms; 53 of
64 bits for float64) and normals are Box-Muller on pairs of them, made in place in the tensor's
memory by :mod:`scl.cipher`, which a device uses too: the same key and counter give the same
values in torch and on the device.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import torch
from torch import Tensor

from scl.cipher import ALGORITHM, KEY_SOURCE, CipherStream, library, process_stream
from scl.errors import ConfigError

__all__ = ["CHUNK_ELEMENTS", "CipherStream", "deterministic", "describe", "noise_generator", "rand", "randn",
           "stream", "summary"]

_DETERMINISTIC: contextvars.ContextVar[dict[str, torch.Generator] | None] = contextvars.ContextVar(
    "scl_deterministic", default=None
)
_DETERMINISTIC_SEED: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "scl_deterministic_seed", default=None
)


def _device_key(device: torch.device) -> str:
    return f"{device.type}:{device.index}" if device.index is not None else device.type


def _new_generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def stream() -> CipherStream:
    """The process's cipher stream (AES-256-CTR, a key from ``os.urandom``, renewed after a fork):
    the eval-mode noise source. Pass it as ``generator=`` to :func:`randn`/:func:`rand`."""
    return process_stream()


def describe() -> dict[str, Any]:
    """Where eval-mode noise comes from now, for a security review.

    Returns a dict: ``source`` (``"cipher stream"``, or ``"torch.Generator (scl.deterministic)"``
    inside :func:`deterministic`), ``algorithm`` (``"AES-256-CTR"``), ``library`` (the
    ``cryptography`` and OpenSSL versions), ``key`` (where the key comes from), ``deterministic``
    and ``seed`` (the current context), ``uniforms`` and ``normals`` (how keystream becomes
    floats), ``training`` (the training-mode source), ``process`` (the pid the key belongs to) and
    ``blocks_drawn`` (16-byte counter blocks this process's stream has handed out).
    """
    deterministic_now = _DETERMINISTIC.get() is not None
    own = process_stream()
    return {
        "source": "torch.Generator (scl.deterministic)" if deterministic_now else "cipher stream",
        "algorithm": ALGORITHM,
        "library": library(),
        "key": KEY_SOURCE,
        "deterministic": deterministic_now,
        "seed": _DETERMINISTIC_SEED.get() if deterministic_now else None,
        "uniforms": "low 24 bits of each 32-bit keystream word x 2^-24 in [0, 1) (53 of 64 bits for float64)",
        "normals": "Box-Muller on pairs of uniforms",
        "training": "torch's global generator (torch.manual_seed), unless scl.deterministic or generator=",
        "process": os.getpid(),
        "blocks_drawn": own.counter,
    }


def summary(description: dict[str, Any] | None = None) -> str:
    """:func:`describe` in one line, for logs and the command line."""
    d = describe() if description is None else description
    if d.get("deterministic"):
        return (
            f"noise: seeded torch.Generator inside scl.deterministic({d.get('seed')}): reproducible, "
            "NOT private (anyone with the seed regenerates it)"
        )
    return f"noise: {d.get('algorithm')} cipher stream, {d.get('library')}; key: {d.get('key')}"


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Make every scl layer's noise reproducible inside the block, in train and eval mode.

    Example::

        with scl.deterministic(0):
            h = layer(x, pi)   # the same h in every process
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an int, but got {seed!r} of type {type(seed).__name__}")
    token = _DETERMINISTIC.set({})
    seed_token = _DETERMINISTIC_SEED.set(seed)
    try:
        yield
    finally:
        _DETERMINISTIC.reset(token)
        _DETERMINISTIC_SEED.reset(seed_token)


def noise_generator(
    device: torch.device, *, training: bool, generator: torch.Generator | CipherStream | None = None
) -> torch.Generator | CipherStream | None:
    """The source a layer must draw from now: a ``torch.Generator``, a :class:`CipherStream`, or
    ``None`` for torch's global generator (training only)."""
    if generator is not None:
        if not isinstance(generator, (torch.Generator, CipherStream)):
            raise ConfigError(
                "generator must be a torch.Generator (reproducible), an scl.random.CipherStream or None "
                f"(the default: the cipher stream in eval mode), but got {type(generator).__name__}"
            )
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
    return process_stream()


# -- torch's sampler, with a torch.Generator, on several threads --------------------------------
#
# (training, scl.deterministic and generator=; eval-mode noise comes from the cipher stream below.)
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


# -- the cipher stream as torch tensors --------------------------------------------------------
#
# The keystream is written straight into the output's memory and turned into floats there by
# scl.cipher's numpy conversion, through a numpy view of the tensor (no copy): one implementation
# for torch and for the device helper, so both give the same values from the same key and counter.
# numpy rather than torch ops, measured on the 2-core benchmark machine: numpy's float32 log, cos
# and sin on one thread beat torch's on two (0.13/0.21/0.21 ms against 0.26/0.32/0.30 ms for 0.5M
# values), and the conversion, in cache-sized steps on scl's own threads, never waits at one of
# torch's intra-op barriers for a thread that another process has descheduled (under a second
# process's load, a 1M draw made of a dozen torch ops took 100 ms where numpy took 3 ms). On another
# device the floats are made on the CPU and copied there.

_WORK_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def _cipher_fill(out: Tensor, kind: str, source: CipherStream) -> Tensor:
    if not out.dtype.is_floating_point:
        raise ConfigError(f"noise must have a floating-point dtype, but got {out.dtype}")
    n = out.numel()
    work = out.dtype if out.dtype in _WORK_DTYPES else torch.float32
    count = n + n % 2 if kind == "normal" else n  # Box-Muller makes pairs
    direct = out.device.type == "cpu" and out.dtype == work and count == n and out.is_contiguous()
    buf = out.view(-1) if direct else torch.empty(count, dtype=work)
    threads = torch.get_num_threads()
    if kind == "normal":
        source.standard_normal_into(buf.numpy(), threads=threads)
    else:
        source.uniform_into(buf.numpy(), threads=threads)
    if not direct:
        values = buf[:n].view(out.shape)
        if kind == "uniform" and out.dtype != work:  # rounding to a narrower float could reach 1
            values = values.to(out.dtype).clamp_(max=1.0 - torch.finfo(out.dtype).eps / 2)
        out.copy_(values)
    return out


def _draw(
    shape: torch.Size | tuple[int, ...],
    kind: str,
    generator: torch.Generator | CipherStream | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> Tensor:
    out = torch.empty(shape, device=device, dtype=dtype)
    if isinstance(generator, CipherStream):
        return _cipher_fill(out, kind, generator)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(
            "generator must be a torch.Generator, an scl.random.CipherStream (e.g. scl.random.stream()) or "
            f"None (torch's global generator), but got {type(generator).__name__}"
        )
    return _fill(out, kind, generator)


def randn(
    shape: torch.Size | tuple[int, ...],
    *,
    generator: torch.Generator | CipherStream | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Standard normal samples of ``shape``, as ``torch.randn``.

    ``generator``: a :class:`CipherStream` (``scl.random.stream()``, the eval-mode source) draws
    from its keystream; a ``torch.Generator``, or ``None`` for torch's global generator, draws with
    torch's sampler, on several threads for large CPU draws.
    """
    return _draw(shape, "normal", generator, device, dtype)


def rand(
    shape: torch.Size | tuple[int, ...],
    *,
    generator: torch.Generator | CipherStream | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Uniform samples in [0, 1) of ``shape``, as ``torch.rand`` (``generator`` as in :func:`randn`)."""
    return _draw(shape, "uniform", generator, device, dtype)
