"""The names of a run's measures (scl.metrics): defined once, and pinned here as the design
publishes them, since users' scripts read them from metrics.json."""

from __future__ import annotations

import pytest

from scl import figures, metrics, report
from scl.pipelines import bench_privacy, classification


def test_the_published_names_are_the_ones_scl_writes():
    # ../DESIGN.md's metrics.json and its releases, written out: a rename must fail here
    assert metrics.release_names() == ("soft", "gated", "hard", "gaussian")
    assert metrics.leak_keys() == ("decoder_ssim", "decoder_psnr", "reid_top1", "reid_top5", "attribute_accuracy",
                                   "dcor")
    assert metrics.measure("decoder_ssim").floor == ("decoder_ssim_label_floor",)
    assert metrics.measure("attribute_accuracy").floor == ("attribute_chance", "attribute_label_floor")
    assert {m.key for m in metrics.MEASURES} >= {"whitebox_ssim", "decoder_ssim_avg8", "decoder_ssim_luma"}


def test_every_reader_takes_the_names_from_one_place():
    assert classification.RELEASES == metrics.release_names()
    assert classification.LEAK_KEYS == bench_privacy.FIGURES == metrics.leak_keys()
    assert [key for _, key, *_ in report.RELEASE_ROWS] == [m.key for m in metrics.MEASURES if m.per_release]
    assert [key for _, key, _ in report.FRONTIER_COLUMNS][4:] == list(metrics.leak_keys())
    assert figures.BUDGET_STAGES is report._BUDGET_RELEASES is metrics.STAGE_RELEASES


def test_a_measure_scl_does_not_have_is_named_with_those_it_has():
    with pytest.raises(KeyError, match=r"no privacy measure 'ssim'; scl has \['attribute_accuracy'"):
        metrics.measure("ssim")


def test_every_measure_is_shown_in_a_known_format_and_has_a_floor():
    for m in metrics.MEASURES:
        assert m.format in ("float", "pct", "db") and m.floor, m.key
        assert m.label and m.name and m.column, m.key


def test_the_flat_table_reads_every_measure_and_what_detection_writes():
    # detection's privacy block (and runs of earlier versions) is flat: its rows come from the same
    # measures, plus the hard release's decoder figures on detection's other releases
    from scl.pipelines import detection

    flat = {key: (floor, ceiling) for _, key, floor, ceiling, *_ in report._PRIVACY_ROWS}
    assert [m.key for m in metrics.MEASURES] == list(flat)[:len(metrics.MEASURES)]
    for release, _, _ in metrics.DETECTION_RELEASES:
        for key in detection.DECODER_KEYS:
            assert flat[metrics.release_key(key, release)] == (metrics.measure(key).floor, metrics.measure(key).ceiling)
    assert metrics.release_key("decoder_ssim", "soft") == "decoder_ssim_soft"
    assert metrics.floor_of("decoder_ssim") == "decoder_ssim_label_floor"
    assert metrics.ceiling_of("decoder_ssim") == "decoder_ssim_clean"
    assert metrics.measure("decoder_psnr_avg8").per_release is False  # the flat table's only
