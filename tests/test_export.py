"""`scl.export.export_onnx` and `scl export`: the label-free obfuscator as an ONNX model.

The ONNX model draws its noise with onnxruntime's random operators, not torch's generator, so the
tests compare statistics: the ONNX output standardised by torch's own loc and scale
(``layer.distribution(x, pi)``) must look like draws of the standard distribution. Torch's side
(weights, selections, inputs) is seeded; onnxruntime's noise is fresh by design. Tolerances are
about 6-7 standard errors for the sample sizes used, so a correct export fails with negligible
probability while a wrong loc, scale, channel order or distribution fails by far.
"""

import functools
import json
import math
import sys

import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from typer.testing import CliRunner

import scl
from scl.cli import app
from scl.export import export_onnx

runner = CliRunner()
C = 4
SHAPE = (3, 16, 16)


def conv_obfuscator(selection="soft", distribution="gaussian", *, soft_shape=(1, 16, 16), seed=0):
    torch.manual_seed(seed)
    layer = scl.StochasticConditionalConv2d(3, 3, 3, num_classes=C, padding=1, distribution=distribution)
    if selection == "soft":
        sel = scl.SoftSelection(C, soft_shape)
        with torch.no_grad():
            sel.logits.normal_(0.0, 1.5)  # a non-uniform, "trained" mix of the classes
    else:
        sel = scl.GatedSelection(C, 3, hidden=8)
    return scl.Obfuscator(layer, sel)


def lstm_obfuscator(seed=0):
    torch.manual_seed(seed)
    layer = scl.StochasticConditional(functools.partial(nn.LSTM, 8, 8, batch_first=True), C)
    return scl.Obfuscator(layer, scl.SoftSelection(C, ()))


def linear_obfuscator(seed=0):
    torch.manual_seed(seed)
    sel = scl.SoftSelection(C, (8,))
    with torch.no_grad():
        sel.logits.normal_(0.0, 1.5)
    return scl.Obfuscator(scl.StochasticConditionalLinear(8, 8, C), sel)


def run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


def torch_distribution(obfuscator, x):
    with torch.no_grad():
        return obfuscator.eval().distribution(x)


def test_export_writes_a_model_with_metadata_and_a_dynamic_batch(tmp_path):
    obfuscator = conv_obfuscator()
    path = export_onnx(obfuscator, tmp_path / "sub" / "obfuscator.onnx", input_shape=SHAPE)
    assert path == tmp_path / "sub" / "obfuscator.onnx" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["obfuscator.onnx"]  # no temporary leftovers
    for batch in (1, 5):
        y = run(path, torch.rand(batch, *SHAPE))
        assert tuple(y.shape) == (batch, *SHAPE) and bool(torch.isfinite(y).all())
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert meta["scl_version"] == scl.__version__
    assert meta["scl_distribution"] == "gaussian" and meta["scl_selection"] == "soft"
    assert json.loads(meta["scl_distribution_options"]) == obfuscator.layer.noise.config()
    assert meta["scl_num_classes"] == "4" and json.loads(meta["scl_input_shape"]) == list(SHAPE)
    assert json.loads(meta["scl_output_shape"]) == list(SHAPE)
    assert obfuscator.training  # the caller's mode is restored


def test_input_shape_is_inferred_where_the_obfuscator_fixes_it(tmp_path):
    torch.manual_seed(0)
    additive = scl.Obfuscator(scl.StochasticConditionalAdditive((3, 8, 8), C), scl.SoftSelection(C, ()))
    path = export_onnx(additive, tmp_path / "additive.onnx")
    assert tuple(run(path, torch.rand(3, 3, 8, 8)).shape) == (3, 3, 8, 8)
    path = export_onnx(conv_obfuscator(soft_shape=(1, 16, 16)), tmp_path / "conv.onnx")  # H, W from the maps
    assert tuple(run(path, torch.rand(2, *SHAPE)).shape) == (2, *SHAPE)


