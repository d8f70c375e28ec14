"""``SpikingJellyBackend``: the backend contract on SpikingJelly 0.0.0.0.14 and 2.x.

Stateful modules are SpikingJelly ``MemoryModule`` s (every neuron, and any other
module with memories); ``reset`` calls their own ``reset()`` (no ``reset_net`` cache is
involved), ``select`` indexes every tensor memory along the batch dimension.
Multi-step (``step_mode="m"``) nets are run with one call on ``[T, N, ...]``.

GPU kernels (``gpu_kernel``): 0.0.0.0.14 has a cupy backend for multi-step neurons
(used in train mode only, so ``run`` switches just the neurons to train mode for it);
2.x dispatches by device to native CUDA, triton or torch kernels, chosen with the
``SJ_*_CUDA_IMPLEMENTATION`` variables. ``"auto"`` takes the fastest the installed
version offers; an unavailable choice falls back with a logged warning, except cupy
without cupy or without CUDA, which is an error.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from snncutoff.backends import Backend, Readout
from snncutoff.record import Recorder
from snncutoff.spec import LIF
from snncutoff.validation import check_choice

from ._compat import INSTALL_HINT, cupy_available, multistep_matches_steps, set_cuda_implementation, sj
from .neurons import ScaledNeuron, if_neuron, lif_neuron

log = logging.getLogger("snncutoff.spikingjelly")
GPU_KERNELS = ("auto", "cupy", "triton", "torch")


class SpikingJellyBackend(Backend):
    """SpikingJelly adapter.

    Args:
        gpu_kernel: ``"auto"``, ``"cupy"`` (0.0.0.0.14), ``"triton"`` (2.x) or ``"torch"``.

    Example:
        >>> backend = snncutoff.backends.get("spikingjelly")            # doctest: +SKIP
        >>> snn = backend.convert(qcfs_ann, step_mode="m")               # doctest: +SKIP
        >>> trace = snncutoff.collect_trace(backend, snn, test_loader, T=32)  # doctest: +SKIP
    """

    name = "spikingjelly"
    layer_packages = ("spikingjelly",)
    options = ("gpu_kernel",)
    neuron_hint = "a base.MemoryModule such as neuron.IFNode or neuron.LIFNode"
    step_modes = ("s", "m")
    preferred_step_mode = "m"  # multi-step: one call per sequence (and cupy / CUDA kernels on a GPU)

    def __init__(self, gpu_kernel: str = "auto") -> None:
        self.gpu_kernel = check_choice("gpu_kernel", gpu_kernel, GPU_KERNELS)
        self._kernel: str | None = None

    install_hint = INSTALL_HINT

    # ------------------------------------------------------------ framework
    def framework(self):
        return sj()

    def kernel(self) -> str:
        """The GPU kernel family this backend will use (resolved once, with fallbacks)."""
        if self._kernel is None:
            self._kernel = self._resolve_kernel()
        return self._kernel

    def _resolve_kernel(self) -> str:
        legacy, want = sj().legacy, self.gpu_kernel
        if want == "cupy":
            ok, why = cupy_available()
            if not ok:
                raise RuntimeError(f"gpu_kernel='cupy' cannot be used: {why}")
            if not legacy:
                log.warning("SpikingJelly %s has no cupy backend (it picks CUDA/triton kernels by device); "
                            "using gpu_kernel='auto'", sj().version)
                return self._apply("auto")
            return "cupy"
        if want == "triton" and legacy:
            fallback = "cupy" if cupy_available()[0] else "torch"
            log.warning("SpikingJelly 0.0.0.0.14 has no triton kernels; using %r", fallback)
            return fallback
        if want == "auto" and legacy:
            return "cupy" if cupy_available()[0] else "torch"
        return self._apply(want)

    def _apply(self, kind: str) -> str:
        if not set_cuda_implementation(kind):
            log.warning("SpikingJelly already chose its CUDA kernels in this process; gpu_kernel=%r applies "
                        "to new processes (or set SJ_IF_CUDA_IMPLEMENTATION before importing it)", kind)
        return kind

    def if_neuron(self, threshold: float, v_init: float) -> nn.Module:
        return if_neuron(threshold, v_init)

    def lif_neuron(self, spec: LIF) -> nn.Module:
        return lif_neuron(spec, step_mode="s")

    def _node_types(self) -> tuple[type, ...]:
        n = sj().neuron
        return tuple(t for t in (getattr(n, "BaseNode", None), getattr(n, "SimpleBaseNode", None)) if t)

    def is_spiking(self, module: nn.Module) -> bool:
        return isinstance(module, self._node_types())

    def is_stateful(self, module: nn.Module) -> bool:
        return isinstance(module, sj().base.MemoryModule)

    def reset_module(self, module: nn.Module) -> None:
        module.reset()

    def select_module(self, module: nn.Module, keep: Tensor) -> None:
        """Keep batch rows ``keep`` of every per-sample memory (a tensor ``[N, ...]``); a memory shared by
        the whole batch (a step counter) stays; a queue of past inputs (a list) cannot be shrunk."""
        for name, value in list(module._memories.items()):
            if name == "v_seq":  # [T, N, ...]: 0.0.0.0.14 registers it as a memory (below)
                continue
            if _per_row(value):
                setattr(module, name, value.index_select(0, keep.to(value.device)))
            elif isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value):
                raise ValueError(
                    f"{type(module).__name__} keeps {name!r}, a queue of past inputs with the samples flattened "
                    "together, so samples cannot be dropped from it one by one: early exit cannot run this "
                    "network. Measure it post hoc: collect_trace(...), then policy.evaluate(trace)"
                )
        v_seq = getattr(module, "v_seq", None)
        if isinstance(v_seq, Tensor) and v_seq.dim() >= 2:
            module.v_seq = v_seq.index_select(1, keep.to(v_seq.device))

    def admit_module(self, module: nn.Module, n: int) -> None:
        for name, value in self._row_memories(module):
            fresh = _fresh_rows(module, name, value, n)
            setattr(module, name, torch.cat([value, fresh]))

    def reset_rows_module(self, module: nn.Module, rows: Tensor, n: int) -> None:
        """In place: each per-sample memory's rows ``rows`` back to its reset value (``_memories_rv``; a
        memory that resets to None is one SpikingJelly creates as zeros on first use)."""
        for name, value in self._row_memories(module):
            idx = rows.to(value.device)
            init = module._memories_rv[name]
            if init is None or (isinstance(init, (int, float)) and not isinstance(init, bool)):  # one value
                value.index_fill_(0, idx, 0.0 if init is None else float(init))
            else:
                value.index_copy_(0, idx, _fresh_rows(module, name, value, idx.numel()))

    @staticmethod
    def _row_memories(module: nn.Module) -> list[tuple[str, Tensor]]:
        """The memories holding one row per sample, after checking the others can be left alone
        (``v_seq``, the membranes of the last call, which 0.0.0.0.14 registers as a memory, is
        rewritten whole by the next call)."""
        rows = []
        for name, value in module._memories.items():
            if name == "v_seq":
                continue
            if _per_row(value):
                rows.append((name, value))
            elif not _unchanged(value, module._memories_rv[name]):
                raise ValueError(
                    f"{type(module).__name__} memory {name!r} is shared by the whole batch ({type(value).__name__} "
                    f"{value!r:.40}), so samples cannot join it at their own first step; use refill=False"
                )
        return rows

    def membrane_of(self, module: nn.Module) -> Tensor | None:
        """``v`` after the last step; in multi-step mode ``v_seq`` ``[T, N, ...]`` when stored."""
        v_seq = getattr(module, "v_seq", None)
        if getattr(module, "step_mode", "s") == "m" and isinstance(v_seq, Tensor):
            return v_seq
        v = getattr(module, "v", None)
        return v if isinstance(v, Tensor) else None

    def is_multistep(self, net: nn.Module) -> bool:
        """A module in multi-step mode, or a multi-step-only one (``MultiStepContainer``,
        ``SeqToANNContainer``, ...): the network takes ``[T, N, ...]`` sequences."""
        whole = (getattr(sj().base, "MultiStepModule", ()), _spiking_rnn())
        return any(getattr(m, "step_mode", "s") == "m" or isinstance(m, whole) for m in net.modules())

    def processes_sequences(self, module: nn.Module) -> bool:
        """Multi-step-only modules other than the step-wise containers (``PSN``, temporal attention, TEBN,
        time-last layers) and the parallel neurons in multi-step mode (``MaskedPSN``, ``SlidingPSN``):
        each call computes the sequence it is given, as a whole. So does a stateful leaf module in
        multi-step mode that keeps no memory between calls (``DSRIFNode``, ``DSRLIFNode``: their
        membrane lives only inside one call)."""
        m = sj()
        memory = getattr(m.base, "MemoryModule", None)
        if (memory is not None and isinstance(module, memory) and getattr(module, "step_mode", "s") == "m"
                and not module._memories and not module._modules):
            return True
        stepwise = tuple(c for c in (getattr(m.layer, "SeqToANNContainer", None),
                                     getattr(m.layer, "MultiStepContainer", None)) if c is not None)
        multi_only = getattr(m.base, "MultiStepModule", None)
        if multi_only is not None and isinstance(module, multi_only) and not isinstance(module, stepwise):
            return True
        if type(module).__name__ in ("MaskedPSN", "SlidingPSN") and getattr(module, "step_mode", "s") == "m":
            return True
        if isinstance(module, _spiking_rnn()):  # rnn.SpikingLSTM / GRU / VanillaRNN: [T, N, F] -> (out, states)
            return True
        return super().processes_sequences(module)

    def takes_sequences(self, module: nn.Module) -> bool:
        return getattr(module, "step_mode", "s") == "m"

    def map_layer(self, layer: nn.Module, step_mode: str) -> nn.Module:
        """Multi-step: ``nn.*`` layers run inside a ``SeqToANNContainer``; SpikingJelly's own layers
        (``layer.Conv2d``..., which have a ``step_mode``) are kept and switched to multi-step."""
        if step_mode != "m" or hasattr(layer, "step_mode"):
            return layer
        return sj().layer.SeqToANNContainer(layer)

    def set_step_mode(self, net: nn.Module, step_mode: str) -> nn.Module:
        """Set every SpikingJelly module of ``net`` to ``"s"`` or ``"m"`` (and the GPU kernel).

        As SpikingJelly 2.x does (0.0.0.0.14 does not), the modules inside step-wise and recurrent
        containers (``SeqToANNContainer``, ``MultiStepContainer``, ...) are left as they are: the
        container gives them single steps (or ``[T * N, ...]`` rows)."""
        check_choice("step_mode", step_mode, ("s", "m"))
        m = sj()
        inner = _inside_step_containers(net)
        for mod in net.modules():
            if hasattr(mod, "step_mode") and id(mod) not in inner:
                mod.step_mode = step_mode
        if m.legacy:
            backend = self.kernel() if step_mode == "m" else "torch"
            for mod in net.modules():
                if self.is_spiking(mod) and backend in getattr(mod, "supported_backends", ("torch",)):
                    mod.backend = backend
        elif hasattr(m.functional, "invalidate_reset_cache"):
            m.functional.invalidate_reset_cache(net)
        return net

    def run(self, net: nn.Module, x_seq: Tensor, readout: Readout = "auto",
            multistep: bool | None = None) -> Tensor:
        if readout == "membrane" and (multistep if multistep is not None else self.is_multistep(net)):
            layers = self.spiking_layers(net)
            last = layers[-1][1] if layers else None
            if last is not None and not getattr(last, "store_v_seq", False):
                last.store_v_seq = True  # a multi-step neuron keeps only its last v otherwise
                try:
                    return self.run(net, x_seq, readout, multistep)
                finally:
                    last.store_v_seq = False
        neurons = [mod for mod in net.modules() if getattr(mod, "backend", None) == "cupy"]
        if not neurons or not x_seq.is_cuda:
            return super().run(net, x_seq, readout, multistep)
        # 0.0.0.0.14 runs its cupy kernel only in train mode: switch the neurons alone
        modes = [mod.training for mod in neurons]
        for mod in neurons:
            mod.train(True)
        try:
            return super().run(net, x_seq, readout, multistep)
        finally:
            for mod, was in zip(neurons, modes):
                mod.train(was)

    def step_sequence(self, module: nn.Module, x_seq: Tensor) -> Any:
        """A single-step neuron (or a :class:`ScaledNeuron`) runs the block in SpikingJelly's
        multi-step mode, one call, when that mode is known to make the same update as k single
        steps (:meth:`multistep_matches_steps`); anything else steps."""
        node = module.node if isinstance(module, ScaledNeuron) else module
        if not (self.is_spiking(node) and getattr(node, "step_mode", None) == "s"
                and self.multistep_matches_steps(node)):
            return super().step_sequence(module, x_seq)
        node.step_mode = "m"
        try:
            return module(x_seq)
        finally:
            node.step_mode = "s"

    @staticmethod
    def multistep_matches_steps(module: nn.Module) -> bool:
        """Whether ``module`` in SpikingJelly's multi-step mode computes what stepping it one step at
        a time computes: True for IF, LIF, PLIF and the nodes that keep SpikingJelly's own pairing of
        single- and multi-step code; False where a subclass overrides a single step but inherits a
        specialised multi-step kernel (2.x ``LIAFNode``: ``act(v)`` per step, spikes multi-step)."""
        return multistep_matches_steps(module)

    @contextmanager
    def record(self, net: nn.Module, store: bool = False, membrane: bool = False, multistep: bool | None = None,
               T: int | None = None, keep_graph: bool = False) -> Iterator[Recorder]:
        """As :meth:`Backend.record`; multi-step neurons also keep ``v_seq`` while membranes are recorded."""
        nodes = [m for _, m in self.spiking_layers(net) if getattr(m, "step_mode", "s") == "m"] if membrane else []
        saved = [getattr(m, "store_v_seq", False) for m in nodes]
        for m in nodes:
            m.store_v_seq = True
        try:
            with super().record(net, store, membrane, multistep, T, keep_graph) as rec:
                yield rec
        finally:
            for m, was in zip(nodes, saved):
                m.store_v_seq = was

    def native_twin(self, net: nn.Module) -> tuple[nn.Module, Any]:
        """Already SpikingJelly's own modules (IFNode and a scaling wrapper), reset with ``functional.reset_net``."""
        import copy

        return copy.deepcopy(net), sj().functional.reset_net

    def integrate_events(self, dataset: str, root: Any, T: int, download: bool) -> bool:
        from .datasets import integrate_events

        return integrate_events(dataset, root, T, download)

    def describe(self) -> dict[str, Any]:
        """Version and kernel information for reports."""
        return {"version": self.version, "legacy_api": sj().legacy, "gpu_kernel": self.gpu_kernel,
                "cuda": torch.cuda.is_available()}


