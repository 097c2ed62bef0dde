"""How hard the attacker tries: ``quick | standard | strong`` (config ``attacks.budget``).

A privacy figure is only as honest as the attacker behind it. The budgets are nested: each one
runs every attacker of the budgets below it plus its own, larger one, and an attack reports the
best score over the attackers it ran. A stronger budget therefore never scores a lower leak on the
same release (tested), and each score is the worst case over a family of attackers rather than
the luck of one training run.

Every learned attacker trains on the attacker split only, early-stopped on a validation part of
that split (``validation_fraction``), and is scored on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from scl.errors import ConfigError

__all__ = ["BUDGETS", "AttackBudget", "Attacker", "attackers", "get_budget"]


@dataclass(frozen=True)
class Attacker:
    """One learned attacker of a budget.

    Attributes:
        architecture: ``"plain"`` (four 3 x 3 convolutions at full resolution) or ``"unet"``
            (an encoder-decoder over two scales with a skip connection).
        width: hidden channels.
        epochs: the most passes over the training part of the attacker split.
        patience: stop once the (exponentially averaged) validation loss has not improved for
            this many epochs; with ``cosine``, first anneal the rate to 0 over this many more
            epochs. The weights of the best epoch are kept.
        refit: then train a fresh copy on the whole attacker split (the validation part
            included) for the best epoch count, and attack with that copy.
        batch_size: its training batch size (``None``: the attack's ``batch_size``).
        cosine: anneal the learning rate to 0 over the epochs (cosine schedule). At a constant
            rate a decoder's test SSIM swings by +-0.05 from one epoch to the next on a few
            hundred images; annealing lands it at the top of that range.
        bfloat16: train under bfloat16 autocast where the device computes it natively (float32
            weights, optimiser and loss; see :func:`scl.attacks._common.fit`).
    """

    architecture: str
    width: int
    epochs: int
    patience: int
    refit: bool = False
    batch_size: int | None = None
    cosine: bool = False
    bfloat16: bool = False


@dataclass(frozen=True)
class AttackBudget:
    """A named attack budget.

    Attributes:
        name: ``quick``, ``standard`` or ``strong`` (or a name of your own).
        decoders: the decoders it trains, weakest first: its own and every weaker budget's.
        embeddings: the same for the re-identification embedding matcher.
        attribute_epochs: the most epochs of the attribute classifier (early-stopped).
        validation_fraction: the part of the attacker split held out for early stopping.
    """

    name: str
    decoders: tuple[Attacker, ...]
    embeddings: tuple[Attacker, ...]
    attribute_epochs: int
    validation_fraction: float = 0.2

    def capped(self, max_epochs: int | None) -> AttackBudget:
        """The same budget with every attacker's epochs capped at ``max_epochs`` (``None``: as is).

        For smoke tests only: a capped attacker is weaker than the budget says.
        """
        if max_epochs is None:
            return self

        def cap(items: tuple[Attacker, ...]) -> tuple[Attacker, ...]:
            return tuple(replace(a, epochs=min(a.epochs, max_epochs)) for a in items)

        return replace(self, decoders=cap(self.decoders), embeddings=cap(self.embeddings),
                       attribute_epochs=min(self.attribute_epochs, max_epochs))


_QUICK_DECODER = Attacker("plain", 32, 8, 3)
# Batch 32, a cosine schedule and 100 epochs: on the digits' 359 attacker images the hard release's
# decoder was still improving at 60 epochs (test SSIM 0.56-0.63 at a constant rate, batch 64;
# 0.66 annealed at batch 32; 0.72 by epoch 70 of 90). No refit: 100 epochs on 80% of the split
# cost less than 60 + 60 and decode better.
#
# The standard and strong attackers train under bfloat16 autocast where the CPU or GPU computes it
# natively: on the demo's 2-core CPU the encoder-decoder trains 1.7x faster (42 -> 24 ms a step),
# and on the digits' releases its SSIM matched float32 within the run-to-run spread
# (`python -m benchmarks.attacker_precision RUN`; the README has the table). The quick ones, small
# and cheap, stay float32.
_STANDARD_DECODER = Attacker("unet", 64, 100, 15, batch_size=32, cosine=True, bfloat16=True)
_STRONG_DECODER = Attacker("unet", 96, 150, 20, refit=True, batch_size=32, cosine=True, bfloat16=True)
_QUICK_EMBEDDING = Attacker("plain", 32, 8, 3)
_STANDARD_EMBEDDING = Attacker("plain", 64, 40, 6, bfloat16=True)
_STRONG_EMBEDDING = Attacker("plain", 96, 80, 10, bfloat16=True)

BUDGETS: dict[str, AttackBudget] = {
    "quick": AttackBudget("quick", (_QUICK_DECODER,), (_QUICK_EMBEDDING,), attribute_epochs=8),
    "standard": AttackBudget(
        "standard", (_QUICK_DECODER, _STANDARD_DECODER), (_QUICK_EMBEDDING, _STANDARD_EMBEDDING),
        attribute_epochs=30,
    ),
    "strong": AttackBudget(
        "strong",
        (_QUICK_DECODER, _STANDARD_DECODER, _STRONG_DECODER),
        (_QUICK_EMBEDDING, _STANDARD_EMBEDDING, _STRONG_EMBEDDING),
        attribute_epochs=60,
    ),
}

ORDER = ("quick", "standard", "strong")


def get_budget(name: str | AttackBudget) -> AttackBudget:
    """The budget called ``name``; a clear error for an unknown one."""
    if isinstance(name, AttackBudget):
        return name
    if name not in BUDGETS:
        raise ConfigError(f"attacks.budget must be one of {list(ORDER)}, but got {name!r}")
    return BUDGETS[name]


def attackers(name: str | AttackBudget, part: str = "decoder") -> list[Attacker]:
    """The attackers a budget runs for ``part`` (``decoder`` or ``embedding``), weakest first."""
    budget = get_budget(name)
    if part == "decoder":
        return list(budget.decoders)
    if part == "embedding":
        return list(budget.embeddings)
    raise ConfigError(f"part must be 'decoder' or 'embedding', but got {part!r}")
