"""SpikingJelly neurons as the converters and trainers need them.

- :func:`if_neuron`: ``IFNode(v_threshold=θ, v_reset=None)`` (soft reset, fires on
  ``H >= θ``) with initial membrane ``v_init·θ`` set as its reset value, inside
  :class:`ScaledNeuron`, which passes ``θ·S`` on to the next layer;
- :func:`lif_neuron`: ``LIFNode(tau, decay_input=True, v_threshold, v_reset)`` with the
  surrogate of the :class:`~snncutoff.spec.LIF` spec.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from snncutoff.spec import LIF
from snncutoff.surrogate import spike_function

from ._compat import sj


class ScaledNeuron(nn.Module):
    """A SpikingJelly neuron whose 0/1 spikes leave scaled by its threshold: ``y = θ · S``.

    Shape: whatever the wrapped node takes (``[N, ...]`` in 's' mode, ``[T, N, ...]`` in 'm').
    """

    def __init__(self, node: nn.Module, scale: float) -> None:
        super().__init__()
        self.node = node
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.node(x) * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"


def if_neuron(threshold: float, v_init: float, step_mode: str = "s") -> ScaledNeuron:
    """Soft-reset IF neuron, threshold ``threshold``, initial membrane ``v_init * threshold``."""
    m = sj()
    node = m.neuron.IFNode(v_threshold=float(threshold), v_reset=None,
                           surrogate_function=m.surrogate.ATan(alpha=2.0), step_mode=step_mode)
    node.set_reset_value("v", float(v_init * threshold))
    node.reset()
    return ScaledNeuron(node, threshold)


class SpikeFunction(nn.Module):
    """A :func:`snncutoff.surrogate.spike_function` as a SpikingJelly ``surrogate_function``."""

    def __init__(self, name: str, alpha: float) -> None:
        super().__init__()
        self.name, self.alpha = name, float(alpha)
        self.fn = spike_function(name, alpha)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return f"{self.name}, alpha={self.alpha}"


def surrogate_for(spec: LIF) -> nn.Module:
    """SpikingJelly's own ``ATan`` / ``Sigmoid``, or the shared triangle, for a spec."""
    m = sj()
    if spec.surrogate == "atan":
        return m.surrogate.ATan(alpha=float(spec.alpha))
    if spec.surrogate == "sigmoid":
        return m.surrogate.Sigmoid(alpha=float(spec.alpha))
    return SpikeFunction("triangle", spec.alpha)


def lif_neuron(spec: LIF, step_mode: str = "m") -> nn.Module:
    """``LIFNode`` for direct training with BPTT (multi-step by default)."""
    m = sj()
    if not math.isfinite(spec.tau):
        raise ValueError(f"tau must be finite, got {spec.tau}")
    return m.neuron.LIFNode(
        tau=float(spec.tau), decay_input=True, v_threshold=float(spec.threshold),
        v_reset=None if spec.reset == "soft" else float(spec.v_reset),
        surrogate_function=surrogate_for(spec), detach_reset=bool(spec.detach_reset), step_mode=step_mode,
    )
