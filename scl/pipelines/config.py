"""Experiment configuration: typed, frozen configs built from defaults, ``--quick``, ``--config FILE``
and ``--set k=v``.

Each pipeline's config is a frozen dataclass (:class:`ClassificationConfig` here,
``detection.DetectionConfig``, ``federated.task.FederatedConfig``) whose field defaults are that
pipeline's defaults, the one place they are written. A field's check (its ``metadata``) and a section's
:meth:`Section.check` (rules that tie fields together) make up the one validator, :func:`validate`.

Read a config as attributes (``config.stage1.lam``, checked by mypy). Sections are also read-only
mappings (``config["stage1"]["lam"]``, ``config.get("utility")``), so scripts written against the
dict configs of earlier versions keep working. A config never changes: :meth:`Section.updated` returns
a new, validated one. :meth:`Section.to_dict` is the JSON of ``config.json`` and of the Flower config
record, and :meth:`Section.from_dict` reads it back, filling keys an earlier version did not write.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from scl.errors import ConfigError
from scl.io import plain

S = TypeVar("S", bound="Section")

#: A field's check: ``check(dotted_name, value)`` raises a :class:`ConfigError` that says what to change.
Check = Callable[[str, Any], None]


# -- the checks fields are made of (one message each) --------------------------------------------------
def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def check_number(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> None:
    """A number in ``[low, high]`` (``(low, high]`` with ``low_open``), not a bool."""
    if not _is_number(value) or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ConfigError(f"{name} must be a number in {bracket}{low}, {high}], but got {value!r}")


def positive_int(name: str, value: Any) -> None:
    """Field check: an int >= 1, not a bool."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, but got {value!r}")


def integer(name: str, value: Any) -> None:
    """Field check: any int (a seed), not a bool."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, but got {value!r}")


def count(what: str) -> Check:
    """Field check: an int >= 0, where 0 means ``what``."""
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be an integer >= 0 (0: {what}), but got {value!r}")
    return check


def optional_positive_int(unit: str = "") -> Check:
    """Field check: null, or an int >= 1 (``unit``, e.g. "epochs", in the message)."""
    def check(name: str, value: Any) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be null or a positive integer{f' ({unit})' if unit else ''}, "
                              f"but got {value!r}")
    return check


def positive_number(name: str, value: Any) -> None:
    """Field check: a finite number > 0 (a learning rate)."""
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a number > 0, but got {value!r}")


def non_negative(name: str, value: Any) -> None:
    """Field check: a finite number >= 0 (a weight such as λ)."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a number >= 0, but got {value!r}")


def number_in(low: float, high: float, *, low_open: bool = False) -> Check:
    """Field check: :func:`check_number`."""
    return lambda name, value: check_number(name, value, low, high, low_open=low_open)


def open_unit(name: str, value: Any) -> None:
    """Field check: a number in (0, 1), e.g. a fraction held out."""
    if not _is_number(value) or not 0 < value < 1:
        raise ConfigError(f"{name} must be a number in (0, 1), but got {value!r}")


def half_open_unit(name: str, value: Any) -> None:
    """Field check: a number in [0, 1), e.g. a score threshold."""
    if not _is_number(value) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be in [0, 1), but got {value!r}")


def boolean(name: str, value: Any) -> None:
    """Field check: true or false."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, but got {value!r}")


def string(name: str, value: Any) -> None:
    """Field check: a string (a name or a path)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty string, but got {value!r}")


def optional_path(name: str, value: Any) -> None:
    """Field check: null or a string (an optional path)."""
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name} must be null or a path, but got {value!r}")


def choice(*allowed: Any, note: str = "") -> Check:
    """Field check: one of ``allowed`` (``note`` says why, where the list is a pipeline's subset)."""
    def check(name: str, value: Any) -> None:
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {list(allowed)}{f' ({note})' if note else ''}, but got {value!r}")
    check.allowed = allowed  # type: ignore[attr-defined]
    return check


