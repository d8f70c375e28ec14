r"""snnTorch neurons as the converters and trainers need them.

``IFNeuron`` (conversion): ``snn.Leaky(beta=1, reset_mechanism="none", init_hidden=True)``
integrates and fires on :math:`U \ge \theta` (spike function with :math:`H(0)=1`); the
module then applies the soft reset :math:`V = U - \theta S` to the Leaky's own state, in the same order as
SpikingJelly's ``IFNode`` (charge, fire, reset), so both backends compute bit-identical
membranes and spikes. (snnTorch's own delayed subtract reset computes
:math:`(U + X) - \theta S` instead of :math:`(U - \theta S) + X`, which differs in the
last bit now and then.) Output :math:`\theta S`; initial membrane :math:`v_{init}\theta`.

``LIFNeuron`` (direct training): ``snn.Leaky(beta = 1 - 1/\tau)`` driven with
:math:`X/\tau`, which is SpikingJelly's ``LIFNode(decay_input=True)`` charge; spikes fire
on :math:`U \ge \theta` with the spec's surrogate, and the hard or soft reset follows
the spike in the same step, as in SpikingJelly.
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

    State: ``mem`` ``[N, ...]`` (post-reset membrane, kept in the inner ``Leaky``), None
    before the first step.
    """

    def __init__(self, threshold: float, v_init: float = 0.5) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.v_init = float(v_init)
        self.lif = snn().Leaky(beta=1.0, threshold=self.threshold, spike_grad=spike_function("atan", 2.0),
                               reset_mechanism="none", init_hidden=True)
        self.fresh = True

    @property
    def mem(self) -> Tensor | None:
        """Post-reset membrane ``[N, ...]`` (None before the first step)."""
        return None if self.fresh else self.lif.mem

    @mem.setter
    def mem(self, value: Tensor | None) -> None:
        if value is None:
            self.reset()
        else:
            self.lif.mem, self.fresh = value, False

    def forward(self, x: Tensor) -> Tensor:
        if self.fresh:
            self.lif.mem, self.fresh = torch.full_like(x, self.v_init * self.threshold), False
        spk = self.lif(x)  # H = V + X, S = [H >= θ]; the Leaky keeps H
        out = spk * self.threshold
        self.lif.mem = self.lif.mem - out  # V = H - θS, exactly SpikingJelly's soft reset
        return out

    def reset(self) -> None:
        """Back to the initial membrane at the next step."""
        self.fresh = True
        self.lif.mem = torch.zeros(0)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold:.6g}, v_init={self.v_init}"


class LIFNeuron(nn.Module):
    """Trainable LIF on ``snn.Leaky`` that computes SpikingJelly's ``LIFNode`` update; emits ``S``.

    ``snn.Leaky(beta = 1 - 1/tau, reset_mechanism="none")`` charges with ``X / tau`` and fires
    on ``U >= θ`` with the spec's surrogate; the reset is applied right after the spike, as
    SpikingJelly does: hard ``V = U (1 - S)``, soft ``V = U - θ S`` (snnTorch's own delayed
    subtract would remove ``θ`` instead of ``β θ`` from the next step).

    State: ``mem`` ``[N, ...]`` (post-reset membrane), None before the first step.
    """

    def __init__(self, spec: LIF) -> None:
        super().__init__()
        if spec.reset == "hard" and spec.v_reset != 0.0:
            raise ValueError("the snnTorch backend resets to 0 only: use LIF(v_reset=0.0) or reset='soft'")
        self.spec = spec
        self.lif = snn().Leaky(beta=spec.beta, threshold=float(spec.threshold),
                               spike_grad=spike_function(spec.surrogate, spec.alpha),
                               reset_mechanism="none", init_hidden=False)
        self.inv_tau = 1.0 / spec.tau
        self.mem: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        mem = self.mem if self.mem is not None else torch.zeros_like(x)
        spk, h = self.lif(x * self.inv_tau, mem)
        s = spk.detach() if self.spec.detach_reset else spk
        self.mem = h * (1 - s) if self.spec.reset == "hard" else h - s * self.spec.threshold
        return spk

    def reset(self) -> None:
        """Zero membrane at the next step."""
        self.mem = None
        self.lif.mem = torch.zeros(0)

    def extra_repr(self) -> str:
        s = self.spec
        return f"tau={s.tau}, threshold={s.threshold}, reset={s.reset!r}, surrogate={s.surrogate!r}"