@pytest.mark.parametrize(
    ("build", "distribution", "std", "within_one"),
    [
        # Laplace(0, 1): std sqrt(2), P(|z| < 1) = 1 - 1/e; standard normal: 1 and 0.6827
        (lambda: conv_obfuscator("soft"), "gaussian", 1.0, math.erf(1 / math.sqrt(2))),
        (lambda: conv_obfuscator("gated"), "gaussian", 1.0, math.erf(1 / math.sqrt(2))),
        (lambda: conv_obfuscator("soft", "laplace", soft_shape=(3, 1, 1)), "laplace", math.sqrt(2), 1 - math.exp(-1)),
        (linear_obfuscator, "gaussian", 1.0, math.erf(1 / math.sqrt(2))),  # the linear layer's movedim
        (lstm_obfuscator, "gaussian", 1.0, math.erf(1 / math.sqrt(2))),  # unrolled over 5 time steps
    ],
    ids=["conv-soft-gaussian", "conv-gated-gaussian", "conv-soft-laplace", "linear-soft-gaussian", "lstm-soft"],
)
def test_onnx_samples_follow_the_torch_distribution(tmp_path, build, distribution, std, within_one):
    obfuscator = build()
    assert obfuscator.layer.noise.name == distribution
    shape = {"StochasticConditionalLinear": (8,), "StochasticConditional": (5, 8)}.get(
        type(obfuscator.layer).__name__, SHAPE)
    path = export_onnx(obfuscator, tmp_path / "m.onnx", input_shape=shape)  # traced with a batch of 2
    x = torch.rand(30_720 // math.prod(shape) * 2, *shape, generator=torch.Generator().manual_seed(1))
    dist = torch_distribution(obfuscator, x)
    z = ((run(path, x) - dist.loc) / dist.scale).flatten()
    n = z.numel()
    assert n >= 30_000
    # standard errors at n >= 30,000: mean std/sqrt(n) <= 0.0082; std <= 0.0091 (Laplace: kurtosis 6);
    # P(|z| < 1) sqrt(p(1-p)/n) <= 0.0028
    assert abs(float(z.mean())) < 0.05
    assert abs(float(z.std()) - std) < 0.05
    assert abs(float((z.abs() < 1).float().mean()) - within_one) < 0.02


def test_binomial_export_draws_exact_binomial_fractions(tmp_path):
    obfuscator = conv_obfuscator("soft", "binomial", soft_shape=())
    path = export_onnx(obfuscator, tmp_path / "b.onnx", input_shape=SHAPE)
    x = torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(1))
    dist = torch_distribution(obfuscator, x)
    n, p = dist.total_count, dist.probs
    y = run(path, x)
    counts = y * n
    assert bool(torch.allclose(counts, counts.round(), atol=1e-5)) and 0 <= float(y.min()) <= float(y.max()) <= 1
    assert 0.05 < float(p.min()) and float(p.max()) < 0.95  # so that the standardisation is well defined
    z = ((y - p) / (p * (1 - p) / n).sqrt()).flatten()  # 49,152 elements: standard errors < 0.005
    assert abs(float(z.mean())) < 0.04 and abs(float(z.std()) - 1) < 0.04


def test_multinomial_export_picks_each_value_with_its_probability(tmp_path):
    obfuscator = conv_obfuscator("soft", "multinomial", soft_shape=())
    path = export_onnx(obfuscator, tmp_path / "m.onnx", input_shape=SHAPE)
    x = torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(1))
    dist = torch_distribution(obfuscator, x)
    y = run(path, x)
    distance = (y.unsqueeze(-1) - dist.values).abs()
    assert float(distance.min(-1).values.max()) < 1e-4  # every output is one of the K values
    picked = nn.functional.one_hot(distance.argmin(-1), dist.values.shape[-1]).float()
    n = y.numel()
    for k in range(dist.values.shape[-1]):
        p = dist.probs[..., k]
        standard_error = float((p * (1 - p)).sum().sqrt()) / n
        assert abs(float((picked[..., k] - p).mean())) < 6 * standard_error


def test_every_run_draws_fresh_noise(tmp_path):
    obfuscator = conv_obfuscator()
    path = export_onnx(obfuscator, tmp_path / "m.onnx", input_shape=SHAPE)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(1)).numpy()
    first, second = (torch.from_numpy(session.run(None, {"x": x})[0]) for _ in range(2))
    assert not torch.equal(first, second)
    loc = torch_distribution(obfuscator, torch.from_numpy(x)).loc
    residuals = torch.stack([(first - loc).flatten(), (second - loc).flatten()])
    assert abs(float(torch.corrcoef(residuals)[0, 1])) < 0.06  # 6,144 pairs: independent draws


