"""``SnnTorchBackend``: the backend contract on snnTorch 0.9.x and 1.x.

State is reset per network, never through ``snntorch.utils.reset`` (it resets every
instance of a class in the process and skips nested modules): every snnTorch neuron
found in ``net.modules()`` gets ``reset_mem()``, and snncutoff's own neuron wrappers
their ``reset()``. ``select`` indexes ``mem`` / ``syn`` / ``spk`` along the batch
dimension (snnTorch silently zeroes a state whose shape no longer matches the input).

Users' own networks: an ``nn.Sequential`` of layers and ``Leaky(init_hidden=True)``
neurons (last one ``output=True``) is stepped like any other net (its output
``(spk, mem)`` is read with the readout, spikes by default); a tutorial-style module
whose ``forward`` loops over time and returns stacked ``[T, N, C]`` records is run with
``multistep=True`` (one call per batch; it keeps its own state).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from snncutoff.backends import Backend
from snncutoff.spec import LIF

from ._compat import INSTALL_HINT, STATE_NAMES, snn
from .neurons import IFNeuron, LIFNeuron


class SnnTorchBackend(Backend):
    """snnTorch adapter (no options: snnTorch has no alternative kernels)."""

    name = "snntorch"
    install_hint = INSTALL_HINT
    neuron_hint = "a SpikingNeuron such as snn.Leaky or snn.Synaptic"

    def framework(self):
        return snn()

    def if_neuron(self, threshold: float, v_init: float) -> nn.Module:
        return IFNeuron(threshold, v_init)

    def lif_neuron(self, spec: LIF) -> nn.Module:
        return LIFNeuron(spec)

    def _wrapped(self, net: nn.Module) -> set[int]:
        return {id(m.lif) for m in net.modules() if isinstance(m, (IFNeuron, LIFNeuron))}

    def is_spiking(self, module: nn.Module) -> bool:
        return isinstance(module, (IFNeuron, LIFNeuron, snn().SpikingNeuron))

    def spiking_layers(self, net: nn.Module) -> list[tuple[str, nn.Module]]:
        inner = self._wrapped(net)  # report snncutoff's wrappers, not the Leaky inside them
        return [(n, m) for n, m in net.named_modules() if self.is_spiking(m) and id(m) not in inner]

    def native_twin(self, net: nn.Module) -> tuple[nn.Module, Any]:
        """Every :class:`IFNeuron` as snnTorch users write one, ``Leaky(beta=1, init_hidden=True)`` with its
        own delayed subtract reset (spikes on ``U > theta``), scaled by theta; reset with ``reset_mem``."""
        import copy

        class Scaled(nn.Module):
            def __init__(self, theta: float) -> None:
                super().__init__()
                self.theta = theta
                self.lif = snn().Leaky(beta=1.0, threshold=theta, init_hidden=True)

            def forward(self, x: Tensor) -> Tensor:
                return self.lif(x) * self.theta

        twin = copy.deepcopy(net)
        for parent in list(twin.modules()):
            for key, child in list(parent.named_children()):
                if isinstance(child, IFNeuron):
                    setattr(parent, key, Scaled(child.threshold))

        def reset(model: nn.Module) -> None:
            for m in model.modules():
                if hasattr(m, "reset_mem"):
                    m.reset_mem()

        return twin, reset

    def processes_sequences(self, module: nn.Module) -> bool:
        """``LeakyParallel``, ``LeakyKernel``, ``StateLeaky`` (and ``LinearLeaky``), ``AssociativeLeaky``:
        neurons that take a time-major ``[T, N, ...]`` sequence per call and keep no state between calls."""
        return isinstance(module, snn().sequence_neurons)

    def is_multistep(self, net: nn.Module) -> bool:
        """A network holding a sequence neuron (:meth:`processes_sequences`) runs ``[T, N, ...]`` per call."""
        return any(self.processes_sequences(m) for m in net.modules())

    def is_stateful(self, module: nn.Module) -> bool:
        return isinstance(module, (IFNeuron, LIFNeuron, snn().SpikingNeuron))

    def stateful_modules(self, net: nn.Module) -> list[nn.Module]:
        inner = self._wrapped(net)  # a wrapper owns its Leaky's state
        return [m for m in net.modules() if self.is_stateful(m) and id(m) not in inner]

    def reset_module(self, module: nn.Module) -> None:
        if isinstance(module, (IFNeuron, LIFNeuron)):
            module.reset()
            return
        for name in STATE_NAMES:
            value = getattr(module, name, None)
            if isinstance(value, Tensor):
                setattr(module, name, torch.zeros_like(value))

    def select_module(self, module: nn.Module, keep: Tensor) -> None:
        if isinstance(module, (IFNeuron, LIFNeuron)):
            if module.mem is not None:
                module.mem = module.mem.index_select(0, keep.to(module.mem.device))
            return
        for name in STATE_NAMES:
            value = getattr(module, name, None)
            if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] > 0:
                setattr(module, name, value.index_select(0, keep.to(value.device)))

    def admit_module(self, module: nn.Module, n: int) -> None:
        if isinstance(module, (IFNeuron, LIFNeuron)):
            if module.mem is not None:
                init = module.v_init * module.threshold if isinstance(module, IFNeuron) else 0.0
                fresh = torch.full((n, *module.mem.shape[1:]), init, dtype=module.mem.dtype, device=module.mem.device)
                module.mem = torch.cat([module.mem, fresh])
            return
        for name in STATE_NAMES:  # snnTorch states start at zero
            value = getattr(module, name, None)
            if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] > 0:
                setattr(module, name, torch.cat([value, value.new_zeros((n, *value.shape[1:]))]))

    def reset_rows_module(self, module: nn.Module, rows: Tensor, n: int) -> None:
        """In place: rows ``rows`` of the state back to the initial membrane (snnTorch's: zero)."""
        if isinstance(module, (IFNeuron, LIFNeuron)):
            mem = module.mem
            if mem is not None:
                mem.index_fill_(0, rows.to(mem.device), module.v_init * module.threshold
                                if isinstance(module, IFNeuron) else 0.0)
            return
        for name in STATE_NAMES:
            value = getattr(module, name, None)
            if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] > 0:
                value.index_fill_(0, rows.to(value.device), 0.0)

    def spikes_of(self, module: nn.Module, output: Any) -> Tensor:
        if isinstance(module, IFNeuron):
            return output / module.threshold  # theta * S -> S, exactly
        return output[0] if isinstance(output, (tuple, list)) else output

    def membrane_of(self, module: nn.Module) -> Tensor | None:
        """Post-reset membrane (as SpikingJelly's ``v``), also for snnTorch's delayed reset."""
        if isinstance(module, (IFNeuron, LIFNeuron)):
            return module.mem
        lif = module
        mem = getattr(lif, "mem", None)
        if not isinstance(mem, Tensor) or mem.numel() == 0:
            return None
        mechanism = int(getattr(lif, "reset_mechanism_val", 2))
        if mechanism == 2:  # none
            return mem
        spk = lif.fire(mem) / lif.graded_spikes_factor
        return mem - spk * lif.threshold if mechanism == 0 else mem * (1 - spk)
