"""Figures for run folders: image grids, training curves, selection maps, trade-off curves.

Every function draws one PNG, writes it atomically (an interrupted run never leaves half a file)
and returns its :class:`~pathlib.Path`. Matplotlib is imported inside the functions, and only its
object-oriented API is used: figures are ``matplotlib.figure.Figure`` objects rendered by the
Agg canvas, never registered with pyplot. So importing :mod:`scl` stays cheap, nothing needs a
display, and the caller's backend (a notebook's, say) is neither switched nor needed.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from scl.errors import SCLError, ShapeError
from scl.io import atomic_write
from scl.metrics import DECODER_SSIM, LEAKS, STAGE_RELEASES, floor_of

if TYPE_CHECKING:
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

__all__ = [
    "accuracy_vs_share",
    "boxes_overlay",
    "frontier",
    "image_grid",
    "selection_maps",
    "tradeoff_curve",
    "training_curves",
]

_DPI = 100
_MAP_CMAP = "viridis"


# --------------------------------------------------------------------------------------------
# helpers


def _new_figure(width: float, height: float) -> Figure:
    """A figure that is not registered with pyplot (no global state, no display needed)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _save(fig: Figure, path: str | os.PathLike[str], *, tight: bool = False) -> Path:
    """Render ``fig`` to PNG in memory, then write it atomically to ``path``. ``tight``: grow or
    crop the canvas to what is drawn (labels that overflow the figure are kept)."""
    path = Path(path)
    buffer = io.BytesIO()
    try:
        if tight:
            fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight", pad_inches=0.1)
        else:
            fig.savefig(buffer, format="png", dpi=_DPI)
    finally:
        fig.clear()
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    """Detached float32 CPU copy of a tensor or array-like."""
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise SCLError(f"{name} must be a tensor or array, but got {type(value).__name__}") from err
    return tensor.detach().to(device="cpu", dtype=torch.float32)


def _percent_axis(axis: Any) -> None:
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(xmax=1.0))


# --------------------------------------------------------------------------------------------
# image grid


def _prepare_row(images: torch.Tensor, name: str) -> tuple[torch.Tensor, str, bool]:
    """Turn ``Tensor[N, C, H, W]`` into displayable ``Tensor[N, H, W]`` or ``Tensor[N, H, W, 3]``.

    Returns the images, the row label and whether the images are greyscale.
    """
    if images.dim() == 3:  # Tensor[N, H, W]: one channel
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise ShapeError(
            f"image_grid row {name!r} must be Tensor[N, C, H, W], but got shape "
            f"{tuple(images.shape)}"
        )
    channels = images.shape[1]
    if channels == 1:
        return images[:, 0].clamp(0.0, 1.0), name, True
    if channels == 3:
        return images.permute(0, 2, 3, 1).clamp(0.0, 1.0), name, False
    # An activation with k channels: mean over channels, min-max normalised per image.
    mean = images.mean(dim=1)
    flat = mean.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1)
    scaled = (mean - low) / (high - low).clamp_min(1e-12)
    return scaled, f"{name}\n(mean of {channels} ch.,\nmin-max per image)", True


