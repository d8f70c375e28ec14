r"""``Conformal``: SpikeCP — exit once the conformal prediction set is small enough.

Nonconformity of label c at step t: :math:`s_{t,c} = -\log(\operatorname{softmax}(O_t)_c + 10^{-5})`.
Calibration: per step, the threshold :math:`q_t` is a quantile at level
:math:`1 - \alpha` of the true-label scores of the calibration samples. Exit at the
first t whose prediction set :math:`\Gamma_t` holds at most k labels (``max_set_size``;
an empty set exits, predicting the argmax), computed as a comparison of the (k+1)-th
smallest :math:`s_{t,c}` with :math:`q_t`. Two variants (``quantile``, see
:func:`snncutoff.cutoff.functional.conformal_thresholds`):

- ``"split"`` (default), textbook split conformal: :math:`q_t` the
  :math:`\lceil (1-\alpha)(N+1) \rceil`-th smallest score and
  :math:`\Gamma_t = \{c : s_{t,c} \le q_t\}`, the set whose coverage
  :math:`P(y \in \Gamma_t) \ge 1 - \alpha` holds for exchangeable samples, ties included;
  exit when the (k+1)-th smallest score is :math:`> q_t`. A step where every output is
  tied (no output spike yet) gives a set of every label, so nobody exits there.
- ``"snncutoff"``: the SNNCutoff code, bit for bit: its quantile and its strict set
  :math:`\Gamma_t = \{c : s_{t,c} < q_t\}` (exit when the (k+1)-th smallest score is
  :math:`\ge q_t`). With tied scores that set can be empty, and then every sample exits:
  on spike-count outputs with no spike at step 1 they all leave at step 1, predicting
  class 0. Use it to reproduce that code's numbers, not for a guarantee.

``correction="bonferroni"`` calibrates each step at :math:`\alpha / T`, the SpikeCP
paper's guarantee over all steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from ..stats import kth_nonconformity
from ..trace import Trace
from ..validation import check_choice, check_positive_int, check_unit_interval
from .base import CutoffPolicy, fitted_view
from .functional import conformal_thresholds

#: alphas risk control tries, from the most conservative on
ALPHA_GRID = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)


class Conformal(CutoffPolicy):
    """SpikeCP conformal cutoff with per-step thresholds ``quantile_`` ``[T]``.

    Args:
        alpha: miscoverage level in [0, 1) (per step, or over all steps with Bonferroni).
        max_set_size: exit when the prediction set holds at most this many labels (>= 1).
        quantile: ``"split"`` (default: textbook quantile and set ``s <= q``, with its coverage
            guarantee) or ``"snncutoff"`` (the SNNCutoff code bit for bit: its quantile and its
            strict set ``s < q``, empty when the scores tie).
        correction: ``"none"`` or ``"bonferroni"`` (alpha / T per step).

    Attributes:
        quantile_: ``[T]`` float nonconformity thresholds (``+inf``: the set is every label;
            ``-inf`` with ``quantile="split"`` when ``max_set_size >= C``: any set qualifies).
        T_: number of steps of the calibration trace.
    """

    param = "alpha"
    quantile_ = fitted_view("``[T]`` nonconformity thresholds learned by ``fit`` (``+inf``: every label).")

    def __init__(
        self, alpha: float = 0.1, max_set_size: int = 1, quantile: str = "split", correction: str = "none"
    ) -> None:
        self.alpha = check_unit_interval("alpha", alpha)
        self.max_set_size = check_positive_int("max_set_size", max_set_size)
        self.quantile = check_choice("quantile", quantile, ("split", "snncutoff"))
        self.correction = check_choice("correction", correction, ("none", "bonferroni"))

    @property
    def strict(self) -> bool:
        """|{c : s_c <= q}| <= k  iff  s_(k+1) > q (split); |{c : s_c < q}| <= k  iff  s_(k+1) >= q (snncutoff)."""
        return self.quantile == "split"

    def _scores(self, outputs: Tensor, t0: int | Tensor = 0, states: Tensor | None = None) -> Tensor:
        return kth_nonconformity(outputs, self.max_set_size + 1)

    def _trace_scores(self, trace: Trace) -> Tensor:
        return trace.kth_nonconformity(self.max_set_size + 1)

    def _thresholds(self, calibration: Trace | None, values: Sequence[float], T: int) -> Tensor:
        alphas = [check_unit_interval("alpha", v) for v in values]
        if self.correction == "bonferroni":
            alphas = [a / T for a in alphas]
        thresholds = conformal_thresholds(calibration.label_nonconformity(), alphas, self.quantile)
        if self.strict and self.max_set_size >= calibration.C:  # a set never exceeds C labels: every step
            thresholds.fill_(-math.inf)  # lets samples exit (s_(k+1) = +inf > -inf; the reference's +inf >= q holds)
        return thresholds

    def risk_grid(self, T: int) -> list[float]:
        return list(ALPHA_GRID)
