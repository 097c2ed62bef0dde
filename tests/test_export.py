"""`scl.export.export_onnx` and `scl export`: the label-free obfuscator as an ONNX model.

Default ("input") mode: the model takes standard noise as its second input and holds no random
operator, so the tests compare it deterministically with torch's own sample from
``layer.distribution(x, pi)`` built from the same noise. "internal" mode draws the noise with
onnxruntime's random operators, not torch's generator, so those tests compare statistics: the ONNX
output standardised by torch's loc and scale must look like draws of the standard distribution.
Torch's side (weights, selections, inputs) is seeded; onnxruntime's noise is fresh by design.
Statistical tolerances are about 6-7 standard errors for the sample sizes used, so a correct
export fails with negligible probability while a wrong loc, scale, channel order or distribution
fails by far.
"""

import dataclasses
import functools
import json
import math
import re
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn
from typer.testing import CliRunner

import scl
import scl.export.model
import scl.export.trace
import scl.export.verify
from scl.cli import app
from scl.export import draw_noise, export_onnx

runner = CliRunner()
C = 4
SHAPE = (3, 16, 16)
EPS = float(np.finfo(np.float32).eps)
RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


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


def additive_obfuscator(seed=0):
    torch.manual_seed(seed)
    return scl.Obfuscator(scl.StochasticConditionalAdditive((3, 8, 8), C), scl.SoftSelection(C, ()))


def input_shape_of(obfuscator):
    return {
        "StochasticConditionalLinear": (8,),
        "StochasticConditional": (5, 8),
        "StochasticConditionalAdditive": (3, 8, 8),
    }.get(type(obfuscator.layer).__name__, SHAPE)


