"""Where the noise comes from: the cipher stream at inference, reproducible only when asked."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import textwrap

import pytest
import torch

import scl

C = 3

# Each process builds the same layer (global seed 0), then samples it in eval mode twice: once
# plainly, once inside scl.deterministic(0). It prints both samples as JSON.
CHILD = textwrap.dedent(
    """
    import json, torch, scl
    torch.manual_seed(0)
    layer = scl.StochasticConditionalLinear(4, 6, 3).eval()
    x, labels = torch.ones(2, 4), torch.tensor([0, 2])
    torch.manual_seed(0)
    plain = layer(x, labels)
    with scl.deterministic(0):
        seeded = layer(x, labels)
    print(json.dumps({"plain": plain.tolist(), "seeded": seeded.tolist(), "source": scl.random.describe()}))
    """
)


@pytest.fixture(scope="module")
def two_processes() -> list[dict]:
    """Run CHILD in two separate interpreters (in parallel) and parse their outputs."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def make_layer() -> scl.StochasticConditionalLinear:
    return scl.StochasticConditionalLinear(4, 6, C)


X, LABELS = torch.ones(2, 4), torch.tensor([0, 2])


def test_eval_noise_differs_between_processes_despite_torch_manual_seed(
    two_processes: list[dict],
) -> None:
    first, second = two_processes
    assert first["plain"] != second["plain"]
    assert first["source"]["source"] == second["source"]["source"] == "cipher stream"
    assert first["source"]["process"] != second["source"]["process"]


def test_deterministic_block_gives_the_same_noise_in_every_process(
    two_processes: list[dict],
) -> None:
    first, second = two_processes
    assert first["seeded"] == second["seeded"]


def test_deterministic_block_matches_this_process_too(
    two_processes: list[dict],
) -> None:
    torch.manual_seed(0)
    layer = scl.StochasticConditionalLinear(4, 6, 3).eval()
    with scl.deterministic(0):
        here = layer(X, LABELS)
    torch.testing.assert_close(here, torch.tensor(two_processes[0]["seeded"]))


def test_eval_noise_ignores_the_global_seed_in_process() -> None:
    # prepare
    layer = make_layer().eval()

    # execute
    torch.manual_seed(0)
    first = layer(X, LABELS)
    torch.manual_seed(0)
    second = layer(X, LABELS)

    # assert
    assert not torch.equal(first, second)


def test_eval_sampling_does_not_consume_the_global_generator() -> None:
    # prepare
    layer = make_layer().eval()

    # execute
    torch.manual_seed(0)
    layer(X, LABELS)
    after_sampling = torch.rand(3)
    torch.manual_seed(0)
    untouched = torch.rand(3)

    # assert
    torch.testing.assert_close(after_sampling, untouched, rtol=0, atol=0)


def test_training_noise_is_reproducible_with_torch_manual_seed() -> None:
    # prepare
    layer = make_layer().train()

    # execute
    torch.manual_seed(11)
    first = layer(X, LABELS)
    torch.manual_seed(11)
    second = layer(X, LABELS)
    torch.manual_seed(12)
    third = layer(X, LABELS)

    # assert
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(first, third)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_deterministic_block_is_reproducible_and_ignores_the_global_seed(training: bool) -> None:
    # prepare
    layer = make_layer().train(training)

    # execute
    torch.manual_seed(1)
    with scl.deterministic(5):
        first = [layer(X, LABELS), layer(X, LABELS)]
    torch.manual_seed(2)
    with scl.deterministic(5):
        second = [layer(X, LABELS), layer(X, LABELS)]
    with scl.deterministic(6):
        other_seed = layer(X, LABELS)

    # assert
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=0)
    torch.testing.assert_close(first[1], second[1], rtol=0, atol=0)
    assert not torch.equal(first[0], first[1])  # the stream advances inside a block
    assert not torch.equal(first[0], other_seed)


