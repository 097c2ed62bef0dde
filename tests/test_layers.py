"""Tests of the stochastic conditional layers: shapes, isolation, exactness, caching, errors."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

import scl

# --------------------------------------------------------------------------- tiny sizes

B, C = 3, 4  # batch, classes
IN, OUT, H, W = 2, 3, 5, 5  # convolution
T, F_IN, F_OUT = 4, 5, 6  # sequences / linear features
D_MODEL = 8  # transformer
LABELS = torch.tensor([2, 0, 3])

KINDS = ("conv", "linear", "additive", "lstm", "gru", "transformer")
GENERIC = ("lstm", "gru", "transformer")
PLACEMENTS = ("input", "output")
DISTRIBUTIONS = scl.distributions.names()


def factory(kind: str) -> Any:
    if kind == "lstm_2_layers_bidirectional":
        return functools.partial(
            nn.LSTM, F_IN, F_OUT, num_layers=2, bidirectional=True, batch_first=True
        )
    if kind == "gru_no_bias_bidirectional":
        return functools.partial(
            nn.GRU, F_IN, F_OUT, bias=False, bidirectional=True, batch_first=True
        )
    if kind == "lstm":
        return functools.partial(nn.LSTM, F_IN, F_OUT, batch_first=True)
    if kind == "gru":
        return functools.partial(nn.GRU, F_IN, F_OUT, batch_first=True)
    assert kind == "transformer", kind
    return functools.partial(
        nn.TransformerEncoderLayer, D_MODEL, 2, dim_feedforward=16, dropout=0.0, batch_first=True
    )


def make_layer(
    kind: str, distribution: str = "gaussian", selection_at: str = "input", **options: Any
) -> scl.StochasticConditionalLayer:
    common = {"distribution": distribution}
    if kind == "additive":
        return scl.StochasticConditionalAdditive((IN, H, W), C, **common)
    common["selection_at"] = selection_at
    if kind == "conv":
        return scl.StochasticConditionalConv2d(IN, OUT, 3, C, padding=1, **common, **options)
    if kind == "linear":
        return scl.StochasticConditionalLinear(F_IN, F_OUT, C, **common)
    return scl.StochasticConditional(factory(kind), C, **common)


def make_input(kind: str, batch: int = B) -> Tensor:
    if kind in ("conv", "additive"):
        return torch.randn(batch, IN, H, W)
    if kind == "transformer":
        return torch.randn(batch, T, D_MODEL)
    return torch.randn(batch, T, F_IN)


def output_shape(kind: str, batch: int = B) -> tuple[int, ...]:
    return {
        "conv": (batch, OUT, H, W),
        "additive": (batch, IN, H, W),
        "linear": (batch, T, F_OUT),
        "lstm": (batch, T, F_OUT),
        "gru": (batch, T, F_OUT),
        "transformer": (batch, T, D_MODEL),
    }[kind]


def class_parameters(layer: nn.Module) -> dict[str, Tensor]:
    """Every parameter whose leading dim is the class."""
    if isinstance(layer, scl.StochasticConditionalAdditive):
        return {"offsets": layer.offsets}
    if isinstance(layer, scl.StochasticConditional):
        return {f"stacked.{k}": v for k, v in layer.stacked.items()}
    return {"weight": layer.weight, "bias": layer.bias}


def spatial_selection(kind: str) -> Tensor:
    """A per-sample selection that varies over the layer's spatial/sequence positions."""
    if kind in ("conv", "additive"):
        return torch.rand(B, C, 1, H, W)  # padding=1 keeps H, W at the output
    return torch.rand(B, C, T, 1)


def selection(name: str, kind: str) -> Any:
    if name == "class_index":
        return scl.HardSelection(C)(LABELS)
    if name == "int_labels":
        return LABELS.clone()
    if name == "soft_shared":
        return scl.SoftSelection(C)()
    if name == "dense":
        return torch.softmax(torch.randn(B, C), -1)
    if name == "spatial":
        return spatial_selection(kind)
    raise AssertionError(name)


SELECTIONS = ("class_index", "int_labels", "soft_shared", "dense", "spatial")
SHAPE_CASES = [
    (kind, dist, at, sel)
    for kind in KINDS
    for dist in DISTRIBUTIONS
    for at in (("input",) if kind == "additive" else PLACEMENTS)  # additive has no placement
    for sel in SELECTIONS
]


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("kind,distribution,selection_at,sel", SHAPE_CASES)
def test_sample_and_distribution_have_the_output_shape(
    kind: str, distribution: str, selection_at: str, sel: str
) -> None:
    # prepare
    layer = make_layer(kind, distribution, selection_at)
    x = make_input(kind)
    pi = selection(sel, kind)
    expected = output_shape(kind)

    # execute
    layer.train()
    train_sample = layer(x, pi)
    layer.eval()
    eval_sample = layer(x, pi)
    dist = layer.distribution(x, pi)

    # assert
    assert train_sample.shape == expected
    assert eval_sample.shape == expected
    assert tuple(dist.batch_shape) == expected
    assert train_sample.dtype == eval_sample.dtype == torch.float32
    assert torch.isfinite(train_sample).all() and torch.isfinite(eval_sample).all()


def test_names_lists_the_four_distributions() -> None:
    assert {"binomial", "gaussian", "laplace", "multinomial"} <= set(DISTRIBUTIONS)


