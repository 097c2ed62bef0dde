"""The device side of an exported model: fresh noise for its ``noise`` input (:func:`draw_noise`).

This is what runs beside onnxruntime on the data owner's device, which may have no torch: the module
imports numpy only (``onnx`` to read a model file's metadata and :mod:`scl.cipher`, numpy and
``cryptography``, for the noise, each when first needed). It also names the contract between the
exporter and the device: the model's inputs and output and the ``"batch"`` dimension of its
``scl_noise_shape`` metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from scl.errors import ConfigError, ShapeError

INPUT_NAME = "x"
NOISE_NAME = "noise"
OUTPUT_NAME = "h"
BATCH = "batch"  # the symbolic batch dimension, in the graph and in scl_noise_shape
INSTALL_HINT = "pip install 'scl[onnx]'"


def import_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(
            f"exporting to ONNX needs the onnx and onnxruntime packages ({exc}); install them with "
            f"{INSTALL_HINT}"
        ) from exc
    return onnx, onnxruntime


def draw_noise(model: str | os.PathLike[str] | Mapping[str, str], batch_size: int, rng: Any = None) -> Any:
    """Fresh noise for one run of a model exported with ``noise="input"``: its ``noise`` input.

    Args:
        model: the ``.onnx`` file, or its metadata as a mapping (e.g.
            ``session.get_modelmeta().custom_metadata_map`` of an onnxruntime session).
        batch_size: the batch of the ``x`` it goes with.
        rng: ``None`` (the default): the process's cipher stream (AES-256-CTR keyed from
            ``os.urandom``, :mod:`scl.cipher`). A ``numpy.random.Generator`` only for tests, seeded
            to reproduce a run: it is no cryptographic generator, and noise an attacker can
            regenerate can be subtracted.

    Returns:
        A numpy array of the metadata's ``scl_noise_dtype`` (float32) and ``scl_noise_shape`` with
        ``batch_size`` for ``"batch"``: standard normal (``scl_noise_distribution`` =
        ``"standard_normal"``) or uniform in [0, 1) (``"uniform"``). Draw new noise for every run.

    Raises:
        ConfigError: the model has no noise input (exported with ``noise="internal"``, or not by
            scl), its metadata is unreadable, or ``rng`` is not a numpy Generator.
        ShapeError: ``batch_size`` is not a positive int.
    """
    distribution, shape, dtype = noise_contract(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ShapeError(f"batch_size must be a positive int (the batch of x), but got {batch_size!r}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise ConfigError(
            "rng must be None (the default: the cipher stream) or, for reproducible tests only, a seeded "
            f"numpy.random.Generator, but got {type(rng).__name__}"
        )
    return draw(distribution, [int(batch_size) if d == BATCH else int(d) for d in shape], dtype, rng)


def noise_contract(model: Any) -> tuple[str, list[int | str], str]:
    """``(distribution, shape with "batch", dtype)`` from a model file or its metadata."""
    if isinstance(model, Mapping):
        meta, where = dict(model), "the metadata"
    elif isinstance(model, (str, os.PathLike)):
        onnx, _ = import_onnx()
        where = repr(str(model))
        try:
            proto = onnx.load(str(model), load_external_data=False)
        except Exception as exc:  # onnx raises OSError or protobuf's DecodeError
            raise ConfigError(f"cannot read the ONNX model {where}: {str(exc).splitlines()[0]}") from exc
        meta = {entry.key: entry.value for entry in proto.metadata_props}
    else:
        raise ConfigError(
            f"draw_noise needs an .onnx path or the model's metadata mapping, but got {type(model).__name__}"
        )
    mode = meta.get("scl_noise_mode")
    if mode != "input":
        got = f"noise mode {mode!r}" if mode else "no scl noise metadata"
        raise ConfigError(
            f"{where} describes a model without a {NOISE_NAME!r} input ({got}); draw_noise is for models "
            "written by scl export with the default --noise input"
        )
    try:
        distribution = meta["scl_noise_distribution"]
        shape = json.loads(meta["scl_noise_shape"])
        dtype = meta["scl_noise_dtype"]
        valid = (
            distribution in ("standard_normal", "uniform")
            and isinstance(shape, list)
            and shape.count(BATCH) == 1
            and all(d == BATCH or (isinstance(d, int) and not isinstance(d, bool) and d > 0) for d in shape)
            and dtype in ("float16", "float32", "float64")
        )
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{where} has incomplete scl noise metadata ({exc})") from exc
    if not valid:
        raise ConfigError(
            f"{where} has invalid scl noise metadata: distribution {distribution!r}, shape {shape!r}, dtype {dtype!r}"
        )
    return distribution, shape, dtype


def draw(distribution: str, shape: Sequence[int], dtype: Any, rng: Any = None) -> Any:
    """Standard noise of ``shape`` (the :func:`draw_noise` contract): from the process's cipher
    stream, or from the numpy generator ``rng`` when one is given (reproducible tests)."""
    if rng is None:
        from scl import cipher

        return cipher.draw(distribution, shape, dtype)
    dtype = np.dtype(dtype)
    exact = dtype if dtype in (np.float32, np.float64) else np.dtype(np.float32)  # numpy draws these two
    if distribution == "standard_normal":
        return rng.standard_normal(tuple(shape), dtype=exact).astype(dtype, copy=False)
    # rounding to a narrower dtype (float16) could reach 1: keep the uniforms in [0, 1)
    below_one = np.nextafter(dtype.type(1), dtype.type(0))
    return np.minimum(rng.random(tuple(shape), dtype=exact).astype(dtype, copy=False), below_one)

