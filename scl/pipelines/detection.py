"""The detection experiment of ``scl detect`` (spec §2.2, §2.2.1, Fig. 3 and 4, §3).

1. Detector N (:class:`~scl.models.CenterNet`) trained on clean scenes (or loaded), then frozen.
2. Stage 1: a stochastic conditional convolution (image in, image-shaped sample out,
   ``selection_at="input"``) trained with the hard selection from the boxes, as private as it can
   be within the mAP budget (``utility.max_map_loss``, ``--max-map-loss``, default 3 points of
   mAP@.5, measured on a validation part of the obfuscator split): the shared stage code of
   :mod:`scl.pipelines.stages` with a :class:`~scl.pipelines.stages.DetectionBudget`.
3. Stage 2: the layer frozen, a :class:`~scl.selection.SoftSelection` of spatial maps
   ``(1, H, W)`` per class, for box-free inference (Fig. 4 right), within the same budget and
   with the same objective.
4. COCO mAP@[.5:.95], mAP@.5 and mAP@.75 of N on the test split: clean, hard, soft.
5. Decoder inversion of the hard release, beside its floor (the same decoder given only the class
   masks) and its clean ceiling; the same decoder on the soft release; all with the attack budget
   ``attacks.budget`` of the classification experiment.

The default objective, ``within``, takes every pixel's class from the box masks: it is zero when
the release's mean is one constant per class, i.e. when the release shows the boxes and nothing
else (:func:`~scl.pipelines.stages.within_class_information`).

Pixels outside every box: a background class. The layer has ``C + 1`` classes and the hard
selection sets ``pi_C = 1`` wherever no box lies (``Obfuscator(..., box_background=C)``), so the
background is obfuscated by its own learned distribution. The alternative, passing those pixels
through untouched, would release the background (faces behind a car, the room behind a person)
in the clear; leaving them at 0 in every class would blank them, which reveals the boxes exactly.
The background class hides the background and gives stage 2 a map of its own to learn.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from scl.data.scenes import DetectionData, load_detection_data, make_scenes, split_detection
from scl.errors import ConfigError, SCLError
from scl.io import save
from scl.layers import StochasticConditionalConv2d
from scl.metrics import DECODER_PSNR, DECODER_SSIM, DECODER_SSIM_AVG8, ceiling_of, floor_of, release_key
from scl.models.detector import CenterNet
from scl.obfuscator import Obfuscator, freeze
from scl.pipelines import engine
from scl.pipelines.coco import coco_map
from scl.pipelines.config import (
    ATTACK_BUDGETS,
    Network,
    Section,
    Stage1,
    auto_or_positive,
    boolean,
    budget,
    build_as,
    choice,
    count,
    frozen,
    half_open_unit,
    integer,
    non_negative,
    open_unit,
    option,
    optional_positive_int,
    positive_int,
    positive_number,
    section,
    string,
)
from scl.pipelines.stages import (
    DetectionBudget,
    PrivacyObjective,
    build_image_layer,
    conv_class_mean_init,
    load_task_network,
    privacy_term,
    run_noise,
    stage_generator,
    train_task_network,
    train_within_budget,
    validation_cut,
)
from scl.progress import make_progress
from scl.runs import RunLog, run_folder, write_log, write_results
from scl.selection import HardSelection, SoftSelection

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["CAPTIONS", "DEFAULTS", "NAME", "QUICK", "DetectionExperiment", "build_config", "run", "summary",
           "summary_table", "targets"]

#: The name this pipeline records in ``metrics.json`` (:class:`scl.pipelines.Pipeline`).
NAME = "detection"

CHECKPOINTS = {"network": "detector.safetensors", "obfuscator": "obfuscator.safetensors"}

#: The measures detection's flat privacy block holds for every release (scl.metrics.DETECTION_RELEASES).
DECODER_KEYS = (DECODER_SSIM, DECODER_PSNR)

#: the objectives that work with per-pixel classes (scl.pipelines.stages.OBJECTIVES)
PRIVACY = ("within", "entropy", "ssim", "both")


def _scene_size(name: str, value: Any) -> None:
    positive_int(name, value)
    if value % 4 or value < 16:
        raise ConfigError(f"{name} must be a multiple of 4 and at least 16, but got {value}")


def _odd(name: str, value: Any) -> None:
    positive_int(name, value)
    if value % 2 == 0:
        raise ConfigError(f"{name} must be odd (padding 'same'), but got {value}")


@frozen
class Detector(Network):
    """The task network N, a CenterNet (``detector``): classification's ``network`` section, its own
    defaults; ``checkpoint`` is a CenterNet's (``--set detector.checkpoint=PATH``)."""

    epochs: int = option(30, positive_int)
    lr: float = option(3e-3, positive_number)
    width: int = option(16, positive_int)


