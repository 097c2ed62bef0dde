"""`scl bench privacy`: the budgets' parsing, the verdict, and a tiny sweep as a user runs it (a
subprocess with its progress display on) that writes every file the issue promises."""

from __future__ import annotations

import json
import math

import pytest

from scl.errors import ConfigError
from scl.metrics import (
    ATTRIBUTE_ACCURACY,
    DCOR,
    DECODER_PSNR,
    DECODER_SSIM,
    REID_FLOOR_TOP1,
    REID_TOP1,
    REID_TOP5,
    floor_of,
)
from scl.pipelines.bench_privacy import (
    BASELINE_INIT_FRACTION,
    METHODS,
    baseline_lr,
    build_config,
    markdown_table,
    parse_budgets,
    verdicts,
)
from scl.report import verdict_lines
from tests.test_commands import assert_run_folder, run_command

# the smallest settings that still train and attack every method: one budget
TINY_BENCH = [
    "--quick", "--budgets", "2", "--set", "network.epochs=2", "--set", "stage1.epochs=2",
    "--set", "stage2.epochs=1", "--set", "attacks.max_epochs=1",
]
ENTRY_KEYS = {"budget", "accuracy", DECODER_SSIM, floor_of(DECODER_SSIM), REID_TOP1, "reid_floor",
              ATTRIBUTE_ACCURACY, DCOR, DECODER_PSNR, REID_TOP5, "feasible", "validation_loss"}


def test_budgets_parse_sorted_and_unique():
    assert parse_budgets("2,0.5, 1,2") == [0.5, 1.0, 2.0]
    assert parse_budgets(None) == [0.5, 1.0, 2.0, 5.0]


