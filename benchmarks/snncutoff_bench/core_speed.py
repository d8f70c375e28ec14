"""Speed of the core's Top-K calibration against a straightforward loop, and of each rule's on-line decision.

The baseline is the SNNCutoff procedure written the obvious way: ``topk`` gaps, a
softmax argmax, then a Python loop over 100 grid thresholds and T steps, each
counting samples. snncutoff's ``TopKGap(search="exact")`` replaces the loops by one
sort and cumulative counts per step, and reads each trace once for its top-2 gaps
(the compiled kernel of :mod:`snncutoff._native` where it was built; ``native_kernel``
says whether it was). Both run on the same synthetic traces in the same process; the
figures are ratios measured in that one run.

:func:`decision_costs` times what early exit pays per step for a decision: each rule's
``exit_now`` on one step's cumulative outputs of a batch, against ``TopKGap`` on the same
batch in the same run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from snncutoff import Confidence, Conformal, Entropy, LearnedExit, Stability, TopKGap, Trace, _native, sweep


def synthetic_trace(T: int, N: int, C: int, seed: int) -> Trace:
    """A trace whose true class drifts upward over time (cumulative, float32)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (N,), generator=g)
    y = torch.randn(T, N, C, generator=g)
    y[:, torch.arange(N), labels] += 0.35
    return Trace(y.cumsum_(0), labels)


def loop_grid_beta(cal: Trace, epsilon: float, bins: int = 100) -> torch.Tensor:
    """The SNNCutoff grid search written as a per-threshold, per-step Python loop (``[T]`` betas)."""
    out = cal.outputs
    T = out.shape[0]
    top = torch.topk(out, 2, dim=-1).values
    gaps = top[..., 0] - top[..., 1]
    pred = (out.softmax(-1).argmax(-1) == cal.labels).float()
    for t in range(T - 1, 0, -1):
        pred[t - 1] = pred[t] * pred[t - 1]
    disc = gaps.max() / bins
    betas, counts = [], []
    for m in range(bins):
        beta_m = m * disc
        row = []
        for t in range(T):
            kept = (gaps[t] > beta_m).float()
            row.append(torch.stack([(kept * pred[t]).sum(), kept.sum()]))
        betas.append(beta_m)
        counts.append(torch.stack(row))
    betas, counts = torch.stack(betas), torch.stack(counts)
    conf = counts[..., 0] / counts[..., 1]
    conf[-1] = 1.0
    return betas[(conf >= 1 - epsilon).float().argmax(0)]


def loop_grid_fit_evaluate(cal: Trace, test: Trace, epsilon: float, bins: int = 100) -> torch.Tensor:
    """The baseline: :func:`loop_grid_beta`, then the exit rule on the test trace (``[N]`` exit steps)."""
    beta = loop_grid_beta(cal, epsilon, bins)
    ttop = torch.topk(test.outputs, 2, dim=-1).values
    mask = ((ttop[..., 0] - ttop[..., 1]) > beta.view(-1, 1)).float()
    mask[-1] = 1.0
    return mask.argmax(0) + 1


@dataclass
class CoreSpeed:
    """Seconds for each variant, measured in one run (best of ``repeats``).

    ``construct``: ``Trace(outputs, labels)`` of one trace (validation included);
    ``exact_with_construction``: both traces constructed, then fit + evaluate;
    ``cold``: fit + evaluate on traces seen for the first time (Top-K gaps computed);
    ``warm``: again on the same traces, whose gaps are cached (what a sweep, a second
    epsilon or a second policy costs).
    """

    T: int
    N: int
    C: int
    baseline_s: float
    construct_s: float
    exact_with_construction_s: float
    exact_cold_s: float
    exact_warm_s: float
    grid_cold_s: float
    sweep_cold_s: float
    sweep_values: int
    native_kernel: bool

    def to_dict(self) -> dict:
        return {
            **self.__dict__,
            "exact_cold_speedup": self.baseline_s / self.exact_cold_s,
            "exact_with_construction_speedup": self.baseline_s / self.exact_with_construction_s,
            "exact_warm_speedup": self.baseline_s / self.exact_warm_s,
            "grid_cold_speedup": self.baseline_s / self.grid_cold_s,
            "sweep_over_single_fit_evaluate": self.sweep_cold_s / self.exact_cold_s,
        }