def auto_or_positive(name: str, value: Any) -> None:
    """Field check: ``"auto"`` or a number > 0 (an initial noise scale)."""
    if value != "auto" and (not _is_number(value) or not value > 0):
        raise ConfigError(f"{name} must be \"auto\" or a number > 0, but got {value!r}")


def budget(option: str, unit: str = "") -> Check:
    """Field check: a utility budget, null (no budget) or points of ``unit`` in [0, 100) (the
    command-line option named in the message)."""
    def check(name: str, value: Any) -> None:
        if value is not None and (not _is_number(value) or not 0 <= value < 100):
            raise ConfigError(f"{name} ({option}) must be null or a number of points {unit}in [0, 100), "
                              f"but got {value!r}")
    return check


def numbers(low: float = 0.0) -> Check:
    """Field check: a non-empty list of numbers >= ``low`` (e.g. the λ of a sweep)."""
    def check(name: str, value: Any) -> None:
        if not isinstance(value, list) or not value or not all(_is_number(v) and v >= low for v in value):
            raise ConfigError(f"{name} must be a non-empty list of numbers >= {low:g}, but got {value!r}")
    return check


# -- sections --------------------------------------------------------------------------------------------
def option(default: Any, check: Check | None = None) -> Any:
    """A field with a default and a check (lists are copied per config)."""
    metadata = {} if check is None else {"check": check}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(kind: type[Section]) -> Any:
    """A field that is a section of its own (``config.stage1``)."""
    return dataclasses.field(default_factory=kind, metadata={"section": kind})


class Section(Mapping[str, Any]):
    """A frozen config section (each subclass is decorated with :func:`frozen`).

    Attributes are the typed way to read it. It is also a read-only :class:`~collections.abc.Mapping`
    of its field names, and compares equal to a dict of the same JSON.
    """

    #: Values that configs written by earlier versions mean by a key they lack (dotted name -> value),
    #: where that differs from today's default; used by :meth:`from_dict` with ``legacy=True``.
    LEGACY: ClassVar[Mapping[str, Any]] = {}

    def __getitem__(self, key: str) -> Any:
        if key in self._names():
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self.to_dict() == plain(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # lists inside; equal to dicts, which do not hash

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in self)})"

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """The config as nested dicts and lists (``config.json``)."""
        return {name: plain(getattr(self, name)) for name in self}

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any], *, legacy: bool = False) -> S:
        """The config of ``data``; keys it lacks take their default.

        ``legacy=False`` (a config being built): an unknown key is an error. ``legacy=True`` (a run
        folder an earlier version wrote): keys since removed are dropped, and a missing key takes the
        value it meant then (:attr:`LEGACY`) where that differs from today's default.
        """
        return cls._read(data, cls.LEGACY if legacy else None, "")

    @classmethod
    def _read(cls: type[S], data: Any, legacy: Mapping[str, Any] | None, prefix: str) -> S:
        if not isinstance(data, Mapping):
            raise ConfigError(f"config key {prefix.rstrip('.')!r} must be a section (object), but got {data!r}")
        names = cls._names()
        unknown = [key for key in data if key not in names]
        if unknown and legacy is None:
            raise ConfigError(f"unknown config key {prefix + unknown[0]!r}; known keys: {sorted(names)}")
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            kind, name = field.metadata.get("section"), prefix + field.name
            if kind is not None:
                values[field.name] = kind._read(data.get(field.name, {}), legacy, name + ".")
            elif field.name in data:
                values[field.name] = copy.deepcopy(plain(data[field.name]))
            elif legacy is not None and name in legacy:
                values[field.name] = legacy[name]
        return cls(**values)

    @classmethod
    def coerce(cls: type[S], config: Mapping[str, Any]) -> S:
        """``config`` itself when it is one, else the validated config of a mapping (a script's dict)."""
        if isinstance(config, cls):
            return config
        result = cls.from_dict(config)
        validate(result)
        return result

    def updated(self: S, changes: Mapping[str, Any]) -> S:
        """A new config: this one with ``changes`` (nested, e.g. ``{"utility": {"max_accuracy_loss":
        2.0}}``) merged in, validated."""
        result = type(self).from_dict(merge(self.to_dict(), changes))
        validate(result)
        return result

    def check(self) -> None:
        """Rules that tie this section's fields together (after each field's own check)."""


