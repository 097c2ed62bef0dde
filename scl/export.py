"""Export a trained obfuscator to ONNX (``scl export``): label-free obfuscation without torch.

A data owner obfuscates on their own device before anything leaves it; the device may have no
torch. :func:`export_onnx` writes the obfuscator's label-free inference path as one ONNX model:

``x -> pre-layers L -> selection (soft or gated) -> parameter maps -> fresh noise sample``

The noise is drawn inside the ONNX model by ONNX's own random operators (``RandomNormalLike``,
``RandomUniformLike``) without a ``seed`` attribute, so onnxruntime draws new noise on every run.
No noise tensor is stored in the file: noise an attacker can regenerate can be subtracted.

Example::

    from scl.export import export_onnx

    obfuscator = scl.load("runs/mine/checkpoints/obfuscator.safetensors")
    export_onnx(obfuscator, "obfuscator.onnx", input_shape=(3, 16, 16))

Caveat: onnxruntime (1.32) seeds its CPU random operators from one process-wide seed, the clock at
start-up unless ``onnxruntime.set_seed`` is called, plus the node's index, narrowed to 32 bits for
``std::default_random_engine``. Sessions created in one process without a new ``set_seed`` draw the
same stream, and an attacker who can try all 2^32 seeds could regenerate the noise: this is weaker
than scl's own OS-entropy generator. Call ``onnxruntime.set_seed`` with OS entropy before creating
each session (README), and prefer ``scl obfuscate`` where that matters.

Exporter: torch 2.13 has two. The default ``torch.export``-based one (``dynamo=True``, which
needs onnxscript) cannot trace scl's input validation, whose finiteness check branches on tensor
values (a data-dependent guard); ``torch.export.draft_export`` gets past it by specialising on the
example, but took 3-6 s per model and, on the gated path, wrongly found the selection
non-finite. The TorchScript exporter (``dynamo=False``, deprecated since torch 2.9 but present in
2.13) traces with real tensors, so the validation runs once on the example input and drops out of
the graph; the sampling ops are traced faithfully. That is the exporter used here (its deprecation
warning is silenced), with one fix for the duration of an export: its ``movedim`` symbolic mangles
negative dims, which the linear layer uses (see :func:`_movedim_symbolic`).

Exportable: the convolution, linear and additive layers, and ``StochasticConditional`` over
``nn.LSTM``/``nn.GRU`` (unrolled over time, so the model takes the example's sequence length
only); optional pre-layers that torch can trace; the gaussian, laplace, binomial and multinomial
distributions. Generic ``StochasticConditional`` layers over other modules run under
``torch.func.vmap``, which the tracer cannot follow: they are refused.

Requires the ``onnx`` extra: ``pip install 'scl[onnx]'`` (onnx, onnxruntime).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Laplace, Normal

from scl.errors import CheckpointError, ConfigError, SCLError, ShapeError
from scl.io import atomic_write
from scl.layers import (
    StochasticConditional,
    StochasticConditionalAdditive,
    StochasticConditionalConv2d,
    StochasticConditionalLinear,
)
from scl.obfuscator import Obfuscator
from scl.selection import GatedSelection, SoftSelection

INPUT_NAME = "x"
OUTPUT_NAME = "h"
# The opsets tested (every layer and distribution above exports and runs at 13 and at 20, the
# TorchScript exporter's maximum and default).
MIN_OPSET, MAX_OPSET = 13, 20
_INSTALL_HINT = "pip install 'scl[onnx]'"


# -- samplers: the eval-mode draw of each distribution, written with ops that trace to ONNX's own
# -- random operators (torch.randn_like -> RandomNormalLike, torch.rand_like -> RandomUniformLike)


def _open_uniform_like(like: Tensor) -> Tensor:
    """Uniform samples in the open interval (0, 1), shaped like ``like``."""
    eps = torch.finfo(like.dtype).eps
    return torch.rand_like(like).clamp(eps, 1.0 - eps)


def _sample_gaussian(dist: Distribution) -> Tensor:
    loc, scale = dist.loc, dist.scale  # type: ignore[attr-defined]
    return loc + scale * torch.randn_like(loc)


def _sample_laplace(dist: Distribution) -> Tensor:
    loc, scale = dist.loc, dist.scale  # type: ignore[attr-defined]
    u = _open_uniform_like(loc) * 2.0 - 1.0  # inverse CDF, as scl's laplace entry
    return loc - scale * u.sign() * torch.log1p(-u.abs())


def _sample_binomial(dist: Distribution) -> Tensor:
    """The fraction of ``total_count`` Bernoulli(p) trials that succeed: exact, like ``torch.binomial``."""
    probs = torch.sigmoid(dist.logits)  # type: ignore[attr-defined]
    n = int(dist.total_count)  # type: ignore[attr-defined]
    trials = torch.rand_like(probs.unsqueeze(0).expand(n, *probs.shape))
    return (trials < probs).to(probs.dtype).mean(0)


def _sample_multinomial(dist: Distribution) -> Tensor:
    """One of the K values per element, drawn exactly by the Gumbel-max trick."""
    logits, values = dist.logits, dist.values  # type: ignore[attr-defined]
    gumbel = -torch.log(-torch.log(_open_uniform_like(logits)))
    index = (logits + gumbel).argmax(-1, keepdim=True)
    return values.gather(-1, index).squeeze(-1)


# name -> (what the built distribution must provide, the sampler, the ONNX random op it uses)
_SAMPLERS: dict[str, tuple[Callable[[Distribution], bool], Callable[[Distribution], Tensor], str]] = {
    "gaussian": (lambda d: isinstance(d, Normal), _sample_gaussian, "RandomNormalLike"),
    "laplace": (lambda d: isinstance(d, Laplace), _sample_laplace, "RandomUniformLike"),
    "binomial": (
        lambda d: isinstance(getattr(d, "logits", None), Tensor) and isinstance(getattr(d, "total_count", None), int),
        _sample_binomial,
        "RandomUniformLike",
    ),
    "multinomial": (
        lambda d: isinstance(getattr(d, "logits", None), Tensor) and isinstance(getattr(d, "values", None), Tensor),
        _sample_multinomial,
        "RandomUniformLike",
    ),
}


def exportable_distributions() -> list[str]:
    """The distribution names :func:`export_onnx` can express with ONNX random operators."""
    return sorted(_SAMPLERS)


class _LabelFreeObfuscation(nn.Module):
    """The obfuscator's label-free path, ``x -> h``, as one traceable module.

    It goes through the obfuscator's own code (``features``, ``select`` with no labels, which
    picks the attached soft or gated selection, and ``layer.distribution``); only the final draw
    is replaced by a sampler that traces to ONNX random operators.
    """

    def __init__(self, obfuscator: Obfuscator, sampler: Callable[[Distribution], Tensor]) -> None:
        super().__init__()
        self.obfuscator = obfuscator
        self.sampler = sampler

    def forward(self, x: Tensor) -> Tensor:
        features = self.obfuscator.features(x)
        pi = self.obfuscator.select(features)
        return self.sampler(self.obfuscator.layer.distribution(features, pi))


# -- validation ------------------------------------------------------------------------------------


def _import_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(
            f"exporting to ONNX needs the onnx and onnxruntime packages ({exc}); install them with "
            f"{_INSTALL_HINT}"
        ) from exc
    return onnx, onnxruntime


def _check_obfuscator(obfuscator: Any) -> str:
    """Validate what is exported; return the selection kind ("soft" or "gated")."""
    if not isinstance(obfuscator, Obfuscator):
        raise ConfigError(
            f"export_onnx needs an scl.Obfuscator, but got {type(obfuscator).__name__}; wrap a trained "
            "layer and its label-free selection: scl.Obfuscator(layer, selection=scl.SoftSelection(...))"
        )
    selection = obfuscator.selection
    if not isinstance(selection, (SoftSelection, GatedSelection)):
        got = "none" if selection is None else type(selection).__name__
        raise ConfigError(
            f"the obfuscator has no soft or gated selection (got {got}); export needs label-free "
            "inference, and a hard selection needs labels the data owner's device does not have: "
            "train a selection (stage 2) and attach it with Obfuscator(layer, selection=...)"
        )
    if isinstance(obfuscator.layer, StochasticConditional) and not obfuscator.layer.recurrent:
        raise ConfigError(
            "a generic StochasticConditional layer over modules other than nn.LSTM/nn.GRU runs its "
            "class networks under torch.func.vmap, which torch's ONNX exporter cannot trace; "
            "exportable layers: StochasticConditionalConv2d, StochasticConditionalLinear, "
            "StochasticConditionalAdditive, and StochasticConditional over nn.LSTM or nn.GRU"
        )
    name = obfuscator.layer.noise.name
    if name not in _SAMPLERS:
        raise ConfigError(
            f"the {name!r} distribution cannot be exported to ONNX (its sample cannot be written "
            f"with ONNX random operators here); exportable distributions: {exportable_distributions()}"
        )
    return "soft" if isinstance(selection, SoftSelection) else "gated"


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3,16,16"`` -> ``(3, 16, 16)`` (one input's shape, without the batch dimension)."""
    try:
        shape = tuple(int(part) for part in str(text).replace(" ", "").split(","))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise ShapeError(
            f"the input shape must be comma-separated positive sizes without the batch dimension, "
            f"e.g. 3,16,16 (channels, height, width), but got {text!r}"
        )
    return shape


