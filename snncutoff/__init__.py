"""snncutoff: how early may a spiking neural network stop?

The core is backend-agnostic (torch and numpy only):

- :class:`Trace` — cumulative outputs ``[T, N, C]`` of an SNN on labelled data;
- :func:`optimal_cutoff` — the oracle Optimal Cutoff Timestep (OCT) per sample;
- :mod:`snncutoff.cutoff` — run-time policies (``Timestep``, ``TopKGap``,
  ``Confidence``, ``Entropy``, ``Conformal``, ``Stability``, ``LearnedExit``) with
  ``fit`` / ``evaluate`` / ``exit_now``, and ``RiskControl``, which certifies any of them;
- :func:`sweep` — many epsilons or alphas from the same traces.

Framework adapters (SpikingJelly, snnTorch) are found through :mod:`snncutoff.backends`;
:func:`collect_trace` runs a converted or user-written SNN into a trace.
"""

from . import backends, constraints
from .collect import collect_trace, encode
from .convert import ConversionError
from .cutoff import (
    Confidence,
    Conformal,
    CutoffPolicy,
    Entropy,
    LearnedExit,
    NotCertifiedWarning,
    RiskControl,
    Stability,
    Timestep,
    TopKGap,
    sweep,
)
from .early_exit import ExitEvent, early_exit, early_exit_loader, stream_early_exit
from .oct import optimal_cutoff
from .result import CutoffResult
from .spec import IF, LIF
from .trace import Trace
from .validation import NotFittedError

__version__ = "0.1.0"

__all__ = [
    "IF",
    "LIF",
    "ConversionError",
    "backends",
    "collect_trace",
    "constraints",
    "encode",
    "ExitEvent",
    "early_exit",
    "early_exit_loader",
    "stream_early_exit",
    "Confidence",
    "Conformal",
    "CutoffPolicy",
    "Entropy",
    "LearnedExit",
    "NotCertifiedWarning",
    "RiskControl",
    "Stability",
    "CutoffResult",
    "NotFittedError",
    "Timestep",
    "TopKGap",
    "Trace",
    "optimal_cutoff",
    "sweep",
]