@pytest.mark.parametrize(("distribution", "op"), [("gaussian", "RandomNormalLike"), ("laplace", "RandomUniformLike")])
def test_graph_draws_with_unseeded_random_ops_and_stores_no_noise(tmp_path, distribution, op):
    obfuscator = conv_obfuscator("soft", distribution, soft_shape=())
    path = export_onnx(obfuscator, tmp_path / "m.onnx", input_shape=SHAPE)
    model = onnx.load(str(path))
    random = [node for node in model.graph.node if node.op_type.startswith("Random")]
    assert [node.op_type for node in random] == [op]
    assert not [a.name for node in random for a in node.attribute if a.name == "seed"]
    constants = [numpy_helper.to_array(t) for t in model.graph.initializer]
    constants += [
        numpy_helper.to_array(a.t) for node in model.graph.node if node.op_type == "Constant" for a in node.attribute
        if a.name == "value"
    ]
    # Every parameter of this obfuscator is smaller than one output sample (3x16x16 = 768 values;
    # the largest, the kernels, holds 4x6x3x3x3 = 648), so a constant that large could only be a
    # stored noise tensor.
    assert max(p.numel() for p in obfuscator.state_dict().values()) < math.prod(SHAPE)
    assert max(c.size for c in constants) < math.prod(SHAPE)
    assert not [c.shape for c in constants if c.shape[-3:] == SHAPE]


def test_round_trip_through_a_checkpoint_then_export(tmp_path):
    obfuscator = conv_obfuscator("gated")
    scl.save(obfuscator, tmp_path / "obfuscator.safetensors")
    loaded = scl.load(tmp_path / "obfuscator.safetensors")
    path = export_onnx(loaded, tmp_path / "m.onnx", input_shape=SHAPE)
    x = torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(2))
    dist = torch_distribution(obfuscator, x)  # the original: the checkpoint must carry every weight
    z = ((run(path, x) - dist.loc) / dist.scale).flatten()
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05


class UnregisteredNoise(scl.distributions.Gaussian):
    name = "my-noise"


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "message"),
    [
        (lambda: scl.StochasticConditionalConv2d(3, 3, 3, C, padding=1), {}, scl.ConfigError,
         "needs an scl.Obfuscator, but got StochasticConditionalConv2d"),
        (lambda: scl.Obfuscator(scl.StochasticConditionalConv2d(3, 3, 3, C, padding=1)), {}, scl.ConfigError,
         "no soft or gated selection (got none); export needs label-free inference"),
        (lambda: _with_hard_selection(conv_obfuscator()), {}, scl.ConfigError,
         "no soft or gated selection (got HardSelection)"),
        (lambda: scl.Obfuscator(
            scl.StochasticConditionalConv2d(3, 3, 3, C, padding=1, distribution=UnregisteredNoise()),
            scl.SoftSelection(C)), {}, scl.ConfigError,
         "the 'my-noise' distribution cannot be exported to ONNX"),
        (lambda: scl.Obfuscator(scl.StochasticConditional(lambda: nn.Linear(8, 8), C), scl.SoftSelection(C)),
         {"input_shape": (8,)}, scl.ConfigError, "torch.func.vmap, which torch's ONNX exporter cannot trace"),
        (lambda: conv_obfuscator(soft_shape=()), {}, scl.ShapeError,
         "the input shape cannot be inferred from this obfuscator; pass input_shape=(C, H, W)"),
        (conv_obfuscator, {"input_shape": (3, 8, 8)}, scl.ShapeError,
         "the obfuscator does not accept inputs of shape (3, 8, 8)"),
        (conv_obfuscator, {"input_shape": "3,16,16"}, scl.ShapeError,
         "input_shape must be a sequence of positive ints"),
        (conv_obfuscator, {"input_shape": (3, 0, 16)}, scl.ShapeError, "but got (3, 0, 16)"),
        (conv_obfuscator, {"example_input": torch.zeros(2, *SHAPE, dtype=torch.long)}, scl.ShapeError,
         "example_input must be a floating-point tensor"),
        (conv_obfuscator, {"input_shape": SHAPE, "example_input": torch.rand(2, *SHAPE)}, scl.ConfigError,
         "pass input_shape or example_input, not both"),
        (conv_obfuscator, {"input_shape": SHAPE, "opset": 7}, scl.ConfigError, "opset must be an int in [13, 20]"),
    ],
    ids=["not-obfuscator", "no-selection", "hard-selection", "distribution", "vmap-layer", "no-shape",
         "wrong-shape", "shape-string", "shape-zero", "example-dtype", "shape-and-example", "opset"],
)
def test_bad_input_is_refused_with_what_to_do(tmp_path, make, kwargs, error, message):
    target = tmp_path / "m.onnx"
    with pytest.raises(error) as info:
        export_onnx(make(), target, **kwargs)
    assert message in str(info.value)
    if "distribution" in message:
        assert "exportable distributions: ['binomial', 'gaussian', 'laplace', 'multinomial']" in str(info.value)
    assert not target.exists() and not list(tmp_path.iterdir())


