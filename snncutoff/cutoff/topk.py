r"""``TopKGap``: the SNNCutoff paper's policy — exit once the top-1 / top-2 gap is large.

Score: :math:`g_{t,n} = O_{t,n,c_1} - O_{t,n,c_2}` (largest minus second largest
cumulative output). Exit at the first t with :math:`g_{t,n} > \beta_t` (strict).

Calibration on a trace of training data: for each step t, :math:`\beta_t` is the
smallest threshold such that, among calibration samples with :math:`g_t > \beta_t`,
the share already stably correct (OCT :math:`\le t + 1`) is at least
:math:`1 - \epsilon` (DESIGN.md, "Meaning of the numbers"). Two searches:

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

from .. import _native
from ..trace import Trace
from ..validation import check_choice, check_positive_int, check_unit_interval
from .base import CutoffPolicy
from .functional import (
    exact_gap_thresholds,
    grid_gap_thresholds,
    optimal_cutoff_steps,
    softmax_argmax,
    stable_correct,
    top2_gap,
)


def _trace_top2(trace: Trace) -> tuple[Tensor, Tensor]:
    """``(gap, argmax)`` ``[T, N]`` of a trace, computed once and kept with it.

    A trace's outputs are validated finite, so the compiled one-pass kernel applies
    where it was built (same values as :func:`top2_gap`)."""

    def compute() -> tuple[Tensor, Tensor]:
        native = _native.top2_gap(trace.outputs)
        return native if native is not None else top2_gap(trace.outputs)

    gap, argmax = trace.cached("top2_gap", compute)
    trace.cached("predictions", lambda: argmax)  # the same argmax, for free
    return gap, argmax


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

    def __init__(self, epsilon: float = 0.0, search: str = "exact", bins: int = 100) -> None:
        self.epsilon = check_unit_interval("epsilon", epsilon)
        self.search = check_choice("search", search, ("exact", "grid"))
        self.bins = check_positive_int("bins", bins)

    def _scores(self, outputs: Tensor, t0: int = 0) -> Tensor:
        return top2_gap(outputs)[0]

    def _trace_scores(self, trace: Trace) -> Tensor:
        return _trace_top2(trace)[0]

    def _thresholds(self, calibration: Trace | None, values: Sequence[float], T: int) -> Tensor:
        epsilons = [check_unit_interval("epsilon", v) for v in values]
        gaps, argmax = _trace_top2(calibration)
        if self.search == "exact":
            oct_steps = optimal_cutoff_steps(argmax == calibration.labels)  # [N], 1-based
            steps = torch.arange(1, T + 1, device=gaps.device).view(-1, 1)
            return exact_gap_thresholds(gaps, steps >= oct_steps, epsilons)
        settled = stable_correct(softmax_argmax(calibration.outputs) == calibration.labels)
        return grid_gap_thresholds(gaps, settled, epsilons, self.bins)

    def _fitted_thresholds(self) -> Tensor:
        return self.beta_

    def _set_fitted(self, thresholds: Tensor) -> None:
        self.beta_ = thresholds