@frozen
class DetectionLayer(Section):
    """The conv layer with per-pixel (box) selection (``layer``).

    ``init_scale``: a number, or "auto" (the pixels' standard deviation, as in classification).
    ``start``: "input" (x plus noise: every class's mean kernels at the identity) or "class_mean" (mean
    kernels at 0 and each class's bias at its mean colour inside its boxes, the background's outside
    them: the release starts as the box masks plus noise, and the budget lets x in).
    """

    distribution: str = option("gaussian", string)
    kernel_size: int = option(3, _odd)
    init_scale: float | str = option("auto", auto_or_positive)
    start: str = option("input", choice("input", "class_mean"))


@frozen
class DetectionStage1(Stage1):
    """Stage 1 under box selection (``stage1``). The layer is tiny (C + 1 pairs of 3x3 kernels), so a
    large learning rate is safe and needed. ``privacy``: "within" (what the release carries beyond the
    box masks), "entropy", "ssim" or "both"; ``lam`` weighs it only without a budget
    (``utility.max_map_loss = null``)."""

    epochs: int = option(30, positive_int)
    privacy: str = option("within", choice(*PRIVACY, note="the objectives that take per-pixel classes"))
    lam: float = option(0.3, non_negative)


@frozen
class DetectionStage2(Section):
    """Stage 2: the soft selection maps (``stage2``)."""

    epochs: int = option(15, positive_int)
    lr: float = option(0.05, positive_number)


@frozen
class DetectionUtility(Section):
    """The utility budget: the most mAP@.5 a release may lose against clean scenes, in points
    (``--max-map-loss``), measured on ``validation_fraction`` of the obfuscator split (``utility``)."""

    max_map_loss: float | None = option(3.0, budget("--max-map-loss", "of mAP@.5 "))
    validation_fraction: float = option(0.5, open_unit)


@frozen
class Eval(Section):
    """Decoding detections (``eval``)."""

    top_k: int = option(20, positive_int)
    score_threshold: float = option(0.01, half_open_unit)


@frozen
class DetectionAttacks(Section):
    """The attackers (``attacks``).

    ``budget``: quick | standard | strong (scl.attacks.budget); ``soft``: also attack the box-free
    release. ``max_epochs`` caps every attacker's epochs: a 48 x 48 scene costs 9 times a 16 x 16 digit
    per epoch, and the standard decoder's 100 epochs took over 30 minutes per release on 2 cores; 20
    cosine-annealed epochs of the same UNet (null: the budget's own 100).
    """

    budget: str = option("standard", choice(*ATTACK_BUDGETS))
    max_epochs: int | None = option(20, optional_positive_int())
    averaged_copies: int = option(8, positive_int)
    soft: bool = option(True, boolean)


@frozen
class DetectionConfig(Section):
    """The detection experiment's config (``scl detect``)."""

    seed: int = option(0, integer)
    # "scenes" (embedded: digits 0, 1, 7 pasted on a canvas), or a path: .npz or COCO .json
    data: str = option("scenes", string)
    num_images: int = option(1600, positive_int)  # embedded scenes only
    image_size: int = option(48, _scene_size)  # embedded scenes and COCO images (resized)
    batch_size: int = option(32, positive_int)
    reproducible: bool = option(True, boolean)
    # intra-op threads while the run lasts (0: torch's default). The tensors are tiny, so extra
    # threads mostly add synchronisation, which is very slow on busy machines.
    threads: int = option(1, count("torch's default"))
    detector: Detector = section(Detector)
    layer: DetectionLayer = section(DetectionLayer)
    stage1: DetectionStage1 = section(DetectionStage1)
    stage2: DetectionStage2 = section(DetectionStage2)
    utility: DetectionUtility = section(DetectionUtility)
    eval: Eval = section(Eval)
    attacks: DetectionAttacks = section(DetectionAttacks)

    def check(self) -> None:
        if self.utility.max_map_loss is None and self.stage1.privacy == "within":
            raise ConfigError("stage1.privacy='within' is minimised within the mAP budget; with "
                              "utility.max_map_loss=null choose a weighted term: --set stage1.privacy=entropy")


#: The detection defaults as JSON (``DetectionConfig().to_dict()``), for reading.
DEFAULTS: dict[str, Any] = DetectionConfig().to_dict()

QUICK: dict[str, Any] = {
    "num_images": 800,
    "detector": {"epochs": 10},
    "stage1": {"epochs": 12},
    "stage2": {"epochs": 6},
    "attacks": {"budget": "quick", "soft": False},
}


