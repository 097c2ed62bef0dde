"""The federated procedure of spec §2.3, shared by both engines (one code path, two transports).

For each clean share ``p`` (5%, 10%, ... up to ``federated.max_share``, or until the test accuracy
reaches ``federated.target_accuracy``):

1. the server trains the task network N on its ``p`` clean share: NN-p
   (:func:`scl.pipelines.classification.train_network`);
2. it trains the stochastic conditional layer against the frozen NN-p with hard selection: SL-p
   (:func:`scl.pipelines.classification.train_stage1`);
3. the other ``1 - p`` of the training data stays on ``K`` clients, each of which obfuscates its
   own samples with SL-p (hard selection from its own labels) and screens random patches of them
   at every training iteration (spec §2.3.1, :mod:`.screening`);
4. training of NN-p resumes for ``federated.rounds`` FedAvg rounds over the server's clean share
   and the clients' obfuscated shares: NN'-p.

A *transport* runs one round of step 4 on the clients and aggregates: :class:`LocalTransport`
(in-process, :mod:`.local`) or the Flower transport (:mod:`.server_app` and :mod:`.client_app`).
Everything else happens here, once, for both.

In this simulation every client loads the same data set and keeps only its own partition
(:func:`client_share`); what crosses the wire is network and layer parameters, a small config
and scalar metrics, never samples.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import Tensor, nn

from scl.data import Dataset, split
from scl.data.partition import PARTITIONS, partition, share_order
from scl.errors import ConfigError, SCLError
from scl.obfuscator import Obfuscator, freeze
from scl.pipelines import classification, engine
from scl.pipelines.config import (
    Section,
    Shared,
    boolean,
    build_as,
    check_number,
    choice,
    frozen,
    number_in,
    option,
    positive_int,
    section,
)
from scl.pipelines.federated.screening import screen
from scl.pipelines.stages import build_image_layer, run_noise
from scl.progress import task as progress_task
from scl.runs import RunLog
from scl.selection import ClassIndex

if TYPE_CHECKING:
    from rich.progress import Progress

ENGINES = ("flower", "local")

def _fail_pairs(name: str, value: Any) -> None:
    if not isinstance(value, list) or not all(
        isinstance(item, list) and len(item) == 2 and all(isinstance(v, int) for v in item) for item in value
    ):
        raise ConfigError(f"{name} must be a list of [client, round] pairs, but got {value!r}")


@frozen
class Screening(Section):
    """Spec §2.3.1: hide this ``share`` of ``patch`` x ``patch`` squares (``federated.screening``)."""

    share: float = option(0.25, number_in(0.0, 1.0))
    patch: int = option(4, positive_int)


@frozen
class Federated(Section):
    """The procedure (``federated``)."""

    engine: str = option("flower", choice(*ENGINES))  # flower (simulation, Ray backend) | local (one process)
    clients: int = option(3, positive_int)
    partition: str = option("iid", choice(*PARTITIONS))  # iid | dirichlet
    alpha: float = option(0.5, number_in(0.0, float("inf"), low_open=True))  # Dirichlet concentration
    start: float = option(0.05, number_in(0.0, 1.0, low_open=True))  # first clean share p
    step: float = option(0.05, number_in(0.0, 1.0, low_open=True))  # p grows by this much per stage
    max_share: float = option(0.3, number_in(0.0, 1.0))
    # stop when NN'-p (with screening) reaches it on the test split
    target_accuracy: float = option(0.97, number_in(0.0, 1.0))
    # NN-p and SL-p train for at least this many optimisation steps, however small the share
    # (``network.epochs`` and ``stage1.epochs`` epochs of 72 samples would be a handful of steps)
    min_steps: int = option(300, positive_int)
    rounds: int = option(3, positive_int)  # FedAvg rounds per stage (step 4)
    local_epochs: int = option(1, positive_int)
    lr: float = option(1e-3, number_in(0.0, float("inf"), low_open=True))
    screening: Screening = section(Screening)
    # also run without screening, and train on all data clean (the ceiling)
    ablation: bool = option(True, boolean)
    test_fraction: float = option(0.2, number_in(0.0, 0.9, low_open=True))
    # fault injection for tests: [[client, round], ...] makes client k raise in global round r
    fail: list[list[int]] = option([], _fail_pairs)

    def check(self) -> None:
        check_number("federated.max_share", self.max_share, self.start, 1.0)


@frozen
class FederatedConfig(Shared):
    """The federated procedure's config (``scl federated``): the classification experiment's data,
    N, layer and stage 1 (:class:`~scl.pipelines.config.Shared`), and ``federated``."""

    federated: Federated = section(Federated)

    def check(self) -> None:
        if self.layer.pre != "none":
            # the clients rebuild the layer from its arrays alone (build_obfuscator); pre-layers would
            # be trained in stage 1 and then missing on every client
            raise ConfigError(
                f"layer.pre={self.layer.pre!r} is not supported by the federated procedure "
                "(clients receive the layer's parameters only); set layer.pre=none"
            )


QUICK: dict[str, Any] = {
    "network": {"epochs": 4},
    "stage1": {"epochs": 8},
    "federated": {"max_share": 0.15, "rounds": 2, "min_steps": 50},
}


class ClientFailure(RuntimeError):
    """Raised by a client that ``federated.fail`` tells to fail (fault-injection tests only)."""


# -- configuration -----------------------------------------------------------------------------------
def build_config(
    *,
    quick: bool = False,
    config_file: str | Path | None = None,
    assignments: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> FederatedConfig:
    """Defaults, then ``--quick``, then the JSON file, then ``overrides``, then ``--set``; validated."""
    return build_as(FederatedConfig, quick=quick, config_file=config_file, assignments=assignments,
                    overrides=overrides, quick_overrides=QUICK)


def shares(config: FederatedConfig) -> list[float]:
    """The schedule of clean shares: ``start, start + step, ...`` up to ``max_share`` (inclusive)."""
    f = config.federated
    out: list[float] = []
    k = 0
    while True:
        p = round(f.start + k * f.step, 6)
        if p > f.max_share + 1e-9:
            return out
        out.append(p)
        k += 1


# -- data -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FederatedData:
    """The training pool, the held-out test split, the clean-share order and the client partition."""

    dataset: Dataset
    train: Dataset
    test: Dataset
    order: Tensor  # Tensor[N_train]: share_order of the pool; the clean share p is order[:n_p]
    parts: list[Tensor]  # K index tensors into the pool, disjoint, covering it

    def clean_count(self, p: float) -> int:
        return max(1, round(p * len(self.train)))

    def clean_indices(self, p: float) -> Tensor:
        return self.order[: self.clean_count(p)]


def _data_key(config: FederatedConfig) -> str:
    f = config.federated
    keys = {"seed": config.seed, "data": config.data, "image_size": config.image_size, "clients": f.clients,
            "partition": f.partition, "alpha": f.alpha, "test_fraction": f.test_fraction}
    return json.dumps(keys, sort_keys=True)


@functools.lru_cache(maxsize=4)
def _prepare(key: str) -> FederatedData:
    cfg = json.loads(key)
    dataset = classification.dataset_of(cfg["data"], image_size=cfg["image_size"], seed=cfg["seed"])
    fraction = cfg["test_fraction"]
    parts = split(dataset, fractions={"train": 1.0 - fraction, "test": fraction}, seed=cfg["seed"])
    train = parts["train"]
    clients = partition(train.y, cfg["clients"], cfg["partition"], alpha=float(cfg["alpha"]), seed=cfg["seed"])
    return FederatedData(dataset, train, parts["test"], share_order(train.y, seed=cfg["seed"] + 1), clients)


def prepare_data(config: FederatedConfig) -> FederatedData:
    """Load and partition the data set (cached per process: clients call it every round)."""
    return _prepare(_data_key(config))


def clean_share(data: FederatedData, p: float) -> Dataset:
    """The server's clean share at ``p``: a stratified prefix of the pool, nested as ``p`` grows."""
    return data.train.subset(data.clean_indices(p))


