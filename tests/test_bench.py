"""The benchmark machinery (`make bench`, `scl bench`) on a tiny problem: rows, ratios, the floor."""

from __future__ import annotations

import pytest

from scl import bench


def test_layer_cases_run_and_every_target_row_has_its_baselines() -> None:
    cases = bench.layer_cases(batch=2, size=6)
    rows = bench.ratios(cases, bench.measure(cases, repeats=1, warmup=0))
    by_name = {r["case"]: r for r in rows}
    assert {bench.TORCH_RANDN_ROW, bench.SCL_RANDN_ROW, bench.SECURE_RANDN_ROW, bench.SOFTPLUS_ROW} <= set(by_name)
    targets = [r for r in rows if r["must"] is not None]
    assert len(targets) == 5  # hard at C=10 and 100, soft at C=10 and 100, gated at C=10
    for row in targets:
        assert row["ratio"] > 0 and row["stochastic"] > 0
        assert row["met"] == (row["ratio"] <= row["must"])
    text = bench.table(rows)
    assert text.count("\n") == len(rows) + 1
    assert bench.noise_floor(rows) > 1.0


def test_noise_floor_adds_the_cheaper_draw_and_the_softplus_to_the_conv() -> None:
    rows = [
        {"case": bench.TORCH_RANDN_ROW, "ratio": 2.5},
        {"case": bench.SCL_RANDN_ROW, "ratio": 1.5},
        {"case": bench.SOFTPLUS_ROW, "ratio": 1.0},
    ]
    assert bench.noise_floor(rows) == pytest.approx(3.5)
    assert bench.noise_floor(rows[:1]) is None  # no softplus row: no floor


def test_noise_table_has_every_comparison_of_the_noise_source() -> None:
    cases = bench.layer_cases(batch=2, size=6)
    names = {c.name for c in cases}
    for _, case, baseline, _, _ in bench.noise_comparisons():
        assert case in names and baseline in names  # each ratio compares two timed rows
    times = bench.measure(cases, repeats=1, warmup=0)
    text = bench.noise_table(times)
    assert text.count("\n") == len(bench.noise_comparisons()) + 1
    assert "secure Gaussian draw of the output (1M float32) / torch.randn" in text and "<= 0.7x" in text


def test_noise_table_marks_a_missed_target() -> None:
    fast, slow = [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]
    times = {name: fast for _, case, baseline, _, _ in bench.noise_comparisons() for name in (case, baseline)}
    times[bench.SECURE_RANDN_ROW] = slow  # twice as slow as torch.randn: must (<= 1.0x) missed
    row = next(line for line in bench.noise_table(times).splitlines() if "torch.randn" in line)
    assert "| 2.00x |" in row and "NO" in row