def session_of(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(path, x, noise=None):
    """One run; a model with a noise input gets ``noise`` or fresh noise from draw_noise."""
    session = session_of(path)
    feed = {"x": x.numpy()}
    if "noise" in [i.name for i in session.get_inputs()]:
        feed["noise"] = draw_noise(path, len(x)) if noise is None else noise
    return torch.from_numpy(session.run(None, feed)[0])


def torch_distribution(obfuscator, x):
    with torch.no_grad():
        return obfuscator.eval().distribution(x)


def torch_sample(obfuscator, x, noise):
    """The documented contract, in torch: the sample of ``layer.distribution(x, pi)`` from ``noise``."""
    dist = torch_distribution(obfuscator, x)
    u = torch.from_numpy(noise)
    name = obfuscator.layer.noise.name
    if name == "gaussian":
        return dist.loc + dist.scale * u
    if name == "laplace":
        v = u.clamp(EPS, 1 - EPS) * 2 - 1
        return dist.loc - dist.scale * v.sign() * torch.log1p(-v.abs())
    if name == "binomial":
        return (u < dist.probs).float().mean(0)
    assert name == "multinomial"
    index = (dist.logits - torch.log(-torch.log(u.clamp(EPS, 1 - EPS)))).argmax(-1, keepdim=True)
    return dist.values.gather(-1, index).squeeze(-1)


def meta_of(path):
    return session_of(path).get_modelmeta().custom_metadata_map


def test_export_writes_a_model_with_metadata_and_a_dynamic_batch(tmp_path):
    obfuscator = conv_obfuscator()
    path = export_onnx(obfuscator, tmp_path / "sub" / "obfuscator.onnx", input_shape=SHAPE)
    assert path == tmp_path / "sub" / "obfuscator.onnx" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["obfuscator.onnx"]  # no temporary leftovers
    for batch in (1, 5):
        y = run(path, torch.rand(batch, *SHAPE))
        assert tuple(y.shape) == (batch, *SHAPE) and bool(torch.isfinite(y).all())
    meta = meta_of(path)
    assert meta["scl_version"] == scl.__version__
    assert meta["scl_distribution"] == "gaussian" and meta["scl_selection"] == "soft"
    assert json.loads(meta["scl_distribution_options"]) == obfuscator.layer.noise.config()
    assert meta["scl_num_classes"] == "4" and json.loads(meta["scl_input_shape"]) == list(SHAPE)
    assert json.loads(meta["scl_output_shape"]) == list(SHAPE)
    # the noise contract (the default mode)
    assert meta["scl_noise_mode"] == "input" and meta["scl_noise_input"] == "noise"
    assert meta["scl_noise_distribution"] == "standard_normal" and meta["scl_noise_dtype"] == "float32"
    assert json.loads(meta["scl_noise_shape"]) == ["batch", *SHAPE]
    model = onnx.load(str(path))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {"x": ["batch", *SHAPE], "noise": ["batch", *SHAPE]}
    assert "standard_normal" in model.graph.input[1].doc_string and "never reuse" in model.graph.input[1].doc_string
    assert obfuscator.training  # the caller's mode is restored


def test_an_export_puts_back_the_users_own_movedim_symbolic(tmp_path):
    # the exporter's symbolic registry is the whole process's; scl registers its movedim for one
    # export and must leave a user's registration as it was
    def users_movedim(g, self, source, destination):
        return self

    torch.onnx.register_custom_op_symbolic("aten::movedim", users_movedim, 9)
    try:
        export_onnx(conv_obfuscator(), tmp_path / "obfuscator.onnx", input_shape=SHAPE)
        assert scl.export.trace._custom_symbolic("aten::movedim", 9) is users_movedim
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::movedim", 9)
    assert scl.export.trace._custom_symbolic("aten::movedim", 9) is None  # and none is left behind


def test_input_shape_is_inferred_where_the_obfuscator_fixes_it(tmp_path):
    path = export_onnx(additive_obfuscator(), tmp_path / "additive.onnx")
    assert tuple(run(path, torch.rand(3, 3, 8, 8)).shape) == (3, 3, 8, 8)
    path = export_onnx(conv_obfuscator(soft_shape=(1, 16, 16)), tmp_path / "conv.onnx")  # H, W from the maps
    assert tuple(run(path, torch.rand(2, *SHAPE)).shape) == (2, *SHAPE)


# -- the default mode: noise is an input ------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "noise_distribution", "noise_shape"),
    [
        (lambda: conv_obfuscator("soft"), "standard_normal", ["batch", *SHAPE]),
        (lambda: conv_obfuscator("gated"), "standard_normal", ["batch", *SHAPE]),
        (lambda: conv_obfuscator("soft", "laplace", soft_shape=(3, 1, 1)), "uniform", ["batch", *SHAPE]),
        (lambda: conv_obfuscator("soft", "binomial", soft_shape=()), "uniform", [8, "batch", *SHAPE]),
        (lambda: conv_obfuscator("soft", "multinomial", soft_shape=()), "uniform", ["batch", *SHAPE, 4]),
        (linear_obfuscator, "standard_normal", ["batch", 8]),  # the linear layer's movedim
        (lstm_obfuscator, "standard_normal", ["batch", 5, 8]),  # unrolled over 5 time steps
        (additive_obfuscator, "standard_normal", ["batch", 3, 8, 8]),
    ],
    ids=["conv-soft-gaussian", "conv-gated-gaussian", "conv-soft-laplace", "conv-soft-binomial",
         "conv-soft-multinomial", "linear-soft-gaussian", "lstm-soft", "additive-soft"],
)
def test_onnx_output_is_torchs_sample_from_the_same_noise(tmp_path, build, noise_distribution, noise_shape):
    obfuscator = build()
    shape = input_shape_of(obfuscator)
    path = export_onnx(obfuscator, tmp_path / "m.onnx", input_shape=shape)  # traced with a batch of 2
    meta = meta_of(path)
    assert meta["scl_noise_distribution"] == noise_distribution
    assert json.loads(meta["scl_noise_shape"]) == noise_shape
    assert not {node.op_type for node in onnx.load(str(path)).graph.node} & RANDOM_OPS

    batch = 5
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(1))
    noise = draw_noise(path, batch, np.random.default_rng(2))  # seeded here only for a reproducible test
    assert list(noise.shape) == [batch if d == "batch" else d for d in noise_shape] and noise.dtype == np.float32
    session = session_of(path)
    y = torch.from_numpy(session.run(None, {"x": x.numpy(), "noise": noise})[0])
    expected = torch_sample(obfuscator, x, noise)
    name = obfuscator.layer.noise.name
    if name in ("gaussian", "laplace"):
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    else:
        # A uniform within float rounding of p (binomial) or a near-tie of the Gumbel-max
        # (multinomial) may go either way between onnxruntime's and torch's arithmetic: compare
        # every other element exactly, and check such ties are rare.
        dist = torch_distribution(obfuscator, x)
        u = torch.from_numpy(noise)
        if name == "binomial":
            tie = ((u - dist.probs).abs() < 1e-5).any(0)
        else:
            scores = dist.logits - torch.log(-torch.log(u.clamp(EPS, 1 - EPS)))
            top2 = scores.topk(2, -1).values
            tie = (top2[..., 0] - top2[..., 1]) < 1e-4
        assert float(tie.float().mean()) < 0.01
        torch.testing.assert_close(y[~tie], expected[~tie], rtol=1e-5, atol=1e-5)
        assert len(torch.unique(y)) > 1  # not a constant output

    # deterministic in the noise: the same noise, the same output; other noise, another output
    again = session.run(None, {"x": x.numpy(), "noise": noise})[0]
    other = session.run(None, {"x": x.numpy(), "noise": draw_noise(path, batch)})[0]
    assert np.array_equal(again, y.numpy())
    assert not np.array_equal(other, y.numpy())