def infer_input_shape(obfuscator: Obfuscator) -> tuple[int, ...] | None:
    """One input's shape when the obfuscator fixes it (no pre-layers), else ``None``.

    The additive layer knows its shape, a linear layer its ``in_features``, and a convolution its
    channels plus, with a spatial soft selection at its input, its height and width.
    """
    layer, selection = obfuscator.layer, obfuscator.selection
    if obfuscator.pre is not None:
        return None
    if isinstance(layer, StochasticConditionalAdditive):
        return tuple(layer.shape)
    if isinstance(layer, StochasticConditionalLinear):
        return (layer.in_features,)
    if (
        isinstance(layer, StochasticConditionalConv2d)
        and isinstance(selection, SoftSelection)
        and layer.selection_at == "input"
        and len(selection.shape) == 3
        and min(selection.shape[1:]) > 1
    ):
        return (layer.in_channels, *selection.shape[1:])
    return None


def _example(obfuscator: Obfuscator, input_shape: Sequence[int] | None, example_input: Tensor | None) -> Tensor:
    if input_shape is not None and example_input is not None:
        raise ConfigError("pass input_shape or example_input, not both")
    if example_input is not None:
        if not isinstance(example_input, Tensor) or not example_input.dtype.is_floating_point:
            raise ShapeError(
                "example_input must be a floating-point tensor [B, *input_shape], "
                f"but got {type(example_input).__name__}"
                + (f" of dtype {example_input.dtype}" if isinstance(example_input, Tensor) else "")
            )
        if example_input.dim() < 2 or example_input.shape[0] < 1:
            raise ShapeError(
                f"example_input must have a batch dimension, [B, *input_shape], but got shape "
                f"{tuple(example_input.shape)}"
            )
        return example_input.detach()
    if input_shape is None:
        input_shape = infer_input_shape(obfuscator)
        if input_shape is None:
            raise ShapeError(
                "the input shape cannot be inferred from this obfuscator; pass input_shape=(C, H, W), "
                "one input's shape without the batch dimension (scl export: --input-shape 3,16,16)"
            )
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise ShapeError(
            f"input_shape must be a sequence of positive ints such as (3, 16, 16), but got {input_shape!r}"
        )
    if not input_shape or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in input_shape):
        raise ShapeError(
            f"input_shape must be one input's shape without the batch dimension, positive ints such as "
            f"(3, 16, 16), but got {tuple(input_shape)!r}"
        )
    parameter = next(obfuscator.parameters(), None)
    like = {"device": parameter.device, "dtype": parameter.dtype} if parameter is not None else {}
    # A batch of 2 so that the batch dimension is traced as a size, not as a broadcast 1.
    return torch.rand(2, *input_shape, **like)


