"""The mAP budget of detection: per-pixel classes in the objective, DetectionBudget, per-epoch dual
ascent, and the detection config's checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scl.errors import ConfigError, DataError
from scl.layers import StochasticConditionalAdditive
from scl.pipelines import detection
from scl.pipelines.stages import (
    DetectionBudget,
    PrivacyObjective,
    UtilityBudget,
    train_within_budget,
    within_class_information,
)
from scl.selection import ClassIndex


def _masks(classes: torch.Tensor, k: int) -> torch.Tensor:
    """A hard selection ``[B, K, 1, H, W]`` from per-pixel classes ``[B, H, W]``."""
    return F.one_hot(classes, k).permute(0, 3, 1, 2)[:, :, None].float()


def _pixel_classes(b: int = 6, size: int = 8) -> torch.Tensor:
    classes = torch.zeros(b, size, size, dtype=torch.long)  # background 0 ...
    classes[:, 2:5, 2:6] = 1  # ... and one box of class 1 in every image
    return classes


def test_per_pixel_within_is_zero_for_a_release_that_shows_only_the_boxes():
    classes = _pixel_classes()
    loc = (3.0 * classes.float())[:, None].expand(-1, 2, -1, -1)  # one constant per class
    value = within_class_information(classes, loc, torch.ones_like(loc))
    assert float(value) == pytest.approx(0.0, abs=1e-6)


def test_per_pixel_within_grows_with_what_the_release_shows_inside_a_class():
    torch.manual_seed(0)
    classes = _pixel_classes()
    content = torch.rand(6, 1, 8, 8)
    values = [float(within_class_information(classes, 3.0 * classes.float()[:, None] + a * content,
                                             torch.full((6, 1, 8, 8), 0.1))) for a in (0.1, 0.5, 2.0)]
    assert 0 < values[0] < values[1] < values[2]


def test_per_pixel_classes_of_the_wrong_shape_are_refused():
    with pytest.raises(DataError, match="per-pixel classes must have the release's shape"):
        within_class_information(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 1, 8, 8),
                                 torch.ones(2, 1, 8, 8))


def test_within_objective_reads_the_classes_from_a_hard_selection():
    torch.manual_seed(0)
    classes = _pixel_classes()
    masks = _masks(classes, 3)
    x = torch.rand(6, 1, 8, 8, requires_grad=True)
    loc = x * 1.0
    dist = torch.distributions.Normal(loc, torch.full_like(loc, 0.2))
    objective = PrivacyObjective("within", num_classes=3, image_shape=(1, 8, 8))
    term, stats = objective.term(x, masks, dist.rsample(), dist)
    expected = within_class_information(classes, loc, dist.variance)
    assert float(term.detach()) == pytest.approx(float(expected.detach()))
    assert stats["within"] == pytest.approx(float(term.detach()))
    term.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="per-pixel classes"):
        PrivacyObjective("dcor", num_classes=3, image_shape=(1, 8, 8)).term(x, masks, loc, dist)


class _Oracle(nn.Module):
    """A 'detector' that finds every true box on an image whose mean is that of the clean images
    (within a tolerance) and nothing on any other: mAP@.5 is 1 on clean images, 0 on a blank."""

    num_classes = 2

    def __init__(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.means, self.targets = images.mean(dim=(1, 2, 3)), targets

    def detect(self, h: torch.Tensor, k: int, threshold: float) -> list[dict[str, torch.Tensor]]:
        out = []
        for mean in h.mean(dim=(1, 2, 3)):
            match = (self.means - mean).abs().argmin()
            target = self.targets[int(match)]
            found = bool((self.means[match] - mean).abs() < 1e-3)
            n = len(target["labels"]) if found else 0
            out.append({"boxes": target["boxes"][:n], "labels": target["labels"][:n],
                        "scores": torch.ones(n)})
        return out


def _scenes(n: int = 10):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 16, 16, generator=g)
    targets = [{"boxes": torch.tensor([[2.0, 2.0, 9.0, 9.0]]), "labels": torch.tensor([i % 2])} for i in range(n)]
    return images, targets


def test_detection_budget_measures_the_map50_lost_in_points():
    images, targets = _scenes()
    masks = torch.zeros(len(images), 3, 1, 16, 16)
    budget = DetectionBudget(3.0, _Oracle(images, targets), images, masks, targets)
    assert budget.clean == pytest.approx(1.0)
    assert budget.loss(lambda x, m: x) == pytest.approx(0.0)
    assert budget.loss(lambda x, m: torch.zeros_like(x)) == pytest.approx(100.0)
    assert DetectionBudget.measure == "mAP@.5" and DetectionBudget.option == "--max-map-loss"


def test_detection_budget_errors_are_for_people():
    images, targets = _scenes()
    masks = torch.zeros(len(images), 3, 1, 16, 16)
    with pytest.raises(ConfigError, match=r"mAP@\.5 budget must be a number of points"):
        DetectionBudget(-1.0, _Oracle(images, targets), images, masks, targets)
    with pytest.raises(DataError, match="one target per validation image"):
        DetectionBudget(3.0, _Oracle(images, targets), images, masks, targets[:3])


class _Brightness(nn.Module):
    def forward(self, h):
        score = 20 * (h.mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([-score, score], -1)


def _two_class_data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    base = torch.where(y[:, None, None, None] == 1, 0.7, 0.3)
    return (base + 0.1 * torch.randn(n, 1, 6, 6, generator=g)).clamp(0, 1), y


def test_per_epoch_dual_ascent_with_a_custom_task_loss_holds_the_budget():
    """The path detection takes (dual_every_step=False, task_loss=...), on the tiny problem of the
    accuracy budget's tests: the constraint holds and the multiplier moves once per epoch."""
    torch.manual_seed(0)
    network = _Brightness()
    x, y = _two_class_data(400, 0)
    xv, yv = _two_class_data(200, 1)
    layer = StochasticConditionalAdditive((1, 6, 6), 2, learn_gain=True, distribution_options={"init_scale": 0.02})
    objective = PrivacyObjective("within", num_classes=2, image_shape=(1, 6, 6))
    calls = []

    def task_loss(h, batch):
        calls.append(len(batch))
        return F.cross_entropy(network(h), batch[1])

    history, result = train_within_budget(
        list(layer.parameters()), [layer], lambda xb, yb: layer.sample_with_distribution(xb, ClassIndex(yb, 2)),
        objective, UtilityBudget(5.0, network, xv, yv), (x, y), epochs=20, lr=0.03, batch_size=50,
        generator=torch.Generator().manual_seed(0), evaluate=lambda xb, yb: layer(xb, yb),
        task_loss=task_loss, dual_every_step=False,
    )
    assert calls and set(calls) == {2}  # the task loss saw the whole batch
    assert result.feasible and result.validation_loss <= 5.0
    assert len(history["multiplier"]) == 20
    # the epoch's check decides the step: over budget the multiplier rises, within it falls
    for before, after, loss in zip(history["multiplier"], history["multiplier"][1:],
                                   history["validation_loss"][1:], strict=False):
        if abs(loss - 5.0) > 1e-9 and 1e-2 < after < 1e2:
            assert (after > before) == (loss > 5.0)