def build_config(*, quick: bool = False, config_file: str | Path | None = None, assignments: Iterable[str] = (),
                 overrides: Mapping[str, Any] | None = None) -> DetectionConfig:
    """Defaults, then ``--quick``, then the JSON file, then ``overrides``, then ``--set``; validated."""
    return build_as(DetectionConfig, quick=quick, config_file=config_file, assignments=assignments,
                    overrides=overrides, quick_overrides=QUICK)


@dataclass
class DetectionExperiment:
    """What a detection run holds in memory."""

    config: DetectionConfig
    dataset: DetectionData
    splits: dict[str, DetectionData]
    network: CenterNet | None = None
    obfuscator: Obfuscator | None = None
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Tensor] = field(default_factory=dict)

    @property
    def background(self) -> int:
        """The layer's background class: index C (the layer has C + 1 classes)."""
        return self.dataset.num_classes

    @property
    def selection_names(self) -> list[str]:
        return [*self.dataset.class_names, "background"]


# -- data -------------------------------------------------------------------------------------------
def load_dataset(config: DetectionConfig) -> DetectionData:
    """The embedded scenes, or the user's ``.npz`` / COCO ``.json``."""
    if config.data == "scenes":
        return make_scenes(config.num_images, size=config.image_size, seed=config.seed)
    return load_detection_data(config.data, image_size=config.image_size)


def prepare(config: Mapping[str, Any]) -> DetectionExperiment:
    """The experiment of ``config`` (a :class:`DetectionConfig`, or a mapping checked as one)."""
    config = DetectionConfig.coerce(config)
    dataset = load_dataset(config)
    return DetectionExperiment(config, dataset, split_detection(dataset, seed=config.seed))


def _encoded(network: CenterNet, data: DetectionData) -> tuple[Tensor, ...]:
    enc = network.encode(data.targets(), data.image_size)
    return enc["heatmap"], enc["size"], enc["offset"], enc["mask"]


def _unpack(heat: Tensor, size: Tensor, offset: Tensor, mask: Tensor) -> dict[str, Tensor]:
    return {"heatmap": heat, "size": size, "offset": offset, "mask": mask}


# -- stage 0: the detector ------------------------------------------------------------------------------
def train_detector(exp: DetectionExperiment, progress: Progress | None, log: RunLog) -> None:
    cfg, data = exp.config, exp.splits["train"]
    checkpoint = cfg.detector.checkpoint
    if checkpoint:
        network = load_task_network(checkpoint, CenterNet, channels=exp.dataset.channels,
                                    num_classes=exp.dataset.num_classes, option="detector.checkpoint")
        log(f"loaded detector N from {checkpoint}")
    else:
        torch.manual_seed(cfg.seed)
        network = CenterNet(exp.dataset.channels, exp.dataset.num_classes, width=cfg.detector.width)

        def loss_fn(x: Tensor, *enc: Tensor) -> tuple[Tensor, dict[str, float]]:
            return network.loss_from_encoded(network(x), _unpack(*enc))

        exp.history["detector"] = train_task_network(
            network, loss_fn, (data.images, *_encoded(network, data)), epochs=cfg.detector.epochs,
            lr=cfg.detector.lr, batch_size=cfg.batch_size, generator=stage_generator(cfg, 1),
            progress=progress, description="detector N (clean scenes)",
        )
    network.eval()
    freeze(network)  # frozen in stages 1 and 2 (spec §3)
    exp.network = network


# -- stage 1 ------------------------------------------------------------------------------------------
def build_layer(config: DetectionConfig, dataset: DetectionData) -> StochasticConditionalConv2d:
    """Image in, image-shaped sample out; C + 1 classes (the last one is the background). A
    Gaussian or Laplace layer starts at the identity: N detects on its first release."""
    layer = {**config.layer, "kind": "conv", "selection_at": "input"}
    return cast(StochasticConditionalConv2d, build_image_layer(layer, dataset.images, dataset.num_classes + 1))


def box_masks(exp: DetectionExperiment, data: DetectionData) -> Tensor:
    """The hard selection of every image of ``data``: ``Tensor[N, C + 1, 1, H, W]``."""
    hard = HardSelection(exp.dataset.num_classes + 1, background=exp.background)
    return hard.from_boxes(data.targets(), data.image_size, data.image_size)


def max_map_loss(config: DetectionConfig) -> float | None:
    """The mAP@.5 budget in points (``utility.max_map_loss``), or ``None``: fixed-λ stages."""
    value = config.utility.max_map_loss
    return None if value is None else float(value)


def budget_parts(exp: DetectionExperiment) -> tuple[DetectionData, DetectionData]:
    """The obfuscator split cut (seeded) into a training part and the validation part on which
    the mAP budget is measured (``utility.validation_fraction`` of it)."""
    data, fraction = exp.splits["obfuscator"], float(exp.config.utility.validation_fraction)
    train, val = validation_cut(len(data), fraction, stage_generator(exp.config, 5), "utility.max_map_loss")
    return data.subset(train.sort().values), data.subset(val.sort().values)


