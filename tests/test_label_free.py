"""The label-free release: a gate started from N, the class-mean start of the additive layer, and
the stage code keeping its start when training only makes the budget worse."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import scl
import scl.pipelines.classification as clf
from scl.errors import ConfigError, ShapeError
from scl.layers import StochasticConditionalAdditive
from scl.metrics import ATTRIBUTE_ACCURACY, ATTRIBUTE_CHANCE, DECODER_SSIM, REID_FLOOR_TOP1, REID_TOP1, floor_of
from scl.models import SmallCNN
from scl.pipelines import config as cfg
from scl.pipelines import stages
from scl.pipelines.stages import PrivacyObjective, UtilityBudget, train_within_budget
from scl.runs import RunLog
from scl.selection import ClassIndex, GatedSelection


def test_a_gate_from_a_network_is_its_softmax_trains_and_round_trips(tmp_path):
    torch.manual_seed(0)
    network = SmallCNN(3, 4, width=8).eval()
    gate = GatedSelection(4, 3, network=copy.deepcopy(network)).eval()
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(gate(x), torch.softmax(network(x), -1), atol=1e-6)
    gate(x).log().sum().backward()  # trainable even when the network it copies was frozen
    assert all(p.grad is not None for p in gate.parameters())
    path = scl.save(gate, tmp_path / "gate.safetensors")
    loaded = scl.load(path).eval()
    assert isinstance(loaded, GatedSelection) and loaded.from_network and "from a network" in repr(loaded)
    with torch.no_grad():
        assert torch.allclose(loaded(x), gate(x), atol=1e-6)


def test_a_gate_network_with_the_wrong_output_is_refused():
    with pytest.raises(ConfigError, match="must be an nn.Module"):
        GatedSelection(4, 3, network="SmallCNN")  # type: ignore[arg-type]
    gate = GatedSelection(4, 3, network=SmallCNN(3, 5, width=8))
    with pytest.raises(ShapeError, match=r"logits of shape \[B, 4\], but gave \(2, 5\)"):
        gate(torch.rand(2, 3, 16, 16))


def test_the_class_mean_start_releases_each_class_mean_and_nothing_of_x():
    torch.manual_seed(0)
    x, y = torch.rand(12, 1, 4, 4), torch.tensor([0, 1, 2] * 4)
    layer = StochasticConditionalAdditive((1, 4, 4), 3, learn_gain=True, distribution_options={"init_scale": 0.1})
    stages.class_mean_init(layer, x, y)
    dist = layer.distribution(torch.rand(12, 1, 4, 4), ClassIndex(y, 3))  # other images, same classes
    for c in range(3):
        assert torch.allclose(dist.loc[y == c], x[y == c].mean(0).expand(4, 1, 4, 4), atol=1e-6)
    assert float(layer.gains.detach().abs().max()) == 0.0


def test_the_class_mean_start_needs_every_class_and_a_gain():
    layer = StochasticConditionalAdditive((1, 4, 4), 3, learn_gain=True)
    with pytest.raises(ConfigError, match=r"classes \[2\] have none"):
        stages.class_mean_init(layer, torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ConfigError, match="learn_gain=true"):
        stages.class_mean_init(StochasticConditionalAdditive((1, 4, 4), 3), torch.rand(3, 1, 4, 4), torch.arange(3))
    with pytest.raises(ConfigError, match="layer.start=class_mean needs .*layer.kind=additive"):
        cfg.build(assignments=["layer.start=class_mean", "layer.kind=conv"])
    with pytest.raises(ConfigError, match="layer.start must be one of"):
        cfg.build(assignments=["layer.start=zero"])
    with pytest.raises(ConfigError, match="gated.init must be one of"):
        cfg.build(assignments=["gated.init=N"])


@pytest.mark.parametrize(("assignments", "start"), [
    ([], "class_mean"),  # the default: additive with a gain
    (["layer.kind=conv"], "input"),
    (["layer.learn_gain=false"], "input"),
    (["layer.start=input"], "input"),
])
def test_auto_start_is_the_class_mean_where_the_layer_can_turn_x_off(assignments, start):
    assert stages.layer_start(cfg.build(assignments=assignments)["layer"]) == start


class _Brightness(nn.Module):
    def forward(self, h):
        score = 20 * (h.mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([-score, score], -1)


def test_a_stage_that_starts_within_the_budget_keeps_its_start_when_training_breaks_it():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (200,), generator=g)
    x = (torch.where(y[:, None, None, None] == 1, 0.7, 0.3) + 0.05 * torch.randn(200, 1, 4, 4, generator=g))
    layer = StochasticConditionalAdditive((1, 4, 4), 2, distribution_options={"init_scale": 0.01})
    start = [p.detach().clone() for p in layer.parameters()]
    network = _Brightness()
    # a utility loss that rewards wrong answers, at a frozen multiplier (rate 0): every step breaks it
    _, result = train_within_budget(
        list(layer.parameters()), [layer], lambda xb, yb: layer.sample_with_distribution(xb, ClassIndex(yb, 2)),
        PrivacyObjective("entropy", num_classes=2, image_shape=(1, 4, 4)),
        UtilityBudget(1.0, network, x[100:], y[100:]), (x[:100], y[:100]), epochs=2, lr=0.2,
        batch_size=50, generator=torch.Generator().manual_seed(0), evaluate=lambda xb, yb: layer(xb, yb), rate=0.0,
        task_loss=lambda h, batch: -F.cross_entropy(network(h), batch[1]),
    )
    assert max(result.validation) > 1.0  # training did break the budget
    assert result.feasible and result.epoch == 0 and result.validation_loss <= 1.0
    assert all(torch.equal(a, b) for a, b in zip(start, layer.parameters(), strict=True))
    assert "the start, epoch 0" in result.message("stage1")


def test_targets_are_on_the_gated_release_when_the_run_has_one():
    gated = {DECODER_SSIM: 0.25, floor_of(DECODER_SSIM): 0.2, REID_TOP1: 0.04, REID_FLOOR_TOP1: 0.03,
             ATTRIBUTE_ACCURACY: 0.3, ATTRIBUTE_CHANCE: 0.29}
    rows = clf.targets({
        "accuracy": {"clean": 0.95, "soft": 0.1, "gated": 0.945},
        "privacy": {"soft": {DECODER_SSIM: 0.1, REID_TOP1: 0.0}, "gated": gated,
                    "beats_gaussian": {"gated": {DECODER_SSIM: True}}},
    })
    assert [r["name"] for r in rows] == [
        "gated accuracy below clean (points)", "gated re-identification top-1", "gated decoder SSIM",
        "gated attribute accuracy", "gated attacks where plain noise leaks less",
    ]
    assert all(r["met"] for r in rows)
    assert clf.headline_release({"clean": 1.0, "soft": 0.5}) == "soft"


def test_gated_epochs_zero_is_the_start_and_scratch_needs_training():
    assert cfg.build()["gated"]["epochs"] == 0 and cfg.build()["gated"]["init"] == "network"
    with pytest.raises(ConfigError, match="gated.epochs must be an integer >= 0"):
        cfg.build(assignments=["gated.epochs=-1"])
    with pytest.raises(ConfigError, match="gated.init=scratch needs training"):
        cfg.build(assignments=["gated.init=scratch"])
    assert cfg.build(assignments=["gated.init=scratch", "gated.epochs=5"])["gated"]["epochs"] == 5


def test_the_default_gate_is_n_itself_and_the_stage_records_its_budget():
    config = cfg.build(quick=True, assignments=["network.epochs=2", "stage1.epochs=1", "stage2.epochs=1"])
    exp = clf.prepare(config)
    log = RunLog()
    with stages.run_noise(config):
        clf.run_training(exp, None, log)
    gate = exp.gated.selection.eval()
    assert gate.from_network and gate.pick == "argmax"
    x = exp.splits["test"].x[:16]
    with torch.no_grad():  # N's own pick of the class, one-hot
        assert torch.equal(gate(x), F.one_hot(exp.network(x).argmax(-1), 10).float())
    record = exp.metrics["utility"]["gated"]
    assert record["epoch"] == 0 and record["multiplier"] == [] and "validation_loss" in record
    assert any("gated:" in line for line in log.lines)


def test_an_argmax_gate_is_one_hot_at_inference_and_a_softmax_while_training(tmp_path):
    torch.manual_seed(0)
    network = SmallCNN(3, 4, width=8).eval()
    gate = GatedSelection(4, 3, network=copy.deepcopy(network), pick="argmax")
    x = torch.rand(6, 3, 16, 16)
    gate.train()
    assert torch.allclose(gate(x), torch.softmax(network(x), -1), atol=1e-5)  # differentiable
    gate.eval()
    with torch.no_grad():
        assert torch.equal(gate(x), F.one_hot(network(x).argmax(-1), 4).float())
    loaded = scl.load(scl.save(gate, tmp_path / "gate.safetensors")).eval()
    assert loaded.pick == "argmax" and "pick='argmax'" in repr(loaded)
    with pytest.raises(ConfigError, match="pick must be 'softmax' or 'argmax', but got 'max'"):
        GatedSelection(4, 3, pick="max")
    with pytest.raises(ConfigError, match="gated.pick must be one of"):
        cfg.build(assignments=["gated.pick=max"])
