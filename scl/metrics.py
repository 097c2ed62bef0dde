"""The names of what a run measures, defined once: its releases and its privacy measures, each with
the words the report, the figures, the terminal and the benchmark show for it.

Every name here is a key of a run's ``metrics.json``, which users' scripts read (``../DESIGN.md``):
rename one and their scripts break, so ``tests/test_metrics.py`` pins them as written in the
design. The attacks write these keys through the constants below (floors and ceilings are named
after them: ``floor_of(DECODER_SSIM)`` is ``decoder_ssim_label_floor``); the pipelines, the report,
the figures and the terminal read them through the same constants, and a test fails when a module
of ``scl/`` spells one itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ATTRIBUTE_ACCURACY", "ATTRIBUTE_CHANCE", "ATTRIBUTE_CLEAN", "ATTRIBUTE_LABEL_FLOOR", "CEILING_SUFFIX",
           "DCOR", "DECODER_PSNR", "DECODER_PSNR_AVG8", "DECODER_SSIM", "DECODER_SSIM_AVG8", "DECODER_SSIM_LUMA",
           "DETECTION_RELEASES", "FLOOR_SUFFIX", "LEAKS", "MEASURES", "RELEASES", "REID_CLEAN_TOP1", "REID_CLEAN_TOP5",
           "REID_FLOOR_TOP1", "REID_FLOOR_TOP5", "REID_TOP1", "REID_TOP5", "STAGE_RELEASES", "WHITEBOX_SSIM",
           "Measure", "averaged", "ceiling_of", "floor_of", "leak_keys", "measure", "release_key", "release_names"]

#: An attack's figure on the label-only release (what the class alone gives) is named
#: ``key + FLOOR_SUFFIX``, on clean inputs ``key + CEILING_SUFFIX`` (``decoder_ssim_label_floor``,
#: ``decoder_ssim_clean``).
FLOOR_SUFFIX = "_label_floor"
CEILING_SUFFIX = "_clean"


def floor_of(key: str) -> str:
    """The key of ``key``'s label-only floor (``decoder_ssim`` -> ``decoder_ssim_label_floor``)."""
    return key + FLOOR_SUFFIX


def ceiling_of(key: str) -> str:
    """The key of ``key``'s clean ceiling (``decoder_ssim`` -> ``decoder_ssim_clean``)."""
    return key + CEILING_SUFFIX


def averaged(key: str, copies: int) -> str:
    """The key of ``key`` measured on ``copies`` noisy copies averaged (``decoder_ssim_avg8``)."""
    return f"{key}_avg{copies}"


