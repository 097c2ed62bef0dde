"""The checks of :func:`~scl.export.export_onnx`'s arguments, each with a message that says what to
pass instead: the obfuscator, the input shape or example, the path, the opset and the noise mode."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scl.errors import ConfigError, ShapeError
from scl.export.trace import exportable, exportable_distributions
from scl.layers import (
    StochasticConditional,
    StochasticConditionalAdditive,
    StochasticConditionalConv2d,
    StochasticConditionalLinear,
)
from scl.obfuscator import Obfuscator
from scl.selection import GatedSelection, SoftSelection

NOISE_MODES = ("input", "internal")
# The opsets tested (every layer and distribution above exports and runs at 13 and at 20, the
# TorchScript exporter's maximum and default).
MIN_OPSET, MAX_OPSET = 13, 20


def check_obfuscator(obfuscator: Any) -> str:
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
    if not exportable(obfuscator.layer.noise):
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


def example_batch(
    obfuscator: Obfuscator, input_shape: Sequence[int] | None, example_input: Tensor | None
) -> Tensor:
    """The batch to trace with: ``example_input`` checked, or a random batch of 2 of ``input_shape``
    (given, or inferred from the obfuscator)."""
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


def check_path(path: str | os.PathLike[str]) -> Path:
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


def check_opset(opset: Any) -> int | None:
    if opset is None:
        return None
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(
            f"opset must be an int in [{MIN_OPSET}, {MAX_OPSET}] or None (the exporter's default), "
            f"but got {opset!r}"
        )
    return opset


def check_noise_mode(noise: Any) -> str:
    if not isinstance(noise, str) or noise not in NOISE_MODES:
        raise ConfigError(
            f"noise must be one of {list(NOISE_MODES)}, but got {noise!r}: 'input' (the default) makes the "
            "caller feed fresh noise from a strong random source; 'internal' draws it inside the graph "
            "from onnxruntime's 32-bit seed"
        )
    return noise

