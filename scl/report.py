"""Run folder -> ``report.html``: one self-contained page that a person can read.

The page has inline CSS, no JavaScript and no external resources; figures are linked by their
relative path (``figures/NAME.png``), so the folder can be moved or zipped as a whole. Every
string that comes from the run folder is HTML-escaped. Missing optional metrics are shown as
"—"; only a missing or unreadable ``config.json`` / ``metrics.json`` is an error.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from scl.errors import SCLError
from scl.io import atomic_write
from scl.metrics import (
    ATTRIBUTE_CHANCE,
    ATTRIBUTE_CLEAN,
    ATTRIBUTE_LABEL_FLOOR,
    DCOR,
    DECODER_PSNR,
    DECODER_SSIM,
    DETECTION_RELEASES,
    LEAKS,
    MEASURES,
    REID_FLOOR_TOP1,
    REID_FLOOR_TOP5,
    REID_TOP1,
    RELEASES,
    STAGE_RELEASES,
    ceiling_of,
    floor_of,
    measure,
    release_key,
)

__all__ = ["CAPTIONS", "write_report"]

DASH = "—"

#: Figure captions keyed by file stem; other figures get a caption made from their name.
CAPTIONS: dict[str, str] = {
    "client_samples": "One client's images (they never leave the client), the same images obfuscated by SL-p "
    "on the client, and with random screening (spec §2.3.1) as N is trained on them.",
    "samples": "Test images: clean, obfuscated with hard selection (label known), obfuscated "
    "with label-free selections, then what the attacks rebuild: the learned decoder from the "
    "headline label-free release (gated when the run has one; each row says which) and from the hard "
    "release, the label-only floor (the same decoder given only the label) and the white-box "
    "inversion of the headline release.",
    "images": "Test images: clean, obfuscated and reconstructed by the decoder attack.",
    "reconstructions": "Decoder attack: obfuscated activations and the images it reconstructs "
    "from them, beside the originals.",
    "training_curves": "Training loss and accuracy per epoch for each stage (base network, "
    "stochastic layer, selection).",
    "curves": "Training loss and accuracy per epoch for each stage.",
    "selection_maps": "Learned selection tensors π_c (0 = class c's parameters unused, "
    "1 = fully used), one per class, on a fixed 0..1 scale.",
    "selection": "Learned selection tensors π_c on a fixed 0..1 scale.",
    "tradeoff": "Accuracy against decoder SSIM for several privacy weights λ. Left is more "
    "private; the dashed vertical line is the label-only floor, the dashed horizontal line the "
    "accuracy on clean images.",
    "tradeoff_curve": "Accuracy against decoder SSIM for several privacy weights λ. Left is more "
    "private; the dashed vertical line is the label-only floor, the dashed horizontal line the "
    "accuracy on clean images.",
    "utility_budget": "The utility budget over training, for each stage that shapes a release: left, the "
    "Lagrange multiplier μ on the task loss (it rises while the release loses more accuracy than the budget "
    "allows); right, the validation accuracy loss per epoch against the budget (dashed), the epoch kept (dot) "
    "and the test loss of the release kept (cross).",
    "accuracy_vs_share": "Federated learning: test accuracy against the share p of clients that "
    "send clean data.",
    "frontier_ssim": "The privacy-utility frontier (scl bench privacy): test accuracy against the decoder's SSIM, "
    "one point per budget and method; lower is more private, right is more useful. The dotted lines are the "
    "label-only floor and the clean accuracy; a red ring marks a release that was not within its budget.",
    "frontier_reid": "The same frontier for re-identification top-1 (the share of test images matched to "
    "their source among all clean test images).",
    "detections": "Detections on test images (boxes: x1, y1, x2, y2).",
    "boxes": "Detections on test images (boxes: x1, y1, x2, y2).",
}

_ACCURACY_ORDER = ("clean", "hard", "soft", "gated")
_ACCURACY_MEANING = {
    "clean": "task network on clean images (no obfuscation)",
    "hard": "obfuscated, label known (hard selection)",
    "soft": "obfuscated, label-free (learned soft selection)",
    "gated": "obfuscated, label-free (selection predicted from the input)",
}

_EXPLANATION = (
    "The noise is conditioned on the class, so an obfuscated sample reveals its class by "
    "design: that is what lets the task network still classify it. An attacker who knows only "
    "the label can already draw a typical image of that class. A reconstruction attack is "
    "therefore judged against this <em>label-only floor</em> (the best reconstruction from the "
    "label alone), not against zero: a score close to the floor means the obfuscated data leaks "
    "little beyond the class; a score close to the <em>clean ceiling</em> (the same attack on "
    "unobfuscated inputs) means it hides little. The attribute attack is read the same way, "
    "between chance and its accuracy on clean inputs."
)

_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: #1f2328; background: #fff; margin: 0; }
main { max-width: 980px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.2em; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
p.meta { color: #59636e; margin: 0 0 16px; }
p.note { color: #59636e; font-size: 0.92em; margin: 6px 0 0; max-width: 46em; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 5px 12px; border-bottom: 1px solid #e1e4e8; text-align: left;
  vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; font-size: 0.92em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.desc { color: #59636e; font-size: 0.92em; }
tr.total td { font-weight: 600; }
.met { color: #1a7f37; font-weight: 600; }
.notmet { color: #cf222e; font-weight: 600; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; border-radius: 6px; padding: 10px 12px;
  font-size: 0.85em; overflow-x: auto; }
figure { margin: 20px 0 28px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e4e8; }
figcaption { color: #59636e; font-size: 0.92em; margin-top: 6px; max-width: 46em; }
code { font-size: 0.9em; }
"""


