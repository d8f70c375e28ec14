"""``SnnTorchBackend``: the backend contract on snnTorch 0.9.x and 1.x.

State is reset per network, never through ``snntorch.utils.reset`` (it resets every
instance of a class in the process and skips nested modules): every snnTorch neuron
found in ``net.modules()`` gets its own ``reset_mem()``, and snncutoff's own neuron wrappers
their ``reset()``. That leaves each neuron in the state its own ``forward`` starts from at
any batch size: most zero their state and re-create it when its shape is not the input's;
``DeltaLeaky`` (1.0) sets it to None, the only state it re-creates. ``select`` / ``admit``
/ ``reset_rows`` index, extend or fill ``mem`` / ``syn`` / ``spk`` / ``syn_exc`` /
``syn_inh`` / ``mem_prev`` along the batch dimension (snnTorch states start at zero); a
selection that keeps no row resets the neuron instead (an empty ``DeltaLeaky`` state would
not be re-created for the samples admitted next).

Users' own networks: an ``nn.Sequential`` of layers and ``Leaky(init_hidden=True)``
neurons (last one ``output=True``) is stepped like any other net (its output
``(spk, mem)`` is read with the readout, spikes by default); a tutorial-style module
whose ``forward`` loops over time and returns stacked ``[T, N, C]`` records is run with
``multistep=True`` (one call per batch; it keeps its own state).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
    layer_packages = ("snntorch",)
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
        reset_mem = getattr(module, "reset_mem", None)
        if callable(reset_mem):  # the neuron's own reset: the state its forward starts from at any batch size
            reset_mem()
            return
        for name in STATE_NAMES:  # a neuron without reset_mem: zero what it holds
            value = getattr(module, name, None)
            if isinstance(value, Tensor):
                setattr(module, name, torch.zeros_like(value))

    def select_module(self, module: nn.Module, keep: Tensor) -> None:
        if isinstance(module, (IFNeuron, LIFNeuron)):
            if module.mem is not None:
                module.mem = module.mem.index_select(0, keep.to(module.mem.device))
            return
        if keep.numel() == 0:  # no row left: back to the state the neuron starts any batch from
            self.reset_module(module)
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
        """Post-reset membrane (as SpikingJelly's ``v``): snnTorch's ``mem`` less the reset it
        applies at the next step (the default ``reset_delay=True``; also ``RSynaptic``, whose
        ``reset_delay=False`` reset never reaches ``self.mem``); ``mem`` itself where the reset is
        already in it (Leaky, Synaptic, RLeaky with ``reset_delay=False``; reset ``"none"``; ``DeltaLeaky``)."""
        if isinstance(module, (IFNeuron, LIFNeuron)):
            return module.mem
        lif = module
        mem = getattr(lif, "mem", None)
        if not isinstance(mem, Tensor) or mem.numel() == 0:
            return None
        if isinstance(lif, snn().delta_neurons):  # DeltaLeaky never resets: its mem is the membrane
            return mem
        mechanism = int(getattr(lif, "reset_mechanism_val", 2))
        if mechanism == 2 or (getattr(lif, "reset_delay", True) is False
                              and type(lif).__name__ in ("Leaky", "Synaptic", "RLeaky")):  # reset already in mem
            return mem
        spk = lif.fire(mem) / lif.graded_spikes_factor
        return mem - spk * lif.threshold if mechanism == 0 else mem * (1 - spk)

    def _readout(self, net: nn.Module, out: Any, readout: Any) -> Tensor:
        """``DeltaLeaky`` returns ``(spk, (mem, mem_prev))``: its membrane (``readout="membrane"``) is ``mem``."""
        if (isinstance(readout, str) and readout == "membrane" and isinstance(out, (tuple, list)) and out
                and isinstance(out[-1], (tuple, list))):
            if not out[-1] or not isinstance(out[-1][0], Tensor):
                raise ValueError(f"readout='membrane': {type(net).__name__}'s output ends in a "
                                 f"{type(out[-1]).__name__} with no membrane tensor first; pass readout= a callable")
            out = (*out[:-1], out[-1][0])
        return super()._readout(net, out, readout)

    def step(self, net: nn.Module, x_t: Tensor, readout: Any = "auto") -> Tensor:
        with self._explaining(net):
            return super().step(net, x_t, readout)

    def step_sequence(self, module: nn.Module, x_seq: Tensor) -> Any:
        """Stacked per-step outputs; nested tuples too (``DeltaLeaky``'s ``(spk, (mem, mem_prev))``)."""
        with self._explaining(module):
            return _stack([module(x_seq[t]) for t in range(x_seq.shape[0])])

    @contextmanager
    def _explaining(self, net: nn.Module) -> Iterator[None]:
        """Re-raise a failure of ``net`` with :meth:`_explained`'s explanation, where it has one."""
        try:
            yield
        except RuntimeError as exc:
            better = self._explained(net, exc)
            if better is exc:
                raise
            raise better from exc

    def _explained(self, net: nn.Module, exc: RuntimeError) -> RuntimeError:
        """``exc``, naming a neuron whose state the adapter may not manage when the failure is a size mismatch."""
        if "must match the size" not in str(exc):
            return exc
        s = snn()
        odd = [(n, type(m).__name__) for n, m in net.named_modules()
               if isinstance(m, s.SpikingNeuron) and not isinstance(m, s.sequence_neurons) and not _managed(m)]
        if not odd:
            return exc
        name, cls = odd[0]
        known = ", ".join(c.__name__ for c in s.managed_neurons)
        return RuntimeError(
            f"{exc}. The snnTorch neuron '{name}' ({cls}) is not one whose state snncutoff knows how to reset and "
            f"resize ({known}): snncutoff resets a neuron with its reset_mem() and drops or adds batch rows of "
            f"{'/'.join(STATE_NAMES)}, so its forward must re-create its state when the batch size changes, as "
            "snn.Leaky does (or keep its state in those attributes)"
        )


def _stack(outs: list[Any]) -> Any:
    if isinstance(outs[0], (tuple, list)):
        return tuple(_stack(list(parts)) for parts in zip(*outs))
    return torch.stack(outs)


def _managed(module: nn.Module) -> bool:
    """Whether ``module`` steps and resets as one of the neuron classes the adapter knows (a subclass that
    overrides neither ``forward`` nor ``reset_mem`` counts)."""
    cls = type(module)
    return any(cls.forward is k.forward and getattr(cls, "reset_mem", None) is getattr(k, "reset_mem", None)
               for k in snn().managed_neurons)
