r"""Per-layer spikes, membranes and per-sample operation counts, recorded with hooks.

Operations of one step for sample n (the ``ops`` of a :class:`~snncutoff.Trace`):

.. math::  \mathrm{ops}_n = \sum_{\ell \text{ spike-fed}} \sum_i [x^\ell_{n,i} \ne 0]\,\mathrm{fanout}^\ell_i
           \;+\; \sum_{\ell \text{ real-fed}} \mathrm{MAC}^\ell

A synaptic layer (``Conv1d/2d``, ``Linear``) is *spike-fed* for a sample when that
sample's input takes at most one non-zero value (spikes, possibly scaled by a
threshold): each spike costs one accumulate per synapse it reaches — the fan-out,
counted exactly with the layer's geometry (padding and stride included). Otherwise (the
first layer under direct encoding) the layer costs its dense multiply-accumulates. This
is the convention of SpikingJelly 2.x's ``SynOpCounter`` / ``MACCounter``, which judge a
whole batch tensor at once; snncutoff judges each sample, so a count never depends on
which other samples share the batch (streaming early exit drops samples as they exit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SYNAPTIC = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _unwrap(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def spike_like_rows(x: Tensor) -> Tensor:
    """``[B]`` bool: every non-zero element of row b has the same value (0/1 or 0/theta spikes)."""
    flat = x.flatten(1)
    nz = flat != 0
    hi = torch.where(nz, flat, torch.full_like(flat, float("-inf"))).amax(1)
    lo = torch.where(nz, flat, torch.full_like(flat, float("inf"))).amin(1)
    return (hi == lo) | ~nz.any(1)


def synaptic_ops(layer: nn.Module, x: Tensor) -> Tensor:
    """Per-sample operations of ``layer`` on input ``x`` ``[B, ...]`` (``[B]`` float64).

    Each sample is judged on its own: spike-like input costs its non-zero inputs times
    their exact fan-out; any other input costs the layer's dense MACs. (Judging each
    sample alone keeps the count independent of which other samples share the batch.)
    """
    B = x.shape[0]
    active = (x != 0).to(torch.float32)
    if isinstance(layer, nn.Linear):
        sops = active.flatten(1).sum(1).double() * layer.out_features
        macs = float(x[0].numel() // layer.in_features * layer.in_features * layer.out_features)
    else:
        conv = F.conv2d if isinstance(layer, nn.Conv2d) else F.conv1d
        ones = torch.ones_like(layer.weight, dtype=torch.float32)
        reached = conv(active, ones, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        sops = reached.flatten(1).sum(1).double()
        k = layer.weight[0].numel()  # in_channels / groups * kernel size
        macs = float(reached.shape[1:].numel() * k)  # each output element (any padding, 'same' and 'valid' too) costs k
    return torch.where(spike_like_rows(x), sops, torch.full((B,), macs, dtype=torch.float64, device=x.device))


@dataclass
class Recorder:
    """What :meth:`Backend.record` collects while a network runs.

    Each forward call of a layer appends one entry. In single-step mode an entry is one
    step ``[N, ...]``; in multi-step mode it covers all T steps (time-major ``[T, N, ...]``
    or flattened ``[T * N, ...]`` rows, as SpikingJelly's containers pass them), and the
    per-sample figures are reshaped to ``[T, N]`` with ``T``.

    Attributes:
        spikes: layer name -> list of spike tensors (kept only with ``store=True``).
        membranes: layer name -> list of membrane tensors (with ``membrane=True``).
        keep_graph: keep stored spikes and membranes in the autograd graph (for
            regularisers such as RCS); detached otherwise.
        spike_counts: per call, ``[N]`` (or ``[T, N]``) spikes summed over spiking layers.
        ops: per call, ``[N]`` (or ``[T, N]``) operations summed over synaptic layers.
    """

    store: bool = False
    membrane: bool = False
    multistep: bool = False
    T: int | None = None
    keep_graph: bool = False
    spikes: dict[str, list[Tensor]] = field(default_factory=dict)
    membranes: dict[str, list[Tensor]] = field(default_factory=dict)
    _spike_calls: dict[str, list[Tensor]] = field(default_factory=dict)
    _op_calls: dict[str, list[Tensor]] = field(default_factory=dict)
    _handles: list = field(default_factory=list)

    def _per_sample(self, per_call: dict[str, list[Tensor]]) -> Tensor | None:
        if self.multistep:
            if self.T is None:
                raise ValueError("a multi-step Recorder needs T to arrange its counts as [T, N]")
            layers = [torch.cat(v).view(self.T, -1) for v in per_call.values() if v]
        else:
            layers = [torch.stack(v) for v in per_call.values() if v]
        if not layers:
            return None
        return torch.stack(layers).sum(0)

    def spike_counts(self) -> Tensor | None:
        """``[T, N]`` spikes per step and sample, summed over spiking layers."""
        return self._per_sample(self._spike_calls)

    def ops(self) -> Tensor | None:
        """``[T, N]`` operations per step and sample, summed over synaptic layers."""
        return self._per_sample(self._op_calls)

    def sequences(self, which: str = "spikes") -> dict[str, Tensor]:
        """Stored spikes (or ``"membranes"``) per layer as ``[T, N, ...]`` tensors."""
        src = self.spikes if which == "spikes" else self.membranes
        return {k: (torch.cat(v) if self.multistep else torch.stack(v)) for k, v in src.items() if v}

    def take_ops(self, steps: int = 1) -> Tensor | None:
        """Operations per sample of the calls since the last ``take_ops``, then forget them.

        For streaming: the calls since the last take cover ``steps`` steps (one
        single-step call per step, or a block of steps run at once), time-major. Returns
        ``[N]`` for one step, ``[steps, N]`` otherwise.
        """
        parts = [torch.cat(v).view(steps, -1) for v in self._op_calls.values() if v]
        for v in self._op_calls.values():
            v.clear()
        if not parts:
            return None
        total = torch.stack(parts).sum(0)
        return total[0] if steps == 1 else total

    def clear(self) -> None:
        """Forget everything recorded so far (hooks stay)."""
        for d in (self.spikes, self.membranes, self._spike_calls, self._op_calls):
            for v in d.values():
                v.clear()

    def attach(
        self,
        net: nn.Module,
        spiking: list[tuple[str, nn.Module]],
        spikes_of: Callable[[nn.Module, object], Tensor],
        membrane_of: Callable[[nn.Module], Tensor | None],
        takes_sequences: Callable[[nn.Module], bool] = lambda m: False,
    ) -> None:
        """Hook ``spiking`` layers (outputs) and every synaptic layer of ``net`` (inputs).

        ``takes_sequences(layer)`` tells whether a spiking layer's output is a whole
        time-major sequence ``[T, N, ...]`` (SpikingJelly multi-step) or one step.
        """
        for name, m in spiking:
            self.spikes[name], self.membranes[name], self._spike_calls[name] = [], [], []
            hook = self._spike_hook(name, spikes_of, membrane_of, takes_sequences(m))
            self._handles.append(m.register_forward_hook(hook))
        spiking_ids = {id(m) for _, m in spiking}
        for name, m in net.named_modules():
            if isinstance(m, SYNAPTIC) and id(m) not in spiking_ids:
                self._op_calls[name] = []
                self._handles.append(m.register_forward_pre_hook(self._op_hook(name)))

    def detach(self) -> None:
        """Remove every hook."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _spike_hook(self, name, spikes_of, membrane_of, sequence: bool):
        def hook(module, _inputs, output):
            s = spikes_of(module, output)
            rows = s.detach().reshape(s.shape[0] * s.shape[1], -1) if sequence else s.detach().flatten(1)
            self._spike_calls[name].append((rows != 0).sum(-1).double())
            if self.store:
                self.spikes[name].append(s if self.keep_graph else s.detach())
            if self.membrane:
                v = membrane_of(module)
                if v is not None:
                    self.membranes[name].append(v if self.keep_graph else v.detach())

        return hook

    def _op_hook(self, name):
        def hook(module, inputs):
            x = _unwrap(inputs).detach()
            if self.multistep:  # [T, N, ...] or [T * N, ...] -> rows
                feature_dims = {nn.Linear: 1, nn.Conv1d: 2, nn.Conv2d: 3}
                dims = next(d for cls, d in feature_dims.items() if isinstance(module, cls))
                x = x.reshape(-1, *x.shape[-dims:])
            self._op_calls[name].append(synaptic_ops(module, x))

        return hook
