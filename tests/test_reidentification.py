"""Tests of scl.attacks.reidentification: exact ranks and floors, attacks with teeth, validation.

The attacks run on the embedded tinted digits at 8 x 8 (3 channels), split by class: 359
attacker images and a gallery of 108 test images (10 or 11 per class), budget "quick".

Tolerances (seeded; observed over attack seeds 0-3):
- identity obfuscator: the embedding matcher alone re-identifies >= 0.85 at top-1 (observed
  0.95-0.99), the decoder matcher (reconstruction = the image) 1.0; the attack's figure >= 0.95;
- an obfuscator that emits only its class's mean image plus noise: top-1 at most twice the
  label-only floor (floor 0.093; observed embedding 0.09-0.11, decoder 0.06) and top-5 within
  0.15 of its floor (floor 0.46; observed 0.44-0.47 and 0.21).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import scl.data
from scl.attacks.budget import AttackBudget, Attacker
from scl.attacks.reidentification import (
    EmbeddingMatcher,
    ReidentificationResult,
    nearest_neighbour_ranks,
    reidentification_attack,
    reidentification_floor,
    top_k,
)
from scl.errors import ConfigError, DataError, LabelError, ShapeError
from scl.metrics import REID_CLEAN_TOP1, REID_CLEAN_TOP5, REID_FLOOR_TOP1, REID_FLOOR_TOP5, REID_TOP1, REID_TOP5

NUM_CLASSES = 10
KEYS = {
    REID_TOP1, REID_TOP5, "reid_embedding_top1", "reid_embedding_top5",
    REID_FLOOR_TOP1, REID_FLOOR_TOP5, REID_CLEAN_TOP1, REID_CLEAN_TOP5,
}


@pytest.fixture(scope="module")
def splits() -> dict[str, Any]:
    digits = scl.data.load_digits(size=8, attribute=True, seed=0)
    parts = scl.data.split(digits, fractions={"attacker": 0.2, "test": 0.06, "rest": 0.74}, seed=0)
    return {"attacker": parts["attacker"], "test": parts["test"]}


@pytest.fixture(scope="module")
def small(splits: dict[str, Any]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A smaller problem for the tests that only check plumbing."""
    a, t = splits["attacker"], splits["test"]
    return {"attacker": (a.x[:120], a.y[:120]), "test": (t.x[:40], t.y[:40])}


def identity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x


def noisy(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x + 0.3 * torch.randn_like(x)


# -- floor, ranks, top-k ------------------------------------------------------------------------


def test_floor_on_hand_made_labels() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1, 1])  # class sizes 2 and 4
    assert reidentification_floor(labels, 1) == pytest.approx((2 * 1 / 2 + 4 * 1 / 4) / 6)  # 1/3
    assert reidentification_floor(labels, 3) == pytest.approx((2 * 1.0 + 4 * 3 / 4) / 6)  # 5/6
    assert reidentification_floor(labels, 5) == pytest.approx(1.0)
    # A class index with no member does not matter; one class of n gives k / n.
    assert reidentification_floor(torch.tensor([3, 3, 3, 3]), 1) == pytest.approx(0.25)


def test_ranks_exact_on_hand_made_example() -> None:
    gallery = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    queries = torch.tensor([[0.9], [1.2], [2.0], [10.0]])
    # q0: true at 0.9, gallery 1 nearer -> 1; q1: nearest -> 0; q2: true at 1.0 ties gallery 1
    # at 1.0 -> 1 (against the attacker); q3: nearest -> 0.
    expected = torch.tensor([1, 0, 1, 0])
    ranks = nearest_neighbour_ranks(queries, gallery)
    assert ranks.dtype == torch.int64
    assert torch.equal(ranks, expected)
    assert torch.equal(nearest_neighbour_ranks(queries, gallery, batch_size=1), expected)
    # A subset of the queries: query i still matches gallery i.
    assert torch.equal(nearest_neighbour_ranks(queries[:2], gallery), expected[:2])
    # Trailing dimensions are flattened.
    assert torch.equal(nearest_neighbour_ranks(queries.view(4, 1, 1, 1), gallery.view(4, 1, 1, 1)), expected)
    assert top_k(ranks, 1) == 0.5
    assert top_k(ranks, 2) == 1.0