@pytest.mark.parametrize("selection_at", PLACEMENTS)
def test_conv_stride_gives_the_documented_output_size(selection_at: str) -> None:
    # prepare
    layer = scl.StochasticConditionalConv2d(
        IN, OUT, 3, C, stride=2, padding=1, selection_at=selection_at
    )
    x = torch.randn(B, IN, 7, 6)
    expected = (B, OUT, 4, 3)

    # execute
    hard = layer(x, LABELS)
    soft = layer(x, scl.SoftSelection(C, (1, 1, 1))())
    spatial = layer(x, torch.rand(B, C, 1, *((7, 6) if selection_at == "input" else (4, 3))))

    # assert
    assert hard.shape == soft.shape == spatial.shape == expected


def test_linear_accepts_a_plain_feature_vector() -> None:
    layer = scl.StochasticConditionalLinear(F_IN, F_OUT, C)
    assert layer(torch.randn(B, F_IN), LABELS).shape == (B, F_OUT)


# --------------------------------------------------------------------------- class isolation


@pytest.mark.parametrize(
    "kind,selection_at",
    [(k, at) for k in KINDS for at in (("input",) if k == "additive" else PLACEMENTS)],
)
def test_hard_selection_gives_gradients_only_to_the_selected_classes(
    kind: str, selection_at: str
) -> None:
    # prepare
    layer = make_layer(kind, "gaussian", selection_at).train()
    x = make_input(kind, batch=4)
    labels = torch.tensor([0, 2, 2, 0])

    # execute
    out = layer(x, labels)
    (out * torch.randn_like(out)).sum().backward()

    # assert
    for name, parameter in class_parameters(layer).items():
        grad = parameter.grad
        assert grad is not None, name
        assert torch.count_nonzero(grad[1]) == 0, f"{name}: class 1 was not selected"
        assert torch.count_nonzero(grad[3]) == 0, f"{name}: class 3 was not selected"
        assert torch.count_nonzero(grad[0]) > 0, f"{name}: class 0 was selected"
        assert torch.count_nonzero(grad[2]) > 0, f"{name}: class 2 was selected"


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_hard_selection_isolates_classes_for_every_distribution(distribution: str) -> None:
    # prepare
    layer = make_layer("conv", distribution).train()
    x = make_input("conv", batch=4)

    # execute
    layer(x, torch.tensor([0, 2, 2, 0])).sum().backward()

    # assert
    assert torch.count_nonzero(layer.weight.grad[[1, 3]]) == 0
    assert torch.count_nonzero(layer.bias.grad[[1, 3]]) == 0
    assert torch.count_nonzero(layer.weight.grad[0]) > 0
    assert torch.count_nonzero(layer.weight.grad[2]) > 0


# --------------------------------------------------------------------------- per-class references


def _as_map(p: Tensor, rank: int) -> Tensor:
    """``[N, *S]`` with S = () or of length ``rank`` -> ``[N, *S']`` of length ``rank``."""
    return p.reshape(p.shape[0], *([1] * rank)) if p.dim() == 1 else p


def conv_reference(layer: scl.StochasticConditionalConv2d, x: Tensor, pi: Tensor) -> Tensor:
    """The documented semantics, one class at a time. ``pi: [N, C, *S]``; rows of all params."""
    conv = functools.partial(
        F.conv2d, stride=layer.stride, padding=layer.padding, dilation=layer.dilation
    )
    batch, params = x.shape[0], layer.num_params
    total: Tensor | float = 0.0
    for c in range(layer.num_classes):
        weight, bias = layer.weight[c], layer.bias[c]
        p = _as_map(pi[:, c], 3)  # [N, ch|1, h|1, w|1]
        if layer.selection_at == "input":
            y = conv(x * p, weight)
            gate = p.mean(1, keepdim=True)  # pi_c averaged over channels
            if gate.shape[-2:] != (1, 1) and gate.shape[-2:] != y.shape[-2:]:
                gate = F.adaptive_avg_pool2d(gate, y.shape[-2:])
            total = total + y + bias.view(1, -1, 1, 1) * gate
        else:
            y = conv(x, weight, bias)
            y = y.reshape(batch, params, layer.out_channels, *y.shape[-2:]) * p.unsqueeze(1)
            total = total + y.reshape(batch, params * layer.out_channels, *y.shape[-2:])
    assert isinstance(total, Tensor)
    return total


def linear_reference(layer: scl.StochasticConditionalLinear, x: Tensor, pi: Tensor) -> Tensor:
    """Same for the linear layer; ``pi: [N, C, *S]`` with S of the rank of ``x[0]``."""
    params, rank = layer.num_params, x.dim() - 1
    total: Tensor | float = 0.0
    for c in range(layer.num_classes):
        weight, bias = layer.weight[c], layer.bias[c]
        p = _as_map(pi[:, c], rank)
        if layer.selection_at == "input":
            total = total + F.linear(x * p, weight) + bias * p.mean(-1, keepdim=True)
        else:
            y = F.linear(x, weight, bias)
            y = y.unflatten(-1, (params, layer.out_features)) * p.unsqueeze(-2)
            total = total + y.flatten(-2)
    assert isinstance(total, Tensor)
    return total


