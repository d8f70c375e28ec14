r"""``Confidence``: exit once the softmax of the cumulative output is confident enough.

.. math::  \text{exit at the first } t \text{ with } \max_c \operatorname{softmax}(O_t)_c > 1 - \epsilon

computed in the outputs' dtype (float32 for traces collected by snncutoff) with a strict
comparison, as the SNNCutoff code (and SEENN-I) does; nothing is learned from
calibration data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..stats import max_softmax
from ..trace import Trace
from ..validation import check_unit_interval
from .base import CutoffPolicy

#: epsilons risk control tries, from the most conservative on (log-spaced)
EPSILON_GRID = tuple(float(f"{10 ** (-7 + i / 4):.3g}") for i in range(26)) + (0.5,)


def level_thresholds(values: Sequence[float], T: int | None, name: str = "epsilon") -> Tensor:
    """``[E, T]`` float64 thresholds ``1 - value`` (rounded to the scores' dtype when compared)."""
    levels = [1.0 - check_unit_interval(name, v) for v in values]
    return torch.tensor(levels, dtype=torch.float64).view(-1, 1).expand(-1, T or 1)


class Confidence(CutoffPolicy):
    """Exit when the top softmax probability exceeds ``1 - epsilon``.

    Args:
        epsilon: in [0, 1). With 0 no sample exits before T (a softmax never exceeds 1);
            larger values exit earlier.
    """

    param = "epsilon"
    needs_fit = False
    score_max = 1.0  # a softmax probability: 1 - epsilon >= 1 (epsilon = 0) never exits

    def __init__(self, epsilon: float = 0.0) -> None:
        self.epsilon = check_unit_interval("epsilon", epsilon)

    def _scores(self, outputs: Tensor, t0: int | Tensor = 0, states: Tensor | None = None) -> Tensor:
        return max_softmax(outputs)

    def _trace_scores(self, trace: Trace) -> Tensor:
        return trace.max_softmax()

    def _thresholds(self, calibration: Trace | None, values: Sequence[float], T: int | None) -> Tensor:
        return level_thresholds(values, T)

    def risk_grid(self, T: int) -> list[float]:
        return list(EPSILON_GRID)
