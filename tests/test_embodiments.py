"""Tests of the embodiments of spec §5: x -> L -> S -> N, and N split into N1 / N2 with a merge."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import scl
from scl.embodiments import merge

C = 3
B = 2
LABELS = torch.tensor([0, 2])


def network(in_channels: int, num_outputs: int = 5) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, num_outputs),
    )


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- §5.1


@pytest.mark.parametrize("with_labels", [True, False], ids=["hard", "soft"])
def test_obfuscated_network_output_shape_and_gradient_to_n(with_labels: bool) -> None:
    # prepare
    pre = nn.Conv2d(1, 2, 3, padding=1)
    obfuscator = scl.Obfuscator(
        scl.StochasticConditionalConv2d(2, 3, 3, C, padding=1), scl.SoftSelection(C), pre=pre
    ).freeze_layer()
    n = network(3)
    model = scl.ObfuscatedNetwork(obfuscator, n)
    x = torch.randn(B, 1, 8, 8)

    # execute
    out = model(x, LABELS if with_labels else None)
    out.sum().backward()

    # assert
    assert out.shape == (B, 5)
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in n.parameters())
    assert all(p.grad is None for p in obfuscator.layer.parameters())
    assert all(p.grad is None for p in pre.parameters())


def test_obfuscated_network_is_n_of_the_obfuscated_input() -> None:
    # prepare
    obfuscator = scl.Obfuscator(scl.StochasticConditionalConv2d(1, 3, 3, C, padding=1))
    n = network(3)
    model = scl.ObfuscatedNetwork(obfuscator, n).eval()
    x = torch.randn(B, 1, 8, 8)

    # execute
    with scl.deterministic(0):
        out = model(x, LABELS)
    with scl.deterministic(0):
        expected = n(obfuscator(x, LABELS))

    # assert
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_obfuscated_network_passes_boxes() -> None:
    obfuscator = scl.Obfuscator(scl.StochasticConditionalConv2d(1, 3, 3, C, padding=1))
    model = scl.ObfuscatedNetwork(obfuscator, network(3))
    boxes = [(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([1]))] * B
    assert model(torch.randn(B, 1, 8, 8), boxes=boxes).shape == (B, 5)


# --------------------------------------------------------------------------- §5.2 / §5.3


def split_network(order: str, how: str) -> tuple[scl.SplitNetwork, nn.Module]:
    """N1 and L map 1 -> 4 channels; S and N2 are sized for the merge and the order."""
    n1 = nn.Conv2d(1, 4, 3, padding=1)
    pre = nn.Conv2d(1, 4, 3, padding=1)
    merged = 8 if how == "concat" else 4
    s_in = merged if order == "merge_first" else 4
    s_out = 4
    n2_in = s_out if order == "merge_first" else (8 if how == "concat" else 4)
    layer = scl.StochasticConditionalConv2d(s_in, s_out, 3, C, padding=1)
    obfuscator = scl.Obfuscator(layer, scl.SoftSelection(C), pre=pre)
    n2 = network(n2_in)
    return scl.SplitNetwork(n1, n2, obfuscator, merge=how, order=order), n2


@pytest.mark.parametrize("how", ["concat", "sum"])
@pytest.mark.parametrize("order", ["merge_first", "obfuscate_first"])
@pytest.mark.parametrize("with_labels", [True, False], ids=["hard", "soft"])
def test_split_network_shapes_and_gradients(order: str, how: str, with_labels: bool) -> None:
    # prepare
    model, n2 = split_network(order, how)
    x = torch.randn(B, 1, 8, 8)

    # execute
    out = model(x, LABELS if with_labels else None)
    out.sum().backward()

    # assert
    assert out.shape == (B, 5)
    assert all(p.grad is not None for p in n2.parameters())
    assert all(p.grad is not None for p in model.n1.parameters())


@pytest.mark.parametrize("how", ["concat", "sum"])
@pytest.mark.parametrize("order", ["merge_first", "obfuscate_first"])
def test_split_network_computes_the_documented_composition(order: str, how: str) -> None:
    # prepare
    model, n2 = split_network(order, how)
    model.eval()
    x = torch.randn(B, 1, 8, 8)
    obf = model.obfuscator
    o1, o2 = model.n1(x), obf.pre(x)

    # execute
    with scl.deterministic(0):
        out = model(x, LABELS)
    with scl.deterministic(0):
        if order == "merge_first":
            expected = n2(obf.layer(merge(o1, o2, how), LABELS))
        else:
            expected = n2(merge(o1, obf.layer(o2, LABELS), how))

    # assert
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("order", ["merge_first", "obfuscate_first"])
def test_split_network_sum_of_mismatched_shapes_is_refused(order: str) -> None:
    # prepare: N1 gives 4 channels, L gives 2
    n1 = nn.Conv2d(1, 4, 3, padding=1)
    pre = nn.Conv2d(1, 2, 3, padding=1)
    s_in = 4 if order == "merge_first" else 2
    layer = scl.StochasticConditionalConv2d(s_in, 2, 3, C, padding=1)
    model = scl.SplitNetwork(
        n1, network(2), scl.Obfuscator(layer, pre=pre), merge="sum", order=order
    )

    # execute / assert
    with pytest.raises(scl.ShapeError, match="to sum, O1 and O2 must have the same shape"):
        model(torch.randn(B, 1, 8, 8), LABELS)


def test_concat_of_mismatched_spatial_sizes_is_refused() -> None:
    with pytest.raises(
        scl.ShapeError, match="to concatenate, O1 and O2 must match in every dim but 1"
    ):
        merge(torch.zeros(B, 2, 4, 4), torch.zeros(B, 2, 3, 3), "concat")


def test_concat_merges_along_channels() -> None:
    merged = merge(torch.zeros(B, 2, 4, 4), torch.ones(B, 3, 4, 4), "concat")
    assert merged.shape == (B, 5, 4, 4)
    assert merged[:, 2:].eq(1).all() and merged[:, :2].eq(0).all()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"merge": "product"}, r"merge must be one of \['concat', 'sum'\], but got 'product'"),
        ({"order": "later"}, r"order must be one of \['merge_first', 'obfuscate_first'\]"),
    ],
)
def test_split_network_refuses_unknown_options(kwargs: dict[str, str], message: str) -> None:
    obfuscator = scl.Obfuscator(scl.StochasticConditionalConv2d(1, 1, 1, C))
    with pytest.raises(scl.ConfigError, match=message):
        scl.SplitNetwork(nn.Identity(), nn.Identity(), obfuscator, **kwargs)
