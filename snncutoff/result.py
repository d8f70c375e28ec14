"""``CutoffResult``: where each sample stopped, what it predicted, and what it cost.

For a trace with ``T`` steps and a per-sample exit step :math:`e_n \\in \\{1..T\\}`
(1-based), the prediction is :math:`\\arg\\max_c O_{e_n - 1, n, c}` (first index on
ties) and the reported figures are

- ``accuracy``   = mean over n of [prediction = label]            (0 to 1)
- ``mean_steps`` = mean over n of :math:`e_n`
- ``speedup``    = ``T / mean_steps``
- with ``ops``: ``mean_ops`` = mean over n of :math:`\\sum_{t < e_n} ops_{t,n}`,
  ``mean_ops_full`` the same at :math:`e_n = T`, and ``ops_saved`` = 1 − their ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .trace import Trace
from .validation import check_steps


@dataclass(frozen=True, eq=False)
class CutoffResult:
    """Per-sample exit steps and predictions of a cutoff rule on a trace.

    Attributes:
        exit_step: ``[N]`` int64, 1-based step at which each sample stopped.
        predictions: ``[N]`` int64, argmax of the cumulative output at the exit step.
        labels: ``[N]`` int64.
        T: number of steps of the trace.
        ops_at_exit: ``[N]`` float64 cost up to and including the exit step, or None.
        ops_full: ``[N]`` float64 cost of all T steps, or None (unknown after a real early exit).
        policy: a readable name of the rule that produced it.
        wall_time_s: seconds the network ran (streaming early exit), or None.
    """

    exit_step: Tensor
    predictions: Tensor
    labels: Tensor
    T: int
    ops_at_exit: Tensor | None = None
    ops_full: Tensor | None = None
    policy: str = ""
    wall_time_s: float | None = None

    @classmethod
    def from_exit_steps(cls, trace: Trace, exit_step: Tensor, policy: str = "") -> CutoffResult:
        """Build the result for 1-based ``exit_step`` ``[N]`` on ``trace``."""
        exit_step = check_steps(exit_step, trace.N, trace.T, "exit_step").to(trace.labels.device)
        predictions = trace.predictions_at(exit_step)
        ops_at_exit = ops_full = None
        cum = trace.ops_cumulative()
        if cum is not None:
            ops_at_exit, ops_full = cum[exit_step - 1, torch.arange(trace.N, device=exit_step.device)], cum[-1]
        return cls(exit_step, predictions, trace.labels, trace.T, ops_at_exit, ops_full, policy)

    @property
    def N(self) -> int:
        """Number of samples."""
        return self.exit_step.shape[0]

    @property
    def accuracy(self) -> float:
        """Share of samples whose prediction at exit is the label (0 to 1)."""
        return float((self.predictions == self.labels).double().mean())

    @property
    def mean_steps(self) -> float:
        """Mean exit step (1 to T)."""
        return float(self.exit_step.double().mean())

    @property
    def speedup(self) -> float:
        """``T / mean_steps``: how many times fewer steps than running all T."""
        return self.T / self.mean_steps

    @property
    def mean_ops(self) -> float | None:
        """Mean cost per sample up to its exit step (None without ``ops``)."""
        return None if self.ops_at_exit is None else float(self.ops_at_exit.mean())

    @property
    def mean_ops_full(self) -> float | None:
        """Mean cost per sample over all T steps (None without ``ops``)."""
        return None if self.ops_full is None else float(self.ops_full.mean())

    @property
    def ops_saved(self) -> float | None:
        """Share of the full-T cost not spent, ``1 - mean_ops / mean_ops_full``."""
        if self.ops_full is None:
            return None
        full = self.mean_ops_full
        return 0.0 if full == 0 else 1.0 - self.mean_ops / full

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """JSON-ready summary; ``per_sample=True`` adds exit steps and predictions as lists."""
        d: dict[str, Any] = {
            "policy": self.policy,
            "T": self.T,
            "N": self.N,
            "accuracy": self.accuracy,
            "mean_steps": self.mean_steps,
            "speedup": self.speedup,
        }
        if self.ops_at_exit is not None:
            d["mean_ops"] = self.mean_ops
        if self.ops_full is not None:
            d.update(mean_ops_full=self.mean_ops_full, ops_saved=self.ops_saved)
        if self.wall_time_s is not None:
            d["wall_time_s"] = self.wall_time_s
        if per_sample:
            d.update(exit_step=self.exit_step.tolist(), predictions=self.predictions.tolist())
        return d

    def __repr__(self) -> str:
        ops = f", ops_saved={self.ops_saved:.3f}" if self.ops_full is not None else ""
        ops += f", wall={self.wall_time_s:.3f}s" if self.wall_time_s is not None else ""
        return (
            f"CutoffResult({self.policy or 'cutoff'}: accuracy={self.accuracy:.4f}, "
            f"mean_steps={self.mean_steps:.3f}, speedup={self.speedup:.3f}x{ops}, T={self.T}, N={self.N})"
        )