def test_ties_count_against_the_attacker() -> None:
    # A query equidistant from every gallery item (the origin vs one-hot vectors) gets the
    # worst rank, and so does every query against a gallery of identical items.
    gallery = torch.eye(6)
    assert torch.equal(nearest_neighbour_ranks(torch.zeros(6, 6), gallery), torch.full((6,), 5))
    same = torch.ones(5, 3, 4, 4) * 0.5
    assert torch.equal(nearest_neighbour_ranks(same, same), torch.full((5,), 4))
    # The clean ceiling on distinct images is perfect, even in float32 at scale.
    x = torch.rand(300, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(nearest_neighbour_ranks(x, x), torch.zeros(300, dtype=torch.int64))


def test_top_k() -> None:
    ranks = torch.tensor([0, 1, 4, 5])
    assert top_k(ranks, 1) == 0.25
    assert top_k(ranks, 5) == 0.75
    assert top_k(ranks, 100) == 1.0


# -- the matcher ------------------------------------------------------------------------------


def test_matcher_shapes() -> None:
    matcher = EmbeddingMatcher(5, 3, width=8, dim=16).eval()
    h, x = torch.randn(4, 5, 6, 7), torch.rand(4, 3, 8, 8)
    zr, zc = matcher.release(h), matcher.clean(x)
    assert zr.shape == (4, 16) and zc.shape == (4, 16)
    assert torch.allclose(zr.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(zc.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.equal(matcher(h), zr)
    assert matcher.loss(zr, x).dim() == 0
    vector = EmbeddingMatcher(12, 3, release_size=1, width=8, dim=16).eval()
    assert vector.release(torch.randn(4, 12, 1, 1)).shape == (4, 16)
    assert "release_size=(1, 1)" in repr(vector)
    with pytest.raises(ShapeError, match=r"expects Tensor\[N, 5, H, W\], but got \(4, 3, 8, 8\)"):
        matcher.release(x)
    with pytest.raises(ConfigError, match="temperature must be in"):
        EmbeddingMatcher(5, 3, temperature=2.0)


# -- the attack -------------------------------------------------------------------------------


def test_identity_is_reidentified(splits: dict[str, Any]) -> None:
    test = splits["test"]
    result = reidentification_attack(identity, splits["attacker"], test, num_classes=NUM_CLASSES,
                                     budget="quick", reconstructions=test.x, seed=0)
    assert isinstance(result, ReidentificationResult)
    metrics = result.metrics
    assert set(metrics) == KEYS | {"reid_decoder_top1", "reid_decoder_top5"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics[REID_TOP1] >= 0.95
    assert metrics["reid_decoder_top1"] == 1.0
    assert metrics["reid_embedding_top1"] >= 0.85
    assert metrics["reid_embedding_top5"] >= metrics["reid_embedding_top1"]
    assert metrics[REID_CLEAN_TOP1] == 1.0 and metrics[REID_CLEAN_TOP5] == 1.0
    assert metrics[REID_FLOOR_TOP1] == pytest.approx(reidentification_floor(test.y, 1))
    assert metrics[REID_FLOOR_TOP1] < 0.1
    assert isinstance(result.matcher, EmbeddingMatcher) and not result.matcher.training
    assert result.attacker == "plain matcher, width 32"


def test_class_mean_is_not_reidentified_beyond_the_floor(splits: dict[str, Any]) -> None:
    attacker, test = splits["attacker"], splits["test"]
    means = torch.stack([attacker.x[attacker.y == c].mean(0) for c in range(NUM_CLASSES)])

    def class_mean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return means.to(x.device)[y] + 0.1 * torch.randn_like(x)

    # What a perfect decoder of this release returns: the class mean, slightly noisy.
    g = torch.Generator().manual_seed(1)
    decoded = (means[test.y] + 0.02 * torch.randn(test.x.shape, generator=g)).clamp(0, 1)
    metrics = reidentification_attack(class_mean, attacker, test, num_classes=NUM_CLASSES,
                                      budget="quick", reconstructions=decoded, seed=0).metrics
    floor1, floor5 = metrics[REID_FLOOR_TOP1], metrics[REID_FLOOR_TOP5]
    for matcher in ("embedding", "decoder"):
        assert metrics[f"reid_{matcher}_top1"] <= 2 * floor1, matcher
        assert metrics[f"reid_{matcher}_top5"] <= floor5 + 0.15, matcher
    assert metrics[REID_TOP1] <= 2 * floor1
    assert metrics[REID_CLEAN_TOP1] == 1.0


def test_same_seed_same_metrics(small: dict[str, Any]) -> None:
    args: dict[str, Any] = dict(num_classes=NUM_CLASSES, budget="quick", seed=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = reidentification_attack(noisy, small["attacker"], small["test"], **args)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG stream is untouched
    second = reidentification_attack(noisy, small["attacker"], small["test"], **args)
    assert first.metrics == second.metrics
    assert set(first.metrics) == KEYS  # no decoder keys without reconstructions


def test_more_attackers_never_score_lower(small: dict[str, Any]) -> None:
    weak = Attacker("plain", 8, 2, 2)
    one = AttackBudget("one", (weak,), (weak,), attribute_epochs=2)
    two = AttackBudget("two", (weak,), (weak, Attacker("plain", 16, 3, 2)), attribute_epochs=2)
    args: dict[str, Any] = dict(num_classes=NUM_CLASSES, seed=0)
    a = reidentification_attack(noisy, small["attacker"], small["test"], budget=one, **args).metrics
    b = reidentification_attack(noisy, small["attacker"], small["test"], budget=two, **args).metrics
    assert b["reid_embedding_top1"] >= a["reid_embedding_top1"]
    assert b["reid_embedding_top5"] >= a["reid_embedding_top5"]


def test_vector_release(small: dict[str, Any]) -> None:
    """A release that is not an image (Tensor[N, F]) is read as Tensor[N, F, 1, 1]."""
    weak = AttackBudget("weak", (Attacker("plain", 8, 1, 1),), (Attacker("plain", 8, 1, 1),),
                        attribute_epochs=1)
    metrics = reidentification_attack(lambda x, y: x.flatten(1), small["attacker"], small["test"],
                                      num_classes=NUM_CLASSES, budget=weak).metrics
    assert 0.0 <= metrics[REID_TOP1] <= 1.0


# -- validation ------------------------------------------------------------------------------


def test_bad_input(small: dict[str, Any]) -> None:
    xa, ya = small["attacker"]
    xt, yt = small["test"]
    args: dict[str, Any] = dict(num_classes=NUM_CLASSES, budget="quick")
    with pytest.raises(ConfigError, match=r"attacks.budget must be one of .*, but got 'huge'"):
        reidentification_attack(identity, (xa, ya), (xt, yt), num_classes=NUM_CLASSES, budget="huge")
    with pytest.raises(ShapeError, match=r"test.x must be a Tensor\[N, C, H, W\] \(4 dimensions\)"):
        reidentification_attack(identity, (xa, ya), (xt[:, 0], yt), **args)
    with pytest.raises(ShapeError, match=r"attacker and test images must have the same \[C, H, W\]"):
        reidentification_attack(identity, (xa, ya), (xt[:, :1], yt), **args)
    with pytest.raises(LabelError, match=r"attacker.y must be in \[0, 10\), but got 10 at index 0"):
        reidentification_attack(identity, (xa, torch.full_like(ya, 10)), (xt, yt), **args)
    with pytest.raises(LabelError, match="test.y must have one entry per sample"):
        reidentification_attack(identity, (xa, ya), (xt, yt[:-1]), **args)
    with pytest.raises(ShapeError, match=r"reconstructions must be Tensor\[N_test, C, H, W\]"):
        reidentification_attack(identity, (xa, ya), (xt, yt), reconstructions=xt[:-1], **args)
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 2, but got 1"):
        reidentification_attack(identity, (xa, ya), (xt, yt), batch_size=1, **args)
    with pytest.raises(ShapeError, match=r"must return a Tensor\[N, \.\.\.\] with N = 2"):
        reidentification_attack(lambda x, y: x[:1], (xa, ya), (xt, yt), **args)
    with pytest.raises(DataError, match=r"test must be a tuple \(x, y\[, attribute\]\)"):
        reidentification_attack(identity, (xa, ya), xt, **args)


def test_bad_metric_input() -> None:
    with pytest.raises(ShapeError, match="queries must not outnumber the gallery"):
        nearest_neighbour_ranks(torch.zeros(3, 2), torch.zeros(2, 2))
    with pytest.raises(ShapeError, match="same number of features, but got"):
        nearest_neighbour_ranks(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(DataError, match="queries must be finite"):
        nearest_neighbour_ranks(torch.tensor([[float("nan")]]), torch.zeros(1, 1))
    with pytest.raises(LabelError, match="labels must be integer class indices, but got dtype"):
        reidentification_floor(torch.tensor([0.0, 1.0]), 1)
    with pytest.raises(LabelError, match="labels must be non-negative class indices, but got -1 at index 1"):
        reidentification_floor(torch.tensor([0, -1]), 1)
    with pytest.raises(ConfigError, match="k must be an integer >= 1, but got 0"):
        reidentification_floor(torch.tensor([0, 1]), 0)
    with pytest.raises(ShapeError, match="ranks must be integer ranks"):
        top_k(torch.tensor([0.0, 1.0]), 1)
