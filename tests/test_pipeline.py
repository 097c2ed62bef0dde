"""The classification pipeline's stages, on the embedded digits with tiny budgets."""

import json

import pytest
import torch

import scl
from scl.metrics import (
    ATTRIBUTE_ACCURACY,
    ATTRIBUTE_CHANCE,
    ATTRIBUTE_CLEAN,
    DCOR,
    DECODER_SSIM,
    REID_CLEAN_TOP1,
    REID_FLOOR_TOP1,
    REID_TOP1,
    REID_TOP5,
    WHITEBOX_SSIM,
    ceiling_of,
    floor_of,
)
from scl.pipelines import classification as clf
from scl.pipelines import config as cfg
from scl.pipelines import stages
from scl.runs import RunLog

TINY = [
    "network.epochs=3",
    "stage1.epochs=2",
    "stage2.epochs=2",
    "gated.epochs=1",
    "attacks.max_epochs=1",
    "attacks.whitebox_images=4",
    "attacks.whitebox_steps=2",
]


@pytest.fixture(scope="module")
def trained():
    config = cfg.build(quick=True, assignments=TINY)
    exp = clf.prepare(config)
    log = RunLog()
    with stages.run_noise(config):
        clf.train_network(exp, None, log)
        obf = clf.train_stage1(exp, None, log)
        layer_after_stage1 = [p.detach().clone() for p in obf.layer.parameters()]
        clf.train_stage2(exp, obf, None)
    return exp, layer_after_stage1


def test_config_layers_defaults_quick_file_and_set(tmp_path):
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"stage1": {"lam": 0.5, "privacy": "ssim"}}))
    config = cfg.build(quick=True, config_file=file, assignments=["stage1.lam=0.25", "data=x.npz"])
    assert config["stage1"] == {
        **cfg.DEFAULTS["stage1"],
        "epochs": cfg.QUICK["stage1"]["epochs"],
        "lam": 0.25,
        "privacy": "ssim",
    }
    assert config["data"] == "x.npz"


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("stage1.lamda=1", "unknown config key 'stage1.lamda'"),
        ("stage1.privacy=loud", r"stage1.privacy must be one of \['within', 'dcor'"),
        ("network.epochs=0", "network.epochs must be a positive integer, but got 0"),
        ("stage1.lam=-1", "stage1.lam must be a number >= 0"),
        ("layer=3", "must be a section"),
        ("nokey", "--set expects key=value"),
    ],
)
def test_config_errors_say_what_to_change(assignment, message):
    with pytest.raises(scl.ConfigError, match=message):
        cfg.build(assignments=[assignment])


