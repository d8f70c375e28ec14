r"""``Stability``: exit once the prediction has stopped changing.

.. math::  \text{exit at the first } t \text{ with } r_t \ge k \text{ and } g_t > g_{min}

where :math:`r_t` is the number of steps in a row, ending at t, whose cumulative output
has the argmax it has at t (``steps`` = k), and :math:`g_t` the top-1 / top-2 gap
(``min_gap``, 0 by default: any gap, ties excluded). Nothing is learned.

The run length looks back over earlier steps, so on-line decisions keep a per-sample
state (the last argmax, its run, the gap): :meth:`~snncutoff.CutoffPolicy.initial_state`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .. import _native
from ..stats import top2_gap_of_finite
from ..trace import Trace
from ..validation import check_positive_int
from .base import CutoffPolicy


class RunState:
    """Per-sample state ``[N, 4]`` float64 of the rules that look back: the argmax of the last step
    (-1 before the first), its run length, the gap of the last step and of the step before it."""

    state_size = 4

    def _state_init(self, n: int, device: torch.device | str | None = None) -> Tensor:
        state = torch.zeros(n, 4, dtype=torch.float64, device=device)
        state[:, 0] = -1.0
        return state

    def _state_scan(self, state: Tensor, outputs: Tensor) -> Tensor:
        gap, argmax = top2_gap_of_finite(outputs)
        if gap.shape[0] == 1 and _native.run_state(argmax[0], gap[0], state):  # one step, in place, in C
            return state.unsqueeze(0)
        if gap.shape[0] == 1:  # one step (the common on-line decision): a few whole-row operations
            cur = argmax[0].double()  # exact in float64, as are the run lengths
            run = torch.where(cur == state[:, 0], state[:, 1] + 1.0, 1.0)
            return torch.stack([cur, run, gap[0].double(), state[:, 2]], dim=-1).unsqueeze(0)
        states = torch.empty(*gap.shape, 4, dtype=torch.float64, device=gap.device)
        states[..., 0] = argmax
        states[..., 2] = gap
        states[0, :, 3] = state[:, 2]
        states[1:, :, 3] = states[:-1, :, 2]
        last, run = state[:, 0], state[:, 1]
        for t in range(gap.shape[0]):  # the run continues where the argmax is the last one (-1: no step yet)
            cur = states[t, :, 0]
            run = torch.where(cur == last, run + 1.0, 1.0)
            states[t, :, 1], last = run, cur
        return states

    @staticmethod
    def _trace_history(trace: Trace) -> tuple[Tensor, Tensor, Tensor]:
        """``(runs, gaps, gaps of the step before)`` ``[T, N]`` of a whole trace, as the scan gives them."""
        gaps = trace.gaps().double()
        before = torch.cat([torch.zeros_like(gaps[:1]), gaps[:-1]])
        return trace.argmax_runs().double(), gaps, before


class Stability(RunState, CutoffPolicy):
    """Exit once the argmax has held for ``steps`` steps in a row (and the gap exceeds ``min_gap``).

    Args:
        steps: run length k >= 1 (1: exit at the first step with a gap above ``min_gap``).
        min_gap: the top-1 / top-2 gap must exceed this (>= 0) as well.
    """

    param = "steps"
    strict = False  # exit when the run >= steps
    needs_fit = False

    def __init__(self, steps: int = 3, min_gap: float = 0.0) -> None:
        self.steps = check_positive_int("steps", steps)
        if isinstance(min_gap, bool) or not isinstance(min_gap, (int, float)) or not (
                math.isfinite(min_gap) and min_gap >= 0):
            raise ValueError(f"min_gap must be a finite number >= 0, got {min_gap!r}")
        self.min_gap = float(min_gap)

    def _gated(self, runs: Tensor, gaps: Tensor) -> Tensor:
        return torch.where(gaps > self.min_gap, runs, torch.zeros_like(runs))

    def _scores(self, outputs: Tensor, t0: int | Tensor = 0, states: Tensor | None = None) -> Tensor:
        return self._gated(states[..., 1], states[..., 2])

    def _trace_scores(self, trace: Trace) -> Tensor:
        runs, gaps, _ = self._trace_history(trace)
        return self._gated(runs, gaps)

    def _thresholds(self, calibration: Trace | None, values: Sequence[int], T: int | None) -> Tensor:
        steps = [check_positive_int("steps", v) for v in values]
        return torch.tensor(steps, dtype=torch.float64).view(-1, 1).expand(-1, T or 1)

    def risk_grid(self, T: int) -> list[int]:
        return list(range(T, 0, -1))