# --------------------------------------------------------------------------------------------
# reading


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SCLError(
            f"cannot write the report: {path} is missing; expected a run folder written by an "
            "scl command (config.json, metrics.json, figures/)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SCLError(
            f"cannot write the report: {path} is not valid JSON ({err.msg} at line {err.lineno}, "
            f"column {err.colno})"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise SCLError(f"cannot write the report: {path} cannot be read ({err})") from err
    if not isinstance(data, dict):
        raise SCLError(
            f"cannot write the report: {path} must hold a JSON object, but got "
            f"{type(data).__name__}"
        )
    return data


# --------------------------------------------------------------------------------------------
# formatting


def _e(value: Any) -> str:
    """HTML-escape any value (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def _number(value: Any) -> float | None:
    """``value`` as a float, or ``None`` when it is absent, boolean or not a number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def format_value(value: Any, kind: str = "float") -> str:
    """A metric as the report and the terminal show it: ``kind`` float (3 decimals), pct (a fraction in
    percent), db, pp, signed, signed_db, int or auto; a missing or non-finite value is a dash. Text
    values come back HTML-escaped."""
    number = _number(value)
    if number is None:
        if value is None:
            return DASH
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, str):
            return _e(value) if value else DASH
        return _e(json.dumps(value, ensure_ascii=False, default=str))
    if math.isnan(number):
        return DASH
    if math.isinf(number):
        return "∞" if number > 0 else "−∞"
    if kind == "pct":
        return f"{100 * number:.1f}%"
    if kind == "db":
        return f"{number:.1f} dB"
    if kind == "pp":  # difference of two fractions, in percentage points
        return f"{100 * number:+.1f} pp".replace("-", "−")
    if kind == "signed_db":
        return f"{number:+.1f} dB".replace("-", "−")
    if kind == "signed":
        return f"{number:+.3f}".replace("-", "−")
    if kind == "int" or (isinstance(value, int) and kind == "auto"):
        return f"{int(number)}"
    if kind == "auto" and abs(number) >= 1000:
        return f"{number:,.0f}"
    return f"{number:.3f}"


def _seconds(value: Any) -> str:
    number = _number(value)
    if number is None or not math.isfinite(number):
        return format_value(value)
    if number < 60:
        return f"{number:.1f} s"
    minutes, secs = divmod(int(round(number)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _table(
    header: Sequence[tuple[str, bool]],
    rows: Iterable[Sequence[tuple[str, str]]],
    *,
    last_row_class: str = "",
) -> str:
    """An HTML table. ``header``: (escaped text, numeric?); ``rows``: (escaped html, css class)."""
    head = "".join(f'<th class="num">{h}</th>' if num else f"<th>{h}</th>" for h, num in header)
    body = []
    for row in rows:
        cells = "".join(f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>"
                        for text, cls in row)
        body.append(f"<tr>{cells}</tr>")
    if body and last_row_class:
        body[-1] = f'<tr class="{last_row_class}">' + body[-1][len("<tr>"):]
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _label(key: str) -> str:
    return _e(key.replace("_", " "))


# --------------------------------------------------------------------------------------------
# sections


def _accuracy_section(metrics: Mapping[str, Any]) -> str:
    accuracy = metrics.get("accuracy")
    mean8 = metrics.get("accuracy_mean8")
    if not isinstance(accuracy, Mapping):
        accuracy = {}
    if not isinstance(mean8, Mapping):
        mean8 = None
    keys = [k for k in _ACCURACY_ORDER if k in accuracy or (mean8 and k in mean8)]
    keys += [k for k in accuracy if k not in keys]
    if mean8:
        keys += [k for k in mean8 if k not in keys]
    if not keys:
        if pipeline_of(metrics) == "detection":  # a detection run reports mAP in its own section
            return ""
        return "<h2>Accuracy</h2><p>No accuracy was recorded.</p>"
    header = [("Mode", False), ("Test accuracy", True)]
    if mean8:
        header.append(("Mean of 8 samples", True))
    header.append(("What it measures", False))
    rows = []
    for key in keys:
        row = [(_e(key), ""), (format_value(accuracy.get(key), "pct"), "num")]
        if mean8:
            row.append((format_value(mean8.get(key), "pct"), "num"))
        row.append((_e(_ACCURACY_MEANING.get(key, "")), "desc"))
        rows.append(row)
    note = ""
    if mean8:
        note = (
            '<p class="note">“Mean of 8 samples”: the prediction averages the task network\'s '
            "outputs over 8 independent noise draws per test image.</p>"
        )
    return "<h2>Accuracy</h2>" + _table(header, rows) + note


def _flat_rows() -> tuple[tuple[str, str, tuple[str, ...], tuple[str, ...], str, str], ...]:
    """(label, key, floor keys, ceiling keys, format, reading) of the flat privacy table (detection's
    block, and runs of earlier versions): every measure, then detection's other releases' decoder
    figures, read against the hard release's floor and ceiling."""
    rows = [(m.label, m.key, m.floor, m.ceiling, m.format, m.reading) for m in MEASURES]
    for release, title, reading in DETECTION_RELEASES:
        for m in (measure(DECODER_SSIM), measure(DECODER_PSNR)):
            rows.append((f"{title}: {m.name}", release_key(m.key, release), m.floor, m.ceiling, m.format, reading))
    return tuple(rows)


_PRIVACY_ROWS = _flat_rows()


def _first(mapping: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if mapping.get(key) is not None:
            return mapping[key]
    return None


#: The releases of a classification run, in table order, with their column titles.
RELEASE_COLUMNS: tuple[tuple[str, str], ...] = RELEASES

#: (label, key, floor keys, ceiling keys, format) of the per-release privacy table.
RELEASE_ROWS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...], str], ...] = tuple(
    (m.label, m.key, m.floor, m.ceiling, m.format) for m in MEASURES if m.per_release
)