def _within_budget(
    exp: DetectionExperiment, stage: str, parameters: list[torch.nn.Parameter], module: torch.nn.Module,
    release: Callable[[Tensor, Tensor], tuple[Tensor, Any]], evaluate: Callable[[Tensor, Tensor], Tensor],
    epochs: int, lr: float, offset: int, progress: Progress | None, description: str, log: RunLog | None,
) -> dict[str, list[float]]:
    """One stage that shapes a release, within the mAP budget (the shared stage code)."""
    cfg, network = exp.config, exp.network
    assert network is not None
    train, val = budget_parts(exp)
    budget = DetectionBudget(cast(float, max_map_loss(cfg)), network, val.images, box_masks(exp, val), val.targets(),
                             top_k=cfg.eval.top_k, score_threshold=cfg.eval.score_threshold)
    objective = PrivacyObjective(cfg.stage1.privacy, num_classes=exp.dataset.num_classes + 1,
                                 image_shape=(exp.dataset.channels, *exp.dataset.image_size))

    def task_loss(h: Tensor, batch: Sequence[Tensor]) -> Tensor:
        return network.loss_from_encoded(network(h), _unpack(*batch[2:]))[0]

    history, result = train_within_budget(
        parameters, [module], release, objective, budget,
        (train.images, box_masks(exp, train), *_encoded(network, train)),
        epochs=epochs, lr=lr, batch_size=cfg.batch_size, generator=stage_generator(cfg, offset), evaluate=evaluate,
        progress=progress, description=f"{description} ({objective.kind}, budget {budget.max_loss:g} pt mAP@.5)",
        task_loss=task_loss, dual_every_step=False,
    )
    result.record(exp.metrics, stage, log)
    return history


def train_stage1(exp: DetectionExperiment, progress: Progress | None, log: RunLog) -> Obfuscator:
    cfg, network = exp.config, exp.network
    if network is None:
        raise SCLError("train the detector first")
    torch.manual_seed(cfg.seed + 1)
    layer = build_layer(cfg, exp.dataset)
    obfuscator = Obfuscator(layer, box_background=exp.background)
    data = exp.splits["obfuscator"]
    kind, lam = cfg.stage1.privacy, float(cfg.stage1.lam)
    if cfg.layer.start == "class_mean":
        part = budget_parts(exp)[0] if max_map_loss(cfg) is not None else data
        conv_class_mean_init(layer, part.images, box_masks(exp, part))
    if max_map_loss(cfg) is not None:
        exp.history["stage1"] = _within_budget(
            exp, "stage1", list(layer.parameters()), layer, layer.sample_with_distribution,
            lambda x, masks: layer(x, masks), cfg.stage1.epochs, cfg.stage1.lr, 2, progress,
            "stage 1: layer, box selection", log,
        )
        layer.eval()
        return obfuscator

    def loss_fn(x: Tensor, masks: Tensor, *enc: Tensor) -> tuple[Tensor, dict[str, float]]:
        h, dist = layer.sample_with_distribution(x, masks)
        task, stats = network.loss_from_encoded(network(h), _unpack(*enc))
        privacy, pstats = privacy_term(kind, x, h, dist)
        return task + lam * privacy, {"task_loss": float(task.detach()), **stats, **pstats}

    layer.train()
    exp.history["stage1"] = engine.train(
        loss_fn, list(layer.parameters()), (data.images, box_masks(exp, data), *_encoded(network, data)),
        epochs=cfg.stage1.epochs, lr=cfg.stage1.lr, batch_size=cfg.batch_size,
        generator=stage_generator(cfg, 2), progress=progress, description=f"stage 1: layer, box selection (λ={lam:g})",
    )
    layer.eval()
    return obfuscator


