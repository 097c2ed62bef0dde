"""Tracing: the obfuscator's label-free path as one traceable module, its draw from standard noise
(the distribution's own ``from_noise``), and torch's exporter with scl's one fix to it.

Exporter: torch 2.13 has two. The TorchScript exporter (``dynamo=False``, deprecated since torch
2.9 but present in 2.13) traces with real tensors, so scl's input validation runs once on the
example input and drops out of the graph, and the sampling ops are traced faithfully. That is the
exporter used here (its deprecation warning is silenced), with one fix for the duration of an
export: its ``movedim`` symbolic mangles negative dims, which the linear layer uses (see
:func:`_movedim_symbolic`).

Why not the default ``torch.export``-based one (``dynamo=True``, with onnxscript): as scl stands it
stops at the finiteness check of the input validation, which branches on tensor values (a
data-dependent guard). With that check skipped under tracing, as torchvision skips its own, it did
export all twenty cases (the conv, linear, additive and LSTM layers, each with the four
distributions, conv also gated) with onnxruntime's outputs equal to torch's within 5e-7 and a
dynamic batch (measured 2026-12-03, torch 2.13, onnxscript 0.7.2). Three costs keep it out:

- it took 2.4-2.6 s an export against 0.05 s for TorchScript (a warm conv export, 2 cores): the
  test suite's 45 exports would take about 2 minutes instead of a few seconds;
- it writes opset 18 at the least: asked for 13 it wrote 18, so the supported range [13, 20],
  which older runtimes need, would shrink to [18, 20];
- onnxscript would join the ``onnx`` extra.

When torch removes the TorchScript exporter, switch: skip the finiteness check while
``torch.compiler.is_compiling()``, pass ``dynamic_shapes`` for the batch instead of ``dynamic_axes``,
drop the movedim fix (dynamo's own lowering is right) and raise ``MIN_OPSET`` to 18.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from scl.distributions import NoiseDistribution, get, names
from scl.errors import ConfigError, SCLError
from scl.export.noise import BATCH, INPUT_NAME, NOISE_NAME, OUTPUT_NAME
from scl.obfuscator import Obfuscator


@dataclass(frozen=True)
class Sampler:
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


def exportable(noise: NoiseDistribution) -> bool:
    """A distribution exports when it makes its samples from standard noise (``from_noise``)."""
    return type(noise).from_noise is not NoiseDistribution.from_noise and noise.noise_kind in (
        "standard_normal",
        "uniform",
    )


def sampler_for(noise: NoiseDistribution) -> Sampler:
    def apply(dist: Distribution, standard: Tensor) -> Tensor:
        return noise.from_noise(dist, standard.view_as(noise.noise_like(dist)), training=False)

    return Sampler(noise.noise_like, apply, noise.noise_kind, noise.noise_batch_axis)


def exportable_distributions() -> list[str]:
    """The registered distribution names :func:`export_onnx` can sample in ONNX (in either noise mode)."""
    return [name for name in names() if exportable(get(name))]


class LabelFreeObfuscation(nn.Module):
    """The obfuscator's label-free path, ``x -> h`` or ``(x, noise) -> h``, as one traceable module.

    It goes through the obfuscator's own code (``features``, ``select`` with no labels, which
    picks the attached soft or gated selection, and ``layer.distribution``); only the final draw
    is replaced by the sampler: from the ``noise`` input, or (``noise=None``) from ONNX random ops.
    """

    def __init__(self, obfuscator: Obfuscator, sampler: Sampler) -> None:
        super().__init__()
        self.obfuscator = obfuscator
        self.sampler = sampler

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        features = self.obfuscator.features(x)
        pi = self.obfuscator.select(features, inputs=x)
        dist = self.obfuscator.layer.distribution(features, pi)
        return self.sampler.apply(dist, self.sampler.draw_in_graph(dist) if noise is None else noise)


def trace(
    module: LabelFreeObfuscation,
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

