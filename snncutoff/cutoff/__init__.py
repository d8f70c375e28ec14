"""Cutoff policies: decide, per sample and step, whether an SNN may stop.

``Timestep``, ``TopKGap``, ``Confidence``, ``Conformal`` share one interface
(:class:`CutoffPolicy`): ``fit(calibration_trace)``, ``evaluate(trace)``,
``exit_now(t, outputs_t)`` / ``exit_block(t0, outputs)`` (on-line); :func:`sweep` evaluates
many epsilons / alphas from traces.
The tensor maths lives in :mod:`snncutoff.cutoff.functional`.
"""

from .base import CutoffPolicy, sweep
from .confidence import Confidence
from .conformal import Conformal
from .timestep import Timestep
from .topk import TopKGap

__all__ = ["Confidence", "Conformal", "CutoffPolicy", "Timestep", "TopKGap", "sweep"]