def test_draw_noise_follows_the_metadata_and_is_fresh(tmp_path):
    gaussian = export_onnx(conv_obfuscator(soft_shape=()), tmp_path / "g.onnx", input_shape=SHAPE)
    binomial = export_onnx(conv_obfuscator("soft", "binomial", soft_shape=()), tmp_path / "b.onnx", input_shape=SHAPE)

    eps = draw_noise(gaussian, 64)
    assert eps.shape == (64, *SHAPE) and eps.dtype == np.float32
    # 49,152 standard normal draws: standard errors 0.0045 (mean) and 0.0032 (std)
    assert abs(float(eps.mean())) < 0.03 and abs(float(eps.std()) - 1) < 0.02
    assert float(np.abs(eps).max()) > 3.5  # tails, as a normal has (P(|z| > 3.5) = 4.7e-4 per draw)

    # from the metadata mapping an onnxruntime session gives
    u = draw_noise(meta_of(binomial), 16)
    assert u.shape == (8, 16, *SHAPE) and u.dtype == np.float32
    # 98,304 uniform [0, 1) draws: mean 1/2, std 1/sqrt(12); standard errors 0.00092 and 0.00041
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.006 and abs(float(u.std()) - 1 / math.sqrt(12)) < 0.003

    assert not np.array_equal(draw_noise(gaussian, 2), draw_noise(gaussian, 2))  # the cipher stream: fresh every time
    seeded = [draw_noise(gaussian, 2, np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(*seeded)  # the rng given is the one used


def test_draw_noise_refuses_what_it_cannot_serve(tmp_path):
    internal = export_onnx(conv_obfuscator(), tmp_path / "i.onnx", input_shape=SHAPE, noise="internal")
    with pytest.raises(scl.ConfigError, match="without a 'noise' input .noise mode 'internal'."):
        draw_noise(internal, 2)
    path = export_onnx(conv_obfuscator(), tmp_path / "m.onnx", input_shape=SHAPE)
    with pytest.raises(scl.ShapeError, match="batch_size must be a positive int"):
        draw_noise(path, 0)
    with pytest.raises(scl.ConfigError, match="rng must be None .the default: the cipher stream."):
        draw_noise(path, 2, rng=42)
    with pytest.raises(scl.ConfigError, match="invalid scl noise metadata"):
        draw_noise({**meta_of(path), "scl_noise_distribution": "cauchy"}, 2)


def test_noise_of_the_wrong_shape_is_refused_by_onnxruntime(tmp_path):
    path = export_onnx(conv_obfuscator(), tmp_path / "m.onnx", input_shape=SHAPE)
    session = session_of(path)
    x = np.random.default_rng(0).random((4, *SHAPE), dtype=np.float32)
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    assert session.run(None, {"x": x, "noise": draw_noise(path, 4)}, quiet)[0].shape == (4, *SHAPE)
    # another sample shape; another batch; one sample's noise that would broadcast over the batch
    for wrong in [(4, 3, 16, 8), (5, *SHAPE), (1, *SHAPE), (4, 3, 16, 16, 1)]:
        with pytest.raises(Exception):  # noqa: B017 - onnxruntime's exception types are not public
            session.run(None, {"x": x, "noise": np.zeros(wrong, np.float32)}, quiet)
    with pytest.raises(ValueError, match="noise"):
        session.run(None, {"x": x})


def test_round_trip_through_a_checkpoint_then_export(tmp_path):
    obfuscator = conv_obfuscator("gated")
    scl.save(obfuscator, tmp_path / "obfuscator.safetensors")
    loaded = scl.load(tmp_path / "obfuscator.safetensors")
    path = export_onnx(loaded, tmp_path / "m.onnx", input_shape=SHAPE)
    x = torch.rand(16, *SHAPE, generator=torch.Generator().manual_seed(2))
    noise = draw_noise(path, 16)
    # the original: the checkpoint must carry every weight
    torch.testing.assert_close(run(path, x, noise), torch_sample(obfuscator, x, noise), rtol=1e-5, atol=1e-5)


# -- the checks export makes before writing ---------------------------------------------------------


def _broadcasting_gaussian(dist, noise):
    return dist.loc + dist.scale * noise  # no view_as: a batch-1 noise would broadcast


def _self_drawing_gaussian(dist, noise):
    return dist.loc + dist.scale * torch.randn_like(dist.loc) + 0 * noise.view_as(dist.loc)


def _noise_ignoring_gaussian(dist, noise):
    return dist.loc + 0 * noise.view_as(dist.loc)


@pytest.mark.parametrize(
    ("apply", "message"),
    [
        (_broadcasting_gaussian, "accepted noise for another batch size"),
        (_self_drawing_gaussian, "draws random numbers itself (['RandomNormalLike'])"),
        (_noise_ignoring_gaussian, "does not depend on its noise input"),
    ],
    ids=["broadcast", "random-op", "ignored-noise"],
)
def test_export_refuses_a_graph_that_breaks_the_noise_contract(tmp_path, monkeypatch, apply, message):
    original = scl.export.trace.sampler_for
    monkeypatch.setattr(scl.export.model, "sampler_for",
                        lambda noise: dataclasses.replace(original(noise), apply=apply))
    with pytest.raises(scl.ConfigError, match=re.escape(message)):
        export_onnx(conv_obfuscator(), tmp_path / "m.onnx", input_shape=SHAPE)
    assert not list(tmp_path.iterdir())


def test_check_graph_finds_stored_noise(tmp_path):
    path = export_onnx(conv_obfuscator(), tmp_path / "m.onnx", input_shape=SHAPE)
    model = onnx.load(str(path))
    sampler = scl.export.trace.sampler_for(scl.distributions.get("gaussian"))
    noise = draw_noise(path, 2)
    scl.export.verify.check_graph(model, sampler, noise)  # the exported graph passes
    model.graph.node.append(helper.make_node("Constant", [], ["stored"], value=numpy_helper.from_array(noise)))
    with pytest.raises(scl.ConfigError, match="stores 1536 values of the noise it was traced with"):
        scl.export.verify.check_graph(model, sampler, noise)


# -- "internal" mode: onnxruntime's random operators ------------------------------------------------


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
def test_internal_samples_follow_the_torch_distribution(tmp_path, build, distribution, std, within_one):
    obfuscator = build()
    assert obfuscator.layer.noise.name == distribution
    shape = input_shape_of(obfuscator)
    path = export_onnx(obfuscator, tmp_path / "m.onnx", input_shape=shape, noise="internal")
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["x"]
    assert meta_of(path)["scl_noise_mode"] == "internal"
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


def test_internal_binomial_export_draws_exact_binomial_fractions(tmp_path):
    obfuscator = conv_obfuscator("soft", "binomial", soft_shape=())
    path = export_onnx(obfuscator, tmp_path / "b.onnx", input_shape=SHAPE, noise="internal")
    x = torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(1))
    dist = torch_distribution(obfuscator, x)
    n, p = dist.total_count, dist.probs
    y = run(path, x)
    counts = y * n
    assert bool(torch.allclose(counts, counts.round(), atol=1e-5)) and 0 <= float(y.min()) <= float(y.max()) <= 1
    assert 0.05 < float(p.min()) and float(p.max()) < 0.95  # so that the standardisation is well defined
    z = ((y - p) / (p * (1 - p) / n).sqrt()).flatten()  # 49,152 elements: standard errors < 0.005
    assert abs(float(z.mean())) < 0.04 and abs(float(z.std()) - 1) < 0.04


def test_internal_multinomial_export_picks_each_value_with_its_probability(tmp_path):
    obfuscator = conv_obfuscator("soft", "multinomial", soft_shape=())
    path = export_onnx(obfuscator, tmp_path / "m.onnx", input_shape=SHAPE, noise="internal")
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


def test_internal_mode_draws_fresh_noise_on_every_run(tmp_path):
    obfuscator = conv_obfuscator()
    path = export_onnx(obfuscator, tmp_path / "m.onnx", input_shape=SHAPE, noise="internal")
    session = session_of(path)
    x = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(1)).numpy()
    first, second = (torch.from_numpy(session.run(None, {"x": x})[0]) for _ in range(2))
    assert not torch.equal(first, second)
    loc = torch_distribution(obfuscator, torch.from_numpy(x)).loc
    residuals = torch.stack([(first - loc).flatten(), (second - loc).flatten()])
    assert abs(float(torch.corrcoef(residuals)[0, 1])) < 0.06  # 6,144 pairs: independent draws


