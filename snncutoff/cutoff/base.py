r"""``CutoffPolicy``: the scikit-learn-style shell shared by every cutoff rule.

A policy turns cumulative outputs into a per-step score ``[T, N]`` and compares it with a
per-step threshold ``[T]``; sample n exits at the first step whose score passes (``>``
for a strict rule, ``>=`` otherwise; a NaN threshold never passes), and at step T at the
latest. ``evaluate`` (a whole trace), ``exit_now`` (one step, on-line) and ``exit_block``
(a few steps run at once) compare the same scores with the same thresholds, so they
agree sample by sample.

A subclass says what its score is and how its thresholds are set, nothing else:

- ``param``: the hyper-parameter a sweep (and :class:`~snncutoff.RiskControl`) varies;
- ``_scores(outputs, t0, states)``: ``[k, N, C]`` cumulative outputs of steps ``t0 ..`` ->
  ``[k, N]`` scores (``_trace_scores(trace)``: the same for a whole trace, from its cached
  statistics);
- ``_thresholds(calibration, values, T)``: ``[E, T]`` thresholds for E values of ``param``
  (the calibration trace is None for rules that learn nothing);
- ``risk_grid(T)``: values of ``param`` from the most conservative to the most aggressive.

Rules whose score looks back further than the current step (the argmax's run length)
set ``state_size`` and keep a per-sample state ``[N, S]`` across on-line calls
(``_state_init`` / ``_state_scan``).

``__init__`` only stores hyper-parameters; ``fit`` learns ``thresholds_`` (a subclass
names it too: ``TopKGap.beta_``, ``Conformal.quantile_``) and ``T_``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..result import CutoffResult
from ..stats import first_exit
from ..summary import TraceSummary
from ..trace import Trace
from ..validation import NotFittedError, check_finite, check_int, check_min_classes


def fitted_view(doc: str) -> property:
    """A public name for the fitted thresholds (``beta_ = fitted_view(...)``), readable and settable."""

    def get(self: CutoffPolicy) -> Tensor:
        if "thresholds_" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__} is not fitted: call fit(calibration_trace) first")
        return self.thresholds_

    def set_(self: CutoffPolicy, value: Tensor) -> None:
        self.thresholds_ = value

    return property(get, set_, doc=doc)


class CutoffPolicy:
    """Base class of every cutoff rule (see the module docstring for what a subclass implements)."""

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
    #: size S of the per-sample state ``[N, S]`` kept across on-line calls (0: none)
    state_size: ClassVar[int] = 0

    # ------------------------------------------------------------ to implement
    def _scores(self, outputs: Tensor, t0: int | Tensor = 0, states: Tensor | None = None) -> Tensor:
        """``[k, N, C]`` cumulative outputs of steps ``t0 ..`` -> ``[k, N]`` scores.

        ``t0`` may be a ``[N]`` tensor (each row's first step); ``states`` ``[k, N, S]`` are the
        per-sample states after each step (stateful rules only)."""
        raise NotImplementedError

    def _trace_scores(self, trace: Trace) -> Tensor:
        """``[T, N]`` scores of a whole trace (from its cached statistics where it has them)."""
        states = self._state_scan(self._state_init(trace.N, trace.outputs.device), trace.outputs) \
            if self.state_size else None
        return self._scores(trace.outputs, 0, states)

    def _thresholds(self, calibration: Trace | None, values: Sequence[Any], T: int | None) -> Tensor:
        """``[E, T]`` thresholds for E values of ``param`` (``T=None``, rules only: ``[E, 1]``, any step)."""
        raise NotImplementedError

    def risk_grid(self, T: int) -> list[Any]:
        """Values of ``param`` from the most conservative to the most aggressive (risk control)."""
        raise NotImplementedError

    def _state_init(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """``[n, S]`` float64 state of samples that have taken no step yet."""
        raise NotImplementedError

    def _fused_step(self, t0: int | Tensor, outputs: Tensor, state: Tensor) -> Tensor | None:
        """Optional fast path of a stateful rule for one step (``outputs`` ``[1, N, C]``): updates
        ``state`` in place and returns the scores ``[1, N]`` that :meth:`_state_scan` then
        :meth:`_scores` would give, bit for bit; None (state untouched) where it does not apply."""
        return None

    def _state_scan(self, state: Tensor, outputs: Tensor) -> Tensor:
        """``[k, N, S]`` states after each of the k steps of ``outputs`` ``[k, N, C]``, from ``state``
        (which may be updated in place to the last of them)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- shared
    def __getstate__(self) -> dict[str, Any]:
        """For pickle and ``copy``: everything but the caches (``*_cache``: rebuilt on use; one
        holds pointers for the C kernel)."""
        return {k: v for k, v in self.__dict__.items() if not k.endswith("_cache")}

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

    def initial_state(self, n: int, device: torch.device | str | None = None) -> Tensor | None:
        """The per-sample state ``[n, S]`` on-line decisions of a stateful rule start from (None if stateless).

        Pass it to every :meth:`exit_now` / :meth:`exit_block` of the same samples (it is
        updated in place) and keep its rows aligned with theirs (select the rows of samples
        that leave; a sample that joins gets a fresh row)."""
        return self._state_init(n, device) if self.state_size else None

    def _check_trace(self, trace: Trace) -> None:
        if not isinstance(trace, (Trace, TraceSummary)):
            raise TypeError(f"expected a snncutoff.Trace (or TraceSummary), got {type(trace).__name__}")
        if self.min_classes > 1:
            check_min_classes(trace.C, type(self).__name__)

    def _is_fitted(self) -> bool:
        return "T_" in self.__dict__

    def _rule_thresholds(self, T: int | None) -> Tensor:
        """``[T]`` thresholds of a rule that learns nothing, built once per (parameter, T); ``T=None``:
        ``[1]``, the one threshold of every step (on-line decisions of an unfitted rule)."""
        key = (getattr(self, self.param), T)
        cached = self.__dict__.get("_rule_cache")
        if cached is None or cached[0] != key:
            cached = self._rule_cache = (key, self._thresholds(None, [key[0]], T)[0])
        return cached[1]

    def _current_thresholds(self, T: int | None) -> Tensor:
        """``[T]`` thresholds in force: the fitted ones, or those of the rule's current parameter."""
        if self.needs_fit:
            if not self._is_fitted():
                raise NotFittedError(f"{self!r} is not fitted: call fit(calibration_trace) before evaluate / "
                                     "exit_now / exit_block")
            return self.thresholds_
        return self._rule_thresholds(T)

    def _thresholds_for(self, trace: Trace) -> Tensor:
        """``[T]`` thresholds to evaluate ``trace`` with (validating T against the fit)."""
        if self._is_fitted():
            if trace.T != self.T_:
                raise ValueError(f"{self!r} was fitted on T = {self.T_} steps but the trace has T = {trace.T}; "
                                 "fit and evaluate on traces of the same length")
            self._check_classes(trace.C)
        return self._current_thresholds(trace.T)

    def _check_classes(self, C: int) -> None:
        if self.__dict__.get("C_", C) != C:
            raise ValueError(f"{self!r} was fitted on outputs of C = {self.C_} classes, these have C = {C}")

    def _silent(self, thresholds: Tensor, dtype: torch.dtype) -> list[bool] | None:
        """Per threshold: whether no score can pass it (compared in ``dtype``), or None when the
        rule cannot tell. Cached for the thresholds tensor (the fitted one, or a rule's cached one)."""
        if not (self.strict or math.isfinite(self.score_max)):
            return None
        cached = self.__dict__.get("_silent_cache")
        key = (thresholds._version, dtype)
        if cached is None or cached[0] is not thresholds or cached[1] != key:
            t = thresholds.to(dtype)
            flags = (t >= self.score_max if self.strict else t > self.score_max) | t.isnan()
            cached = self._silent_cache = (thresholds, key, flags.reshape(-1).tolist())
        return cached[2]

    def _passes(self, scores: Tensor, thresholds: Tensor) -> Tensor:
        # in the scores' dtype, as a Python-float threshold compared with them would be
        thresholds = thresholds.to(device=scores.device, dtype=scores.dtype)
        return scores > thresholds if self.strict else scores >= thresholds

    # ------------------------------------------------------------ public API
    def fit(self, calibration: Trace) -> CutoffPolicy:
        """Learn per-step thresholds from a calibration trace (held-out data); returns self."""
        self._check_trace(calibration)
        if self.needs_fit:
            self.thresholds_ = self._thresholds(calibration, [getattr(self, self.param)], calibration.T)[0]
        else:
            self._rule_thresholds(calibration.T)  # validates the parameter against T
        self.T_, self.C_ = calibration.T, calibration.C
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
        if not outputs.is_floating_point():
            raise TypeError(f"{what}: a floating-point tensor, got dtype {outputs.dtype}")
        if dims == 3 and outputs.shape[0] == 0:
            raise ValueError(f"{what}: the block holds no step (k = 0)")
        check_finite("outputs", outputs, ("k", "n") if dims == 3 else ("n",))

    def _check_state(self, state: Tensor | None, n: int) -> None:
        if not self.state_size:
            return
        if state is None:
            raise ValueError(f"{type(self).__name__} looks back over earlier steps: pass state= (start from "
                             "policy.initial_state(N), pass the same tensor at every step; it is updated in place)")
        if not isinstance(state, Tensor) or tuple(state.shape) != (n, self.state_size):
            got = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
            raise ValueError(f"state must be the [N, S] = [{n}, {self.state_size}] tensor of "
                             f"policy.initial_state(N), got {got}")
        if state.dtype != torch.float64:
            raise TypeError(f"state must be the float64 tensor of policy.initial_state(N) (updated in place), got "
                            f"{state.dtype}")

    @torch.no_grad()
    def exit_block(self, t0: int | Tensor, outputs: Tensor, state: Tensor | None = None) -> Tensor:
        """On-line decisions after steps ``t0 .. t0 + k - 1`` (0-based) from cumulative outputs ``[k, N, C]``.

        ``t0`` is one step for the whole batch, or a ``[N]`` integer tensor giving each
        row its own first step (streams whose samples started at different times).
        Returns ``[k, N]`` bool; row j is exactly ``exit_now(t0 + j, outputs[j])`` (one
        call for a block of steps run at once). A fitted policy also returns True at its
        last step ``T_ - 1`` (the forced exit); an unfitted rule leaves that to the caller.
        ``state``: the per-sample state of a stateful rule (:meth:`initial_state`), updated
        in place to the state after the block.
        """
        self._check_step_outputs(outputs, 3, "outputs must be the cumulative outputs [k, N, C] of k steps")
        k, n = outputs.shape[:2]
        self._check_state(state, n)
        if isinstance(t0, Tensor) and t0.dim() > 0:
            if t0.is_floating_point() or t0.dtype == torch.bool:
                raise TypeError(f"t must be an int or a [N] integer tensor, got a {t0.dtype} tensor")
            t0 = t0.to(device=outputs.device, dtype=torch.long)
            if t0.shape != (n,):
                raise ValueError(f"t must be an int or a [N] = [{n}] tensor, got {tuple(t0.shape)}")
            first, last = torch.aminmax(t0) if n else (0, 0)
            lo, hi = int(first), int(last) + k - 1 if n else 0
        else:
            t0 = check_int("t", t0)
            lo, hi = t0, t0 + k - 1
        if lo < 0:
            raise ValueError(f"t must be >= 0, got {t0}")
        if self._is_fitted() and hi >= self.T_:
            raise ValueError(f"t must lie in [0, T) = [0, {self.T_}) for {self!r}, got {t0}")
        return self._exit_block(t0, outputs, state, lo, hi)

    def _exit_block(self, t0: int | Tensor, outputs: Tensor, state: Tensor | None, lo: int, hi: int) -> Tensor:
        """:meth:`exit_block` on checked arguments: finite outputs ``[k, N, C]``, ``t0`` an int
        or a ``[N]`` long tensor on their device, steps ``lo .. hi`` (the earliest and the
        latest of the block) in range. The early-exit loop, which checked them, calls this;
        in its last blocks after a refill, rows may run past a fitted rule's last step
        ``T_ - 1`` (``hi >= T_``): those steps decide as the last one (all exit)."""
        k, n = outputs.shape[:2]
        if self.min_classes > 1:
            check_min_classes(outputs.shape[-1], type(self).__name__)
        per_row = isinstance(t0, Tensor)
        fitted = self._is_fitted()
        if fitted:
            self._check_classes(outputs.shape[-1])
        thresholds = self._current_thresholds(self.T_ if fitted else None)
        if not fitted:  # a rule that learns nothing: one threshold for every step
            lo = hi = 0
        silent = self._silent(thresholds, outputs.dtype)
        quiet = silent is not None and all(silent[lo : hi + 1])  # no score can pass: nothing to compute
        states = scores = None
        if self.state_size:
            scores = None if quiet or k > 1 else self._fused_step(t0, outputs, state)
            if scores is None:
                states = self._state_scan(state, outputs)
                state.copy_(states[-1])
        steps = None  # [k, N] per-row steps
        if per_row:
            steps = t0.view(1, -1) if k == 1 else t0.view(1, -1) + torch.arange(k, device=outputs.device).view(-1, 1)
            if fitted and hi >= self.T_:  # padding after the forced exit
                steps, hi = steps.clamp(max=self.T_ - 1), self.T_ - 1
        if quiet:
            decision = torch.zeros((k, n), dtype=torch.bool, device=outputs.device)
        else:
            scores = self._scores(outputs, t0, states) if scores is None else scores
            thresholds = self._step_thresholds(thresholds, scores.dtype, scores.device)
            if fitted:
                thresholds = thresholds[steps] if per_row else thresholds[t0 : t0 + k].view(-1, 1)
            decision = scores > thresholds if self.strict else scores >= thresholds
        if fitted:  # the forced exit at the last step (whatever the score, NaN included)
            if per_row:
                return decision | (steps == self.T_ - 1) if hi == self.T_ - 1 else decision
            if t0 + k == self.T_:
                decision[-1] = True
        return decision

    def _step_thresholds(self, thresholds: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``thresholds`` as on-line decisions compare them: in the scores' ``dtype`` (as
        :meth:`_passes`) on their device. Cached for the thresholds tensor as it is now (its
        identity and version: an edit in place is seen)."""
        key = (thresholds._version, dtype, device)
        cached = self.__dict__.get("_step_cache")
        if cached is None or cached[0] is not thresholds or cached[1] != key:
            cached = self._step_cache = (thresholds, key, thresholds.to(device=device, dtype=dtype))
        return cached[2]

    @torch.no_grad()
    def exit_now(self, t: int | Tensor, outputs_t: Tensor, state: Tensor | None = None) -> Tensor:
        """On-line decision after step ``t`` (0-based) from cumulative outputs ``[N, C]``.

        ``t`` is one step for the whole batch, or a ``[N]`` integer tensor giving each
        row its own step (streams whose samples started at different times).
        Returns ``[N]`` bool. A fitted policy also returns True at its last step
        ``T_ - 1`` (the forced exit); an unfitted rule-based one leaves that to the caller.
        ``state``: as in :meth:`exit_block`.
        """
        self._check_step_outputs(outputs_t, 2, "outputs_t must be the cumulative outputs [N, C] of one step")
        return self.exit_block(t, outputs_t.unsqueeze(0), state)[0]

    def sweep(self, calibration: Trace | None, test: Trace, values: Sequence[Any]) -> list[CutoffResult]:
        """One result per value of ``param``, from the two traces only (see :func:`snncutoff.sweep`)."""
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise TypeError(f"values must be a list of {self.param} values, got {values!r}")
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
            check_same_shape(calibration, test)
        return [CutoffResult.from_exit_steps(test, e, repr(v))
                for v, e in zip(variants, self._sweep_exits(calibration, test, values))]

    def _sweep_exits(self, calibration: Trace | None, test: Trace, values: Sequence[Any]) -> Tensor:
        """``[E, N]`` exit steps on ``test`` for E values of ``param`` (thresholds from ``calibration``)."""
        thresholds = self._thresholds(calibration, values, test.T)  # [E, T]
        scores = self._trace_scores(test)  # computed once for all values
        return torch.cat([  # a few values at a time to bound memory
            first_exit(self._passes(scores, thr.unsqueeze(-1))) for thr in thresholds.split(8)
        ])


def check_same_shape(calibration: Trace, test: Trace, names: tuple[str, str] = ("calibration", "test")) -> None:
    """A calibration trace and the trace it is applied to have the same T and C."""
    if calibration.T != test.T:
        raise ValueError(f"{names[0]} has T = {calibration.T} but {names[1]} has T = {test.T}")
    if calibration.C != test.C:
        raise ValueError(f"{names[0]} has C = {calibration.C} classes but {names[1]} has C = {test.C}")


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
    if not isinstance(policy, CutoffPolicy):
        hint = f" (the class: pass an instance, {policy.__name__}())" if isinstance(policy, type) else ""
        raise TypeError(f"policy must be a cutoff rule such as snncutoff.TopKGap(), got {policy!r}{hint}")
    return policy.sweep(calibration, test, values)
