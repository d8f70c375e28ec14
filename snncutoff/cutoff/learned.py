r"""``LearnedExit``: a small learned model scores how settled a prediction is.

At step t (1-based :math:`s = t + 1`) the score of sample n is a logistic regression

.. math::  z_{t,n} = b + \sum_i w_i \, \frac{f_{i,t,n} - \mu_i}{\sigma_i}

over causal features of the cumulative output :math:`O_t` and of the steps before it
(:data:`FEATURES`): the gap of the mean output :math:`g_t / s`, the largest softmax
probability of :math:`O_t` and of the mean output :math:`O_t / s`, the normalised
entropy of :math:`\operatorname{softmax}(O_t)`, the argmax's run length :math:`r_t` (as
:math:`\log r_t` and :math:`r_t / s`), the progress :math:`s / T` and the gap's growth
:math:`g_t - g_{t-1}`. It is fitted on a calibration trace to predict that the sample
is settled at t (its prediction is correct from t on: OCT :math:`\le s`).

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
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..stats import max_softmax, max_softmax_of_mean, normalized_entropy
from ..trace import Trace
from ..validation import check_positive_int, check_unit_interval
from .base import CutoffPolicy
from .stability import RunState
from .topk import EPSILON_GRID, exact_thresholds

#: models fitted per calibration trace (and hyper-parameters), forgotten with the trace
_MODELS: weakref.WeakKeyDictionary[Trace, dict] = weakref.WeakKeyDictionary()

#: the features, in the order of ``coef_``
FEATURES = ("gap_per_step", "max_softmax", "max_softmax_of_mean", "entropy", "log_run", "run_share", "progress",
            "gap_growth")


def features(steps: Tensor, runs: Tensor, gaps: Tensor, before: Tensor, max_soft: Tensor, max_soft_mean: Tensor,
             entropy: Tensor, T: int) -> list[Tensor]:
    """The :data:`FEATURES` as ``[k, N]`` float64 tensors, from per-step statistics ``[k, N]``.

    ``steps``: 1-based steps (broadcastable); ``runs``, ``gaps``, ``before``: the run state;
    ``max_soft``, ``max_soft_mean``, ``entropy``: statistics of the cumulative outputs (a
    trace's cached ones, or those of the steps being decided). Elementwise in float64, so a
    sample's features do not depend on which others are computed with it.
    """
    s = steps.to(torch.float64)
    return [gaps / s, max_soft.double(), max_soft_mean.double(), entropy.double(), runs.log(), runs / s, s / T,
            gaps - before]


class LearnedExit(RunState, CutoffPolicy):
    """Exit when a logistic model of the output's history says the prediction is settled.

    Args:
        epsilon: in [0, 1): tolerated share of calibration exits not yet stably correct,
            per step (as ``TopKGap``'s ``epsilon``).
        regularization: inverse L2 strength of the logistic regression (scikit-learn's ``C``).
        max_rows: at most this many (step, sample) rows are used to fit the model (a seeded
            random subset of larger traces).
        seed: seed of that subset.

    Attributes:
        coef_: ``[F]`` weights of the standardised features (order of :data:`FEATURES`).
        intercept_: the bias b.
        feature_mean_, feature_scale_: ``[F]`` the standardisation :math:`\\mu, \\sigma`.
        thresholds_: ``[T]`` score thresholds (``+inf``: no exit at that step).
        T_: number of steps of the calibration trace.
    """

    param = "epsilon"

    def __init__(self, epsilon: float = 0.0, regularization: float = 1.0, max_rows: int = 200_000,
                 seed: int = 0) -> None:
        self.epsilon = check_unit_interval("epsilon", epsilon)
        if isinstance(regularization, bool) or not isinstance(regularization, (int, float)) or not (
                math.isfinite(regularization) and regularization > 0):
            raise ValueError(f"regularization must be a finite number > 0, got {regularization!r}")
        self.regularization = float(regularization)
        self.max_rows = check_positive_int("max_rows", max_rows)
        self.seed = check_positive_int("seed", seed, minimum=0)

    # --------------------------------------------------------------- model
    def _fit_model(self, trace: Trace) -> None:
        key = (self.regularization, self.max_rows, self.seed)
        fitted = _MODELS.setdefault(trace, {})
        if key not in fitted:  # the same trace fits the same model: once (sweeps, risk control)
            fitted[key] = self._logistic(trace)
        self.coef_, self.intercept_, self.feature_mean_, self.feature_scale_ = fitted[key]

    def _logistic(self, trace: Trace) -> tuple[Tensor, float, Tensor, Tensor]:
        from sklearn.linear_model import LogisticRegression

        X = torch.stack(self._trace_features(trace), dim=-1).reshape(-1, len(FEATURES))
        steps = torch.arange(1, trace.T + 1, device=trace.labels.device).view(-1, 1)
        y = (steps >= trace.oct_steps()).reshape(-1)
        if X.shape[0] > self.max_rows:
            rows = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(self.seed))[: self.max_rows]
            X, y = X[rows], y[rows]
        X, y = X.cpu().numpy(), y.cpu().numpy()
        mean, scale = X.mean(axis=0), X.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        if y.all() or not y.any():  # one class only: the score cannot rank; every row gets the same
            coef, intercept = np.zeros(len(FEATURES)), (10.0 if y.all() else -10.0)
        else:
            model = LogisticRegression(C=self.regularization, max_iter=1000)
            model.fit((X - mean) / scale, y)
            coef, intercept = model.coef_[0], float(model.intercept_[0])
        return (torch.tensor(coef, dtype=torch.float64), float(intercept), torch.tensor(mean, dtype=torch.float64),
                torch.tensor(scale, dtype=torch.float64))

    def _score(self, feats: list[Tensor]) -> Tensor:
        if "coef_" not in self.__dict__:
            raise AttributeError(f"{self!r} has no model yet: call fit(calibration_trace)")
        z = torch.full_like(feats[0], self.intercept_)
        for f, w, m, s in zip(feats, self.coef_.tolist(), self.feature_mean_.tolist(), self.feature_scale_.tolist()):
            z = z + w * ((f - m) / s)  # elementwise, in a fixed order: the same bits on line and on a trace
        return z

    def _trace_features(self, trace: Trace) -> list[Tensor]:
        runs, gaps, before = self._trace_history(trace)
        steps = torch.arange(1, trace.T + 1, device=gaps.device).view(-1, 1).expand(trace.T, trace.N)
        return features(steps, runs, gaps, before, trace.max_softmax(), trace.max_softmax_of_mean(),
                        trace.normalized_entropy(), trace.T)

    # ------------------------------------------------------------- policy
    def _scores(self, outputs: Tensor, t0: int | Tensor = 0, states: Tensor | None = None) -> Tensor:
        k, n = outputs.shape[:2]
        offset = torch.arange(1, k + 1, device=outputs.device).view(-1, 1)
        steps = (t0.view(1, -1) + offset) if isinstance(t0, Tensor) else (offset + t0).expand(k, n)
        return self._score(features(steps, states[..., 1], states[..., 2], states[..., 3], max_softmax(outputs),
                                    max_softmax_of_mean(outputs, steps), normalized_entropy(outputs), self.T_))

    def _trace_scores(self, trace: Trace) -> Tensor:
        return self._score(self._trace_features(trace))

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
        return dict(zip(FEATURES, self.coef_.tolist()))
