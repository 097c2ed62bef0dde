"""Where the noise comes from: OS entropy at inference, reproducible only when asked."""

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
    print(json.dumps({"plain": plain.tolist(), "seeded": seeded.tolist()}))
    """
)


@pytest.fixture(scope="module")
def two_processes() -> list[dict[str, list[list[float]]]]:
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
    two_processes: list[dict[str, list[list[float]]]],
) -> None:
    first, second = two_processes
    assert first["plain"] != second["plain"]


def test_deterministic_block_gives_the_same_noise_in_every_process(
    two_processes: list[dict[str, list[list[float]]]],
) -> None:
    first, second = two_processes
    assert first["seeded"] == second["seeded"]


def test_deterministic_block_matches_this_process_too(
    two_processes: list[dict[str, list[list[float]]]],
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
    # prepare: the parent's entropy generator exists before the fork
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
    # a layer output above two chunks takes the threaded path; eval noise still comes from entropy
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