def _best(fn, repeats: int, fresh=None) -> float:
    """Best wall time of ``fn(*fresh())`` over ``repeats`` runs (``fresh`` is not timed)."""
    best = float("inf")
    for _ in range(repeats):
        args = fresh() if fresh else ()
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(T: int = 64, N: int = 50_000, C: int = 100, sweep_values: int = 50, repeats: int = 3,
            seed: int = 0) -> CoreSpeed:
    """Time the loop baseline, exact and grid searches and a ``sweep_values``-epsilon sweep."""
    cal, test = synthetic_trace(T, N, C, seed), synthetic_trace(T, N, C, seed + 1)
    eps = 0.01
    epsilons = [i / (2 * sweep_values) for i in range(sweep_values)]

    def fresh() -> tuple[Trace, Trace]:  # same tensors, new Trace objects: nothing cached
        return Trace(cal.outputs, cal.labels), Trace(test.outputs, test.labels)

    def exact(c: Trace, t: Trace):
        return TopKGap(eps, search="exact").fit(c).evaluate(t)

    def grid(c: Trace, t: Trace):
        return TopKGap(eps, search="grid").fit(c).evaluate(t)

    def swept(c: Trace, t: Trace):
        return sweep(TopKGap(search="exact"), c, t, epsilons)

    def constructed():  # a user's calibration on new outputs: both traces validated, then fit + evaluate
        return exact(Trace(cal.outputs, cal.labels), Trace(test.outputs, test.labels))

    # the grid reproduction must agree with the baseline before anything is timed
    if not torch.equal(grid(cal, test).exit_step, loop_grid_fit_evaluate(cal, test, eps)):
        raise AssertionError("grid search disagrees with the loop baseline")
    return CoreSpeed(
        T, N, C,
        baseline_s=_best(lambda: loop_grid_fit_evaluate(cal, test, eps), max(1, repeats - 1)),
        construct_s=_best(lambda: Trace(cal.outputs, cal.labels), repeats),
        exact_with_construction_s=_best(constructed, repeats),
        exact_cold_s=_best(exact, repeats, fresh),
        exact_warm_s=_best(lambda: exact(cal, test), repeats),
        grid_cold_s=_best(grid, repeats, fresh),
        sweep_cold_s=_best(swept, repeats, fresh),
        sweep_values=sweep_values,
        native_kernel=_native.available(),
    )


def decision_costs(batch: int = 256, C: int = 10, T: int = 32, repeats: int = 5, calls: int = 200,
                   seed: int = 0) -> dict[str, dict[str, float]]:
    """Microseconds per on-line decision of one step for ``batch`` samples, per rule, and the ratio to TopKGap.

    Every rule is fitted on the same synthetic calibration trace (``[T, 2000, C]``) and
    decides at step ``T - 2`` (thresholds there are finite, so every score is computed) on
    the cumulative outputs ``[batch, C]`` of a second trace; a rule with a per-sample state
    starts each decision from its state after the steps before (restoring it is timed
    too). ``repeats`` rounds, each timing ``calls`` decisions of every rule in turn; the
    medians over the rounds of each rule's time and of its ratio to TopKGap's in the same
    round (a slower stretch of the machine touches the rules of a round alike).
    """
    cal, test = synthetic_trace(T, 2000, C, seed), synthetic_trace(T, batch, C, seed + 1)
    rules = {"TopKGap(0.01)": TopKGap(0.01), "Confidence(0.001)": Confidence(0.001), "Entropy(0.01)": Entropy(0.01),
             "Conformal(0.05)": Conformal(0.05), "Stability(3)": Stability(3), "LearnedExit(0.01)": LearnedExit(0.01)}
    t = max(T - 2, 0)  # the last step before the forced exit (step 0 when T <= 2)
    out = test.outputs[t].contiguous()
    deciders = {}
    for name, rule in rules.items():
        rule.fit(cal)
        state = rule.initial_state(batch)
        if state is not None:  # the state after steps 0 .. t - 1, restored before each decision (runs <= t)
            for step in range(t):
                rule.exit_now(step, test.outputs[step].contiguous(), state)
            start = state.clone()

        def decide(rule=rule, state=state, start=start if state is not None else None):
            for _ in range(calls):
                if start is not None:
                    state.copy_(start)
                rule.exit_now(t, out, state)

        decide()  # warm-up
        deciders[name] = decide
    rounds = []
    for _ in range(repeats):
        rounds.append({name: _best(decide, 1) / calls * 1e6 for name, decide in deciders.items()})

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    costs = {name: median([r[name] for r in rounds]) for name in rules}
    ratios = {name: median([r[name] / r["TopKGap(0.01)"] for r in rounds]) for name in rules}
    return {name: {"us_per_decision": costs[name], "over_topk": ratios[name]} for name in rules}
