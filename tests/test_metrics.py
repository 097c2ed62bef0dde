"""The names of a run's measures (scl.metrics): defined once, and pinned here as the design
publishes them, since users' scripts read them from metrics.json."""

from __future__ import annotations

import ast
from pathlib import Path

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


def test_the_key_constants_are_the_published_keys():
    # what the attacks write, pinned as users' scripts read it
    assert (metrics.REID_TOP1, metrics.REID_FLOOR_TOP1, metrics.REID_CLEAN_TOP5) == (
        "reid_top1", "reid_floor_top1", "reid_clean_top5")
    assert metrics.floor_of(metrics.DECODER_SSIM) == "decoder_ssim_label_floor"
    assert metrics.DECODER_SSIM_AVG8 == "decoder_ssim_avg8" == metrics.averaged("decoder_ssim", 8)
    assert (metrics.ATTRIBUTE_ACCURACY, metrics.ATTRIBUTE_CHANCE, metrics.ATTRIBUTE_LABEL_FLOOR,
            metrics.ATTRIBUTE_CLEAN) == ("attribute_accuracy", "attribute_chance", "attribute_label_floor",
                                         "attribute_clean")
    assert (metrics.WHITEBOX_SSIM, metrics.DCOR, metrics.DECODER_SSIM_LUMA) == ("whitebox_ssim", "dcor",
                                                                                "decoder_ssim_luma")


PACKAGE = Path(metrics.__file__).parent


def _published_keys() -> set[str]:
    """Every key scl.metrics names: the constants, and each measure's own, floor and ceiling keys.
    ``dcor`` is also an objective's name (``stage1.privacy=dcor``), which modules do spell."""
    from scl.pipelines.stages import OBJECTIVES

    keys = {value for name, value in vars(metrics).items()
            if name.isupper() and isinstance(value, str) and not name.endswith("_SUFFIX")}
    for m in metrics.MEASURES:
        keys |= {m.key, *m.floor, *m.ceiling}
    return keys - set(OBJECTIVES)


def spelled_keys(source: str, keys: set[str]) -> list[str]:
    """The string literals of ``source`` that are one of ``keys``, by line."""
    return [f"line {node.lineno}: {node.value!r}" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in keys]


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "metrics.py"),
                         ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_module_spells_a_metric_key_itself(path: Path) -> None:
    found = spelled_keys(path.read_text(encoding="utf-8"), _published_keys())
    assert found == [], f"{path.name} spells metric keys ({found}); use the constants of scl.metrics"


def test_the_spelling_scan_can_fail() -> None:
    keys = _published_keys()
    assert "decoder_ssim_label_floor" in keys and "reid_floor_top5" in keys and "dcor" not in keys
    source = 'block["reid_top1"] = 1\nfloor = refs.get("decoder_ssim_label_floor")\nname = "reid"\n'
    assert spelled_keys(source, keys) == ["line 1: 'reid_top1'", "line 2: 'decoder_ssim_label_floor'"]