def _check_path(path: str | os.PathLike[str]) -> Path:
    try:
        path = Path(path)
    except TypeError as exc:
        raise ConfigError(f"the output path must be a file path ending in .onnx, but got {path!r}") from exc
    if path.suffix.lower() != ".onnx":
        raise ConfigError(f"the output path must end in .onnx, but got {str(path)!r}; e.g. obfuscator.onnx")
    if path.is_dir():
        raise ConfigError(f"{str(path)!r} is a folder; give a file path ending in .onnx")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"cannot write {str(path)!r}: {str(parent)!r} is a file, not a folder")
            break
    return path


def _check_opset(opset: Any) -> int | None:
    if opset is None:
        return None
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(
            f"opset must be an int in [{MIN_OPSET}, {MAX_OPSET}] or None (the exporter's default), "
            f"but got {opset!r}"
        )
    return opset


# -- export ----------------------------------------------------------------------------------------


def export_onnx(
    obfuscator: Obfuscator,
    path: str | os.PathLike[str],
    *,
    input_shape: Sequence[int] | None = None,
    example_input: Tensor | None = None,
    opset: int | None = None,
    dynamic_batch: bool = True,
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

    Returns:
        ``path``. The model has one input ``x: float32[B, *input_shape]`` and one output
        ``h: float32[B, *output_shape]``, a fresh noise sample on every run. Its metadata_props
        record the scl version, the distribution and its options, the selection, the class count
        and the input and output shapes.

    Raises:
        ConfigError: not an Obfuscator, no soft or gated selection, a distribution that cannot be
            exported, a bad path or opset, or onnx/onnxruntime missing.
        ShapeError: a bad input shape or example, or one the obfuscator does not accept.
    """
    onnx, ort = _import_onnx()
    selection_kind = _check_obfuscator(obfuscator)
    path = _check_path(path)
    opset = _check_opset(opset)
    example = _example(obfuscator, input_shape, example_input)
    name = obfuscator.layer.noise.name
    accepts, sampler, random_op = _SAMPLERS[name]

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
            if not accepts(dist):
                raise ConfigError(
                    f"the {name!r} layer built a {type(dist).__name__}, which the ONNX sampler for "
                    f"{name!r} does not know how to draw from; exportable distributions: "
                    f"{exportable_distributions()}"
                )
            output_shape = tuple(dist.batch_shape)
            proto = _trace(_LabelFreeObfuscation(obfuscator, sampler), example, opset, dynamic_batch)
    finally:
        obfuscator.train(was_training)

    model = onnx.load_from_string(proto)
    _check_graph(model, random_op)
    metadata = {
        "scl_version": _version(),
        "scl_distribution": name,
        "scl_distribution_options": json.dumps(obfuscator.layer.noise.config()),
        "scl_selection": selection_kind,
        "scl_layer": type(obfuscator.layer).__name__,
        "scl_num_classes": str(obfuscator.num_classes),
        "scl_input_shape": json.dumps(list(example.shape[1:])),
        "scl_output_shape": json.dumps(list(output_shape[1:])),
        "scl_dynamic_batch": json.dumps(dynamic_batch),
        "scl_noise": f"{random_op}, no seed: fresh noise on every run",
    }
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = (
        f"scl obfuscator: label-free ({selection_kind} selection) {name} noise over "
        f"{obfuscator.num_classes} classes; input {INPUT_NAME!r} [batch, {', '.join(map(str, example.shape[1:]))}]"
    )
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    _check_runs(ort, data, example, output_shape, dynamic_batch)
    try:
        with atomic_write(path, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise ConfigError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
    return path


def _trace(module: nn.Module, example: Tensor, opset: int | None, dynamic_batch: bool) -> bytes:
    buffer = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), _exporter_fixes():
        # The tracer warns where scl's input checks turn tensors into Python bools: they ran on
        # the example (validated above) and rightly drop out of the graph.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
        try:
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=opset,
            )
        except (RuntimeError, SCLError) as exc:  # torch.onnx.errors.OnnxExporterError is a RuntimeError
            layer = type(module.obfuscator.layer).__name__
            raise ConfigError(
                f"torch could not export this obfuscator ({layer}) to ONNX: {str(exc).splitlines()[0]}"
            ) from exc
    return buffer.getvalue()


def _movedim_symbolic(g: Any, self: Any, source: Any, destination: Any) -> Any:
    """``aten::movedim`` -> ONNX Transpose, with negative dims taken modulo the rank.

    torch 2.13's own TorchScript symbolic for movedim marks moved dims with -1 and so mangles
    negative dims: ``x.movedim(-1, 1)`` (the linear layer's channel-first view) became
    ``Transpose(perm=[0, -1, 1])`` and wrong shapes downstream (e.g. a Split into 5 parts of 2).
    """
    from torch.onnx import symbolic_helper

    rank = symbolic_helper._get_tensor_rank(self)
    if rank is None:
        raise ConfigError("cannot export movedim on a tensor of unknown rank")
    src = [int(d) % rank for d in symbolic_helper._get_const(source, "t", "source").view(-1).tolist()]
    dst = [int(d) % rank for d in symbolic_helper._get_const(destination, "t", "destination").view(-1).tolist()]
    perm: list[int | None] = [None] * rank
    for s, d in zip(src, dst, strict=True):
        perm[d] = s
    rest = iter(i for i in range(rank) if i not in src)
    order = [p if p is not None else next(rest) for p in perm]
    if order == list(range(rank)):
        return self
    return g.op("Transpose", self, perm_i=order)


@contextlib.contextmanager
def _exporter_fixes() -> Iterator[None]:
    """Use :func:`_movedim_symbolic` for the duration of one export (every opset: movedim's
    built-in symbolic is registered at opset 9)."""
    torch.onnx.register_custom_op_symbolic("aten::movedim", _movedim_symbolic, 9)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::movedim", 9)


def _check_graph(model: Any, random_op: str) -> None:
    """The noise must be drawn by an unseeded ONNX random op, never stored in the file."""
    ops = [node for node in model.graph.node if node.op_type in ("RandomNormalLike", "RandomUniformLike")]
    if not any(node.op_type == random_op for node in ops):
        raise ConfigError(
            f"the exported graph has no {random_op} node, so it would not draw fresh noise; "
            "refusing to write it (please report this with the obfuscator's configuration)"
        )
    seeded = [node.name for node in ops if any(attr.name == "seed" for attr in node.attribute)]
    if seeded:
        raise ConfigError(f"the exported random nodes {seeded} have a fixed seed; refusing to write them")


def _check_runs(ort: Any, data: bytes, example: Tensor, output_shape: tuple[int, ...], dynamic_batch: bool) -> None:
    """Load the model in onnxruntime and run it once on the example (and on another batch size)."""
    import numpy as np

    batches = [example.detach().cpu().numpy()]
    if dynamic_batch:
        batches.append(np.concatenate([batches[0], batches[0][:1]]))
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        outputs = [session.run(None, {INPUT_NAME: x})[0] for x in batches]
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


def describe(path: str | os.PathLike[str]) -> str:
    """One line about an exported model: size, opset, input and output, noise, selection."""
    onnx, _ = _import_onnx()
    path = Path(path)
    model = onnx.load(str(path))
    meta = {entry.key: entry.value for entry in model.metadata_props}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)

    def shape(key: str) -> str:
        return ", ".join(["batch", *map(str, json.loads(meta.get(key, "[]")))])

    return (
        f"{path.stat().st_size / 1024:.1f} KiB, opset {opset}; input {INPUT_NAME} [{shape('scl_input_shape')}] -> "
        f"output {OUTPUT_NAME} [{shape('scl_output_shape')}]; {meta.get('scl_distribution')} noise, "
        f"{meta.get('scl_selection')} selection over {meta.get('scl_num_classes')} classes; {meta.get('scl_noise')}"
    )


def _version() -> str:
    import scl

    return scl.__version__


# -- run folders and checkpoints (for the command line) ------------------------------------------


def load_for_export(
    source: str | os.PathLike[str], *, selection: str | None = None
) -> tuple[Obfuscator, tuple[int, ...] | None]:
    """The obfuscator to export from a run folder or a checkpoint, and its input shape if recorded.

    Args:
        source: a run folder written by ``scl train``/``scl demo`` (its
            ``checkpoints/obfuscator.safetensors``, with ``gated.safetensors`` for
            ``selection="gated"``), or an obfuscator checkpoint written by ``scl.save``.
        selection: for a run folder, ``"soft"`` (default) or ``"gated"``; for a checkpoint, the
            selection it must hold (``None``: whichever it holds).

    The input shape comes from the run's ``metrics.json`` (also for a checkpoint inside a run's
    ``checkpoints/`` folder); ``None`` when it is not recorded.
    """
    import scl
    from scl.pipelines.classification import CHECKPOINTS

    if selection not in (None, "soft", "gated"):
        raise ConfigError(f"selection must be 'soft' or 'gated', but got {selection!r}")
    source = Path(source)
    if source.is_dir():
        ckpt = source / "checkpoints"
        path = ckpt / CHECKPOINTS["obfuscator"]
        if not path.is_file():
            raise ConfigError(
                f"{str(source)!r} is a folder without checkpoints/{CHECKPOINTS['obfuscator']}; pass a run "
                "folder written by `scl train` or `scl demo`, or an obfuscator checkpoint (.safetensors)"
            )
        obfuscator = _load_obfuscator(path)
        if selection == "gated":
            gated_path = ckpt / CHECKPOINTS["gated"]
            if not gated_path.is_file():
                raise ConfigError(f"{str(source)!r} has no checkpoints/{CHECKPOINTS['gated']}; use --selection soft")
            obfuscator = Obfuscator(obfuscator.layer, scl.load(gated_path), obfuscator.pre)
        return obfuscator, _recorded_shape(source)
    if not source.is_file():
        raise CheckpointError(
            f"{str(source)!r} does not exist; pass a run folder written by `scl train` or `scl demo`, "
            "or an obfuscator checkpoint (.safetensors) written by scl.save"
        )
    obfuscator = _load_obfuscator(source)
    held = "soft" if isinstance(obfuscator.selection, SoftSelection) else "gated"
    if selection is not None and obfuscator.selection is not None and held != selection:
        raise ConfigError(
            f"{str(source)!r} holds a {held} selection, not a {selection} one; drop --selection or pass "
            "the run folder"
        )
    run = source.parent.parent if source.parent.name == "checkpoints" else None
    return obfuscator, _recorded_shape(run) if run is not None else None


def _load_obfuscator(path: Path) -> Obfuscator:
    import scl

    module = scl.load(path)
    if not isinstance(module, Obfuscator):
        hint = " (a run's gated selection: pass the run folder with --selection gated)" if isinstance(
            module, GatedSelection
        ) else ""
        raise CheckpointError(
            f"{str(path)!r} holds a {type(module).__name__}, not an Obfuscator{hint}; save the "
            "obfuscator itself with scl.save(obfuscator, path)"
        )
    return module


def _recorded_shape(run: Path) -> tuple[int, ...] | None:
    try:
        shape = json.loads((run / "metrics.json").read_text())["input_shape"]
        return tuple(int(s) for s in shape)
    except (OSError, ValueError, KeyError, TypeError):
        return None
