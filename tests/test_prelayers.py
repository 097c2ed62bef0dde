"""Trainable pre-layers L before the layer (spec §5.1, config ``layer.pre``): start, training,
checkpoints, the label-free releases that share them, and a white-box attacker who inverts them."""

from __future__ import annotations

import json

import pytest
import torch

import scl
import scl.pipelines.classification as clf
from scl.attacks.whitebox import whitebox_attack
from scl.errors import ConfigError
from scl.layers import StochasticConditionalAdditive
from scl.metrics import WHITEBOX_SSIM
from scl.models import ResidualPreLayers
from scl.pipelines import config as cfg
from scl.pipelines import stages
from scl.runs import RunLog


def test_residual_pre_layers_start_as_the_identity_train_and_round_trip(tmp_path):
    torch.manual_seed(0)
    pre = ResidualPreLayers(3, width=4)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(pre(x), x)
    pre(x).pow(2).sum().backward()
    assert all(p.grad is not None for p in pre.parameters())
    with torch.no_grad():
        for p in pre.parameters():
            p.add_(0.1)
    loaded = scl.load(scl.save(pre, tmp_path / "pre.safetensors"))
    assert isinstance(loaded, ResidualPreLayers) and loaded.width == 4
    assert torch.allclose(loaded(x), pre(x)) and not torch.allclose(pre(x), x)


def test_bad_pre_layers_are_refused_with_what_to_do():
    with pytest.raises(ConfigError, match="channels must be a positive int, but got 0"):
        ResidualPreLayers(0)
    with pytest.raises(ConfigError, match="layer.pre must be one of"):
        cfg.build(assignments=["layer.pre=mlp"])
    with pytest.raises(scl.ShapeError):
        ResidualPreLayers(3)(torch.rand(2, 1, 8, 8))


def test_a_run_with_pre_layers_trains_them_and_every_release_uses_them(tmp_path):
    config = cfg.build(quick=True, assignments=[
        "layer.pre=residual", "network.epochs=2", "stage1.epochs=3", "stage2.epochs=1",
    ])
    exp = clf.prepare(config)
    log = RunLog()
    with stages.run_noise(config):
        clf.run_training(exp, None, log)
    pre = exp.obfuscator.pre
    assert isinstance(pre, ResidualPreLayers)
    assert float(pre.path[-1].weight.detach().abs().max()) > 0  # stage 1 moved L off the identity
    assert exp.gated.pre is pre  # the gated release is S(L(x)) too
    frozen = [p.requires_grad for p in pre.parameters()]
    assert not any(frozen)  # stage 2 trains the selection only
    clf.save_checkpoints(exp, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    loaded = clf.load_run(tmp_path)
    x, y = exp.splits["test"].x[:4], exp.splits["test"].y[:4]
    with torch.no_grad():
        assert torch.allclose(loaded.obfuscator.pre(x), pre(x), atol=1e-6)
        assert loaded.gated.pre is not None
        for obf in (exp.obfuscator, loaded.obfuscator):
            h = obf.layer.distribution(obf.features(x), scl.ClassIndex(y, 10)).loc
            assert torch.allclose(h, exp.obfuscator.layer.distribution(pre(x), scl.ClassIndex(y, 10)).loc,
                                  atol=1e-5)


def test_the_white_box_attacker_inverts_the_pre_layers_too():
    torch.manual_seed(0)
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1] * 3)
    layer = StochasticConditionalAdditive((1, 8, 8), 2, distribution_options={"init_scale": 0.01})
    pre = ResidualPreLayers(1, width=4)
    with torch.no_grad():  # L(x) = x - 0.5: an attacker who ignored L would rebuild x - 0.5
        pre.path[-1].bias.fill_(-0.5)

    def observe(a, b):
        return layer(pre(a), scl.ClassIndex(b, 2))

    blind = whitebox_attack(layer, x, y, steps=150, observe=observe)
    informed = whitebox_attack(layer, x, y, steps=150, observe=observe, pre=pre)
    assert informed[WHITEBOX_SSIM] > 0.6
    assert informed[WHITEBOX_SSIM] > blind[WHITEBOX_SSIM] + 0.2


def test_a_label_free_obfuscator_with_pre_layers_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from scl.export import export_onnx
    from scl.selection import SoftSelection

    torch.manual_seed(0)
    pre = ResidualPreLayers(3, width=4)
    with torch.no_grad():
        pre.path[-1].weight.normal_()  # off the identity, so the graph must carry L
    obfuscator = scl.Obfuscator(StochasticConditionalAdditive((3, 8, 8), 4, learn_gain=True),
                                SoftSelection(4, (1, 8, 8)), pre).eval()
    path = export_onnx(obfuscator, tmp_path / "obf.onnx", input_shape=(3, 8, 8))
    assert path.is_file() and path.stat().st_size > 0  # export_onnx checks the graph against torch


def test_a_gated_selection_reads_x_and_not_the_pre_layers_output():
    """A gate started from N reads images; L(x) is not one, so the gate sees x."""
    from scl.selection import GatedSelection

    torch.manual_seed(0)
    pre = ResidualPreLayers(3, width=4)
    with torch.no_grad():
        pre.path[-1].bias.fill_(5.0)  # L(x) far from any image
    gate = GatedSelection(4, 3).eval()
    obfuscator = scl.Obfuscator(StochasticConditionalAdditive((3, 8, 8), 4), gate, pre).eval()
    x = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        picked = obfuscator.select(obfuscator.features(x), inputs=x)
        assert torch.allclose(picked, gate(x))
        assert not torch.allclose(picked, gate(pre(x)))
        expected = obfuscator.layer.distribution(pre(x), gate(x)).loc
        assert torch.allclose(obfuscator.distribution(x).loc, expected, atol=1e-6)