# -- stage 2 ------------------------------------------------------------------------------------------
def train_stage2(exp: DetectionExperiment, obfuscator: Obfuscator, progress: Progress | None,
                 log: RunLog | None = None) -> None:
    """Spatial soft selection maps ``(1, H, W)`` per class on the frozen layer (spec §2.2.1):
    within the mAP budget with stage 1's objective (each pixel's class from the training boxes),
    or, without a budget, on the detection loss alone."""
    cfg, network, data = exp.config, exp.network, exp.splits["obfuscator"]
    if network is None:
        raise SCLError("train the detector first")
    torch.manual_seed(cfg.seed + 2)
    soft = SoftSelection(exp.dataset.num_classes + 1, (1, *exp.dataset.image_size))
    obfuscator.selection = soft
    obfuscator.freeze_layer()
    obfuscator.layer.train()  # reparameterised samples, frozen weights
    if max_map_loss(cfg) is not None:
        exp.history["stage2 soft"] = _within_budget(
            exp, "soft", obfuscator.selection_parameters(), soft,
            lambda x, masks: obfuscator.sample_with_distribution(x), lambda x, masks: obfuscator(x),
            cfg.stage2.epochs, cfg.stage2.lr, 3, progress, "stage 2: soft selection maps", log,
        )
        obfuscator.eval()
        exp.obfuscator = obfuscator
        return

    def loss_fn(x: Tensor, *enc: Tensor) -> tuple[Tensor, dict[str, float]]:
        return network.loss_from_encoded(network(obfuscator(x)), _unpack(*enc))

    exp.history["stage2 soft"] = engine.train(
        loss_fn, obfuscator.selection_parameters(), (data.images, *_encoded(network, data)),
        epochs=cfg.stage2.epochs, lr=cfg.stage2.lr, batch_size=cfg.batch_size,
        generator=stage_generator(cfg, 3), progress=progress, description="stage 2: soft selection maps",
    )
    obfuscator.eval()
    exp.obfuscator = obfuscator


# -- evaluation ----------------------------------------------------------------------------------------
Transform = Callable[[Tensor, list[dict[str, Tensor]]], Tensor]


@torch.no_grad()
def predict(exp: DetectionExperiment, data: DetectionData, transform: Transform | None = None,
            batch_size: int = 128) -> list[dict[str, Tensor]]:
    """N's detections on ``transform(images, targets)`` (clean images without a transform)."""
    network = exp.network
    if network is None:
        raise SCLError("train the detector first")
    ecfg = exp.config.eval
    out: list[dict[str, Tensor]] = []
    for start in range(0, len(data), batch_size):
        index = list(range(start, min(start + batch_size, len(data))))
        x = data.images[index]
        if transform is not None:
            x = transform(x, data.targets(index))
        out.extend(network.detect(x, k=ecfg.top_k, threshold=ecfg.score_threshold))
    return out


def _modes(exp: DetectionExperiment) -> dict[str, Transform | None]:
    obf = exp.obfuscator
    if obf is None:
        raise SCLError("nothing to evaluate: train the obfuscator first")
    obf.eval()
    return {"clean": None, "hard": lambda x, t: obf(x, boxes=t), "soft": lambda x, t: obf(x)}


def evaluate(exp: DetectionExperiment) -> dict[str, dict[str, float]]:
    """COCO mAP of N on the test split for clean, hard (boxes known) and soft (box-free) inputs."""
    test = exp.splits["test"]
    results = {}
    for name, transform in _modes(exp).items():
        results[name] = coco_map(test.targets(), predict(exp, test, transform),
                                 num_classes=exp.dataset.num_classes, image_size=test.image_size)
    for key in ("map", "map50", "map75"):
        exp.metrics[key] = {name: r[key] for name, r in results.items()}
    return results


# -- attacks ------------------------------------------------------------------------------------------
def gaussian_reference(exp: DetectionExperiment, target: float) -> tuple[float, float]:
    """The plain-noise scale at which N's test mAP@.5 matches ``target``: ``(scale, mAP@.5)``.

    Bisection (:func:`scl.baselines.calibrate_scale`) on one fixed noise draw (seeded), so mAP is a
    deterministic function of the scale, as classification's reference does with accuracy.
    """
    from dataclasses import replace

    from scl.baselines import GaussianNoise

    test = exp.splits["test"]

    def map50_of(images: Tensor) -> float:
        return float(coco_map(test.targets(), predict(exp, replace(test, images=images)),
                              num_classes=exp.dataset.num_classes, image_size=test.image_size)["map50"])

    return GaussianNoise.calibrate(test.images, map50_of, target, generator=stage_generator(exp.config, 7), steps=10)