@pytest.mark.parametrize(
    ("distribution", "mode", "ops"),
    [
        ("gaussian", "internal", ["RandomNormalLike"]),
        ("laplace", "internal", ["RandomUniformLike"]),
        ("gaussian", "input", []),
        ("laplace", "input", []),
        ("binomial", "input", []),
        ("multinomial", "input", []),
    ],
)
def test_graph_draws_where_the_mode_says_and_stores_no_noise(tmp_path, distribution, mode, ops):
    obfuscator = conv_obfuscator("soft", distribution, soft_shape=())
    path = export_onnx(obfuscator, tmp_path / "m.onnx", input_shape=SHAPE, noise=mode)
    model = onnx.load(str(path))
    random = [node for node in model.graph.node if node.op_type in RANDOM_OPS or node.op_type.startswith("Random")]
    assert [node.op_type for node in random] == ops
    assert not [a.name for node in random for a in node.attribute if a.name == "seed"]
    constants = [numpy_helper.to_array(t) for t in model.graph.initializer]
    constants += [
        numpy_helper.to_array(a.t) for node in model.graph.node if node.op_type == "Constant" for a in node.attribute
        if a.name == "value"
    ]
    # Every parameter of this obfuscator is smaller than one sample's noise (3x16x16 = 768 values,
    # 4x768 for multinomial's 4 choices; the largest parameter, the kernels, holds 4x(3P)x3x3x3
    # values for P parameter maps: 648 for P = 2, 2,592 for multinomial's 8), so a constant that
    # large could only be a stored noise tensor.
    one_sample = math.prod(SHAPE) * (4 if distribution == "multinomial" else 1)
    assert max(p.numel() for p in obfuscator.state_dict().values()) < one_sample
    assert max(c.size for c in constants) < one_sample
    assert not [c.shape for c in constants if c.shape[-3:] == SHAPE or c.shape[-4:-1] == SHAPE]


