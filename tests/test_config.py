"""Typed configs (scl.pipelines.config): frozen, read as attributes or as mappings, validated by one
validator from the fields' own checks, written and read back as config.json, and runs of earlier
versions still load."""

import dataclasses
import json

import pytest

from scl.errors import ConfigError
from scl.pipelines import config as cfg
from scl.pipelines import detection
from scl.pipelines.config import ClassificationConfig, Section, validate
from scl.pipelines.federated.task import FederatedConfig

KINDS = [ClassificationConfig, detection.DetectionConfig, FederatedConfig]


def _leaves(kind, prefix=""):
    for field in dataclasses.fields(kind):
        if "section" in field.metadata:
            yield from _leaves(field.metadata["section"], prefix + field.name + ".")
        else:
            yield prefix + field.name, field


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_every_field_is_checked_and_the_defaults_pass(kind):
    # the one validator is made of the fields' checks: a field without one would go unvalidated
    unchecked = [name for name, field in _leaves(kind) if "check" not in field.metadata]
    assert unchecked == []
    validate(kind())


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_a_config_survives_json_both_ways(kind):
    config = kind()
    text = json.dumps(config.to_dict())
    again = kind.from_dict(json.loads(text))
    assert again == config and again.to_dict() == config.to_dict()
    assert list(json.loads(text)) == [f.name for f in dataclasses.fields(kind)]  # the order a user reads


def test_configs_read_as_attributes_and_as_mappings():
    config = cfg.build(assignments=["stage1.lam=0.25"])
    assert config.stage1.lam == config["stage1"]["lam"] == 0.25
    assert isinstance(config.stage1, Section) and set(config.stage1) == {"epochs", "lr", "privacy", "lam"}
    assert config.get("utility")["max_accuracy_loss"] == config.utility.max_accuracy_loss
    assert config.get("no such section") is None
    assert config.stage1 == {"epochs": 100, "lr": 0.03, "privacy": "within", "lam": 0.25}
    assert config.stage1 != {"epochs": 100, "lr": 0.03, "privacy": "within", "lam": 0.1}
    with pytest.raises(KeyError):
        config["lamda"]


def test_configs_are_frozen_and_updated_into_new_ones():
    config = cfg.build()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.stage1.lam = 3.0
    with pytest.raises(TypeError):
        config["stage1"]["lam"] = 3.0
    wider = config.updated({"utility": {"max_accuracy_loss": 2.5}})
    assert wider.utility.max_accuracy_loss == 2.5 and config.utility.max_accuracy_loss == 1.0
    assert wider.stage1 == config.stage1
    with pytest.raises(ConfigError, match=r"utility.max_accuracy_loss \(--max-accuracy-loss\) must be null or"):
        config.updated({"utility": {"max_accuracy_loss": 100}})
    with pytest.raises(ConfigError, match="unknown config key 'utility.max_loss'"):
        config.updated({"utility": {"max_loss": 2}})


@pytest.mark.parametrize(("assignment", "message"), [
    ("seed=1.5", "seed must be an integer, but got 1.5"),
    ("data=3", "data must be a non-empty string, but got 3"),
    ("reproducible=yes", "reproducible must be true or false, but got 'yes'"),
    ("network.lr=0", "network.lr must be a number > 0, but got 0"),
    ("network.checkpoint=3", "network.checkpoint must be null or a path, but got 3"),
    ("stage2.lr=-0.1", "stage2.lr must be a number > 0, but got -0.1"),
    ("attacks.whitebox_steps=0", "attacks.whitebox_steps must be a positive integer, but got 0"),
    ("sweep.lams=[0.1,-1]", r"sweep.lams must be a non-empty list of numbers >= 0, but got \[0.1, -1\]"),
    ("sweep.lams=[]", "sweep.lams must be a non-empty list"),
    ("gated.epochs=-1", r"gated.epochs must be an integer >= 0 \(0: the gate as it starts\)"),
    ("stage1.lam=NaN", "stage1.lam must be a number >= 0, but got nan"),
    ("stage1.lam=nan", "stage1.lam must be a number >= 0, but got 'nan'"),
])
def test_bad_values_say_which_key_and_what_it_takes(assignment, message):
    with pytest.raises(ConfigError, match=message):
        cfg.build(assignments=[assignment])


def test_a_dict_is_checked_as_the_config_it_stands_for():
    config = cfg.build()
    assert ClassificationConfig.coerce(config) is config
    as_dict = ClassificationConfig.coerce(config.to_dict())
    assert as_dict == config and isinstance(as_dict, ClassificationConfig)
    with pytest.raises(ConfigError, match="stage1.lam must be a number >= 0"):
        ClassificationConfig.coerce({"stage1": {"lam": -1}})
    with pytest.raises(ConfigError, match="unknown config key 'stage3'"):
        ClassificationConfig.coerce({"stage3": {}})


#: config.json as an earlier version wrote it: no budget, no gate start or pick, and attack keys
#: since removed
EARLIER = {
    "seed": 0, "data": "digits", "image_size": 16, "batch_size": 64, "reproducible": True,
    "network": {"epochs": 20, "lr": 2e-3, "width": 32, "checkpoint": None},
    "layer": {"kind": "conv", "distribution": "gaussian", "selection_at": "input", "kernel_size": 3,
              "init_scale": 0.5, "learn_gain": False},
    "stage1": {"epochs": 40, "lr": 3e-3, "privacy": "entropy", "lam": 0.1},
    "stage2": {"epochs": 30, "lr": 0.05, "soft_shape": "spatial"},
    "gated": {"epochs": 100, "lr": 3e-3},
    "attacks": {"decoder_epochs": 30, "attribute_epochs": 20, "whitebox_images": 200, "whitebox_steps": 100},
}


def test_a_config_of_an_earlier_version_loads_with_what_it_meant():
    with pytest.raises(ConfigError, match="unknown config key 'attacks.decoder_epochs'"):
        ClassificationConfig.from_dict(EARLIER)
    old = ClassificationConfig.from_dict(EARLIER, legacy=True)
    assert old.utility.max_accuracy_loss is None and old.utility.patience is None  # no budget then
    assert (old.gated.init, old.gated.pick) == ("scratch", "softmax")
    assert old.layer.kind == "conv" and old.stage1.epochs == 40 and old.network.epochs == 20
    assert old.layer.pre == "none" and old.attacks.budget == "standard"  # keys added since: today's
    validate(old)


def test_scl_evaluate_reads_a_run_of_an_earlier_version(tmp_path):
    # the quick demo's run, with its config.json rewritten as an earlier version wrote it
    from typer.testing import CliRunner

    from scl.cli import app
    from tests.test_commands import TINY_DEMO

    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--quick", "--out", str(out), "--no-progress", *TINY_DEMO])
    assert result.exit_code == 0, result.output
    written = json.loads((out / "config.json").read_text())
    earlier = {key: value for key, value in written.items() if key != "utility"}
    earlier["gated"] = {k: v for k, v in written["gated"].items() if k not in ("init", "pick")}
    earlier["attacks"] = {**written["attacks"], "decoder_epochs": 30}
    (out / "config.json").write_text(json.dumps(earlier))
    result = runner.invoke(app, ["evaluate", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    rewritten = json.loads((out / "config.json").read_text())  # what the run meant, spelled out
    assert rewritten["utility"]["max_accuracy_loss"] is None and "decoder_epochs" not in rewritten["attacks"]
    assert set(json.loads((out / "metrics.json").read_text())["accuracy"]) >= {"clean", "hard", "soft"}
