"""Export a trained obfuscator to ONNX (``scl export``): label-free obfuscation without torch.

A data owner obfuscates on their own device before anything leaves it; the device may have no
torch. :func:`export_onnx` writes the obfuscator's label-free inference path as one ONNX model:

``x -> pre-layers L -> selection (soft or gated) -> parameter maps -> noise sample``

Where the noise comes from (``noise=``):

``"input"`` (the default)
    The model has a second input, ``noise``, that the caller fills on every run from a
    cryptographic source, as scl itself draws inference noise (:mod:`scl.random`): the AES-256-CTR
    cipher stream of :mod:`scl.cipher` (numpy and ``cryptography`` only, what :func:`draw_noise`
    uses), or bytes from ``os.urandom``/``secrets`` turned into floats. Not
    ``numpy.random.default_rng()``: PCG64 is no cryptographic generator, and noise an attacker can
    regenerate can be subtracted.
    The graph holds no random operator, so it is deterministic given ``(x, noise)``. The noise is
    standard and parameter-free; the graph turns it into the layer's sample:

    ==============  ===============================  =========================================
    distribution    ``noise``                         the sample ``h``
    ==============  ===============================  =========================================
    gaussian        standard normal ``[B, *out]``     ``loc + scale * noise``
    laplace         uniform [0, 1) ``[B, *out]``      inverse CDF of ``u = clamp(noise)``:
                                                      ``loc - scale * sign(2u-1) * log1p(-|2u-1|)``
    binomial        uniform [0, 1) ``[n, B, *out]``   fraction of the ``n = total_count`` trials
                                                      with ``noise < sigmoid(logits)``
    multinomial     uniform [0, 1) ``[B, *out, K]``   ``values[argmax(logits - log(-log(clamp(noise))))]``
                                                      (Gumbel-max over the K choices)
    ==============  ===============================  =========================================

    ``B`` is the batch of ``x``, ``out`` one output's shape, ``clamp`` keeps a uniform inside the
    open interval (eps, 1 - eps) as scl's own samplers do. The metadata_props record the contract
    (``scl_noise_input``, ``scl_noise_distribution``: ``standard_normal`` or ``uniform``,
    ``scl_noise_shape``: a JSON list with ``"batch"`` for the batch dimension, ``scl_noise_dtype``),
    and :func:`draw_noise` draws a correct array from it. Draw fresh noise for every run and never
    reuse it: noise an attacker can regenerate or see twice can be subtracted.

``"internal"``
    The model draws the noise itself with ONNX's ``RandomNormalLike``/``RandomUniformLike``,
    without a ``seed`` attribute, and has the one input ``x``. Caveat: onnxruntime (1.32) seeds its
    CPU random operators from one process-wide seed, the clock at start-up unless
    ``onnxruntime.set_seed`` is called, plus the node's index, narrowed to 32 bits for
    ``std::default_random_engine``; sessions created in one process without a new ``set_seed``
    draw the same stream, and an attacker who can try all 2^32 seeds could regenerate the noise.
    Do not use it where privacy matters.

No noise tensor is ever stored in the file.

Example::

    from scl.export import draw_noise, export_onnx

    obfuscator = scl.load("runs/mine/checkpoints/obfuscator.safetensors")
    export_onnx(obfuscator, "obfuscator.onnx", input_shape=(3, 16, 16))
    # on the device, with onnxruntime (draw_noise: the cipher stream of scl.cipher):
    h = session.run(None, {"x": x, "noise": draw_noise("obfuscator.onnx", len(x))})[0]

Exportable: the convolution, linear and additive layers, and ``StochasticConditional`` over
``nn.LSTM``/``nn.GRU`` (unrolled over time, so the model takes the example's sequence length
only); optional pre-layers that torch can trace; the gaussian, laplace, binomial and multinomial
distributions, and any registered distribution that makes its samples from standard noise
(``noise_kind``, ``noise_like``, ``from_noise``: the same formula then runs in torch and in the
ONNX graph). Generic ``StochasticConditional`` layers over other modules run under
``torch.func.vmap``, which the tracer cannot follow: they are refused.

Requires the ``onnx`` extra: ``pip install 'scl[onnx]'`` (onnx, onnxruntime).

The package, one idea a module (this one re-exports the public names):

- :mod:`scl.export.model`: :func:`export_onnx` (checks, trace, metadata, self-checks, atomic write)
  and :func:`describe`;
- :mod:`scl.export.trace`: the traceable label-free path and its sampler, torch's exporter and the
  fix scl applies to it (why the TorchScript exporter, not ``dynamo=True``, is said there);
- :mod:`scl.export.inputs`: the checks of the arguments;
- :mod:`scl.export.verify`: the graph's and onnxruntime's self-checks before a model is written;
- :mod:`scl.export.noise`: the device side, :func:`draw_noise`, numpy only (no torch);
- :mod:`scl.export.load`: the obfuscator of a run folder or checkpoint, for ``scl export``.
"""

from __future__ import annotations

from scl.export.inputs import MAX_OPSET, MIN_OPSET, NOISE_MODES, infer_input_shape, parse_shape
from scl.export.load import load_for_export
from scl.export.model import describe, export_onnx
from scl.export.noise import BATCH, INPUT_NAME, NOISE_NAME, OUTPUT_NAME, draw_noise
from scl.export.trace import exportable_distributions

__all__ = [
    "BATCH",
    "INPUT_NAME",
    "MAX_OPSET",
    "MIN_OPSET",
    "NOISE_MODES",
    "NOISE_NAME",
    "OUTPUT_NAME",
    "describe",
    "draw_noise",
    "export_onnx",
    "exportable_distributions",
    "infer_input_shape",
    "load_for_export",
    "parse_shape",
]