def image_grid(
    rows: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    max_images: int = 8,
    title: str | None = None,
) -> Path:
    """Draw one row of images per entry of ``rows``, labelled on the left.

    Args:
        rows: row label (``"clean"``, ``"hard"``, ``"soft"``, ``"reconstructed"``, ...) to
            ``Tensor[N, C, H, W]`` (``Tensor[N, H, W]`` is read as one channel). ``C == 1`` is
            drawn in greyscale and ``C == 3`` as RGB, both clipped to [0, 1]. Any other channel
            count (an obfuscated activation) is drawn as the per-pixel mean over channels,
            min-max normalised per image; the row label says so.
        path: where the PNG goes.
        max_images: at most this many columns (the first images of each row).
        title: optional title above the grid.

    Returns:
        ``Path(path)``.

    """
    if not rows:
        raise SCLError("image_grid needs at least one row, but got an empty mapping")
    if max_images < 1:
        raise SCLError(f"max_images must be at least 1, but got {max_images}")
    prepared = []
    for name, images in rows.items():
        tensor = _as_tensor(images, f"image_grid row {name!r}")
        shown, label, grey = _prepare_row(tensor[:max_images], str(name))
        prepared.append((shown, label, grey))
    columns = max(1, max(len(shown) for shown, _, _ in prepared))
    # One axes for the whole grid (fast: no per-image axes): each image is placed by its
    # extent in a cell one unit wide and height/width units high; rows keep their own aspect.
    gap = 0.08
    heights = [
        (shown.shape[1] / shown.shape[2]) if len(shown) else 1.0 for shown, _, _ in prepared
    ]
    tops = [sum(heights[:r]) + gap * r for r in range(len(prepared))]
    total_height = tops[-1] + heights[-1]
    total_width = columns + gap * (columns - 1)
    cell = 1.2
    fig = _new_figure(1.7 + cell * total_width, 0.3 + cell * total_height + (0.3 if title else 0))
    ax = fig.subplots()
    for (shown, _, grey), top, height in zip(prepared, tops, heights, strict=True):
        for c in range(len(shown)):
            left = c * (1 + gap)
            extent = (left, left + 1, top + height, top)
            image = shown[c].numpy()
            if grey:
                ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest",
                          extent=extent)
            else:
                ax.imshow(image, interpolation="nearest", extent=extent)
    ax.set_xlim(0, total_width)
    ax.set_ylim(total_height, 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([top + h / 2 for top, h in zip(tops, heights, strict=True)],
                  [label for _, label, _ in prepared], fontsize=10)
    ax.tick_params(axis="y", length=0, pad=6)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title)
    # the equal-aspect grid can leave long row labels ("white-box, from gated") outside the figure
    return _save(fig, path, tight=True)


# --------------------------------------------------------------------------------------------
# training curves


def _is_accuracy(metric: str) -> bool:
    return "acc" in str(metric).lower()


def training_curves(
    history: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike[str],
) -> Path:
    """One panel per training stage, one line per metric against the epoch.

    Args:
        history: stage (``"base"``, ``"stage1"``, ``"stage2"``, ...) to metric name to one value
            per epoch, e.g. ``{"base": {"loss": [...], "accuracy": [...]}}``. Metrics whose name
            contains ``"acc"`` are drawn as percentages on a right-hand axis so that a loss and
            an accuracy can share a panel.
        path: where the PNG goes.

    Returns:
        ``Path(path)``.

    """
    if not history:
        raise SCLError("training_curves needs at least one stage, but got an empty history")
    from matplotlib import colormaps

    palette = cast("Sequence[Any]", cast("ListedColormap", colormaps["tab10"]).colors)  # a tuple of RGB tuples
    metric_names: list[str] = []
    for metrics in history.values():
        for metric in metrics:
            if metric not in metric_names:
                metric_names.append(metric)
    colour = {m: palette[i % len(palette)] for i, m in enumerate(metric_names)}

    from matplotlib.ticker import MaxNLocator

    stages = list(history.items())
    fig = _new_figure(max(4.5, 4.0 * len(stages)), 3.6)
    axes = fig.subplots(1, len(stages), squeeze=False)[0]
    legend: dict[str, Any] = {}
    for ax, (stage, metrics) in zip(axes, stages, strict=True):
        ax.set_title(str(stage))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        right = None
        left_metrics = []
        for metric, values in metrics.items():
            ys = [float("nan") if v is None else float(v) for v in values]
            if not ys:
                continue
            xs = list(range(1, len(ys) + 1))
            marker = "o" if len(ys) <= 30 else None
            target = ax
            if _is_accuracy(metric):
                if right is None:
                    right = ax.twinx()
                    _percent_axis(right.yaxis)
                    right.set_ylabel("accuracy")
                target = right
            else:
                left_metrics.append(metric)
            (line,) = target.plot(xs, ys, marker=marker, ms=3, color=colour[metric], label=metric)
            legend.setdefault(str(metric), line)
        if left_metrics:
            ax.set_ylabel("loss" if all("loss" in m for m in left_metrics) else "value")
        elif right is not None:
            ax.set_yticks([])
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    if legend:
        # One legend for all panels (colours are consistent), below them, never over a line.
        fig.legend(list(legend.values()), list(legend.keys()), loc="outside lower center",
                   ncol=min(len(legend), 6), frameon=False, fontsize=9)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# selection maps