_VERDICT_NAMES = {m.key: m.name for m in LEAKS}


def release_table(
    privacy: Mapping[str, Any], *, short: bool = False
) -> tuple[list[str], list[list[tuple[Any, str]]]] | None:
    """The per-release privacy table: header titles and rows of ``(value, format)`` cells.

    Columns: measure, one per release present (soft first), label-only floor, clean ceiling;
    ``short`` titles fit a terminal. ``None`` when the run has no per-release blocks (detection,
    runs of earlier versions).
    """
    present = [(key, title.split(" (")[0] if short else title) for key, title in RELEASE_COLUMNS
               if isinstance(privacy.get(key), Mapping)]
    if not present:
        return None
    reference = privacy[present[0][0]]
    header = ["attack" if short else "Attack / measure", *(title for _, title in present),
              "floor" if short else "Floor (label only / chance)", "ceiling" if short else "Ceiling (clean input)"]
    rows = []
    for label, key, floor_keys, ceiling_keys, kind in RELEASE_ROWS:
        values = [privacy[name].get(key) for name, _ in present]
        if all(v is None for v in values):
            continue
        rows.append([(label, ""), *((v, kind) for v in values), (_first(reference, floor_keys), kind),
                     (_first(reference, ceiling_keys), kind)])
    return header, rows


def gaussian_verdicts(privacy: Mapping[str, Any], measure: str = "accuracy") -> list[str]:
    """One plain sentence per scl release on whether it beats plain noise at the same accuracy
    (``measure``: what the noise was matched on, e.g. ``"mAP@.5"`` for detection)."""
    verdicts = privacy.get("beats_gaussian")
    if not isinstance(verdicts, Mapping):
        return []
    lines = []
    # plain noise is calibrated to one release's accuracy (runs of earlier versions: the soft one)
    reference = str(privacy.get("reference_release", "soft"))
    for name, title in RELEASE_COLUMNS[:3]:
        verdict = verdicts.get(name)
        if not isinstance(verdict, Mapping) or not verdict:
            continue
        noise = (f"plain Gaussian noise at the same {measure}" if name == reference
                 else f"plain Gaussian noise at the {reference} release's {measure}")
        lost = [_VERDICT_NAMES.get(str(k), str(k)) for k, won in verdict.items() if not won]
        if lost:
            lines.append(f"The {title} release does NOT beat {noise} on "
                         f"{', '.join(lost)}: there, an attacker learns as much from it as from noise that needs "
                         "no training, or more.")
        else:
            lines.append(f"The {title} release leaks less than {noise} on every attack.")
    return lines


def _release_section(privacy: Mapping[str, Any]) -> str:
    table = release_table(privacy, short=True)
    if table is None:
        return ""
    header, rows = table
    html_rows = [[(_e(rows[i][0][0]), ""), *((format_value(v, kind), "num") for v, kind in row[1:])]
                 for i, row in enumerate(rows)]
    scale = _number(privacy.get("gaussian_scale"))
    budget = privacy.get("budget")
    notes = [f'<p class="note">{_e(line)}</p>' for line in gaussian_verdicts(privacy)]
    about = ("Lower is more private on every row. Soft and gated are the label-free releases, what leaves the "
             "data owner at inference (soft: the learned soft selection of spec §3.1.2; gated: a selection "
             "predicted from the input); hard needs the labels, as when sharing a labelled data set. "
             "Re-identification picks each release's source image out of the clean test images; its floor is "
             "k / class size, what knowing the class alone gives. The floor is the label-only attacker (chance "
             "for the attribute), the ceiling the same attacker on clean inputs.")
    if scale is not None:
        # runs of earlier versions calibrated plain noise to the soft release ("soft_accuracy")
        reference = str(privacy.get("reference_release", "soft"))
        about += f" Plain noise: x + {scale:.3g}·ε, its scale found by bisection to match the {reference} accuracy"
        noise_acc = _number(privacy.get("gaussian_accuracy"))
        reference_acc = _number(privacy.get("reference_accuracy", privacy.get("soft_accuracy")))
        if noise_acc is not None and reference_acc is not None and noise_acc < reference_acc:
            about += (f" (no scale reaches the {reference} accuracy {100 * reference_acc:.1f}%: even the smallest "
                      f"keeps {100 * noise_acc:.1f}%, so plain noise is compared at a lower accuracy)")
        about += "."
    if budget:
        about += f" Attack budget: {_e(budget)}."
    return ("<h2>Privacy</h2>" + _table([(_e(h), i > 0) for i, h in enumerate(header)], html_rows)
            + "".join(notes) + f'<p class="note">{_e(about)}</p>')


