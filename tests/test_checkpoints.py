"""Tests of scl.save / scl.load: safetensors round trips, refusals, atomic writes."""

from __future__ import annotations

import functools
import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

import scl

C = 3


def soft_logits(module: scl.SoftSelection) -> scl.SoftSelection:
    with torch.no_grad():
        module.logits.normal_()
    return module


def conv() -> nn.Module:
    return scl.StochasticConditionalConv2d(
        2,
        3,
        3,
        C,
        stride=2,
        padding=1,
        distribution="laplace",
        distribution_options={"init_scale": 0.3},
        selection_at="output",
    )


MODULES: dict[str, Any] = {
    "conv": conv,
    "linear": lambda: scl.StochasticConditionalLinear(4, 5, C, distribution="multinomial"),
    "additive": lambda: scl.StochasticConditionalAdditive((2, 4, 4), C, distribution="binomial"),
    "lstm": lambda: scl.StochasticConditional(
        functools.partial(nn.LSTM, 4, 5, batch_first=True), C, selection_at="output"
    ),
    "gru": lambda: scl.StochasticConditional(functools.partial(nn.GRU, 4, 5, batch_first=True), C),
    "transformer": lambda: scl.StochasticConditional(
        functools.partial(
            nn.TransformerEncoderLayer, 4, 2, dim_feedforward=8, dropout=0.0, batch_first=True
        ),
        C,
    ),
    "soft": lambda: soft_logits(scl.SoftSelection(C, (1, 4, 4))),
    "gated": lambda: scl.GatedSelection(C, 2, hidden=4),
    "hard": lambda: scl.HardSelection(C, background=1),
    "obfuscator_soft": lambda: scl.Obfuscator(
        scl.StochasticConditionalConv2d(2, 3, 3, C, padding=1), soft_logits(scl.SoftSelection(C))
    ),
    "obfuscator_gated": lambda: scl.Obfuscator(
        scl.StochasticConditionalConv2d(2, 3, 3, C, padding=1),
        scl.GatedSelection(C, 2, hidden=4),
        box_background=0,
    ),
}


def run(name: str, module: nn.Module) -> Any:
    """A deterministic output of ``module`` that depends on all of its state."""
    module.eval()
    gen = torch.Generator().manual_seed(7)
    labels = torch.tensor([0, 2])
    image, sequence = torch.rand(2, 2, 4, 4, generator=gen), torch.rand(2, 3, 4, generator=gen)
    dense = torch.rand(2, C, generator=gen)
    with scl.deterministic(0):
        if name in ("conv", "additive"):
            return torch.stack([module(image, labels), module(image, dense)])
        if name in ("linear", "lstm", "gru", "transformer"):
            return torch.stack([module(sequence, labels), module(sequence, dense)])
        if name == "soft":
            return module().values
        if name == "gated":
            return module(image)
        if name == "hard":
            return module.from_boxes([(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), [2])], (4, 4), (4, 4))
        return torch.stack([module(image), module(image, labels)])


def perturb(module: nn.Module) -> None:
    """Move every floating-point tensor away from its initial value."""
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.dtype.is_floating_point:
                tensor.add_(torch.randn_like(tensor) * 0.1)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_round_trip_rebuilds_a_module_with_identical_outputs(name: str, tmp_path: Path) -> None:
    # prepare
    module = MODULES[name]()
    perturb(module)
    path = tmp_path / f"{name}.safetensors"

    # execute
    returned = scl.save(module, path)
    torch.manual_seed(123)  # loading must not depend on the global seed
    loaded = scl.load(path)

    # assert
    assert Path(returned) == path
    assert type(loaded) is type(module)
    if not name.startswith("obfuscator"):
        assert loaded.config() == module.config()
    assert loaded.state_dict().keys() == module.state_dict().keys()
    for key, value in module.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    torch.testing.assert_close(run(name, loaded), run(name, module), rtol=0, atol=0)
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind


def test_round_trip_keeps_layer_options(tmp_path: Path) -> None:
    # prepare
    layer = conv()

    # execute
    scl.save(layer, tmp_path / "c.safetensors")
    loaded = scl.load(tmp_path / "c.safetensors")

    # assert
    assert loaded.stride == (2, 2) and loaded.padding == (1, 1)
    assert loaded.selection_at == "output"
    assert loaded.noise.name == "laplace" and loaded.noise.init_scale == 0.3


def test_obfuscator_round_trip_keeps_its_parts(tmp_path: Path) -> None:
    module = MODULES["obfuscator_gated"]()
    scl.save(module, tmp_path / "o.safetensors")
    loaded = scl.load(tmp_path / "o.safetensors")
    assert isinstance(loaded.layer, scl.StochasticConditionalConv2d)
    assert isinstance(loaded.selection, scl.GatedSelection)
    assert loaded.hard.background == 0


