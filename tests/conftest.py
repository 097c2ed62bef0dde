"""Shared fixtures: one intra-op thread and the same global torch seed for every test."""

from __future__ import annotations

import pytest
import torch

# The tests use tiny tensors: extra intra-op threads only add synchronisation overhead, which
# grows by orders of magnitude when the machine's cores are busy with other work.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Fixed global seed, so parameter initialisation and test inputs are reproducible."""
    torch.manual_seed(0)
