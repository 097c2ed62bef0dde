"""The benchmark machinery (`make bench`, `scl bench`) on a tiny problem: rows, ratios, the floor."""

from __future__ import annotations

import pytest

from scl import bench


def test_layer_cases_run_and_every_target_row_has_its_baselines() -> None:
    cases = bench.layer_cases(batch=2, size=6)
    rows = bench.ratios(cases, bench.measure(cases, repeats=1, warmup=0))
    by_name = {r["case"]: r for r in rows}
    assert {bench.TORCH_RANDN_ROW, bench.SCL_RANDN_ROW, bench.SOFTPLUS_ROW} <= set(by_name)
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
