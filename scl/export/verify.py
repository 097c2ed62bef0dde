"""The exported model's self-checks, run before it is written: no stored noise and the noise drawn
where the mode says (:func:`check_graph`), and onnxruntime runs it as promised (:func:`check_runs`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor

from scl.errors import ConfigError, ShapeError
from scl.export.noise import INPUT_NAME, NOISE_NAME, draw_noise
from scl.export.trace import Sampler

# Every ONNX operator that draws random numbers: none may appear in an "input"-mode graph.
_RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
)


def _graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every subgraph (the bodies of If, Loop, Scan) inside it."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _constants(model: Any) -> Iterator[Any]:
    """Every constant tensor of the model, as numpy arrays (initializers and Constant nodes)."""
    from onnx import numpy_helper

    for graph in _graphs(model.graph):
        for tensor in graph.initializer:
            yield numpy_helper.to_array(tensor)
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        yield numpy_helper.to_array(attr.t)


def check_graph(model: Any, sampler: Sampler, example_noise: Any | None) -> None:
    """No stored noise, and the noise drawn where the mode says.

    ``"input"`` mode (``example_noise`` is the noise traced with): no random operator anywhere,
    the ``noise`` input is consumed, and no constant holds the traced noise's values.
    ``"internal"`` mode (``example_noise is None``): the sampler's unseeded random operator.
    """
    import numpy as np

    nodes = [node for graph in _graphs(model.graph) for node in graph.node]
    random = [node for node in nodes if node.op_type in _RANDOM_OPS]
    if example_noise is None:
        if not any(node.op_type == sampler.random_op for node in random):
            raise ConfigError(
                f"the exported graph has no {sampler.random_op} node, so it would not draw fresh noise; "
                "refusing to write it (please report this with the obfuscator's configuration)"
            )
        seeded = [node.name for node in random if any(attr.name == "seed" for attr in node.attribute)]
        if seeded:
            raise ConfigError(f"the exported random nodes {seeded} have a fixed seed; refusing to write them")
        return
    if random:
        raise ConfigError(
            f"the exported graph draws random numbers itself ({sorted({node.op_type for node in random})}) "
            "although its noise is an input; refusing to write it (please report this)"
        )
    if not any(NOISE_NAME in node.input for node in nodes):
        raise ConfigError(
            f"the exported graph does not use its {NOISE_NAME!r} input; refusing to write it (please report this)"
        )
    # Traced noise stored as a constant would hold these exact values; a weight matches one of
    # them only by a float32 coincidence, so half a sample's worth of matches is no accident.
    values = np.concatenate([np.ravel(c) for c in _constants(model) if c.dtype.kind == "f"] or [np.zeros(0)])
    found = int(np.isin(np.ravel(example_noise), values).sum())
    per_sample = example_noise.size // example_noise.shape[sampler.batch_axis]
    if found >= 2 and 2 * found >= per_sample:
        raise ConfigError(
            f"the exported graph stores {found} values of the noise it was traced with as constants; "
            "refusing to write it (please report this)"
        )


def check_runs(
    ort: Any,
    data: bytes,
    example: Tensor,
    output_shape: tuple[int, ...],
    dynamic_batch: bool,
    metadata: Mapping[str, str] | None,
) -> None:
    """Load the model in onnxruntime and run it on the example (and on another batch size).

    With a noise input (``metadata`` given): the same noise gives the same output, other noise
    another output, and noise for another batch size is refused rather than broadcast.
    """
    import numpy as np

    batches = [example.detach().cpu().numpy()]
    if dynamic_batch:
        batches.append(np.concatenate([batches[0], batches[0][:1]]))

    def feed(x: Any, batch: int | None = None) -> dict[str, Any]:
        if metadata is None:
            return {INPUT_NAME: x}
        return {INPUT_NAME: x, NOISE_NAME: draw_noise(metadata, x.shape[0] if batch is None else batch)}

    feeds = [feed(x) for x in batches]
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        outputs = [session.run(None, inputs)[0] for inputs in feeds]
        if metadata is not None:
            again = session.run(None, feeds[0])[0]
            other = session.run(None, feed(batches[0]))[0]
    except Exception as exc:  # onnxruntime raises its own exception types, not exported by name
        raise ConfigError(
            f"onnxruntime could not run the exported model: {str(exc).splitlines()[0]}"
        ) from exc
    for x, h in zip(batches, outputs, strict=True):
        expected = (x.shape[0], *output_shape[1:])
        if tuple(h.shape) != expected:
            raise ShapeError(f"the exported model returned shape {tuple(h.shape)}, expected {expected}")
        if not np.isfinite(h).all():
            raise ConfigError("the exported model returned NaN or Inf on the example input")
    if metadata is None:
        return
    if not np.array_equal(again, outputs[0]):
        raise ConfigError(
            "the exported model gave two outputs for the same input and noise, so it draws randomness of its "
            "own; refusing to write it (please report this)"
        )
    if np.array_equal(other, outputs[0]):
        raise ConfigError(
            "the exported model's output does not depend on its noise input (every parameter map is "
            "saturated, or the noise was not traced); refusing to write it"
        )
    if dynamic_batch:
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the refusal expected here is not an error to log
        try:
            session.run(None, feed(batches[1], 1), quiet)  # one draw that would broadcast over 2+ inputs
        except Exception:  # refused, as it must be
            return
        raise ConfigError(
            "the exported model accepted noise for another batch size (it would broadcast one draw over "
            "the batch); refusing to write it (please report this)"
        )

