"""Tests of the selection layers: HardSelection (labels, boxes), SoftSelection, GatedSelection."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import scl

C = 4


def target(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


# --------------------------------------------------------------------------- labels


def test_hard_selection_from_labels_is_a_class_index() -> None:
    # execute
    pi = scl.HardSelection(C)(torch.tensor([3, 0, 1], dtype=torch.int32))

    # assert
    assert isinstance(pi, scl.ClassIndex)
    assert pi.num_classes == C and len(pi) == 3
    assert pi.labels.dtype == torch.int64
    assert pi.labels.tolist() == [3, 0, 1]


def test_class_index_dense_is_one_hot_with_trailing_singletons() -> None:
    pi = scl.HardSelection(C)(torch.tensor([3, 0]))
    dense = pi.dense(rank=3)
    assert dense.shape == (2, C, 1, 1, 1)
    torch.testing.assert_close(dense.flatten(1), F.one_hot(torch.tensor([3, 0]), C).float())


def test_hard_selection_accepts_a_list_of_labels() -> None:
    assert scl.HardSelection(C)([1, 2]).labels.tolist() == [1, 2]


@pytest.mark.parametrize(
    "labels,message",
    [
        (torch.tensor([0, 4]), r"labels must be in \[0, 4\), but got 4 at index 1"),
        (
            torch.tensor([0.0, 1.0]),
            "labels must be integer class indices, but got dtype torch.float32",
        ),
        (torch.tensor([True, False]), "labels must be integer class indices"),
        (torch.tensor([[0, 1]]), r"labels must be a 1-D tensor \[B\], but got shape \(1, 2\)"),
        ("cat", "labels must be a tensor of class indices"),
    ],
)
def test_bad_labels_are_refused(labels: Any, message: str) -> None:
    with pytest.raises(scl.LabelError, match=message):
        scl.HardSelection(C)(labels)


@pytest.mark.parametrize("num_classes", [0, -1, 2.0, True, "4"])
def test_bad_class_count_is_refused(num_classes: Any) -> None:
    with pytest.raises(scl.SCLError, match="num_classes must be a positive int"):
        scl.HardSelection(num_classes)


# --------------------------------------------------------------------------- boxes


def test_from_boxes_has_one_mask_per_class_and_image() -> None:
    # prepare
    hard = scl.HardSelection(C)
    targets = [target([[0, 0, 4, 4]], [1]), target([], [])]

    # execute
    masks = hard.from_boxes(targets, size=(6, 8), image_size=(6, 8))

    # assert
    assert masks.shape == (2, C, 1, 6, 8)
    assert masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks[1].sum() == 0  # an image without boxes selects nothing


def test_from_boxes_sets_exactly_the_pixels_of_the_box() -> None:
    # prepare: pixel [y, y+1) x [x, x+1); box (x0, y0, x1, y1) = (1, 2, 4, 5)
    hard = scl.HardSelection(C)

    # execute
    masks = hard.from_boxes([target([[1, 2, 4, 5]], [2])], size=(8, 8), image_size=(8, 8))

    # assert
    expected = torch.zeros(8, 8)
    expected[2:5, 1:4] = 1
    torch.testing.assert_close(masks[0, 2, 0], expected)
    assert masks[0, [0, 1, 3]].sum() == 0


def test_from_boxes_takes_the_union_of_boxes_of_one_class() -> None:
    hard = scl.HardSelection(C)
    masks = hard.from_boxes(
        [target([[0, 0, 2, 2], [1, 1, 4, 3]], [3, 3])], size=(5, 5), image_size=(5, 5)
    )
    expected = torch.zeros(5, 5)
    expected[0:2, 0:2] = 1
    expected[1:3, 1:4] = 1
    torch.testing.assert_close(masks[0, 3, 0], expected)


def test_overlapping_boxes_of_different_classes_set_both_masks() -> None:
    # prepare
    hard = scl.HardSelection(C)

    # execute
    masks = hard.from_boxes(
        [target([[0, 0, 3, 3], [2, 2, 5, 5]], [0, 1])], size=(5, 5), image_size=(5, 5)
    )

    # assert
    assert masks[0, 0, 0, 2, 2] == 1 and masks[0, 1, 0, 2, 2] == 1
    assert masks[0, 0, 0, 0, 0] == 1 and masks[0, 1, 0, 0, 0] == 0
    assert masks[0, 1, 0, 4, 4] == 1 and masks[0, 0, 0, 4, 4] == 0


def test_from_boxes_scales_boxes_to_a_coarser_mask() -> None:
    # prepare: 32x32 image, 4x4 mask (8 pixels per cell); a box over the left half
    hard = scl.HardSelection(C)

    # execute
    masks = hard.from_boxes([target([[0, 0, 16, 32]], [1])], size=(4, 4), image_size=(32, 32))

    # assert
    expected = torch.zeros(4, 4)
    expected[:, :2] = 1
    torch.testing.assert_close(masks[0, 1, 0], expected)


def test_from_boxes_scales_width_and_height_independently() -> None:
    hard = scl.HardSelection(C)
    masks = hard.from_boxes([target([[0, 0, 20, 10]], [0])], size=(2, 4), image_size=(20, 40))
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(masks[0, 0, 0], expected)


def test_a_tiny_box_still_selects_at_least_one_pixel_at_a_coarse_size() -> None:
    # prepare: a 1x1-pixel box inside cell (1, 2) of an 8x8 grid over a 64x64 image
    hard = scl.HardSelection(C)

    # execute
    masks = hard.from_boxes([target([[20, 10, 21, 11]], [3])], size=(8, 8), image_size=(64, 64))

    # assert
    assert masks[0, 3].sum() == 1
    assert masks[0, 3, 0, 1, 2] == 1


def test_a_box_that_ends_on_a_pixel_border_does_not_select_the_next_pixel() -> None:
    hard = scl.HardSelection(C)
    masks = hard.from_boxes([target([[0, 0, 2, 2]], [0])], size=(4, 4), image_size=(4, 4))
    assert masks[0, 0, 0].sum() == 4
    assert masks[0, 0, 0, 2].sum() == 0 and masks[0, 0, 0, :, 2].sum() == 0


def test_background_class_selects_pixels_outside_every_box() -> None:
    # prepare
    hard = scl.HardSelection(C, background=0)

    # execute
    masks = hard.from_boxes(
        [target([[0, 0, 2, 2], [3, 3, 4, 4]], [2, 0]), target([], [])],
        size=(4, 4),
        image_size=(4, 4),
    )

    # assert
    inside_class_2 = masks[0, 2, 0] == 1
    assert torch.all(masks[0, 0, 0][inside_class_2] == 0)  # class-2 pixels are not background
    assert masks[0, 0, 0, 3, 3] == 1  # a class-0 box stays selected
    assert masks[0, 0, 0, 1, 3] == 1  # outside every box: background
    assert torch.all(masks[0].sum(0) >= 1)  # every pixel goes through some class
    assert torch.all(masks[1, 0] == 1) and masks[1, 1:].sum() == 0


def test_without_background_pixels_outside_boxes_select_no_class() -> None:
    masks = scl.HardSelection(C).from_boxes(
        [target([[0, 0, 1, 1]], [1])], size=(3, 3), image_size=(3, 3)
    )
    assert masks[0, :, 0, 2, 2].sum() == 0


def test_from_boxes_accepts_box_label_tuples() -> None:
    hard = scl.HardSelection(C)
    a = hard.from_boxes([(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([1]))], (4, 4), (4, 4))
    b = hard.from_boxes([target([[0, 0, 2, 2]], [1])], (4, 4), (4, 4))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "bad,message",
    [
        (target([[0, 0, 2, 2]], [5]), r"labels must be in \[0, 4\), but got 5 at index 0"),
        (target([[0, 0, 2, 2]], [1, 2]), r"labels must have one entry per sample \(1\), but got 2"),
        ({"boxes": torch.zeros(1, 3), "labels": torch.tensor([0])}, r"must have shape \[N, 4\]"),
        (target([[3, 0, 1, 2]], [0]), "must have x1 >= x0 and y1 >= y0"),
        (target([[0, 3, 2, 1]], [0]), "must have x1 >= x0 and y1 >= y0"),
        ({"boxes": torch.zeros(1, 4)}, "must have keys 'boxes' and 'labels'"),
        (torch.zeros(1, 4), "must be a dict with 'boxes' and 'labels' or a"),
    ],
)
def test_bad_boxes_are_refused(bad: Any, message: str) -> None:
    with pytest.raises(scl.LabelError, match=message):
        scl.HardSelection(C).from_boxes([bad], size=(4, 4), image_size=(4, 4))


def test_non_positive_mask_size_is_refused() -> None:
    with pytest.raises(scl.ShapeError, match="size and image_size must be positive"):
        scl.HardSelection(C).from_boxes([target([], [])], size=(0, 4), image_size=(4, 4))


def test_background_outside_the_classes_is_refused() -> None:
    with pytest.raises(scl.ConfigError, match=r"background must be None or a class in \[0, 4\)"):
        scl.HardSelection(C, background=4)


def test_box_masks_drive_a_convolution_per_region() -> None:
    # prepare: left half class 0, right half class 1 -> each half equals that class's layer
    layer = scl.StochasticConditionalConv2d(2, 3, 1, C, selection_at="output")
    x = torch.randn(1, 2, 4, 4)
    masks = scl.HardSelection(C).from_boxes(
        [target([[0, 0, 2, 4], [2, 0, 4, 4]], [0, 1])], size=(4, 4), image_size=(4, 4)
    )

    # execute
    out = layer.params(x, masks)[0]
    class0 = layer.params(x, torch.tensor([0]))[0]
    class1 = layer.params(x, torch.tensor([1]))[0]

    # assert
    torch.testing.assert_close(out[..., :2], class0[..., :2])
    torch.testing.assert_close(out[..., 2:], class1[..., 2:])


# --------------------------------------------------------------------------- soft selection


def test_soft_selection_starts_at_one_over_c_and_stays_in_the_unit_interval() -> None:
    # prepare
    soft = scl.SoftSelection(C, (1, 3, 3))

    # execute
    initial = soft().values.clone()
    with torch.no_grad():
        soft.logits.normal_(0, 10)
    trained = soft().values

    # assert
    assert initial.shape == (C, 1, 3, 3)
    torch.testing.assert_close(initial, torch.full((C, 1, 3, 3), 1 / C))
    assert trained.min() >= 0 and trained.max() <= 1


def test_soft_selection_init_option() -> None:
    torch.testing.assert_close(scl.SoftSelection(C, init=0.8).values, torch.full((C,), 0.8))


def test_soft_selection_returns_a_shared_selection_with_gradients_in_training() -> None:
    # prepare
    soft = scl.SoftSelection(C, (2, 1, 1))

    # execute
    sel = soft()
    sel.values.sum().backward()

    # assert
    assert isinstance(sel, scl.SharedSelection)
    assert sel.num_classes == C and sel.key is not None
    assert soft.logits.grad is not None and torch.count_nonzero(soft.logits.grad) == 2 * C


def test_soft_selection_ignores_its_input() -> None:
    soft = scl.SoftSelection(C)
    torch.testing.assert_close(soft(torch.randn(2, 3)).values, soft().values)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"init": 1.0}, r"init must be in \(0, 1\), but got 1.0"),
        ({"init": 0.0}, r"init must be in \(0, 1\)"),
        ({"shape": (2, 0)}, r"shape must contain positive sizes, but got \(2, 0\)"),
    ],
)
def test_soft_selection_refuses_bad_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(scl.SCLError, match=message):
        scl.SoftSelection(C, **kwargs)


def test_soft_selection_values_change_with_its_logits_in_eval() -> None:
    # prepare
    soft = scl.SoftSelection(C).eval()
    with torch.no_grad():
        before = soft().values.clone()

    # execute
    with torch.no_grad():
        soft.logits.fill_(2.0)
        after = soft().values

    # assert
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, torch.sigmoid(torch.full((C,), 2.0)))


# --------------------------------------------------------------------------- gated selection


@pytest.mark.parametrize(
    "features,x",
    [("image", torch.randn(5, 3, 8, 8)), ("vector", torch.randn(5, 6))],
)
def test_gated_selection_rows_are_probabilities(features: str, x: torch.Tensor) -> None:
    # prepare
    gate = scl.GatedSelection(C, x.shape[1], hidden=8, features=features)

    # execute
    pi = gate(x)

    # assert
    assert pi.shape == (5, C)
    assert pi.min() >= 0
    torch.testing.assert_close(pi.sum(1), torch.ones(5))


def test_gated_selection_is_trainable_end_to_end_through_a_layer() -> None:
    # prepare
    gate = scl.GatedSelection(C, 3, hidden=8)
    layer = scl.freeze(scl.StochasticConditionalConv2d(3, 2, 3, C))
    x = torch.randn(4, 3, 8, 8)

    # execute
    layer(x, gate(x)).square().sum().backward()

    # assert
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in gate.parameters())


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: scl.GatedSelection(C, 0), "in_channels must be a positive int"),
        (
            lambda: scl.GatedSelection(C, 3, features="audio"),
            "features must be 'image' or 'vector'",
        ),
    ],
)
def test_gated_selection_refuses_bad_options(make: Any, message: str) -> None:
    with pytest.raises(scl.ConfigError, match=message):
        make()


def test_gated_selection_refuses_input_of_the_wrong_channel_count() -> None:
    gate = scl.GatedSelection(C, 3)
    with pytest.raises(scl.ShapeError, match=r"x must have 3 channels \(dim 1\), but got 4"):
        gate(torch.randn(2, 4, 8, 8))