def selection_maps(
    values: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Draw the learned selection tensors π_c (values in [0, 1]) on a fixed 0..1 colour scale.

    Args:
        values: ``Tensor[C, S...]`` with ``S`` one of ``(H, W)`` and ``(1, H, W)`` (one map per
            class), ``(K, H, W)`` (the mean over the K channels is shown), ``(K,)`` or
            ``(K, 1, 1)`` (per-channel values: a C×K heatmap) or ``()``, ``(1,)``, ``(1, 1, 1)``
            (one scalar per class: a bar chart).
        path: where the PNG goes.
        class_names: optional names of the C classes.

    Returns:
        ``Path(path)``.

    """
    tensor = _as_tensor(values, "values")
    if tensor.dim() == 0:
        raise ShapeError("selection_maps needs Tensor[C, S...], but got a scalar")
    num_classes = tensor.shape[0]
    if class_names is not None and len(class_names) != num_classes:
        raise SCLError(
            f"class_names must have one name per class ({num_classes}), but got "
            f"{len(class_names)}"
        )
    names = [str(n) for n in class_names] if class_names is not None else [
        str(i) for i in range(num_classes)
    ]
    # Drop trailing singleton spatial dimensions: (K, 1, 1) is a per-channel vector.
    if tensor.dim() == 4 and tensor.shape[-2:] == (1, 1):
        tensor = tensor[..., 0, 0]
    elif tensor.dim() == 3 and tensor.shape[-2:] == (1, 1):
        tensor = tensor[..., 0, 0].unsqueeze(1)
    if tensor.dim() == 2 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.dim() > 4:
        raise ShapeError(
            f"selection_maps needs Tensor[C, S...] with S of at most 3 dimensions, but got shape "
            f"{tuple(values.shape)}"
        )

    note = ""
    if tensor.dim() == 4:
        if tensor.shape[1] > 1:
            note = f" (mean over {tensor.shape[1]} channels)"
        tensor = tensor.mean(dim=1)

    if tensor.dim() == 1:  # one scalar per class
        fig = _new_figure(max(4.0, 0.45 * num_classes + 1.5), 3.2)
        ax = fig.subplots()
        ax.bar(range(num_classes), tensor.numpy(), color="#4c72b0")
        crowded = num_classes > 8 and max(len(n) for n in names) > 2
        ax.set_xticks(range(num_classes), names, rotation=45 if crowded else 0)
        ax.set_ylim(0.0, 1.0)
        ax.set_ylabel(r"$\pi_c$")
        ax.set_xlabel("class")
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_title("selection weight per class")
        return _save(fig, path)

    if tensor.dim() == 2:  # Tensor[C, K]: per-channel values
        channels = tensor.shape[1]
        fig = _new_figure(max(4.5, 0.25 * channels + 2.5), max(2.5, 0.35 * num_classes + 1.2))
        ax = fig.subplots()
        image = ax.imshow(
            tensor.numpy(), vmin=0.0, vmax=1.0, cmap=_MAP_CMAP, aspect="auto",
            interpolation="nearest",
        )
        ax.set_yticks(range(num_classes), names)
        ax.set_xlabel("channel")
        ax.set_ylabel("class")
        ax.set_title("selection weight per class and channel")
        fig.colorbar(image, ax=ax, label=r"$\pi_c$")
        return _save(fig, path)

    # Tensor[C, H, W]: one map per class.
    columns = min(num_classes, 5)
    rows = math.ceil(num_classes / columns)
    fig = _new_figure(1.7 * columns + 1.0, 1.8 * rows + 0.5)
    axes = fig.subplots(rows, columns, squeeze=False)
    mappable: AxesImage | None = None
    for index in range(rows * columns):
        ax = axes[index // columns][index % columns]
        ax.set_xticks([])
        ax.set_yticks([])
        if index >= num_classes:
            ax.set_axis_off()
            continue
        mappable = ax.imshow(
            tensor[index].numpy(), vmin=0.0, vmax=1.0, cmap=_MAP_CMAP, interpolation="nearest"
        )
        ax.set_title(names[index], fontsize=10)
    fig.colorbar(cast("AxesImage", mappable), ax=axes, label=r"$\pi_c$", shrink=0.9)  # set: num_classes >= 1
    fig.suptitle(rf"learned selection maps $\pi_c${note}")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# accuracy / privacy trade-off


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def tradeoff_curve(points: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Accuracy against reconstruction quality, one point per privacy weight λ.

    Args:
        points: one mapping per λ with keys ``lam``, ``accuracy`` (fraction) and
            ``decoder_ssim``; optional ``decoder_ssim_label_floor`` (drawn as a vertical dashed
            line: the SSIM a decoder reaches from the label alone) and ``clean_accuracy`` (a
            horizontal dashed line). x is the decoder SSIM (lower = more private).
        path: where the PNG goes.

    Returns:
        ``Path(path)``.

    """
    usable = []
    for i, point in enumerate(points):
        missing = [k for k in ("lam", "accuracy", DECODER_SSIM) if k not in point]
        if missing:
            raise SCLError(f"tradeoff_curve point {i} lacks {', '.join(missing)}: got {point}")
        x, y = _finite(point[DECODER_SSIM]), _finite(point["accuracy"])
        if x is not None and y is not None:
            usable.append((float(point["lam"]), x, y))
    usable.sort()
    fig = _new_figure(5.6, 4.2)
    ax = fig.subplots()
    if usable:
        xs = [x for _, x, _ in usable]
        ys = [y for _, _, y in usable]
        ax.plot(xs, ys, "-o", color="#4c72b0", ms=5, label="obfuscated")
        for lam, x, y in usable:
            ax.annotate(f"λ={lam:g}", (x, y), textcoords="offset points", xytext=(5, 5),
                        fontsize=8)
    floors = [f for f in (_finite(p.get(floor_of(DECODER_SSIM))) for p in points) if f is not None]
    if floors:
        floor = sum(floors) / len(floors)
        ax.axvline(floor, ls="--", color="#c44e52", lw=1.2, label=f"label-only floor ({floor:.3f})")
    cleans = [c for c in (_finite(p.get("clean_accuracy")) for p in points) if c is not None]
    if cleans:
        clean = sum(cleans) / len(cleans)
        ax.axhline(clean, ls="--", color="#55a868", lw=1.2, label=f"clean accuracy ({clean:.1%})")
    _percent_axis(ax.yaxis)
    ax.set_xlabel("decoder SSIM (lower = more private)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy vs. privacy")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.15, y=0.1)
    ax.legend(loc="best", fontsize=8, frameon=False)
    return _save(fig, path)