class SampleOnlyNoise(scl.distributions.NoiseDistribution):
    """A custom distribution that draws its own noise (``sample``) instead of ``from_noise``."""

    name = "my-noise"
    param_names = ("loc",)

    def build(self, params):
        return torch.distributions.Normal(params[0], torch.ones_like(params[0]))

    def sample(self, dist, *, training, generator=None):
        return dist.loc + torch.randn(dist.loc.shape, generator=generator)


class WideGaussian(scl.distributions.Gaussian):
    """A custom distribution with its own formula from standard noise: it exports as it is."""

    name = "wide-gaussian"

    def from_noise(self, dist, noise, *, training):
        return dist.loc + 2.0 * dist.scale * noise


def test_a_custom_distribution_with_from_noise_exports_with_its_own_formula(tmp_path):
    layer = scl.StochasticConditionalConv2d(3, 3, 3, C, padding=1, distribution=WideGaussian())
    obfuscator = scl.Obfuscator(layer, scl.SoftSelection(C, (1, *SHAPE[1:]))).eval()
    path = export_onnx(obfuscator, tmp_path / "m.onnx", input_shape=SHAPE)
    x = torch.rand(3, *SHAPE)
    noise = draw_noise(path, 3)
    dist = torch_distribution(obfuscator, x)
    expected = dist.loc + 2.0 * dist.scale * torch.from_numpy(noise)
    torch.testing.assert_close(run(path, x, noise), expected, rtol=1e-5, atol=1e-5)


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
            scl.StochasticConditionalConv2d(3, 3, 3, C, padding=1, distribution=SampleOnlyNoise()),
            scl.SoftSelection(C)), {}, scl.ConfigError,
         "the 'my-noise' distribution cannot be exported to ONNX: it does not make its samples from standard noise"),
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
        (conv_obfuscator, {"input_shape": SHAPE, "noise": "bogus"}, scl.ConfigError,
         "noise must be one of ['input', 'internal'], but got 'bogus'"),
    ],
    ids=["not-obfuscator", "no-selection", "hard-selection", "distribution", "vmap-layer", "no-shape",
         "wrong-shape", "shape-string", "shape-zero", "example-dtype", "shape-and-example", "opset", "noise-mode"],
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