def _with_hard_selection(obfuscator):
    obfuscator.selection = scl.HardSelection(C)  # bypasses the constructor's check, as user code can
    return obfuscator


def test_bad_paths_are_refused(tmp_path):
    obfuscator = conv_obfuscator()
    with pytest.raises(scl.ConfigError, match=r"must end in \.onnx, but got .*model\.txt"):
        export_onnx(obfuscator, tmp_path / "model.txt", input_shape=SHAPE)
    (tmp_path / "folder.onnx").mkdir()
    with pytest.raises(scl.ConfigError, match="is a folder; give a file path ending in .onnx"):
        export_onnx(obfuscator, tmp_path / "folder.onnx", input_shape=SHAPE)
    (tmp_path / "file").write_text("")
    with pytest.raises(scl.ConfigError, match="is a file, not a folder"):
        export_onnx(obfuscator, tmp_path / "file" / "m.onnx", input_shape=SHAPE)


def test_missing_onnx_packages_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(scl.ConfigError, match=r"install them with pip install 'scl\[onnx\]'"):
        export_onnx(conv_obfuscator(), tmp_path / "m.onnx", input_shape=SHAPE)
    assert not (tmp_path / "m.onnx").exists()


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture
def run_folder(tmp_path):
    """A run folder as `scl train` writes it (checkpoint names and metrics.json's input_shape)."""
    run = tmp_path / "run"
    obfuscator = conv_obfuscator()
    scl.save(obfuscator, run / "checkpoints" / "obfuscator.safetensors")
    torch.manual_seed(1)
    scl.save(scl.GatedSelection(C, 3, hidden=8), run / "checkpoints" / "gated.safetensors")
    (run / "metrics.json").write_text(json.dumps({"input_shape": list(SHAPE)}))
    return run


def test_cli_exports_a_checkpoint_file(tmp_path):
    checkpoint = tmp_path / "obfuscator.safetensors"
    scl.save(conv_obfuscator(soft_shape=()), checkpoint)
    out = tmp_path / "out" / "obfuscator.onnx"
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(out), "--input-shape", "3,16,16"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "wrote" in text and "obfuscator.onnx" in text and "[batch, 3, 16, 16]" in text and "RandomNormalLike" in text
    assert tuple(run(out, torch.rand(3, *SHAPE)).shape) == (3, *SHAPE)


@pytest.mark.parametrize("selection", [None, "gated"])
def test_cli_exports_a_run_folder_with_its_recorded_shape(tmp_path, run_folder, selection):
    out = tmp_path / "obfuscator.onnx"
    extra = ["--selection", selection] if selection else []
    result = runner.invoke(app, ["export", str(run_folder), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["scl_selection"] == (selection or "soft")
    assert json.loads(meta["scl_input_shape"]) == list(SHAPE)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/run", "--out", "m.onnx"], "'/nonexistent/run' does not exist"),
        (["{run}", "--out", "{tmp}/m.txt"], "the output path must end in .onnx"),
        (["{run}/checkpoints/gated.safetensors", "--out", "{tmp}/m.onnx"],
         "pass the run folder with --selection gated"),
        (["{run}", "--out", "{tmp}/m.onnx", "--input-shape", "3,x"], "comma-separated positive sizes"),
    ],
    ids=["missing-source", "bad-out", "not-an-obfuscator", "bad-shape"],
)
def test_cli_user_errors_are_one_line_with_exit_code_2(tmp_path, run_folder, args, message):
    args = [a.format(run=run_folder, tmp=tmp_path) for a in args]
    result = runner.invoke(app, ["export", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error:")
    assert not list(tmp_path.glob("m.*"))


def test_cli_export_has_help_with_an_example():
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and "--input-shape" in result.output