def validate(config: Section, prefix: str = "") -> None:
    """The one validator: each field's check, each section's :meth:`Section.check`, innermost first."""
    for field in dataclasses.fields(config):  # type: ignore[arg-type]
        value, name = getattr(config, field.name), prefix + field.name
        if "section" in field.metadata:
            validate(value, name + ".")
        elif "check" in field.metadata:
            field.metadata["check"](name, value)
    config.check()


def frozen(cls: type[S]) -> type[S]:
    """``@frozen``: a :class:`Section` dataclass (frozen; equality is :meth:`Section.__eq__`'s)."""
    return dataclasses.dataclass(frozen=True, eq=False, repr=False)(cls)


# -- the classification experiment (scl demo, scl train, the benchmark); federated shares its start --
@frozen
class Network(Section):
    """The task network N (``network``)."""

    epochs: int = option(40, positive_int)
    lr: float = option(2e-3, positive_number)
    width: int = option(32, positive_int)
    #: a SmallCNN checkpoint to use as N instead of training one (``--network``)
    checkpoint: str | None = option(None, optional_path)


@frozen
class Layer(Section):
    """The stochastic conditional layer (``layer``)."""

    # additive: a per-class mean map of the input's shape (spec §1), which can release the class and
    # nothing else; conv: per-class 3 x 3 kernels, which cannot (see the README)
    kind: str = option("additive", choice("additive", "conv"))
    distribution: str = option("gaussian", string)
    selection_at: str = option("input", choice("input", "output"))
    kernel_size: int = option(3, positive_int)
    # the initial noise scale: a number, or "auto" (the pixels' standard deviation)
    init_scale: float | str = option("auto", auto_or_positive)
    # additive only: learn a per-class gain on the input (mean g_c * x + m_c), so the layer can turn x
    # down where N does not need it
    learn_gain: bool = option(True, boolean)
    # where stage 1 starts: "class_mean" (gain 0, each class's mean map at the mean image of its
    # training images: the release starts with the class and nothing else, and the budget lets x in
    # only where N needs it), "input" (x plus noise), or "auto" (class_mean for the additive layer
    # with a gain, input otherwise)
    start: str = option("auto", choice("auto", "class_mean", "input"))
    # trainable pre-layers L before the layer (spec §5.1: x -> L -> S -> N): "none", or "residual"
    # (x + two 3 x 3 convolutions, started at the identity; scl.models.ResidualPreLayers)
    pre: str = option("none", choice("none", "residual"))

    def check(self) -> None:
        if self.start == "class_mean" and not (self.kind == "additive" and self.learn_gain):
            raise ConfigError(
                "layer.start=class_mean needs a layer that can turn x off: layer.kind=additive with "
                f"layer.learn_gain=true (got kind={self.kind!r}, learn_gain={self.learn_gain!r}); set "
                "layer.start=input or auto"
            )


@frozen
class Stage1(Section):
    """Stage 1: the layer trained under hard selection with N frozen (``stage1``).

    ``privacy`` is the objective of every stage that shapes a release
    (:data:`scl.pipelines.stages.OBJECTIVES`): "within" (the Gaussian bound on what h carries beyond
    the class), "dcor", "adversarial", "attribute", "entropy" (Shredder's: the mean log noise scale),
    "ssim" (SSIM(x, h) down), "both" (entropy and ssim). ``lam`` weighs it only without a budget.

    lr 0.03: the layer's parameters live on the pixels' scale and stage 1 takes few steps (2-3 per
    epoch on a few hundred images). At 3e-3 a class-mean start never opened far enough on 1,200 real
    photographs (18 points lost on validation after 100 epochs); at 0.03 it met the budget by epoch 13
    there and by epoch 1 on the digits, at the same release.
    """

    epochs: int = option(100, positive_int)
    lr: float = option(0.03, positive_number)
    privacy: str = option("within", choice("within", "dcor", "adversarial", "attribute", "entropy", "ssim",
                                           "both"))
    #: λ, the privacy term's weight (``--lam``; only without a utility budget)
    lam: float = option(0.1, non_negative)