def accuracy_vs_share(
    series: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike[str]
) -> Path:
    """Test accuracy against the share ``p`` of clients that send clean data, one line per series.

    Args:
        series: series name to ``(p, accuracy)`` pairs, both fractions.
        path: where the PNG goes.

    Returns:
        ``Path(path)``.

    """
    if not series:
        raise SCLError("accuracy_vs_share needs at least one series, but got an empty mapping")
    fig = _new_figure(5.6, 4.0)
    ax = fig.subplots()
    for name, pairs in series.items():
        ordered = sorted((float(p), float(a)) for p, a in pairs)
        if not ordered:
            continue
        ax.plot([p for p, _ in ordered], [a for _, a in ordered], "-o", ms=4, label=str(name))
    _percent_axis(ax.xaxis)
    _percent_axis(ax.yaxis)
    ax.set_xlabel("clean share p")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy vs. share of clean data")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, frameon=False)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# detection


def boxes_overlay(
    images: torch.Tensor,
    boxes: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    path: str | os.PathLike[str],
    *,
    scores: Sequence[torch.Tensor] | None = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Draw images with their boxes, one colour per class.

    Args:
        images: ``Tensor[N, C, H, W]`` with C = 1 or 3 (others: mean over channels), in [0, 1].
        boxes: N tensors ``Tensor[K_i, 4]`` of ``(x1, y1, x2, y2)`` pixel coordinates.
        labels: N tensors ``Tensor[K_i]`` of class indices.
        path: where the PNG goes.
        scores: optional N tensors ``Tensor[K_i]`` of confidences, printed beside the label.
        class_names: optional class names indexed by label.
        title: optional title.

    Returns:
        ``Path(path)``.

    """
    tensor = _as_tensor(images, "images")
    shown, _, grey = _prepare_row(tensor, "images")
    count = len(shown)
    if len(boxes) != count or len(labels) != count:
        raise SCLError(
            f"boxes and labels must hold one entry per image ({count}), but got "
            f"{len(boxes)} and {len(labels)}"
        )
    if scores is not None and len(scores) != count:
        raise SCLError(f"scores must hold one entry per image ({count}), but got {len(scores)}")
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    palette = cast("Sequence[Any]", cast("ListedColormap", colormaps["tab10"]).colors)  # a tuple of RGB tuples
    columns = max(1, min(count, 4))
    rows = max(1, math.ceil(count / columns))
    fig = _new_figure(2.6 * columns, 2.6 * rows + (0.4 if title else 0))
    axes = fig.subplots(rows, columns, squeeze=False)
    for index in range(rows * columns):
        ax = axes[index // columns][index % columns]
        ax.set_xticks([])
        ax.set_yticks([])
        if index >= count:
            ax.set_axis_off()
            continue
        image = shown[index].numpy()
        if grey:
            ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(image, interpolation="nearest")
        item_boxes = _as_tensor(boxes[index], "boxes").reshape(-1, 4)
        item_labels = _as_tensor(labels[index], "labels").reshape(-1).long()
        if len(item_labels) != len(item_boxes):
            raise SCLError(
                f"image {index}: {len(item_boxes)} boxes but {len(item_labels)} labels"
            )
        item_scores = None
        if scores is not None:
            item_scores = _as_tensor(scores[index], "scores").reshape(-1)
        for k, ((x1, y1, x2, y2), label) in enumerate(
            zip(item_boxes.tolist(), item_labels.tolist(), strict=True)
        ):
            colour = palette[label % len(palette)]
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2.0, ec=colour))
            if class_names is not None and 0 <= label < len(class_names):
                text = str(class_names[label])
            else:
                text = str(label)
            if item_scores is not None and k < len(item_scores):
                text += f" {float(item_scores[k]):.2f}"
            ax.text(x1, y1, text, fontsize=7, color="white", va="bottom",
                    bbox={"facecolor": colour, "edgecolor": "none", "pad": 1.0, "alpha": 0.85},
                    clip_on=True)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


#: The release each constrained stage shapes, for the budget figure and the report.
BUDGET_STAGES = STAGE_RELEASES


def budget_curves(
    utility: Mapping[str, Mapping[str, Any]],
    test_losses: Mapping[str, float],
    path: str | os.PathLike[str],
) -> Path:
    """The utility budget over training: the Lagrange multiplier and the validation accuracy loss
    per epoch of each constrained stage, the budget as a line and the test loss as a marker.

    Args:
        utility: ``metrics["utility"]``: per stage (``stage1``, ``soft``, ``gated``) a mapping with
            ``multiplier`` and ``validation_losses`` (one value per epoch), ``max_accuracy_loss``
            and ``epoch`` (the epoch kept).
        test_losses: per stage, the test accuracy lost by its release, in points.
        path: where the PNG goes.
    """
    fig = _new_figure(10.0, 3.8)
    left, right = fig.subplots(1, 2)
    colours = {"stage1": "#4c72b0", "soft": "#dd8452", "gated": "#55a868"}
    budget, measure = None, "accuracy"
    for stage, record in utility.items():
        if not isinstance(record, Mapping) or "multiplier" not in record:
            continue
        measure = str(record.get("measure", measure))
        colour = colours.get(stage, "#8172b3")
        label = f"{stage} ({BUDGET_STAGES.get(stage, stage)} release)"
        epochs = range(1, len(record["multiplier"]) + 1)
        left.plot(list(epochs), record["multiplier"], color=colour, label=label)
        losses = record.get("validation_losses", [])
        right.plot(list(range(1, len(losses) + 1)), losses, color=colour, label=f"{label}, validation")
        kept = record.get("epoch")
        if isinstance(kept, int) and 1 <= kept <= len(losses):
            right.plot([kept], [losses[kept - 1]], "o", color=colour, ms=6)
        test = _finite(test_losses.get(stage))
        if test is not None and kept is not None:
            right.plot([kept], [test], "x", color=colour, ms=9, mew=2, label=f"{label}, test (kept epoch)")
        budget = _finite(record.get("max_loss", record.get("max_accuracy_loss")))
    if budget is not None:
        unit = "point" if budget == 1 else "points"
        right.axhline(budget, ls="--", color="#c44e52", lw=1.2, label=f"budget ({budget:g} {unit})")
    left.set_yscale("log")
    left.set_xlabel("epoch")
    left.set_ylabel("multiplier μ on the task loss")
    left.set_title("Lagrange multiplier (dual ascent)")
    right.set_xlabel("epoch")
    right.set_ylabel(f"{measure} lost vs clean (points)")
    right.set_title("validation loss against the budget")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    return _save(fig, path)


#: The frontier's method styles: scl's releases solid and bold, the baselines dashed.
_FRONTIER_STYLE = {
    "identity": ("#000000", "*"),
    "gaussian": ("#8c8c8c", "o"),
    "laplace": ("#b07aa1", "o"),
    "shredder": ("#937860", "s"),
    "cloak": ("#dd8452", "D"),
    "nopeek": ("#8172b3", "^"),
    "scl-hard": ("#4c72b0", "v"),
    "scl-soft": ("#64b5cd", "P"),
    "scl-gated": ("#55a868", "X"),
}
_FRONTIER_LABELS = {m.key: m.name for m in LEAKS}
_FRONTIER_PERCENT = {m.key for m in LEAKS if m.format == "pct"}


def frontier(
    methods: Mapping[str, Sequence[Mapping[str, Any]]],
    key: str,
    path: str | os.PathLike[str],
    *,
    clean_accuracy: float,
    floor: float | None = None,
    budgets: Sequence[float] = (),
) -> Path:
    """The privacy-utility frontier: test accuracy (x) against one privacy figure (y), one curve per
    method through its points at each budget (``scl bench privacy``).

    Args:
        methods: ``metrics["methods"]``: per method, entries with ``budget``, ``accuracy``
            (fraction), ``feasible`` (within the budget on validation) and ``key``.
        key: the figure on the y axis (``decoder_ssim`` or ``reid_top1``); lower is more private.
        path: where the PNG goes.
        clean_accuracy: N's clean test accuracy, drawn as a vertical line (the ceiling of utility).
        floor: the figure's label-only floor, drawn as a horizontal line.
        budgets: the budgets of the run; the x axis spans them (a release far below the largest
            budget is listed under the axes instead of squeezing the others into a corner).
    """
    fig = _new_figure(8.6, 4.8)
    ax = fig.subplots()
    widest = max([*budgets, 1.0])
    left = clean_accuracy - (widest + 3.0) / 100.0
    right = clean_accuracy + 0.01
    off_axis = []
    for name, entries in methods.items():
        points = sorted((float(e["accuracy"]), float(e[key]), bool(e.get("feasible", True))) for e in entries
                        if _finite(e.get(key)) is not None and _finite(e.get("accuracy")) is not None)
        if not points:
            continue
        colour, marker = _FRONTIER_STYLE.get(name, ("#4c72b0", "o"))
        shown = [p for p in points if p[0] >= left]
        right = max([right, *(p[0] + 0.005 for p in shown)])
        off_axis += [f"{name} {100 * a:.1f}%: {v:.3f}" for a, v, _ in points if a < left]
        scl_release = name.startswith("scl-")
        if shown:
            ax.plot([p[0] for p in shown], [p[1] for p in shown], ls="-" if scl_release else "--", marker=marker,
                    color=colour, lw=2.2 if scl_release else 1.2, ms=9 if name == "identity" else 6,
                    label=name if name != "identity" else "identity (no privacy)")
            hollow = [p for p in shown if not p[2]]
            if hollow:
                ax.plot([p[0] for p in hollow], [p[1] for p in hollow], "o", ms=12, mfc="none", mec="#c44e52",
                        mew=1.2)
    if floor is not None and _finite(floor) is not None:
        ax.axhline(float(floor), ls=":", color="#c44e52", lw=1.4, label=f"label-only floor ({float(floor):.3f})")
    ax.axvline(clean_accuracy, ls=":", color="#55a868", lw=1.4, label=f"clean accuracy ({clean_accuracy:.1%})")
    ax.plot([], [], "o", ms=12, mfc="none", mec="#c44e52", mew=1.2, label="not within its budget (validation)")
    ax.set_xlim(left, min(1.0, right) + 0.005)
    _percent_axis(ax.xaxis)
    if key in _FRONTIER_PERCENT:
        _percent_axis(ax.yaxis)
    label = _FRONTIER_LABELS.get(key, key)
    ax.set_xlabel("test accuracy of the task network on the release (right = more useful)")
    ax.set_ylabel(f"{label} (lower = more private)")
    ax.set_title(f"accuracy against {label}, one point per budget")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if off_axis:
        import textwrap

        note = "left of the axis (accuracy: value): " + ", ".join(off_axis)
        ax.text(0.0, -0.13, "\n".join(textwrap.wrap(note, 150)), transform=ax.transAxes, va="top", fontsize=7,
                color="#555555")
    return _save(fig, path, tight=True)
