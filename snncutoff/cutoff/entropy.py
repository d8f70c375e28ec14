r"""``Entropy``: DT-SNN's rule — exit once the output distribution is sharp enough.

.. math::  \text{exit at the first } t \text{ with }
           1 - \frac{H(\operatorname{softmax}(O_t))}{\log C} > 1 - \epsilon,
           \qquad H(p) = -\sum_c p_c \log p_c

i.e. once the normalised entropy of the softmax of the cumulative output falls below
:math:`\epsilon` (strict), computed in the outputs' dtype. This is the rule of DT-SNN
(Li et al., DAC 2023), whose code scores ``1 - entropy / log C`` of the softmax of the
summed outputs against a threshold :math:`1 - \epsilon`. Nothing is learned.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..stats import normalized_entropy
from ..trace import Trace
from ..validation import check_unit_interval
from .base import CutoffPolicy
from .confidence import level_thresholds

#: epsilons risk control tries, from the most conservative on (log-spaced)
EPSILON_GRID = tuple(float(f"{10 ** (-6 + i / 4):.3g}") for i in range(24)) + (0.5, 0.7)


class Entropy(CutoffPolicy):
    """Exit when the normalised entropy of the softmax falls below ``epsilon``.

    Args:
        epsilon: in [0, 1). With 0 no sample exits before T (an entropy is never negative);
            larger values exit earlier.
    """

    param = "epsilon"
    needs_fit = False
    score_max = 1.0  # 1 - normalised entropy <= 1: epsilon = 0 never exits

    def __init__(self, epsilon: float = 0.0) -> None:
        self.epsilon = check_unit_interval("epsilon", epsilon)

    def _scores(self, outputs: Tensor, t0: int | Tensor = 0, states: Tensor | None = None) -> Tensor:
        return 1.0 - normalized_entropy(outputs)

    def _trace_scores(self, trace: Trace) -> Tensor:
        return 1.0 - trace.normalized_entropy()

    def _thresholds(self, calibration: Trace | None, values: Sequence[float], T: int | None) -> Tensor:
        return level_thresholds(values, T)

    def risk_grid(self, T: int) -> list[float]:
        return list(EPSILON_GRID)
