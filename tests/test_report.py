"""Figures (scl.figures) and the HTML report (scl.report)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from scl import cipher, figures
from scl.errors import SCLError, ShapeError
from scl.io import write_json
from scl.metrics import (
    ATTRIBUTE_ACCURACY,
    ATTRIBUTE_CHANCE,
    ATTRIBUTE_CLEAN,
    DCOR,
    DECODER_PSNR,
    DECODER_PSNR_AVG8,
    DECODER_SSIM,
    DECODER_SSIM_AVG8,
    WHITEBOX_SSIM,
    ceiling_of,
    floor_of,
    release_key,
)
from scl.report import pipeline_of, write_report


def _assert_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > 0 and height > 0


def _no_temporary_files(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.fixture(scope="module")
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --------------------------------------------------------------------------------------------
# figures


def test_image_grid_handles_grey_rgb_and_activations(tmp_path: Path, gen: torch.Generator) -> None:
    rows = {
        "clean": torch.rand(10, 1, 12, 12, generator=gen),
        "hard": torch.randn(10, 1, 12, 12, generator=gen),  # out of range: clipped
        "rgb": torch.rand(3, 3, 12, 12, generator=gen),  # fewer images than columns
        "activation": torch.randn(4, 16, 6, 6, generator=gen),  # k channels: mean, normalised
        "plain": torch.rand(2, 12, 12, generator=gen),  # Tensor[N, H, W]
    }

    out = figures.image_grid(rows, tmp_path / "figures" / "samples.png", max_images=8, title="t")

    assert out == tmp_path / "figures" / "samples.png"
    _assert_png(out)
    _no_temporary_files(tmp_path)


def test_image_grid_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(SCLError, match="at least one row"):
        figures.image_grid({}, tmp_path / "a.png")
    with pytest.raises(ShapeError, match=r"Tensor\[N, C, H, W\]"):
        figures.image_grid({"x": torch.rand(4, 4)}, tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


def test_training_curves(tmp_path: Path) -> None:
    history = {
        "base": {"loss": [2.0, 1.0, 0.5], "accuracy": [0.5, 0.8, 0.9]},
        "stage1": {"loss": [1.0, 0.7], "kl": [0.1, 0.2]},
        "stage2": {"accuracy": [0.9]},
        "empty": {"loss": []},
    }

    _assert_png(figures.training_curves(history, tmp_path / "curves.png"))


@pytest.mark.parametrize(
    "shape",
    [(4, 1, 6, 6), (4, 3, 6, 6), (4, 6, 6), (4, 8), (4, 8, 1, 1), (4,), (4, 1), (4, 1, 1, 1)],
)
def test_selection_maps_shapes(tmp_path: Path, gen: torch.Generator, shape: tuple) -> None:
    values = torch.rand(shape, generator=gen)

    out = figures.selection_maps(values, tmp_path / "maps.png", class_names=list("abcd"))

    _assert_png(out)


def test_selection_maps_checks_class_names(tmp_path: Path) -> None:
    with pytest.raises(SCLError, match="one name per class"):
        figures.selection_maps(torch.rand(3, 4, 4), tmp_path / "m.png", class_names=["a"])


def test_tradeoff_curve_and_share(tmp_path: Path) -> None:
    points = [
        {
            "lam": lam,
            "accuracy": 0.95 - 0.1 * lam,
            DECODER_SSIM: 0.6 - 0.4 * lam,
            floor_of(DECODER_SSIM): 0.18,
            "clean_accuracy": 0.97,
        }
        for lam in (0.0, 0.5, 1.0)
    ]
    points.append({"lam": 2.0, "accuracy": None, DECODER_SSIM: 0.1})  # skipped, no crash

    _assert_png(figures.tradeoff_curve(points, tmp_path / "tradeoff.png"))
    _assert_png(figures.tradeoff_curve(points[:1], tmp_path / "one.png"))
    with pytest.raises(SCLError, match="lacks decoder_ssim"):
        figures.tradeoff_curve([{"lam": 0.0, "accuracy": 0.9}], tmp_path / "bad.png")

    series = {"scl": [(0.0, 0.9), (1.0, 0.97), (0.5, 0.95)], "plain": [(0.0, 0.1), (1.0, 0.97)]}
    _assert_png(figures.accuracy_vs_share(series, tmp_path / "share.png"))


def test_boxes_overlay(tmp_path: Path, gen: torch.Generator) -> None:
    images = torch.rand(2, 3, 32, 32, generator=gen)
    boxes = [torch.tensor([[2.0, 2.0, 20.0, 20.0], [10.0, 5.0, 30.0, 31.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([0, 1]), torch.zeros(0, dtype=torch.long)]
    scores = [torch.tensor([0.9, 0.4]), torch.zeros(0)]

    out = figures.boxes_overlay(
        images,
        boxes,
        labels,
        tmp_path / "det.png",
        scores=scores,
        class_names=["person", "car"],
        title="detections",
    )

    _assert_png(out)
    with pytest.raises(SCLError, match="one entry per image"):
        figures.boxes_overlay(images, boxes[:1], labels, tmp_path / "bad.png")


# --------------------------------------------------------------------------------------------
# report

METRICS = {
    "dataset": "digits <script>alert(1)</script>",
    "num_classes": 10,
    "accuracy": {"clean": 0.9734, "hard": 0.9612, "soft": 0.9481, "gated": 0.9507},
    "accuracy_mean8": {"hard": 0.968, "soft": 0.955},
    "privacy": {
        DECODER_SSIM: 0.2134,
        floor_of(DECODER_SSIM): 0.1842,
        ceiling_of(DECODER_SSIM): 0.9121,
        DECODER_PSNR: 11.24,
        floor_of(DECODER_PSNR): 10.81,
        ceiling_of(DECODER_PSNR): 24.3,
        DECODER_SSIM_AVG8: 0.2361,
        WHITEBOX_SSIM: 0.1513,
        ATTRIBUTE_ACCURACY: 0.27,
        ATTRIBUTE_CHANCE: 0.25,
        ATTRIBUTE_CLEAN: 0.81,
        DCOR: 0.3101,
        "extra_attack": 0.5,
    },
    "targets": [
        {"name": "hard accuracy", "value": 0.9612, "target": 0.95, "met": True},
        {"name": "soft <b>accuracy</b>", "value": 0.9481, "target": 0.955, "met": False},
    ],
    "seconds": {"base": 3.1, "stage1": 9.8, "stage2": 4.0, "attacks": 80.5},
}
CONFIG = {"command": "demo", "dataset": "digits", "seed": 0, "note": "</pre><script>x()</script>"}


def _run_folder(root: Path, metrics: dict | None = None, config: dict | None = None) -> Path:
    run = root / "run"
    write_json(run / "config.json", CONFIG if config is None else config)
    write_json(run / "metrics.json", METRICS if metrics is None else metrics)
    (run / "figures").mkdir()
    for name in ("selection_maps.png", "my figure.png"):  # the report only links figures
        Image.new("RGB", (8, 8), "white").save(run / "figures" / name)
    (run / "log.txt").write_text("log\n")
    return run


def test_report_contains_numbers_floors_figures_and_escapes(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)

    out = write_report(run)

    assert out == run / "report.html"
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    # accuracy (percent, 1 decimal) and the mean-of-8 column
    for number in ("97.3%", "96.1%", "94.8%", "95.1%", "96.8%", "95.5%"):
        assert number in text
    assert "Mean of 8 samples" in text
    # each attack beside its floor and ceiling
    for number in (
        "0.213",
        "0.184",
        "0.912",
        "11.2 dB",
        "10.8 dB",
        "24.3 dB",
        "0.236",
        "0.151",
        "27.0%",
        "25.0%",
        "81.0%",
        "0.310",
        "+0.029",
    ):
        assert number in text, number
    assert "label-only floor" in text
    assert "extra attack" in text  # unknown privacy keys are still shown
    # targets, time, config
    assert "✓ met" in text and "✗ not met" in text
    assert "1 min 20 s" in text and "total" in text
    assert "&quot;seed&quot;: 0" in text
    # figures by relative path (URL-quoted), with captions
    assert '<img src="figures/selection_maps.png"' in text
    assert '<img src="figures/my%20figure.png"' in text
    assert "Learned selection tensors" in text
    # every string from the files is escaped; no script, no external resources
    assert "<script" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "soft &lt;b&gt;accuracy&lt;/b&gt;" in text
    assert "</pre><script>" not in text
    assert "http://" not in text and "https://" not in text
    _no_temporary_files(run)


def test_report_tolerates_missing_optional_keys(tmp_path: Path) -> None:
    metrics = {
        "dataset": "digits",
        "accuracy": {"clean": 0.97, "hard": None},
        "privacy": {DECODER_SSIM: 0.2},  # no floor, no ceiling
    }
    run = _run_folder(tmp_path, metrics=metrics, config={})

    text = write_report(run).read_text(encoding="utf-8")

    assert "97.0%" in text and "0.200" in text
    assert "—" in text
    assert "Targets" not in text and "mean of 8" not in text.lower()

    write_json(run / "metrics.json", {})
    text = write_report(run).read_text(encoding="utf-8")
    assert "No accuracy was recorded" in text and "No privacy attack was recorded" in text


def test_report_detection_and_federated_sections(tmp_path: Path) -> None:
    detection = {
        "pipeline": "detection",
        "dataset": "shapes",
        "map": {"clean": 0.61, "hard": 0.58},
        "map50": {"clean": 0.88, "hard": 0.85, "soft": 0.8},
        "date": "2025-01-02 03:04",
    }
    federated = {
        "pipeline": "federated",
        "dataset": "digits",
        "engine": "simulation",
        "stages": [
            {"name": "p=0.0", "accuracy": 0.91, "rounds": 3},
            {"name": "p=1.0", "accuracy": 0.97, "rounds": 3, "clients": 4},
        ],
    }

    detection_text = write_report(_run_folder(tmp_path / "detection", metrics=detection)).read_text(encoding="utf-8")
    federated_text = write_report(_run_folder(tmp_path / "federated", metrics=federated)).read_text(encoding="utf-8")

    assert "Detection" in detection_text and "0.610" in detection_text and "0.850" in detection_text
    assert "2025-01-02 03:04" in detection_text
    assert "Federated learning" not in detection_text
    assert "Federated learning" in federated_text and "simulation" in federated_text
    assert "91.0%" in federated_text and "p=1.0" in federated_text


def test_report_detection_privacy_shows_plain_noise_beside_the_release_and_says_who_wins(tmp_path: Path) -> None:
    privacy = {DECODER_SSIM: 0.84, floor_of(DECODER_SSIM): 0.68, ceiling_of(DECODER_SSIM): 0.9,
               release_key(DECODER_SSIM, "gaussian"): 0.82, DECODER_PSNR: 30.0,
               release_key(DECODER_PSNR, "gaussian"): 31.0, release_key(DECODER_SSIM, "soft"): 0.8,
               DECODER_PSNR_AVG8: 31.25, "reference_release": "hard", "reference_map50": 0.969,
               "gaussian_scale": 0.0653, "gaussian_map50": 0.97, "budget": "standard",
               "beats_gaussian": {"hard": {DECODER_SSIM: False, DECODER_PSNR: True}}}
    run = _run_folder(tmp_path, metrics={"map": {"clean": 0.6}, "map50": {"clean": 0.9}, "privacy": privacy})
    text = html.unescape(" ".join(write_report(run).read_text(encoding="utf-8").split()))
    assert "Plain noise at the same mAP@.5: decoder SSIM" in text and "Soft (box-free) release: decoder SSIM" in text
    assert ("release does NOT beat plain Gaussian noise at the same mAP@.5 on decoder SSIM" in text)
    assert "Plain noise: x + 0.0653·ε, its scale found by bisection to match the hard release's mAP@.5 (96.9%)" in text
    assert "Attack budget: standard." in text
    assert "Decoder PSNR, 8 noisy copies averaged" in text
    for raw in ("Beats gaussian", "Gaussian scale", "Reference map50", "decoder psnr avg8"):  # sentences, not raw rows
        assert raw.lower() not in text.lower(), raw


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"metrics\.json is missing"),
        ("{not json", r"metrics\.json is not valid JSON"),
        ("[1, 2]", r"metrics\.json must hold a JSON object"),
    ],
)
def test_report_rejects_missing_or_invalid_metrics(
    tmp_path: Path, content: str | None, message: str
) -> None:
    run = _run_folder(tmp_path)
    path = run / "metrics.json"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)

    with pytest.raises(SCLError, match=message):
        write_report(run)
    assert not (run / "report.html").exists()
    _no_temporary_files(run)


def test_report_rejects_missing_folder_and_config(tmp_path: Path) -> None:
    with pytest.raises(SCLError, match="does not exist"):
        write_report(tmp_path / "nowhere")
    run = _run_folder(tmp_path)
    (run / "config.json").unlink()
    with pytest.raises(SCLError, match=r"config\.json is missing"):
        write_report(run)


def test_report_is_rewritten_atomically(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    write_report(run)
    first = (run / "report.html").read_bytes()
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["accuracy"]["clean"] = 0.5
    write_json(run / "metrics.json", metrics)

    write_report(run)

    assert (run / "report.html").read_bytes() != first
    assert "50.0%" in (run / "report.html").read_text(encoding="utf-8")
    _no_temporary_files(run)


@pytest.mark.parametrize("reproducible", [True, False])
def test_report_names_the_noise_source(tmp_path: Path, reproducible: bool) -> None:
    run = _run_folder(tmp_path, config={**CONFIG, "reproducible": reproducible})

    text = write_report(run).read_text(encoding="utf-8")

    assert "<h2>Noise source</h2>" in text
    assert "AES-256-CTR" in text and "os.urandom, 256 bits, per process, renewed after fork" in text
    assert cipher.library() in text
    assert ("inside <code>scl.deterministic(seed)</code>" in text) == reproducible


@pytest.mark.parametrize(("metrics", "expected"), [
    ({"pipeline": "detection", "accuracy": {}}, "detection"),
    ({"pipeline": "federated"}, "federated"),
    ({"pipeline": "bench_privacy", "methods": {}}, "bench_privacy"),
    ({"pipeline": "classification", "map": 0.5}, "classification"),  # the recorded name wins
    # runs of earlier versions, which did not record it
    ({"map": {"hard": 0.4}}, "detection"),
    ({"engine": "local", "stages": []}, "federated"),
    ({"methods": {}, "verdict": []}, "bench_privacy"),
    ({"accuracy": {"clean": 0.9}}, "classification"),
    ({"pipeline": "something else", "map": 0.5}, "detection"),  # an unknown name is not trusted
])
def test_the_report_reads_which_pipeline_wrote_a_run(metrics, expected):
    assert pipeline_of(metrics) == expected
