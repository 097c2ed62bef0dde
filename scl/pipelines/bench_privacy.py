"""``scl bench privacy``: the privacy-utility frontier of scl against published baselines.

One run, one data set, one set of splits, one task network N and one attacker:

1. N trained on the task split (as ``scl demo`` does), frozen.
2. At each accuracy budget (``--budgets``, points of test accuracy a release may lose):
   - plain Gaussian and Laplace noise calibrated by bisection to lose at most the budget on the
     validation part of the obfuscator split (the part that measures every learned method's budget);
   - Shredder, Cloak and NoPeek (:mod:`scl.baselines`) trained within the budget on the obfuscator
     split by the same dual ascent as scl's stages (:func:`scl.pipelines.stages.train_within_budget`),
     each on its own paper's objective;
   - scl's stage 1 (hard release) and stage 2 (soft and gated label-free releases), exactly as
     ``scl demo --max-accuracy-loss B`` trains them.
3. The identity (no privacy), once: the attacks' ceilings.
4. Every release attacked with the run's attack suite (``attacks.budget``) on the attacker split,
   scored on the test split: decoder SSIM and PSNR, re-identification top-1 and top-5, attribute
   inference, dCor; beside the label-only floors and the clean ceilings, computed once.
5. A verdict per budget: does scl's label-free release (the better of soft and gated within the
   budget) leak least of all methods that are within it, and does it beat Cloak (the same layer
   without classes) on re-identification by more than two binomial standard errors?

The run folder holds ``metrics.json``, ``table.md``, ``figures/frontier_ssim.png``,
``figures/frontier_reid.png``, ``report.html``, ``config.json``, ``log.txt`` and N's checkpoint
(``checkpoints/network.safetensors``: pass it to ``--set network.checkpoint=...`` to reuse it).
"""

from __future__ import annotations

import contextlib
import html
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from scl.baselines import (
    Cloak,
    GaussianNoise,
    Identity,
    LaplaceNoise,
    LearnedBaseline,
    NoPeek,
    PlainNoise,
    Shredder,
)
from scl.errors import ConfigError, SCLError
from scl.io import atomic_write
from scl.metrics import DECODER_SSIM, REID_FLOOR_TOP1, REID_FLOOR_TOP5, REID_TOP1, floor_of, leak_keys
from scl.pipelines import classification as cls
from scl.pipelines import config as configuration
from scl.pipelines import engine
from scl.pipelines.config import ClassificationConfig, Shared, stage_patience
from scl.pipelines.stages import (
    BudgetResult,
    PrivacyObjective,
    UtilityBudget,
    budget_words,
    init_scale,
    run_noise,
    stage_generator,
    train_within_budget,
)
from scl.progress import make_progress
from scl.runs import RunLog, run_folder, write_log, write_results

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = [
    "CAPTIONS",
    "DEFAULT_BUDGETS",
    "NAME",
    "QUICK_BUDGETS",
    "LABEL_FREE",
    "METHODS",
    "TARGET_BUDGET",
    "markdown_table",
    "parse_budgets",
    "run",
    "train_baseline",
    "verdicts",
]

#: Every method of the frontier, in the order of its tables and legends.
METHODS = ("identity", "gaussian", "laplace", "shredder", "cloak", "nopeek", "scl-hard", "scl-soft", "scl-gated")
#: scl's releases that need no label at inference: what the verdict is about.
LABEL_FREE = ("scl-soft", "scl-gated")
#: The budgets of a run without ``--budgets``, in points of accuracy.
#: The name this pipeline records in ``metrics.json`` (:class:`scl.pipelines.Pipeline`).
NAME = "bench_privacy"
#: Its figure captions beyond the report's own (the frontier's figures are captioned by the report).
CAPTIONS: dict[str, str] = {}

