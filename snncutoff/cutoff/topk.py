r"""``TopKGap``: the SNNCutoff paper's policy — exit once the top-1 / top-2 gap is large.

Score: :math:`g_{t,n} = O_{t,n,c_1} - O_{t,n,c_2}` (largest minus second largest
cumulative output). Exit at the first t with :math:`g_{t,n} > \beta_t` (strict).

Calibration on a held-out trace: for each step t, :math:`\beta_t` is the smallest
threshold such that, among calibration samples with :math:`g_t > \beta_t`, the share
already stably correct (OCT :math:`\le t + 1`) is at least :math:`1 - \epsilon`
(DESIGN.md, "Meaning of the numbers"). Two searches:

- ``search="exact"`` (default): over the observed gaps, all at once (sort +
  cumulative counts). A step where no observed gap meets the constraint gets
  :math:`\beta_t = +\infty` and never triggers an exit.
- ``search="grid"``: the SNNCutoff code's 100-bin grid over ``[0, max gap]``,
  reproduced bit for bit (see :func:`snncutoff.cutoff.functional.grid_gap_thresholds`):
  there "stably correct" is judged on the argmax of the softmax, with no forcing at T.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..stats import stable_correct, top2_gap_of_finite
from ..trace import Trace
from ..validation import check_choice, check_positive_int, check_unit_interval
from .base import CutoffPolicy, fitted_view
from .functional import exact_gap_thresholds, grid_gap_thresholds

#: epsilons risk control tries, from the most conservative on
EPSILON_GRID = (0.0, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                0.15, 0.2, 0.3, 0.5)


def exact_thresholds(scores: Tensor, calibration: Trace, epsilons: Sequence[float]) -> Tensor:
    """``[E, T]`` smallest per-step score thresholds whose exits are stably correct for a share ``1 - eps``."""
    steps = torch.arange(1, calibration.T + 1, device=scores.device).view(-1, 1)
    return exact_gap_thresholds(scores, steps >= calibration.oct_steps(), epsilons)


class TopKGap(CutoffPolicy):
    """Top-1 minus top-2 gap policy with per-step thresholds ``beta_`` ``[T]``.

    Args:
        epsilon: in [0, 1): tolerated share of calibration exits that are not yet stably
            correct. 0 loses no accuracy on the calibration trace itself.
        search: ``"exact"`` (over observed gaps) or ``"grid"`` (SNNCutoff's grid).
        bins: grid size for ``search="grid"`` (the SNNCutoff default, 100).

    Attributes:
        beta_: ``[T]`` float thresholds (``+inf`` where no exit is allowed).
        T_: number of steps of the calibration trace.

    Example:
        >>> policy = TopKGap(epsilon=0.01).fit(calibration_trace)   # doctest: +SKIP
        >>> policy.evaluate(test_trace).speedup                        # doctest: +SKIP
    """

    param = "epsilon"
    beta_ = fitted_view("``[T]`` gap thresholds learned by ``fit`` (``+inf``: no exit at that step).")

    def __init__(self, epsilon: float = 0.0, search: str = "exact", bins: int = 100) -> None:
        self.epsilon = check_unit_interval("epsilon", epsilon)
        self.search = check_choice("search", search, ("exact", "grid"))
        self.bins = check_positive_int("bins", bins)

    def _scores(self, outputs: Tensor, t0: int | Tensor = 0, states: Tensor | None = None) -> Tensor:
        return top2_gap_of_finite(outputs)[0]

    def _trace_scores(self, trace: Trace) -> Tensor:
        return trace.gaps()

    def _thresholds(self, calibration: Trace | None, values: Sequence[float], T: int) -> Tensor:
        epsilons = [check_unit_interval("epsilon", v) for v in values]
        if self.search == "exact":
            return exact_thresholds(calibration.gaps(), calibration, epsilons)
        settled = stable_correct(calibration.softmax_argmax() == calibration.labels)
        return grid_gap_thresholds(calibration.gaps(), settled, epsilons, self.bins)

    def risk_grid(self, T: int) -> list[float]:
        return list(EPSILON_GRID)