def client_share(data: FederatedData, client: int, p: float) -> Dataset:
    """Client ``client``'s samples outside the clean share ``p``: what it obfuscates locally."""
    if not 0 <= client < len(data.parts):
        raise ConfigError(f"client must be in [0, {len(data.parts)}), but got {client}")
    clean = torch.zeros(len(data.train), dtype=torch.bool)
    clean[data.clean_indices(p)] = True
    own = data.parts[client]
    return data.train.subset(own[~clean[own]])


# -- models and parameters --------------------------------------------------------------------------
def state(module: nn.Module) -> dict[str, Tensor]:
    """A detached copy of ``module.state_dict()``: the arrays a message carries."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def build_network(config: FederatedConfig, dataset: Dataset, arrays: Mapping[str, Tensor] | None = None) -> nn.Module:
    """A fresh task network N (a SmallCNN), loaded from ``arrays`` when given."""
    from scl.models import SmallCNN

    network = SmallCNN(dataset.channels, dataset.num_classes, width=config.network.width)
    if arrays is not None:
        network.load_state_dict(dict(arrays))
    return network


def build_obfuscator(config: FederatedConfig, dataset: Dataset, arrays: Mapping[str, Tensor]) -> Obfuscator:
    """SL-p rebuilt from its parameters (a client receives them from the server)."""
    layer = build_image_layer(config.layer, dataset.x, dataset.num_classes)
    layer.load_state_dict(dict(arrays))
    return Obfuscator(freeze(layer)).eval()


@dataclass
class Update:
    """What a participant returns after local training: parameters and scalars, never data.

    Attributes:
        arrays: the network's ``state_dict`` after training (``name -> Tensor``, N's shapes).
        num_examples: the number of samples trained on (the FedAvg weight).
        metrics: scalar training metrics (``loss``, ``accuracy``).

    """

    arrays: dict[str, Tensor]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


def _generator(config: FederatedConfig, *parts: int) -> torch.Generator | None:
    """Seeded from the config when ``reproducible``; fresh (OS-entropy-seeded) otherwise. For batch
    order and screening masks; a client's obfuscation noise takes :func:`_noise_source`."""
    if not config.reproducible:
        generator = torch.Generator()
        generator.seed()  # from OS entropy, without touching torch's global generator
        return generator
    seed = config.seed
    for part in parts:
        seed = seed * 1_000_003 + part
    return torch.Generator().manual_seed(seed % (2**63))