DEFAULT_BUDGETS = (0.5, 1.0, 2.0, 5.0)
#: ``--quick`` without ``--budgets``: the two budgets the targets are about, so that the smoke test of
#: the whole sweep stays within 4 minutes on 2 cores (all four took 4 min 43 s there).
QUICK_BUDGETS = (1.0, 2.0)
#: The verdict's targets hold at every budget up to this many points.
TARGET_BUDGET = 2.0
#: What the learned baselines are (for the tables and the report).
DESCRIPTIONS = {
    "identity": "no obfuscation: the attacks' ceilings",
    "gaussian": "plain Gaussian noise, scale calibrated to the budget",
    "laplace": "plain Laplace noise, scale calibrated to the budget",
    "shredder": Shredder.description,
    "cloak": Cloak.description,
    "nopeek": NoPeek.description,
    "scl-hard": "scl, hard selection (needs the label at inference)",
    "scl-soft": "scl, soft selection (label-free)",
    "scl-gated": "scl, gated selection (label-free)",
}
#: The privacy figures of every entry (lower is more private).
FIGURES = leak_keys()


def parse_budgets(text: str | Sequence[float] | None, *, quick: bool = False) -> list[float]:
    """``"0.5,1,2,5"`` -> ``[0.5, 1.0, 2.0, 5.0]`` (sorted, unique); ``None``: :data:`DEFAULT_BUDGETS`
    (:data:`QUICK_BUDGETS` with ``quick``)."""
    if text is None:
        return list(QUICK_BUDGETS if quick else DEFAULT_BUDGETS)
    items = text.split(",") if isinstance(text, str) else list(text)
    values: list[float] = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ConfigError(
                f"--budgets takes points of accuracy separated by commas, e.g. 0.5,1,2,5, but got {item!r}"
            ) from None
        if not 0 <= value < 100 or math.isnan(value):
            raise ConfigError(f"every budget must be a number of points in [0, 100), but got {item!r}")
        values.append(value)
    if not values:
        raise ConfigError("--budgets needs at least one budget, e.g. --budgets 1")
    return sorted(set(values))