def test_config_file_errors(tmp_path):
    with pytest.raises(scl.ConfigError, match="cannot read config file"):
        cfg.build(config_file=tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(scl.ConfigError, match="not valid JSON"):
        cfg.build(config_file=bad)


def test_task_network_is_frozen_and_beats_chance(trained):
    exp, _ = trained
    assert not any(p.requires_grad for p in exp.network.parameters())
    assert not exp.network.training
    probs = clf.engine.predict_proba(exp.network, exp.splits["test"].x)
    assert clf.engine.accuracy(probs, exp.splits["test"].y) > 0.2  # chance: 0.1


def test_stage2_trains_the_selection_and_leaves_the_layer_frozen(trained):
    exp, layer_after_stage1 = trained
    obf = exp.obfuscator
    for before, after in zip(layer_after_stage1, obf.layer.parameters(), strict=False):
        assert torch.equal(before, after)
    initial = torch.full_like(
        obf.selection.logits, obf.selection.logits.new_tensor(1 / 10).logit().item()
    )
    # the selection trained every epoch; the budget keeps the epoch closest to it, which may be the
    # start (epoch 0) when no epoch does better, as for a layer that releases only the class
    assert len(exp.history["stage2 soft"]["validation_loss"]) == exp.config["stage2"]["epochs"]
    if exp.metrics["utility"]["soft"]["epoch"] > 0:
        assert not torch.allclose(obf.selection.logits, initial)
    assert obf.selection.values.shape == (10, 1, 16, 16)
    assert isinstance(exp.gated.selection, scl.GatedSelection)
    assert set(exp.history) == {"network", "stage1", "stage2 soft", "stage2 gated"}


def test_evaluate_reports_every_mode_once_and_mean_of_8(trained):
    exp, _ = trained
    with stages.run_noise(exp.config):
        acc = clf.evaluate(exp)
    assert set(acc) == {"clean", "hard", "soft", "gated"}
    assert set(exp.metrics["accuracy_mean8"]) == set(acc)
    assert all(0.0 <= v <= 1.0 for v in acc.values())


def test_every_release_is_attacked_beside_plain_noise_at_the_gated_accuracy(trained):
    exp, _ = trained
    with stages.run_noise(exp.config):
        clf.evaluate(exp)
        privacy = clf.run_attacks(exp, None, RunLog())
    releases = [k for k in privacy if k in clf.RELEASES]
    assert releases == ["soft", "gated", "hard", "gaussian"]  # label-free first
    for name in releases:
        block = privacy[name]
        for key in (DECODER_SSIM, floor_of(DECODER_SSIM), ceiling_of(DECODER_SSIM), REID_TOP1, REID_TOP5,
                    REID_FLOOR_TOP1, REID_CLEAN_TOP1, ATTRIBUTE_ACCURACY, ATTRIBUTE_CHANCE,
                    ATTRIBUTE_CLEAN, DCOR, floor_of(DCOR)):
            assert key in block, (name, key)
    assert WHITEBOX_SSIM in privacy["soft"] and WHITEBOX_SSIM not in privacy["gaussian"]
    for key in (DECODER_SSIM, REID_TOP1, ATTRIBUTE_ACCURACY, DCOR, WHITEBOX_SSIM):
        assert privacy[key] == privacy["hard"][key]  # the flat keys are the hard release's
    # plain noise calibrated to the headline label-free release, the gated one (one fixed draw, bisection)
    assert privacy["gaussian_scale"] > 0
    assert privacy["reference_release"] == "gated"
    assert privacy["reference_accuracy"] == exp.metrics["accuracy"]["gated"]
    # (or, when that release is more accurate than clean images, as an undertrained N can make
    # it, the smallest scale searched)
    assert (privacy["gaussian_accuracy"] >= exp.metrics["accuracy"]["gated"]
            or privacy["gaussian_scale"] == pytest.approx(1e-3))
    assert set(privacy["beats_gaussian"]) == {"soft", "gated", "hard"}
    assert privacy["budget"] == "quick"


def test_privacy_terms():
    x = torch.rand(4, 3, 16, 16)
    dist = torch.distributions.Normal(torch.zeros_like(x), torch.full_like(x, 2.0))
    total, stats = stages.privacy_term("entropy", x, x, dist)
    assert stats["neg_log_scale"] == pytest.approx(-torch.log(torch.tensor(2.0)).item())
    total, stats = stages.privacy_term("ssim", x, x, dist)
    assert stats["ssim"] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(scl.ConfigError, match="needs a gaussian or laplace"):
        stages.privacy_term(
            "entropy", x, x, torch.distributions.Bernoulli(probs=torch.full_like(x, 0.5))
        )


def test_targets_are_checked_on_the_label_free_release():
    soft = {DECODER_SSIM: 0.65, floor_of(DECODER_SSIM): 0.2, REID_TOP1: 0.25, REID_FLOOR_TOP1: 0.03,
            ATTRIBUTE_ACCURACY: 0.27, ATTRIBUTE_CHANCE: 0.25}
    rows = clf.targets({
        "accuracy": {"clean": 0.95, "soft": 0.945},
        "privacy": {"soft": soft, DECODER_SSIM: 0.1,  # the flat keys (hard release) are not the headline
                    "beats_gaussian": {"soft": {DECODER_SSIM: False, REID_TOP1: True}}},
    })
    met = {r["name"]: r["met"] for r in rows}
    assert met == {
        "soft accuracy below clean (points)": True,
        "soft re-identification top-1": True,
        "soft decoder SSIM": False,
        "soft attribute accuracy": True,
        "soft attacks where plain noise leaks less": False,
    }
    assert "not on decoder_ssim" in rows[-1]["target"]


def test_beats_gaussian_compares_every_release_with_plain_noise():
    privacy = {"soft": {DECODER_SSIM: 0.5, REID_TOP1: 0.9}, "hard": {DECODER_SSIM: 0.2, REID_TOP1: 0.1},
               "gaussian": {DECODER_SSIM: 0.6, REID_TOP1: 0.5}}
    assert clf.beats_gaussian(privacy) == {"soft": {DECODER_SSIM: True, REID_TOP1: False},
                                           "hard": {DECODER_SSIM: True, REID_TOP1: True}}
    assert clf.beats_gaussian({"soft": {DECODER_SSIM: 0.5}}) == {}


def test_sweep_gives_one_point_per_lambda_and_keeps_the_main_obfuscator(trained, tmp_path):
    exp, _ = trained
    main = exp.obfuscator
    exp.config = exp.config.updated({"sweep": {"lams": [0.0, 1.0], "stage1_epochs": 1, "decoder_epochs": 1}})
    with stages.run_noise(exp.config):
        points = clf.sweep(exp, None, RunLog())
    assert [p["lam"] for p in points] == [0.0, 1.0]
    assert all(0.0 <= p["accuracy"] <= 1.0 and -1.0 <= p[DECODER_SSIM] <= 1.0 for p in points)
    assert exp.obfuscator is main
    from scl import figures

    path = figures.tradeoff_curve(points, tmp_path / "tradeoff.png")
    assert path.stat().st_size > 0


@pytest.mark.parametrize(
    ("kind", "shape"), [("input", (3, 16, 16)), ("spatial", (1, 16, 16)), ("channel", (3, 1, 1)), ("scalar", ())]
)
def test_soft_selection_shapes(trained, kind, shape):
    exp, _ = trained
    config = cfg.build(assignments=[f"stage2.soft_shape={kind}"])
    assert clf.soft_shape(config, exp.obfuscator.layer, exp.dataset) == shape