@frozen
class Utility(Section):
    """The utility budget (``utility``).

    ``max_accuracy_loss``: the most test accuracy a release may lose against clean images, in points
    (``--max-accuracy-loss``), measured on ``validation_fraction`` of the obfuscator split. null: no
    budget; stage 1 weighs the privacy term by ``stage1.lam`` and stage 2 trains on the task alone.
    ``patience``: a stage that shapes a release gives up after this many epochs in a row that neither
    meet the budget nor come closer to it than before (the soft release on the digits: its closest
    point is its start); a stage within the budget runs every epoch. null: every epoch.
    """

    max_accuracy_loss: float | None = option(1.0, budget("--max-accuracy-loss"))
    validation_fraction: float = option(0.5, open_unit)
    patience: int | None = option(10, optional_positive_int("epochs"))


@frozen
class Stage2(Section):
    """Stage 2: the soft selection learned with the layer frozen (``stage2``)."""

    epochs: int = option(80, positive_int)
    lr: float = option(0.1, positive_number)
    # "input" (C_in, H, W) as spec §2.2.1, "spatial" (1, H, W) maps, "channel" (C_in, 1, 1), or "scalar" ()
    soft_shape: str = option("spatial", choice("input", "spatial", "channel", "scalar"))


@frozen
class Gated(Section):
    """The gated selection, ours (``gated``).

    ``init`` "network" starts the gate from a copy of N (the owner holds N to train the layer),
    "scratch" from a small network of its own (give it epochs, e.g. 100 at lr 3e-3). ``epochs`` 0: the
    gate as it starts. Fine-tuning N's copy within the budget did not help: on the digits no epoch of
    100 stayed within the budget (the start was kept), and on 1,200 real photographs the kept epoch
    lost 2.5 points on test against 0.6 on validation. ``pick`` "argmax": at inference the release is
    the most probable class's (see GatedSelection).
    """

    epochs: int = option(0, count("the gate as it starts"))
    lr: float = option(3e-4, positive_number)
    init: str = option("network", choice("network", "scratch"))
    pick: str = option("argmax", choice("argmax", "softmax"))

    def check(self) -> None:
        if self.epochs == 0 and self.init == "scratch":
            raise ConfigError("gated.init=scratch needs training: set gated.epochs to 1 or more (e.g. 100)")


ATTACK_BUDGETS = ("quick", "standard", "strong")


@frozen
class Attacks(Section):
    """The attackers (``attacks``)."""

    # quick | standard | strong (scl.attacks.budget): how hard every learned attacker tries; nested, so
    # a stronger budget never scores a lower leak
    budget: str = option("standard", choice(*ATTACK_BUDGETS))
    # caps every learned attacker's epochs (smoke tests only: the figures are then weaker than the
    # budget's); null: the budget's own
    max_epochs: int | None = option(None, optional_positive_int())
    whitebox_images: int = option(200, positive_int)
    whitebox_steps: int = option(100, positive_int)
    averaged_copies: int = option(8, positive_int)


@frozen
class Sweep(Section):
    """The λ sweep of ``scl demo --sweep`` (``sweep``)."""

    lams: list[float] = option([0.0, 0.03, 0.1, 0.3, 1.0], numbers(0.0))
    stage1_epochs: int = option(20, positive_int)
    decoder_epochs: int = option(15, positive_int)