def _noise_source(config: FederatedConfig, generator: torch.Generator | None) -> torch.Generator | None:
    """The noise of a client's release: ``generator`` in a reproducible run, else ``None``, the
    layer's eval-mode source (the cipher stream, never an MT19937 torch.Generator, whose state a
    receiver could recover from the release and use to subtract the noise)."""
    return generator if config.reproducible else None


def obfuscate(obfuscator: Obfuscator, data: Dataset, generator: torch.Generator | None) -> Tensor:
    """Step 3 on one client: ``Tensor[N, C, H, W]`` samples of SL-p with hard selection (own labels)."""
    with torch.no_grad():
        return obfuscator.layer(data.x, ClassIndex(data.y, obfuscator.num_classes), generator=generator)


def local_update(
    config: FederatedConfig,
    arrays: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    *,
    screening: bool,
    generator: torch.Generator | None,
) -> Update:
    """Resume training N from ``arrays`` on ``(x, y)`` for ``federated.local_epochs`` epochs.

    Args:
        config: the run's config.
        arrays: N's parameters from the server.
        x: ``Tensor[N, C, H, W]`` the participant's (clean or obfuscated) samples.
        y: ``Tensor[N]`` their labels.
        screening: hide random patches of every batch with a fresh mask per iteration (§2.3.1).
        generator: source of batch order and screening masks.

    """
    f = config.federated
    network = build_network(config, prepare_data(config).dataset, arrays)
    if len(x) == 0:
        return Update(state(network), 0, {})
    network.train()
    share, patch = f.screening.share, f.screening.patch

    def loss_fn(xb: Tensor, yb: Tensor) -> tuple[Tensor, dict[str, float]]:
        if screening:
            xb = screen(xb, share=share, patch=patch, generator=generator)
        return engine.classification_loss(network(xb), yb)

    history = engine.train(
        loss_fn,
        list(network.parameters()),
        (x, y),
        epochs=f.local_epochs,
        lr=f.lr,
        batch_size=config.batch_size,
        generator=generator,
    )
    return Update(state(network), len(x), {k: v[-1] for k, v in history.items()})


def check_fault(config: FederatedConfig, client: int, round_: int) -> None:
    """Raise :class:`ClientFailure` when ``federated.fail`` names ``[client, round_]`` (tests only)."""
    if [client, round_] in config.federated.fail:
        raise ClientFailure(f"client {client} fails in round {round_} (federated.fail, fault injection)")


def client_update(
    config: FederatedConfig,
    arrays: Mapping[str, Tensor],
    layer_arrays: Mapping[str, Tensor],
    *,
    client: int,
    info: RoundInfo,
) -> Update:
    """Steps 3 and 4 on client ``client``: obfuscate its own share with SL-p, train N locally."""
    check_fault(config, client, info.round)
    data = prepare_data(config)
    own = client_share(data, client, info.p)
    obfuscator = build_obfuscator(config, data.dataset, layer_arrays)
    # reproducible runs draw the same noise for a client's share within a stage (step 3 obfuscates
    # once) and fresh noise per stage
    h = obfuscate(obfuscator, own, _noise_source(config, _generator(config, 1, info.stage, client)))
    generator = _generator(config, 2, info.round, client)
    return local_update(config, arrays, h, own.y, screening=info.screening, generator=generator)


