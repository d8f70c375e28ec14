"""``CutoffPolicy``: the scikit-learn-style shell shared by every cutoff rule.

A policy turns cumulative outputs into a per-step score ``[T, N]`` and compares it
with a per-step threshold ``[T]``; sample n exits at the first step whose score
passes, and at step T at the latest. ``evaluate`` (a whole trace), ``exit_now`` (one
step, on-line) and ``exit_block`` (a few steps run at once) call the same ``_scores``
and ``_passes``, so they agree sample by sample. ``__init__`` only stores hyper-parameters; ``fit`` learns thresholds
(attributes ending in ``_``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..result import CutoffResult
from ..trace import Trace
from ..validation import NotFittedError, check_min_classes
from .functional import first_exit


class CutoffPolicy:
    """Base class. Subclasses set ``param`` and implement ``_scores`` / ``_thresholds``."""

    #: name of the hyper-parameter a sweep varies (``epsilon``, ``alpha``, ``step``)
    param: ClassVar[str]
    #: exit when ``score > threshold`` (True) or ``score >= threshold`` (False)
    strict: ClassVar[bool] = True
    #: whether thresholds are learned from a calibration trace (``fit`` required)
    needs_fit: ClassVar[bool] = True
    #: minimum number of classes the score is defined for
    min_classes: ClassVar[int] = 2
    #: the largest score the rule can produce: at a step whose threshold no score can pass
    #: (``+inf`` for a strict rule, or beyond this bound) on-line decisions skip the scores
    score_max: ClassVar[float] = math.inf

    # ------------------------------------------------------------ to implement
    def _scores(self, outputs: Tensor, t0: int | Tensor = 0) -> Tensor:
        """``[T', N, C]`` cumulative outputs of steps ``t0 ..`` -> ``[T', N]`` scores.

        ``t0`` may be a ``[N]`` tensor: the first step of each row."""
        raise NotImplementedError

    def _trace_scores(self, trace: Trace) -> Tensor:
        """``[T, N]`` scores of a whole trace (policies may cache them on the trace)."""
        return self._scores(trace.outputs)

    def _thresholds(self, calibration: Trace | None, values: Sequence[Any], T: int) -> Tensor:
        """``[E, T]`` thresholds for E values of ``param``."""
        raise NotImplementedError

    def _fitted_thresholds(self) -> Tensor:
        """``[T]`` thresholds learned by ``fit``."""
        raise NotImplementedError

    def _set_fitted(self, thresholds: Tensor) -> None:
        """Store the ``[T]`` thresholds under the policy's public ``*_`` name."""
        raise NotImplementedError

    def _rule_threshold(self) -> Tensor:
        """The step-independent threshold ``[1]`` of a rule that needs no fit (``exit_now`` unfitted)."""
        return self._rule_thresholds(1)

    def _rule_thresholds(self, T: int) -> Tensor:
        """``[T]`` thresholds of a rule that learns nothing: built once per (parameter, T),
        not at every on-line decision."""
        key = (getattr(self, self.param), T)
        cached = self.__dict__.get("_rule_cache")
        if cached is None or cached[0] != key:
            cached = self._rule_cache = (key, self._thresholds(None, [key[0]], T)[0])
        return cached[1]

    # ---------------------------------------------------------------- shared
    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters, as given to ``__init__``."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def with_param(self, value: Any) -> CutoffPolicy:
        """A new, unfitted copy with ``param`` set to ``value``."""
        return type(self)(**{**self.get_params(), self.param: value})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _check_trace(self, trace: Trace) -> None:
        if not isinstance(trace, Trace):
            raise TypeError(f"expected a snncutoff.Trace, got {type(trace).__name__}")
        if self.min_classes > 1:
            check_min_classes(trace.C, type(self).__name__)

    def _is_fitted(self) -> bool:
        return hasattr(self, "T_")

    def _thresholds_for(self, trace: Trace) -> Tensor:
        """``[T]`` thresholds to evaluate ``trace`` with (validating T against the fit)."""
        if self._is_fitted():
            if trace.T != self.T_:
                raise ValueError(
                    f"{self!r} was fitted on T = {self.T_} steps but the trace has T = {trace.T}; "
                    "fit and evaluate on traces of the same length"
                )
            return self._fitted_thresholds()
        if self.needs_fit:
            raise NotFittedError(f"{self!r} is not fitted: call fit(calibration_trace) before evaluate / exit_now")
        return self._thresholds(None, [getattr(self, self.param)], trace.T)[0]

    def _silent(self, thresholds: Tensor, dtype: torch.dtype) -> list[bool] | None:
        """Per threshold: whether no score can pass it (compared in ``dtype``), or None when the
        rule cannot tell. Cached for the thresholds tensor (the fitted one, or a rule's cached one)."""
        if not (self.strict or math.isfinite(self.score_max)):
            return None
        cached = self.__dict__.get("_silent_cache")
        if cached is None or cached[0] is not thresholds or cached[1] != dtype:
            t = thresholds.to(dtype)
            flags = t >= self.score_max if self.strict else t > self.score_max
            cached = self._silent_cache = (thresholds, dtype, flags.reshape(-1).tolist())
        return cached[2]

    def _passes(self, scores: Tensor, thresholds: Tensor) -> Tensor:
        # in the scores' dtype, as a Python-float threshold compared with them would be
        thresholds = thresholds.to(device=scores.device, dtype=scores.dtype)
        return scores > thresholds if self.strict else scores >= thresholds

    # ------------------------------------------------------------ public API
    def fit(self, calibration: Trace) -> CutoffPolicy:
        """Learn per-step thresholds from a calibration trace (training data); returns self."""
        self._check_trace(calibration)
        thresholds = self._thresholds(calibration, [getattr(self, self.param)], calibration.T)[0]
        self.T_ = calibration.T
        self._set_fitted(thresholds)
        return self

    def evaluate(self, trace: Trace) -> CutoffResult:
        """Post-hoc cutoff on a whole trace: exit steps, predictions, accuracy, cost."""
        self._check_trace(trace)
        thresholds = self._thresholds_for(trace)
        mask = self._passes(self._trace_scores(trace), thresholds.view(-1, 1))
        return CutoffResult.from_exit_steps(trace, first_exit(mask), repr(self))

    def _check_step_outputs(self, outputs: Tensor, dims: int, what: str) -> None:
        if not isinstance(outputs, Tensor) or outputs.dim() != dims:
            shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
            raise ValueError(f"{what}, got {shape}")
        if self.min_classes > 1:
            check_min_classes(outputs.shape[-1], type(self).__name__)

    def _step_thresholds(self, lo: int, hi: int, t: int | Tensor) -> Tensor | None:
        """Thresholds of steps ``t`` (all within ``[lo, hi]``); None for an unfitted rule."""
        if self._is_fitted():
            if lo < 0 or hi >= self.T_:
                raise ValueError(f"t must lie in [0, T) = [0, {self.T_}) for {self!r}, got {t}")
            return self._fitted_thresholds()
        if self.needs_fit:
            raise NotFittedError(f"{self!r} is not fitted: call fit(calibration_trace) before exit_now / exit_block")
        if lo < 0:
            raise ValueError(f"t must be >= 0, got {t}")
        return None

    @torch.no_grad()
    def exit_block(self, t0: int | Tensor, outputs: Tensor) -> Tensor:
        """On-line decisions after steps ``t0 .. t0 + k - 1`` (0-based) from cumulative outputs ``[k, N, C]``.

        ``t0`` is one step for the whole batch, or a ``[N]`` integer tensor giving each
        row its own first step (streams whose samples started at different times).
        Returns ``[k, N]`` bool; row j is exactly ``exit_now(t0 + j, outputs[j])`` (one
        call for a block of steps run at once). A fitted policy also returns True at its
        last step ``T_ - 1`` (the forced exit); an unfitted rule leaves that to the caller.
        """
        self._check_step_outputs(outputs, 3, "outputs must be the cumulative outputs [k, N, C] of k steps")
        k, n = outputs.shape[:2]
        per_row = isinstance(t0, Tensor)
        if per_row:
            t0 = t0.to(device=outputs.device, dtype=torch.long)
            if t0.shape != (n,):
                raise ValueError(f"t must be an int or a [N] = [{n}] tensor, got {tuple(t0.shape)}")
            lo, hi = (int(t0.min()), int(t0.max()) + k - 1) if n else (0, 0)
        else:
            lo, hi = t0, t0 + k - 1
        thresholds = self._step_thresholds(lo, hi, t0)  # [T] when fitted
        fitted = thresholds is not None
        if not fitted:
            thresholds, lo, hi = self._rule_threshold(), 0, 0
        steps = t0.view(1, -1) + torch.arange(k, device=outputs.device).view(-1, 1) if per_row else None  # [k, N]
        silent = self._silent(thresholds, outputs.dtype)
        if silent is not None and all(silent[lo : hi + 1]):  # no score can pass: nothing to compute
            decision = torch.zeros((k, n), dtype=torch.bool, device=outputs.device)
        else:
            if fitted:
                thresholds = thresholds.to(outputs.device)
                thresholds = thresholds[steps] if per_row else thresholds[t0 : t0 + k].view(-1, 1)
            decision = self._passes(self._scores(outputs, t0), thresholds)
        if fitted:  # the forced exit at the last step
            if per_row:
                return decision | (steps == self.T_ - 1)
            if t0 + k == self.T_:
                decision[-1] = True
        return decision

    @torch.no_grad()
    def exit_now(self, t: int | Tensor, outputs_t: Tensor) -> Tensor:
        """On-line decision after step ``t`` (0-based) from cumulative outputs ``[N, C]``.

        ``t`` is one step for the whole batch, or a ``[N]`` integer tensor giving each
        row its own step (streams whose samples started at different times).
        Returns ``[N]`` bool. A fitted policy also returns True at its last step
        ``T_ - 1`` (the forced exit); an unfitted rule-based one leaves that to the caller.
        """
        self._check_step_outputs(outputs_t, 2, "outputs_t must be the cumulative outputs [N, C] of one step")
        return self.exit_block(t, outputs_t.unsqueeze(0))[0]

    def sweep(self, calibration: Trace | None, test: Trace, values: Sequence[Any]) -> list[CutoffResult]:
        """One result per value of ``param``, from the two traces only (see :func:`snncutoff.sweep`)."""
        values = list(values)
        if not values:
            raise ValueError(f"values must list at least one {self.param}")
        # construct each variant once: this validates every value before any work
        variants = [self.with_param(v) for v in values]
        self._check_trace(test)
        if self.needs_fit:
            if calibration is None:
                raise ValueError(f"{type(self).__name__} learns from a calibration trace; pass calibration=")
            self._check_trace(calibration)
            if calibration.T != test.T:
                raise ValueError(f"calibration has T = {calibration.T} but test has T = {test.T}")
        thresholds = self._thresholds(calibration, values, test.T)  # [E, T]
        scores = self._trace_scores(test)  # computed once for all values
        exits = torch.cat([  # [E, N], a few values at a time to bound memory
            first_exit(self._passes(scores, thr.unsqueeze(-1))) for thr in thresholds.split(8)
        ])
        return [CutoffResult.from_exit_steps(test, e, repr(v)) for v, e in zip(variants, exits)]


def sweep(
    policy: CutoffPolicy, calibration: Trace | None, test: Trace, values: Sequence[Any]
) -> list[CutoffResult]:
    """Evaluate ``policy`` for each value of its hyper-parameter (epsilon, alpha or step).

    Uses the traces only, never the network: the test scores are computed once, and the
    calibration statistics (sorted gaps or scores) once for all values.

    Args:
        policy: e.g. ``TopKGap(search="exact")``; its own epsilon is ignored.
        calibration: trace to fit thresholds on (None for ``Timestep`` / ``Confidence``).
        test: trace to evaluate on (same T).
        values: the epsilons (``TopKGap``, ``Confidence``), alphas (``Conformal``) or steps.
    Returns:
        one :class:`CutoffResult` per value, in order.
    """
    return policy.sweep(calibration, test, values)
