r"""``RiskControl``: calibrate any one-parameter cutoff rule with a guarantee (Learn then Test).

A rule whose thresholds are indexed by one scalar :math:`\lambda` (``TopKGap``'s
:math:`\epsilon`, ``Confidence``'s :math:`\epsilon`, ``Conformal``'s :math:`\alpha`,
``Stability``'s run length, ``LearnedExit``'s :math:`\epsilon` ...) is tried at the values
of a grid fixed in advance, ordered from the most conservative to the most aggressive
(``policy.risk_grid(T)``). On held-out calibration samples, for each value in that order,
the null hypothesis :math:`H_\lambda: R(\lambda) > \alpha` (``max_loss``) is tested with
a valid p-value; testing stops at the first value not rejected at level :math:`\delta`,
and the last rejected value is kept (fixed-sequence testing, Angelopoulos et al. 2021,
"Learn then Test"). Guarantee, for test samples exchangeable with the calibration
samples (drawn from the same distribution, independently of the calibration draw):

.. math::  P\big(R(\hat\lambda) > \alpha\big) \le \delta

over the draw of the calibration samples, where :math:`R(\lambda)` is the expected loss
on a new sample. When not even the first value is rejected, no value is certified:
``fit`` warns and the rule falls back to running every sample for all T steps (it
never falls back to an uncertified value).

Losses, per sample n with prediction :math:`\hat y_n` at its exit and :math:`\hat y^T_n`
after all T steps:

- ``"relative"`` (default): :math:`1[\hat y_n \ne y_n] - 1[\hat y^T_n \ne y_n]`, the
  accuracy given up against running all T steps. It is certified through the pointwise
  larger "flip" loss :math:`1[\hat y_n \ne y_n,\ \hat y^T_n = y_n]` (0 or 1), whose risk
  bounds the relative risk from above: the guarantee holds for the relative loss,
  conservatively (samples an early exit gets right that T gets wrong are not credited).
- ``"absolute"``: :math:`1[\hat y_n \ne y_n]`, the error rate at exit.

p-values for a mean of n binary losses :math:`\hat R` (``method``):

- ``"binomial"`` (default, exact): :math:`P(\mathrm{Bin}(n, \alpha) \le n \hat R)`;
- ``"hb"``: Hoeffding-Bentkus, :math:`\min\big(e^{-n\, h(\min(\hat R, \alpha), \alpha)},\
  e \cdot P(\mathrm{Bin}(n, \alpha) \le \lceil n \hat R \rceil)\big)` with
  :math:`h(a, b) = a \log\frac{a}{b} + (1-a) \log\frac{1-a}{1-b}` (valid for losses in [0, 1]).

A rule that learns from data (``TopKGap``, ``Conformal``, ``LearnedExit``) must not be
tested on the samples it learned from: ``fit`` fits it on a seeded ``fit_fraction`` of
the calibration trace and tests on the rest, or fits it on ``fit_on`` (another held-out
trace) and tests on all of the calibration trace. With no loss observed at all,
certifying needs :math:`n \ge \log\delta / \log(1-\alpha)` test samples
(:func:`samples_needed`; 460 for :math:`\alpha = 0.005, \delta = 0.1`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..stats import first_exit
from ..trace import Trace
from ..validation import check_choice, check_int
from .base import CutoffPolicy, check_same_shape

LOSSES = ("relative", "absolute")
METHODS = ("binomial", "hb")


class NotCertifiedWarning(UserWarning):
    """No value of the wrapped rule could be certified: the rule runs every sample for all T steps."""


def _open_unit(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a number in (0, 1), got {value!r} ({type(value).__name__})")
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
    return value


def p_values(losses: Tensor, n: int, max_loss: float, method: str = "binomial") -> list[float]:
    """Valid p-values of :math:`H: R > \\alpha` for E values, from the numbers of unit losses ``[E]`` among n."""
    from scipy.stats import binom

    counts = [int(c) for c in losses.tolist()]
    exact = [float(binom.cdf(c, n, max_loss)) for c in counts]
    if method == "binomial":
        return exact
    out = []
    for c, b in zip(counts, exact):
        r = min(c / n, max_loss)
        h = (r * math.log(r / max_loss) if r > 0 else 0.0) + (1 - r) * math.log((1 - r) / (1 - max_loss))
        out.append(min(math.exp(-n * h), math.e * b))  # the counts are integers: ceil(n R) = c
    return out


def samples_needed(max_loss: float, delta: float, method: str = "binomial") -> int:
    """Fewest test samples that can certify ``max_loss`` at ``delta`` (when no loss is observed at all)."""
    n = max(1, math.ceil(math.log(delta) / math.log1p(-max_loss)))
    while p_values(torch.zeros(1), n, max_loss, method)[0] > delta:
        n += 1
    return n


def split_trace(trace: Trace, fraction: float, seed: int) -> tuple[Trace, Trace]:
    """A seeded random split of ``trace`` into ``(first, rest)`` with ``round(fraction * N)`` samples first."""
    order = torch.randperm(trace.N, generator=torch.Generator().manual_seed(seed)).to(trace.labels.device)
    cut = int(round(fraction * trace.N))
    if not 0 < cut < trace.N:
        raise ValueError(f"a calibration trace of {trace.N} samples cannot be split {fraction:g} / {1 - fraction:g}")
    return trace.subset(order[:cut]), trace.subset(order[cut:])


class RiskControl(CutoffPolicy):
    """Calibrate ``policy`` so that its loss on new data exceeds ``max_loss`` with probability at most ``delta``.

    Args:
        policy: a cutoff rule with one scalar parameter (its own value is ignored), e.g.
            ``TopKGap()``, ``Confidence()``, ``Entropy()``, ``Conformal()``, ``Stability()``,
            ``LearnedExit()``.
        max_loss: :math:`\\alpha` in (0, 1), e.g. 0.005: half a point of accuracy.
        delta: :math:`\\delta` in (0, 1): the probability, over the calibration draw, that the
            certified rule's loss exceeds ``max_loss`` after all.
        loss: ``"relative"`` (accuracy given up against all T steps) or ``"absolute"`` (error rate).
        method: p-value, ``"binomial"`` (exact) or ``"hb"`` (Hoeffding-Bentkus).
        fit_fraction: share of the calibration trace a learning rule is fitted on (the rest tests
            it), unless ``fit`` is given ``fit_on``.
        grid: values of the rule's parameter to test, most conservative first (default
            ``policy.risk_grid(T)``).
        delay: test first the most conservative value with no exit before step s, for s from T
            down to 2 (so a rule whose most conservative value is already too aggressive can
            still be certified from some step on), then every value from step 1.
        seed: seed of the fit / test split.

    Attributes (after ``fit``):
        value_: the certified value of the rule's parameter (None: nothing certified, all T steps).
        start_: the first step at which it lets samples exit (1: no delay).
        p_value_: its p-value; ``p_values_``, ``risks_``: of every member tested (``risks_``: the
            empirical flip or error rate on the test samples), in order, up to the first failure.
        certified_loss_: the bound certified (``max_loss``; 0 with the relative loss when nothing
            was certified and every sample runs to T; None for the absolute loss then).
        n_test_: number of samples the values were tested on.
        rule_: the wrapped rule as fitted (its learned thresholds are ``thresholds_`` here).
        thresholds_, T_: as for any policy.
    """

    param = "max_loss"

    def __init__(self, policy: CutoffPolicy, max_loss: float = 0.005, delta: float = 0.1, loss: str = "relative",
                 method: str = "binomial", fit_fraction: float = 0.5, grid: Sequence[Any] | None = None,
                 delay: bool = True, seed: int = 0) -> None:
        if not isinstance(policy, CutoffPolicy) or isinstance(policy, RiskControl):
            raise TypeError(f"policy must be a cutoff rule such as TopKGap() (not RiskControl), got {policy!r}")
        if not isinstance(getattr(policy, "param", None), str):
            raise TypeError(f"{type(policy).__name__} has no scalar parameter to calibrate")
        try:
            if grid is None:
                policy.risk_grid(2)
        except NotImplementedError:
            raise TypeError(f"{type(policy).__name__} does not say which values of {policy.param!r} to try "
                            "(risk_grid); pass grid=[...] from the most conservative value on") from None
        self.policy = policy
        self.max_loss = _open_unit("max_loss", max_loss)
        self.delta = _open_unit("delta", delta)
        self.loss = check_choice("loss", loss, LOSSES)
        self.method = check_choice("method", method, METHODS)
        self.fit_fraction = _open_unit("fit_fraction", fit_fraction)
        if grid is not None:
            grid = list(grid)
            if not grid:
                raise ValueError("grid must list at least one value")
            for v in grid:
                policy.with_param(v)  # validates each value
        self.grid = grid
        if not isinstance(delay, bool):
            raise TypeError(f"delay must be True or False, got {delay!r}")
        self.delay = delay
        self.seed = check_int("seed", seed, 0)
        # the wrapped rule's comparison, state and class requirements
        self.strict, self.score_max = policy.strict, policy.score_max
        self.state_size, self.min_classes = policy.state_size, policy.min_classes

    _FITTED = ("value_", "start_", "p_value_", "p_values_", "risks_", "certified_loss_", "n_test_", "rule_",
               "thresholds_", "T_", "C_")

    def __getattr__(self, name: str) -> Any:  # only for attributes not set: the fitted ones before fit
        if name in RiskControl._FITTED:
            raise AttributeError(f"RiskControl is not fitted: call fit(calibration_trace) before reading {name}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        rule = ", ".join(f"{k}={v!r}" for k, v in self.policy.get_params().items() if k != self.policy.param)
        chosen = ""
        if "value_" in self.__dict__:
            start = f" from step {self.start_}" if self.start_ and self.start_ > 1 else ""
            chosen = f" -> {self.policy.param}={self.value_!r}{start}" if self.value_ is not None else " -> all T steps"
        return (f"RiskControl({type(self.policy).__name__}({rule}), max_loss={self.max_loss:g}, delta={self.delta:g}, "
                f"loss={self.loss!r}, method={self.method!r}){chosen}")

    # ------------------------------------------------------------- calibration
    def _rule(self) -> CutoffPolicy:
        if "rule_" not in self.__dict__:
            raise AttributeError(f"{self!r} is not fitted: call fit(calibration_trace)")
        return self.rule_

    def _test_losses(self, calibration: Trace, fit_on: Trace | None) -> tuple[CutoffPolicy, list[tuple[int, Any]],
                                                                               Tensor, Tensor, int]:
        """Fit the wrapped rule and test every member of the sequence (``self`` is left as it is).

        Returns ``(rule, members, thresholds [M, T], unit losses [M], n)``; member ``(start, value)`` is
        the rule at ``value`` with no exit before step ``start`` (a NaN threshold before it)."""
        T = calibration.T
        rule = self.policy.with_param(self.policy.risk_grid(T)[0] if self.grid is None else self.grid[0])
        values = list(self.grid) if self.grid is not None else rule.risk_grid(T)
        fit_part, test_part = None, calibration
        if rule.needs_fit:
            if fit_on is not None:
                self._check_trace(fit_on)
                check_same_shape(fit_on, calibration, ("fit_on", "calibration"))
                fit_part = fit_on
            else:
                fit_part, test_part = split_trace(calibration, self.fit_fraction, self.seed)
        need = samples_needed(self.max_loss, self.delta, self.method)
        if test_part.N < need:
            where = "" if fit_part is None or fit_on is not None else (
                f" (the {test_part.N} of {calibration.N} calibration samples left after fitting "
                f"{type(rule).__name__} on a share of {self.fit_fraction:g})")
            if fit_part is None or fit_on is not None:  # every calibration sample tests
                more = f"calibrate on at least {need} held-out samples (or raise max_loss / delta)"
            else:
                total = math.ceil(need / (1 - self.fit_fraction))
                more = (f"calibrate on at least {total} held-out samples ({need} left to test after the fit), or "
                        "pass fit_on= a second held-out trace to fit on (then all of these test), or raise "
                        "max_loss / delta")
            raise ValueError(
                f"too few calibration samples to certify anything: testing on {test_part.N}{where}, but "
                f"max_loss={self.max_loss:g} at delta={self.delta:g} needs at least {need} even with no loss at all; "
                f"{more}")
        by_value = rule._thresholds(fit_part, values, T)  # [E, T]
        members = [(s, 0) for s in (range(T, 1, -1) if self.delay else ())] + [(1, i) for i in range(len(values))]
        thresholds = by_value[[i for _, i in members]].clone()
        for m, (start, _) in enumerate(members):
            thresholds[m, : start - 1] = math.nan  # no exit before ``start``
        scores = rule._trace_scores(test_part)
        exits = torch.cat([first_exit(rule._passes(scores, thr.unsqueeze(-1))) for thr in thresholds.split(8)])
        rows = torch.arange(test_part.N, device=exits.device)
        wrong = test_part.predictions()[exits - 1, rows] != test_part.labels  # [M, n]
        if self.loss == "relative":
            wrong &= test_part.correct()[-1]  # flips: wrong at exit, right at T
        return rule, [(start, values[i]) for start, i in members], thresholds, wrong.sum(dim=1), test_part.N

    def _select(self, counts: Tensor, n: int, max_loss: float) -> tuple[int, list[float]]:
        """Fixed-sequence testing: index of the last member rejected before the first that is not (-1: none)."""
        p = p_values(counts, n, max_loss, self.method)
        chosen = -1
        for i, pv in enumerate(p):
            if pv > self.delta:
                break
            chosen = i
        return chosen, p[: chosen + 2]

    def _never(self, T: int) -> Tensor:
        return torch.full((T,), math.nan, dtype=torch.float64)  # a NaN threshold never passes: all T steps

    def fit(self, calibration: Trace, fit_on: Trace | None = None) -> RiskControl:
        """Certify the most aggressive member of the wrapped rule's sequence on held-out ``calibration`` data.

        Args:
            calibration: a trace of samples the network was not trained on.
            fit_on: another held-out trace to fit a learning rule on (then every calibration
                sample tests it); default: a seeded ``fit_fraction`` of ``calibration``.
        """
        self._check_trace(calibration)
        self.rule_, members, thresholds, counts, n = self._test_losses(calibration, fit_on)
        chosen, p = self._select(counts, n, self.max_loss)
        self.p_values_ = p
        self.risks_ = [c / n for c in counts.tolist()[: len(p)]]
        self.n_test_ = n
        self.T_, self.C_ = calibration.T, calibration.C
        if chosen < 0:
            self.value_, self.start_, self.p_value_ = None, None, p[0]
            self.thresholds_ = self._never(calibration.T)
            self.certified_loss_ = 0.0 if self.loss == "relative" else None
            warnings.warn(
                f"{self!r}: nothing could be certified on {n} samples (the most conservative member, "
                f"{self.policy.param}={members[0][1]!r} from step {members[0][0]}, has p-value {p[0]:.3g} > delta): "
                f"every sample runs all {calibration.T} steps. Calibrate on more held-out samples, or raise "
                "max_loss / delta.", NotCertifiedWarning, stacklevel=2)
        else:
            self.start_, self.value_ = members[chosen]
            self.p_value_ = p[chosen]
            self.thresholds_ = thresholds[chosen]
            self.certified_loss_ = self.max_loss
        return self

    # ------------------------------------------------------------- the rule
    def _scores(self, outputs: Tensor, t0: int | Tensor = 0, states: Tensor | None = None) -> Tensor:
        return self._rule()._scores(outputs, t0, states)

    def _trace_scores(self, trace: Trace) -> Tensor:
        return self._rule()._trace_scores(trace)

    def _state_init(self, n: int, device: torch.device | str | None = None) -> Tensor:
        return self.policy._state_init(n, device)

    def _state_scan(self, state: Tensor, outputs: Tensor) -> Tensor:
        return self.policy._state_scan(state, outputs)

    def _fused_step(self, t0: int | Tensor, outputs: Tensor, state: Tensor) -> Tensor | None:
        return self._rule()._fused_step(t0, outputs, state)

    def _certified(self, calibration: Trace, values: Sequence[float], T: int) -> tuple[CutoffPolicy, Tensor]:
        """The wrapped rule fitted on ``calibration`` and ``[E, T]`` certified thresholds for E values of
        ``max_loss`` (one test of the sequence serves all); a fitted ``self`` is left as it is."""
        rule, _, thresholds, counts, n = self._test_losses(calibration, None)
        rows = []
        for v in values:
            chosen, _ = self._select(counts, n, _open_unit("max_loss", v))
            rows.append(thresholds[chosen] if chosen >= 0 else self._never(T).to(thresholds))
        return rule, torch.stack(rows)

    def _sweep_exits(self, calibration: Trace | None, test: Trace, values: Sequence[Any]) -> Tensor:
        rule, thresholds = self._certified(calibration, values, test.T)
        scores = rule._trace_scores(test)
        return torch.cat([first_exit(rule._passes(scores, thr.unsqueeze(-1))) for thr in thresholds.split(8)])

    def risk_grid(self, T: int) -> list[float]:
        return [0.001, 0.002, 0.005, 0.01, 0.02, 0.05]
