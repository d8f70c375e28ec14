r"""``Timestep``: every sample stops at the same fixed step.

.. math::  \text{exit}_n = s \quad \text{for all } n, \qquad 1 \le s \le T

The baseline every adaptive policy is compared with: ``Timestep(T)`` is the full run
(speed-up 1), ``Timestep(s)`` the plain "run fewer steps" alternative.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..trace import Trace
from ..validation import check_positive_int
from .base import CutoffPolicy


class Timestep(CutoffPolicy):
    """Exit every sample at step ``step`` (1-based).

    Args:
        step: the exit step, ``1 <= step <= T`` (checked against the trace's T).

    Example:
        >>> Timestep(4).evaluate(trace).mean_steps      # doctest: +SKIP
        4.0
    """

    param = "step"
    strict = False  # exit when t + 1 >= step
    needs_fit = False
    min_classes = 1

    def __init__(self, step: int = 1) -> None:
        self.step = check_positive_int("step", step)

    def _scores(self, outputs: Tensor, t0: int | Tensor = 0, states: Tensor | None = None) -> Tensor:
        T, N = outputs.shape[:2]
        offset = torch.arange(1, T + 1, device=outputs.device).view(-1, 1)
        if isinstance(t0, Tensor):  # each row from its own first step
            return (t0.to(outputs.device).view(1, -1) + offset).to(torch.float32)
        return (offset + t0).to(torch.float32).expand(T, N)

    def _trace_scores(self, trace: Trace) -> Tensor:
        return torch.arange(1, trace.T + 1, dtype=torch.float32).view(-1, 1).expand(trace.T, trace.N)

    def _thresholds(self, calibration: Trace | None, values: Sequence[int], T: int | None) -> Tensor:
        for v in values:
            check_positive_int("step", v)
            if T is not None and v > T:
                raise ValueError(f"step must be <= T = {T}, got {v}")
        return torch.tensor([float(v) for v in values], dtype=torch.float32).view(-1, 1).expand(-1, T or 1)

    def risk_grid(self, T: int) -> list[int]:
        return list(range(T, 0, -1))