@functools.cache
def _spiking_rnn() -> tuple[type, ...]:
    """SpikingJelly's whole-sequence spiking RNNs (``rnn.SpikingRNNBase``), where it has them."""
    sj()  # quiets its import
    try:
        from spikingjelly.activation_based.rnn import SpikingRNNBase
    except ImportError:
        return ()
    return (SpikingRNNBase,)


def _per_row(value: Any) -> bool:
    """A memory with one row per sample: a tensor ``[N, ...]``."""
    return isinstance(value, Tensor) and value.dim() >= 1


def _unchanged(value: Any, init: Any) -> bool:
    """A memory still at its reset value (never materialised)."""
    if isinstance(value, Tensor) or isinstance(init, Tensor):
        return isinstance(value, Tensor) and isinstance(init, Tensor) and value.shape == init.shape and bool(
            torch.equal(value.cpu(), init.cpu()))
    return value is init or value == init


def _fresh_rows(module: nn.Module, name: str, value: Tensor, n: int) -> Tensor:
    """``[n, ...]`` rows of ``value``'s shape at the memory's reset value."""
    init = module._memories_rv[name]
    shape = (n, *value.shape[1:])
    if isinstance(init, Tensor) and init.dim() >= 1:
        return init.to(value).expand(shape)
    if init is None:  # created lazily by the module, as zeros (SpikingJelly's recurrent containers)
        return value.new_zeros(shape)
    if isinstance(init, (int, float, Tensor)) and not isinstance(init, bool):
        return value.new_full(shape, float(init))
    raise ValueError(f"{type(module).__name__} memory {name!r} resets to {type(init).__name__} {init!r:.40}, "
                     "which has no per-sample rows: refill cannot start samples in it; use refill=False")


_STEP_CONTAINERS = ("StepModeContainer", "SeqToANNContainer", "MultiStepContainer", "TLastMultiStepContainer",
                    "TLastSeqToANNContainer", "ElementWiseRecurrentContainer", "LinearRecurrentContainer")


def _inside_step_containers(net: nn.Module) -> set[int]:
    """``id`` of every module below one of SpikingJelly's step-wise or recurrent containers."""
    kinds = tuple(c for c in (getattr(sj().layer, name, None) for name in _STEP_CONTAINERS) if isinstance(c, type))
    inner: set[int] = set()
    for mod in net.modules():
        if isinstance(mod, kinds) and id(mod) not in inner:
            inner.update(id(sub) for sub in mod.modules() if sub is not mod)
    return inner
