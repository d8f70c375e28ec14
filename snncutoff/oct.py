r"""Optimal Cutoff Timestep (OCT): the oracle earliest step a sample could stop at.

.. math::  \mathrm{OCT}_n = \min \{ t \in 1..T : \hat y_{\tau,n} = y_n \ \forall \tau \in t..T \},
           \qquad \mathrm{OCT}_n = T \text{ if } \hat y_{T,n} \ne y_n

with :math:`\hat y_{t,n}` the argmax of the cumulative output after t steps.
Accuracy under OCT equals accuracy at T by construction; the mean OCT is the reference
every rule's mean exit step is read against (``over_oct``). It is not a strict lower
bound: a rule may stop a sample at a correct step before its prediction wavers and comes
back (OCT waits for the last change), or stop a sample that is wrong at T at any step,
and lose nothing against all T steps.
"""

from __future__ import annotations

from .result import CutoffResult
from .summary import TraceSummary
from .trace import Trace


def optimal_cutoff(trace: Trace) -> CutoffResult:
    """OCT of every sample of ``trace`` as a :class:`CutoffResult` (1-based ``exit_step``).

    Example:
        >>> import torch
        >>> from snncutoff import Trace
        >>> y = torch.tensor([[[0., 1.]], [[2., 0.]], [[1., 0.]]])   # per step, T=3, N=1
        >>> optimal_cutoff(Trace.from_steps(y, torch.tensor([0]))).exit_step.tolist()
        [2]
    """
    if not isinstance(trace, (Trace, TraceSummary)):
        raise TypeError(f"expected a snncutoff.Trace (or TraceSummary), got {type(trace).__name__}")
    return CutoffResult.from_exit_steps(trace, trace.oct_steps(), "OCT")
