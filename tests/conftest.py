"""Shared fixtures: seeded, small, no network access."""

from __future__ import annotations

import os

import pytest
import torch

from snncutoff import Trace

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one worker per core: torch's own threads would only oversubscribe the CPU
    torch.set_num_threads(1)


def make_trace(T: int = 8, N: int = 64, C: int = 5, seed: int = 0, signal: float = 0.6, ops: bool = False) -> Trace:
    """A synthetic trace whose correct class wins more often as t grows."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (N,), generator=g)
    y = torch.randn(T, N, C, generator=g) + signal * torch.nn.functional.one_hot(labels, C)
    cost = torch.randint(0, 50, (T, N), generator=g).double() if ops else None
    return Trace.from_steps(y, labels, ops=cost)


@pytest.fixture
def missing_backend():
    """A registered backend whose framework is not installed; yields its name."""
    from snncutoff import backends

    class Missing(backends.Backend):
        """Implements the contract but cannot import its framework."""
        name = "missing"
        install_hint = "pip install missing-framework"

        def framework(self):
            raise ImportError("No module named 'missing_framework'")

        if_neuron = lif_neuron = is_spiking = is_stateful = reset_module = select_module = admit_module = \
            lambda self, *a: None

    backends.register("missing", Missing)
    try:
        yield "missing"
    finally:
        backends.registry._registered.pop("missing")


@pytest.fixture
def trace() -> Trace:
    return make_trace()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
