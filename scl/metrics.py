"""The names of what a run measures, defined once: its releases and its privacy measures, each with
the words the report, the figures, the terminal and the benchmark show for it.

Every name here is a key of a run's ``metrics.json``, which users' scripts read (``../DESIGN.md``):
rename one and their scripts break, so ``tests/test_metrics.py`` pins them as written in the
design. The attacks write these keys (and more: their floors and ceilings are named after them,
e.g. ``decoder_ssim_label_floor``); everything that reads them takes the names from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["LEAKS", "MEASURES", "RELEASES", "STAGE_RELEASES", "Measure", "leak_keys", "measure", "release_names"]


@dataclass(frozen=True)
class Measure:
    """One privacy measure of a release: lower is more private.

    Attributes:
        key: its key in a release's block of ``metrics["privacy"]`` (and in a frontier entry).
        label: its row in the report's tables (``"Decoder inversion, SSIM"``).
        name: the words for it in a sentence (``"decoder SSIM"``).
        column: a short column header (``"SSIM"``), for the frontier's wide table.
        format: how its value is shown: ``"float"``, ``"pct"`` (a fraction, shown in percent) or
            ``"db"``.
        floor: the keys of what the class alone gives (the label-only floor), first found wins.
        ceiling: the keys of the same attack on clean inputs (the clean ceiling), first found wins.
    """

    key: str
    label: str
    name: str
    column: str
    format: str
    floor: tuple[str, ...]
    ceiling: tuple[str, ...]


#: The releases of a classification run, in table order (label-free first), with their titles.
RELEASES: tuple[tuple[str, str], ...] = (
    ("soft", "soft (label-free)"),
    ("gated", "gated (label-free)"),
    ("hard", "hard (labels known)"),
    ("gaussian", "plain noise (same accuracy)"),
)

#: The release each stage that trains within the utility budget shapes (``metrics["utility"]``'s keys).
STAGE_RELEASES: Mapping[str, str] = {"stage1": "hard", "soft": "soft", "gated": "gated"}

#: Every privacy measure of a release, in the order of the report's per-release table.
MEASURES: tuple[Measure, ...] = (
    Measure("reid_top1", "Re-identification, top-1", "re-identification top-1", "re-id @1", "pct",
            ("reid_floor_top1",), ("reid_clean_top1",)),
    Measure("reid_top5", "Re-identification, top-5", "re-identification top-5", "re-id @5", "pct",
            ("reid_floor_top5",), ("reid_clean_top5",)),
    Measure("decoder_ssim", "Decoder inversion, SSIM", "decoder SSIM", "SSIM", "float",
            ("decoder_ssim_label_floor",), ("decoder_ssim_clean",)),
    Measure("decoder_psnr", "Decoder inversion, PSNR", "decoder PSNR", "PSNR", "db",
            ("decoder_psnr_label_floor",), ("decoder_psnr_clean",)),
    Measure("decoder_ssim_avg8", "Decoder SSIM, 8 noisy copies averaged", "decoder SSIM of 8 copies averaged",
            "SSIM avg 8", "float", ("decoder_ssim_label_floor",), ("decoder_ssim_clean",)),
    Measure("decoder_ssim_luma", "Decoder SSIM of luminance", "decoder SSIM of luminance", "SSIM luma", "float",
            ("decoder_ssim_luma_label_floor",), ("decoder_ssim_luma_clean",)),
    Measure("whitebox_ssim", "White-box inversion, SSIM", "white-box SSIM", "white-box", "float",
            ("decoder_ssim_label_floor",), ("decoder_ssim_clean",)),
    Measure("attribute_accuracy", "Attribute inference, accuracy", "attribute inference", "attribute", "pct",
            ("attribute_chance",), ("attribute_clean",)),
    Measure("dcor", "dCor(input, release), bias-corrected", "dCor", "dCor", "float", ("dcor_label_floor",), ()),
)

_BY_KEY: Mapping[str, Measure] = {m.key: m for m in MEASURES}

#: The measures every label-free release is compared on with plain noise at the same accuracy, and
#: that the benchmark's frontier reports for every method: the black-box attacks, one figure each
#: (the white-box one needs the layer's weights, which the baselines' releases do not share).
LEAKS: tuple[Measure, ...] = tuple(
    _BY_KEY[key] for key in ("decoder_ssim", "decoder_psnr", "reid_top1", "reid_top5", "attribute_accuracy", "dcor")
)


def measure(key: str) -> Measure:
    """The :class:`Measure` of ``key`` (a :class:`KeyError` naming the known ones otherwise)."""
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"no privacy measure {key!r}; scl has {sorted(_BY_KEY)}") from None


def leak_keys() -> tuple[str, ...]:
    """The keys of :data:`LEAKS`, in order."""
    return tuple(m.key for m in LEAKS)


def release_names() -> tuple[str, ...]:
    """The names of :data:`RELEASES`, in order."""
    return tuple(name for name, _ in RELEASES)