def fedavg(updates: Iterable[Update]) -> dict[str, Tensor]:
    """The FedAvg mean of the updates' arrays, weighted by ``num_examples``."""
    updates = [u for u in updates if u.num_examples > 0]
    if not updates:
        raise SCLError("no update to aggregate: every participant failed or had no data")
    total = sum(u.num_examples for u in updates)
    return {
        key: cast(Tensor, sum(u.arrays[key].double() * (u.num_examples / total) for u in updates)).to(
            updates[0].arrays[key].dtype
        )
        for key in updates[0].arrays
    }


# -- the procedure ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoundInfo:
    """What the server tells the clients about a round."""

    p: float
    stage: int
    round: int  # global round number, 1-based, over the whole run
    screening: bool


@dataclass
class RoundResult:
    arrays: dict[str, Tensor]
    clients_ok: int
    failures: int
    errors: list[str] = field(default_factory=list)


class Transport(Protocol):
    """Runs one FedAvg round of step 4 on the clients (and aggregates with the server's update)."""

    name: str

    def round(
        self, arrays: dict[str, Tensor], layer_arrays: dict[str, Tensor], clean: Update, info: RoundInfo
    ) -> RoundResult: ...


@dataclass
class Result:
    """What the procedure leaves: metrics, the final NN'-p and SL-p, and sample images."""

    metrics: dict[str, Any]
    network: nn.Module
    obfuscator: Obfuscator
    history: dict[str, dict[str, list[float]]]
    samples: dict[str, Tensor]


def _accuracy(network: nn.Module, test: Dataset) -> float:
    network.eval()
    return engine.accuracy(engine.predict_proba(network, test.x), test.y)


def _train_clean(
    config: FederatedConfig, dataset: Dataset, data: Dataset, progress: Progress | None, log: RunLog
) -> classification.Experiment:
    """Step 1 (and the ceiling): N trained on ``data`` alone, through the classification pipeline.

    The experiment's config raises ``network.epochs`` and ``stage1.epochs`` to reach
    ``federated.min_steps`` optimisation steps on ``data``.
    """
    per_epoch = math.ceil(len(data) / config.batch_size)
    least = math.ceil(config.federated.min_steps / per_epoch)
    epochs = {"network": {"epochs": max(config.network.epochs, least)},
              "stage1": {"epochs": max(config.stage1.epochs, least)}}
    exp = classification.Experiment(config.updated(epochs), dataset, {"task": data, "obfuscator": data})
    classification.train_network(exp, progress, log)
    return exp


def run_procedure(
    config: FederatedConfig, transport: Transport, progress: Progress | None, log: RunLog
) -> Result:
    """The whole of §2.3 with ``transport`` for the clients' part; returns the measured result."""
    with run_noise(config):
        return _run_procedure(config, transport, progress, log)


