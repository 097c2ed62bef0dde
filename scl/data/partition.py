"""Client partitions for federated learning: IID and Dirichlet non-IID, plus nested clean shares.

Every function returns indices into the data set it is given, is seeded, and puts every sample in
exactly one part.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from scl.errors import ConfigError

__all__ = ["PARTITIONS", "dirichlet_partition", "iid_partition", "partition", "share_order"]

PARTITIONS = ("iid", "dirichlet")


def _check(num_samples: int, num_clients: int, seed: int) -> None:
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ConfigError(f"the number of clients must be a positive int, but got {num_clients!r}")
    if num_clients > num_samples:
        raise ConfigError(
            f"cannot give {num_clients} clients at least one of {num_samples} samples each; use fewer clients"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative int, but got {seed!r}")


def iid_partition(num_samples: int, num_clients: int, *, seed: int = 0) -> list[Tensor]:
    """A seeded shuffle cut into ``num_clients`` parts whose sizes differ by at most one.

    Returns:
        ``num_clients`` sorted int64 ``Tensor[n_k]`` of indices in ``[0, num_samples)``.

    """
    _check(num_samples, num_clients, seed)
    order = np.random.default_rng(seed).permutation(num_samples)
    return [torch.from_numpy(np.sort(part)).long() for part in np.array_split(order, num_clients)]


def dirichlet_partition(
    labels: Tensor, num_clients: int, *, alpha: float = 0.5, seed: int = 0, max_tries: int = 100
) -> list[Tensor]:
    """Label-skewed parts: each class is shared among clients in proportions drawn from Dir(alpha).

    Small ``alpha`` (0.1) gives each client few classes; large ``alpha`` (100) approaches IID. The
    draw is repeated (up to ``max_tries``) until every client has at least one sample.

    Args:
        labels: ``Tensor[N]`` int64 class labels.
        num_clients: number of parts ``K``.
        alpha: concentration of the Dirichlet distribution (> 0).
        seed: seed of the draw.
        max_tries: redraws allowed before giving up.

    Returns:
        ``K`` sorted int64 ``Tensor[n_k]`` of indices into ``labels``.

    Raises:
        ConfigError: for a bad ``alpha`` or ``num_clients``, or if no draw gives every client a sample.

    """
    y = labels.numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    _check(len(y), num_clients, seed)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"the Dirichlet alpha must be a positive number, but got {alpha!r}")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == c))
            proportions = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = (np.cumsum(proportions)[:-1] * len(members)).round().astype(int)
            for k, chunk in enumerate(np.split(members, cuts)):
                parts[k].append(chunk)
        merged = [np.sort(np.concatenate(p)) for p in parts]
        if all(len(p) for p in merged):
            return [torch.from_numpy(p).long() for p in merged]
    raise ConfigError(
        f"no Dirichlet draw (alpha={alpha}) gave each of {num_clients} clients a sample in {max_tries} tries; "
        "use fewer clients or a larger alpha"
    )


def partition(
    labels: Tensor, num_clients: int, kind: str = "iid", *, alpha: float = 0.5, seed: int = 0
) -> list[Tensor]:
    """``iid_partition`` or ``dirichlet_partition`` by name (``"iid"`` or ``"dirichlet"``)."""
    if kind == "iid":
        return iid_partition(len(labels), num_clients, seed=seed)
    if kind == "dirichlet":
        return dirichlet_partition(labels, num_clients, alpha=alpha, seed=seed)
    raise ConfigError(f"partition must be one of {list(PARTITIONS)}, but got {kind!r}")


def share_order(labels: Tensor, *, seed: int = 0) -> Tensor:
    """An order of the samples whose every prefix is (within one sample per class) stratified.

    ``share_order(y)[:n]`` is the clean share of ``n`` samples; shares grow by extending the prefix,
    so the 10% share contains the 5% share.

    Returns:
        ``Tensor[N]`` int64, a permutation of ``range(N)``.

    """
    y = labels.numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    rng = np.random.default_rng(seed)
    key = np.empty(len(y))
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        key[members] = (np.arange(len(members)) + rng.random(len(members))) / len(members)
    return torch.from_numpy(np.argsort(key, kind="stable")).long()