def run_attacks(exp: DetectionExperiment, progress: Progress | None, log: RunLog) -> dict[str, float]:
    """Decoder inversion of the hard release, its class-mask floor and clean ceiling.

    The attacks of :mod:`scl.attacks` take ``obfuscate(x, y)`` with one integer per image; here
    ``y`` is the image's index into the attacker + test images, which the closures use to look
    up that image's boxes (the attacker knows them: it holds the annotated split).
    """
    from scl.attacks import clean_ceiling_attack, decoder_attack
    from scl.attacks.budget import get_budget

    cfg, obf = exp.config, exp.obfuscator
    if obf is None:
        raise SCLError("nothing to attack: train the obfuscator first")
    obf.eval()
    acfg = cfg.attacks
    attacker, test = exp.splits["attacker"], exp.splits["test"]
    n_a, n_t = len(attacker), len(test)
    index_a, index_t = torch.arange(n_a), n_a + torch.arange(n_t)
    split_a, split_t = (attacker.images, index_a), (test.images, index_t)
    # the hard selection of every image, [N, C + 1, 1, H, W]: obf.layer(x, masks[i]) is exactly
    # obf(x, boxes=targets[i]) (HardSelection.from_boxes with the background class), without
    # rebuilding the masks for every batch of every epoch
    masks = torch.cat([box_masks(exp, attacker), box_masks(exp, test)])
    common: dict[str, Any] = {"num_classes": n_a + n_t, "budget": get_budget(acfg.budget).capped(acfg.max_epochs),
              "seed": cfg.seed, "progress": progress, "batch_size": cfg.batch_size}

    def hard(x: Tensor, index: Tensor) -> Tensor:
        return obf.layer(obf.features(x), masks[index])

    def soft(x: Tensor, index: Tensor) -> Tensor:
        return obf(x)

    def masks_only(x: Tensor, index: Tensor) -> Tensor:
        return masks[index, :, 0]

    privacy: dict[str, Any] = {"budget": acfg.budget}
    log(f"attack budget {acfg.budget}: learned decoder on the hard (box) release")
    result = decoder_attack(hard, split_a, split_t, averaged_copies=acfg.averaged_copies, **common)
    privacy.update(result.metrics)
    exp.figures["decoder"] = result.reconstructions
    log("attack: the same decoder given only the class masks (floor)")
    floor = decoder_attack(masks_only, split_a, split_t, averaged_copies=1, **common)
    privacy.update({floor_of(key): floor.metrics[key] for key in DECODER_KEYS})
    exp.figures["floor"] = floor.reconstructions
    log("attack: the same decoder on clean images (ceiling)")
    clean = clean_ceiling_attack(split_a, split_t, **common)
    privacy.update(clean.metrics)
    exp.figures["ceiling"] = clean.reconstructions
    if "hard" not in exp.metrics.get("map50", {}):
        evaluate(exp)
    reference = float(exp.metrics["map50"]["hard"])
    scale, noise_map50 = gaussian_reference(exp, reference)
    privacy.update(gaussian_scale=scale, gaussian_map50=noise_map50, reference_release="hard",
                   reference_map50=reference)
    log(f"attack: the same decoder on plain Gaussian noise of scale {scale:.3g} (mAP@.5 {100 * noise_map50:.1f}%, "
        f"hard release {100 * reference:.1f}%)")
    from scl.baselines import GaussianNoise

    noise = GaussianNoise(scale)
    plain = decoder_attack(lambda x, index: noise(x), split_a, split_t, averaged_copies=acfg.averaged_copies,
                           **common)
    privacy.update({release_key(key, "gaussian"): plain.metrics[key] for key in DECODER_KEYS})
    exp.figures["gaussian"] = plain.reconstructions
    # as in classification: does the hard release leak less than plain noise at the same mAP@.5
    privacy["beats_gaussian"] = {"hard": {key: bool(privacy[key] < privacy[release_key(key, "gaussian")])
                                          for key in DECODER_KEYS}}
    if acfg.soft:
        log("attack: learned decoder on the box-free (soft) release")
        soft_result = decoder_attack(soft, split_a, split_t, averaged_copies=1, **common)
        privacy.update({release_key(key, "soft"): soft_result.metrics[key] for key in DECODER_KEYS})
    exp.metrics["privacy"] = privacy
    return privacy


