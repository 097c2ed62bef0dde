"""The cipher stream: noise nobody can regenerate, from AES-256-CTR keystream.

Noise an attacker can regenerate can be subtracted from a release. A linear generator such as
torch's MT19937 gives its whole state away in a few thousand outputs, and a receiver who knows one
input (and the layer, white-box) can read those outputs back from a release. scl therefore draws
inference noise from a counter-mode cipher: AES-256 in CTR mode through ``cryptography``
(OpenSSL), keyed with 256 bits from ``os.urandom``. Without the key, its keystream cannot be told
apart from random bytes, whatever an attacker has seen of it.

* **The key**: :func:`process_stream` makes one per process from ``os.urandom(32)``, and a new one
  in a forked child (a child never replays its parent's noise).
* **Counters**: every draw reserves a range of 16-byte counter blocks from its stream, under a
  lock, so no two draws share keystream. The keystream at block ``c`` depends on the key and ``c``
  only (that is CTR mode), so a large draw is split into pieces filled on several threads (OpenSSL
  runs without the GIL) and gives the same bytes whatever the thread count.
* **Floats**, written here because no library turns keystream into floats: a uniform in [0, 1) is
  the low 24 bits of a 32-bit keystream word times 2^-24, exactly as torch makes a float32 uniform
  (53 of 64 bits for float64); never 1.0. A standard normal is Box-Muller on pairs of uniforms:
  ``sqrt(-2 log(1 - u1)) * (cos, sin)(2 pi u2)``, ``1 - u1`` in (0, 1] so the log is finite; the
  first half of a draw's words give ``u1``, the second half ``u2``. The keystream is written into
  the output array itself and converted there, in steps of :data:`CHUNK` values with numpy's
  vectorised ufuncs (the steps write disjoint memory, so threads do not change the values).

This file imports numpy and ``cryptography`` only, neither torch nor the rest of scl: a device
without torch can use it, or copy it alone, to fill the ``noise`` input of an exported ONNX model
(:func:`standard_normal`, :func:`uniform`, :func:`draw`). :mod:`scl.random` fills torch tensors
through it (``uniform_into``/``standard_normal_into`` on a numpy view of the tensor): the same key
and counter give the same values in torch and on a device.

Example::

    from scl.cipher import CipherStream, standard_normal
    eps = standard_normal((8, 16, 16, 16))          # the process stream: fresh, never repeated
    CipherStream(key, counter=0).uniform((4,))      # an explicit key and counter: reproducible
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_Error: type[ValueError]
try:  # inside scl, scl's own error type; this file copied alone onto a device raises ValueError
    from scl.errors import ConfigError

    _Error = ConfigError
except ImportError:
    _Error = ValueError

ALGORITHM = "AES-256-CTR"
KEY_SOURCE = "os.urandom, 256 bits, per process, renewed after fork"
KEY_BYTES = 32
BLOCK_BYTES = 16  # one CTR counter block
COUNTER_LIMIT = 1 << 128  # the counter block is 128 bits; past it the keystream would repeat
# Bytes per encryptor call and per thread task: large enough that the per-call cost (a new
# encryptor, ~2 us) vanishes, small enough that a 4 MB draw still splits over a few threads.
PIECE_BYTES = 1 << 20
_ZEROS = memoryview(bytes(PIECE_BYTES))  # encrypting zeros gives the keystream itself
# Each thread of a split draw takes at least this much keystream. Measured on the 2-core machine of
# benchmarks/results.md, a 4 MB draw interleaved with convolutions took 0.68-0.76x torch.randn's
# time with its keystream split over 2 threads and 0.63-0.70x on one (the handoff, and torch's
# intra-op threads still spinning, cost more than the second core gave); at 16-64 MB the two were
# equal. Machines with more free cores gain from the split on large draws.
THREAD_BYTES = 8 << 20
# Floats per conversion step: the step's buffers stay in a core's cache, and numpy's per-call cost
# stays small beside the arithmetic.
CHUNK = 1 << 16
UNIFORM_BITS = {np.dtype(np.float32): 24, np.dtype(np.float64): 53}
FLOAT_DTYPES = ("float16", "float32", "float64")


def library() -> str:
    """The cipher's implementation: ``"cryptography X.Y.Z (OpenSSL ...)"``."""
    import cryptography
    from cryptography.hazmat.backends.openssl import backend

    return f"cryptography {cryptography.__version__} ({backend.openssl_version_text()})"