def _run_procedure(
    config: FederatedConfig, transport: Transport, progress: Progress | None, log: RunLog
) -> Result:
    f = config.federated
    data = prepare_data(config)
    start = time.perf_counter()
    log(
        f"data: {data.dataset.name}, pool {len(data.train)}, test {len(data.test)}; {f.clients} clients "
        f"({f.partition}), sizes {[len(p) for p in data.parts]}; engine {transport.name}"
    )
    metrics: dict[str, Any] = {"engine": transport.name, "clients": f.clients, "partition": f.partition}
    history: dict[str, dict[str, list[float]]] = {}
    series: dict[str, list[tuple[float, float]]] = {"clean share only": [], "procedure, no screening": []}
    series["procedure, screening"] = []
    if f.ablation:
        log("ceiling: N trained on all training data, clean")
        ceiling = _train_clean(config, data.dataset, data.train, progress, log)
        metrics["accuracy_all_clean"] = _accuracy(ceiling.network, data.test)  # type: ignore[arg-type]
        log(f"ceiling accuracy {100 * metrics['accuracy_all_clean']:.1f}%")
    variants = [True, False] if f.ablation else [True]
    stages: list[dict[str, Any]] = []
    global_round = 0
    total_failures = 0
    final: tuple[nn.Module, Obfuscator] | None = None
    schedule = shares(config)
    total = len(schedule) * len(variants) * f.rounds
    with progress_task(progress, "federated rounds", total) as advance:
        for stage_index, p in enumerate(schedule):
            clean = clean_share(data, p)
            rest = len(data.train) - len(clean)
            log(f"stage p={100 * p:g}%: {len(clean)} clean samples on the server, {rest} obfuscated on the clients")
            exp = _train_clean(config, data.dataset, clean, progress, log)  # step 1: NN-p
            obfuscator = classification.train_stage1(exp, progress, log)  # step 2: SL-p (hard selection)
            obfuscator.eval()
            layer_arrays = state(obfuscator.layer)
            nn_p = exp.network
            if nn_p is None:
                raise SCLError("step 1 produced no network")
            row: dict[str, Any] = {
                "p": p,
                "clean_samples": len(clean),
                "obfuscated_samples": len(data.train) - len(clean),
                "accuracy_clean_share": _accuracy(nn_p, data.test),
            }
            for key, values in exp.history.items():
                history[f"p={100 * p:g}% {key}"] = values
            stage_failures = 0
            for screening in variants:
                arrays = state(nn_p)  # step 4 resumes from NN-p
                for r in range(f.rounds):
                    global_round += 1
                    info = RoundInfo(p, stage_index, global_round, screening)
                    server = local_update(
                        config, arrays, clean.x, clean.y, screening=False, generator=_generator(config, 3, global_round)
                    )
                    result = transport.round(arrays, layer_arrays, server, info)
                    if result.clients_ok == 0:
                        raise SCLError(
                            f"every client failed in round {global_round}: {result.errors[:1]}; "
                            "check the client logs and the config"
                        )
                    for error in result.errors:
                        log(f"[yellow]round {global_round}: a client failed and was left out: {error}[/yellow]")
                    arrays = result.arrays
                    stage_failures += result.failures
                    advance(f"p={100 * p:g}% round {r + 1} {'screened' if screening else ''}")
                network = build_network(config, data.dataset, arrays)
                key = "accuracy_screening" if screening else "accuracy_no_screening"
                row[key] = _accuracy(network, data.test)
                if screening:
                    final = (network, obfuscator)
            row["rounds"] = f.rounds * len(variants)
            row["failures"] = stage_failures
            total_failures += stage_failures
            stages.append(row)
            series["clean share only"].append((p, row["accuracy_clean_share"]))
            series["procedure, screening"].append((p, row["accuracy_screening"]))
            if "accuracy_no_screening" in row:
                series["procedure, no screening"].append((p, row["accuracy_no_screening"]))
            no_screening = row.get("accuracy_no_screening")
            log(
                f"p={100 * p:g}%: NN-p {100 * row['accuracy_clean_share']:.1f}%, NN'-p "
                + (f"no screening {100 * no_screening:.1f}%, " if no_screening is not None else "")
                + f"screening {100 * row['accuracy_screening']:.1f}%"
                + (f", {stage_failures} client failure(s)" if stage_failures else "")
            )
            if row["accuracy_screening"] >= f.target_accuracy:
                log(f"target accuracy {100 * f.target_accuracy:g}% reached at p={100 * p:g}%")
                break
    if final is None:
        raise SCLError("the schedule of shares is empty; check federated.start and federated.max_share")
    if "accuracy_all_clean" in metrics:
        series["all data clean (ceiling)"] = [(s["p"], metrics["accuracy_all_clean"]) for s in stages]
    last = stages[-1]
    metrics.update(
        {
            "stages": stages,
            "series": {name: [list(pair) for pair in pairs] for name, pairs in series.items() if pairs},
            "accuracy": {"federated": last["accuracy_screening"], "clean_share": last["accuracy_clean_share"]},
            "final_share": last["p"],
            "target_accuracy": f.target_accuracy,
            "target_reached": bool(last["accuracy_screening"] >= f.target_accuracy),
            "rounds": global_round,
            "failures": total_failures,
            "seconds": {"procedure": time.perf_counter() - start},
        }
    )
    if "accuracy_all_clean" in metrics:
        metrics["accuracy"]["all_clean"] = metrics["accuracy_all_clean"]
    network, obfuscator = final
    return Result(metrics, network, obfuscator, history, _samples(config, data, obfuscator, last["p"]))


def _samples(config: FederatedConfig, data: FederatedData, obfuscator: Obfuscator, p: float) -> dict[str, Tensor]:
    """A few of client 0's samples: clean, obfuscated by SL-p, and screened (what N trains on)."""
    own = client_share(data, 0, p).subset(range(min(8, len(client_share(data, 0, p)))))
    generator = _generator(config, 4)
    h = obfuscate(obfuscator, own, _noise_source(config, generator))
    s = config.federated.screening
    return {
        "client data (never sent)": own.x,
        "obfuscated by SL-p": h.clamp(0, 1),
        "obfuscated + screened": screen(h, share=s["share"], patch=s["patch"], generator=generator).clamp(0, 1),
    }