# -- the keys of metrics.json, one constant each: the attacks write them, every reader takes them here --
#: Re-identification against a gallery of clean test images (top-1, top-5), its floor (k / class
#: size: what the class alone gives) and the same attacker on clean images.
REID_TOP1, REID_TOP5 = "reid_top1", "reid_top5"
REID_FLOOR_TOP1, REID_FLOOR_TOP5 = "reid_floor_top1", "reid_floor_top5"
REID_CLEAN_TOP1, REID_CLEAN_TOP5 = "reid_clean_top1", "reid_clean_top5"
#: The learned decoder's reconstruction: SSIM, PSNR, SSIM of luminance, and on 8 copies averaged.
DECODER_SSIM, DECODER_PSNR, DECODER_SSIM_LUMA = "decoder_ssim", "decoder_psnr", "decoder_ssim_luma"
DECODER_SSIM_AVG8, DECODER_PSNR_AVG8 = averaged(DECODER_SSIM, 8), averaged(DECODER_PSNR, 8)
#: White-box inversion through the layer's weights.
WHITEBOX_SSIM = "whitebox_ssim"
#: Attribute inference: accuracy, chance (the majority attribute), the label-only floor, clean.
ATTRIBUTE_ACCURACY, ATTRIBUTE_CHANCE = "attribute_accuracy", "attribute_chance"
ATTRIBUTE_LABEL_FLOOR, ATTRIBUTE_CLEAN = "attribute_label_floor", "attribute_clean"
#: Bias-corrected distance correlation between the input and the release.
DCOR = "dcor"


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
        reading: how to read its value, in the report's flat table (detection, earlier runs).
        per_release: a row of the per-release table (``False``: the flat table only).
    """

    key: str
    label: str
    name: str
    column: str
    format: str
    floor: tuple[str, ...]
    ceiling: tuple[str, ...]
    reading: str = "lower is more private"
    per_release: bool = True


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
    Measure(REID_TOP1, "Re-identification, top-1", "re-identification top-1", "re-id @1", "pct",
            (REID_FLOOR_TOP1,), (REID_CLEAN_TOP1,)),
    Measure(REID_TOP5, "Re-identification, top-5", "re-identification top-5", "re-id @5", "pct",
            (REID_FLOOR_TOP5,), (REID_CLEAN_TOP5,)),
    Measure(DECODER_SSIM, "Decoder inversion, SSIM", "decoder SSIM", "SSIM", "float",
            (floor_of(DECODER_SSIM),), (ceiling_of(DECODER_SSIM),)),
    Measure(DECODER_PSNR, "Decoder inversion, PSNR", "decoder PSNR", "PSNR", "db",
            (floor_of(DECODER_PSNR),), (ceiling_of(DECODER_PSNR),)),
    Measure(DECODER_SSIM_AVG8, "Decoder SSIM, 8 noisy copies averaged", "decoder SSIM of 8 copies averaged",
            "SSIM avg 8", "float", (floor_of(DECODER_SSIM_AVG8), floor_of(DECODER_SSIM)),
            (ceiling_of(DECODER_SSIM_AVG8), ceiling_of(DECODER_SSIM))),
    Measure(DECODER_PSNR_AVG8, "Decoder PSNR, 8 noisy copies averaged", "decoder PSNR of 8 copies averaged",
            "PSNR avg 8", "db", (floor_of(DECODER_PSNR_AVG8), floor_of(DECODER_PSNR)),
            (ceiling_of(DECODER_PSNR_AVG8), ceiling_of(DECODER_PSNR)), per_release=False),
    Measure(DECODER_SSIM_LUMA, "Decoder SSIM of luminance", "decoder SSIM of luminance", "SSIM luma", "float",
            (floor_of(DECODER_SSIM_LUMA),), (ceiling_of(DECODER_SSIM_LUMA),)),
    Measure(WHITEBOX_SSIM, "White-box inversion, SSIM", "white-box SSIM", "white-box", "float",
            (floor_of(WHITEBOX_SSIM), floor_of(DECODER_SSIM)), (ceiling_of(WHITEBOX_SSIM), ceiling_of(DECODER_SSIM))),
    Measure(ATTRIBUTE_ACCURACY, "Attribute inference, accuracy", "attribute inference", "attribute", "pct",
            (ATTRIBUTE_CHANCE, ATTRIBUTE_LABEL_FLOOR), (ATTRIBUTE_CLEAN,)),
    Measure(DCOR, "dCor(input, release), bias-corrected", "dCor", "dCor", "float", (floor_of(DCOR),),
            (ceiling_of(DCOR),), reading="0 = independent, 1 = fully dependent"),
)

_BY_KEY: Mapping[str, Measure] = {m.key: m for m in MEASURES}

#: The measures every label-free release is compared on with plain noise at the same accuracy, and
#: that the benchmark's frontier reports for every method: the black-box attacks, one figure each
#: (the white-box one needs the layer's weights, which the baselines' releases do not share).
LEAKS: tuple[Measure, ...] = tuple(
    _BY_KEY[key] for key in (DECODER_SSIM, DECODER_PSNR, REID_TOP1, REID_TOP5, ATTRIBUTE_ACCURACY, DCOR)
)


#: Detection's other releases, measured by the hard release's decoder and written beside its keys in
#: the flat privacy block as :func:`release_key` (``decoder_ssim_soft``): (release, title, reading).
DETECTION_RELEASES: tuple[tuple[str, str, str], ...] = (
    ("soft", "Soft (box-free) release", "lower is more private"),
    ("gaussian", "Plain noise at the same mAP@.5", "the reference the release must beat"),
)


def release_key(key: str, release: str) -> str:
    """The key of measure ``key`` on another release in a flat block (``decoder_ssim_gaussian``)."""
    return f"{key}_{release}"


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
