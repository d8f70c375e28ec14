r"""``LearnedExit``: a small learned model scores how settled a prediction is.

At step t (1-based :math:`s = t + 1`) the score of sample n is a logistic regression

.. math::  z_{t,n} = b + \sum_i w_i \, \frac{f_{i,t,n} - \mu_i}{\sigma_i}
           = \sum_i a_i f_{i,t,n} + c, \qquad a_i = \frac{w_i}{\sigma_i},\
           c = b - \sum_i \frac{w_i \mu_i}{\sigma_i}

(evaluated in the second form, in float64, one step at a time: see ``_step_scores``) over
causal features of the cumulative output :math:`O_t` and of the steps before it. The
available ones (:data:`FEATURES`): the gap of the mean output :math:`g_t / s`, the
largest softmax probability of :math:`O_t` and of the mean output :math:`O_t / s`, the
normalised entropy of :math:`\operatorname{softmax}(O_t)`, the argmax's run length
:math:`r_t` (as :math:`\log r_t` and :math:`r_t / s`), the progress :math:`s / T` and
the gap's growth :math:`g_t - g_{t-1}`. By default (:data:`DEFAULT_FEATURES`) all but
the max softmax of :math:`O_t` and the entropy: measured on digits and on three
mnist-5k networks, dropping those two moved the test-tuned exit by at most 0.04x the
mean OCT (digits 2.08x -> 2.12x, MNIST unchanged), while computing them cost two
softmax passes per decision. Without the softmax of the mean the exit moved by up to
0.3x on digits: the mean output's confidence and the gap carry the result. The model
is fitted on a calibration trace to predict that the sample is settled at t (its
prediction is correct from t on: OCT :math:`\le s`).

Exit at the first t with :math:`z_{t,n} > \beta_t` (strict), where :math:`\beta_t` is
chosen on the same calibration trace exactly as ``TopKGap``'s exact search chooses its
thresholds: the smallest score such that the share of calibration exits at t that are
stably correct is at least :math:`1 - \epsilon`. Wrap it in
:class:`~snncutoff.RiskControl` for a guarantee on new data.

On line the score needs the run length and the previous gap: a per-sample state
(:meth:`~snncutoff.CutoffPolicy.initial_state`), carried by the early-exit loop.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .. import _native
from ..stats import max_softmax, max_softmax_of_mean, normalized_entropy
from ..trace import Trace
from ..validation import check_positive_int, check_unit_interval
from .base import CutoffPolicy
from .stability import RunState
from .topk import EPSILON_GRID, exact_thresholds

#: models fitted per calibration trace (and hyper-parameters), forgotten with the trace
_MODELS: weakref.WeakKeyDictionary[Trace, dict] = weakref.WeakKeyDictionary()

#: every feature the model can use
FEATURES = ("gap_per_step", "max_softmax", "max_softmax_of_mean", "entropy", "log_run", "run_share", "progress",
            "gap_growth")
#: the features read from the cumulative outputs' statistics (the others from the run state)
_STATISTICS = ("max_softmax", "max_softmax_of_mean", "entropy")
#: the C kernel's codes of the run-state features (``learned.c``)
_CODES = {"gap_per_step": 0, "log_run": 1, "run_share": 2, "gap_growth": 3}
#: the features used by default (chosen by measurement: see the module docstring)
DEFAULT_FEATURES = ("gap_per_step", "max_softmax_of_mean", "log_run", "run_share", "progress", "gap_growth")


def features(names: Sequence[str], steps: Tensor | int, runs: Tensor, gaps: Tensor, before: Tensor,
             outputs_stat: Callable[[str], Tensor], T: int) -> list[Tensor]:
    """The features ``names`` as float64 tensors shaped as ``gaps``, from per-step statistics.

    ``steps``: 1-based steps (broadcastable to ``gaps``), or one int for every row (one
    step of a batch: the same values from scalar arithmetic); ``runs``, ``gaps``,
    ``before`` (float64): the run state; ``outputs_stat(name)``: ``"max_softmax"``,
    ``"max_softmax_of_mean"`` or ``"entropy"`` of the cumulative outputs (a trace's cached
    ones, or those of the step being decided), asked for only when a feature needs it.
    Elementwise in float64, so a sample's features do not depend on the other rows.
    """
    s = steps.to(torch.float64) if isinstance(steps, Tensor) else float(steps)
    out = []
    for name in names:
        if name == "gap_per_step":
            out.append(gaps / s)
        elif name == "log_run":
            out.append(runs.log())
        elif name == "run_share":
            out.append(runs / s)
        elif name == "gap_growth":
            out.append(gaps - before)
        elif name == "progress":
            out.append(torch.zeros_like(gaps) + s / T)
        else:
            out.append(outputs_stat(name).double())
    return out


def _output_stat(outputs: Tensor, s: int | Tensor, name: str) -> Tensor:
    """The statistic ``name`` of cumulative outputs ``[n, C]`` at their 1-based step ``s``."""
    if name == "max_softmax_of_mean":
        return max_softmax_of_mean(outputs, s)
    return max_softmax(outputs) if name == "max_softmax" else normalized_entropy(outputs)


class _RawModel(NamedTuple):
    """A fitted model on raw features: ``z = sum_i a_i f_i + (s / T * a_progress + c)``."""

    names: tuple[str, ...]  # the features but the progress, in order
    weights: tuple[float, ...]  # their a_i
    a_progress: float | None
    c: float
    T: float
    stat_names: tuple[str, ...]  # the statistics of the outputs they read, in order
    log_table: Tensor  # [T + 1] float64: torch's log r for the run lengths r = 0 .. T (for the kernel)
    native: _native.LearnedModel | None  # the same for the C kernel (None without it)


def _twin_scores(m: _RawModel, s: float | Tensor, runs: Tensor, gaps: Tensor, before: Tensor,
                 stats: list[Tensor]) -> Tensor:
    """``LearnedExit``'s scores in torch, one elementwise float64 operation at a time in the
    kernel's order (``learned.c``): on the CPU the same bits as the C kernel (elsewhere the
    device's own ``log`` may round the run length's differently)."""
    z = None
    for name, a in zip(m.names, m.weights):
        if name == "gap_per_step":
            x = gaps / s
        elif name == "log_run":
            x = runs.log()  # the kernel reads the same values from m.log_table
        elif name == "run_share":
            x = runs / s
        elif name == "gap_growth":
            x = gaps - before
        else:
            x = stats[m.stat_names.index(name)].double()
        z = x * a if z is None else z + x * a
    shift = m.c if m.a_progress is None else s / m.T * m.a_progress + m.c
    return torch.zeros_like(gaps) + shift if z is None else z + shift


class LearnedExit(RunState, CutoffPolicy):
    """Exit when a logistic model of the output's history says the prediction is settled.

    Args:
        epsilon: in [0, 1): tolerated share of calibration exits not yet stably correct,
            per step (as ``TopKGap``'s ``epsilon``).
        regularization: inverse L2 strength of the logistic regression (scikit-learn's ``C``).
        max_rows: at most this many (step, sample) rows are used to fit the model (a seeded
            random subset of larger traces).
        seed: seed of that subset.
        features: names from :data:`FEATURES`, in the order of ``coef_`` (default
            :data:`DEFAULT_FEATURES`).

    Attributes:
        coef_: ``[F]`` weights of the standardised features (order of ``features``).
        intercept_: the bias b.
        feature_mean_, feature_scale_: ``[F]`` the standardisation :math:`\\mu, \\sigma`.
        thresholds_: ``[T]`` score thresholds (``+inf``: no exit at that step).
        T_: number of steps of the calibration trace.
    """

    param = "epsilon"

    def __init__(self, epsilon: float = 0.0, regularization: float = 1.0, max_rows: int = 200_000,
                 seed: int = 0, features: Sequence[str] = DEFAULT_FEATURES) -> None:
        self.epsilon = check_unit_interval("epsilon", epsilon)
        if isinstance(regularization, bool) or not isinstance(regularization, (int, float)) or not (
                math.isfinite(regularization) and regularization > 0):
            raise ValueError(f"regularization must be a finite number > 0, got {regularization!r}")
        self.regularization = float(regularization)
        self.max_rows = check_positive_int("max_rows", max_rows)
        self.seed = check_positive_int("seed", seed, minimum=0)
        if isinstance(features, str) or not isinstance(features, Sequence):
            raise TypeError(f"features must be a sequence of names from {FEATURES}, got {features!r}")
        unknown = [f for f in features if f not in FEATURES]
        if unknown or not features or len(set(features)) != len(features):
            raise ValueError(f"features must be distinct names from {FEATURES}, got {tuple(features)!r}")
        self.features = tuple(features)

    # --------------------------------------------------------------- model
    def _fit_model(self, trace: Trace) -> None:
        key = (self.regularization, self.max_rows, self.seed, self.features)
        fitted = _MODELS.setdefault(trace, {})
        if key not in fitted:  # the same trace fits the same model: once (sweeps, risk control)
            fitted[key] = self._logistic(trace)
        self.coef_, self.intercept_, self.feature_mean_, self.feature_scale_ = fitted[key]

    def _logistic(self, trace: Trace) -> tuple[Tensor, float, Tensor, Tensor]:
        from sklearn.linear_model import LogisticRegression

        F = len(self.features)
        X = torch.stack(self._trace_features(trace), dim=-1).reshape(-1, F)
        steps = torch.arange(1, trace.T + 1, device=trace.labels.device).view(-1, 1)
        y = (steps >= trace.oct_steps()).reshape(-1)
        if X.shape[0] > self.max_rows:
            rows = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(self.seed))[: self.max_rows]
            X, y = X[rows], y[rows]
        X, y = X.cpu().numpy(), y.cpu().numpy()
        mean, scale = X.mean(axis=0), X.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        if y.all() or not y.any():  # one class only: the score cannot rank; every row gets the same
            coef, intercept = np.zeros(F), (10.0 if y.all() else -10.0)
        else:
            model = LogisticRegression(C=self.regularization, max_iter=1000)
            model.fit((X - mean) / scale, y)
            coef, intercept = model.coef_[0], float(model.intercept_[0])
        return (torch.tensor(coef, dtype=torch.float64), float(intercept), torch.tensor(mean, dtype=torch.float64),
                torch.tensor(scale, dtype=torch.float64))

    def _step_scores(self, s: int | Tensor, runs: Tensor, gaps: Tensor, before: Tensor,
                     outputs_stat: Callable[[str], Tensor]) -> Tensor:
        """``[n]`` scores of n samples at their 1-based step ``s`` (an int, or ``[n]``), from their run state.

        :math:`z = ((a_1 f_1 + a_2 f_2) + \\dots) + (s / T\\, a_p + c)` over the features but the
        progress, whose term joins the constant: one float64 operation at a time in this
        order, so row by row the same bits whatever n and whatever the other rows. In C
        where the kernel applies (:func:`snncutoff._native.learned_scores`: one call for the
        step), else the same operations in torch (:func:`_twin_scores`): the same bits.
        """
        m = self._plan()
        s = s.to(torch.float64) if isinstance(s, Tensor) else float(s)
        stats = [outputs_stat(name) for name in m.stat_names]
        native = None if m.native is None else _native.learned_scores(runs, gaps, before, stats, s, m.native)
        return _twin_scores(m, s, runs, gaps, before, stats) if native is None else native

    def _fused_step(self, t0: int | Tensor, outputs: Tensor, state: Tensor) -> Tensor | None:
        """One on-line step of a batch on the CPU: the statistics, then the top-2 gap, the run
        state and the scores in one C call (:func:`snncutoff._native.learned_step`)."""
        m = self._plan()
        if m.native is None or outputs.device.type != "cpu":
            return None
        o = outputs[0]
        s = (t0 + 1).double() if isinstance(t0, Tensor) else t0 + 1
        stats = [_output_stat(o, s, name) for name in m.stat_names]
        return _native.learned_step(o, state, stats, float(s) if isinstance(s, int) else s, m.native)

    def _plan(self) -> _RawModel:
        """The fitted model on raw features (cached until the next fit)."""
        plan = self.__dict__.get("_plan_cache")
        if plan is not None and plan[0] is self.coef_:
            return plan[1]
        if "coef_" not in self.__dict__:
            raise AttributeError(f"{self!r} has no model yet: call fit(calibration_trace)")
        w, mu, sigma = self.coef_.tolist(), self.feature_mean_.tolist(), self.feature_scale_.tolist()
        a = {f: wi / si for f, wi, si in zip(self.features, w, sigma)}
        names = tuple(f for f in self.features if f != "progress")
        stat_names = tuple(f for f in names if f in _STATISTICS)
        codes = torch.tensor([_CODES[f] if f in _CODES else 4 + stat_names.index(f) for f in names], dtype=torch.long)
        weights = torch.tensor([a[f] for f in names], dtype=torch.float64)
        a_progress, c = a.get("progress"), self.intercept_ - sum(wi * m / si for wi, m, si in zip(w, mu, sigma))
        log_table = torch.arange(self.T_ + 1, dtype=torch.float64).log()
        plan = _RawModel(names, tuple(weights.tolist()), a_progress, c, float(self.T_), stat_names, log_table,
                         _native.learned_model(codes, weights, self.T_, a_progress, c, log_table))
        self._plan_cache = (self.coef_, plan)
        return plan

    def _trace_features(self, trace: Trace) -> list[Tensor]:
        runs, gaps, before = self._trace_history(trace)
        steps = torch.arange(1, trace.T + 1, device=gaps.device).view(-1, 1)
        stat = {"max_softmax": trace.max_softmax, "max_softmax_of_mean": trace.max_softmax_of_mean,
                "entropy": trace.normalized_entropy}
        return features(self.features, steps, runs, gaps, before, lambda name: stat[name](), trace.T)

    # ------------------------------------------------------------- policy
    def _scores(self, outputs: Tensor, t0: int | Tensor = 0, states: Tensor | None = None) -> Tensor:
        rows = []
        for j in range(outputs.shape[0]):
            s = t0 + (j + 1) if isinstance(t0, Tensor) else int(t0) + j + 1
            state = states[j]
            rows.append(self._step_scores(s, state[:, 1], state[:, 2], state[:, 3],
                                          partial(_output_stat, outputs[j], s)))
        return rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)

    def _trace_scores(self, trace: Trace) -> Tensor:
        runs, gaps, before = self._trace_history(trace)
        cached = {"max_softmax": trace.max_softmax, "max_softmax_of_mean": trace.max_softmax_of_mean,
                  "entropy": trace.normalized_entropy}
        return torch.stack([self._step_scores(t + 1, runs[t], gaps[t], before[t], lambda f, t=t: cached[f]()[t])
                            for t in range(trace.T)])

    def _thresholds(self, calibration: Trace | None, values: Sequence[float], T: int | None) -> Tensor:
        """Fits the model on ``calibration``, then the per-step thresholds of each epsilon."""
        epsilons = [check_unit_interval("epsilon", v) for v in values]
        self._fit_model(calibration)
        self.T_ = calibration.T
        return exact_thresholds(self._trace_scores(calibration), calibration, epsilons)

    def risk_grid(self, T: int) -> list[float]:
        return list(EPSILON_GRID)

    def feature_weights(self) -> dict[str, float]:
        """``{feature: weight}`` of the fitted model (standardised features: comparable magnitudes)."""
        return dict(zip(self.features, self.coef_.tolist()))
