"""Cutoff policies: decide, per sample and step, whether an SNN may stop.

Every rule shares one interface (:class:`CutoffPolicy`): ``fit(calibration_trace)``,
``evaluate(trace)``, ``exit_now(t, outputs_t)`` / ``exit_block(t0, outputs)`` (on-line);
:func:`sweep` evaluates many values of its parameter from traces.

- ``Timestep``: a fixed step; ``TopKGap``: the SNNCutoff paper's top-1 / top-2 gap;
  ``Confidence``: SEENN's max softmax; ``Entropy``: DT-SNN's normalised entropy;
  ``Conformal``: SpikeCP's prediction sets; ``Stability``: the argmax unchanged for k steps;
  ``LearnedExit``: a logistic model of the output's history;
- ``RiskControl``: wraps any of them and certifies, with Learn then Test, that the loss on
  new data exceeds ``max_loss`` with probability at most ``delta``.

The threshold searches live in :mod:`snncutoff.cutoff.functional`, the statistics they
read in :mod:`snncutoff.stats`.
"""

from .base import CutoffPolicy, sweep
from .confidence import Confidence
from .conformal import Conformal
from .entropy import Entropy
from .learned import LearnedExit
from .risk import NotCertifiedWarning, RiskControl
from .stability import Stability
from .timestep import Timestep
from .topk import TopKGap

#: the rules by name (what ``snncutoff-bench --policies`` takes); :func:`register` adds one
RULES: dict[str, type[CutoffPolicy]] = {
    "timestep": Timestep, "topk": TopKGap, "confidence": Confidence, "entropy": Entropy,
    "conformal": Conformal, "stability": Stability, "learned": LearnedExit,
}


def register(name: str, rule: type[CutoffPolicy], replace: bool = False) -> None:
    """Make a rule class available by ``name`` (it must construct with default arguments); a name
    already taken (a built-in rule's too) is replaced only with ``replace=True``."""
    if not (isinstance(rule, type) and issubclass(rule, CutoffPolicy)):
        raise TypeError(f"rule must be a CutoffPolicy subclass, got {rule!r}")
    if not isinstance(name, str) or not name:
        raise TypeError(f"a rule is registered under a non-empty string, got {name!r}")
    if name in RULES and RULES[name] is not rule and not replace:
        raise ValueError(f"a rule named {name!r} exists ({RULES[name].__name__}); pick another name, or pass "
                         "replace=True to replace it")
    RULES[name] = rule


def rule(name: str, **params) -> CutoffPolicy:
    """A new rule by name (``rule("topk", epsilon=0.01)``); the message lists the names when unknown."""
    if name not in RULES:
        raise ValueError(f"unknown cutoff rule {name!r}; choose one of {', '.join(RULES)}")
    return RULES[name](**params)


__all__ = ["RULES", "Confidence", "Conformal", "CutoffPolicy", "Entropy", "LearnedExit", "NotCertifiedWarning",
           "RiskControl", "Stability", "Timestep", "TopKGap", "register", "rule", "sweep"]
