"""The conformance kit: the shipped backends pass it, a third-party backend written from the contract
alone passes it, and a broken one is told which invariant it breaks."""

import pytest
import torch
from torch import nn

from snncutoff.backends import Backend
from snncutoff.testing import BackendCheckError, check_backend

from .helpers import BACKENDS, backend_or_skip


@pytest.mark.parametrize("name", BACKENDS)
def test_the_shipped_backends_keep_the_contract(name):
    backend = backend_or_skip(name)
    results = check_backend(backend)
    assert len(results) == 7 and all(c.passed for c in results)


class Integrator(nn.Module):
    """A framework's own integrate-and-fire neuron: V <- V + X, spike on V >= theta, V <- V - theta S."""

    def __init__(self, threshold: float, v_init: float) -> None:
        super().__init__()
        self.threshold, self.v_init, self.v = threshold, v_init, None

    def forward(self, x):
        v = (torch.full_like(x, self.v_init * self.threshold) if self.v is None else self.v) + x
        out = (v >= self.threshold).to(x.dtype) * self.threshold
        self.v = v - out
        return out


class ToyBackend(Backend):
    """What a third party writes: the abstract hooks of the contract, nothing else."""

    name = "toy"

    def framework(self):
        return torch

    def if_neuron(self, threshold, v_init):
        return Integrator(threshold, v_init)

    def is_spiking(self, module):
        return isinstance(module, Integrator)

    def is_stateful(self, module):
        return isinstance(module, Integrator)

    def reset_module(self, module):
        module.v = None

    def select_module(self, module, keep):
        if module.v is not None:
            module.v = module.v.index_select(0, keep)

    def admit_module(self, module, n):
        if module.v is not None:
            fresh = torch.full((n, *module.v.shape[1:]), module.v_init * module.threshold, dtype=module.v.dtype)
            module.v = torch.cat([module.v, fresh])


def test_a_backend_written_from_the_public_contract_passes():
    assert all(c.passed for c in check_backend(ToyBackend()))


def test_a_broken_backend_is_told_which_invariant_it_breaks():
    class Forgetful(ToyBackend):
        def select_module(self, module, keep):  # keeps the first rows instead of the asked ones
            if module.v is not None:
                module.v = module.v[: keep.numel()]

    class Leaky(ToyBackend):
        def reset_module(self, module):  # never forgets
            pass

    with pytest.raises(BackendCheckError, match="select keeps the other rows exact: rows kept by select drift"):
        check_backend(Forgetful())
    results = {c.name: c for c in check_backend(Leaky(), raise_errors=False)}
    assert "a second run of the same batch differs" in results["reset: no state leaks between runs"].detail


def test_a_backend_without_admit_still_passes_what_it_offers():
    class NoRefill(ToyBackend):
        admit_module = Backend.admit_module  # the default: refuses continuous batching

    results = {c.name: c for c in check_backend(NoRefill(), raise_errors=False)}
    assert not results["admit / reset_rows start rows fresh"].passed
    assert "not implemented" in results["admit / reset_rows start rows fresh"].detail
    assert results["early exit equals evaluate"].passed
