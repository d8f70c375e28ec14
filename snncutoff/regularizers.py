r"""RCS — the SNNCutoff paper's regulariser, which trains a network to settle early.

ANN form (on the constrained activations :math:`a^\ell` of each layer, ``[N, ...]``):

.. math::  R^\ell_n = \frac{\max_{m,i} a^\ell_{m,i}}{\sqrt{\operatorname{mean}_i (a^\ell_{n,i})^2 + 10^{-5}}}

(the batch maximum over the sample's RMS activation — small when activations are
spread evenly below the threshold, so the converted SNN fires steadily from the start).

SNN form (per spiking layer, spikes :math:`s_t` and membrane :math:`v_t`, ``[T, N, ...]``):

.. math::  r_t = s_t + \mathrm{relu}(v_t),\quad \bar r = \operatorname{mean}_{t \ge (1-f)T} r_t \ (\text{no gradient}),
           \quad R^\ell_n = 1 \Big/ \left(\operatorname{mean}_t \cos(r_{t,n}, \bar r_n) + 10^{-5}\right)

(each step's activity should already point where the late steps end up). Both are
averaged over the samples the network classifies correctly (for the SNN: with the mean
output over the late steps) and over layers, then weighted by ``alpha`` in the loss.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rcs_ann(activations: list[Tensor], correct: Tensor) -> Tensor:
    """ANN RCS penalty from per-layer activations ``[N, ...]`` and a ``[N]`` bool mask."""
    if not activations:
        raise ValueError("RCS needs at least one constrained activation")
    if not bool(correct.any()):
        return activations[0].sum() * 0.0
    terms = []
    for a in activations:
        a = torch.relu(a)
        rms = (a.flatten(1).pow(2).mean(1) + 1e-5).sqrt()
        terms.append((a.max() / rms)[correct].mean())
    return torch.stack(terms).mean()


def rcs_snn(spikes: list[Tensor], membranes: list[Tensor], outputs: Tensor, labels: Tensor,
            fraction: float = 0.5) -> Tensor:
    """SNN RCS penalty.

    Args:
        spikes, membranes: per spiking layer, ``[T, N, ...]`` (with their autograd graph).
        outputs: ``[T, N, C]`` per-step outputs; labels: ``[N]``.
        fraction: share of late steps whose mean activity is the reference (0 < f <= 1).
    """
    if not spikes:
        raise ValueError("RCS needs at least one spiking layer")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    T = outputs.shape[0]
    late = max(1, int(round(fraction * T)))
    correct = outputs[T - late:].detach().mean(0).argmax(-1) == labels
    if not bool(correct.any()):
        return spikes[0].sum() * 0.0
    terms = []
    for s, v in zip(spikes, membranes):
        r = (s + torch.relu(v)).flatten(2)  # [T, N, F]
        ref = r[T - late:].mean(0, keepdim=True).detach()
        cos = (r * ref).sum(-1) / ((r.pow(2).sum(-1) + 1e-5).sqrt() * (ref.pow(2).sum(-1) + 1e-5).sqrt())
        terms.append((1.0 / (cos.mean(0) + 1e-5))[correct].mean())
    return torch.stack(terms).mean()