@frozen
class Shared(Section):
    """What the classification experiment and the federated procedure share: data, N, the layer and
    stage 1."""

    seed: int = option(0, integer)
    # "digits" (embedded, tinted with a private colour attribute), or a path: folder or .npz
    data: str = option("digits", string)
    image_size: int = option(16, positive_int)
    batch_size: int = option(64, positive_int)
    # fix the noise of the whole experiment with scl.deterministic(seed) so numbers reproduce; a
    # deployment would leave this off (noise from the cipher stream, scl.random)
    reproducible: bool = option(True, boolean)
    network: Network = section(Network)
    layer: Layer = section(Layer)
    stage1: Stage1 = section(Stage1)


@frozen
class ClassificationConfig(Shared):
    """The classification experiment's config (``scl demo``, ``scl train``, ``scl bench privacy``)."""

    LEGACY: ClassVar[Mapping[str, Any]] = {
        # before the budget existed: no budget, every epoch
        "utility.max_accuracy_loss": None,
        "utility.patience": None,
        # before the gate started from N and picked the argmax
        "gated.init": "scratch",
        "gated.pick": "softmax",
    }

    utility: Utility = section(Utility)
    stage2: Stage2 = section(Stage2)
    gated: Gated = section(Gated)
    attacks: Attacks = section(Attacks)
    sweep: Sweep = section(Sweep)


#: The classification defaults as JSON (``ClassificationConfig().to_dict()``), for reading.
DEFAULTS: dict[str, Any] = ClassificationConfig().to_dict()

QUICK: dict[str, Any] = {
    "network": {"epochs": 6},
    "stage1": {"epochs": 8},
    "stage2": {"epochs": 6},
    "attacks": {"budget": "quick", "whitebox_images": 32, "whitebox_steps": 30},
    "sweep": {"lams": [0.0, 0.3], "stage1_epochs": 4, "decoder_epochs": 4},
}


# -- building a config -------------------------------------------------------------------------------------
def merge(base: Mapping[str, Any], override: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``; unknown keys are errors."""
    result = plain(base)
    for key, value in override.items():
        name = f"{prefix}{key}"
        if key not in result:
            raise ConfigError(f"unknown config key {name!r}; known keys: {sorted(result)}")
        if isinstance(result[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {name!r} must be a section (object), but got {value!r}")
            result[key] = merge(result[key], value, prefix=name + ".")
        else:
            result[key] = plain(value)
    return result


def parse_set(assignments: Iterable[str]) -> dict[str, Any]:
    """``["stage1.lam=0.3", "data=my.npz"]`` -> nested dict; values are JSON when they parse."""
    result: dict[str, Any] = {}
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. stage1.lam=0.3), but got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return result


def read_file(config_file: str | Path) -> dict[str, Any]:
    """A ``--config`` file's JSON object, or a :class:`ConfigError` that says what is wrong with it."""
    path = Path(config_file)
    try:
        loaded = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a JSON object")
    return loaded


def build_as(
    kind: type[S],
    *,
    quick: bool = False,
    config_file: str | Path | None = None,
    assignments: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
    quick_overrides: Mapping[str, Any] = QUICK,
) -> S:
    """A ``kind`` config: its defaults, then ``quick_overrides`` (with ``quick``), then the file, then
    ``overrides``, then ``--set``; validated."""
    config = kind().to_dict()
    if quick:
        config = merge(config, quick_overrides)
    if config_file is not None:
        config = merge(config, read_file(config_file))
    if overrides:
        config = merge(config, overrides)
    config = merge(config, parse_set(assignments))
    result = kind.from_dict(config)
    validate(result)
    return result


def build(
    *,
    quick: bool = False,
    config_file: str | Path | None = None,
    assignments: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> ClassificationConfig:
    """The classification experiment's config (:func:`build_as`)."""
    return build_as(ClassificationConfig, quick=quick, config_file=config_file, assignments=assignments,
                    overrides=overrides)


def stage_patience(config: Mapping[str, Any]) -> int | None:
    """``utility.patience``: the epochs a constrained stage goes on without progress (``None``: all of
    them; detection's and federated's configs have none)."""
    value = config.get("utility", {}).get("patience")
    return None if value is None else int(value)
