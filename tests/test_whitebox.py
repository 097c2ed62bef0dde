import pytest
import torch

import scl
from scl.attacks.whitebox import invert, total_variation, whitebox_attack
from scl.metrics import WHITEBOX_SSIM


def _identity_layer(num_classes: int = 3, scale: float = 0.01) -> scl.StochasticConditionalConv2d:
    """Class c's mean is (c + 1) * x with tiny noise: invertible, and the class is identifiable."""
    layer = scl.StochasticConditionalConv2d(
        1, 1, 1, num_classes, distribution_options={"init_scale": scale, "min_scale": 1e-4}
    )
    with torch.no_grad():
        layer.weight.zero_()
        for c in range(num_classes):
            layer.weight[c, 0, 0] = float(c + 1)
        layer.bias[:, 0] = 0.0
    return layer


def _smooth_images(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 1, 4, 4, generator=g) * 0.8 + 0.1
    return torch.nn.functional.interpolate(
        coarse, size=(12, 12), mode="bilinear", align_corners=False
    )


def test_whitebox_recovers_inputs_of_an_invertible_layer():
    layer = _identity_layer()
    x = _smooth_images(12)
    y = torch.arange(12) % 3
    with scl.deterministic(0):
        result = whitebox_attack(layer, x, y, steps=150, lr=0.1, tv_weight=0.001)
    assert result[WHITEBOX_SSIM] > 0.9
    assert result["whitebox_class_accuracy"] > 0.9
    assert result["reconstructions"].shape == (8, 1, 12, 12)


def test_whitebox_fails_against_pure_noise():
    layer = _identity_layer(scale=5.0)
    with torch.no_grad():
        layer.weight.zero_()  # the output does not depend on x at all
    x = _smooth_images(12)
    y = torch.arange(12) % 3
    with scl.deterministic(0):
        result = whitebox_attack(layer, x, y, steps=60)
    assert result[WHITEBOX_SSIM] < 0.5


def test_invert_leaves_the_layer_unchanged_and_in_its_mode():
    layer = _identity_layer().train()
    before = [p.clone() for p in layer.parameters()]
    observed = torch.rand(2, 1, 12, 12)
    x_hat, best = invert(layer, observed, (1, 12, 12), steps=3)
    assert x_hat.shape == (2, 1, 12, 12) and best.shape == (2,)
    assert layer.training
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=False))
    assert all(p.requires_grad for p in layer.parameters())


def test_invert_works_for_layers_without_a_per_class_path():
    layer = scl.StochasticConditionalAdditive((1, 6, 6), 2)
    x_hat, best = invert(layer, torch.rand(3, 1, 6, 6), (1, 6, 6), steps=2)
    assert x_hat.shape == (3, 1, 6, 6) and set(best.tolist()) <= {0, 1}


def test_total_variation_is_zero_for_constant_images():
    assert torch.allclose(total_variation(torch.full((2, 1, 5, 5), 0.3)), torch.zeros(2))
    assert total_variation(torch.rand(2, 1, 5, 5)).min() > 0


def test_invert_rejects_an_unbatched_observation():
    with pytest.raises(scl.ShapeError, match="batch"):
        invert(_identity_layer(), torch.rand(5), (1, 5), steps=1)


def test_params_per_class_equals_hard_selection_per_class():
    layer = scl.StochasticConditionalConv2d(2, 3, 3, 4, padding=1)
    x = torch.rand(5, 4, 2, 6, 6)
    per_class = layer.params_per_class(x)
    for c in range(4):
        hard = layer.params(x[:, c], torch.full((5,), c))
        for a, b in zip(per_class, hard, strict=False):
            torch.testing.assert_close(a[:, c], b, rtol=1e-5, atol=1e-5)
    linear = scl.StochasticConditionalLinear(3, 2, 4)
    xl = torch.rand(5, 4, 3)
    for c in range(4):
        for a, b in zip(linear.params_per_class(xl), linear.params(xl[:, c], torch.full((5,), c)), strict=False):
            torch.testing.assert_close(a[:, c], b, rtol=1e-5, atol=1e-5)
    with pytest.raises(scl.ShapeError, match="one input per class"):
        layer.params_per_class(torch.rand(5, 3, 2, 6, 6))