class CipherStream:
    """An AES-256-CTR keystream: ``key`` (32 bytes) and the next counter block to hand out.

    ``CipherStream(os.urandom(32))`` is unpredictable; the same key and counter give the same
    stream, for tests and for checking a device's implementation. Use :func:`process_stream` for
    noise: it holds the process's own key. Thread-safe: each draw reserves its own counter range.
    """

    algorithm = ALGORITHM

    def __init__(self, key: bytes, counter: int = 0) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            got = f"{len(key)} bytes" if isinstance(key, (bytes, bytearray)) else type(key).__name__
            raise _Error(f"key must be {KEY_BYTES} bytes (AES-256), e.g. os.urandom(32), but got {got}")
        _check_counter(counter, 0)
        self._aes = algorithms.AES(bytes(key))
        self._next = counter
        self._lock = threading.Lock()

    @classmethod
    def from_os(cls) -> CipherStream:
        """A stream with a fresh 256-bit key from ``os.urandom``, at counter 0."""
        return cls(os.urandom(KEY_BYTES))

    @property
    def counter(self) -> int:
        """The next counter block a draw will take (the number of blocks drawn, from counter 0)."""
        return self._next

    def reserve(self, nbytes: int) -> int:
        """Take the counter blocks for ``nbytes`` of keystream; return the first one."""
        blocks = -(-nbytes // BLOCK_BYTES)
        with self._lock:
            start = self._next
            _check_counter(start, blocks)
            self._next = start + blocks
        return start

    def keystream_into(self, buffer: Any, counter: int, *, threads: int = 1) -> None:
        """Write the keystream from counter block ``counter`` into ``buffer`` (writable,
        contiguous), without reserving it. Pieces of :data:`PIECE_BYTES` go to up to ``threads``
        threads; the bytes are the same for any thread count."""
        view = memoryview(buffer).cast("B")
        _check_counter(counter, -(-len(view) // BLOCK_BYTES))
        pieces = -(-len(view) // PIECE_BYTES)

        def fill(i: int) -> None:
            part = view[i * PIECE_BYTES : (i + 1) * PIECE_BYTES]
            block = (counter + i * (PIECE_BYTES // BLOCK_BYTES)).to_bytes(BLOCK_BYTES, "big")
            Cipher(self._aes, modes.CTR(block)).encryptor().update_into(_ZEROS[: len(part)], part)

        _parallel(pieces, fill, threads)

    def fill(self, buffer: Any, *, threads: int = 1) -> int:
        """Reserve keystream for ``buffer``, write it there; return the first counter block."""
        start = self.reserve(memoryview(buffer).nbytes)
        self.keystream_into(buffer, start, threads=threads)
        return start

    # -- numpy floats ----------------------------------------------------------------------------
    def uniform(self, shape: Sequence[int], dtype: Any = np.float32, *, threads: int | None = None) -> np.ndarray:
        """Uniform samples in [0, 1) of ``shape`` and ``dtype`` (float16, float32, float64)."""
        dtype, work, n = _request(shape, dtype)
        u = self.uniform_into(np.empty(n, dtype=work), threads=threads)
        if dtype != work:  # rounding to a narrower float could reach 1: keep the values below it
            u = np.minimum(u.astype(dtype), np.nextafter(dtype.type(1), dtype.type(0)))
        return u.reshape(tuple(shape))

    def standard_normal(
        self, shape: Sequence[int], dtype: Any = np.float32, *, threads: int | None = None
    ) -> np.ndarray:
        """Standard normal samples of ``shape`` and ``dtype`` (float16, float32, float64)."""
        dtype, work, n = _request(shape, dtype)
        z = self.standard_normal_into(np.empty(n + n % 2, dtype=work), threads=threads)  # pairs
        return z[:n].astype(dtype, copy=False).reshape(tuple(shape))

    def uniform_into(self, out: np.ndarray, *, threads: int | None = None) -> np.ndarray:
        """Fill ``out`` (1-D, contiguous, float32 or float64) with uniforms in [0, 1); return it."""
        words, bits, workers = self._keystream_words(out, threads)
        scale = out.dtype.type(2.0**-bits)

        def convert(i: int) -> None:
            part = slice(i * CHUNK, (i + 1) * CHUNK)
            tmp = _scratch(out.dtype, 0)[: len(out[part])]
            np.bitwise_and(words[part], words.dtype.type((1 << bits) - 1), out=words[part])
            np.copyto(tmp, words[part], casting="unsafe")  # exact: fewer than 2^bits
            np.multiply(tmp, scale, out=out[part])

        _parallel(-(-len(out) // CHUNK), convert, workers)
        return out

    def standard_normal_into(self, out: np.ndarray, *, threads: int | None = None) -> np.ndarray:
        """Fill ``out`` (1-D, contiguous, float32 or float64, even length) with standard normals by
        Box-Muller: element ``j`` of the first half and ``j`` of the second half are one pair, made
        from the words at the same places. Return ``out``."""
        if len(out) % 2:
            raise _Error(f"Box-Muller fills pairs: out needs an even length, but got {len(out)}")
        words, bits, workers = self._keystream_words(out, threads)
        half = len(out) // 2
        mask, one = words.dtype.type((1 << bits) - 1), words.dtype.type(1)
        to_unit, to_angle = out.dtype.type(2.0**-bits), out.dtype.type(2 * math.pi * 2.0**-bits)
        minus_two = out.dtype.type(-2)

        def convert(i: int) -> None:
            first = slice(i * CHUNK, min((i + 1) * CHUNK, half))
            second = slice(half + first.start, half + first.stop)
            radius = _scratch(out.dtype, 0)[: first.stop - first.start]
            angle = _scratch(out.dtype, 1)[: len(radius)]
            np.bitwise_and(words[first], mask, out=words[first])
            np.add(words[first], one, out=words[first])
            np.copyto(radius, words[first], casting="unsafe")  # exact: at most 2^bits
            radius *= to_unit  # 1 - u1, in (0, 1]: a finite log
            np.log(radius, out=radius)
            radius *= minus_two
            np.sqrt(radius, out=radius)
            np.bitwise_and(words[second], mask, out=words[second])
            np.copyto(angle, words[second], casting="unsafe")
            angle *= to_angle  # 2 pi u2
            np.cos(angle, out=out[first])  # the words there are spent
            np.sin(angle, out=out[second])
            out[first] *= radius
            out[second] *= radius

        _parallel(-(-half // CHUNK), convert, workers)
        return out

    def _keystream_words(self, out: np.ndarray, threads: int | None) -> tuple[np.ndarray, int, int]:
        """Keystream written straight into ``out``'s memory, viewed as words; the bits a float
        takes from each word; how many threads the draw uses."""
        if (
            not isinstance(out, np.ndarray)
            or out.ndim != 1
            or not out.flags.c_contiguous
            or not out.flags.writeable
            or out.dtype not in UNIFORM_BITS
        ):
            got = f"{out.dtype} array of shape {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise _Error(f"out must be a writable 1-D contiguous float32 or float64 numpy array, but got {got}")
        workers = threads_for(out.nbytes, _default_threads() if threads is None else threads)
        words = out.view(np.uint64 if out.dtype == np.float64 else np.uint32)
        self.fill(words, threads=workers)
        return words, UNIFORM_BITS[out.dtype], workers

    def __repr__(self) -> str:
        return f"CipherStream({ALGORITHM}, counter={self._next})"


_SCRATCH = threading.local()


def _scratch(dtype: np.dtype, slot: int) -> np.ndarray:
    """A float buffer of :data:`CHUNK` elements, one per thread, dtype and slot, kept for reuse."""
    key = (dtype.str, slot)
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    if key not in buffers:
        buffers[key] = np.empty(CHUNK, dtype=dtype)
    return buffers[key]


def _parallel(tasks: int, work: Callable[[int], None], threads: int) -> None:
    """``work(0) ... work(tasks - 1)`` on up to ``threads`` threads (the caller's among them);
    the tasks write disjoint memory, so the result does not depend on the thread count."""
    workers = min(max(1, threads), tasks)
    if workers <= 1:
        for i in range(tasks):
            work(i)
        return
    order = itertools.count()  # each thread takes the next task (next() is atomic under the GIL)

    def drain() -> None:
        while (i := next(order)) < tasks:
            work(i)

    pool = _pool(workers - 1)
    futures = [pool.submit(drain) for _ in range(workers - 1)]
    drain()
    for future in futures:
        future.result()


def _request(shape: Sequence[int], dtype: Any) -> tuple[np.dtype, np.dtype, int]:
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        dims = (-1,)
    if any(d < 0 for d in dims) or isinstance(shape, (str, bytes)):
        raise _Error(f"shape must be a sequence of non-negative ints, but got {shape!r}")
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:
        raise _Error(f"dtype must be one of {list(FLOAT_DTYPES)}, but got {dtype!r}") from exc
    if dtype.name not in FLOAT_DTYPES:
        raise _Error(f"dtype must be one of {list(FLOAT_DTYPES)}, but got {dtype.name}")
    work = dtype if dtype in UNIFORM_BITS else np.dtype(np.float32)
    return dtype, work, math.prod(dims)


def _check_counter(counter: Any, blocks: int) -> None:
    if isinstance(counter, bool) or not isinstance(counter, int) or counter < 0:
        raise _Error(f"counter must be a non-negative int (a CTR block index), but got {counter!r}")
    if counter + blocks > COUNTER_LIMIT:
        raise _Error(
            f"the stream's counter would pass 2^128 (at block {counter}, {blocks} more blocks), where its "
            "keystream would repeat; use a new key"
        )


def threads_for(nbytes: int, available: int) -> int:
    """How many of ``available`` threads a draw of ``nbytes`` of keystream uses: one per
    :data:`THREAD_BYTES` (the result never depends on it, only the speed)."""
    return max(1, min(available, nbytes // THREAD_BYTES))


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# -- the process's stream and a small thread pool, both renewed in a forked child ---------------

_STATE_LOCK = threading.Lock()
_STREAM: CipherStream | None = None
_STREAM_PID: int | None = None
_POOL: ThreadPoolExecutor | None = None
_POOL_KEY: tuple[int, int] | None = None


def process_stream() -> CipherStream:
    """The stream of the calling process: a key from ``os.urandom(32)``, made on first use and
    again after a fork (the child gets its own key; its parent's stream is never replayed)."""
    global _STREAM, _STREAM_PID
    stream, pid = _STREAM, os.getpid()
    if stream is not None and _STREAM_PID == pid:
        return stream
    with _STATE_LOCK:
        if _STREAM is None or _STREAM_PID != pid:
            _STREAM, _STREAM_PID = CipherStream.from_os(), pid
        return _STREAM


def _after_fork_in_child() -> None:
    # A lock held by another thread at the fork stays held in the child: replace the locks, and
    # drop the parent's stream (the pid check in process_stream covers forks outside Python).
    global _STATE_LOCK, _STREAM, _STREAM_PID, _POOL, _POOL_KEY
    _STATE_LOCK = threading.Lock()
    _STREAM, _STREAM_PID, _POOL, _POOL_KEY = None, None, None, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of at least ``workers`` threads. It only grows, and an old pool is left to finish
    what it holds, so a draw on another thread never submits to a pool that was shut down."""
    global _POOL, _POOL_KEY
    pid = os.getpid()
    with _STATE_LOCK:
        if _POOL is None or _POOL_KEY is None or _POOL_KEY[0] != pid or _POOL_KEY[1] < workers:
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scl-cipher")
            _POOL_KEY = (pid, workers)
        return _POOL


def uniform(shape: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
    """Fresh uniform samples in [0, 1) from the process's cipher stream (numpy only)."""
    return process_stream().uniform(shape, dtype)


def standard_normal(shape: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
    """Fresh standard normal samples from the process's cipher stream (numpy only)."""
    return process_stream().standard_normal(shape, dtype)


def draw(distribution: str, shape: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
    """Fresh standard noise of an exported model's ``scl_noise_distribution``:
    ``"standard_normal"`` or ``"uniform"``."""
    if distribution == "standard_normal":
        return standard_normal(shape, dtype)
    if distribution == "uniform":
        return uniform(shape, dtype)
    raise _Error(f"distribution must be 'standard_normal' or 'uniform', but got {distribution!r}")
