r"""RCS — the SNNCutoff paper's regulariser, which trains a network to settle early.

As the SNNCutoff code computes it (``regularizer/rcs_ann.py``, ``rcs_snn.py`` and their
losses), so the same inputs give the same penalty.

ANN form (on the input :math:`x^\ell` of each constraint activation, before its clip and
floor, ``[N, ...]``; :math:`a = \mathrm{relu}(x)`):

.. math::  R^\ell_n = \max_{m,i} a^\ell_{m,i} \Big/ \left(\operatorname{mean}_i (a^\ell_{n,i})^2 + 10^{-5}\right)^{1/2}

(the batch maximum over the sample's RMS activation — small when activations are
spread evenly below the threshold, so the converted SNN fires steadily from the start).

SNN form (per spiking layer, spikes :math:`s_t` and membrane :math:`v_t` in units of the
layer's threshold :math:`\theta`, ``[T, N, ...]``; the late window is the last
:math:`k = \lfloor f T \rfloor` steps, all T when :math:`k = 0`):

.. math::  r_t = s_t + \mathrm{relu}(v_t / \theta),\quad \bar r = \operatorname{mean}_{t > T - k} r_t
           \ (\text{no gradient}),\\
           R^\ell_n = 1 \Big/ \left(\operatorname{mean}_t \cos(r_{t,n}, \bar r_n) + 10^{-5}\right)

(each step's activity should already point where the late steps end up; the norms in the
cosine carry :math:`+10^{-5}` under the root). The penalty of a layer is the largest
:math:`R^\ell_n` among the samples classified correctly (ANN: by its output; SNN: right at
every step of the late window), 0 when there is none; the penalty is the mean over layers,
weighted by ``alpha`` in the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _dims(x: Tensor, first: int) -> list[int]:
    """Every dimension of ``x`` from ``first`` on (a sample's features)."""
    return list(range(first, x.dim()))


def rcs_ann(activations: list[Tensor], correct: Tensor) -> Tensor:
    """ANN RCS penalty from each constraint's input ``[N, ...]`` and a ``[N]`` bool mask of the
    correctly classified samples: per layer the largest :math:`R_n` among them, then the mean."""
    if not activations:
        raise ValueError("RCS needs at least one constrained activation")
    terms = []
    for x in activations:
        a = torch.relu(x)
        sigma = (a.pow(2).mean(dim=_dims(a, 1)) + 1e-5) ** 0.5  # [N] (torch: no dimension left = all of them)
        terms.append((a.max() / sigma * correct.to(a.dtype)).max())
    return torch.stack(terms).mean()


def rcs_snn(spikes: list[Tensor], membranes: list[Tensor], outputs: Tensor, labels: Tensor,
            fraction: float = 0.3, thresholds: Sequence[float | Tensor] | None = None) -> Tensor:
    """SNN RCS penalty.

    Args:
        spikes, membranes: per spiking layer, ``[T, N, ...]`` (with their autograd graph).
        outputs: ``[T, N, C]`` per-step outputs; labels: ``[N]``.
        fraction: the late window, the last ``int(fraction * T)`` steps (all T when that is
            0), which gives the reference activity and decides which samples are correct
            (0 < f <= 1; the SNNCutoff code's 0.3 by default).
        thresholds: each layer's firing threshold (the membranes are divided by it); 1 by default.
    """
    if not spikes:
        raise ValueError("RCS needs at least one spiking layer")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    T = outputs.shape[0]
    start = T - int(T * fraction) if int(T * fraction) else 0
    correct = (outputs[start:].detach().argmax(-1) == labels).all(0)
    terms = []
    for k, (s, v) in enumerate(zip(spikes, membranes)):
        if thresholds is not None:
            v = v / thresholds[k]
        r = s + torch.relu(v)
        dims = _dims(r, 2)
        ref = r[start:].mean(0, keepdim=True).detach()
        cos = (r * ref).sum(dim=dims) / ((r.pow(2).sum(dim=dims) + 1e-5) ** 0.5 * (ref.pow(2).sum(dim=dims) + 1e-5)
                                         ** 0.5)
        terms.append((1.0 / (cos.mean(0) + 1e-5) * correct.to(cos.dtype)).max())
    return torch.stack(terms).mean()