def _privacy_section(metrics: Mapping[str, Any]) -> str:
    privacy = metrics.get("privacy")
    if not isinstance(privacy, Mapping) or not privacy:
        return "<h2>Privacy</h2><p>No privacy attack was recorded.</p>"
    releases = _release_section(privacy)
    if releases:
        return releases + f'<p class="note">{_EXPLANATION}</p>'
    used: set[str] = set()
    rows = []
    for label, key, floor_keys, ceiling_keys, kind, direction in _PRIVACY_ROWS:
        used.update((key, *floor_keys, *ceiling_keys))
        value = privacy.get(key)
        floor = _first(privacy, floor_keys)
        ceiling = _first(privacy, ceiling_keys)
        if value is None:  # a floor or ceiling alone measures nothing about this run
            continue
        gap = DASH
        v, f = _number(value), _number(floor)
        if v is not None and f is not None and math.isfinite(v) and math.isfinite(f):
            gap = format_value(v - f, {"pct": "pp", "db": "signed_db"}.get(kind, "signed"))
        rows.append([
            (_e(label), ""),
            (format_value(value, kind), "num"),
            (format_value(floor, kind), "num"),
            (format_value(ceiling, kind), "num"),
            (gap, "num"),
            (_e(direction), "desc"),
        ])
    # the verdicts and the reference's calibration are sentences below, not raw rows
    context = ("beats_gaussian", "budget", "gaussian_scale", "gaussian_map50", "reference_release", "reference_map50")
    extra = [k for k in privacy if k not in used and k not in context]
    for key in extra:
        rows.append([(_label(key), ""), (format_value(privacy[key]), "num"), (DASH, "num"),
                     (DASH, "num"), (DASH, "num"), ("", "desc")])
    header = [("Attack / measure", False), ("Measured", True),
              ("Floor (label only / chance)", True), ("Ceiling (clean input)", True),
              ("Above floor", True), ("Reading", False)]
    explanation = _EXPLANATION
    notes = "".join(f'<p class="note">{_e(line)}</p>'
                    for line in gaussian_verdicts(privacy, _utility_name(metrics)))
    scale, matched = _number(privacy.get("gaussian_scale")), _number(privacy.get("reference_map50"))
    about = ""
    if scale is not None and matched is not None:  # detection's plain-noise reference
        noise_map = _number(privacy.get("gaussian_map50"))
        about = (f"Plain noise: x + {scale:.3g}·ε, its scale found by bisection to match the "
                 f"{privacy.get('reference_release', 'hard')} release's mAP@.5 ({100 * matched:.1f}%)"
                 + (f"; it keeps {100 * noise_map:.1f}%" if noise_map is not None else "") + ". ")
    if privacy.get("budget"):
        about += f"Attack budget: {privacy['budget']}."
    if about:
        notes += f'<p class="note">{_e(about)}</p>'

    if pipeline_of(metrics) == "detection":  # the floor decoder is given the class masks, not a label
        explanation = explanation.replace("who knows only the label", "who knows only the class masks (where each "
                                          "category's objects are)").replace("label-only floor", "mask-only floor")
        explanation = explanation.replace("from the label alone", "from the masks alone")
    return (
        "<h2>Privacy</h2>"
        + _table(header, rows)
        + notes
        + f'<p class="note">{explanation}</p>'
    )


_BUDGET_RELEASES = STAGE_RELEASES


def _budget_of(record: Mapping[str, Any]) -> Any:
    """A stage's budget in points (``max_loss``; runs before detection had a budget wrote only
    ``max_accuracy_loss``)."""
    return record.get("max_loss", record.get("max_accuracy_loss"))


