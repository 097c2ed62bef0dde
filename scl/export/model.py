"""The exported model: :func:`export_onnx` writes it (checks, trace, metadata, self-checks, an atomic
write), :func:`describe` reads it back in one line."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from scl._version import __version__
from scl.errors import ConfigError, SCLError, ShapeError
from scl.export.inputs import check_noise_mode, check_obfuscator, check_opset, check_path, example_batch
from scl.export.noise import BATCH, INPUT_NAME, NOISE_NAME, OUTPUT_NAME, draw, import_onnx
from scl.export.trace import LabelFreeObfuscation, sampler_for, trace
from scl.export.verify import check_graph, check_runs
from scl.io import atomic_write
from scl.obfuscator import Obfuscator


def export_onnx(
    obfuscator: Obfuscator,
    path: str | os.PathLike[str],
    *,
    input_shape: Sequence[int] | None = None,
    example_input: Tensor | None = None,
    opset: int | None = None,
    dynamic_batch: bool = True,
    noise: str = "input",
) -> Path:
    """Write the obfuscator's label-free inference path as an ONNX model, atomically.

    Args:
        obfuscator: a trained :class:`scl.Obfuscator` with a soft or gated selection attached.
        path: the ``.onnx`` file to write (its folder is created).
        input_shape: one input's shape without the batch dimension, e.g. ``(3, 16, 16)``;
            ``None`` infers it where the obfuscator fixes it (see :func:`infer_input_shape`).
        example_input: instead of ``input_shape``, an example batch ``Tensor[B, *input_shape]``.
        opset: the ONNX opset, in [13, 20]; ``None`` takes the exporter's default.
        dynamic_batch: let the ONNX model take any batch size (the default).
        noise: where the noise comes from (module docstring). ``"input"`` (the default): a second
            input ``noise`` that the caller fills on every run with fresh standard noise from a
            strong random source, and no random operator in the graph:

            - gaussian: standard normal, shape ``[B, *out]``
              (``scl.cipher.standard_normal(shape)``);
            - laplace: uniform in [0, 1), shape ``[B, *out]`` (``scl.cipher.uniform(shape)``);
            - binomial: uniform in [0, 1), shape ``[total_count, B, *out]``;
            - multinomial: uniform in [0, 1), shape ``[B, *out, num_choices]``;

            with ``B`` the batch of ``x`` and ``out`` one output's shape. :func:`draw_noise`
            draws it from the model's metadata. ``"internal"``: the graph draws the noise with
            unseeded ONNX random operators, which onnxruntime seeds from one process-wide 32-bit
            seed that an attacker could search; do not use it where privacy matters.

    Returns:
        ``path``. The model has the input ``x: float32[B, *input_shape]`` (and, in ``"input"``
        mode, ``noise`` as above; the batch dimension of both is dynamic with ``dynamic_batch``)
        and one output ``h: float32[B, *output_shape]``. Its metadata_props record the scl
        version, the distribution and its options, the selection, the class count, the input and
        output shapes and the noise: ``scl_noise_mode`` and, in ``"input"`` mode,
        ``scl_noise_input`` (``"noise"``), ``scl_noise_distribution`` (``"standard_normal"`` or
        ``"uniform"``), ``scl_noise_shape`` (a JSON list, ``"batch"`` for the batch dimension)
        and ``scl_noise_dtype`` (``"float32"``).

    Raises:
        ConfigError: not an Obfuscator, no soft or gated selection, a distribution that cannot be
            exported, a bad path, opset or noise mode, or onnx/onnxruntime missing.
        ShapeError: a bad input shape or example, or one the obfuscator does not accept.
    """
    onnx, ort = import_onnx()
    selection_kind = check_obfuscator(obfuscator)
    noise = check_noise_mode(noise)
    path = check_path(path)
    opset = check_opset(opset)
    example = example_batch(obfuscator, input_shape, example_input)
    name = obfuscator.layer.noise.name
    sampler = sampler_for(obfuscator.layer.noise)

    was_training = obfuscator.training
    obfuscator.eval()
    try:
        with torch.no_grad():
            # Run the checked code path once: bad shapes fail here with scl's own messages.
            try:
                dist = obfuscator.distribution(example)
            except SCLError as exc:
                raise ShapeError(
                    f"the obfuscator does not accept inputs of shape {tuple(example.shape[1:])} "
                    f"(batch {example.shape[0]}): {exc}"
                ) from exc
            output_shape = tuple(dist.batch_shape)
            noise_shape = tuple(sampler.like(dist).shape)
            dtype = example.detach().cpu()[:0].numpy().dtype
            example_noise = None
            if noise == "input":
                drawn = draw(sampler.noise, noise_shape, dtype)
                example_noise = torch.from_numpy(drawn).to(example.device)
            module = LabelFreeObfuscation(obfuscator, sampler)
            proto = trace(module, example, example_noise, sampler.batch_axis, opset, dynamic_batch)
    finally:
        obfuscator.train(was_training)

    model = onnx.load_from_string(proto)
    check_graph(model, sampler, None if example_noise is None else example_noise.cpu().numpy())
    symbolic = [BATCH if axis == sampler.batch_axis else size for axis, size in enumerate(noise_shape)]
    metadata = {
        "scl_version": __version__,
        "scl_distribution": name,
        "scl_distribution_options": json.dumps(obfuscator.layer.noise.config()),
        "scl_selection": selection_kind,
        "scl_layer": type(obfuscator.layer).__name__,
        "scl_num_classes": str(obfuscator.num_classes),
        "scl_input_shape": json.dumps(list(example.shape[1:])),
        "scl_output_shape": json.dumps(list(output_shape[1:])),
        "scl_dynamic_batch": json.dumps(dynamic_batch),
        "scl_noise_mode": noise,
    }
    if noise == "input":
        contract = (
            f"input {NOISE_NAME!r}: fresh {sampler.noise} {dtype.name} noise"
            f"{' in [0, 1)' if sampler.noise == 'uniform' else ''} of shape [{', '.join(map(str, symbolic))}] "
            f"({BATCH} = the batch of {INPUT_NAME!r}) on every run, from a cryptographic source: the cipher "
            "stream of scl.cipher (AES-256-CTR, key from os.urandom) or os.urandom/secrets bytes, not "
            "numpy.random.default_rng(); never reuse it. The graph holds no random operator."
        )
        metadata.update(
            {
                "scl_noise_input": NOISE_NAME,
                "scl_noise_distribution": sampler.noise,
                "scl_noise_shape": json.dumps(symbolic),
                "scl_noise_dtype": dtype.name,
                "scl_noise": contract,
            }
        )
        next(i for i in model.graph.input if i.name == NOISE_NAME).doc_string = contract
    else:
        metadata["scl_noise"] = (
            f"drawn inside the graph by {sampler.random_op} without a seed; onnxruntime seeds it from "
            "one process-wide 32-bit seed, which an attacker could search: not for private data"
        )
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = (
        f"scl obfuscator: label-free ({selection_kind} selection) {name} noise over "
        f"{obfuscator.num_classes} classes; input {INPUT_NAME!r} [{BATCH}, {', '.join(map(str, example.shape[1:]))}]"
        f"; noise: {metadata['scl_noise']}"
    )
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    check_runs(ort, data, example, output_shape, dynamic_batch, None if noise == "internal" else metadata)
    try:
        with atomic_write(path, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise ConfigError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
    return path


def describe(path: str | os.PathLike[str]) -> str:
    """One line about an exported model: size, opset, inputs and output, noise, selection."""
    onnx, _ = import_onnx()
    path = Path(path)
    model = onnx.load(str(path))
    meta = {entry.key: entry.value for entry in model.metadata_props}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)

    def shape(key: str) -> str:
        return ", ".join(["batch", *map(str, json.loads(meta.get(key, "[]")))])

    x = f"{INPUT_NAME} [{shape('scl_input_shape')}]"
    if meta.get("scl_noise_mode") == "input":
        noise_shape = ", ".join(map(str, json.loads(meta.get("scl_noise_shape", "[]"))))
        inputs = (
            f"inputs {x} and {NOISE_NAME} [{noise_shape}] ({meta.get('scl_noise_distribution')} "
            f"{meta.get('scl_noise_dtype')}, fresh from a strong random source on every run)"
        )
        noise = "no random operator in the graph"
    else:
        inputs = f"input {x}"
        noise = meta.get("scl_noise", "")
    return (
        f"{path.stat().st_size / 1024:.1f} KiB, opset {opset}; {inputs} -> "
        f"output {OUTPUT_NAME} [{shape('scl_output_shape')}]; {meta.get('scl_distribution')} noise, "
        f"{meta.get('scl_selection')} selection over {meta.get('scl_num_classes')} classes; {noise}"
    )

