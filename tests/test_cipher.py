"""The cipher stream (scl.cipher): keystream, counters, floats, and the numpy-only device helper."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import scl
from scl import cipher
from scl.cipher import PIECE_BYTES, CipherStream

KEY = bytes(range(32))  # a fixed key: the tests' seed


def reference_keystream(key: bytes, counter: int, nbytes: int) -> bytes:
    """One AES-256-CTR encryptor over the whole range: what every split must reproduce."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter.to_bytes(16, "big"))).encryptor()
    return encryptor.update(bytes(nbytes))


def ks_statistic(samples: np.ndarray, cdf) -> float:
    """Kolmogorov-Smirnov distance between the samples' empirical CDF and ``cdf``."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    f = cdf(x)
    n = len(x)
    return float(max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max()))


def normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def ks_critical(n: int) -> float:
    return 1.95 / math.sqrt(n)  # alpha = 0.001


# -- keystream and counters ---------------------------------------------------------------------


@pytest.mark.parametrize("counter", [0, 2**32 - 3, 2**64 - 5], ids=["0", "2^32 carry", "2^64 carry"])
def test_same_key_and_counter_give_the_same_stream_whatever_the_thread_count(counter: int) -> None:
    nbytes = 3 * PIECE_BYTES + 77  # four pieces, the last one partial

    fills = []
    for threads in (1, 2, 3, 4):
        buffer = bytearray(nbytes)
        CipherStream(KEY).keystream_into(buffer, counter, threads=threads)
        fills.append(bytes(buffer))

    assert all(fill == fills[0] for fill in fills[1:])
    assert fills[0] == reference_keystream(KEY, counter, nbytes)  # the carry crosses piece borders


def test_another_key_or_counter_gives_another_stream() -> None:
    a, b, c = bytearray(64), bytearray(64), bytearray(64)
    CipherStream(KEY).keystream_into(a, 0)
    CipherStream(KEY).keystream_into(b, 1)
    CipherStream(bytes(32)).keystream_into(c, 0)
    assert a[16:] == b[:48]  # one counter block further on, the same stream
    assert a != b and a != c


def test_draws_reserve_disjoint_counter_ranges_also_from_many_threads() -> None:
    stream = CipherStream(KEY, counter=10)
    assert stream.fill(bytearray(33)) == 10  # 33 bytes take 3 blocks
    assert stream.counter == 13

    starts: list[int] = []
    buffers = [bytearray(16 * 7) for _ in range(16)]

    def draw(buffer: bytearray) -> None:
        starts.append(stream.fill(buffer))

    threads = [threading.Thread(target=draw, args=(b,)) for b in buffers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(starts) == list(range(13, 13 + 16 * 7, 7))  # no overlap, no gap
    assert len({bytes(b) for b in buffers}) == 16
    assert stream.counter == 13 + 16 * 7


def test_bad_keys_and_counters_are_refused() -> None:
    with pytest.raises(scl.ConfigError, match="key must be 32 bytes"):
        CipherStream(b"short")
    with pytest.raises(scl.ConfigError, match="key must be 32 bytes"):
        CipherStream("x" * 32)  # type: ignore[arg-type]
    with pytest.raises(scl.ConfigError, match="counter must be a non-negative int"):
        CipherStream(KEY, counter=-1)
    with pytest.raises(scl.ConfigError, match="would pass 2\\^128"):
        CipherStream(KEY, counter=2**128 - 1).reserve(32)  # the keystream would repeat


def test_the_process_stream_has_its_own_key_and_is_reused() -> None:
    first, again = cipher.process_stream(), cipher.process_stream()
    assert first is again
    ours, fresh = bytearray(32), bytearray(32)
    first.keystream_into(ours, 0)
    CipherStream.from_os().keystream_into(fresh, 0)
    assert ours != fresh and ours != bytearray(reference_keystream(KEY, 0, 32))


def test_threads_for_splits_only_large_draws() -> None:
    assert cipher.threads_for(4 << 20, 2) == 1  # the benchmark's 1M float32: one thread is faster
    assert cipher.threads_for(64 << 20, 2) == 2
    assert cipher.threads_for(64 << 20, 16) == 8
    assert cipher.threads_for(0, 4) == 1


# -- floats: the conversion, exactly; their statistics ----------------------------------------


def test_uniforms_are_24_bits_of_each_word_times_2_to_the_minus_24() -> None:
    n = 1000
    words = np.frombuffer(reference_keystream(KEY, 5, 4 * n), dtype=np.uint32)
    expected = (words & 0xFFFFFF).astype(np.float64) / 2**24

    got = CipherStream(KEY, counter=5).uniform((n,))

    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.astype(np.float64), expected)


def test_float64_uniforms_use_53_bits() -> None:
    n = 1000
    words = np.frombuffer(reference_keystream(KEY, 0, 8 * n), dtype=np.uint64)
    got = CipherStream(KEY).uniform((n,), np.float64)
    np.testing.assert_array_equal(got, (words & np.uint64(2**53 - 1)).astype(np.float64) * 2.0**-53)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_uniforms_are_uniform_in_the_half_open_unit_interval(dtype) -> None:
    drawn = CipherStream(KEY).uniform((200_000,), dtype)
    assert drawn.dtype == dtype
    assert drawn.min() >= 0 and drawn.max() < 1
    u = drawn.astype(np.float64)
    # standard errors: mean 0.00065, std 0.00029
    assert abs(float(u.mean()) - 0.5) < 0.004 and abs(float(u.std()) - 1 / math.sqrt(12)) < 0.002
    assert ks_statistic(u, lambda x: np.clip(x, 0, 1)) < ks_critical(u.size) + (2e-3 if dtype == np.float16 else 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normals_are_standard_normal(dtype) -> None:
    z = CipherStream(KEY).standard_normal((100_001,), dtype)  # odd: the last pair is cut
    assert z.shape == (100_001,) and z.dtype == dtype
    # standard errors: mean 0.0032, std 0.0022
    assert abs(float(z.mean())) < 0.015 and abs(float(z.std()) - 1) < 0.01
    assert abs(float((np.abs(z) > 1.96).mean()) - 0.05) < 0.004  # the tails too
    assert ks_statistic(z, normal_cdf) < ks_critical(z.size)
    half = 50_000
    assert abs(np.corrcoef(z[:half], z[half : 2 * half])[0, 1]) < 0.015  # the two halves of the pairs


def test_the_ks_check_rejects_a_wrong_spread() -> None:
    # the statistics above can fail: 5% too wide is caught at this sample size
    z = CipherStream(KEY).standard_normal((100_000,)) * 1.05
    assert ks_statistic(z, normal_cdf) > ks_critical(z.size)


@pytest.mark.parametrize("n", [4097, 3 * cipher.CHUNK + 5])  # odd; several conversion steps
def test_torch_and_numpy_make_the_same_values_from_the_same_keystream(n: int) -> None:
    for dtype, ndtype in ((torch.float32, np.float32), (torch.float64, np.float64)):
        u = scl.random.rand((n,), generator=CipherStream(KEY, 3), dtype=dtype)
        z = scl.random.randn((n,), generator=CipherStream(KEY, 3), dtype=dtype)
        np.testing.assert_array_equal(u.numpy(), CipherStream(KEY, 3).uniform((n,), ndtype))
        np.testing.assert_array_equal(z.numpy(), CipherStream(KEY, 3).standard_normal((n,), ndtype))


def test_box_muller_pairs_the_two_halves_of_a_draw_whatever_the_thread_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cipher, "THREAD_BYTES", 1)  # split even this small draw over the threads asked for
    n = 2 * (3 * cipher.CHUNK + 10)  # several conversion steps per half
    words = np.frombuffer(reference_keystream(KEY, 0, 4 * n), dtype=np.uint32)
    u1 = ((words[: n // 2] & 0xFFFFFF) + 1).astype(np.float64) / 2**24  # 1 - u, in (0, 1]
    u2 = (words[n // 2 :] & 0xFFFFFF).astype(np.float64) / 2**24
    radius, angle = np.sqrt(-2 * np.log(u1)), 2 * np.pi * u2
    expected = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])

    draws = [CipherStream(KEY).standard_normal_into(np.empty(n, np.float32), threads=t) for t in (1, 2, 3)]

    np.testing.assert_allclose(draws[0], expected, rtol=0, atol=5e-6)  # float32 rounding of the formula
    assert all(np.array_equal(draws[0], d) for d in draws[1:])
    assert cipher._POOL is not None and cipher._POOL_KEY is not None and cipher._POOL_KEY[1] >= 2  # it ran threaded


def test_filling_an_array_in_place_needs_a_writable_contiguous_float_array() -> None:
    stream = CipherStream(KEY)
    with pytest.raises(scl.ConfigError, match="out must be a writable 1-D contiguous float32 or float64"):
        stream.uniform_into(np.empty((2, 3), np.float32))
    with pytest.raises(scl.ConfigError, match="out must be a writable 1-D contiguous float32 or float64"):
        stream.uniform_into(np.empty(8, np.float32)[::2])
    with pytest.raises(scl.ConfigError, match="out needs an even length"):
        stream.standard_normal_into(np.empty(7, np.float32))


def test_bad_shapes_and_dtypes_are_refused() -> None:
    with pytest.raises(scl.ConfigError, match="dtype must be one of"):
        cipher.uniform((3,), np.int32)
    with pytest.raises(scl.ConfigError, match="shape must be a sequence of non-negative ints"):
        cipher.standard_normal((-1, 2))
    with pytest.raises(scl.ConfigError, match="distribution must be 'standard_normal' or 'uniform'"):
        cipher.draw("cauchy", (2,))


# -- the device helper needs neither torch nor the rest of scl ----------------------------------

STANDALONE = textwrap.dedent(
    """
    import importlib.util, sys
    sys.modules["torch"] = None  # importing torch would fail
    sys.modules["scl"] = None  # so would importing anything else of scl
    spec = importlib.util.spec_from_file_location("cipher_copy", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    z = module.draw("standard_normal", (2, 3))
    u = module.uniform((4,))
    print(z.shape, z.dtype, bool((u >= 0).all() and (u < 1).all()))
    try:
        module.CipherStream(b"short")
    except ValueError as exc:
        print(type(exc).__name__)
    """
)


def test_the_cipher_module_runs_alone_without_torch() -> None:
    path = Path(cipher.__file__)
    result = subprocess.run(
        [sys.executable, "-c", STANDALONE, str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["(2, 3) float32 True", "ValueError"]
