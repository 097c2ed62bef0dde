"""Tests of the Obfuscator: x -> L -> S with hard, box, soft and gated selections."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from torch import nn

import scl

C = 4
B = 3
LABELS = torch.tensor([1, 0, 3])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def conv_layer(**kwargs: Any) -> scl.StochasticConditionalConv2d:
    return scl.StochasticConditionalConv2d(2, 3, 3, C, padding=1, **kwargs)


def test_labels_give_the_hard_selection_sample() -> None:
    # prepare
    layer = conv_layer()
    obfuscator = scl.Obfuscator(layer, scl.SoftSelection(C))
    x = torch.randn(B, 2, 6, 6)

    # execute
    out = obfuscator(x, labels=LABELS, generator=gen())

    # assert
    torch.testing.assert_close(out, layer(x, LABELS, generator=gen()), rtol=0, atol=0)


def test_without_labels_the_attached_soft_selection_is_used() -> None:
    # prepare
    layer, soft = conv_layer(), scl.SoftSelection(C, (2, 1, 1))
    with torch.no_grad():
        soft.logits.normal_()
    obfuscator = scl.Obfuscator(layer, soft)
    x = torch.randn(B, 2, 6, 6)

    # execute
    out = obfuscator(x, generator=gen())

    # assert
    torch.testing.assert_close(out, layer(x, soft(), generator=gen()), rtol=0, atol=0)


def test_gated_selection_gives_label_free_inference() -> None:
    # prepare
    layer, gate = conv_layer(), scl.GatedSelection(C, 2, hidden=8)
    obfuscator = scl.Obfuscator(layer, gate).eval()
    x = torch.randn(B, 2, 6, 6)

    # execute
    out = obfuscator(x, generator=gen())
    pi = obfuscator.select(x)

    # assert
    assert out.shape == (B, 3, 6, 6)
    assert pi.shape == (B, C)
    torch.testing.assert_close(pi.sum(1), torch.ones(B))
    torch.testing.assert_close(out, layer(x, gate(x), generator=gen()), rtol=0, atol=0)


def test_gated_selection_trains_through_a_frozen_obfuscator() -> None:
    # prepare
    obfuscator = scl.Obfuscator(conv_layer(), scl.GatedSelection(C, 2, hidden=8)).freeze_layer()
    x = torch.randn(B, 2, 6, 6)

    # execute
    obfuscator(x).square().mean().backward()

    # assert
    assert all(p.grad is not None for p in obfuscator.selection_parameters())
    assert all(p.grad is None for p in obfuscator.layer.parameters())


def test_pre_layers_run_before_the_stochastic_layer() -> None:
    # prepare
    pre = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU())
    layer = conv_layer()
    obfuscator = scl.Obfuscator(layer, pre=pre)
    x = torch.randn(B, 1, 6, 6)

    # execute
    out = obfuscator(x, labels=LABELS, generator=gen())

    # assert
    torch.testing.assert_close(out, layer(pre(x), LABELS, generator=gen()), rtol=0, atol=0)
    torch.testing.assert_close(obfuscator.features(x), pre(x))


def test_boxes_give_masks_at_the_layer_input() -> None:
    # prepare
    layer = conv_layer()
    obfuscator = scl.Obfuscator(layer)
    x = torch.randn(1, 2, 6, 6)
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 3.0, 6.0]]), "labels": torch.tensor([2])}]
    masks = scl.HardSelection(C).from_boxes(targets, (6, 6), (6, 6))

    # execute
    out = obfuscator(x, boxes=targets, generator=gen())

    # assert
    torch.testing.assert_close(out, layer(x, masks, generator=gen()), rtol=0, atol=0)


def test_boxes_are_scaled_to_the_features_after_the_pre_layers() -> None:
    # prepare: L halves the resolution; boxes refer to the 8x8 image
    layer = conv_layer()
    obfuscator = scl.Obfuscator(layer, pre=nn.Conv2d(1, 2, 2, stride=2))
    x = torch.randn(1, 1, 8, 8)
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 8.0]]), "labels": torch.tensor([1])}]

    # execute
    dist = obfuscator.distribution(x, boxes=targets)

    # assert: the left half of the 4x4 features is class 1
    expected_masks = torch.zeros(1, C, 1, 4, 4)
    expected_masks[0, 1, 0, :, :2] = 1
    expected = layer.distribution(obfuscator.features(x), expected_masks)
    torch.testing.assert_close(dist.loc, expected.loc)


def test_boxes_with_selection_at_the_output_use_the_output_resolution() -> None:
    # prepare: stride 2 -> the selection lives on the 3x3 output
    layer = scl.StochasticConditionalConv2d(2, 3, 3, C, stride=2, padding=1, selection_at="output")
    obfuscator = scl.Obfuscator(layer)
    x = torch.randn(1, 2, 6, 6)
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 6.0, 2.0]]), "labels": torch.tensor([3])}]

    # execute
    out = obfuscator(x, boxes=targets, generator=gen())

    # assert
    masks = torch.zeros(1, C, 1, 3, 3)
    masks[0, 3, 0, 0, :] = 1
    assert out.shape == (1, 3, 3, 3)
    torch.testing.assert_close(out, layer(x, masks, generator=gen()), rtol=0, atol=0)


def test_box_background_option_reaches_the_masks() -> None:
    obfuscator = scl.Obfuscator(conv_layer(), box_background=0)
    x = torch.randn(1, 2, 4, 4)
    pi = obfuscator.select(x, boxes=[(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))])
    assert torch.all(pi[0, 0] == 1) and pi[0, 1:].sum() == 0


def test_distribution_matches_the_sample_shape() -> None:
    obfuscator = scl.Obfuscator(conv_layer(distribution="laplace"), scl.SoftSelection(C))
    x = torch.randn(B, 2, 6, 6)
    assert tuple(obfuscator.distribution(x).batch_shape) == obfuscator(x).shape
    assert tuple(obfuscator.distribution(x, labels=LABELS).batch_shape) == (B, 3, 6, 6)


def test_linear_obfuscator_on_feature_vectors() -> None:
    layer = scl.StochasticConditionalLinear(5, 5, C)
    obfuscator = scl.Obfuscator(layer, scl.SoftSelection(C))
    x = torch.randn(B, 5)
    assert obfuscator(x).shape == obfuscator(x, labels=LABELS).shape == (B, 5)


# --------------------------------------------------------------------------- stage 2


def test_freeze_layer_leaves_only_the_selection_trainable() -> None:
    # prepare
    pre = nn.Conv2d(1, 2, 1)
    obfuscator = scl.Obfuscator(conv_layer(), scl.SoftSelection(C), pre=pre)

    # execute
    returned = obfuscator.freeze_layer()

    # assert
    assert returned is obfuscator
    assert not any(p.requires_grad for p in obfuscator.layer.parameters())
    assert not any(p.requires_grad for p in pre.parameters())
    assert obfuscator.selection_parameters() == [obfuscator.selection.logits]


def test_freeze_returns_the_module_with_every_parameter_frozen() -> None:
    layer = conv_layer()
    assert scl.freeze(layer) is layer
    assert not any(p.requires_grad for p in layer.parameters())


def test_stage_two_optimisation_moves_the_logits_and_keeps_the_layer() -> None:
    # prepare: a target that only the soft selection can reach
    layer = conv_layer()
    obfuscator = scl.Obfuscator(layer, scl.SoftSelection(C)).freeze_layer()
    weights = layer.weight.detach().clone()
    optimizer = torch.optim.Adam(obfuscator.selection_parameters(), lr=0.1)
    x = torch.randn(B, 2, 6, 6)

    # execute
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = obfuscator.distribution(x).loc.square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    # assert
    assert losses[-1] < losses[0]
    torch.testing.assert_close(layer.weight, weights, rtol=0, atol=0)


# --------------------------------------------------------------------------- errors


def test_calling_without_labels_and_without_selection_is_refused() -> None:
    obfuscator = scl.Obfuscator(conv_layer())
    with pytest.raises(
        scl.SCLError, match="no labels or boxes were given and the obfuscator has no"
    ):
        obfuscator(torch.randn(B, 2, 6, 6))


def test_labels_and_boxes_together_are_refused() -> None:
    obfuscator = scl.Obfuscator(conv_layer())
    boxes = [(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))] * B
    with pytest.raises(scl.LabelError, match=r"either labels \(classification\) or boxes"):
        obfuscator(torch.randn(B, 2, 6, 6), labels=LABELS, boxes=boxes)


@pytest.mark.parametrize(
    "selection", [scl.SoftSelection(C + 1), scl.GatedSelection(C - 1, 2)], ids=["soft", "gated"]
)
def test_a_selection_with_another_class_count_is_refused(selection: nn.Module) -> None:
    with pytest.raises(scl.SCLError, match=r"the selection has \d classes but the layer has 4"):
        scl.Obfuscator(conv_layer(), selection)


def test_a_selection_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(
        scl.ConfigError, match="selection must be a SoftSelection or a GatedSelection"
    ):
        scl.Obfuscator(conv_layer(), scl.HardSelection(C))  # type: ignore[arg-type]


def test_a_plain_layer_is_refused() -> None:
    with pytest.raises(scl.ConfigError, match="layer must be a stochastic conditional layer"):
        scl.Obfuscator(nn.Conv2d(2, 3, 3))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "labels,message",
    [
        (torch.tensor([0, 1]), r"labels must have one entry per sample \(3\), but got 2"),
        (torch.tensor([0, 1, 9]), r"labels must be in \[0, 4\), but got 9 at index 2"),
        (torch.tensor([0.0, 1.0, 2.0]), "labels must be integer class indices"),
    ],
)
def test_bad_labels_are_refused(labels: torch.Tensor, message: str) -> None:
    obfuscator = scl.Obfuscator(conv_layer())
    with pytest.raises(scl.LabelError, match=message):
        obfuscator(torch.randn(B, 2, 6, 6), labels=labels)


def test_one_target_per_image_is_required() -> None:
    obfuscator = scl.Obfuscator(conv_layer())
    with pytest.raises(
        scl.LabelError, match=r"boxes must have one target per image \(3\), but got 1"
    ):
        obfuscator(torch.randn(B, 2, 6, 6), boxes=[(torch.zeros(0, 4), torch.zeros(0))])


def test_bad_input_is_refused_before_the_pre_layers() -> None:
    obfuscator = scl.Obfuscator(conv_layer(), pre=nn.Conv2d(2, 2, 1))
    with pytest.raises(scl.ShapeError, match="x must be a floating-point tensor"):
        obfuscator(torch.ones(B, 2, 6, 6, dtype=torch.uint8), labels=LABELS)


def test_selection_parameters_without_a_selection_is_refused() -> None:
    with pytest.raises(scl.ConfigError, match="the obfuscator has no selection to train"):
        scl.Obfuscator(conv_layer()).selection_parameters()


@pytest.mark.parametrize("stride, size", [(1, 6), (2, 3)])
def test_boxes_at_the_output_of_a_generic_layer_use_its_output_resolution(stride: int, size: int) -> None:
    # prepare: any module as the parameter network; its output size is only known by running it
    factory = functools.partial(nn.Conv2d, 2, 3, 3, stride=stride, padding=1)
    layer = scl.StochasticConditional(factory, C, selection_at="output")
    obfuscator = scl.Obfuscator(layer)
    x = torch.randn(1, 2, 6, 6)
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 6.0, 2.0]]), "labels": torch.tensor([3])}]

    # execute
    out = obfuscator(x, boxes=targets, generator=gen())

    # assert: class 3's mask covers the top third of the output, whatever its resolution
    masks = scl.HardSelection(C).from_boxes(targets, (size, size), (6, 6))
    assert layer.output_spatial(x) == (size, size)
    assert out.shape == (1, 3, size, size)
    torch.testing.assert_close(out, layer(x, masks, generator=gen()), rtol=0, atol=0)


def test_output_spatial_of_a_generic_layer_reports_a_rejected_input() -> None:
    layer = scl.StochasticConditional(functools.partial(nn.Conv2d, 2, 3, 3), C, selection_at="output")
    with pytest.raises(scl.ShapeError, match=r"rejected an input of shape \(1, 5, 6, 6\)"):
        layer.output_spatial(torch.randn(1, 5, 6, 6))