@pytest.mark.parametrize("mode", [None, "input", "internal"])
def test_cli_exports_a_checkpoint_file_in_either_noise_mode(tmp_path, mode):
    checkpoint = tmp_path / "obfuscator.safetensors"
    scl.save(conv_obfuscator(soft_shape=()), checkpoint)
    out = tmp_path / "out" / "obfuscator.onnx"
    extra = ["--noise", mode] if mode else []
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(out), "--input-shape", "3,16,16", *extra])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "wrote" in text and "obfuscator.onnx" in text and "[batch, 3, 16, 16]" in text
    written = mode or "input"
    assert f"(noise mode: {written})" in text
    inputs = [i.name for i in onnx.load(str(out)).graph.input]
    if written == "input":
        assert inputs == ["x", "noise"] and "standard_normal" in text and "RandomNormalLike" not in text
    else:
        assert inputs == ["x"] and "RandomNormalLike" in text and "32-bit" in text
    assert meta_of(out)["scl_noise_mode"] == written
    assert tuple(run(out, torch.rand(3, *SHAPE)).shape) == (3, *SHAPE)


@pytest.mark.parametrize("selection", [None, "gated", "soft"])
def test_cli_exports_a_run_folder_with_its_recorded_shape(tmp_path, run_folder, selection):
    out = tmp_path / "obfuscator.onnx"
    extra = ["--selection", selection] if selection else []
    result = runner.invoke(app, ["export", str(run_folder), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["scl_selection"] == (selection or "gated")  # the run has a gated selection: the default
    assert json.loads(meta["scl_input_shape"]) == list(SHAPE)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/run", "--out", "m.onnx"], "'/nonexistent/run' does not exist"),
        (["{run}", "--out", "{tmp}/m.txt"], "the output path must end in .onnx"),
        (["{run}/checkpoints/gated.safetensors", "--out", "{tmp}/m.onnx"],
         "pass the run folder with --selection gated"),
        (["{run}", "--out", "{tmp}/m.onnx", "--input-shape", "3,x"], "comma-separated positive sizes"),
        (["{run}", "--out", "{tmp}/m.onnx", "--noise", "bogus"], "noise must be one of ['input', 'internal']"),
    ],
    ids=["missing-source", "bad-out", "not-an-obfuscator", "bad-shape", "bad-noise"],
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
    text = " ".join(result.output.replace("│", " ").split())
    assert "--noise" in text and "input (default)" in text and "32-bit seed" in text


def test_the_demo_default_release_exports_and_matches_torch(tmp_path):
    """The additive class-mean layer behind a gate that is a copy of N picking one class (argmax)."""
    from scl.models import SmallCNN

    torch.manual_seed(0)
    layer = scl.StochasticConditionalAdditive(SHAPE, C, learn_gain=True)
    gate = scl.GatedSelection(C, 3, network=SmallCNN(3, C, width=8), pick="argmax")
    obfuscator = scl.Obfuscator(layer, gate).eval()
    path = export_onnx(obfuscator, tmp_path / "gated.onnx", input_shape=SHAPE)
    assert meta_of(path)["scl_selection"] == "gated"
    x = torch.rand(5, *SHAPE)
    noise = np.random.default_rng(0).standard_normal((5, *SHAPE)).astype(np.float32)
    assert torch.allclose(run(path, x, noise), torch_sample(obfuscator, x, noise), atol=1e-4)