def budget_test_losses(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Per constrained stage, the test accuracy (mAP@.5 for detection) its release lost against
    clean, in points."""
    accuracy = metrics.get("accuracy", metrics.get("map50"))
    if not isinstance(accuracy, Mapping) or _number(accuracy.get("clean")) is None:
        return {}
    return {stage: 100 * (accuracy["clean"] - accuracy[release]) for stage, release in _BUDGET_RELEASES.items()
            if _number(accuracy.get(release)) is not None}


#: The test split size from which a release's test loss is held to the budget within
#: :data:`TEST_MARGIN` points (the project's target); below it the margin widens to two standard errors.
MIN_TEST_IMAGES = 300
#: How far over the budget a release may land on the test split before the run says so, in points:
#: the budget is met on a validation part, and a test split of a few hundred images differs from it
#: by sampling alone.
TEST_MARGIN = 1.5


def budget_test_check(metrics: Mapping[str, Any], stage: str, budget: float | None,
                      test: float | None) -> tuple[bool, str]:
    """Whether ``stage``'s release lost too much on the test split (``test`` points against a
    budget of ``budget``), and what to say about it (``""``: nothing).

    With at least :data:`MIN_TEST_IMAGES` test images (or when the run does not record its split
    sizes), a release is flagged beyond :data:`TEST_MARGIN` points over the budget. A smaller test
    split measures the loss too coarsely for that margin: it is flagged only beyond two standard
    errors of the measured loss (at least :data:`TEST_MARGIN`), and the sentence gives the split
    size and the standard error. For accuracy the standard error is binomial,
    ``sqrt(2 p (1 - p) / n)`` for a release of test accuracy ``p`` on ``n`` images (clean and
    release counted as independent: an upper bound for their paired difference); mAP has no
    closed form, so for detection the sentence states the split size and the margin stays.
    """
    if test is None or budget is None:
        return False, ""
    splits = metrics.get("splits")
    images = _number(splits.get("test")) if isinstance(splits, Mapping) else None
    over_by = test - budget
    if images is None or images >= MIN_TEST_IMAGES:
        over = over_by > TEST_MARGIN
        return over, f"the test split loses {over_by:.1f} points more than the budget" if over else ""
    n = max(int(images), 1)
    small = f"a test split of {n} images, fewer than {MIN_TEST_IMAGES}"
    accuracy = metrics.get("accuracy")
    p = _number(accuracy.get(_BUDGET_RELEASES.get(stage, stage))) \
        if isinstance(accuracy, Mapping) and "map50" not in metrics else None
    if p is None:
        over = over_by > TEST_MARGIN
        if over:
            return True, f"the test split loses {over_by:.1f} points more than the budget ({small})"
        return False, f"{small}: its loss is a rough check of the budget"
    p = min(max(p, 1 / (n + 1)), 1 - 1 / (n + 1))
    error = 100.0 * math.sqrt(2 * p * (1 - p) / n)
    if over_by > max(TEST_MARGIN, 2 * error):
        return True, (f"the test split loses {over_by:.1f} points more than the budget, beyond two standard "
                      f"errors (±{error:.1f} points) of {small}")
    if over_by > TEST_MARGIN:
        return False, (f"the test split loses {over_by:.1f} points more than the budget, within two standard "
                       f"errors (±{error:.1f} points) of {small}")
    return False, f"{small}: its loss is measured to about ±{error:.1f} points (one standard error)"


def budget_lines(metrics: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """One sentence per constrained stage (``metrics["utility"]``) and whether its budget was met."""
    from scl.pipelines.stages import budget_words, gave_up, points

    utility = metrics.get("utility")
    if not isinstance(utility, Mapping):
        return []
    tests = budget_test_losses(metrics)
    lines = []
    for stage, record in utility.items():
        if not isinstance(record, Mapping) or "feasible" not in record:
            continue
        release = _BUDGET_RELEASES.get(stage, stage)
        budget, val = _budget_of(record), record.get("validation_loss")
        test = tests.get(stage)
        test_text = "" if test is None else f", {test:.1f} on the test split"
        limit = _number(budget)
        over, check = budget_test_check(metrics, stage, limit, test)
        measure = record.get("measure", "accuracy")
        option = "--max-accuracy-loss" if measure == "accuracy" else "--max-map-loss"
        words = budget_words(budget, measure)
        if record["feasible"]:
            text = (f"budget {words}, {release} release: met on validation ({val:.1f} points lost on "
                    f"{record.get('validation_images', '?')} validation images{test_text})")
            text += f"; {check}" if check else ""
        else:
            text = (f"budget {words}, {release} release: CANNOT be met; the closest point reached loses "
                    f"{points(float(val or 0.0), limit)} points on validation{test_text}. More data, a larger "
                    f"{option} or a stronger layer would help")
            stopped = gave_up(record)
            text += f" ({stopped})" if stopped else ""
        lines.append((text, bool(record["feasible"]) and not over))
    return lines


def _budget_section(metrics: Mapping[str, Any]) -> str:
    from scl.pipelines.stages import gave_up

    utility = metrics.get("utility")
    if not isinstance(utility, Mapping) or not utility:
        return ""
    tests = budget_test_losses(metrics)
    header = [("Stage", False), ("Release", False), ("Budget (points)", True), ("Validation loss", True),
              ("Test loss", True), ("Epoch kept", True), ("Final multiplier μ", True), ("Verdict", False)]
    rows = []
    for stage, record in utility.items():
        if not isinstance(record, Mapping) or "feasible" not in record:
            continue
        multiplier = record.get("multiplier") or [None]
        verdict = ('<span class="met">met on validation</span>' if record["feasible"]
                   else '<span class="notmet">budget cannot be met: closest point shown</span>')
        stopped = gave_up(record)  # only a stage that never met the budget gives up
        if stopped:
            verdict += f"<br>{_e(stopped)}"
        test, budget = tests.get(stage), _number(_budget_of(record))
        over, check = budget_test_check(metrics, stage, budget, test)
        if check and (record["feasible"] or over):  # a stage out of reach: only a test loss over the margin
            check = _e(check[0].upper() + check[1:]) + "."
            verdict += f'<br><span class="notmet">{check}</span>' if over else f"<br>{check}"
        rows.append([(_e(stage), ""), (_e(_BUDGET_RELEASES.get(stage, stage)), ""),
                     (format_value(_budget_of(record)), "num"), (format_value(record.get("validation_loss")), "num"),
                     (format_value(tests.get(stage)), "num"), (format_value(record.get("epoch"), "int"), "num"),
                     (format_value(multiplier[-1]), "num"), (verdict, "")])
    images = next((r.get("validation_images") for r in utility.values() if isinstance(r, Mapping)), None)
    measure = next((r.get("measure") for r in utility.values() if isinstance(r, Mapping)), None) or "accuracy"
    note = (
        f'<p class="note">Every stage that shapes a release maximises privacy subject to the {_e(measure)} budget, '
        "by dual ascent on a Lagrange multiplier μ (scl.pipelines.stages). The loss is measured on a "
        f"validation part of the obfuscator split ({_e(images)} images), never on the test split; the test "
        "loss is shown beside it. The stage keeps its last epoch within the budget, or, when none was, the "
        "closest one.</p>"
    )
    return "<h2>Utility budget</h2>" + _table(header, rows) + note


def verdict_lines(metrics: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """``scl bench privacy``: one sentence per budget of ``metrics["verdict"]``, and whether it meets
    the targets (for the terminal, ``table.md`` and the report)."""
    lines = []
    for row in metrics.get("verdict", []):
        budget = f"{row['budget']:g} {'point' if row['budget'] == 1 else 'points'}"
        if row.get("release") is None:
            lines.append((f"budget {budget}: {row.get('reason', 'no label-free scl release')}", False))
            continue
        parts = [f"budget {budget}: {row['release']} re-identification {100 * row[REID_TOP1]:.1f}%, "
                 f"decoder SSIM {row[DECODER_SSIM]:.3f}"]
        for label, key, scale in (("re-identification", "reid", 100.0), ("SSIM", "ssim", 1.0)):
            rival = row.get(f"best_other_{key}")
            if rival is not None:
                value = rival["value"] * scale
                text = f"{value:.1f}%" if key == "reid" else f"{value:.3f}"
                word = "lowest" if row[f"lowest_{key}"] else "NOT the lowest"
                parts.append(f"{word} {label} (next best {rival['method']} {text})")
        if row.get("beats_cloak_reid") is None:
            parts.append("cloak (scl without classes) was not within the budget")
        else:
            word = "beats" if row["beats_cloak_reid"] else "does NOT clearly beat"
            parts.append(f"{word} cloak on re-identification ({100 * row['cloak_reid_top1']:.1f}%, "
                         f"margin 2 se = {100 * row['cloak_margin']:.1f} points)")
        if not row.get("target"):
            parts.append("(beyond the targets' 2 points)")
        lines.append(("; ".join(parts), bool(row["met"])))
    return lines


#: The frontier's columns after the method's name, for the report's table and the run's ``table.md``:
#: (header, entry key, format). Short headers: eleven columns fit a laptop's window.
FRONTIER_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("budget (pt)", "budget", "budget"), ("accuracy", "accuracy", "pct"), ("within (val)", "feasible", "yes/NO"),
    ("epoch kept", "epoch", "int"), *((m.column, m.key, m.format) for m in LEAKS),
)
#: What the frontier's figures mean, in a sentence under its table.
FRONTIER_READING = ("Lower is more private (SSIM and PSNR: the decoder's; re-id @k: re-identification top-k). "
                    "A release counts at a budget when it was within it on validation. Epoch kept: the epoch of "
                    "training whose weights the release has (0: its start; none for plain noise).")


def frontier_rows(metrics: Mapping[str, Any]) -> list[list[str]]:
    """The frontier's table as text cells, one row per method and budget: the method, then
    :data:`FRONTIER_COLUMNS` (escaped for HTML, and plain text in Markdown)."""
    methods = metrics.get("methods")
    rows = []
    for name, entries in (methods.items() if isinstance(methods, Mapping) else ()):
        for entry in entries if isinstance(entries, Sequence) else ():
            row = [_e(name)]
            for _, key, kind in FRONTIER_COLUMNS:
                value = entry.get(key)
                if kind == "budget":
                    row.append(_e(f"{value:g}") if _number(value) is not None else DASH)
                elif kind == "yes/NO":
                    row.append("yes" if value else "NO")
                else:
                    row.append(format_value(value, kind))
            rows.append(row)
    return rows


def frontier_references(metrics: Mapping[str, Any]) -> str:
    """The label-only floors and clean ceilings every frontier entry is read against, in a sentence."""
    refs = metrics.get("references", {}) if isinstance(metrics.get("references"), Mapping) else {}

    def ref(key: str, kind: str = "float") -> str:
        return format_value(refs.get(key), kind)

    return (f"Label-only floors: decoder SSIM {ref(floor_of(DECODER_SSIM))}, re-identification "
            f"top-1 {ref(REID_FLOOR_TOP1, 'pct')} (top-5 {ref(REID_FLOOR_TOP5, 'pct')}), "
            f"attribute {ref(ATTRIBUTE_LABEL_FLOOR, 'pct')} (chance {ref(ATTRIBUTE_CHANCE, 'pct')}), "
            f"dCor {ref(floor_of(DCOR))}. Clean ceilings: decoder SSIM {ref(ceiling_of(DECODER_SSIM))}, "
            f"attribute {ref(ATTRIBUTE_CLEAN, 'pct')}; the identity row is the release of the clean image.")


def _frontier_section(metrics: Mapping[str, Any]) -> str:
    """``scl bench privacy``: the verdict per budget, every method's entries and the references."""
    rows = frontier_rows(metrics)
    if not rows:
        return ""
    verdict = "".join(f'<li class="{"met" if met else "notmet"}">{_e(text)}</li>'
                      for text, met in verdict_lines(metrics))
    cells = [[(f'<span style="white-space:nowrap">{row[0]}</span>', "")]
             + [('<span class="notmet">NO</span>' if cell == "NO" else cell, "num") for cell in row[1:]]
             for row in rows]
    header = [("method", False)] + [(title, True) for title, _, _ in FRONTIER_COLUMNS]
    return (
        "<h2>Privacy–utility frontier</h2>"
        f'<p class="note">Clean test accuracy {format_value(metrics.get("accuracy_clean"), "pct")}; attack budget '
        f'{_e(metrics.get("attack_budget", "?"))}. Every method is trained within each budget (or, for plain noise, '
        "calibrated to it) on the same validation split, and scored by the same attackers on the same test "
        "split. The verdict compares scl's label-free release with every method that is not scl's and was within "
        f"the budget on validation. {_e(FRONTIER_READING)}</p>"
        f"<ul>{verdict}</ul>" + _table(header, cells) + f'<p class="note">{frontier_references(metrics)}</p>'
    )