def additive_reference(layer: scl.StochasticConditionalAdditive, x: Tensor, pi: Tensor) -> Tensor:
    """``sum_c pi_c (x + m[c, 0])`` and ``sum_c pi_c m[c, p]``, stacked along dim 1."""
    maps: list[Tensor | float] = [0.0] * layer.num_params
    for c in range(layer.num_classes):
        p = _as_map(pi[:, c], x.dim() - 1)
        maps[0] = maps[0] + p * (x + layer.offsets[c, 0])
        for k in range(1, layer.num_params):
            maps[k] = maps[k] + p * layer.offsets[c, k]
    return torch.stack([torch.broadcast_to(m, x.shape) for m in maps], 1)


def conv_case(name: str, selection_at: str, out_hw: tuple[int, int]) -> tuple[Any, Tensor]:
    """(selection given to the layer, the same selection as a dense [N, C, *S] tensor)."""
    ch = IN if selection_at == "input" else OUT
    hw = (H, W) if selection_at == "input" else out_hw
    if name == "class_index":
        return scl.HardSelection(C)(LABELS), F.one_hot(LABELS, C).float()
    shared_shapes = {"shared_scalar": (), "shared_channel": (ch, 1, 1), "shared_spatial": (1, *hw)}
    if name in shared_shapes:
        soft = scl.SoftSelection(C, shared_shapes[name])
        with torch.no_grad():
            soft.logits.normal_()
        sel = soft()
        return sel, sel.values.unsqueeze(0)
    dense_shapes = {
        "sample_scalar": (B, C),
        "sample_channel": (B, C, ch, 1, 1),
        "spatial": (B, C, 1, *hw),
        "spatial_channel": (B, C, ch, *hw),
    }
    pi = torch.rand(dense_shapes[name], requires_grad=True)
    return pi, pi


CONV_CASES = (
    "class_index",
    "shared_scalar",
    "shared_channel",
    "shared_spatial",
    "sample_scalar",
    "sample_channel",
    "spatial",
    "spatial_channel",
)


def assert_grads_close(
    names: tuple[str, ...] | None, actual: list[Tensor], expected: list[Tensor]
) -> None:
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        name = names[i] if names else f"input {i}"
        torch.testing.assert_close(
            a, e, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"gradient w.r.t. {n}: {m}"
        )


def _grads(out: Tensor, inputs: list[Tensor], cotangent: Tensor) -> list[Tensor]:
    return list(torch.autograd.grad(out, inputs, cotangent, allow_unused=False))


def _float_leaf(sel: Any) -> list[Tensor]:
    """The trainable tensor behind a float selection (for gradient comparisons)."""
    if isinstance(sel, Tensor) and sel.dtype.is_floating_point and sel.requires_grad:
        return [sel]
    return []


