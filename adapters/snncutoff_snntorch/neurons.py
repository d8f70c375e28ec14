r"""snnTorch neurons as the converters and trainers need them.

``IFNeuron`` (conversion): ``snn.Leaky(beta=1, reset_mechanism="none")`` integrates
and fires on :math:`U \ge \theta` (spike function with :math:`H(0)=1`); the module then
applies the soft reset :math:`V = U - \theta S` itself, in the same order as
SpikingJelly's ``IFNode`` (charge, fire, reset), so both backends compute bit-identical
membranes and spikes. (snnTorch's own delayed subtract reset computes
:math:`(U + X) - \theta S` instead of :math:`(U - \theta S) + X`, which differs in the
last bit now and then.) Output :math:`\theta S`; initial membrane :math:`v_{init}\theta`.

``LIFNeuron`` (direct training): ``snn.Leaky(beta = 1 - 1/\tau)`` driven with
:math:`X/\tau`, which is SpikingJelly's ``LIFNode(decay_input=True)`` update; hard reset
to 0 is snnTorch's ``"zero"``, soft is ``"subtract"`` (both applied the next step, as
SpikingJelly applies them after firing). Spikes fire on :math:`U \ge \theta` with the
spec's surrogate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from snncutoff.spec import LIF
from snncutoff.surrogate import spike_function

from ._compat import snn


class IFNeuron(nn.Module):
    """Integrate-and-fire with soft reset built on ``snn.Leaky``; emits ``θ·S``.

    Args:
        threshold: θ.
        v_init: initial membrane as a fraction of θ.

    State: ``mem`` ``[N, ...]`` (post-reset membrane), None before the first step.
    """

    def __init__(self, threshold: float, v_init: float = 0.5) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.v_init = float(v_init)
        self.lif = snn().Leaky(beta=1.0, threshold=self.threshold, spike_grad=spike_function("atan", 2.0),
                               reset_mechanism="none", init_hidden=False)
        self.mem: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        mem = self.mem if self.mem is not None else torch.full_like(x, self.v_init * self.threshold)
        spk, h = self.lif(x, mem)
        self.mem = h - spk * self.threshold
        return spk * self.threshold

    def reset(self) -> None:
        """Back to the initial membrane at the next step."""
        self.mem = None
        self.lif.mem = torch.zeros(0)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold:.6g}, v_init={self.v_init}"


class LIFNeuron(nn.Module):
    """Trainable LIF on ``snn.Leaky`` that matches SpikingJelly's ``LIFNode``; emits ``S``.

    State: ``mem`` ``[N, ...]`` held by the inner ``Leaky`` (pre-reset, snnTorch's convention).
    """

    def __init__(self, spec: LIF) -> None:
        super().__init__()
        if spec.reset == "hard" and spec.v_reset != 0.0:
            raise ValueError("snnTorch resets to zero only: use LIF(v_reset=0.0) or reset='soft'")
        self.spec = spec
        self.lif = snn().Leaky(beta=spec.beta, threshold=float(spec.threshold),
                               spike_grad=spike_function(spec.surrogate, spec.alpha),
                               reset_mechanism="zero" if spec.reset == "hard" else "subtract",
                               init_hidden=False)
        self.inv_tau = 1.0 / spec.tau
        self.mem: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        mem = self.mem if self.mem is not None else torch.zeros_like(x)
        spk, self.mem = self.lif(x * self.inv_tau, mem)
        return spk

    def reset(self) -> None:
        """Zero membrane at the next step."""
        self.mem = None
        self.lif.mem = torch.zeros(0)

    def extra_repr(self) -> str:
        s = self.spec
        return f"tau={s.tau}, threshold={s.threshold}, reset={s.reset!r}, surrogate={s.surrogate!r}"