def build_config(
    *, quick: bool = False, config_file: str | Path | None = None, assignments: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> ClassificationConfig:
    """The classification experiment's config (``scl demo``'s defaults, ``--quick``, the file, ``--set``):
    N, scl's stages and the attacks are trained exactly as there. ``--quick`` keeps N's full training
    (about 15 s on 2 cores): every method of the frontier is read by N, and at ``scl demo --quick``'s 6
    epochs N is right on two thirds of the clean digits, which would make the whole frontier noise."""
    quick_overrides = {k: v for k, v in configuration.QUICK.items() if k != "network"}
    return configuration.build_as(ClassificationConfig, quick=quick, config_file=config_file,
                                  assignments=assignments, overrides=overrides, quick_overrides=quick_overrides)


# -- training the baselines -----------------------------------------------------------------------
def train_baseline(
    method: LearnedBaseline,
    budget: UtilityBudget,
    train: Sequence[Tensor],
    *,
    num_classes: int,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    progress: Progress | None = None,
    description: str = "baseline",
    patience: int | None = None,
) -> tuple[dict[str, list[float]], BudgetResult]:
    """Train a learned baseline within ``budget`` on ``train = (x, y)``, on its own objective
    (``method.objective``), by the dual ascent of scl's stages. ``y`` feeds only the task loss of
    the frozen network: the baseline itself never sees a label."""
    method.start(train[0])
    modules = method.modules_trained()
    parameters = [p for module in modules for p in module.parameters() if p.requires_grad]
    shape = tuple(train[0].shape[1:])
    objective = _ClassFree(method.objective, num_classes=num_classes, image_shape=shape)
    return train_within_budget(
        parameters, modules, lambda x, y: method.sample_with_distribution(x),  # type: ignore[arg-type,return-value]
        objective, budget, train, epochs=epochs, lr=lr, batch_size=batch_size, generator=generator,
        evaluate=lambda x, y: method(x), progress=progress, description=description, patience=patience,
    )


class _ClassFree(PrivacyObjective):
    """A privacy objective for a method without classes: every image is of its one class. scl's stages
    hand the objective the layer's selection (the labels); a baseline's layer has a single class, so
    Cloak's ``within`` is the bound on everything ``h`` carries about ``x`` (scl's objective for a
    one-class layer), not on what it carries beyond a class it never sees. The task loss still reads
    the labels, as it does for every method."""

    def term(
        self, x: Tensor, y: Tensor, h: Tensor, dist: torch.distributions.Distribution, attribute: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        return super().term(x, torch.zeros_like(y), h, dist, attribute)


def calibrate_noise(noise: type[PlainNoise], budget: UtilityBudget, generator: torch.Generator) -> tuple[float, float]:
    """The largest scale of ``noise`` that loses at most the budget on its validation split, by
    bisection on one fixed draw: ``(scale, validation loss in points)``."""
    def accuracy_of(noisy: Tensor) -> float:  # budget.loss releases its own validation images, budget.x
        return budget.clean - budget.loss(lambda x, y: noisy, draws=1) / 100.0

    scale, accuracy = noise.calibrate(budget.x, accuracy_of, budget.clean - budget.max_loss / 100.0,
                                      generator=generator)
    return scale, 100.0 * (budget.clean - accuracy)


# -- the run --------------------------------------------------------------------------------------
def _entry(
    budget: float, accuracy: float, clean: float, block: Mapping[str, Any], shared: Mapping[str, Any], **extra: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {"budget": budget, "accuracy": accuracy, "accuracy_loss": 100.0 * (clean - accuracy)}
    entry.update(extra)
    for key in FIGURES:
        if key in block:
            entry[key] = block[key]
    entry[floor_of(DECODER_SSIM)] = shared.get(floor_of(DECODER_SSIM))
    entry["reid_floor"] = block.get(REID_FLOOR_TOP1)
    entry[REID_FLOOR_TOP5] = block.get(REID_FLOOR_TOP5)
    return entry


class _Scorer:
    """Test accuracy and the attack suite for one release after another, with shared references."""

    def __init__(self, exp: cls.Experiment, progress: Progress | None, log: RunLog) -> None:
        self.exp, self.log = exp, log
        self.common = cls.attack_settings(exp, progress)
        self.first = True
        self.seconds: dict[str, float] = {}
        start = time.perf_counter()
        log(f"attack budget {cls.classification_config(exp).attacks.budget}: label-only floor and clean ceiling")
        self.shared, _ = cls.reference_attacks(exp, self.common)
        self.seconds["references"] = time.perf_counter() - start
        network = exp.network
        if network is None:
            raise SCLError("train the task network first")
        self.network = network
        test = exp.splits["test"]
        self.clean = engine.accuracy(engine.predict_proba(network, test.x), test.y)

    def __call__(self, method: str, budget: float, release: Callable[[Tensor, Tensor], Tensor],
                 **extra: Any) -> dict[str, Any]:
        test = self.exp.splits["test"]
        start = time.perf_counter()
        accuracy = engine.accuracy(engine.predict_proba(self.network, test.x, release, test.y), test.y)
        self.log(f"{method} at {budget:g} pt: test accuracy {100 * accuracy:.1f}%; attacks")
        block, refs, _ = cls.attack_release(self.exp, release, self.common, references=self.first)
        self.first = False
        self.shared.update(refs)
        for key in (REID_FLOOR_TOP1, REID_FLOOR_TOP5):  # the labels' floor: the same for every release
            self.shared.setdefault(key, block[key])
        self.seconds[f"attacks ({method} {budget:g})"] = time.perf_counter() - start
        entry = _entry(budget, accuracy, self.clean, block, self.shared, **extra)
        self.log(f"{method} at {budget:g} pt: re-identification {100 * entry.get(REID_TOP1, math.nan):.1f}%, "
                 f"decoder SSIM {entry.get(DECODER_SSIM, math.nan):.3f}")
        return entry


def _without_labels(module: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """``release(x, y)`` for a method that takes no label: the label is dropped before it."""

    def release(x: Tensor, y: Tensor) -> Tensor:
        return module(x)

    return release


#: The additive baselines' initial noise scale, as a fraction of scl's (``layer.init_scale``, the
#: pixels' standard deviation by default). From scl's own scale neither came within a 1-point budget
#: on the digits (Shredder gave up after 20 epochs 10.6 points out; Cloak from the mean image 10.3
#: points out after 71); from a tenth of it both start within the budget, and a stage never keeps
#: anything less private than its start.
BASELINE_INIT_FRACTION = 0.1


def _learned(method: str, exp: cls.Experiment, scale: float) -> LearnedBaseline:
    shape = exp.dataset.image_shape
    if method == "shredder":
        return Shredder(shape, init_scale=BASELINE_INIT_FRACTION * scale)
    if method == "cloak":
        return Cloak(shape, init_scale=BASELINE_INIT_FRACTION * scale, start_at="input")
    return NoPeek(exp.dataset.channels)


def baseline_lr(method: str, config: Shared) -> float:
    """The learning rate a learned baseline trains at.

    The additive ones (Shredder, Cloak) take scl's stage-1 rate scaled as their start is
    (``BASELINE_INIT_FRACTION * stage1.lr``): Adam moves each parameter by about the rate a step,
    and their noise starts at a tenth of scl's. At scl's own 0.03 on the digits at 0.5-2 points,
    both kept their start or an early epoch (0-4): every later epoch was over the budget. At 3e-3,
    at 2 points, Shredder kept epoch 53 (the SSIM of its test release to x 0.44, against 0.48 at
    0.03) and Cloak epoch 6 (0.60). NoPeek's parameters are a small network's weights, not noise on
    the pixels' scale: it keeps ``_NOPEEK_LR``."""
    if method == "nopeek":
        return _NOPEEK_LR
    return BASELINE_INIT_FRACTION * float(config.stage1.lr)


#: NoPeek's learning rate. On the digits at 2 points, 1e-2, 3e-3 and 1e-3 kept epochs 30, 14 and
#: 22, with a pixel correlation of release and x of 0.78, 0.67 and 0.68 (one seed each): no rate
#: clearly better.
_NOPEEK_LR = 1e-2


def run(
    config: Mapping[str, Any], out: Path, *, budgets: Sequence[float] = DEFAULT_BUDGETS, console: Any = None,
    show_progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """The whole benchmark into the run folder ``out``; returns ``(out, metrics)``."""
    config = ClassificationConfig.coerce(config)
    budgets = parse_budgets(list(budgets))
    log = RunLog(console)
    total = time.perf_counter()
    seconds: dict[str, float] = {}
    methods: dict[str, list[dict[str, Any]]] = {name: [] for name in METHODS}
    with run_folder(out) as folder, run_noise(config):
        progress = make_progress(show_progress, console)
        with progress if progress is not None else contextlib.nullcontext():
            exp = cls.prepare(config)
            log(f"data: {exp.dataset.name}, {len(exp.dataset)} images {exp.dataset.image_shape}, "
                + ", ".join(f"{k} {len(v)}" for k, v in exp.splits.items()))
            start = time.perf_counter()
            cls.train_network(exp, progress, log)
            network = exp.network
            assert network is not None  # train_network sets it
            seconds["network"] = time.perf_counter() - start
            score = _Scorer(exp, progress, log)
            log(f"clean test accuracy {100 * score.clean:.1f}%")
            methods["identity"].append(score("identity", 0.0, _without_labels(Identity()), feasible=True,
                                             validation_loss=0.0))
            train, (xv, yv) = cls.budget_splits(exp)
            train_xy = (train[0], train[1])
            init = init_scale(config.layer.init_scale, exp.dataset.x)
            for budget in budgets:
                log(f"budget {budget_words(budget)}")
                limit = UtilityBudget(budget, network, xv, yv)
                for method, noise in (("gaussian", GaussianNoise), ("laplace", LaplaceNoise)):
                    start = time.perf_counter()
                    scale, val_loss = calibrate_noise(noise, limit, stage_generator(config, 7))
                    seconds[f"train ({method} {budget:g})"] = time.perf_counter() - start
                    methods[method].append(score(method, budget, _without_labels(noise(scale)), scale=scale,
                                                 feasible=val_loss <= budget, validation_loss=val_loss))
                for method in ("shredder", "cloak", "nopeek"):
                    start = time.perf_counter()
                    torch.manual_seed(config.seed + 1)
                    learned = _learned(method, exp, init)
                    _, result = train_baseline(
                        learned, limit, train_xy, num_classes=exp.dataset.num_classes,
                        epochs=config.stage1.epochs,
                        lr=baseline_lr(method, config),
                        batch_size=config.batch_size, generator=stage_generator(config, 2), progress=progress,
                        description=f"{method} (budget {budget:g} pt)", patience=stage_patience(config),
                    )
                    log(result.message(method))
                    learned.eval()
                    seconds[f"train ({method} {budget:g})"] = time.perf_counter() - start
                    methods[method].append(score(method, budget, _without_labels(learned), feasible=result.feasible,
                                                 validation_loss=result.validation_loss, epoch=result.epoch))
                start = time.perf_counter()
                stages = _scl_stages(exp, budget, progress, log)
                seconds[f"train (scl {budget:g})"] = time.perf_counter() - start
                for method, (release, record) in stages.items():
                    methods[method].append(score(method, budget, release, feasible=bool(record["feasible"]),
                                                 validation_loss=float(record["validation_loss"]),
                                                 epoch=int(record["epoch"])))
        seconds.update(score.seconds)
        seconds["total"] = time.perf_counter() - total
        metrics = {
            "pipeline": NAME,
            "dataset": exp.dataset.name,
            "num_classes": exp.dataset.num_classes,
            "input_shape": list(exp.dataset.image_shape),
            "splits": {name: len(part) for name, part in exp.splits.items()},
            "attack_budget": config.attacks.budget,
            "budgets": budgets,
            "accuracy_clean": score.clean,
            "references": dict(score.shared),
            "methods": methods,
            "verdict": verdicts(methods, budgets, test_images=len(exp.splits["test"])),
            "seconds": seconds,
        }
        cls.save_checkpoints(cls.Experiment(config, exp.dataset, exp.splits, network=network), folder)
        write_outputs(folder, metrics, {**config, "bench": {"budgets": budgets, "methods": list(METHODS)}}, log,
                      name=Path(out).name)
    return out, metrics


def _scl_stages(
    exp: cls.Experiment, budget: float, progress: Progress | None, log: RunLog
) -> dict[str, tuple[Callable[[Tensor, Tensor], Tensor], dict[str, Any]]]:
    """Scl's stage 1 and stage 2 at ``budget``, as ``scl demo --max-accuracy-loss budget`` trains
    them: ``{"scl-hard": (release, budget record), "scl-soft": ..., "scl-gated": ...}``."""
    config = exp.config.updated({"utility": {"max_accuracy_loss": budget}})
    run = cls.Experiment(config, exp.dataset, exp.splits, network=exp.network)
    obfuscator = cls.train_stage1(run, progress, log)
    cls.train_stage2(run, obfuscator, progress, log=log)
    soft, gated, records = run.obfuscator, run.gated, run.metrics["utility"]
    if soft is None or gated is None:
        raise SCLError("scl's stage 2 did not produce its soft and gated releases")
    soft.eval()
    gated.eval()
    return {
        "scl-hard": (lambda x, y: soft(x, y), records["stage1"]),
        "scl-soft": (lambda x, y: soft(x), records["soft"]),
        "scl-gated": (lambda x, y: gated(x), records["gated"]),
    }


# -- the verdict ----------------------------------------------------------------------------------
def _at(entries: Sequence[Mapping[str, Any]], budget: float) -> Mapping[str, Any] | None:
    for entry in entries:
        if entry.get("budget") == budget:
            return entry
    return None


def verdicts(
    methods: Mapping[str, Sequence[Mapping[str, Any]]], budgets: Sequence[float], *, test_images: int
) -> list[dict[str, Any]]:
    """For each budget: scl's label-free release against every other method within the budget.

    The candidates are the releases within the budget on validation (``feasible``; the identity
    loses nothing, so it is within every budget). scl's release is the better of soft and gated on
    re-identification. It must leak least on re-identification top-1 and on decoder SSIM of every
    method that is not scl's (scl's own hard release needs the label and is shown, not compared),
    and beat Cloak on re-identification by more than two binomial standard errors of the
    difference on the ``test_images`` images. ``target``: the budget is one the targets hold at
    (up to :data:`TARGET_BUDGET` points).
    """
    rows = []
    n = max(int(test_images), 1)
    for budget in budgets:
        row: dict[str, Any] = {"budget": budget, "target": budget <= TARGET_BUDGET}
        ours = [(name, e) for name in LABEL_FREE if (e := _at(methods.get(name, ()), budget)) and e.get("feasible")]
        others = []
        for name in METHODS:
            if name.startswith("scl-"):
                continue
            entries = methods.get(name, ())
            entry = entries[0] if name == "identity" and entries else _at(entries, budget)
            if entry is not None and entry.get("feasible"):
                others.append((name, entry))
        if not ours:
            row.update(release=None, met=False, reason="no label-free scl release within the budget on validation")
            rows.append(row)
            continue
        name, best = min(ours, key=lambda item: (item[1].get(REID_TOP1, math.inf), item[1].get(DECODER_SSIM, math.inf)))
        row["release"], row[REID_TOP1], row[DECODER_SSIM] = name, best.get(REID_TOP1), best.get(DECODER_SSIM)
        for key, label in ((REID_TOP1, "reid"), (DECODER_SSIM, "ssim")):
            # on a tie the identity is named last: "next best identity 100%" beside plain noise at 100%
            # reads as if nothing but the clean image came close
            rival = min(others, key=lambda item: (item[1].get(key, math.inf), item[0] == "identity"), default=None)
            row[f"best_other_{label}"] = None if rival is None else {"method": rival[0], "value": rival[1].get(key)}
            row[f"lowest_{label}"] = rival is None or best.get(key, math.inf) < rival[1].get(key, math.inf)
        cloak = next((e for m, e in others if m == "cloak"), None)
        if cloak is None:
            row["beats_cloak_reid"], row["cloak_reid_top1"] = None, None
        else:
            p, q = float(best.get(REID_TOP1, 1.0)), float(cloak.get(REID_TOP1, 0.0))
            margin = 2.0 * math.sqrt((p * (1 - p) + q * (1 - q)) / n)
            row["cloak_reid_top1"], row["cloak_margin"] = q, margin
            row["beats_cloak_reid"] = q - p > margin
        row["met"] = bool(row["lowest_reid"] and row["lowest_ssim"] and row["beats_cloak_reid"] is not False)
        rows.append(row)
    return rows


# -- outputs --------------------------------------------------------------------------------------
def markdown_table(metrics: Mapping[str, Any], *, verdict: bool = True) -> str:
    """The frontier as a Markdown table: one row per method and budget, then the references and (with
    ``verdict``) the verdict per budget. The same columns and sentences as the report's frontier."""
    from scl.report import FRONTIER_COLUMNS, FRONTIER_READING, frontier_references, frontier_rows, verdict_lines

    test = metrics.get("splits", {}).get("test", "?")
    clean = metrics.get("accuracy_clean")
    intro = (f"Clean test accuracy {100 * clean:.1f}%; " if isinstance(clean, (int, float)) else "") + (
        f"attack budget {metrics.get('attack_budget', '?')}; {test} test images. {FRONTIER_READING}")
    lines = [intro, "",
             "| method | " + " | ".join(title for title, _, _ in FRONTIER_COLUMNS) + " |",
             "|---|" + "|".join(":---:" if kind == "yes/NO" else "---:" for _, _, kind in FRONTIER_COLUMNS) + "|"]
    lines += ["| " + " | ".join(html.unescape(cell) for cell in row) + " |" for row in frontier_rows(metrics)]
    lines += ["", html.unescape(frontier_references(metrics))]
    if verdict:
        lines += ["", *(f"- {'met' if met else 'NOT met'}: {text}" for text, met in verdict_lines(metrics))]
    return "\n".join(lines) + "\n"


def write_outputs(folder: Path, metrics: dict[str, Any], config: Mapping[str, Any], log: RunLog,
                  name: str | None = None) -> None:
    """``metrics.json``, ``table.md``, the two frontier figures, ``config.json``, ``log.txt`` and
    ``report.html``."""
    from scl import figures
    from scl.report import write_report

    refs = metrics["references"]
    for key, stem, floor in ((DECODER_SSIM, "frontier_ssim", refs.get(floor_of(DECODER_SSIM))),
                             (REID_TOP1, "frontier_reid", refs.get(REID_FLOOR_TOP1))):
        figures.frontier(metrics["methods"], key, folder / "figures" / f"{stem}.png",
                         clean_accuracy=metrics["accuracy_clean"], floor=floor, budgets=metrics["budgets"])
    write_results(folder, config, metrics)
    with atomic_write(folder / "table.md") as handle:
        handle.write(markdown_table(metrics))
    write_log(folder, log)
    write_report(folder, name=name)


def summary(metrics: Mapping[str, Any]) -> list[Any]:
    """The run's results for the terminal (:class:`scl.pipelines.Pipeline`): the frontier's table
    (as in ``table.md``) and the verdict at each budget."""
    from rich.text import Text

    from scl.pipelines import summary_lines
    from scl.report import verdict_lines

    return [Text(markdown_table(metrics, verdict=False)), *summary_lines(verdict_lines(metrics))]