def _targets_section(metrics: Mapping[str, Any]) -> str:
    targets = metrics.get("targets")
    if not isinstance(targets, Sequence) or isinstance(targets, (str, bytes)) or not targets:
        return ""
    rows = []
    met_count = 0
    for item in targets:
        if not isinstance(item, Mapping):
            continue
        met = item.get("met")
        if met is True:
            mark = '<span class="met">✓ met</span>'
            met_count += 1
        elif met is False:
            mark = '<span class="notmet">✗ not met</span>'
        else:
            mark = DASH
        rows.append([
            (_e(item.get("name", DASH)), ""),
            (format_value(item.get("value"), "auto"), "num"),
            (format_value(item.get("target"), "auto"), "num"),
            (mark, ""),
        ])
    if not rows:
        return ""
    header = [("Target", False), ("Value", True), ("Goal", True), ("Result", False)]
    summary = f'<p class="note">{met_count} of {len(rows)} targets met.</p>'
    return "<h2>Targets</h2>" + _table(header, rows) + summary


def _time_section(metrics: Mapping[str, Any]) -> str:
    seconds = metrics.get("seconds")
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
        seconds = {"total": seconds}
    if not isinstance(seconds, Mapping) or not seconds:
        return ""
    rows = [[(_label(k), ""), (_seconds(v), "num")] for k, v in seconds.items()]
    numbers = [_number(v) for v in seconds.values()]
    with_total = "total" not in seconds and len(seconds) > 1 and None not in numbers
    if with_total:
        rows.append([("total", ""), (_seconds(sum(n or 0.0 for n in numbers)), "num")])
    table = _table([("Step", False), ("Wall time", True)], rows,
                   last_row_class="total" if with_total else "")
    return "<h2>Time</h2>" + table