def targets(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, checked against the measured numbers."""
    rows = []
    map50, priv = metrics.get("map50", {}), metrics.get("privacy", {})
    if "clean" in map50 and "soft" in map50:
        gap = 100 * (map50["clean"] - map50["soft"])
        rows.append({"name": "clean - soft mAP@.5 (points)", "value": round(gap, 4), "target": "<= 3.0",
                     "met": bool(gap <= 3.0)})
    ssim, floor_key, noise_key = DECODER_SSIM, floor_of(DECODER_SSIM), release_key(DECODER_SSIM, "gaussian")
    if ssim in priv and floor_key in priv:
        floor = priv[floor_key]
        rows.append({"name": "decoder SSIM (hard release)", "value": round(priv[ssim], 4),
                     "target": f"<= mask-only floor + 0.05 = {floor + 0.05:.3f}",
                     "met": bool(priv[ssim] <= floor + 0.05)})
    if ssim in priv and noise_key in priv:
        rows.append({"name": "decoder SSIM (hard release) against plain noise", "value": round(priv[ssim], 4),
                     "target": f"< plain noise at the same mAP@.5 = {priv[noise_key]:.3f}",
                     "met": bool(priv[ssim] < priv[noise_key])})
    return rows


# -- outputs -----------------------------------------------------------------------------------------
CAPTIONS = {
    "samples": "Test scenes: clean, obfuscated with the hard selection from the boxes, obfuscated with "
    "the learned soft selection (box-free), and what the decoder attack rebuilds from the hard release "
    "beside its floor (the same decoder given only the class masks) and ceiling (given clean images).",
    "hard_selection": "Hard selection π_c from the boxes (Fig. 4 middle): white = 1 inside class-c "
    "boxes; the background class is 1 outside every box.",
    "selection_maps": "Learned soft selection maps π_c (Fig. 4 right), shared by all images, on a "
    "fixed 0..1 scale; one per object class and one for the background.",
    "detections_truth": "Ground-truth boxes of the first test scenes.",
    "detections_clean": "Detector N on clean test scenes (score >= 0.3).",
    "detections_hard": "Detector N on the hard (box) release of the same scenes (score >= 0.3).",
    "detections_soft": "Detector N on the soft (box-free) release of the same scenes (score >= 0.3).",
    "training_curves": "Loss per epoch: detector N, stage 1 (layer) and stage 2 (soft selection).",
    "utility_budget": "The mAP budget over training, for stage 1 (hard release) and the soft maps: left, the "
    "Lagrange multiplier μ on the detection loss; right, the validation mAP@.5 loss per epoch against the "
    "budget (dashed), the epoch kept (dot) and the test loss of the kept release (cross).",
}


def _shown(dets: list[dict[str, Tensor]], threshold: float = 0.3) -> list[dict[str, Tensor]]:
    return [{k: v[d["scores"] >= threshold] for k, v in d.items()} for d in dets]


def write_outputs(exp: DetectionExperiment, folder: Path, log: RunLog, name: str | None = None) -> None:
    """Figures, metrics.json, config.json, log.txt and report.html."""
    from scl import figures
    from scl.report import write_report

    fig = folder / "figures"
    test = exp.splits["test"]
    k = min(8, len(test))
    view = test.subset(range(k))
    names = exp.dataset.class_names
    rows: dict[str, Tensor] = {"clean": view.images}
    if exp.obfuscator is not None:
        with torch.no_grad():
            for mode, transform in _modes(exp).items():
                if transform is not None:
                    rows[f"{mode} release"] = transform(view.images, view.targets())
                dets = _shown(predict(exp, view, transform))
                figures.boxes_overlay(rows["clean" if transform is None else f"{mode} release"],
                                      [d["boxes"] for d in dets], [d["labels"] for d in dets],
                                      fig / f"detections_{mode}.png", scores=[d["scores"] for d in dets],
                                      class_names=names, title=f"N's detections: {mode}")
        masks = box_masks(exp, view)
        labels = [*names, "bg"]
        figures.image_grid({"image": view.images, **{f"π {n}": masks[:, c] for c, n in enumerate(labels)}},
                           fig / "hard_selection.png", title="Hard selection from the boxes (bg: background)")
        if isinstance(exp.obfuscator.selection, SoftSelection):
            figures.selection_maps(exp.obfuscator.selection.values.detach(), fig / "selection_maps.png",
                                   class_names=exp.selection_names)
    figures.boxes_overlay(view.images, view.boxes, view.labels, fig / "detections_truth.png", class_names=names,
                          title="ground truth")
    for key, label in (("decoder", "decoder reconstruction"), ("floor", "mask-only floor"),
                       ("ceiling", "clean ceiling"), ("gaussian", "decoded plain noise")):
        if key in exp.figures:
            rows[label] = exp.figures[key]
    figures.image_grid(rows, fig / "samples.png", title="Test scenes and what leaves the data owner")
    if exp.history:
        figures.training_curves(exp.history, fig / "training_curves.png")
    if exp.metrics.get("utility"):
        from scl.report import budget_test_losses

        figures.budget_curves(exp.metrics["utility"], budget_test_losses(exp.metrics), fig / "utility_budget.png")
    exp.metrics["pipeline"] = NAME  # what the report reads to lay the run out
    exp.metrics["dataset"] = exp.dataset.name
    exp.metrics["num_classes"] = exp.dataset.num_classes
    exp.metrics["class_names"] = list(names)
    exp.metrics["input_shape"] = [exp.dataset.channels, *exp.dataset.image_size]
    exp.metrics["splits"] = {name: len(part) for name, part in exp.splits.items()}  # images per split
    exp.metrics["objects"] = {k: v.num_objects for k, v in exp.splits.items()}
    exp.metrics["targets"] = targets(exp.metrics)
    write_results(folder, exp.config, exp.metrics)
    write_log(folder, log)
    write_report(folder, name=name)


def save_checkpoints(exp: DetectionExperiment, folder: Path) -> None:
    ckpt = folder / "checkpoints"
    if exp.network is not None:
        save(exp.network, ckpt / CHECKPOINTS["network"])
    if exp.obfuscator is not None:
        save(exp.obfuscator, ckpt / CHECKPOINTS["obfuscator"])


def _fmt_maps(result: Mapping[str, Mapping[str, float]]) -> str:
    return ", ".join(f"{mode} {100 * r['map']:.1f} / {100 * r['map50']:.1f}" for mode, r in result.items())


def run(config: Mapping[str, Any], out: Path, *, console: Any = None, show_progress: bool = True
        ) -> tuple[Path, dict[str, Any]]:
    """The whole detection experiment into the run folder ``out``; returns ``(out, metrics)``."""
    config = DetectionConfig.coerce(config)
    log = RunLog(console)
    total = time.perf_counter()
    with run_folder(out) as folder, run_noise(config), engine.threads(config.threads):
        progress = make_progress(show_progress, console)
        with progress if progress is not None else contextlib.nullcontext():
            exp = prepare(config)
            seconds = exp.metrics.setdefault("seconds", {})
            log(f"data: {exp.dataset.name}, {len(exp.dataset)} images {tuple(exp.dataset.images.shape[1:])}, "
                f"{exp.dataset.num_objects} objects of {exp.dataset.num_classes} classes; "
                + ", ".join(f"{k} {len(v)}" for k, v in exp.splits.items()))
            for stage, step in (("base", lambda: train_detector(exp, progress, log)),
                                ("stage1", lambda: setattr(exp, "obfuscator", train_stage1(exp, progress, log))),
                                ("stage2", lambda: train_stage2(exp, exp.obfuscator, progress, log))):  # type: ignore[arg-type]
                start = time.perf_counter()
                step()
                seconds[stage] = time.perf_counter() - start
            start = time.perf_counter()
            result = evaluate(exp)
            seconds["evaluate"] = time.perf_counter() - start
            log("mAP@[.5:.95] / mAP@.5 (%): " + _fmt_maps(result))
            start = time.perf_counter()
            run_attacks(exp, progress, log)
            seconds["attacks"] = time.perf_counter() - start
        seconds["total"] = time.perf_counter() - total
        save_checkpoints(exp, folder)
        write_outputs(exp, folder, log, name=Path(out).name)
    return out, exp.metrics


def summary_table(metrics: Mapping[str, Any]) -> Any:
    """A rich table of the run's results for the terminal."""
    from rich.table import Table

    table = Table(title="scl detect: results on the test split")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("beside", justify="right")
    maps, map50 = metrics.get("map", {}), metrics.get("map50", {})
    for mode in maps:
        table.add_row(f"mAP@[.5:.95] ({mode})", f"{100 * maps[mode]:.1f}", f"mAP@.5: {100 * map50.get(mode, 0):.1f}")
    priv = metrics.get("privacy", {})
    for label, key, other, text in (
        ("decoder SSIM, hard release", DECODER_SSIM, floor_of(DECODER_SSIM), "mask-only floor {:.3f}"),
        ("decoder SSIM, 8 copies averaged", DECODER_SSIM_AVG8, ceiling_of(DECODER_SSIM), "clean ceiling {:.3f}"),
        ("decoder SSIM, soft release", release_key(DECODER_SSIM, "soft"), floor_of(DECODER_SSIM),
         "mask-only floor {:.3f}"),
        ("decoder PSNR (dB), hard release", DECODER_PSNR, floor_of(DECODER_PSNR), "mask-only floor {:.2f}"),
        ("decoder SSIM, plain noise (same mAP@.5)", release_key(DECODER_SSIM, "gaussian"), "gaussian_scale",
         "scale {:.3g}"),
        ("decoder PSNR (dB), plain noise", release_key(DECODER_PSNR, "gaussian"), "gaussian_map50",
         "its mAP@.5 {:.1%}"),
    ):
        if key in priv:
            table.add_row(label, f"{priv[key]:.3f}", text.format(priv[other]) if other in priv else "")
    return table


def summary(metrics: Mapping[str, Any]) -> list[Any]:
    """The run's results for the terminal (:class:`scl.pipelines.Pipeline`): :func:`summary_table`,
    plain noise's verdicts, the budget and the targets."""
    from scl.pipelines import noise_verdict_lines, summary_lines, target_lines
    from scl.report import budget_lines, gaussian_verdicts

    verdicts = gaussian_verdicts(metrics.get("privacy", {}), "mAP@.5")
    return [summary_table(metrics), *noise_verdict_lines(verdicts), *summary_lines(budget_lines(metrics)),
            *target_lines(metrics)]
