"""The classification experiment of ``scl demo`` (spec §2.1, §3, Fig. 2).

1. Task network N trained on clean data (or loaded), then frozen.
2. Stage 1 (§3.1.1): a stochastic conditional layer trained with hard selection so that N still
   classifies its samples: the most private layer within the utility budget
   (``utility.max_accuracy_loss``, :mod:`scl.pipelines.stages`), or, without a budget, the task
   loss plus ``lam`` x the privacy term.
3. Stage 2 (§3.1.2): the layer frozen, a SoftSelection (and, beyond the spec, a GatedSelection)
   trained for label-free inference (§3.2) with the same objective and budget.
4. Accuracy of N on the test split: clean, hard, soft, gated; one sample and the mean of 8.
5. Attacks trained on the attacker split and scored on the test split, each beside its floor.

Every part is a function of the config and the run folder, so ``scl train``, ``scl evaluate`` and
``scl attack`` run the parts and ``scl demo`` runs them all.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scl.data import Dataset, load_digits, load_user_data, split
from scl.errors import ConfigError, SCLError
from scl.io import save
from scl.layers import StochasticConditionalAdditive, StochasticConditionalLayer
from scl.metrics import (
    ATTRIBUTE_ACCURACY,
    ATTRIBUTE_CHANCE,
    DCOR,
    DECODER_SSIM,
    REID_FLOOR_TOP1,
    REID_TOP1,
    floor_of,
    leak_keys,
    release_names,
)
from scl.models import SmallCNN
from scl.obfuscator import Obfuscator, freeze
from scl.pipelines import config as configuration
from scl.pipelines import engine
from scl.pipelines.config import ClassificationConfig, Gated, Shared, Stage2, stage_patience
from scl.pipelines.stages import (
    PrivacyObjective,
    UtilityBudget,
    build_image_layer,
    class_mean_init,
    layer_start,
    load_task_network,
    run_noise,
    stage_generator,
    train_task_network,
    train_within_budget,
    validation_cut,
)
from scl.progress import make_progress
from scl.random import deterministic
from scl.runs import CHECKPOINTS, RunLog, load_checkpoint, read_run, run_folder, write_log, write_results
from scl.selection import GatedSelection, SoftSelection

if TYPE_CHECKING:
    from rich.progress import Progress

#: The name this pipeline records in ``metrics.json`` (:class:`scl.pipelines.Pipeline`).
NAME = "classification"
#: Its figure captions beyond the report's own (none: the report's are the classification ones).
CAPTIONS: dict[str, str] = {}


def build_config(
    *, quick: bool = False, config_file: str | Path | None = None, assignments: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> ClassificationConfig:
    """The resolved config of a classification run (:func:`scl.pipelines.config.build`)."""
    return configuration.build(quick=quick, config_file=config_file, assignments=assignments, overrides=overrides)


@dataclass
class Experiment:
    """What a run holds in memory (``config``: the classification experiment's, or the sections of it
    the federated procedure shares)."""

    config: Shared
    dataset: Dataset
    splits: dict[str, Dataset]
    network: nn.Module | None = None
    obfuscator: Obfuscator | None = None
    gated: Obfuscator | None = None
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Tensor] = field(default_factory=dict)


# -- data -------------------------------------------------------------------------------------------
def load_dataset(config: Shared) -> Dataset:
    """The data set of ``config.data`` (:func:`dataset_of`)."""
    return dataset_of(config.data, image_size=config.image_size, seed=config.seed)


def dataset_of(source: str, *, image_size: int, seed: int) -> Dataset:
    """The embedded tinted digits (``"digits"``, at ``image_size``), or the user's folder / .npz."""
    if source == "digits":
        return load_digits(size=image_size, attribute=True, seed=seed)
    return load_user_data(source)


def prepare(config: Mapping[str, Any]) -> Experiment:
    """The experiment of ``config`` (a :class:`ClassificationConfig`, or a mapping checked as one):
    its data set and splits."""
    config = ClassificationConfig.coerce(config)
    dataset = load_dataset(config)
    return Experiment(config, dataset, split(dataset, seed=config.seed))


