r"""``Confidence``: exit once the softmax of the cumulative output is confident enough.

.. math::  \text{exit at the first } t \text{ with } \max_c \operatorname{softmax}(O_t)_c > 1 - \epsilon

computed in the outputs' dtype (float32 for traces collected by snncutoff) with a strict
comparison, as the SNNCutoff code does; nothing is learned from calibration data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..trace import Trace
from ..validation import check_unit_interval
from .base import CutoffPolicy
from .functional import max_softmax


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

    def _scores(self, outputs: Tensor, t0: int = 0) -> Tensor:
        return max_softmax(outputs)

    def _trace_scores(self, trace: Trace) -> Tensor:
        return trace.cached("max_softmax", lambda: max_softmax(trace.outputs))

    def _thresholds(self, calibration: Trace | None, values: Sequence[float], T: int) -> Tensor:
        levels = [1.0 - check_unit_interval("epsilon", v) for v in values]
        # float64 here; rounded to the scores' dtype when compared (see CutoffPolicy._passes)
        return torch.tensor(levels, dtype=torch.float64).view(-1, 1).expand(-1, T)

    def _fitted_thresholds(self) -> Tensor:
        return self._rule_thresholds(self.T_)

    def _set_fitted(self, thresholds: Tensor) -> None:
        pass  # nothing is learned; fit only records T_