def _noise_section(config: Mapping[str, Any]) -> str:
    """Where inference noise comes from (``scl.random.describe()``), and whether this run's numbers
    were drawn from it or, reproducibly, inside ``scl.deterministic``."""
    from scl.random import describe

    d = describe()
    reproducible = config.get("reproducible")
    if reproducible is True:
        run = ("This run drew its evaluation noise inside <code>scl.deterministic(seed)</code> "
               "(<code>reproducible: true</code>) so that its numbers reproduce; a release "
               "(<code>scl obfuscate</code>, an exported model's <code>noise</code> input) draws from "
               "the cipher stream below.")
    elif reproducible is False:
        run = "This run drew its evaluation noise from the cipher stream below."
    else:
        run = ""
    keys = ("algorithm", "library", "key", "uniforms", "normals", "training")
    rows = [[(_label(k), ""), (_e(d[k]), "")] for k in keys]
    return ("<h2>Noise source</h2>" + (f'<p class="note">{run}</p>' if run else "")
            + _table([("Inference noise", False), ("scl.random.describe()", False)], rows))


def _detection_section(metrics: Mapping[str, Any]) -> str:
    maps = {k: metrics.get(k) for k in ("map", "map50", "map75") if k in metrics}
    if not maps:
        return ""
    titles = {"map": "mAP@[.5:.95]", "map50": "mAP@.5", "map75": "mAP@.75"}
    as_dicts = {k: (v if isinstance(v, Mapping) else {"value": v}) for k, v in maps.items()}
    modes: list[str] = []
    for key in _ACCURACY_ORDER:
        if any(key in d for d in as_dicts.values()):
            modes.append(key)
    for d in as_dicts.values():
        modes += [m for m in d if m not in modes]
    header = [("Mode", False)] + [(_e(titles[k]), True) for k in as_dicts]
    rows = [[(_e(m), "")] + [(format_value(d.get(m)), "num") for d in as_dicts.values()] for m in modes]
    return "<h2>Detection</h2>" + _table(header, rows)


def _federated_section(metrics: Mapping[str, Any]) -> str:
    if pipeline_of(metrics) != "federated":
        return ""
    parts = ["<h2>Federated learning</h2>"]
    if "engine" in metrics:
        parts.append(f"<p>Engine: <strong>{format_value(metrics.get('engine'))}</strong></p>")
    stages = metrics.get("stages")
    if isinstance(stages, Sequence) and not isinstance(stages, (str, bytes)):
        dict_stages = [s for s in stages if isinstance(s, Mapping)]
        columns: list[str] = []
        for stage in dict_stages:
            columns += [k for k in stage if k not in columns]
        if dict_stages and columns:
            def kind(column: str) -> str:
                return "pct" if "acc" in column.lower() else "auto"

            header = [(_label(c).capitalize(), c not in ("name", "stage", "engine"))
                      for c in columns]
            rows = []
            for stage in dict_stages:
                row = []
                for c in columns:
                    value = stage.get(c)
                    row.append((format_value(value, kind(c)), "num" if _number(value) is not None else ""))
                rows.append(row)
            parts.append(_table(header, rows))
    return "".join(parts)


_SHOWN_KEYS = {"dataset", "num_classes", "accuracy", "accuracy_mean8", "privacy", "targets", "utility",
               "seconds", "map", "map50", "map75", "engine", "stages", "date", "methods", "verdict",
               "references", "accuracy_clean", "attack_budget", "budgets", "pipeline"}


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out.append((prefix, value))


def _other_section(metrics: Mapping[str, Any]) -> str:
    flat: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        if key not in _SHOWN_KEYS:
            _flatten(str(key), value, flat)
    if not flat:
        return ""
    rows = [[(_e(k), ""), (format_value(v, "auto"), "num")] for k, v in flat[:300]]
    more = f'<p class="note">… and {len(flat) - 300} more in metrics.json.</p>' \
        if len(flat) > 300 else ""
    return "<h2>Other measurements</h2>" + _table([("Key", False), ("Value", True)], rows) + more


def _caption(stem: str, captions: Mapping[str, str]) -> str:
    """The caption for a figure: exact stem, else the longest key the stem starts with, else ""."""
    if stem in captions:
        return captions[stem]
    prefixes = [k for k in captions if stem.startswith(k + "_") or stem.startswith(k + "-")]
    return captions[max(prefixes, key=len)] if prefixes else ""


_FIGURE_ORDER = ("samples", "client_samples", "images", "reconstructions", "training_curves", "curves",
                 "utility_budget", "selection_maps", "selection", "tradeoff", "tradeoff_curve",
                 "accuracy_vs_share", "detections", "boxes")