@pytest.mark.parametrize(("text", "message"), [
    ("1,two", "separated by commas, e.g. 0.5,1,2,5, but got 'two'"),
    ("-1", "in [0, 100), but got '-1'"),
    ("100", "in [0, 100)"),
    ("nan", "in [0, 100)"),
    ([], "at least one budget"),
])
def test_bad_budgets_are_errors_for_people(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_budgets(text)


def test_additive_baselines_train_at_scls_rate_scaled_as_their_start():
    config = build_config()
    for method in ("shredder", "cloak"):
        assert baseline_lr(method, config) == pytest.approx(BASELINE_INIT_FRACTION * config["stage1"]["lr"])
    config = config.updated({"stage1": {"lr": 0.1}})  # follows the stage's rate, e.g. from --set stage1.lr=0.1
    assert baseline_lr("shredder", config) == pytest.approx(BASELINE_INIT_FRACTION * 0.1)
    # NoPeek's parameters are a network's weights: its own rate, whatever scl's is
    assert baseline_lr("nopeek", config) == baseline_lr("nopeek", build_config())


def _entry(budget, reid, ssim, feasible=True, accuracy=0.95):
    return {"budget": budget, "accuracy": accuracy, "feasible": feasible, REID_TOP1: reid, DECODER_SSIM: ssim}


def _methods(**changes):
    methods = {
        "identity": [_entry(0.0, 1.0, 0.95)],
        "gaussian": [_entry(1.0, 0.9, 0.9)],
        "cloak": [_entry(1.0, 0.5, 0.5)],
        "scl-soft": [_entry(1.0, 0.01, 0.1, feasible=False, accuracy=0.1)],
        "scl-gated": [_entry(1.0, 0.03, 0.2)],
    }
    methods.update(changes)
    return methods


def test_verdict_scl_wins_only_within_the_budget_and_clearly_over_cloak():
    (row,) = verdicts(_methods(), [1.0], test_images=300)
    # the soft release leaks less but is not within the budget: the gated one is compared
    assert row["release"] == "scl-gated" and row["met"] and row["target"]
    assert row["best_other_reid"] == {"method": "cloak", "value": 0.5}
    assert row["beats_cloak_reid"] and row["cloak_margin"] == pytest.approx(
        2 * math.sqrt((0.03 * 0.97 + 0.5 * 0.5) / 300))
    (text, met), = verdict_lines({"verdict": [row]})
    assert met and "lowest re-identification (next best cloak 50.0%)" in text and "beats cloak" in text


def test_verdict_says_plainly_when_scl_does_not_win():
    close = _methods(cloak=[_entry(1.0, 0.04, 0.15)])  # cloak leaks as little: no clear win, SSIM lower
    (row,) = verdicts(close, [1.0], test_images=300)
    assert not row["met"] and not row["beats_cloak_reid"] and not row["lowest_ssim"] and row["lowest_reid"]
    (text, met), = verdict_lines({"verdict": [row]})
    assert not met and "NOT the lowest SSIM (next best cloak 0.150)" in text and "does NOT clearly beat" in text
    nothing = _methods(**{"scl-gated": [_entry(1.0, 0.03, 0.2, feasible=False)]})
    (row,) = verdicts(nothing, [1.0], test_images=300)
    assert row["release"] is None and not row["met"] and "no label-free scl release" in row["reason"]
    (row,) = verdicts(_methods(), [5.0], test_images=300)  # no entry at that budget
    assert not row["met"] and not row["target"]


def test_verdict_counts_a_baseline_only_within_its_budget():
    out_of_budget = _methods(cloak=[_entry(1.0, 0.0, 0.0, feasible=False, accuracy=0.1)])
    (row,) = verdicts(out_of_budget, [1.0], test_images=300)
    assert row["met"] and row["beats_cloak_reid"] is None  # a useless cloak does not count
    assert "cloak (scl without classes) was not within the budget" in verdict_lines({"verdict": [row]})[0][0]


def test_on_a_tie_the_next_best_named_is_a_baseline_not_the_clean_image():
    tie = _methods(gaussian=[_entry(1.0, 1.0, 0.96)], cloak=[_entry(1.0, 1.0, 0.97)])
    (row,) = verdicts(tie, [1.0], test_images=300)
    assert row["best_other_reid"] == {"method": "gaussian", "value": 1.0}
    assert row["best_other_ssim"] == {"method": "identity", "value": 0.95}  # no tie: the identity is lowest


def test_the_table_and_the_report_show_the_same_frontier(tmp_path):
    from scl.io import write_json
    from scl.report import FRONTIER_COLUMNS, write_report

    metrics = {"pipeline": "bench_privacy", "accuracy_clean": 0.96, "methods": _methods(),
               "verdict": verdicts(_methods(), [1.0], test_images=300), "references": {REID_FLOOR_TOP1: 0.028}}
    table = markdown_table(metrics)
    write_json(tmp_path / "metrics.json", metrics)
    write_json(tmp_path / "config.json", {})
    report = write_report(tmp_path).read_text()
    for title, _, _ in FRONTIER_COLUMNS:
        assert f" {title} |" in table and f">{title}</th>" in report
    assert "| scl-gated | 1 | 95.0% | yes | — | 0.200 |" in table
    assert "re-identification top-1 2.8%" in table and "re-identification top-1 2.8%" in report


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    out = root / "frontier"
    output = run_command(["bench", "privacy", *TINY_BENCH, "--out", str(out)], "pipe", root)
    return out, output


def test_tiny_sweep_writes_every_file(tiny_bench):
    out, output = tiny_bench
    metrics = assert_run_folder(out, {"network.safetensors"}, {"frontier_ssim.png", "frontier_reid.png"})
    assert (out / "table.md").is_file()
    assert metrics["pipeline"] == "bench_privacy" and 0 < metrics["accuracy_clean"] <= 1
    assert list(metrics["methods"]) == list(METHODS)
    for name, entries in metrics["methods"].items():
        assert len(entries) == 1, name  # one budget; the identity once
        assert ENTRY_KEYS <= set(entries[0]), (name, ENTRY_KEYS - set(entries[0]))
        assert 0 <= entries[0][REID_TOP1] <= 1 and -1 <= entries[0][DECODER_SSIM] <= 1
    assert metrics["methods"]["identity"][0]["budget"] == 0.0
    assert metrics["references"][REID_FLOOR_TOP1] == metrics["methods"]["identity"][0]["reid_floor"]
    assert metrics["methods"]["gaussian"][0]["scale"] > 0
    assert all(isinstance(metrics["methods"][m][0]["epoch"], int) for m in ("shredder", "cloak", "nopeek", "scl-gated"))
    assert [row["budget"] for row in metrics["verdict"]] == [2.0]
    assert json.loads((out / "config.json").read_text())["bench"]["budgets"] == [2.0]
    table = (out / "table.md").read_text()
    assert table == markdown_table(metrics)
    assert all(f"| {name} |" in table for name in METHODS) and "Label-only floors" in table
    report = (out / "report.html").read_text()
    assert "Privacy–utility frontier" in report and "frontier_reid.png" in report and "scl-gated" in report
    assert "<h1>scl bench privacy" in report and "No accuracy was recorded" not in report
    assert "run folder:" in output and ("met:" in table or "NOT met:" in table)
