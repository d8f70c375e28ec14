"""Every cutoff rule's figures for a compare run, from the traces alone (no network is run here)."""

from __future__ import annotations

import warnings
from typing import Any

import snncutoff as sc

from .config import POLICIES, BenchConfig

#: parameter values of each rule shown in the compare table besides its risk-controlled value
#: (the timestep row is the first step within 1 point of the ANN; sweeps cover risk_grid)
REPORTED = {"topk": (0.0, 0.01), "confidence": (0.001,), "entropy": (0.01,), "conformal": (0.05,),
            "stability": (3,), "learned": (0.0,)}


def _timestep_within(trace: sc.Trace, reference: float) -> int:
    """First step whose accuracy is within 1 point of ``reference`` (T if none)."""
    acc = trace.accuracy_per_step()
    ok = (acc >= reference - 0.01).nonzero()
    return int(ok[0]) + 1 if ok.numel() else trace.T


def _row(result: sc.CutoffResult, mean_oct: float, acc_T: float, **extra: Any) -> dict:
    d = result.to_dict()
    d.update(over_oct=d["mean_steps"] / mean_oct, loss_vs_T=100.0 * (acc_T - d["accuracy"]), **extra)
    return d


def policy_results(cfg: BenchConfig, fit_on: sc.Trace, cal: sc.Trace, test: sc.Trace,
                   reference: float) -> dict[str, dict]:
    """One entry per reported rule value and one risk-controlled entry per rule.

    Every rule is calibrated on ``cal`` (held out from training); a risk-controlled rule
    that learns (``TopKGap``, ``Conformal``, ``LearnedExit``) is fitted on ``fit_on`` and
    certified on ``cal``. Each entry: accuracy, mean steps, speed-up, operations saved,
    ``over_oct`` (mean steps / mean OCT) and ``loss_vs_T`` (accuracy points given up
    against all T steps); risk-controlled ones add ``certified_loss``, ``delta``, the
    chosen ``value`` and its ``p_value``.
    """
    mean_oct = sc.optimal_cutoff(test).mean_steps
    acc_T = float(test.accuracy_per_step()[-1])
    out: dict[str, dict] = {}
    for family in cfg.policies:
        if family == "timestep":
            step = _timestep_within(test, reference)
            out[f"timestep_{step}"] = _row(sc.Timestep(step).evaluate(test), mean_oct, acc_T)
        for value in REPORTED.get(family, ()):
            policy = sc.cutoff.rule(family).with_param(value).fit(cal)
            out[f"{family}_{policy.param}{value:g}"] = _row(policy.evaluate(test), mean_oct, acc_T)
        if family == "topk":  # the SNNCutoff code's grid search, for comparison with published figures
            out["topk_grid_eps0"] = _row(sc.TopKGap(0.0, search="grid").fit(cal).evaluate(test), mean_oct, acc_T)
        rc = sc.RiskControl(sc.cutoff.rule(family), cfg.max_loss, cfg.delta)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sc.NotCertifiedWarning)  # reported as value None below
            rc.fit(cal, fit_on=fit_on)
        out[f"risk_{family}"] = _row(rc.evaluate(test), mean_oct, acc_T, certified_loss=rc.certified_loss_,
                                     delta=rc.delta, value=rc.value_, p_value=rc.p_value_, n_calibration=rc.n_test_)
    return out


def sweep_results(cal: sc.Trace, test: sc.Trace, families: tuple[str, ...] = POLICIES,
                  values: dict[str, tuple] | None = None) -> dict[str, list[dict]]:
    """Accuracy / mean-exit-step points of each rule over its parameter (``risk_grid`` by default), from traces."""
    out = {}
    for family in families:
        rule = sc.cutoff.rule(family)
        grid = (values or {}).get(rule.param) or rule.risk_grid(test.T)
        out[family] = [r.to_dict() for r in sc.sweep(rule, cal, test, grid)]
    return out


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point beats on both accuracy and mean steps."""
    best, front = -1.0, []
    for p in sorted(points, key=lambda r: (r["mean_steps"], -r["accuracy"])):
        if p["accuracy"] > best:
            front.append(p)
            best = p["accuracy"]
    return front
