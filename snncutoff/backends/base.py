"""``Backend``: the contract an adapter implements, and the machinery built once on it.

A framework adapter subclasses :class:`Backend` and implements its abstract hooks (what
only the framework knows: its neurons, which modules hold state, how to reset, shrink
and grow that state); every contract method of DESIGN.md — ``convert``, ``reset``,
``step``, ``run``, ``run_block``, ``select``, ``admit``, ``reset_rows``, ``record`` — is
written here on top of them. :func:`snncutoff.testing.check_backend` tells an adapter
author whether their backend keeps the contract.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..convert import ConversionError, ConvertedActivation, convert_ann, convert_for_training
from ..graph import is_dropout
from ..layers import TEBN
from ..record import Recorder
from ..spec import IF, LIF
from ..validation import check_device

Readout = str | Callable[[Any], Tensor]


class LoopsOverTimeError(ValueError):
    """A network run one step per call loops over time itself (see :meth:`Backend.checking_steps`)."""


class Backend(ABC):
    """What an adapter implements (DESIGN.md, "The backend contract"), and the shared logic.

    Adapters subclass this and implement the framework hooks in the first block; the
    contract methods (``convert``, ``reset``, ``step``, ``run``, ``spiking_layers``,
    ``record``, ``select``) are written once here on top of them.

    Shapes: ``x_t`` ``[N, ...]`` one step; ``x_seq`` ``[T, N, ...]`` time-major;
    outputs ``y_t`` ``[N, C]`` and ``y_seq`` ``[T, N, C]``, per step (not cumulative).

    Readout (how a network's raw output becomes ``y_t``): ``"auto"`` (default) takes a
    tensor as it is and the first element of a tuple (snnTorch's ``(spk, mem)``: spike
    counts accumulate into the trace); ``"spikes"`` the same; ``"membrane"`` the last
    element of a tuple (``mem`` of snnTorch's ``(spk, mem)`` or ``(spk, syn, mem)``), or the
    membrane of the last spiking layer; or a callable ``output -> y_t``.
    """

    name: ClassVar[str] = "backend"
    #: what to tell a user whose framework is missing
    install_hint: ClassVar[str] = ""
    #: what the framework's neurons are, for a user whose network holds none
    neuron_hint: ClassVar[str] = ""
    #: the keyword options the backend takes (``registry.get(name, **options)``)
    options: ClassVar[tuple[str, ...]] = ()
    #: the step modes :meth:`convert` offers (``"s"``: one step per call; ``"m"``: ``[T, N, ...]`` per call)
    step_modes: ClassVar[tuple[str, ...]] = ("s",)
    #: the mode to run whole sequences in (trace collection, training) where the framework has a choice
    preferred_step_mode: ClassVar[str] = "s"
    #: top-level packages whose layers (torch.nn subclasses) run the framework's own ``forward``: the
    #: converter's check takes them as modules, not as code to read (:func:`registry.layer_packages`)
    layer_packages: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------- framework hooks
    @abstractmethod
    def framework(self) -> Any:
        """Import the framework (lazily) and return what the adapter uses of it."""
        raise NotImplementedError

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` when the framework imports, else ``(False, what to install)``."""
        try:
            self.framework()
        except ImportError as exc:
            return False, f"{exc}; {self.install_hint}" if self.install_hint else str(exc)
        return True, ""

    @property
    def version(self) -> str | None:
        """The installed framework's version (None if the adapter does not say)."""
        try:
            return getattr(self.framework(), "version", None)
        except (NotImplementedError, ImportError):
            return None

    @abstractmethod
    def if_neuron(self, threshold: float, v_init: float) -> nn.Module:
        """Integrate-and-fire, soft reset, emitting ``threshold * spike``; ``V_0 = v_init * threshold``."""
        raise NotImplementedError

    def lif_neuron(self, spec: LIF) -> nn.Module:
        """A trainable LIF neuron (surrogate gradient) of the framework (direct training; optional)."""
        raise NotImplementedError(f"backend {self.name!r} has no trainable LIF neuron (direct training)")

    @abstractmethod
    def is_spiking(self, module: nn.Module) -> bool:
        """Whether ``module`` is one of the framework's spiking neurons."""
        raise NotImplementedError

    @abstractmethod
    def is_stateful(self, module: nn.Module) -> bool:
        """Whether ``module`` holds state across steps (reset and select act on these)."""
        raise NotImplementedError

    @abstractmethod
    def reset_module(self, module: nn.Module) -> None:
        """Forget ``module``'s state (back to its initial membrane)."""
        raise NotImplementedError

    @abstractmethod
    def select_module(self, module: nn.Module, keep: Tensor) -> None:
        """Keep only the batch rows ``keep`` of ``module``'s state."""
        raise NotImplementedError

    def admit_module(self, module: nn.Module, n: int) -> None:
        """Append ``n`` batch rows in the initial state to ``module``'s state (if it has any yet).

        Needed by continuous batching (``early_exit_loader(refill=True)``) only."""
        raise NotImplementedError(f"backend {self.name!r} cannot add samples to a running batch: use refill=False")

    def reset_rows_module(self, module: nn.Module, rows: Tensor, n: int) -> None:
        """Put batch rows ``rows`` (of the ``n`` in ``module``'s state) back in the initial state.

        Continuous batching hands the rows of exited samples to new ones. This default
        appends fresh rows (:meth:`admit_module`) and moves them into place
        (:meth:`select_module`); adapters override it with an in-place write.
        """
        self.admit_module(module, rows.numel())
        order = torch.arange(n, device=rows.device)
        order[rows] = torch.arange(n, n + rows.numel(), device=rows.device)
        self.select_module(module, order)

    def spikes_of(self, module: nn.Module, output: Any) -> Tensor:
        """The spike tensor in a spiking layer's forward output."""
        return output[0] if isinstance(output, (tuple, list)) else output

    def membrane_of(self, module: nn.Module) -> Tensor | None:
        """The membrane potential a spiking layer holds after its last step, if exposed."""
        return None

    def is_multistep(self, net: nn.Module) -> bool:
        """Whether ``net(x_seq)`` processes a whole ``[T, N, ...]`` sequence in one call."""
        return False

    def takes_sequences(self, module: nn.Module) -> bool:
        """Whether a spiking layer's forward consumes and returns ``[T, N, ...]`` sequences."""
        return False

    def processes_sequences(self, module: nn.Module) -> bool:
        """Whether ``module`` computes a whole ``[T, N, ...]`` sequence at once, keeping no state from one
        call to the next (a parallel or kernel neuron: its output at step t depends on the sequence it
        is given). A network holding one runs whole sequences only: no early exit, no step loop.
        snncutoff's own :class:`~snncutoff.layers.TEBN` is one (its scale depends on the step index)."""
        return isinstance(module, TEBN)

    def native_twin(self, net: nn.Module) -> tuple[nn.Module, Callable[[nn.Module], None]]:
        """``net`` (converted) written as the framework's users write it, with the same weights, and the
        framework's own way of resetting it: the baseline of the adapter-overhead benchmark. Default: a
        copy, reset through :meth:`reset`."""
        return copy.deepcopy(net), self.reset

    def integrate_events(self, dataset: str, root: Any, T: int, download: bool) -> bool:
        """Turn the raw events of the event data set ``dataset`` under ``root`` into T frames per sample,
        written as ``root/frames_number_<T>_split_by_number/...``; False if this backend cannot."""
        return False

    def check_network(self, net: nn.Module) -> None:
        """Refuse a network in which this backend finds no neuron (wrong backend, or a neuron of its own
        kind whose state snncutoff could neither reset nor shrink), naming the backend that knows it."""
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        mods = list(net.modules())
        if any(self.is_stateful(m) or self.is_spiking(m) or self.processes_sequences(m) for m in mods):
            return
        from .registry import recognising

        other = recognising(net, exclude=self.name)
        if other:
            raise ValueError(f"{type(net).__name__} holds {other[1]} neurons ({other[2]}), not {self.name} ones: "
                             f"pass backend={other[0]!r}")
        raise ValueError(
            f"found no {self.name} neuron in {type(net).__name__}: snncutoff resets and shrinks neuron state "
            "only through its backend, so the network's state would leak from one batch (or sample) to the next. "
            f"A converted network comes from backend.convert(ann); a network of your own must use {self.name}'s "
            f"neurons{': ' + self.neuron_hint if self.neuron_hint else ''}"
        )

    def map_layer(self, layer: nn.Module, step_mode: str) -> nn.Module:
        """Swap a stateless layer for the framework's version (conversion, multi-step)."""
        return layer

    def set_step_mode(self, net: nn.Module, step_mode: str) -> nn.Module:
        """Put a converted network in single- (``"s"``) or multi-step (``"m"``) mode."""
        if step_mode != "s":
            raise ValueError(f"backend {self.name!r} supports step_mode='s' only, got {step_mode!r}")
        return net

    # ------------------------------------------------------------- contract
    def convert(
        self,
        ann: nn.Module,
        spec: IF | LIF | None = None,
        calibration: Iterable | None = None,
        *,
        step_mode: str = "s",
        threshold_rule: str = "max",
        maxpool: str = "error",
        fuse_bn: bool = False,
        tebn: int | None = None,
        example_input: Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> nn.Module:
        """ANN -> SNN built from this framework's neurons (see :func:`snncutoff.convert.convert_ann`).

        ``spec=IF(...)`` (default) converts for inference: integrate-and-fire neurons,
        soft reset, thresholds from constraints or calibration. ``spec=LIF(...)`` builds a
        trainable network with the framework's LIF neurons in place of the activations
        (direct training; every other layer is kept as it is).
        ``tebn=T`` (LIF, multi-step only) replaces every BatchNorm by
        :class:`~snncutoff.layers.TEBN` for up to T steps.
        The result carries ``snncutoff_activations``, the list of what was converted.
        """
        spec = spec if spec is not None else IF()
        if isinstance(ann, nn.Module):
            self._refuse_snn(ann)
        device = check_device(device)
        if isinstance(spec, LIF):
            if tebn is not None and step_mode != "m":
                raise ValueError("tebn needs a multi-step network (step_mode='m'): TEBN normalises over T and N "
                                 "together, which a step-by-step network never sees at once")

            def map_train(m: nn.Module) -> nn.Module:
                if tebn is not None and isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    return TEBN.from_batchnorm(m, tebn)
                return self.map_layer(m, step_mode)

            snn, acts = convert_for_training(ann, lambda theta, v: self.lif_neuron(spec), spec.threshold,
                                             map_layer=map_train, example_input=example_input)
        elif isinstance(spec, IF):
            if tebn is not None:
                raise ValueError("tebn is for direct training (spec=LIF(), step_mode='m'); converting for inference "
                                 "(spec=IF) keeps each BatchNorm as the ANN's, or folds it with fuse_bn=True")
            snn, acts = convert_ann(
                ann, self.if_neuron, spec, calibration, threshold_rule=threshold_rule, maxpool=maxpool,
                fuse_bn=fuse_bn, map_layer=(lambda m: self.map_layer(m, step_mode)),
                example_input=example_input, device=device,
            )
        else:
            raise TypeError(f"spec must be snncutoff.spec.IF or LIF, got {type(spec).__name__}")
        snn = self.set_step_mode(snn, step_mode)
        snn.snncutoff_activations: list[ConvertedActivation] = acts
        self.reset(snn)
        return snn

    def _refuse_snn(self, ann: nn.Module) -> None:
        """A network that already holds spiking neurons is not an ANN to convert."""
        from .registry import recognising

        mine = sorted({type(m).__name__ for m in ann.modules() if self.holds_neurons(m)})
        other = None if mine else recognising(ann, exclude=self.name)
        if mine or other:
            kind = ", ".join(mine[:3]) if mine else other[2]
            raise ConversionError(
                f"{type(ann).__name__} already holds spiking neurons ({kind}): it is an SNN, not an ANN to convert. "
                "Convert the ANN it came from, or pass this network to collect_trace / early_exit as it is")

    def holds_neurons(self, module: nn.Module) -> bool:
        """Whether ``module`` makes a network an SNN: a spiking neuron, or other step state (a
        synapse filter, a delay), but not a dropout layer's mask (SpikingJelly's ``layer.Dropout``)."""
        return self.is_spiking(module) or (self.is_stateful(module) and not is_dropout(module))

    def stateful_modules(self, net: nn.Module) -> list[nn.Module]:
        """Every module of ``net`` holding state across steps."""
        return [m for m in net.modules() if self.is_stateful(m)]

    def spiking_layers(self, net: nn.Module) -> list[tuple[str, nn.Module]]:
        """``[(name, module)]`` of the framework's spiking neurons in ``net``, in order."""
        return [(n, m) for n, m in net.named_modules() if self.is_spiking(m)]

    def reset(self, net: nn.Module, modules: list[nn.Module] | None = None) -> None:
        """Reset every stateful module of ``net`` (this network only; nothing global).

        ``modules``: the network's :meth:`stateful_modules`, when the caller keeps them
        (the same holds for :meth:`select`, :meth:`admit` and :meth:`reset_rows`)."""
        for m in self.stateful_modules(net) if modules is None else modules:
            self.reset_module(m)

    def select(self, net: nn.Module, keep: Tensor, modules: list[nn.Module] | None = None) -> None:
        """Keep only batch rows ``keep`` (``[K]`` indices or ``[N]`` bool) of every neuron state."""
        if keep.dtype == torch.bool:
            keep = keep.nonzero().flatten()
        for m in self.stateful_modules(net) if modules is None else modules:
            self.select_module(m, keep)

    def admit(self, net: nn.Module, n: int, modules: list[nn.Module] | None = None) -> None:
        """Append ``n`` fresh samples (initial state) after the current batch rows of every neuron."""
        for m in self.stateful_modules(net) if modules is None else modules:
            self.admit_module(m, n)

    def reset_rows(self, net: nn.Module, rows: Tensor, n: int, modules: list[nn.Module] | None = None) -> None:
        """Put batch rows ``rows`` (of ``n``) of every neuron state back in the initial state."""
        for m in self.stateful_modules(net) if modules is None else modules:
            self.reset_rows_module(m, rows, n)

    def _readout(self, net: nn.Module, out: Any, readout: Readout) -> Tensor:
        if callable(readout):
            y = readout(out)
            if not isinstance(y, Tensor):
                raise ValueError(f"the readout callable returned a {type(y).__name__}, not the [N, C] tensor of "
                                 "the step's outputs")
            return y
        if readout in ("auto", "spikes"):
            y = out[0] if isinstance(out, (tuple, list)) else out
            if not isinstance(y, Tensor):
                raise ValueError(f"{type(net).__name__} returned a {type(y).__name__}; the default readout takes a "
                                 "tensor (or the first element of a tuple): pass readout= a callable that picks it")
            return y
        if readout == "membrane":
            if isinstance(out, (tuple, list)):
                return out[-1]
            layers = self.spiking_layers(net)
            v = self.membrane_of(layers[-1][1]) if layers else None
            if v is None:
                raise ValueError("readout='membrane': the last spiking layer exposes no membrane; pass a callable")
            if isinstance(out, Tensor) and v.shape != out.shape:
                raise ValueError(
                    f"readout='membrane' reads the membrane of the last spiking layer ('{layers[-1][0]}', "
                    f"{list(v.shape)}), but the network's output is {list(out.shape)}: layers after that neuron "
                    "(a voting or linear layer) compute the output from its spikes. Use the default spike readout, "
                    "or pass readout= a callable that picks what to accumulate"
                )
            return v
        raise ValueError(f"readout must be 'auto', 'spikes', 'membrane' or a callable, got {readout!r}")

    def step(self, net: nn.Module, x_t: Tensor, readout: Readout = "auto") -> Tensor:
        """One timestep: ``[N, ...] -> [N, C]``; state is kept for the next call."""
        return self._readout(net, net(x_t), readout)

    @contextmanager
    def checking_steps(self, net: nn.Module, n: int, k: int = 1) -> Iterator[dict[str, tuple[int, ...]]]:
        """Around the first call of ``net`` covering ``k`` steps of ``n`` samples (one step
        ``[n, ...]``, or a block ``[k, n, ...]``): refuse a forward that loops over time itself
        (``for step in range(x.size(0)): ... x[step]``, or over a fixed ``num_steps``), which,
        given one step ``[N, ...]``, loops over the samples instead. Seen as a neuron called more
        than ``k`` times on inputs that hold no batch dimension: neither ``n`` first, nor ``n``
        anywhere (a transposed input), nor a multiple of ``n`` first (tokens flattened into the
        batch), so a neuron called twice per step on such inputs is not refused (nor anything
        for a batch of one sample, where nothing tells the two apart).

        Yields ``{neuron: input shape}`` of the neurons fed inputs whose first dimension is not
        the ``n`` samples (filled during the call): their state rows are not samples. A neuron
        that takes sequences (:meth:`takes_sequences`) must be fed ``[k, n, ...]``: its ``[1, 8, 8]``
        for one sample is 8 token rows, not one step of one sample."""
        calls: dict[str, int] = {}
        lost: dict[str, tuple[int, ...]] = {}  # neurons fed an input whose first dimension is not the samples
        unbatched: set[str] = set()  # ... and with no sign of the batch anywhere in it

        def watch(name: str, sequences: bool) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple) -> None:
                calls[name] = calls.get(name, 0) + 1
                x = args[0] if args else None
                if not isinstance(x, Tensor):
                    return
                shape = tuple(x.shape)
                if not (shape[:2] == (k, n) or not sequences and len(shape) >= 1 and shape[0] == n):
                    lost.setdefault(name, shape)  # neither [n, ...] nor a block's [k, n, ...]
                    if n >= 2 and (not shape or (n not in shape and shape[0] % n != 0)):
                        unbatched.add(name)
            return hook

        handles = [m.register_forward_pre_hook(watch(name, self.takes_sequences(m)))
                   for name, m in self.spiking_layers(net)]

        def refusal(name: str, failure: str = "") -> LoopsOverTimeError:
            return LoopsOverTimeError(
                f"{type(net).__name__}'s forward called its neuron '{name}' {calls[name]} time(s) for {k} step(s) "
                f"of {n} samples, on inputs of shape {list(lost[name])}: it seems to loop over the first dimension "
                "of its input as time (for step in range(x.size(0)): ... x[step]), so given one step [N, ...] it "
                "loops over the samples. collect_trace(..., multistep=True) gives such a network the whole "
                "[T, N, ...] sequence in one call; early exit needs a forward that takes one step per call "
                "(snnTorch: layers and Leaky(init_hidden=True) neurons in an nn.Sequential, the last with "
                f"output=True; SpikingJelly: single-step mode){failure}")

        def looped() -> str | None:
            return next((name for name in lost if name in unbatched and calls[name] > k), None)

        try:
            yield lost
        except Exception as exc:
            if looped() is not None:
                raise refusal(looped(), f". The call failed: {exc}") from exc
            raise
        finally:
            for h in handles:
                h.remove()
        if looped() is not None:
            raise refusal(looped())

    def run(
        self, net: nn.Module, x_seq: Tensor, readout: Readout = "auto", multistep: bool | None = None
    ) -> Tensor:
        """All timesteps: ``[T, N, ...] -> [T, N, C]`` per-step outputs.

        Uses one multi-step call when the network is in multi-step mode (or
        ``multistep=True``: a module whose ``forward`` loops over time itself), else a
        loop of :meth:`step`. Does not reset first.
        """
        if multistep if multistep is not None else self.is_multistep(net):
            return self._readout(net, net(x_seq), readout)
        with self.checking_steps(net, x_seq.shape[1]):
            first = self.step(net, x_seq[0], readout)
        return torch.stack([first, *(self.step(net, x_seq[t], readout) for t in range(1, x_seq.shape[0]))])

    def block_plan(self, net: nn.Module, readout: Readout = "auto") -> list[tuple[nn.Module, bool]] | None:
        """How :meth:`run_block` may run a single-step ``net`` layer by layer, or None.

        Possible for an ``nn.Sequential`` whose children either hold no state (run once
        on all ``k * N`` rows of a block) or hold neurons (stepped k times in order),
        with ``readout`` ``"auto"`` / ``"spikes"``, or ``"membrane"`` when the last child
        holds the last neuron. Returns ``[(child, stateful)]``.
        """
        if not isinstance(net, nn.Sequential) or len(net) == 0 or self.is_multistep(net):
            return None
        plan = [(child, any(self.is_stateful(m) for m in child.modules())) for child in net]
        if callable(readout) or (readout == "membrane" and not plan[-1][1]):
            return None
        return plan

    def run_block(
        self, net: nn.Module, x_seq: Tensor, readout: Readout = "auto",
        plan: list[tuple[nn.Module, bool]] | None = None,
    ) -> Tensor:
        """The next k steps at once: ``[k, N, ...] -> [k, N, C]`` per-step outputs, state kept.

        Same values as k calls of :meth:`step`, computed with fewer calls: a multi-step
        network takes the block in one call; with a ``plan`` (:meth:`block_plan`) every
        stateless layer runs once on the ``k * N`` rows and every neuron layer steps
        through the k steps; otherwise a loop of :meth:`step`.
        """
        if self.is_multistep(net):
            return self.run(net, x_seq, readout, True)
        if plan is None:
            return self.run(net, x_seq, readout, False)
        k, n = x_seq.shape[:2]
        h: Any = x_seq
        last = len(plan) - 1
        for i, (child, stateful) in enumerate(plan):
            if not stateful:
                h = child(h.flatten(0, 1)).unflatten(0, (k, n))
            elif i == last and readout == "membrane":  # the membrane of every step, read as it goes
                return torch.stack([self._readout(net, child(h[t]), readout) for t in range(k)])
            else:
                h = self.step_sequence(child, h)
        return self._readout(net, h, readout)

    def step_sequence(self, module: nn.Module, x_seq: Tensor) -> Any:
        """Step a single-step ``module`` holding neurons through ``x_seq`` ``[k, N, ...]``.

        Returns the stacked per-step outputs (a tuple of stacks for tuple outputs). Adapters
        override this where the framework runs a sequence faster in one call.
        """
        outs = [module(x_seq[t]) for t in range(x_seq.shape[0])]
        if isinstance(outs[0], (tuple, list)):
            return tuple(torch.stack(parts) for parts in zip(*outs))
        return torch.stack(outs)

    @contextmanager
    def record(
        self, net: nn.Module, store: bool = False, membrane: bool = False, multistep: bool | None = None,
        T: int | None = None, keep_graph: bool = False,
    ) -> Iterator[Recorder]:
        """Record per-layer spikes (``store=True``), membranes and per-sample operation counts.

        ``T`` is needed for a multi-step network (to arrange its counts as ``[T, N]``);
        ``keep_graph`` keeps stored tensors differentiable (training regularisers).
        """
        rec = Recorder(store=store, membrane=membrane,
                       multistep=self.is_multistep(net) if multistep is None else multistep, T=T,
                       keep_graph=keep_graph)
        rec.attach(net, self.spiking_layers(net), self.spikes_of, self.membrane_of, self.takes_sequences)
        try:
            yield rec
        finally:
            rec.detach()