def _figures_section(run_dir: Path, captions: Mapping[str, str]) -> str:
    folder = run_dir / "figures"
    if not folder.is_dir():
        return ""
    files = [p for p in folder.glob("*.png") if p.is_file() and not p.name.startswith(".")]
    if not files:
        return ""
    rank = {stem: i for i, stem in enumerate(_FIGURE_ORDER)}
    files.sort(key=lambda p: (rank.get(p.stem, len(rank)), p.name))
    parts = ["<h2>Figures</h2>"]
    for file in files:
        caption = _e(_caption(file.stem, captions))
        name = _e(file.stem.replace("_", " "))
        src = _e("figures/" + quote(file.name))
        text = f"<strong>{name}</strong>: {caption}" if caption else f"<strong>{name}</strong>"
        parts.append(
            f'<figure><img src="{src}" alt="{caption or name}">'
            f"<figcaption>{text}</figcaption></figure>"
        )
    return "".join(parts)


def _files_section(run_dir: Path) -> str:
    entries = []
    for relative in ["config.json", "metrics.json", "log.txt"]:
        if (run_dir / relative).is_file():
            entries.append(relative)
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir():
        entries += [f"checkpoints/{p.name}" for p in sorted(checkpoints.glob("*.safetensors"))]
    if not entries:
        return ""
    items = []
    for relative in entries:
        size = (run_dir / relative).stat().st_size
        if size >= 1e6:
            human = f"{size / 1e6:.1f} MB"
        elif size >= 1e3:
            human = f"{size / 1e3:.1f} kB"
        else:
            human = f"{size} B"
        items.append(f'<li><a href="{_e(quote(relative))}"><code>{_e(relative)}</code></a> '
                     f"({human})</li>")
    return "<h2>Files</h2><ul>" + "".join(items) + "</ul>"


def _date(run_dir: Path, metrics: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    for source in (metrics, config):
        for key in ("date", "created", "started"):
            if isinstance(source.get(key), str) and source[key]:
                return source[key]
    stamp = (run_dir / "metrics.json").stat().st_mtime
    return _dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


# --------------------------------------------------------------------------------------------
# public

#: The pipelines whose runs the report lays out (``metrics["pipeline"]``).
def _utility_name(metrics: Mapping[str, Any]) -> str:
    return "mAP@.5" if pipeline_of(metrics) == "detection" else "accuracy"


def pipeline_of(metrics: Mapping[str, Any]) -> str:
    """Which pipeline wrote a run: its ``metrics["pipeline"]``. Runs of earlier versions have no
    such field; theirs is told from the keys only they write (detection's ``map``, federated's
    ``engine`` or ``stages``, the benchmark's ``methods``), else classification."""
    from scl.pipelines import MODULES

    recorded = metrics.get("pipeline")
    if recorded in MODULES:
        return str(recorded)
    if "map" in metrics:
        return "detection"
    if "engine" in metrics or "stages" in metrics:
        return "federated"
    if "methods" in metrics and "verdict" in metrics:
        return "bench_privacy"
    return "classification"


def write_report(
    run_dir: str | os.PathLike[str],
    *,
    captions: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Path:
    """Write ``run_dir/report.html`` from ``config.json``, ``metrics.json`` and ``figures/*.png``.

    Args:
        run_dir: a run folder written by an scl command.
        captions: figure captions keyed by file stem, on top of :data:`CAPTIONS` and of the
            ``CAPTIONS`` of the pipeline that wrote the run (:func:`pipeline_of`).
        name: the run's name to show (default: the folder's name; a pipeline writing into a
            temporary folder passes the final name).

    Returns:
        The path of ``report.html``.

    Raises:
        SCLError: ``config.json`` or ``metrics.json`` is missing, not JSON or not an object.

    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SCLError(f"cannot write the report: run folder {run_dir} does not exist")
    config = _read_json(run_dir / "config.json")
    metrics = _read_json(run_dir / "metrics.json")
    from scl import pipelines

    all_captions = {**CAPTIONS, **pipelines.get(pipeline_of(metrics)).CAPTIONS, **(captions or {})}

    dataset = metrics.get("dataset", config.get("dataset"))
    dataset_text = str(dataset) if dataset not in (None, "") else "unknown data set"
    date = _date(run_dir, metrics, config)
    meta = [f"Data set: <strong>{_e(dataset_text)}</strong>"]
    if _number(metrics.get("num_classes")) is not None:
        meta.append(f"{format_value(metrics['num_classes'], 'int')} classes")
    meta.append(f"run {_e(date)}")
    meta.append(f"folder <code>{_e(name or run_dir.resolve().name)}</code>")

    config_text = json.dumps(config, indent=2, ensure_ascii=False, default=str)
    # a benchmark run (``scl bench privacy``) has no single release: its frontier replaces the sections
    # of an experiment, which would only say that nothing was recorded
    bench = pipeline_of(metrics) == "bench_privacy"
    title = "scl bench privacy" if bench else "scl run report"
    body = [
        f"<h1>{title}: {_e(dataset_text)}</h1>",
        f'<p class="meta">{" · ".join(meta)}</p>',
        "" if bench else _accuracy_section(metrics),
        _detection_section(metrics),
        _federated_section(metrics),
        _budget_section(metrics),
        "" if bench else _privacy_section(metrics),
        _frontier_section(metrics),
        _targets_section(metrics),
        _time_section(metrics),
        _noise_section(config),
        _other_section(metrics),
        _figures_section(run_dir, all_captions),
        "<h2>Configuration</h2>",
        f"<pre>{_e(config_text)}</pre>",
        _files_section(run_dir),
    ]
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>scl report: {_e(dataset_text)} ({_e(date)})</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(part for part in body if part)
        + "\n</main>\n</body>\n</html>\n"
    )
    path = run_dir / "report.html"
    with atomic_write(path, "wb") as handle:
        handle.write(page.encode("utf-8"))
    return path
