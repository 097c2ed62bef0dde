"""Export a trained obfuscator to ONNX (``scl export``): label-free obfuscation without torch.

A data owner obfuscates on their own device before anything leaves it; the device may have no
torch. :func:`export_onnx` writes the obfuscator's label-free inference path as one ONNX model:

``x -> pre-layers L -> selection (soft or gated) -> parameter maps -> noise sample``

Where the noise comes from (``noise=``):

``"input"`` (the default)
    The model has a second input, ``noise``, that the caller fills on every run from a
    cryptographic source, as scl itself draws inference noise (:mod:`scl.random`): the AES-256-CTR
    cipher stream of :mod:`scl.cipher` (numpy and ``cryptography`` only, what :func:`draw_noise`
    uses), or bytes from ``os.urandom``/``secrets`` turned into floats. Not
    ``numpy.random.default_rng()``: PCG64 is no cryptographic generator, and noise an attacker can
    regenerate can be subtracted.
    The graph holds no random operator, so it is deterministic given ``(x, noise)``. The noise is
    standard and parameter-free; the graph turns it into the layer's sample:

    ==============  ===============================  =========================================
    distribution    ``noise``                         the sample ``h``
    ==============  ===============================  =========================================
    gaussian        standard normal ``[B, *out]``     ``loc + scale * noise``
    laplace         uniform [0, 1) ``[B, *out]``      inverse CDF of ``u = clamp(noise)``:
                                                      ``loc - scale * sign(2u-1) * log1p(-|2u-1|)``
    binomial        uniform [0, 1) ``[n, B, *out]``   fraction of the ``n = total_count`` trials
                                                      with ``noise < sigmoid(logits)``
    multinomial     uniform [0, 1) ``[B, *out, K]``   ``values[argmax(logits - log(-log(clamp(noise))))]``
                                                      (Gumbel-max over the K choices)
    ==============  ===============================  =========================================

    ``B`` is the batch of ``x``, ``out`` one output's shape, ``clamp`` keeps a uniform inside the
    open interval (eps, 1 - eps) as scl's own samplers do. The metadata_props record the contract
    (``scl_noise_input``, ``scl_noise_distribution``: ``standard_normal`` or ``uniform``,
    ``scl_noise_shape``: a JSON list with ``"batch"`` for the batch dimension, ``scl_noise_dtype``),
    and :func:`draw_noise` draws a correct array from it. Draw fresh noise for every run and never
    reuse it: noise an attacker can regenerate or see twice can be subtracted.

``"internal"``
    The model draws the noise itself with ONNX's ``RandomNormalLike``/``RandomUniformLike``,
    without a ``seed`` attribute, and has the one input ``x``. Caveat: onnxruntime (1.32) seeds its
    CPU random operators from one process-wide seed, the clock at start-up unless
    ``onnxruntime.set_seed`` is called, plus the node's index, narrowed to 32 bits for
    ``std::default_random_engine``; sessions created in one process without a new ``set_seed``
    draw the same stream, and an attacker who can try all 2^32 seeds could regenerate the noise.
    Do not use it where privacy matters.

No noise tensor is ever stored in the file.

Example::

    from scl.export import draw_noise, export_onnx

    obfuscator = scl.load("runs/mine/checkpoints/obfuscator.safetensors")
    export_onnx(obfuscator, "obfuscator.onnx", input_shape=(3, 16, 16))
    # on the device, with onnxruntime (draw_noise: the cipher stream of scl.cipher):
    h = session.run(None, {"x": x, "noise": draw_noise("obfuscator.onnx", len(x))})[0]

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
distributions, and any registered distribution that makes its samples from standard noise
(``noise_kind``, ``noise_like``, ``from_noise``: the same formula then runs in torch and in the
ONNX graph). Generic ``StochasticConditional`` layers over other modules run under
``torch.func.vmap``, which the tracer cannot follow: they are refused.

Requires the ``onnx`` extra: ``pip install 'scl[onnx]'`` (onnx, onnxruntime).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from scl._version import __version__
from scl.distributions import NoiseDistribution, get, names
from scl.errors import CheckpointError, ConfigError, SCLError, ShapeError
from scl.io import atomic_write
from scl.layers import (
    StochasticConditional,
    StochasticConditionalAdditive,
    StochasticConditionalConv2d,
    StochasticConditionalLinear,
)
from scl.obfuscator import Obfuscator
from scl.runs import CHECKPOINTS, load_label_free, load_obfuscator, recorded_shape
from scl.selection import GatedSelection, SoftSelection

INPUT_NAME = "x"
NOISE_NAME = "noise"
OUTPUT_NAME = "h"
BATCH = "batch"  # the symbolic batch dimension, in the graph and in scl_noise_shape
NOISE_MODES = ("input", "internal")
# The opsets tested (every layer and distribution above exports and runs at 13 and at 20, the
# TorchScript exporter's maximum and default).
MIN_OPSET, MAX_OPSET = 13, 20
_INSTALL_HINT = "pip install 'scl[onnx]'"
# Every ONNX operator that draws random numbers: none may appear in an "input"-mode graph.
_RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
)


# -- samplers: the eval-mode draw of the layer's distribution from standard noise, with the
# -- distribution's own formula (NoiseDistribution.from_noise); the noise is an input of the graph,
# -- or drawn by ONNX's own random operators (torch.randn_like -> RandomNormalLike,
# -- torch.rand_like -> RandomUniformLike)


@dataclass(frozen=True)
class _Sampler:
    """How one distribution is drawn from standard noise.

    ``like(dist)`` is a tensor of the noise's shape (``view_as`` it in ``apply`` makes a noise
    input of another batch fail in onnxruntime instead of broadcasting one draw over the batch).
    """

    like: Callable[[Distribution], Tensor]
    apply: Callable[[Distribution, Tensor], Tensor]
    noise: str  # "standard_normal" or "uniform" (in [0, 1))
    batch_axis: int  # where the batch is in the noise's shape

    @property
    def random_op(self) -> str:
        return "RandomNormalLike" if self.noise == "standard_normal" else "RandomUniformLike"

    def draw_in_graph(self, dist: Distribution) -> Tensor:
        like = self.like(dist)
        return torch.randn_like(like) if self.noise == "standard_normal" else torch.rand_like(like)


def _exportable(noise: NoiseDistribution) -> bool:
    """A distribution exports when it makes its samples from standard noise (``from_noise``)."""
    return type(noise).from_noise is not NoiseDistribution.from_noise and noise.noise_kind in (
        "standard_normal",
        "uniform",
    )


def _sampler_for(noise: NoiseDistribution) -> _Sampler:
    def apply(dist: Distribution, standard: Tensor) -> Tensor:
        return noise.from_noise(dist, standard.view_as(noise.noise_like(dist)), training=False)

    return _Sampler(noise.noise_like, apply, noise.noise_kind, noise.noise_batch_axis)


def exportable_distributions() -> list[str]:
    """The registered distribution names :func:`export_onnx` can sample in ONNX (in either noise mode)."""
    return [name for name in names() if _exportable(get(name))]


class _LabelFreeObfuscation(nn.Module):
    """The obfuscator's label-free path, ``x -> h`` or ``(x, noise) -> h``, as one traceable module.

    It goes through the obfuscator's own code (``features``, ``select`` with no labels, which
    picks the attached soft or gated selection, and ``layer.distribution``); only the final draw
    is replaced by the sampler: from the ``noise`` input, or (``noise=None``) from ONNX random ops.
    """

    def __init__(self, obfuscator: Obfuscator, sampler: _Sampler) -> None:
        super().__init__()
        self.obfuscator = obfuscator
        self.sampler = sampler

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        features = self.obfuscator.features(x)
        pi = self.obfuscator.select(features, inputs=x)
        dist = self.obfuscator.layer.distribution(features, pi)
        return self.sampler.apply(dist, self.sampler.draw_in_graph(dist) if noise is None else noise)


def _draw(distribution: str, shape: Sequence[int], dtype: Any, rng: Any = None) -> Any:
    """Standard noise of ``shape`` (the :func:`draw_noise` contract): from the process's cipher
    stream, or from the numpy generator ``rng`` when one is given (reproducible tests)."""
    import numpy as np

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
    if not _exportable(obfuscator.layer.noise):
        raise ConfigError(
            f"the {name!r} distribution cannot be exported to ONNX: it does not make its samples from "
            "standard noise (implement noise_like, from_noise and noise_kind, see "
            f"scl.distributions.NoiseDistribution); exportable distributions: {exportable_distributions()}"
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
    like: dict[str, Any] = {"device": parameter.device, "dtype": parameter.dtype} if parameter is not None else {}
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
    onnx, ort = _import_onnx()
    selection_kind = _check_obfuscator(obfuscator)
    noise = _check_noise_mode(noise)
    path = _check_path(path)
    opset = _check_opset(opset)
    example = _example(obfuscator, input_shape, example_input)
    name = obfuscator.layer.noise.name
    sampler = _sampler_for(obfuscator.layer.noise)

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
                drawn = _draw(sampler.noise, noise_shape, dtype)
                example_noise = torch.from_numpy(drawn).to(example.device)
            module = _LabelFreeObfuscation(obfuscator, sampler)
            proto = _trace(module, example, example_noise, sampler.batch_axis, opset, dynamic_batch)
    finally:
        obfuscator.train(was_training)

    model = onnx.load_from_string(proto)
    _check_graph(model, sampler, None if example_noise is None else example_noise.cpu().numpy())
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
    _check_runs(ort, data, example, output_shape, dynamic_batch, None if noise == "internal" else metadata)
    try:
        with atomic_write(path, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise ConfigError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
    return path


def _check_noise_mode(noise: Any) -> str:
    if not isinstance(noise, str) or noise not in NOISE_MODES:
        raise ConfigError(
            f"noise must be one of {list(NOISE_MODES)}, but got {noise!r}: 'input' (the default) makes the "
            "caller feed fresh noise from a strong random source; 'internal' draws it inside the graph "
            "from onnxruntime's 32-bit seed"
        )
    return noise


def _trace(
    module: _LabelFreeObfuscation,
    example: Tensor,
    example_noise: Tensor | None,
    noise_batch_axis: int,
    opset: int | None,
    dynamic_batch: bool,
) -> bytes:
    buffer = io.BytesIO()
    args: tuple[Tensor, ...] = (example,) if example_noise is None else (example, example_noise)
    names = [INPUT_NAME] if example_noise is None else [INPUT_NAME, NOISE_NAME]
    axes: dict[str, dict[int, str]] | None = None
    if dynamic_batch:
        axes = {INPUT_NAME: {0: BATCH}, OUTPUT_NAME: {0: BATCH}}
        if example_noise is not None:
            axes[NOISE_NAME] = {noise_batch_axis: BATCH}
    with warnings.catch_warnings(), _exporter_fixes():
        # The tracer warns where scl's input checks turn tensors into Python bools: they ran on
        # the example (validated above) and rightly drop out of the graph.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
        try:
            torch.onnx.export(
                module,
                args,
                buffer,  # type: ignore[arg-type]  # the TorchScript exporter (dynamo=False) takes file objects
                dynamo=False,
                input_names=names,
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


def _custom_symbolic(name: str, opset: int) -> Callable[..., Any] | None:
    """The custom symbolic a user registered for ``name`` at ``opset``, if any. torch.onnx has no
    public getter: this reads the registry its ``register_custom_op_symbolic`` writes to (``None``
    where that registry is not found, e.g. in another torch version)."""
    registry = getattr(torch.onnx.register_custom_op_symbolic, "__globals__", {}).get("registration")
    group = getattr(getattr(registry, "registry", None), "get_function_group", lambda _: None)(name)
    functions = getattr(group, "_functions", None)
    if functions is None or not functions.overridden(opset):
        return None
    return cast("Callable[..., Any]", functions[opset])


@contextlib.contextmanager
def _exporter_fixes() -> Iterator[None]:
    """Use :func:`_movedim_symbolic` for the duration of one export (every opset: movedim's
    built-in symbolic is registered at opset 9). The registry is the whole process's: a symbolic
    the user had registered for movedim is put back after the export."""
    previous = _custom_symbolic("aten::movedim", 9)
    torch.onnx.register_custom_op_symbolic("aten::movedim", _movedim_symbolic, 9)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::movedim", 9)
        if previous is not None:
            torch.onnx.register_custom_op_symbolic("aten::movedim", previous, 9)


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


def _check_graph(model: Any, sampler: _Sampler, example_noise: Any | None) -> None:
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


def _check_runs(
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


def describe(path: str | os.PathLike[str]) -> str:
    """One line about an exported model: size, opset, inputs and output, noise, selection."""
    onnx, _ = _import_onnx()
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
    import numpy as np

    distribution, shape, dtype = _noise_contract(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ShapeError(f"batch_size must be a positive int (the batch of x), but got {batch_size!r}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise ConfigError(
            "rng must be None (the default: the cipher stream) or, for reproducible tests only, a seeded "
            f"numpy.random.Generator, but got {type(rng).__name__}"
        )
    return _draw(distribution, [int(batch_size) if d == BATCH else int(d) for d in shape], dtype, rng)


def _noise_contract(model: Any) -> tuple[str, list[int | str], str]:
    """``(distribution, shape with "batch", dtype)`` from a model file or its metadata."""
    if isinstance(model, Mapping):
        meta, where = dict(model), "the metadata"
    elif isinstance(model, (str, os.PathLike)):
        onnx, _ = _import_onnx()
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


# -- run folders and checkpoints (for the command line) ------------------------------------------


def load_for_export(
    source: str | os.PathLike[str], *, selection: str | None = None
) -> tuple[Obfuscator, tuple[int, ...] | None]:
    """The obfuscator to export from a run folder or a checkpoint, and its input shape if recorded.

    Args:
        source: a run folder written by ``scl train``/``scl demo`` (its
            ``checkpoints/obfuscator.safetensors``, with ``gated.safetensors`` for
            ``selection="gated"``), or an obfuscator checkpoint written by ``scl.save``.
        selection: for a run folder, ``"soft"`` or ``"gated"`` (``None``: the gated one when the run
            has it, the headline label-free release, else soft); for a checkpoint, the selection it
            must hold (``None``: whichever it holds).

    The input shape comes from the run's ``metrics.json`` (also for a checkpoint inside a run's
    ``checkpoints/`` folder); ``None`` when it is not recorded.
    """
    if selection not in (None, "soft", "gated"):
        raise ConfigError(f"selection must be 'soft' or 'gated', but got {selection!r}")
    source = Path(source)
    if source.is_dir():
        if not (source / "checkpoints" / CHECKPOINTS["obfuscator"]).is_file():
            raise ConfigError(
                f"{str(source)!r} is a folder without checkpoints/{CHECKPOINTS['obfuscator']}; pass a run "
                "folder written by `scl train` or `scl demo`, or an obfuscator checkpoint (.safetensors)"
            )
        obfuscator, _ = load_label_free(source, selection)
        return obfuscator, recorded_shape(source)
    if not source.is_file():
        raise CheckpointError(
            f"{str(source)!r} does not exist; pass a run folder written by `scl train` or `scl demo`, "
            "or an obfuscator checkpoint (.safetensors) written by scl.save"
        )
    obfuscator = load_obfuscator(source)
    held = "soft" if isinstance(obfuscator.selection, SoftSelection) else "gated"
    if selection is not None and obfuscator.selection is not None and held != selection:
        raise ConfigError(
            f"{str(source)!r} holds a {held} selection, not a {selection} one; drop --selection or pass "
            "the run folder"
        )
    run = source.parent.parent if source.parent.name == "checkpoints" else None
    return obfuscator, recorded_shape(run) if run is not None else None