def test_obfuscator_with_plain_pre_layers_saves_and_loads_into_a_module(tmp_path: Path) -> None:
    # prepare: L is a plain torch module (spec §5.1: x -> L -> S)
    def build() -> scl.Obfuscator:
        return scl.Obfuscator(
            scl.StochasticConditionalConv2d(4, 3, 3, C, padding=1),
            scl.SoftSelection(C),
            pre=nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU()),
        )

    module = build()
    perturb(module)
    path = tmp_path / "o.safetensors"
    x = torch.rand(2, 2, 4, 4)

    # execute
    scl.save(module, path)
    loaded = scl.load(path, into=build())

    # assert
    with scl.deterministic(0):
        expected = module.eval()(x)
    with scl.deterministic(0):
        actual = loaded.eval()(x)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_load_into_a_plain_module(tmp_path: Path) -> None:
    # prepare
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    path = tmp_path / "net.safetensors"
    scl.save(net, path)
    fresh = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))

    # execute
    returned = scl.load(path, into=fresh)

    # assert
    assert returned is fresh
    x = torch.randn(5, 3)
    torch.testing.assert_close(fresh(x), net(x), rtol=0, atol=0)


def test_loading_a_plain_module_without_into_says_how(tmp_path: Path) -> None:
    scl.save(nn.Linear(3, 4), tmp_path / "net.safetensors")
    with pytest.raises(scl.CheckpointError, match=r"into=module"):
        scl.load(tmp_path / "net.safetensors")


def test_a_saved_file_is_a_safetensors_file_with_json_metadata(tmp_path: Path) -> None:
    # prepare
    path = tmp_path / "layer.safetensors"

    # execute
    scl.save(MODULES["linear"](), path)

    # assert
    tensors = safetensors.torch.load_file(path)
    with safetensors.safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    assert set(tensors) == {"weight", "bias"}
    assert metadata["format"].startswith("scl-checkpoint")
    assert metadata["scl_version"] == scl.__version__
    assert json.loads(metadata["spec"])["class"] == "StochasticConditionalLinear"


def _forbid_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("scl.load must never unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)


def test_a_pickle_file_from_torch_save_is_refused_without_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare
    path = tmp_path / "model.pt"
    torch.save(MODULES["conv"]().state_dict(), path)
    _forbid_unpickling(monkeypatch)

    # execute / assert
    with pytest.raises(scl.CheckpointError, match="not a safetensors checkpoint"):
        scl.load(path)
    with pytest.raises(scl.CheckpointError, match="not a safetensors checkpoint"):
        scl.load(path, into=MODULES["conv"]())


def test_a_whole_pickled_module_is_refused_without_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.pt"
    torch.save(nn.Linear(2, 2), path)
    _forbid_unpickling(monkeypatch)
    with pytest.raises(scl.CheckpointError):
        scl.load(path)


def test_a_non_scl_safetensors_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"weight": torch.zeros(2, 2)}, path, metadata={"format": "pt"})
    with pytest.raises(
        scl.CheckpointError, match="is a safetensors file but not an scl checkpoint"
    ):
        scl.load(path)
    with pytest.raises(scl.CheckpointError, match="not an scl checkpoint"):
        scl.load(path, into=nn.Linear(2, 2, bias=False))


