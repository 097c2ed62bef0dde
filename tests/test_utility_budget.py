"""The utility budget (scl.pipelines.stages): objectives, the constraint, dual ascent."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scl.errors import ConfigError, DataError
from scl.layers import StochasticConditionalAdditive
from scl.pipelines import config as cfg
from scl.pipelines.stages import (
    OBJECTIVES,
    PrivacyObjective,
    UtilityBudget,
    distance_correlation_term,
    train_within_budget,
    within_class_information,
)
from scl.selection import ClassIndex


def test_within_class_information_is_zero_for_a_class_mean_release():
    y = torch.tensor([0, 0, 1, 1, 1])
    loc = torch.stack([torch.full((3, 2, 2), float(c)) for c in y])  # constant within each class
    assert float(within_class_information(y, loc, torch.ones_like(loc))) == pytest.approx(0.0, abs=1e-6)


def test_within_class_information_matches_the_gaussian_channel_bound():
    torch.manual_seed(0)
    y = torch.zeros(4000, dtype=torch.long)
    loc = 2.0 * torch.randn(4000, 5)  # Var(mu | c) = 4
    value = float(within_class_information(y, loc, torch.full_like(loc, 0.5)))  # sigma^2 = 0.5
    assert value == pytest.approx(0.5 * math.log(1 + 4 / 0.5), rel=0.05)


def test_within_class_information_skips_singleton_classes_and_spread_between_classes():
    y = torch.tensor([0, 1, 1])
    loc = torch.tensor([[100.0], [1.0], [1.0]])  # class 0 alone: no within-class spread to count
    assert float(within_class_information(y, loc, torch.ones_like(loc))) == pytest.approx(0.0, abs=1e-6)
    single = within_class_information(torch.tensor([0, 1]), torch.randn(2, 3), torch.ones(2, 3))
    assert float(single) == 0.0


def test_distance_correlation_term_is_one_for_identity_and_has_gradients():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 4, 4)
    y = torch.tensor([0] * 8 + [1] * 8)
    assert float(distance_correlation_term(y, x, x.clone())) == pytest.approx(1.0, abs=1e-4)
    h = x.clone().requires_grad_(True)
    distance_correlation_term(y, x, h + 0.1 * torch.randn_like(h)).backward()
    assert h.grad is not None and torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0


def _layer_and_batch(kind: str):
    torch.manual_seed(0)
    layer = StochasticConditionalAdditive((3, 8, 8), 2, learn_gain=True)
    x = torch.rand(8, 3, 8, 8)
    y = torch.tensor([0, 1] * 4)
    attribute = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    objective = PrivacyObjective(kind, num_classes=2, image_shape=(3, 8, 8), num_attributes=3)
    return layer, x, y, attribute, objective


@pytest.mark.parametrize("kind", OBJECTIVES)
def test_every_objective_trains_the_layer_and_its_adversary(kind):
    layer, x, y, attribute, objective = _layer_and_batch(kind)
    layer.train()
    h, dist = layer.sample_with_distribution(x, ClassIndex(y, 2))
    term, stats = objective.term(x, y, h, dist, attribute)
    assert term.dim() == 0 and torch.isfinite(term) and stats
    term.backward()
    grads = [p.grad for p in layer.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{kind} gives the layer no gradient"
    if objective.adversary is not None:
        before = [p.detach().clone() for p in objective.adversary.parameters()]
        objective.adversary_step(x, y, h, attribute)
        after = list(objective.adversary.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_objective_errors_are_for_people():
    with pytest.raises(ConfigError, match="must be one of"):
        PrivacyObjective("nonsense", num_classes=2, image_shape=(1, 4, 4))
    with pytest.raises(DataError, match="private attribute"):
        PrivacyObjective("attribute", num_classes=2, image_shape=(1, 4, 4), num_attributes=None)


class _Brightness(nn.Module):
    """A frozen two-class 'task network': class 1 when the mean pixel is above 0.5."""

    def forward(self, h):
        score = 20 * (h.mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([-score, score], -1)


def _two_class_data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    base = torch.where(y[:, None, None, None] == 1, 0.7, 0.3)
    x = (base + 0.1 * torch.randn(n, 1, 6, 6, generator=g)).clamp(0, 1)
    return x, y


def test_the_budget_holds_on_a_tiny_problem_and_privacy_rises():
    torch.manual_seed(0)
    network = _Brightness()
    x, y = _two_class_data(400, 0)
    xv, yv = _two_class_data(200, 1)
    xt, yt = _two_class_data(400, 2)
    layer = StochasticConditionalAdditive((1, 6, 6), 2, learn_gain=True, distribution_options={"init_scale": 0.02})
    objective = PrivacyObjective("within", num_classes=2, image_shape=(1, 6, 6))
    budget = UtilityBudget(5.0, network, xv, yv)

    def release(xb, yb):
        return layer.sample_with_distribution(xb, ClassIndex(yb, 2))

    with torch.no_grad():
        before = float(within_class_information(y, *(lambda d: (d.loc, d.variance))(release(x, y)[1])))
    history, result = train_within_budget(
        list(layer.parameters()), [layer], release, objective, budget, (x, y), epochs=30, lr=0.03,
        batch_size=50, generator=torch.Generator().manual_seed(0), evaluate=lambda xb, yb: layer(xb, yb),
    )
    assert result.feasible and result.validation_loss <= 5.0
    assert len(history["multiplier"]) == 30 and len(result.validation) == 30
    layer.eval()
    with torch.no_grad():
        clean = float((network(xt).argmax(-1) == yt).float().mean())
        released = float((network(layer(xt, yt)).argmax(-1) == yt).float().mean())
        after = float(within_class_information(y, *(lambda d: (d.loc, d.variance))(release(x, y)[1])))
    assert 100 * (clean - released) <= 5.0 + 4.0  # the test loss, within the validation's sampling error
    assert after < 0.5 * before  # the release carries much less of x beyond the class


def _unreachable_stage(epochs, patience=None):
    """A stage whose budget no epoch can meet: the release destroys everything, N guesses one class."""
    network = _Brightness()
    x, y = _two_class_data(100, 0)
    xv, yv = _two_class_data(100, 1)
    layer = StochasticConditionalAdditive((1, 6, 6), 2)
    objective = PrivacyObjective("within", num_classes=2, image_shape=(1, 6, 6))

    def blank(xb, yb):
        return torch.zeros_like(xb)

    return train_within_budget(
        list(layer.parameters()), [layer], lambda xb, yb: layer.sample_with_distribution(xb, ClassIndex(yb, 2)),
        objective, UtilityBudget(1.0, network, xv, yv), (x, y), epochs=epochs, lr=0.01, batch_size=50,
        generator=torch.Generator().manual_seed(0), evaluate=blank, patience=patience,
    )


def test_an_unreachable_budget_is_said_plainly():
    _, result = _unreachable_stage(2)
    assert not result.feasible and result.validation_loss > 1.0
    message = result.message("stage1")
    assert "CANNOT be met" in message and "closest point" in message and "--max-accuracy-loss" in message
    assert "the budget of 1 point CANNOT be met" in message
    assert result.as_dict()["feasible"] is False


def test_patience_gives_up_on_an_out_of_reach_budget_and_keeps_the_closest_point():
    history, result = _unreachable_stage(12, patience=3)
    assert not result.feasible and result.epochs_run == 3 and len(history["validation_loss"]) == 3
    assert result.epoch == 0 and result.as_dict()["epochs_run"] == 3  # no epoch came closer than the start
    assert "CANNOT be met" in result.message("soft")
    assert "gave up after 3 of 12 epochs" in result.message("soft")
    from scl.report import _budget_section, budget_lines

    (line, met), = budget_lines({"utility": {"soft": result.as_dict()}})
    assert not met and "CANNOT be met" in line and "gave up after 3 of 12 epochs" in line
    assert "it gave up after 3 of 12 epochs" in _budget_section({"utility": {"soft": result.as_dict()}})
    every = _unreachable_stage(12)[1]
    assert every.epochs_run == 12 and "gave up" not in every.message("soft")


def test_patience_never_stops_a_stage_within_the_budget():
    network = _Brightness()
    x, y = _two_class_data(100, 0)
    xv, yv = _two_class_data(100, 1)
    torch.manual_seed(0)
    layer = StochasticConditionalAdditive((1, 6, 6), 2, learn_gain=True, distribution_options={"init_scale": 0.02})
    objective = PrivacyObjective("within", num_classes=2, image_shape=(1, 6, 6))
    # lr 0: nothing moves, so no epoch comes closer than the start; but every epoch is feasible
    _, result = train_within_budget(
        list(layer.parameters()), [layer], lambda xb, yb: layer.sample_with_distribution(xb, ClassIndex(yb, 2)),
        objective, UtilityBudget(5.0, network, xv, yv), (x, y), epochs=8, lr=0.0, batch_size=50,
        generator=torch.Generator().manual_seed(0), evaluate=lambda xb, yb: layer(xb, yb), patience=2,
    )
    assert result.feasible and result.epochs_run == 8


def test_budget_validation():
    network = _Brightness()
    x, y = _two_class_data(10, 0)
    with pytest.raises(ConfigError, match=r"points in \[0, 100\)"):
        UtilityBudget(-1.0, network, x, y)
    with pytest.raises(DataError, match="at least 2 images"):
        UtilityBudget(1.0, network, x[:1], y[:1])
    assert UtilityBudget(1.0, network, x, y).loss(lambda xb, yb: xb) == pytest.approx(0.0)


@pytest.mark.parametrize(("key", "value", "match"), [
    ("utility.max_accuracy_loss", -2, "max_accuracy_loss"),
    ("utility.max_accuracy_loss", "one", "max_accuracy_loss"),
    ("utility.validation_fraction", 1.5, "validation_fraction"),
    ("layer.init_scale", "big", "init_scale"),
    ("utility.patience", 0, "utility.patience"),
    ("utility.patience", 2.5, "utility.patience"),
    ("layer.learn_gain", "yes", "learn_gain"),
    ("stage1.privacy", "magic", "stage1.privacy"),
])
def test_config_rejects_bad_budget_settings(key, value, match):
    import json

    with pytest.raises(ConfigError, match=match):
        cfg.build(assignments=[f"{key}={json.dumps(value)}"])


def test_max_accuracy_loss_option_reaches_the_config():
    from scl.cli import _config

    assert _config(False, None, None, None, None, 2.5)["utility"]["max_accuracy_loss"] == 2.5
    assert cfg.build(assignments=["utility.max_accuracy_loss=null"])["utility"]["max_accuracy_loss"] is None


def test_additive_gain_hard_and_dense_selection_agree_and_train():
    torch.manual_seed(0)
    layer = StochasticConditionalAdditive((2, 3, 3), 4, learn_gain=True)
    with torch.no_grad():
        layer.gains.mul_(torch.rand_like(layer.gains))
    x, y = torch.rand(5, 2, 3, 3), torch.tensor([0, 3, 1, 2, 3])
    hard = layer.params(x, ClassIndex(y, 4))[0]
    dense = layer.params(x, torch.nn.functional.one_hot(y, 4).float())[0]
    assert torch.allclose(hard, layer.gains[y] * x + layer.offsets[y, 0])
    assert torch.allclose(hard, dense, atol=1e-6)
    hard.sum().backward()
    assert layer.gains.grad is not None and layer.gains.grad.abs().sum() > 0
    assert "learn_gain=True" in repr(layer) and layer.config()["learn_gain"] is True
    with pytest.raises(ConfigError, match="learn_gain"):
        StochasticConditionalAdditive((2, 3, 3), 4, learn_gain="yes")  # type: ignore[arg-type]


def test_the_report_and_summary_say_where_the_budget_failed(tmp_path):
    import json

    from scl.report import budget_lines, write_report

    def record(feasible, loss):
        return {"max_accuracy_loss": 1.0, "feasible": feasible, "validation_loss": loss, "epoch": 3,
                "multiplier": [1.0, 2.0, 3.0], "validation_losses": [5.0, 2.0, loss],
                "clean_validation_accuracy": 0.9, "validation_images": 180}

    metrics = {"accuracy": {"clean": 0.95, "hard": 0.945, "soft": 0.91, "gated": 0.80},
               "utility": {"stage1": record(True, 0.5), "soft": record(True, 0.8), "gated": record(False, 6.0)}}
    lines = budget_lines(metrics)
    assert [met for _, met in lines] == [True, False, False]
    assert "0.5 on the test split" in lines[0][0]
    assert "the test split loses 3.0 points more than the budget" in lines[1][0]
    assert "CANNOT be met" in lines[2][0] and "6.0 points on validation" in lines[2][0]
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    page = write_report(tmp_path).read_text()
    assert "Utility budget" in page and "budget cannot be met" in page and "more than the budget" in page
    from scl.report import _budget_section

    # a stage out of reach still has its test loss over the margin flagged in the report
    alone = {"accuracy": metrics["accuracy"], "utility": {"gated": metrics["utility"]["gated"]}}
    assert "The test split loses 14.0 points more than the budget." in _budget_section(alone)


def test_a_small_test_split_widens_the_test_margin_and_says_so(tmp_path):
    import json
    import math

    from scl.report import MIN_TEST_IMAGES, budget_lines, budget_test_check, write_report

    record = {"max_accuracy_loss": 1.0, "feasible": True, "validation_loss": 0.5, "epoch": 3, "multiplier": [1.0],
              "validation_losses": [0.5], "clean_validation_accuracy": 0.9, "validation_images": 60}
    # soft loses 3.5 points on test: 2.5 over a budget of 1
    metrics = {"accuracy": {"clean": 0.95, "soft": 0.915}, "utility": {"soft": record}}
    over, text = budget_test_check(metrics, "soft", 1.0, 3.5)  # split sizes unknown: the 1.5-point margin
    assert over and text == "the test split loses 2.5 points more than the budget"
    (line, met), = budget_lines({**metrics, "splits": {"test": MIN_TEST_IMAGES}})
    assert not met and "2.5 points more than the budget" in line and "fewer than" not in line
    assert budget_test_check(metrics, "soft", 1.0, 0.4) == (False, "")

    small = {**metrics, "splits": {"test": 120}}
    error = 100 * math.sqrt(2 * 0.915 * 0.085 / 120)  # binomial, in points: 3.6
    (line, met), = budget_lines(small)
    assert met, "2.5 points over is within two standard errors on 120 images"
    assert "2.5 points more than the budget, within two standard errors" in line
    assert f"±{error:.1f} points" in line and "120 images, fewer than 300" in line
    over, text = budget_test_check(small, "soft", 1.0, 0.4)  # within the budget: the precision is still said
    assert not over and text == ("a test split of 120 images, fewer than 300: its loss is measured to about "
                                 f"±{error:.1f} points (one standard error)")

    # beyond two standard errors it is flagged again, with the reason beside it
    (line, met), = budget_lines({**small, "accuracy": {"clean": 0.95, "soft": 0.80}})
    assert not met and "more than the budget, beyond two standard errors" in line and "120 images" in line

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "metrics.json").write_text(json.dumps(small))
    page = write_report(tmp_path).read_text()
    assert "The test split loses 2.5 points more than the budget, within two standard errors" in page

    # detection measures mAP: the split size is said, the margin stays at 1.5 points
    detection = {"map50": {"clean": 0.99, "hard": 0.96}, "splits": {"test": 100}}
    assert budget_test_check(detection, "stage1", 3.0, 2.0) == (
        False, "a test split of 100 images, fewer than 300: its loss is a rough check of the budget")
    over, text = budget_test_check(detection, "stage1", 3.0, 5.0)
    assert over and "2.0 points more than the budget (a test split of 100 images" in text


def test_a_loss_just_over_the_budget_does_not_read_as_the_budget():
    from scl.pipelines.stages import points
    from scl.report import budget_lines

    assert points(1.0416, 1.0) == "1.04" and points(0.996, 1.0) == "0.996" and points(1.0, 1.0) == "1.0"
    assert points(5.83, 1.0) == "5.8" and points(2.0) == "2.0"
    record = {"max_accuracy_loss": 1.0, "feasible": False, "validation_loss": 1.0416, "epoch": 37,
              "multiplier": [1.0], "validation_losses": [1.0416], "clean_validation_accuracy": 0.9,
              "validation_images": 180}
    (line, met), = budget_lines({"utility": {"stage1": record}})
    assert not met and "CANNOT be met" in line and "loses 1.04 points on validation" in line