def test_leaving_the_deterministic_block_restores_entropy_noise() -> None:
    layer = make_layer().eval()
    with scl.deterministic(0):
        pass
    torch.manual_seed(0)
    first = layer(X, LABELS)
    torch.manual_seed(0)
    second = layer(X, LABELS)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_generator_argument_wins_over_everything(training: bool) -> None:
    # prepare
    layer = make_layer().train(training)

    # execute
    plain = layer(X, LABELS, generator=torch.Generator().manual_seed(3))
    with scl.deterministic(0):
        inside = layer(X, LABELS, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(99)
    reseeded = layer(X, LABELS, generator=torch.Generator().manual_seed(3))
    different = layer(X, LABELS, generator=torch.Generator().manual_seed(4))

    # assert
    torch.testing.assert_close(plain, inside, rtol=0, atol=0)
    torch.testing.assert_close(plain, reseeded, rtol=0, atol=0)
    assert not torch.equal(plain, different)


def test_generator_argument_does_not_advance_the_deterministic_stream() -> None:
    layer = make_layer().eval()
    with scl.deterministic(0):
        expected = layer(X, LABELS)
    with scl.deterministic(0):
        layer(X, LABELS, generator=torch.Generator().manual_seed(3))
        actual = layer(X, LABELS)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_obfuscator_follows_the_same_rules() -> None:
    # prepare
    obfuscator = scl.Obfuscator(make_layer(), scl.SoftSelection(C)).eval()

    # execute
    with scl.deterministic(0):
        a = obfuscator(X)
    with scl.deterministic(0):
        b = obfuscator(X)
    torch.manual_seed(0)
    c = obfuscator(X)
    torch.manual_seed(0)
    d = obfuscator(X)

    # assert
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(c, d)


def _child_sample(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    torch.manual_seed(0)
    layer = scl.StochasticConditionalLinear(4, 6, 3).eval()
    queue.put(layer(X, LABELS).tolist())


def test_a_forked_child_does_not_replay_the_parents_inference_noise() -> None:
    # prepare: the parent's cipher stream exists before the fork
    torch.manual_seed(0)
    layer = scl.StochasticConditionalLinear(4, 6, 3).eval()
    layer(X, LABELS)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    # execute
    child = context.Process(target=_child_sample, args=(queue,))
    child.start()
    child_sample = torch.tensor(queue.get(timeout=60))
    child.join(timeout=60)
    parent_sample = layer(X, LABELS)

    # assert
    assert child.exitcode == 0
    assert not torch.equal(child_sample, parent_sample)


@pytest.mark.parametrize("seed", [1.5, "0", True, None])
def test_deterministic_refuses_a_non_integer_seed(seed: object) -> None:
    with pytest.raises(scl.ConfigError, match="seed must be an int"):
        with scl.deterministic(seed):  # type: ignore[arg-type]
            pass


# -- large draws on several threads (scl.random.randn / rand) -----------------------------------
LARGE = 3 * scl.random.CHUNK_ELEMENTS + 12345  # four chunks, the last one partial


@pytest.mark.parametrize("draw", [scl.random.randn, scl.random.rand])
def test_large_draws_depend_on_the_generator_only_not_on_the_thread_count(draw) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = draw((LARGE,), generator=torch.Generator().manual_seed(7))
        torch.set_num_threads(2)
        threaded = draw((LARGE,), generator=torch.Generator().manual_seed(7))
        other_seed = draw((LARGE,), generator=torch.Generator().manual_seed(8))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(serial, threaded)
    assert not torch.equal(serial, other_seed)


def test_large_normal_draws_are_standard_normal_with_independent_chunks() -> None:
    z = scl.random.randn((LARGE,), generator=torch.Generator().manual_seed(3))
    assert abs(z.mean().item()) < 0.005  # standard error 1/sqrt(800k) ~ 0.0011
    assert abs(z.std().item() - 1.0) < 0.005
    assert abs((z.abs() > 1.96).float().mean().item() - 0.05) < 0.002  # the tails too
    n = scl.random.CHUNK_ELEMENTS
    chunks = z[: 3 * n].view(3, n)
    corr = torch.corrcoef(chunks)
    off_diagonal = corr[~torch.eye(3, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.01  # chunks are not copies or shifts of one stream


def test_large_uniform_draws_cover_the_unit_interval_evenly() -> None:
    u = scl.random.rand((LARGE,), generator=torch.Generator().manual_seed(4))
    assert u.min() >= 0 and u.max() < 1
    counts = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert (counts - 0.1).abs().max() < 0.003


def test_small_draws_are_torchs_own() -> None:
    expected = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(scl.random.randn((5, 7), generator=torch.Generator().manual_seed(1)), expected)


def test_large_training_draws_follow_torch_manual_seed() -> None:
    torch.manual_seed(11)
    a = scl.random.randn((LARGE,))
    torch.manual_seed(11)
    b = scl.random.randn((LARGE,))
    assert torch.equal(a, b)


def test_a_large_eval_sample_is_fresh_and_correctly_scaled() -> None:
    # a layer output above two chunks: eval noise comes from the cipher stream, fresh every draw
    layer = scl.StochasticConditionalConv2d(1, 8, 1, C, padding=0, distribution_options={"init_scale": 0.7}).eval()
    with torch.no_grad():
        layer.weight.zero_()
    x = torch.zeros(16, 1, 64, 64)  # 16*8*64*64 = 524288 elements = 2 chunks
    labels = torch.zeros(16, dtype=torch.long)
    with torch.no_grad():
        a, b = layer(x, labels), layer(x, labels)
    assert not torch.equal(a, b)
    assert abs(a.std().item() - 0.7) < 0.01


@pytest.mark.parametrize("draw", [scl.random.randn, scl.random.rand])
def test_large_draws_work_under_inference_mode_and_give_the_same_values(draw) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the pool threads must fill tensors made under inference mode
        with torch.inference_mode():
            inside = draw((LARGE,), generator=torch.Generator().manual_seed(9))
        outside = draw((LARGE,), generator=torch.Generator().manual_seed(9))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(inside, outside)


def test_a_large_layer_output_under_inference_mode() -> None:
    layer = scl.StochasticConditionalConv2d(3, 16, 3, C, padding=1).eval()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.inference_mode():
            h = layer(torch.rand(64, 3, 32, 32), torch.zeros(64, dtype=torch.long))
    finally:
        torch.set_num_threads(before)
    assert h.shape == (64, 16, 32, 32) and torch.isfinite(h).all()


# -- the cipher stream behind every eval-mode draw ---------------------------------------------
KEY = bytes(range(32))


@pytest.fixture
def keyed_process_stream(monkeypatch: pytest.MonkeyPatch) -> scl.random.CipherStream:
    """The process's cipher stream replaced by one with a known key, so a test can replay it."""
    import os

    stream = scl.random.CipherStream(KEY)
    monkeypatch.setattr(scl.cipher, "_STREAM", stream)
    monkeypatch.setattr(scl.cipher, "_STREAM_PID", os.getpid())
    return stream


@pytest.mark.parametrize("distribution", ["gaussian", "laplace", "binomial", "multinomial"])
def test_eval_sampling_of_every_distribution_draws_from_the_process_cipher_stream(
    distribution: str, keyed_process_stream: scl.random.CipherStream
) -> None:
    # prepare
    layer = scl.StochasticConditionalConv2d(2, 3, 3, C, padding=1, distribution=distribution).eval()
    x, labels = torch.rand(4, 2, 5, 5), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        dist = layer.distribution(x, labels)
        like = layer.noise.noise_like(dist)
        draw = scl.random.randn if layer.noise.noise_kind == "standard_normal" else scl.random.rand
        # the same key and counter, replayed: exactly the noise the layer must have used
        noise = draw(like.shape, generator=scl.random.CipherStream(KEY), dtype=like.dtype)
        expected = layer.noise.from_noise(dist, noise, training=False)

        # execute
        torch.manual_seed(0)
        h = layer(x, labels)

    # assert
    torch.testing.assert_close(h, expected)
    assert keyed_process_stream.counter > 0


def test_noise_generator_picks_the_cipher_stream_in_eval_only() -> None:
    cpu = torch.device("cpu")
    assert scl.random.noise_generator(cpu, training=False) is scl.random.stream()
    assert scl.random.noise_generator(cpu, training=True) is None  # torch's global generator
    with scl.deterministic(3):
        assert isinstance(scl.random.noise_generator(cpu, training=False), torch.Generator)
    own = scl.random.CipherStream(KEY)
    assert scl.random.noise_generator(cpu, training=False, generator=own) is own


def test_a_cipher_stream_passed_as_generator_reproduces_a_layer_sample() -> None:
    layer = make_layer().eval()
    a = layer(X, LABELS, generator=scl.random.CipherStream(KEY, counter=7))
    b = layer(X, LABELS, generator=scl.random.CipherStream(KEY, counter=7))
    c = layer(X, LABELS, generator=scl.random.CipherStream(KEY, counter=8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_a_generator_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(scl.ConfigError, match="generator must be a torch.Generator"):
        make_layer().eval()(X, LABELS, generator=42)  # type: ignore[arg-type]
    with pytest.raises(scl.ConfigError, match="generator must be a torch.Generator"):
        scl.random.randn((3,), generator="seed")  # type: ignore[arg-type]


@pytest.mark.parametrize("distribution", ["gaussian", "laplace"])
def test_eval_samples_from_the_cipher_stream_follow_the_layers_distribution(distribution: str) -> None:
    # prepare: an additive layer with loc 0.3 and scale 0.7 everywhere; KS against its law
    layer = scl.StochasticConditionalAdditive(
        (100_000,), 1, distribution=distribution, distribution_options={"init_scale": 0.7}
    ).eval()
    with torch.no_grad():
        layer.offsets[:, 0].fill_(0.3)
    law = torch.distributions.Normal(0.3, 0.7) if distribution == "gaussian" else torch.distributions.Laplace(0.3, 0.7)

    # execute (seeded: a cipher stream with a fixed key and counter)
    with torch.no_grad():
        h = layer(torch.zeros(1, 100_000), torch.zeros(1, dtype=torch.long), generator=scl.random.CipherStream(KEY))[0]

    # assert
    assert abs(h.mean().item() - 0.3) < 0.01 and abs(h.std().item() - law.stddev.item()) < 0.01
    ordered = h.double().sort().values
    cdf = law.cdf(ordered.float()).double()
    n = ordered.numel()
    ks = torch.maximum(torch.arange(1, n + 1) / n - cdf, cdf - torch.arange(n) / n).max().item()
    assert ks < 1.95 / n**0.5  # alpha = 0.001


def test_describe_says_where_the_noise_comes_from() -> None:
    d = scl.random.describe()
    assert d["source"] == "cipher stream" and d["algorithm"] == "AES-256-CTR"
    assert d["library"].startswith("cryptography ") and "OpenSSL" in d["library"]
    assert d["key"] == "os.urandom, 256 bits, per process, renewed after fork"
    assert d["deterministic"] is False and d["seed"] is None
    assert "AES-256-CTR" in scl.random.summary()
    with scl.deterministic(4):
        inside = scl.random.describe()
        assert "NOT private" in scl.random.summary()
    assert inside["deterministic"] is True and inside["seed"] == 4
    assert inside["source"] == "torch.Generator (scl.deterministic)"


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork (POSIX)")
def test_a_forked_child_gets_a_new_key() -> None:
    import os

    # prepare: the parent's stream exists (and has drawn) before the fork
    parent = scl.cipher.process_stream()
    scl.random.randn((10,), generator=parent)
    read, write = os.pipe()

    # execute: the child sends its describe() and its keystream at counter 0 of its own stream
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once, whatever happens
        try:
            child = scl.cipher.process_stream()
            block = bytearray(32)
            child.keystream_into(block, 0)
            report = {"describe": scl.random.describe(), "block": block.hex(), "same": child is parent}
            os.write(write, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        report = json.loads(pipe.read().decode())
    os.waitpid(pid, 0)
    ours = bytearray(32)
    parent.keystream_into(ours, 0)

    # assert: another stream, another key (the keystream at the same counter differs)
    assert report["same"] is False
    assert report["describe"]["process"] == pid and report["describe"]["blocks_drawn"] == 0
    assert report["block"] != ours.hex()


# -- a known-input demonstration: why eval noise must not come from a torch.Generator ----------


def _owner() -> tuple[scl.StochasticConditionalAdditive, torch.Tensor]:
    """An additive Gaussian layer (h = x + m_c + s_c * eps, eval mode) and a secret input x."""
    torch.manual_seed(0)
    layer = scl.StochasticConditionalAdditive((3, 8, 8), C, distribution_options={"init_scale": 0.5}).eval()
    with torch.no_grad():
        layer.offsets.normal_()  # trained offsets, known to a white-box receiver
    return layer, torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(123))


def _release(layer: scl.StochasticConditionalAdditive, secret: torch.Tensor, generator=None) -> torch.Tensor:
    with torch.no_grad():
        return layer(secret, LABELS_4, generator=generator)


LABELS_4 = torch.tensor([0, 1, 2, 1])


def _subtract(layer: scl.StochasticConditionalAdditive, h: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The receiver's estimate of x: the release minus the regenerated noise, minus the class's
    offset (white-box: the receiver knows the layer, and the class is revealed by design)."""
    with torch.no_grad():
        dist = layer.distribution(torch.zeros_like(h), LABELS_4)  # loc = m_c, scale = s_c
        return h - dist.scale * eps - dist.loc


def test_a_copied_torch_generator_state_lets_the_receiver_subtract_the_noise_exactly() -> None:
    # The old eval path: one torch.Generator (MT19937) per process. Its state follows from a few
    # thousand outputs, which a receiver who knows one input reads back from a release; the state
    # recovery itself is not implemented here: the copied state is taken as given.
    layer, secret = _owner()
    owner = torch.Generator()
    owner.seed()  # from OS entropy, as before
    copied_state = owner.get_state()  # what the receiver recovered

    h = _release(layer, secret, owner)
    attacker = torch.Generator()
    attacker.set_state(copied_state)
    eps = scl.random.randn(h.shape, generator=attacker)  # the owner's next noise, regenerated

    torch.testing.assert_close(_subtract(layer, h, eps), secret, rtol=0, atol=1e-5)  # x comes back


def test_the_cipher_stream_gives_no_such_handle() -> None:
    # Every torch generator state the receiver could copy, taken just before the owner's draw:
    # torch's global generator, a fresh generator's default seed, scl.deterministic's seed 0.
    layer, secret = _owner()
    states = {
        "global": torch.random.get_rng_state(),
        "fresh": torch.Generator().get_state(),
        "deterministic(0)": torch.Generator().manual_seed(0).get_state(),
    }
    h = _release(layer, secret)  # eval mode, no generator: the cipher stream
    with torch.no_grad():
        dist = layer.distribution(secret, LABELS_4)
        true_eps = ((h - dist.loc) / dist.scale).flatten()

    before = torch.random.get_rng_state()
    for name, state in states.items():
        for replay in (torch.Generator(), None):
            if replay is None:
                torch.random.set_rng_state(state)  # the receiver's own global generator
                guess = torch.randn(h.shape)
            else:
                replay.set_state(state)
                guess = scl.random.randn(h.shape, generator=replay)
            corr = torch.corrcoef(torch.stack([guess.flatten(), true_eps]))[0, 1].item()
            assert abs(corr) < 0.15, name  # 768 values: |corr| of independent noise ~ 0.036
            error = (_subtract(layer, h, guess) - secret).abs().mean().item()
            assert error > 0.3, name  # ~ E[s_c] * E|N(0, 2)| ~ 0.9, nowhere near the exact recovery above
    torch.random.set_rng_state(before)