@pytest.mark.parametrize("content", [b"", b"\x00" * 3, b"not a checkpoint at all"])
def test_garbage_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(content)
    with pytest.raises(scl.CheckpointError):
        scl.load(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(scl.CheckpointError, match="does not exist"):
        scl.load(tmp_path / "nope.safetensors")


def test_into_with_a_tensor_of_another_shape_is_refused(tmp_path: Path) -> None:
    # prepare
    scl.save(scl.StochasticConditionalLinear(4, 5, C), tmp_path / "l.safetensors")
    other = scl.StochasticConditionalLinear(4, 6, C)
    before = {k: v.clone() for k, v in other.state_dict().items()}

    # execute / assert
    with pytest.raises(
        scl.CheckpointError,
        match=r"tensor '(weight|bias)' has shape \(3, 10(, 4)?\) but StochasticConditionalLinear",
    ):
        scl.load(tmp_path / "l.safetensors", into=other)
    for key, value in other.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_into_with_other_tensor_names_is_refused(tmp_path: Path) -> None:
    scl.save(nn.Linear(3, 4), tmp_path / "l.safetensors")
    with pytest.raises(
        scl.CheckpointError, match=r"missing \['offsets'\], unexpected \['bias', 'weight'\]"
    ):
        scl.load(tmp_path / "l.safetensors", into=scl.StochasticConditionalAdditive((3,), C))


def test_a_checkpoint_naming_an_unknown_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.safetensors"
    spec = {"class": "Popen", "config": {"args": ["rm", "-rf", "/"]}}
    metadata = {
        "format": "scl-checkpoint/1",
        "scl_version": scl.__version__,
        "spec": json.dumps(spec),
    }
    safetensors.torch.save_file({"x": torch.zeros(1)}, path, metadata=metadata)
    with pytest.raises(scl.CheckpointError, match="names class 'Popen', which scl does not know"):
        scl.load(path)


def test_a_checkpoint_naming_an_unsafe_factory_is_refused(tmp_path: Path) -> None:
    # prepare: a generic layer whose factory points outside torch.nn / scl
    path = tmp_path / "evil.safetensors"
    scl.save(MODULES["gru"](), path)
    tensors = safetensors.torch.load_file(path)
    with safetensors.safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    spec = json.loads(metadata["spec"])
    spec["config"]["factory"] = {"class": "subprocess.Popen", "args": [["true"]], "kwargs": {}}
    metadata["spec"] = json.dumps(spec)
    safetensors.torch.save_file(tensors, path, metadata=metadata)

    # execute / assert
    with pytest.raises(scl.SCLError, match="refusing to build factory 'subprocess.Popen'"):
        scl.load(path)


def test_saving_a_generic_layer_with_a_lambda_factory_is_refused(tmp_path: Path) -> None:
    # prepare
    layer = scl.StochasticConditional(lambda: nn.GRU(4, 5, batch_first=True), C)
    path = tmp_path / "g.safetensors"

    # execute / assert
    with pytest.raises(scl.SCLError, match="this layer's factory cannot be saved"):
        scl.save(layer, path)
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_saving_something_that_is_not_a_module_is_refused(tmp_path: Path) -> None:
    with pytest.raises(scl.CheckpointError, match="scl.save needs an nn.Module, but got dict"):
        scl.save({"weight": torch.zeros(1)}, tmp_path / "d.safetensors")


# --------------------------------------------------------------------------- atomic writes


def test_saving_over_an_existing_file_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "l.safetensors"
    first, second = MODULES["linear"](), MODULES["linear"]()
    scl.save(first, path)
    scl.save(second, path)
    torch.testing.assert_close(scl.load(path).weight, second.weight, rtol=0, atol=0)
    assert os.listdir(tmp_path) == [path.name]


def test_a_failing_serializer_leaves_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare
    path = tmp_path / "l.safetensors"
    scl.save(MODULES["linear"](), path)
    old = path.read_bytes()

    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save", broken)

    # execute
    with pytest.raises(OSError, match="disk full"):
        scl.save(MODULES["linear"](), path)

    # assert
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == [path.name]


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare
    path = tmp_path / "l.safetensors"
    scl.save(MODULES["linear"](), path)
    old = path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)

    # execute
    with pytest.raises(OSError, match="I/O error"):
        scl.save(MODULES["linear"](), path)

    # assert
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == [path.name]


def test_a_failing_first_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        scl.save(MODULES["linear"](), tmp_path / "new.safetensors")
    assert os.listdir(tmp_path) == []


def test_a_saved_file_gets_the_usual_permissions(tmp_path: Path) -> None:
    # prepare
    umask = os.umask(0o022)
    try:
        # execute
        path = scl.save(MODULES["linear"](), tmp_path / "l.safetensors")
    finally:
        os.umask(umask)

    # assert: 0o666 minus the umask, not mkstemp's private 0o600
    assert Path(path).stat().st_mode & 0o777 == 0o644


def test_save_creates_missing_parent_folders(tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoints" / "layer.safetensors"
    scl.save(MODULES["linear"](), path)
    assert isinstance(scl.load(path), scl.StochasticConditionalLinear)


def test_import_scl_alone_knows_every_class_a_command_saves_and_stays_light(tmp_path: Path) -> None:
    """Classes register where they are defined, and ``import scl`` imports their modules: a fresh
    interpreter that ran only ``import scl`` rebuilds the task networks and pre-layers, and has not
    imported the plotting, federated or ONNX stacks."""
    import subprocess
    import sys

    from scl.models import CenterNet, ResidualPreLayers, SmallCNN

    paths = []
    for name, module in {"cnn": SmallCNN(3, 10), "centernet": CenterNet(3, 2), "pre": ResidualPreLayers(3)}.items():
        paths.append(str(scl.save(module, tmp_path / f"{name}.safetensors")))
    code = (
        "import sys, scl\n"
        "print(*[type(scl.load(p)).__name__ for p in sys.argv[1:]])\n"
        "print(*sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'flwr', 'onnx', 'onnxruntime'}))"
    )
    result = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded, heavy = [*result.stdout.splitlines(), ""][:2]
    assert loaded.split() == ["SmallCNN", "CenterNet", "ResidualPreLayers"]
    assert heavy == ""