# (kernel_size, stride, padding, dilation) -> output (H', W') for a 5x5 input
GEOMETRIES = {
    "k3_s1_p1": ((3, 3), 1, 1, 1, (5, 5)),
    "k3_s2_p1": ((3, 3), 2, 1, 1, (3, 3)),
    "k3_d2_p1": ((3, 3), 1, 1, 2, (3, 3)),
    "k3x2_same": ((3, 2), 1, "same", 1, (5, 5)),
    "k3_valid": ((3, 3), 1, "valid", 1, (3, 3)),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("distribution", ["binomial", "gaussian"])
@pytest.mark.parametrize("selection_at", PLACEMENTS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_the_per_class_reference(
    case: str, selection_at: str, distribution: str, geometry: str
) -> None:
    # prepare
    kernel_size, stride, padding, dilation, out_hw = GEOMETRIES[geometry]
    layer = scl.StochasticConditionalConv2d(
        IN,
        OUT,
        kernel_size,
        C,
        stride=stride,
        padding=padding,
        dilation=dilation,
        distribution=distribution,
        selection_at=selection_at,
    ).train()
    with torch.no_grad():
        layer.bias.normal_()  # make the bias terms matter
    x = torch.randn(B, IN, H, W, requires_grad=True)
    sel, pi = conv_case(case, selection_at, out_hw)
    inputs = [x, layer.weight, layer.bias, *_float_leaf(sel)]

    # execute
    actual = torch.cat(layer.params(x, sel), 1)
    expected = conv_reference(layer, x, pi)
    cotangent = torch.randn_like(expected)
    actual_grads = _grads(actual, inputs, cotangent)
    expected_grads = _grads(expected, inputs, cotangent)

    # assert
    assert actual.shape == (B, layer.num_params * OUT, *out_hw)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert_grads_close(("x", "weight", "bias", "pi"), actual_grads, expected_grads)


def test_conv_shared_selection_gradient_reaches_the_soft_logits_exactly() -> None:
    # prepare
    layer = scl.StochasticConditionalConv2d(IN, OUT, 3, C, padding=1).train()
    soft = scl.SoftSelection(C, (IN, 1, 1))
    with torch.no_grad():
        soft.logits.normal_()
    x = torch.randn(B, IN, H, W)

    # execute
    actual = torch.cat(layer.params(x, soft()), 1)
    expected = conv_reference(layer, x, soft.values.unsqueeze(0))
    g = torch.randn_like(actual)
    (actual_grad,) = torch.autograd.grad(actual, soft.logits, g)
    (expected_grad,) = torch.autograd.grad(expected, soft.logits, g)

    # assert
    torch.testing.assert_close(actual_grad, expected_grad, atol=1e-5, rtol=1e-5)


def linear_case(name: str, selection_at: str, x_rank: int) -> tuple[Any, Tensor]:
    f = F_IN if selection_at == "input" else F_OUT
    feature_shape = (f,) if x_rank == 2 else (1, f)
    if name == "class_index":
        return scl.HardSelection(C)(LABELS), F.one_hot(LABELS, C).float()
    if name in ("shared_scalar", "shared_feature"):
        soft = scl.SoftSelection(C, () if name == "shared_scalar" else feature_shape)
        with torch.no_grad():
            soft.logits.normal_()
        sel = soft()
        return sel, sel.values.unsqueeze(0)
    shapes = {
        "sample_scalar": (B, C),
        "sample_feature": (B, C, *feature_shape),
        "per_token": (B, C, T, 1),
        "per_element": (B, C, T, f),
    }
    pi = torch.rand(shapes[name], requires_grad=True)
    return pi, pi


LINEAR_CASES = [
    (name, rank)
    for rank in (2, 3)
    for name in (
        "class_index",
        "shared_scalar",
        "shared_feature",
        "sample_scalar",
        "sample_feature",
        *(("per_token", "per_element") if rank == 3 else ()),
    )
]


@pytest.mark.parametrize("distribution", ["binomial", "gaussian"])
@pytest.mark.parametrize("selection_at", PLACEMENTS)
@pytest.mark.parametrize("case,x_rank", LINEAR_CASES)
def test_linear_matches_the_per_class_reference(
    case: str, x_rank: int, selection_at: str, distribution: str
) -> None:
    # prepare
    layer = scl.StochasticConditionalLinear(
        F_IN, F_OUT, C, distribution=distribution, selection_at=selection_at
    ).train()
    with torch.no_grad():
        layer.bias.normal_()
    x = (
        torch.randn(B, F_IN, requires_grad=True)
        if x_rank == 2
        else torch.randn(B, T, F_IN, requires_grad=True)
    )
    sel, pi = linear_case(case, selection_at, x_rank)
    inputs = [x, layer.weight, layer.bias, *_float_leaf(sel)]

    # execute
    actual = torch.cat(layer.params(x, sel), -1)
    expected = linear_reference(layer, x, pi)
    cotangent = torch.randn_like(expected)
    actual_grads = _grads(actual, inputs, cotangent)
    expected_grads = _grads(expected, inputs, cotangent)

    # assert
    assert actual.shape == (*x.shape[:-1], layer.num_params * F_OUT)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert_grads_close(("x", "weight", "bias", "pi"), actual_grads, expected_grads)


@pytest.mark.parametrize("case", ["class_index", "shared", "sample_scalar", "spatial"])
def test_additive_matches_the_per_class_reference(case: str) -> None:
    # prepare
    layer = scl.StochasticConditionalAdditive((IN, H, W), C).train()
    with torch.no_grad():
        layer.offsets.normal_()
    x = torch.randn(B, IN, H, W, requires_grad=True)
    if case == "class_index":
        sel, pi = scl.HardSelection(C)(LABELS), F.one_hot(LABELS, C).float()
    elif case == "shared":
        sel = scl.SharedSelection(torch.rand(C, 1, H, W))
        pi = sel.values.unsqueeze(0)
    else:
        pi = torch.rand((B, C) if case == "sample_scalar" else (B, C, 1, H, W))
        sel = pi

    # execute
    actual = torch.stack(layer.params(x, sel), 1)
    expected = additive_reference(layer, x, pi)
    g = torch.randn_like(expected)
    actual_grads = _grads(actual, [x, layer.offsets], g)
    expected_grads = _grads(expected, [x, layer.offsets], g)

    # assert
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert_grads_close(None, actual_grads, expected_grads)


def class_network_output(layer: scl.StochasticConditional, c: int, p: int, x: Tensor) -> Tensor:
    """Run a plain nn module with the parameters of class c, distribution parameter p."""
    module = layer.factory()
    module.train(layer.training)
    names = [name for name, _ in module.named_parameters()]
    params = {name: layer.stacked[name.replace(".", "__")][c, p] for name in names}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused eval kernel has no backward
    try:
        out = functional_call(module, params, (x,))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return out[0] if isinstance(out, tuple) else out


def generic_reference(layer: scl.StochasticConditional, x: Tensor, pi: Tensor) -> list[Tensor]:
    """One sample and one class at a time; ``pi: [B, C]`` (one-hot for a hard selection)."""
    maps = []
    for p in range(layer.num_params):
        rows = []
        for b in range(x.shape[0]):
            row: Tensor | float = 0.0
            for c in range(layer.num_classes):
                weight = pi[b, c]
                if weight == 0:
                    continue
                xb = x[b : b + 1] * (weight if layer.selection_at == "input" else 1.0)
                row = row + weight * class_network_output(layer, c, p, xb)[0]
            assert isinstance(row, Tensor)
            rows.append(row)
        maps.append(torch.stack(rows))
    return maps


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("selection_at", PLACEMENTS)
@pytest.mark.parametrize(
    "kind", [*GENERIC, "lstm_2_layers_bidirectional", "gru_no_bias_bidirectional"]
)
def test_generic_hard_selection_equals_the_class_modules(
    kind: str, selection_at: str, training: bool
) -> None:
    # prepare
    layer = make_layer(kind, "gaussian", selection_at).train(training)
    x = make_input(kind).requires_grad_(True)
    params = list(layer.stacked.values())

    # execute
    actual = torch.stack(layer.params(x, LABELS))
    expected = torch.stack(generic_reference(layer, x, F.one_hot(LABELS, C).float()))
    g = torch.randn_like(expected)
    actual_grads = _grads(actual, [x, *params], g)
    expected_grads = _grads(expected, [x, *params], g)

    # assert
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert_grads_close(None, actual_grads, expected_grads)


@pytest.mark.parametrize("selection_at", PLACEMENTS)
@pytest.mark.parametrize("kind", GENERIC)
def test_generic_soft_selection_follows_the_documented_mixture(
    kind: str, selection_at: str
) -> None:
    # prepare
    layer = make_layer(kind, "gaussian", selection_at).train()
    x = make_input(kind)
    pi = torch.softmax(torch.randn(B, C), -1)

    # execute
    actual = torch.stack(layer.params(x, pi))
    expected = torch.stack(generic_reference(layer, x, pi))

    # assert
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["conv", "linear", "additive", "gru"])
def test_training_sample_is_loc_plus_scale_times_the_generators_noise(kind: str) -> None:
    # prepare
    layer = make_layer(kind, "gaussian").train()
    x = make_input(kind)

    # execute
    sample = layer(x, LABELS, generator=torch.Generator().manual_seed(5))
    dist = layer.distribution(x, LABELS)
    eps = torch.randn(sample.shape, generator=torch.Generator().manual_seed(5))

    # assert
    torch.testing.assert_close(sample, dist.loc + dist.scale * eps)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_params_per_class_is_each_class_on_its_own_input(kind: str) -> None:
    # prepare: x[:, c] is the input that class c sees
    layer = make_layer(kind, "gaussian").train()
    x = torch.stack([make_input(kind) for _ in range(C)], 1)

    # execute
    maps = layer.params_per_class(x)

    # assert
    for c in range(C):
        expected = layer.params(x[:, c], torch.full((B,), c))
        for actual_map, expected_map in zip(maps, expected, strict=True):
            torch.testing.assert_close(actual_map[:, c], expected_map, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_sample_with_distribution_is_forward_and_distribution_at_once(training: bool) -> None:
    # prepare
    layer = make_layer("conv", "laplace").train(training)
    x = make_input("conv")

    # execute
    sample, dist = layer.sample_with_distribution(
        x, LABELS, generator=torch.Generator().manual_seed(2)
    )
    forward = layer(x, LABELS, generator=torch.Generator().manual_seed(2))

    # assert
    torch.testing.assert_close(sample, forward, rtol=0, atol=0)
    torch.testing.assert_close(dist.loc, layer.distribution(x, LABELS).loc)


# --------------------------------------------------------------------------- one-hot soft == hard


@pytest.mark.parametrize("distribution", ["gaussian", "multinomial"])
@pytest.mark.parametrize(
    "kind,selection_at",
    [(k, at) for k in KINDS for at in (("input",) if k == "additive" else PLACEMENTS)],
)
def test_one_hot_dense_selection_equals_hard_selection(
    kind: str, selection_at: str, distribution: str
) -> None:
    # prepare
    layer = make_layer(kind, distribution, selection_at).train()
    if hasattr(layer, "bias"):
        with torch.no_grad():
            layer.bias.normal_()
    x = make_input(kind)
    one_hot = F.one_hot(LABELS, C).float()

    # execute
    hard = layer.params(x, LABELS)
    soft = layer.params(x, one_hot)
    hard_sample = layer(x, LABELS, generator=torch.Generator().manual_seed(1))
    soft_sample = layer(x, one_hot, generator=torch.Generator().manual_seed(1))

    # assert
    for h, s in zip(hard, soft, strict=True):
        torch.testing.assert_close(s, h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(soft_sample, hard_sample, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "kind,selection_at",
    [(k, at) for k in KINDS for at in (("input",) if k == "additive" else PLACEMENTS)],
)
def test_shared_one_hot_row_equals_hard_selection_of_a_one_class_batch(
    kind: str, selection_at: str, training: bool
) -> None:
    # prepare
    layer = make_layer(kind, "gaussian", selection_at).train(training)
    if hasattr(layer, "bias"):
        with torch.no_grad():
            layer.bias.normal_()
    x = make_input(kind)
    labels = torch.full((B,), 2)
    shared = scl.SharedSelection(F.one_hot(torch.tensor(2), C).float(), key=("one-hot", 2))

    # execute
    with torch.no_grad():
        hard = layer.params(x, labels)
        soft = layer.params(x, shared)

    # assert
    for h, s in zip(hard, soft, strict=True):
        torch.testing.assert_close(s, h, atol=1e-5, rtol=1e-5)


def test_untrained_soft_selection_at_the_input_is_the_mean_kernel_layer() -> None:
    # prepare
    layer = scl.StochasticConditionalConv2d(IN, OUT, 3, C, padding=1)
    x = torch.randn(B, IN, H, W)

    # execute
    soft = torch.cat(layer.params(x, scl.SoftSelection(C)()), 1)
    mean_layer = F.conv2d(x, layer.weight.mean(0), layer.bias.mean(0), padding=1)

    # assert
    torch.testing.assert_close(soft, mean_layer, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- cached mixed kernels


def _count_mixes(layer: nn.Module, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = layer._mix

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(layer, "_mix", counting)
    return calls


def _uncached(layer: nn.Module, x: Tensor, soft: scl.SoftSelection) -> Tensor:
    """The same computation without any cache (a fresh selection with no key)."""
    with torch.no_grad():
        return torch.cat(layer.params(x, scl.SharedSelection(soft.values.clone(), key=None)), 1)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_eval_reuses_the_mixed_kernels_on_the_second_call(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare
    layer = make_layer(kind).eval()
    soft = scl.SoftSelection(C)
    x = make_input(kind)
    calls = _count_mixes(layer, monkeypatch)

    # execute
    with torch.no_grad():
        first = torch.cat(layer.params(x, soft()), 1)
        second = torch.cat(layer.params(x, soft()), 1)

    # assert
    assert calls[0] == 1
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_optimizer_step_invalidates_the_cached_kernels() -> None:
    # prepare
    layer = make_layer("conv")
    soft = scl.SoftSelection(C)
    x = make_input("conv")
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.eval()
    with torch.no_grad():
        before = torch.cat(layer.params(x, soft()), 1)

    # execute
    layer.train()
    layer(x, LABELS).square().sum().backward()
    optimizer.step()
    layer.eval()
    with torch.no_grad():
        after = torch.cat(layer.params(x, soft()), 1)

    # assert
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, _uncached(layer, x, soft), atol=1e-6, rtol=1e-6)


def test_in_place_change_of_soft_logits_invalidates_the_cached_kernels() -> None:
    # prepare
    layer = make_layer("conv").eval()
    soft = scl.SoftSelection(C)
    x = make_input("conv")
    with torch.no_grad():
        before = torch.cat(layer.params(x, soft()), 1)

    # execute
    with torch.no_grad():
        soft.logits[1].add_(3.0)
        after = torch.cat(layer.params(x, soft()), 1)

    # assert
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, _uncached(layer, x, soft), atol=1e-6, rtol=1e-6)


def test_load_state_dict_invalidates_the_cached_kernels() -> None:
    # prepare
    layer = make_layer("conv").eval()
    other = make_layer("conv")
    soft = scl.SoftSelection(C)
    x = make_input("conv")
    with torch.no_grad():
        before = torch.cat(layer.params(x, soft()), 1)

    # execute
    layer.load_state_dict(other.state_dict())
    with torch.no_grad():
        after = torch.cat(layer.params(x, soft()), 1)

    # assert
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, _uncached(layer, x, soft), atol=1e-6, rtol=1e-6)


def test_an_edit_through_data_is_seen_after_invalidate_cache() -> None:
    # prepare: `param.data.mul_(...)` (weight clipping, averaging) bypasses the version counter
    layer = make_layer("conv").eval()
    soft = scl.SoftSelection(C)
    obfuscator = scl.Obfuscator(layer, soft)
    x = make_input("conv")
    with torch.no_grad():
        before = torch.cat(layer.params(x, soft()), 1)

    # execute: the layer's kernels, then the selection's logits, each through .data
    layer.weight.data.mul_(2.0)
    layer.invalidate_cache()
    with torch.no_grad():
        after_weight = torch.cat(layer.params(x, soft()), 1)
    expected_weight = _uncached(layer, x, soft)
    soft.logits.data[0].add_(3.0)
    obfuscator.invalidate_cache()  # the selection's cached values and the kernels mixed with them
    with torch.no_grad():
        after_logits = torch.cat(layer.params(x, soft()), 1)

    # assert
    assert not torch.allclose(after_weight, before)
    torch.testing.assert_close(after_weight, expected_weight, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(after_logits, after_weight)
    torch.testing.assert_close(after_logits, _uncached(layer, x, soft), atol=1e-6, rtol=1e-6)


def test_swapping_two_classes_kernels_invalidates_the_cache() -> None:
    # prepare: the swap keeps every sum of the weights; the version counter sees it, not the values
    layer = make_layer("conv").eval()
    soft = scl.SoftSelection(C)
    with torch.no_grad():
        soft.logits[0].add_(2.0)  # class 0 weighs more than class 1, so the swap changes the mix
    x = make_input("conv")
    with torch.no_grad():
        before = torch.cat(layer.params(x, soft()), 1)

    # execute
    with torch.no_grad():
        layer.weight[[0, 1]] = layer.weight[[1, 0]].clone()
        layer.bias[[0, 1]] = layer.bias[[1, 0]].clone()
        after = torch.cat(layer.params(x, soft()), 1)

    # assert
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, _uncached(layer, x, soft), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_a_cached_inference_call_reads_no_value_back_to_the_host(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # prepare: the cache's key is checked once per call; reading a value (a sum) to the host would
    # wait for the device on every inference call
    layer = make_layer(kind).eval()
    soft = scl.SoftSelection(C)
    with torch.no_grad():
        layer.params(make_input(kind), soft())  # fills both caches
    coeff = soft().values.reshape(1, C, -1)

    def host_sync(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cached call read a tensor's value back to the host")

    # execute
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(Tensor, name, host_sync)
    with torch.no_grad():
        selection = soft()
        weight, _ = layer._mix_cached(coeff, selection.key)
    monkeypatch.undo()

    # assert: the cached kernels came back, not fresh ones
    assert layer._mixed is not None and weight is layer._mixed[1]


def test_cache_is_not_shared_between_selection_objects() -> None:
    # prepare
    layer = make_layer("conv").eval()
    low, high = scl.SoftSelection(C, init=0.1), scl.SoftSelection(C, init=0.9)
    x = make_input("conv")

    # execute
    with torch.no_grad():
        first = torch.cat(layer.params(x, low()), 1)
        second = torch.cat(layer.params(x, high()), 1)

    # assert
    torch.testing.assert_close(first, _uncached(layer, x, low), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(second, _uncached(layer, x, high), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("layer_mode", ["train", "eval"])
@pytest.mark.parametrize(
    "kind,how",
    [("conv", "scl.freeze"), ("linear", "scl.freeze")]
    + [(kind, "Obfuscator.freeze_layer") for kind in KINDS],
)
def test_stage_two_trains_only_the_soft_logits(kind: str, how: str, layer_mode: str) -> None:
    # prepare
    layer = make_layer(kind)
    soft = scl.SoftSelection(C)
    obfuscator = scl.Obfuscator(layer, selection=soft)
    if how == "scl.freeze":
        scl.freeze(layer)
    else:
        obfuscator.freeze_layer()
    layer.train(layer_mode == "train")
    x = make_input(kind)

    # execute: two steps, so the second one runs after the logits changed
    optimizer = torch.optim.SGD(obfuscator.selection_parameters(), lr=1.0)
    outputs = []
    for _ in range(2):
        optimizer.zero_grad()
        out = obfuscator(x, generator=torch.Generator().manual_seed(0))
        outputs.append(out.detach())
        out.square().mean().backward()
        logits_grad = soft.logits.grad.clone()
        optimizer.step()

    # assert
    assert torch.count_nonzero(logits_grad) > 0
    assert all(p.grad is None for p in layer.parameters())
    assert all(not p.requires_grad for p in layer.parameters())
    assert not torch.allclose(outputs[0], outputs[1])


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_stage_two_gives_logit_gradients_for_every_distribution(distribution: str) -> None:
    # prepare
    layer = scl.freeze(make_layer("conv", distribution)).train()
    soft = scl.SoftSelection(C, (IN, 1, 1))
    x = make_input("conv")

    # execute
    out = layer(x, soft())
    (out * torch.randn_like(out)).sum().backward()

    # assert
    assert soft.logits.grad is not None
    assert torch.count_nonzero(soft.logits.grad) > 0
    assert all(p.grad is None for p in layer.parameters())


# --------------------------------------------------------------------------- errors


ALL_KINDS = KINDS


def bad_rank_input(kind: str) -> Tensor:
    if kind in ("conv", "additive"):
        return torch.randn(B, IN, H)
    return torch.randn(B)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_wrong_rank_input_is_refused(kind: str) -> None:
    layer = make_layer(kind)
    with pytest.raises(scl.SCLError, match="dimensions"):
        layer(bad_rank_input(kind), LABELS)


@pytest.mark.parametrize(
    "kind,x,message",
    [
        ("conv", torch.randn(B, IN + 1, H, W), r"x must have 2 channels \(dim 1\), but got 3"),
        ("linear", torch.randn(B, T, F_IN + 1), r"x must have 5 features \(dim -1\), but got 6"),
        ("additive", torch.randn(B, IN, H, W + 1), r"x must have shape \[B, 2, 5, 5\]"),
        ("lstm", torch.randn(B, T, F_IN + 1), "rejected an input of shape"),
        ("transformer", torch.randn(B, T, D_MODEL + 1), "rejected an input of shape"),
    ],
)
def test_wrong_channel_count_is_refused(kind: str, x: Tensor, message: str) -> None:
    layer = make_layer(kind)
    with pytest.raises(scl.SCLError, match=message):
        layer(x, LABELS)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_integer_input_is_refused(kind: str) -> None:
    layer = make_layer(kind)
    x = make_input(kind).mul(10).long()
    with pytest.raises(
        scl.SCLError, match="must be a floating-point tensor, but got dtype torch.int64"
    ):
        layer(x, LABELS)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_non_finite_input_is_refused(kind: str, bad: float) -> None:
    layer = make_layer(kind)
    x = make_input(kind)
    x.view(-1)[3] = bad
    with pytest.raises(scl.SCLError, match="x must be finite, but has 1 NaN or Inf values"):
        layer(x, LABELS)


@pytest.mark.parametrize("wrap", ["tensor", "class_index"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_labels_out_of_range_name_the_range_value_and_index(kind: str, wrap: str) -> None:
    # prepare
    layer = make_layer(kind)
    x = make_input(kind, batch=5)
    labels = torch.tensor([0, 1, 2, 7, 3])

    # execute / assert
    with pytest.raises(scl.SCLError, match=r"labels must be in \[0, 4\), but got 7 at index 3"):
        layer(x, labels if wrap == "tensor" else scl.ClassIndex(labels, C))


def test_negative_label_is_refused_with_its_index() -> None:
    layer = make_layer("conv")
    with pytest.raises(scl.SCLError, match=r"labels must be in \[0, 4\), but got -1 at index 1"):
        layer(make_input("conv"), torch.tensor([0, -1, 2]))


def test_hard_selection_refuses_out_of_range_labels() -> None:
    with pytest.raises(scl.SCLError, match=r"labels must be in \[0, 4\), but got 7 at index 3"):
        scl.HardSelection(C)(torch.tensor([0, 1, 2, 7]))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_labels_of_the_wrong_length_are_refused(kind: str) -> None:
    layer = make_layer(kind)
    with pytest.raises(
        scl.SCLError, match=r"labels must have one entry per sample \(3\), but got 2"
    ):
        layer(make_input(kind), torch.tensor([0, 1]))


@pytest.mark.parametrize("kind", ["conv", "linear", "gru"])
def test_float_labels_given_to_a_layer_are_refused(kind: str) -> None:
    layer = make_layer(kind)
    with pytest.raises(scl.SCLError, match=r"pi must have at least 2 dimensions"):
        layer(make_input(kind), torch.tensor([0.0, 1.0, 2.0]))


def test_float_labels_are_refused() -> None:
    with pytest.raises(scl.SCLError, match="labels must be integer class indices"):
        scl.HardSelection(C)(torch.tensor([0.0, 1.0, 2.0]))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_class_index_with_another_class_count_is_refused(kind: str) -> None:
    layer = make_layer(kind)
    pi = scl.HardSelection(C - 1)(torch.tensor([0, 1, 2]))
    with pytest.raises(scl.SCLError, match="the selection has 3 classes but the layer has 4"):
        layer(make_input(kind), pi)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_shared_selection_with_another_class_count_is_refused(kind: str) -> None:
    layer = make_layer(kind)
    with pytest.raises(
        scl.SCLError, match=r"must have 4 class tensors \(dim 0\), but got shape \(5,\)"
    ):
        layer(make_input(kind), scl.SoftSelection(C + 1)())


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_dense_selection_with_another_class_count_is_refused(kind: str) -> None:
    layer = make_layer(kind)
    with pytest.raises(
        scl.SCLError, match=r"pi must have shape \[B=3, C=4, \.\.\.\], but got \(3, 5\)"
    ):
        layer(make_input(kind), torch.rand(B, C + 1))


@pytest.mark.parametrize("kind", ["conv", "linear", "additive"])
def test_selection_of_an_incompatible_feature_shape_is_refused(kind: str) -> None:
    layer = make_layer(kind)
    pi = torch.rand(B, C, 7, 7, 7) if kind != "linear" else torch.rand(B, C, 7, 7)
    with pytest.raises(scl.SCLError, match="each class tensor of the selection must have shape"):
        layer(make_input(kind), pi)


def test_errors_are_value_errors() -> None:
    assert issubclass(scl.SCLError, ValueError)
    for error in (scl.ShapeError, scl.LabelError, scl.ConfigError, scl.CheckpointError):
        assert issubclass(error, scl.SCLError)


@pytest.mark.parametrize("kind", ["conv", "linear", "additive", "gru"])
def test_unknown_distribution_name_is_refused(kind: str) -> None:
    with pytest.raises(scl.SCLError, match=r"unknown distribution 'poisson'; expected one of \["):
        make_layer(kind, distribution="poisson")


@pytest.mark.parametrize("kind", ["conv", "linear", "gru"])
def test_unknown_placement_name_is_refused(kind: str) -> None:
    with pytest.raises(
        scl.SCLError, match=r"selection_at must be one of \['input', 'output'\], but got 'middle'"
    ):
        make_layer(kind, selection_at="middle")


@pytest.mark.parametrize(
    "make,message",
    [
        (
            lambda: scl.StochasticConditionalConv2d(0, OUT, 3, C),
            "in_channels must be a positive int",
        ),
        (lambda: scl.StochasticConditionalConv2d(IN, OUT, 0, C), "kernel_size must be an int >= 1"),
        (
            lambda: scl.StochasticConditionalConv2d(IN, OUT, 3, 0),
            "num_classes must be a positive int",
        ),
        (
            lambda: scl.StochasticConditionalLinear(F_IN, F_OUT, 2.5),
            "num_classes must be a positive",
        ),
        (lambda: scl.StochasticConditionalAdditive((), C), "shape must be a non-empty sequence"),
        (lambda: scl.StochasticConditional(42, C), "factory must be callable"),
        (lambda: scl.StochasticConditional(lambda: 42, C), "factory must return an nn.Module"),
    ],
)
def test_bad_constructor_arguments_are_refused(make: Any, message: str) -> None:
    with pytest.raises(scl.SCLError, match=message):
        make()


def test_extra_repr_tells_the_configuration() -> None:
    text = repr(make_layer("conv", "laplace", "output"))
    assert "num_classes=4" in text and "laplace" in text and "selection_at='output'" in text


# --------------------------------------------------------------------------- process-wide settings
@pytest.mark.parametrize("kind", GENERIC)
@pytest.mark.parametrize("before", [True, False])
def test_a_generic_layer_leaves_attentions_fastpath_switch_as_it_found_it(
    kind: str, before: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare: the switch is process-wide; only a network with attention may touch it, while
    # gradients are on, and it must be restored even when the call fails
    layer = make_layer(kind)
    x = make_input(kind)
    flips: list[bool] = []
    original, initial = torch.backends.mha.set_fastpath_enabled, torch.backends.mha.get_fastpath_enabled()
    original(before)

    def recording(value: bool) -> None:
        flips.append(value)
        original(value)

    monkeypatch.setattr(torch.backends.mha, "set_fastpath_enabled", recording)

    # execute
    try:
        layer(x, LABELS).sum().backward()
        with torch.no_grad():
            layer(x, LABELS)
        with pytest.raises(Exception):  # noqa: B017  (any failure inside the call)
            layer(x[..., :1], LABELS)
        after = torch.backends.mha.get_fastpath_enabled()
    finally:
        original(initial)

    # assert
    assert after is before
    if kind != "transformer" or not before:
        assert flips == []