# -- stage 0: the task network ------------------------------------------------------------------------
def train_network(exp: Experiment, progress: Progress | None, log: RunLog) -> None:
    cfg, data = exp.config, exp.splits["task"]
    if cfg.network.checkpoint:
        network = load_task_network(cfg.network.checkpoint, SmallCNN, channels=exp.dataset.channels,
                                    num_classes=exp.dataset.num_classes, option="--network")
        log(f"loaded task network N from {cfg.network.checkpoint}")
    else:
        torch.manual_seed(cfg.seed)
        network = SmallCNN(exp.dataset.channels, exp.dataset.num_classes, width=cfg.network.width)

        def loss_fn(x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
            return engine.classification_loss(network(x), y)

        exp.history["network"] = train_task_network(
            network, loss_fn, (data.x, data.y), epochs=cfg.network.epochs, lr=cfg.network.lr,
            batch_size=cfg.batch_size, generator=stage_generator(cfg, 1), progress=progress,
            description="task network N (clean data)",
        )
    network.eval()
    freeze(network)  # frozen in stages 1 and 2 (spec §3)
    exp.network = network


# -- stage 1 ------------------------------------------------------------------------------------------
def build_layer(config: Shared, dataset: Dataset) -> StochasticConditionalLayer:
    """The run's stochastic conditional layer (:func:`~scl.pipelines.stages.build_image_layer`)."""
    return build_image_layer(config.layer, dataset.x, dataset.num_classes)


def build_pre(config: Shared, dataset: Dataset) -> nn.Module | None:
    """The trainable pre-layers L of ``layer.pre`` (spec §5.1), or ``None`` for ``"none"``."""
    kind = config.layer.pre
    if kind == "none":
        return None
    if kind == "residual":
        from scl.models import ResidualPreLayers

        return ResidualPreLayers(dataset.channels)
    raise ConfigError(f"layer.pre must be 'none' or 'residual', but got {kind!r}")


def max_accuracy_loss(config: Shared) -> float | None:
    """The utility budget in points (``utility.max_accuracy_loss``), or ``None``: the fixed-λ stages
    (also for federated's config, which has no budget)."""
    utility = getattr(config, "utility", None)
    return None if utility is None or utility.max_accuracy_loss is None else float(utility.max_accuracy_loss)


def classification_config(exp: Experiment) -> ClassificationConfig:
    """``exp.config`` for the steps only the classification experiment has (the budget's split, stage
    2, the gate, the attacks, the sweep)."""
    if not isinstance(exp.config, ClassificationConfig):
        raise SCLError(f"this step needs the classification experiment's config, but the experiment has a "
                       f"{type(exp.config).__name__}")
    return exp.config


def budget_splits(exp: Experiment) -> tuple[tuple[Tensor, ...], tuple[Tensor, Tensor]]:
    """The obfuscator split cut into a training part and the validation part that measures the
    budget (``utility.validation_fraction``, seeded): ``((x, y[, attribute]), (x_val, y_val))``."""
    data, fraction = exp.splits["obfuscator"], float(classification_config(exp).utility.validation_fraction)
    train, val = validation_cut(len(data), fraction, stage_generator(exp.config, 5), "utility.max_accuracy_loss")
    parts = [data.x[train], data.y[train]]
    if data.attribute is not None:
        parts.append(data.attribute[train])
    return tuple(parts), (data.x[val], data.y[val])


def _objective(exp: Experiment, image_shape: tuple[int, ...]) -> PrivacyObjective:
    names = exp.dataset.attribute_names
    return PrivacyObjective(exp.config.stage1.privacy, num_classes=exp.dataset.num_classes,
                            image_shape=image_shape, in_shape=exp.dataset.image_shape,
                            num_attributes=None if names is None else len(names))


def train_stage1(
    exp: Experiment, progress: Progress | None, log: RunLog, *, lam: float | None = None, epochs: int | None = None
) -> Obfuscator:
    """Stage 1 (spec §3.1.1): the layer with hard selection. Within the utility budget when one is
    set (``utility.max_accuracy_loss``) and no ``lam`` is passed; else task loss + ``lam`` x the
    privacy term."""
    cfg = exp.config
    budget = max_accuracy_loss(cfg) if lam is None else None
    lam = cfg.stage1.lam if lam is None else lam
    network = exp.network
    if network is None:
        raise SCLError("train the task network first")
    torch.manual_seed(cfg.seed + 1)
    layer = build_layer(cfg, exp.dataset)
    pre = build_pre(cfg, exp.dataset)
    obfuscator = Obfuscator(layer, pre=pre)
    trained = [layer] if pre is None else [pre, layer]
    parameters = [p for module in trained for p in module.parameters()]
    data = exp.splits["obfuscator"]
    kind = cfg.stage1.privacy
    train, (xv, yv) = budget_splits(exp) if budget is not None else ((data.x, data.y), (data.x, data.y))
    if layer_start(cfg.layer) == "class_mean":
        # L starts as the identity, so the class means of L(x) are those of x
        class_mean_init(cast(StochasticConditionalAdditive, layer), train[0], train[1])
    if budget is not None:
        objective = _objective(exp, exp.dataset.image_shape)
        history, result = train_within_budget(
            parameters, trained,
            obfuscator.sample_with_distribution,
            objective, UtilityBudget(budget, network, xv, yv), train,
            epochs=epochs or cfg.stage1.epochs, lr=cfg.stage1.lr, batch_size=cfg.batch_size,
            generator=stage_generator(cfg, 2), evaluate=lambda x, y: obfuscator(x, y), progress=progress,
            description=f"stage 1: layer, hard selection ({kind}, budget {budget:g} pt)",
            patience=stage_patience(cfg),
        )
        if epochs is None:
            exp.history["stage1"] = history
            result.record(exp.metrics, "stage1", log)
        return obfuscator

    objective = _objective(exp, exp.dataset.image_shape)
    with_attribute = objective.kind == "attribute"

    def loss_fn(x: Tensor, y: Tensor, attribute: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        h, dist = obfuscator.sample_with_distribution(x, y)
        task, task_stats = engine.classification_loss(network(h), y)
        privacy, stats = objective.term(x, y, h, dist, attribute)
        objective.adversary_step(x, y, h, attribute)
        return task + lam * privacy, {"task_loss": task.item(), **task_stats, **stats}

    for module in trained:
        module.train()
    history = engine.train(
        loss_fn,
        parameters,
        (data.x, data.y, data.attribute) if with_attribute and data.attribute is not None else (data.x, data.y),
        epochs=epochs or cfg.stage1.epochs,
        lr=cfg.stage1.lr,
        batch_size=cfg.batch_size,
        generator=stage_generator(cfg, 2),
        progress=progress,
        description=f"stage 1: layer, hard selection (λ={lam:g})",
    )
    if lam == cfg.stage1.lam and epochs is None:
        exp.history["stage1"] = history
    return obfuscator


# -- stage 2 ------------------------------------------------------------------------------------------
def soft_shape(config: ClassificationConfig, layer: StochasticConditionalLayer, dataset: Dataset) -> tuple[int, ...]:
    """The shape of each class tensor of the soft selection: ``input`` (C_in, H, W), the size
    of the input as spec §2.2.1 puts it; ``spatial`` (1, H, W); ``channel`` (C_in, 1, 1); or
    ``scalar`` ()."""
    kind = config.stage2.soft_shape
    c, h, w = dataset.image_shape
    return {"input": (c, h, w), "spatial": (1, h, w), "channel": (c, 1, 1), "scalar": ()}[kind]


def _train_selection(
    exp: Experiment,
    obfuscator: Obfuscator,
    selection: nn.Module,
    section: str,
    progress: Progress | None,
    description: str,
    epochs: int | None = None,
    log: RunLog | None = None,
) -> dict[str, list[float]]:
    """Train a label-free selection on the frozen layer: within the utility budget with the same
    objective as stage 1 when a budget is set (and ``epochs`` is not, i.e. not in the sweep), else
    on the task loss alone."""
    cfg, network, data = classification_config(exp), exp.network, exp.splits["obfuscator"]
    settings: Stage2 | Gated = cfg.stage2 if section == "stage2" else cfg.gated
    if network is None:
        raise SCLError("train or load the task network first")
    obfuscator.freeze_layer()
    obfuscator.layer.train()  # reparameterised samples, frozen weights
    parameters = [p for p in selection.parameters() if p.requires_grad]
    budget = max_accuracy_loss(cfg) if epochs is None else None
    if budget is not None:
        train, (xv, yv) = budget_splits(exp)
        shape = tuple(obfuscator(data.x[:2]).shape[1:])
        supervised = None
        if isinstance(selection, GatedSelection):
            # the gate's job is to pick the class: the owner's labels teach it beside the task loss
            def supervised(x: Tensor, y: Tensor) -> Tensor:
                return F.nll_loss(torch.log(selection(x).clamp_min(1e-8)), y)

        history, result = train_within_budget(
            parameters, [selection], lambda x, y: obfuscator.sample_with_distribution(x),
            _objective(exp, shape), UtilityBudget(budget, network, xv, yv), train,
            epochs=settings.epochs, lr=settings.lr, batch_size=cfg.batch_size,
            generator=stage_generator(cfg, 3), evaluate=lambda x, y: obfuscator(x), progress=progress,
            description=f"{description} (budget {budget:g} pt)", supervised=supervised,
            patience=stage_patience(cfg),
        )
        result.record(exp.metrics, "soft" if section == "stage2" else "gated", log)
        obfuscator.eval()
        return history

    def loss_fn(x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        return engine.classification_loss(network(obfuscator(x)), y)

    history = engine.train(
        loss_fn,
        parameters,
        (data.x, data.y),
        epochs=epochs or settings.epochs,
        lr=settings.lr,
        batch_size=cfg.batch_size,
        generator=stage_generator(cfg, 3),
        progress=progress,
        description=description,
    )
    obfuscator.eval()
    return history


def train_stage2(
    exp: Experiment, obfuscator: Obfuscator, progress: Progress | None, *, gated: bool = True,
    epochs: int | None = None, log: RunLog | None = None,
) -> None:
    """Soft selection on the frozen layer (spec §3.1.2); the gated extension beside it."""
    cfg = classification_config(exp)
    torch.manual_seed(cfg.seed + 2)
    soft = SoftSelection(exp.dataset.num_classes, soft_shape(cfg, obfuscator.layer, exp.dataset))
    obfuscator.selection = soft
    history = _train_selection(exp, obfuscator, soft, "stage2", progress, "stage 2: soft selection", epochs, log)
    if epochs is None:
        exp.history["stage2 soft"] = history
        exp.obfuscator = obfuscator
    if gated:
        start = copy.deepcopy(exp.network) if cfg.gated.init == "network" else None
        gate = GatedSelection(exp.dataset.num_classes, exp.dataset.channels, network=start,
                              pick=cfg.gated.pick)
        gated_obfuscator = obfuscator.with_selection(gate)
        exp.history["stage2 gated"] = _train_selection(
            exp, gated_obfuscator, gate, "gated", progress, "stage 2: gated selection (extension)", log=log
        )
        exp.gated = gated_obfuscator


# -- evaluation ----------------------------------------------------------------------------------------
def evaluate(exp: Experiment) -> dict[str, Any]:
    """Accuracy of N on the test split: clean, hard, soft, gated; 1 sample and mean of 8."""
    network, obf, test = exp.network, exp.obfuscator, exp.splits["test"]
    if network is None or obf is None:
        raise SCLError("nothing to evaluate: train the network and the obfuscator first")
    obf.eval()
    modes: dict[str, Callable[[Tensor, Tensor], Tensor] | None] = {
        "clean": None,
        "hard": lambda x, y: obf(x, y),
        "soft": lambda x, y: obf(x),
    }
    if exp.gated is not None:
        exp.gated.eval()
        gated = exp.gated
        modes["gated"] = lambda x, y: gated(x)
    single, mean8 = {}, {}
    for name, transform in modes.items():
        single[name] = engine.accuracy(engine.predict_proba(network, test.x, transform, test.y), test.y)
        samples = 1 if transform is None else 8
        mean8[name] = engine.accuracy(engine.predict_proba(network, test.x, transform, test.y, samples=samples), test.y)
    exp.metrics["accuracy"] = single
    exp.metrics["accuracy_mean8"] = mean8
    return single


# -- attacks ------------------------------------------------------------------------------------------
#: The releases attacked, in the order of every table: the label-free ones (what leaves the owner
#: at inference) first, then the hard one (labels known), then plain noise at the accuracy of the
#: headline label-free release (:func:`headline_release`).
RELEASES = release_names()
#: Attack figures that every release reports; lower is more private.
LEAK_KEYS = leak_keys()


def headline_release(accuracy: dict[str, Any]) -> str:
    """The label-free release the targets and the plain-noise reference are about: ``gated`` when
    the run has one, else ``soft``. With the default class-mean layer a soft selection (one fixed
    mixture of the classes for every input) releases no class at all, so N cannot read it; the
    gate picks each input's class and the release carries that class and little else."""
    return "gated" if "gated" in accuracy else "soft"


def gaussian_reference(exp: Experiment, target: float) -> tuple[float, float]:
    """The plain-noise scale at which N's test accuracy matches ``target``: ``(scale, accuracy)``.

    Bisection on one fixed noise draw (seeded), so accuracy is a deterministic function of the scale.
    """
    from scl.baselines import GaussianNoise

    network, test = exp.network, exp.splits["test"]
    if network is None:
        raise SCLError("train or load the task network first")
    return GaussianNoise.calibrate(test.x, lambda noisy: engine.accuracy(engine.predict_proba(network, noisy), test.y),
                                   target, generator=stage_generator(exp.config, 7))


def releases(exp: Experiment) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """``name -> obfuscate(x, y)`` for every release of the run, in :data:`RELEASES` order."""
    from scl.baselines import GaussianNoise

    obf = exp.obfuscator
    if obf is None:
        raise SCLError("nothing to attack: train the obfuscator first")
    obf.eval()
    found: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"soft": lambda x, y: obf(x)}
    if exp.gated is not None:
        gated = exp.gated.eval()
        found["gated"] = lambda x, y: gated(x)
    found["hard"] = lambda x, y: obf(x, y)
    scale = exp.metrics.get("privacy", {}).get("gaussian_scale")
    if scale is not None:
        noise = GaussianNoise(scale)
        found["gaussian"] = lambda x, y: noise(x)
    return found


def attack_settings(exp: Experiment, progress: Progress | None) -> dict[str, Any]:
    """The keyword arguments every attack of the run takes: classes, seed, the attack budget
    (``attacks.budget``, capped by ``attacks.max_epochs``) and the progress display."""
    from scl.attacks.budget import get_budget

    acfg = classification_config(exp).attacks
    return dict(num_classes=exp.dataset.num_classes, seed=exp.config.seed,
                budget=get_budget(acfg.budget).capped(acfg.max_epochs), progress=progress)


def reference_attacks(exp: Experiment, common: dict[str, Any]) -> tuple[dict[str, float], Tensor]:
    """What every release is read against, with the same attackers: the decoder's label-only floor
    and clean ceiling, a black image's SSIM and the label's dCor. Returns ``(figures,
    the floor's reconstructions)``."""
    from scl.attacks import distance_correlation
    from scl.attacks.decoder import clean_ceiling_attack, label_floor_attack
    from scl.attacks.metrics import ssim

    attacker, test = exp.splits["attacker"], exp.splits["test"]
    floor = label_floor_attack(attacker, test, **common)
    clean = clean_ceiling_attack(attacker, test, **common)
    shared: dict[str, float] = {**floor.metrics, **clean.metrics}
    # A black image knows nothing; on images with empty channels (tinted digits) SSIM still
    # rewards it, so its score is recorded to read the others against.
    shared["ssim_blank"] = ssim(torch.zeros_like(test.x), test.x)
    with torch.no_grad():
        onehot = F.one_hot(test.y, exp.dataset.num_classes).float()
        shared[floor_of(DCOR)] = distance_correlation(test.x, onehot, bias_corrected=True)
    return shared, floor.reconstructions


def attack_release(
    exp: Experiment, release: Callable[[Tensor, Tensor], Tensor], common: dict[str, Any], *, references: bool
) -> tuple[dict[str, Any], dict[str, float], Tensor]:
    """The black-box attacks on one release ``release(x, y) -> h``: the decoder, re-identification
    (from the release and from the decoder's reconstructions), the attribute (when the data has
    one) and dCor, each trained on the attacker split and scored on the test split.

    ``references``: also train the attribute attack's label-only and clean classifiers (once per
    run: they do not depend on the release). Returns ``(the release's figures, the attribute's
    references (empty without), the decoder's reconstructions for the figures)``.
    """
    from scl.attacks import attribute_attack, distance_correlation
    from scl.attacks.decoder import decoder_attack
    from scl.attacks.reidentification import reidentification_attack

    attacker, test = exp.splits["attacker"], exp.splits["test"]
    block: dict[str, Any] = {}
    shared: dict[str, float] = {}
    copies = classification_config(exp).attacks.averaged_copies
    decoded = decoder_attack(release, attacker, test, averaged_copies=copies, **common)
    block.update(decoded.metrics)
    block["decoder_attacker"] = decoded.attacker
    reid = reidentification_attack(release, attacker, test, reconstructions=decoded.test_reconstructions, **common)
    block.update(reid.metrics)
    if test.attribute is not None and attacker.attribute is not None:
        result = attribute_attack(release, attacker, test, num_attributes=cast(int, exp.dataset.num_attributes),
                                  references=references, **common)
        shared.update({k: v for k, v in result.items() if k != ATTRIBUTE_ACCURACY})
        block[ATTRIBUTE_ACCURACY] = result[ATTRIBUTE_ACCURACY]
    with torch.no_grad(), deterministic(exp.config.seed + 11):
        h = release(test.x, test.y)
        block[DCOR] = distance_correlation(test.x, h, bias_corrected=True)
        block["dcor_vstatistic"] = distance_correlation(test.x, h)
    return block, shared, decoded.reconstructions


def run_attacks(exp: Experiment, progress: Progress | None, log: RunLog) -> dict[str, Any]:
    """Every attack on every release (soft, gated, hard, plain noise), beside floors and ceilings.

    Each attacker trains on the attacker split only (early-stopped on a validation part of it) and
    is scored on the test split, with the budget ``attacks.budget``. The floors (label only) and
    the clean ceilings are computed once with the same attackers and copied into each release's
    block, so that each block reads on its own. ``privacy.<release>.*`` holds one block per
    release; the flat ``privacy.*`` keys are the hard release's (the names of earlier versions).
    """
    from scl.attacks.whitebox import whitebox_attack

    cfg, obf = classification_config(exp), exp.obfuscator
    if obf is None or exp.network is None:
        raise SCLError("nothing to attack: train the obfuscator first")
    test = exp.splits["test"]
    acfg = cfg.attacks
    seconds: dict[str, float] = {}
    privacy: dict[str, Any] = {"budget": acfg.budget}
    exp.metrics["privacy"] = privacy

    if "soft" not in exp.metrics.get("accuracy", {}):
        evaluate(exp)
    reference = headline_release(exp.metrics["accuracy"])
    reference_accuracy = exp.metrics["accuracy"][reference]
    scale, noise_accuracy = gaussian_reference(exp, reference_accuracy)
    privacy["gaussian_scale"], privacy["gaussian_accuracy"] = scale, noise_accuracy
    privacy["reference_release"], privacy["reference_accuracy"] = reference, reference_accuracy
    log(f"reference: plain Gaussian noise of scale {scale:.3g} keeps {100 * noise_accuracy:.1f}% "
        f"({reference} release {100 * reference_accuracy:.1f}%)")

    common = attack_settings(exp, progress)
    start = time.perf_counter()
    log(f"attack budget {acfg.budget}: label-only floor and clean ceiling of the decoder")
    shared, floor_images = reference_attacks(exp, common)
    has_attribute = test.attribute is not None and exp.splits["attacker"].attribute is not None
    seconds["references"] = time.perf_counter() - start
    n_wb = min(acfg.whitebox_images, len(test))
    figures: dict[str, Tensor] = {"decoder_label_floor": floor_images}
    for index, (name, release) in enumerate(releases(exp).items()):
        start = time.perf_counter()
        log(f"attacks on the {name} release: decoder, re-identification, "
            + ("white-box, " if name != "gaussian" else "") + ("attribute, " if has_attribute else "") + "dCor")
        block, extra, figures[f"decoder_{name}"] = attack_release(exp, release, common, references=index == 0)
        shared.update(extra)
        if name != "gaussian":  # the white-box attacker inverts scl's layer; plain noise has none
            wb = whitebox_attack(obf.layer, test.x[:n_wb], test.y[:n_wb], steps=acfg.whitebox_steps,
                                 observe=release, pre=obf.pre)
            figures[f"whitebox_{name}"] = wb.pop("reconstructions")
            block.update(wb)
        privacy[name] = block
        seconds[name] = time.perf_counter() - start
    for name in RELEASES:
        if name in privacy:
            privacy[name].update({k: v for k, v in shared.items() if k not in privacy[name]})
    privacy.update(privacy["hard"])  # the flat keys: the hard release, as in earlier versions
    privacy["beats_gaussian"] = beats_gaussian(privacy)
    exp.figures.update(figures)
    # the figures show what the attackers rebuild from the headline label-free release
    exp.figures["decoder_decoder"] = figures[f"decoder_{reference}"]
    if f"whitebox_{reference}" in figures:
        exp.figures["whitebox"] = figures[f"whitebox_{reference}"]
    exp.metrics["privacy"]["figure_release"] = reference
    exp.metrics.setdefault("seconds", {}).update({f"attacks ({k})": v for k, v in seconds.items()})
    return privacy


def beats_gaussian(privacy: dict[str, Any]) -> dict[str, dict[str, bool]]:
    """For each scl release and attack figure: does it leak less than plain noise at equal accuracy."""
    reference = privacy.get("gaussian")
    if not isinstance(reference, dict):
        return {}
    verdict: dict[str, dict[str, bool]] = {}
    for name in RELEASES[:3]:
        block = privacy.get(name)
        if isinstance(block, dict):
            verdict[name] = {key: bool(block[key] < reference[key]) for key in LEAK_KEYS
                             if key in block and key in reference}
    return verdict


def targets(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The project's "must" targets for the full demo, on the headline label-free release
    (:func:`headline_release`)."""
    acc, priv = metrics.get("accuracy", {}), metrics.get("privacy", {})
    release = headline_release(acc)
    block = priv.get(release) if isinstance(priv.get(release), dict) else {}
    rows = []

    def add(name: str, value: float | None, target: float | None, text: str, met: bool | None = None) -> None:
        if value is None or target is None:
            return
        rows.append({"name": name, "value": round(value, 4), "target": text,
                     "met": bool(value <= target) if met is None else met})

    if release in acc and "clean" in acc:
        add(f"{release} accuracy below clean (points)", 100 * (acc["clean"] - acc[release]), 1.0, "<= 1.0")
    if REID_TOP1 in block:
        add(f"{release} re-identification top-1", block[REID_TOP1], 0.30,
            f"<= 0.30 (floor {block.get(REID_FLOOR_TOP1, float('nan')):.3f})")
    if DECODER_SSIM in block:
        add(f"{release} decoder SSIM", block[DECODER_SSIM], 0.60,
            f"<= 0.60 (floor {block.get(floor_of(DECODER_SSIM), float('nan')):.3f})")
    if ATTRIBUTE_ACCURACY in block and ATTRIBUTE_CHANCE in block:
        bound = block[ATTRIBUTE_CHANCE] + 0.20
        add(f"{release} attribute accuracy", block[ATTRIBUTE_ACCURACY], bound, f"<= chance + 0.20 = {bound:.3f}")
    verdict = priv.get("beats_gaussian", {}).get(release)
    if verdict:
        lost = [k for k, won in verdict.items() if not won]
        add(f"{release} attacks where plain noise leaks less", float(len(lost)), 0.0,
            "0 (beats plain Gaussian noise on every attack)" + (f"; not on {', '.join(lost)}" if lost else ""))
    return rows


# -- sweep --------------------------------------------------------------------------------------------
def sweep(exp: Experiment, progress: Progress | None, log: RunLog) -> list[dict[str, Any]]:
    """Accuracy against decoder SSIM over lam (shorter training per point)."""
    from scl.attacks import decoder_attack

    cfg, test = classification_config(exp), exp.splits["test"]
    points = []
    for lam in cfg.sweep.lams:
        log(f"sweep: λ = {lam}")
        obf = train_stage1(exp, progress, log, lam=float(lam), epochs=cfg.sweep.stage1_epochs)
        train_stage2(exp, obf, progress, gated=False, epochs=max(1, cfg.stage2.epochs // 2))
        obf.eval()
        if exp.network is None:
            raise SCLError("train or load the task network first")

        def soft(x: Tensor, y: Tensor, obf: Obfuscator = obf) -> Tensor:
            return obf(x)

        def hard(x: Tensor, y: Tensor, obf: Obfuscator = obf) -> Tensor:
            return obf(x, y)

        soft_acc = engine.accuracy(engine.predict_proba(exp.network, test.x, soft, test.y), test.y)
        hard_acc = engine.accuracy(engine.predict_proba(exp.network, test.x, hard, test.y), test.y)
        result = decoder_attack(
            hard,
            exp.splits["attacker"],
            test,
            num_classes=exp.dataset.num_classes,
            epochs=cfg.sweep.decoder_epochs,
            seed=cfg.seed,
            progress=progress,
        )
        points.append(
            {
                "lam": float(lam),
                "accuracy": soft_acc,
                "hard_accuracy": hard_acc,
                DECODER_SSIM: result.metrics[DECODER_SSIM],
            }
        )
    floor = exp.metrics.get("privacy", {}).get(floor_of(DECODER_SSIM))
    clean = exp.metrics.get("accuracy", {}).get("clean")
    for point in points:
        point[floor_of(DECODER_SSIM)] = floor
        point["clean_accuracy"] = clean
    exp.metrics["sweep"] = points
    return points


# -- run folder -----------------------------------------------------------------------------------------
def save_checkpoints(exp: Experiment, folder: Path) -> None:
    ckpt = folder / "checkpoints"
    if exp.network is not None:
        save(exp.network, ckpt / CHECKPOINTS["network"])
    if exp.obfuscator is not None:
        save(exp.obfuscator, ckpt / CHECKPOINTS["obfuscator"])
    if exp.gated is not None and exp.gated.selection is not None:
        save(exp.gated.selection, ckpt / CHECKPOINTS["gated"])


def load_run(run: Path) -> Experiment:
    """Rebuild an experiment (data splits, N, obfuscators) from a run folder."""
    config, metrics = read_run(run)
    exp = prepare(ClassificationConfig.from_dict(config, legacy=True))
    exp.network = freeze(load_checkpoint(run, "network")).eval()
    exp.obfuscator = load_checkpoint(run, "obfuscator").eval()
    if (Path(run) / "checkpoints" / CHECKPOINTS["gated"]).is_file():
        exp.gated = exp.obfuscator.with_selection(load_checkpoint(run, "gated")).eval()
    exp.metrics = metrics
    return exp


def sample_images(exp: Experiment, k: int = 8) -> dict[str, Tensor]:
    test = exp.splits["test"]
    x, y = test.x[:k], test.y[:k]
    rows = {"clean": x}
    with torch.no_grad():
        if exp.obfuscator is not None:
            rows["hard (labels known)"] = exp.obfuscator(x, y)
            if exp.obfuscator.selection is not None:
                rows["soft (label-free)"] = exp.obfuscator(x)
        if exp.gated is not None:
            rows["gated (label-free)"] = exp.gated(x)
    shown = exp.metrics.get("privacy", {}).get("figure_release", "soft")
    if "decoder_decoder" in exp.figures:
        rows[f"decoder, from {shown}"] = exp.figures["decoder_decoder"]
    if "decoder_hard" in exp.figures:
        rows["decoder, from hard"] = exp.figures["decoder_hard"]
    if "decoder_label_floor" in exp.figures:
        rows["label-only floor"] = exp.figures["decoder_label_floor"]
    if "whitebox" in exp.figures:
        rows[f"white-box, from {shown}"] = exp.figures["whitebox"]
    return rows


def write_outputs(exp: Experiment, folder: Path, log: RunLog, name: str | None = None) -> None:
    """Figures, metrics.json, config.json, log.txt and report.html."""
    from scl import figures
    from scl.report import write_report

    fig = folder / "figures"
    figures.image_grid(sample_images(exp), fig / "samples.png", title="Test images and what leaves the data owner")
    if exp.history:
        figures.training_curves(exp.history, fig / "training_curves.png")
    if exp.obfuscator is not None and isinstance(exp.obfuscator.selection, SoftSelection):
        figures.selection_maps(
            exp.obfuscator.selection.values.detach(), fig / "selection_maps.png", class_names=exp.dataset.class_names
        )
    if exp.metrics.get("utility"):
        from scl.report import budget_test_losses

        figures.budget_curves(exp.metrics["utility"], budget_test_losses(exp.metrics), fig / "utility_budget.png")
    if exp.metrics.get("sweep"):
        figures.tradeoff_curve(exp.metrics["sweep"], fig / "tradeoff.png")
    exp.metrics["pipeline"] = NAME  # what the report reads to lay the run out
    exp.metrics["dataset"] = exp.dataset.name
    exp.metrics["num_classes"] = exp.dataset.num_classes
    exp.metrics["input_shape"] = list(exp.dataset.image_shape)
    exp.metrics["splits"] = {name: len(part) for name, part in exp.splits.items()}  # images per split
    exp.metrics["targets"] = targets(exp.metrics)
    write_results(folder, exp.config, exp.metrics)
    write_log(folder, log)
    write_report(folder, name=name)


# -- the commands ----------------------------------------------------------------------------------------
def run_training(exp: Experiment, progress: Progress | None, log: RunLog) -> None:
    seconds = exp.metrics.setdefault("seconds", {})
    log(
        f"data: {exp.dataset.name}, {len(exp.dataset)} images {exp.dataset.image_shape}, "
        + ", ".join(f"{k} {len(v)}" for k, v in exp.splits.items())
    )
    start = time.perf_counter()
    train_network(exp, progress, log)
    seconds["base"] = time.perf_counter() - start
    start = time.perf_counter()
    obfuscator = train_stage1(exp, progress, log)
    seconds["stage1"] = time.perf_counter() - start
    start = time.perf_counter()
    train_stage2(exp, obfuscator, progress, log=log)
    seconds["stage2"] = time.perf_counter() - start
    acc = evaluate(exp)
    log("accuracy: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc.items()))


def demo(
    config: Mapping[str, Any], out: Path, *, sweep_lams: bool = False, console: Any = None, show_progress: bool = True
) -> tuple[Path, dict[str, Any]]:
    """The whole experiment into the run folder ``out``; returns ``(out, metrics)``."""
    config = ClassificationConfig.coerce(config)
    log = RunLog(console)
    total = time.perf_counter()
    with run_folder(out) as folder, run_noise(config):
        progress = make_progress(show_progress, console)
        with progress if progress is not None else contextlib.nullcontext():
            exp = prepare(config)
            run_training(exp, progress, log)
            start = time.perf_counter()
            run_attacks(exp, progress, log)
            exp.metrics["seconds"]["attacks"] = time.perf_counter() - start
            if sweep_lams:
                start = time.perf_counter()
                main = (exp.obfuscator, exp.gated, dict(exp.history))
                sweep(exp, progress, log)
                exp.obfuscator, exp.gated, exp.history = main
                exp.metrics["seconds"]["sweep"] = time.perf_counter() - start
        exp.metrics["seconds"]["total"] = time.perf_counter() - total
        save_checkpoints(exp, folder)
        write_outputs(exp, folder, log, name=Path(out).name)
    return out, exp.metrics


#: ``scl demo``: the whole experiment (:class:`scl.pipelines.Pipeline`'s ``run``).
run = demo


def train_command(
    config: Mapping[str, Any], out: Path, *, console: Any = None, show_progress: bool = True
) -> tuple[Path, dict[str, Any]]:
    """Train N, stage 1 and stage 2, evaluate accuracy; no attacks."""
    config = ClassificationConfig.coerce(config)
    log = RunLog(console)
    with run_folder(out) as folder, run_noise(config):
        progress = make_progress(show_progress, console)
        with progress if progress is not None else contextlib.nullcontext():
            exp = prepare(config)
            run_training(exp, progress, log)
        save_checkpoints(exp, folder)
        write_outputs(exp, folder, log, name=Path(out).name)
    return out, exp.metrics


def update_run(run: Path, action: str, *, console: Any = None, show_progress: bool = True) -> dict[str, Any]:
    """``evaluate`` or ``attack`` an existing run folder; metrics, figures and report are updated."""
    log = RunLog.resume(run, console)
    exp = load_run(run)
    with run_noise(exp.config):
        progress = make_progress(show_progress, console)
        with progress if progress is not None else contextlib.nullcontext():
            if action == "evaluate":
                acc = evaluate(exp)
                log("accuracy: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc.items()))
            else:
                start = time.perf_counter()
                run_attacks(exp, progress, log)
                exp.metrics.setdefault("seconds", {})["attacks"] = time.perf_counter() - start
    write_outputs(exp, Path(run), log)
    return exp.metrics


# -- the terminal summary ----------------------------------------------------------------------------
def summary(metrics: Mapping[str, Any]) -> list[Any]:
    """The run's results for the terminal (:class:`scl.pipelines.Pipeline`): accuracy, the budget,
    the privacy table beside plain noise, and the targets."""
    from rich.table import Table

    from scl.pipelines import noise_verdict_lines, summary_lines, target_lines
    from scl.report import budget_lines, format_value, gaussian_verdicts, release_table

    out: list[Any] = []
    table = Table(title="scl: results on the test split", show_lines=False)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("beside", justify="right")
    acc = metrics.get("accuracy", {})
    mean8 = metrics.get("accuracy_mean8", {})
    for name, value in acc.items():
        extra = f"mean of 8: {100 * mean8[name]:.1f}%" if name in mean8 and name != "clean" else ""
        table.add_row(f"accuracy ({name})", f"{100 * value:.1f}%", extra)
    out.append(table)
    out += summary_lines(budget_lines(metrics))
    priv = metrics.get("privacy", {})
    releases = release_table(priv, short=True)
    if releases is not None:
        header, rows = releases
        privacy = Table(title=f"privacy on the test split, attack budget {priv.get('budget', '?')} (lower is "
                        f"more private; gaussian = plain noise at the {priv.get('reference_release', 'soft')} "
                        "accuracy)")
        for i, title in enumerate(header):
            privacy.add_column(title, justify="right" if i else "left")
        for row in rows:
            privacy.add_row(row[0][0], *(format_value(value, kind) for value, kind in row[1:]))
        out.append(privacy)
        out += noise_verdict_lines(gaussian_verdicts(priv))
    out += target_lines(metrics)
    return out