@pytest.mark.parametrize("setting, match", [
    ("utility.max_map_loss=-1", "max_map_loss"),
    ("utility.max_map_loss=100", "max_map_loss"),
    ("utility.validation_fraction=1", "validation_fraction"),
    ("stage1.privacy=dcor", "per-pixel"),
    ("layer.init_scale=0", "init_scale"),
    ("attacks.budget=huge", "attacks.budget"),
    ("attacks.max_epochs=0", "max_epochs"),
    ("layer.start=zero", "layer.start"),
])
def test_detection_config_rejects_bad_budget_settings(setting, match):
    with pytest.raises(ConfigError, match=match):
        detection.build_config(assignments=[setting])


def test_within_without_a_budget_says_what_to_choose():
    with pytest.raises(ConfigError, match="stage1.privacy=entropy"):
        detection.build_config(assignments=["utility.max_map_loss=null"])
    config = detection.build_config(assignments=["utility.max_map_loss=null", "stage1.privacy=entropy"])
    assert config["utility"]["max_map_loss"] is None


def _conv_layer(classes: int, channels: int = 2):
    from scl.layers import StochasticConditionalConv2d
    from scl.pipelines.stages import identity_init

    torch.manual_seed(0)
    layer = StochasticConditionalConv2d(channels, channels, 3, classes, padding="same", selection_at="input",
                                        distribution_options={"init_scale": 0.1})
    identity_init(layer)
    return layer


def test_class_mean_start_releases_each_pixel_classes_mean_colour_and_nothing_of_x():
    from scl.pipelines.stages import conv_class_mean_init

    classes = _pixel_classes()
    masks = _masks(classes, 2)
    x = torch.rand(6, 2, 8, 8) + 2.0 * classes[:, None].float()  # the box is brighter by 2
    layer = _conv_layer(2).eval()
    conv_class_mean_init(layer, x, masks)
    _, dist = layer.sample_with_distribution(x, masks)
    inside = classes[:, None].expand(-1, 2, -1, -1).bool()
    for c, where in ((1, inside), (0, ~inside)):
        expected = x.transpose(0, 1)[where.transpose(0, 1)].reshape(2, -1).mean(1)  # per channel
        got = dist.mean.transpose(0, 1)[where.transpose(0, 1)].reshape(2, -1)
        assert torch.allclose(got, expected[:, None].expand_as(got), atol=1e-5), c
    # the scale is untouched by the start: still the initial 0.1 everywhere
    assert torch.allclose(dist.stddev, torch.full_like(dist.stddev, 0.1), atol=1e-4)
    # nothing of x: another image with the same boxes gets the same mean
    _, again = layer.sample_with_distribution(torch.rand(6, 2, 8, 8), masks)
    assert torch.allclose(again.mean, dist.mean, atol=1e-5)


def test_class_mean_start_with_one_class_per_image_and_a_missing_class():
    from scl.pipelines.stages import conv_class_mean_init

    x = torch.rand(4, 2, 8, 8)
    labels = torch.tensor([0, 1, 1, 0])
    layer = _conv_layer(3)
    with pytest.raises(ConfigError, match=r"classes \[2\] are not; use more data or set layer.start=input"):
        conv_class_mean_init(layer, x, F.one_hot(labels, 3).float())
    layer = _conv_layer(2).eval()
    conv_class_mean_init(layer, x, F.one_hot(labels, 2).float())
    _, dist = layer.sample_with_distribution(x, labels)
    assert torch.allclose(dist.mean[1], x[labels == 1].mean(dim=(0, 2, 3))[:, None, None].expand(2, 8, 8), atol=1e-5)
