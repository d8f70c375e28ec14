"""Independent references for every cutoff rule, written from the docstrings as plain loops.

Each rule's thresholds and exits are checked against small Python loops over steps,
samples and candidate thresholds that follow the documented definitions
(:mod:`snncutoff.stats`, :mod:`snncutoff.cutoff.functional`, the policies' module
docstrings), on inputs chosen to be hard: tied (integer-valued) gaps, float64 traces,
gaps exactly on grid points, rows whose softmax rounds to a tie, boundary N and alpha.
The expected values never come from the library's own helpers (``first_exit``,
``optimal_cutoff_steps``, the threshold searches ...): torch is used only for its
primitives (softmax) where the definition says "softmax" in the outputs' dtype.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import snncutoff as sc
from snncutoff import Confidence, Conformal, Entropy, LearnedExit, RiskControl, Stability, Timestep, TopKGap, Trace
from snncutoff.cutoff.functional import conformal_thresholds, exact_gap_thresholds, grid_gap_thresholds
from snncutoff.cutoff.risk import p_values, samples_needed

INF = math.inf


# ===================================================================== references
def ref_argmax(row) -> int:
    """First index of the maximum."""
    best = 0
    for c in range(1, len(row)):
        if row[c] > row[best]:
            best = c
    return best


def ref_gap(row):
    """Largest minus the largest of the others (a tied maximum gives 0), in the row's dtype."""
    c1 = ref_argmax(row)
    second = None
    for c in range(len(row)):
        if c != c1 and (second is None or row[c] > second):
            second = row[c]
    return row[c1] - second  # numpy scalars: the subtraction is done in the dtype


def ref_gaps(outputs: np.ndarray) -> np.ndarray:
    T, N, _ = outputs.shape
    out = np.empty((T, N), dtype=outputs.dtype)
    for t in range(T):
        for n in range(N):
            out[t, n] = ref_gap(outputs[t, n])
    return out


def ref_predictions(outputs: np.ndarray) -> list[list[int]]:
    return [[ref_argmax(outputs[t, n]) for n in range(outputs.shape[1])] for t in range(outputs.shape[0])]


def ref_oct(pred: list[list[int]], labels: list[int]) -> list[int]:
    """OCT_n = min {t in 1..T : prediction right at every step t..T}; T if wrong at T."""
    T, N = len(pred), len(labels)
    out = []
    for n in range(N):
        o = T
        for t in range(T, 0, -1):
            if all(pred[u - 1][n] == labels[n] for u in range(t, T + 1)):
                o = t
            else:
                break
        out.append(o)
    return out


def ref_settled_by_oct(oct_: list[int], T: int) -> list[list[bool]]:
    """Top-K exact search: sample n is settled at (0-based) step t when OCT_n <= t + 1."""
    return [[oct_[n] <= t + 1 for n in range(len(oct_))] for t in range(T)]


def ref_stably_correct(pred: list[list[int]], labels: list[int]) -> list[list[bool]]:
    """Right at t and at every later step (no forcing at T)."""
    T, N = len(pred), len(labels)
    return [[all(pred[u][n] == labels[n] for u in range(t, T)) for n in range(N)] for t in range(T)]


def ref_exact_beta(scores: np.ndarray, settled, eps: float) -> list[float]:
    """Smallest observed score b with #(unsettled, score > b) / #(score > b) <= eps (float64); +inf if none."""
    T, N = scores.shape
    betas = []
    for t in range(T):
        beta = INF
        for b in sorted({float(v) for v in scores[t]}):
            kept = [n for n in range(N) if float(scores[t, n]) > b]
            if kept and sum(1 for n in kept if not settled[t][n]) / len(kept) <= eps:
                beta = b
                break
        betas.append(beta)
    return betas


def ref_grid_beta(gaps: np.ndarray, settled, eps: float, bins: int = 100) -> list[float]:
    """SNNCutoff's grid: grid[m] = m * (max gap / bins) in the gaps' dtype; conf = settled / kept in float32
    (an empty bin never passes); the last grid value always passes; the first with conf >= 1 - eps (float32)."""
    dt = gaps.dtype.type
    T, N = gaps.shape
    disc = dt(gaps.max()) / dt(bins)
    grid = [dt(m) * disc for m in range(bins)]
    level = np.float32(1.0 - eps)
    betas = []
    for t in range(T):
        chosen = grid[-1]
        for m in range(bins - 1):
            kept = [n for n in range(N) if gaps[t, n] > grid[m]]
            if not kept:
                continue
            conf = np.float32(sum(1 for n in kept if settled[t][n])) / np.float32(len(kept))
            if conf >= level:
                chosen = grid[m]
                break
        betas.append(float(chosen))
    return betas


def ref_split_rank(N: int, alpha: float, divide_by: int = 1) -> int | None:
    """ceil((1 - alpha)(N + 1)) in exact arithmetic (alpha as written in decimal); None: above N (+inf)."""
    a = Fraction(str(alpha)) / divide_by
    k = max(1, math.ceil((1 - a) * (N + 1)))
    return k if k <= N else None


def ref_snncutoff_rank(N: int, alpha: float) -> int:
    """k = ceil(float32((1 - alpha)(N + 2))) - 1, among the N scores and one appended +inf."""
    return math.ceil(float(np.float32((1.0 - alpha) * (N + 2)))) - 1


def ref_exits(T: int, N: int, passes) -> list[int]:
    """1-based first step t whose passes(t, n) holds, T at the latest."""
    out = []
    for n in range(N):
        e = T
        for t in range(T):
            if passes(t, n):
                e = t + 1
                break
        out.append(e)
    return out


def ref_softmax64(row) -> list[float]:
    m = max(float(v) for v in row)
    e = [math.exp(float(v) - m) for v in row]
    z = sum(e)
    return [x / z for x in e]


def ref_norm_entropy(row) -> float:
    p = ref_softmax64(row)
    return -sum(q * math.log(q) for q in p if q > 0) / math.log(len(p))


def ref_runs(pred: list[list[int]]) -> list[list[int]]:
    """run[t][n]: steps in a row, ending at t, whose argmax is the one of step t."""
    T, N = len(pred), len(pred[0])
    runs = [[1] * N for _ in range(T)]
    for n in range(N):
        for t in range(1, T):
            runs[t][n] = runs[t - 1][n] + 1 if pred[t][n] == pred[t - 1][n] else 1
    return runs


def binom_cdf(k: int, n: int, a: float) -> float:
    """P(Bin(n, a) <= k), summed term by term."""
    return sum(math.comb(n, i) * a**i * (1 - a) ** (n - i) for i in range(k + 1))


def hb_p_value(c: int, n: int, a: float) -> float:
    """Hoeffding-Bentkus: min(exp(-n h(min(R, a), a)), e P(Bin(n, a) <= ceil(n R))), R = c / n."""
    r = min(c / n, a)
    h = (r * math.log(r / a) if r > 0 else 0.0) + (1 - r) * math.log((1 - r) / (1 - a))
    return min(math.exp(-n * h), math.e * binom_cdf(c, n, a))  # the count is an integer: ceil(n R) = c


# ===================================================================== traces
def integer_trace(T: int, N: int, C: int, seed: int, dtype=torch.float32) -> Trace:
    """Small integer steps: tied maxima, tied gaps, gaps of 0."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (N,), generator=g)
    y = torch.randint(-1, 3, (T, N, C), generator=g).to(dtype)
    y[:, torch.arange(N), labels] += (torch.rand(T, N, generator=g) < 0.35).to(dtype)  # the label wins more often
    return Trace(y.cumsum(0), labels)


def smooth_trace(T: int, N: int, C: int, seed: int, dtype=torch.float32, signal: float = 0.7) -> Trace:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (N,), generator=g)
    y = torch.randn(T, N, C, generator=g, dtype=torch.float64) + signal * torch.nn.functional.one_hot(labels, C)
    return Trace(y.cumsum(0).to(dtype), labels)


TRACES = {
    "int32": lambda seed: integer_trace(6, 120, 4, seed),
    "int64": lambda seed: integer_trace(6, 120, 4, seed, torch.float64),
    "smooth64": lambda seed: smooth_trace(7, 110, 5, seed, torch.float64),
    "smooth32": lambda seed: smooth_trace(5, 100, 3, seed),
}


def unpack(trace: Trace):
    out = trace.outputs.numpy()
    labels = trace.labels.tolist()
    return out, labels, ref_predictions(out)


# ===================================================================== TopKGap, exact search
@pytest.mark.parametrize("kind", list(TRACES))
def test_topk_exact_thresholds_and_exits_match_the_loop(kind):
    cal, test = TRACES[kind](1), TRACES[kind](2)
    out, labels, pred = unpack(cal)
    gaps = ref_gaps(out)
    settled = ref_settled_by_oct(ref_oct(pred, labels), cal.T)
    tout = test.outputs.numpy()
    tgaps = ref_gaps(tout)
    tpred = ref_predictions(tout)
    epsilons = [0.0, 0.05, 0.1, 0.25, 0.5]
    swept = sc.sweep(TopKGap(), cal, test, epsilons)
    for eps, r in zip(epsilons, swept):
        beta = ref_exact_beta(gaps, settled, eps)
        p = TopKGap(eps).fit(cal)
        assert p.beta_.tolist() == beta, (kind, eps)
        assert p.beta_.dtype == cal.outputs.dtype
        exits = ref_exits(test.T, test.N, lambda t, n: tgaps[t, n] > beta[t])  # noqa: B023
        assert p.evaluate(test).exit_step.tolist() == exits, (kind, eps)
        assert r.exit_step.tolist() == exits, (kind, eps)
        assert r.predictions.tolist() == [tpred[e - 1][n] for n, e in enumerate(exits)]
        # on line, step by step, with the forced exit at the last step
        for t in range(test.T):
            expect = [bool(tgaps[t, n] > beta[t]) or t == test.T - 1 for n in range(test.N)]
            assert p.exit_now(t, test.outputs[t]).tolist() == expect


def test_topk_exact_share_exactly_epsilon_passes():
    # four samples at step 0 with gaps 1, 2, 3, 4; the one with gap 3 is not settled (wrong at step 0)
    # beta = 1 keeps {2, 3, 4}: 1 / 3 unsettled; beta = 2 keeps {3, 4}: 1 / 2; beta = 3 keeps {4}: 0
    out = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [4.0, 0.0]],
                        [[2.0, 0.0], [4.0, 0.0], [9.0, 3.0], [8.0, 0.0]]])
    tr = Trace(out, torch.tensor([0, 0, 0, 0]))
    assert TopKGap(1 / 3).fit(tr).beta_[0].item() == 1.0  # share == epsilon passes (<=)
    assert TopKGap(0.33).fit(tr).beta_[0].item() == 3.0
    assert TopKGap(0.5).fit(tr).beta_[0].item() == 1.0
    assert TopKGap(0.0).fit(tr).beta_[0].item() == 3.0
    # beta = 4 would keep nobody: never a candidate, so a step where only it remains is +inf
    wrong = Trace(torch.tensor([[[0.0, 1.0]], [[0.0, 2.0]]]), torch.tensor([0]))
    assert TopKGap(0.0).fit(wrong).beta_.tolist() == [INF, INF]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_search_on_signed_scores_with_ties(dtype):
    # LearnedExit's scores are signed: negative values, -0.0 and +0.0, ties, in both dtypes
    g = torch.Generator().manual_seed(5)
    scores = (torch.randint(-6, 6, (5, 80), generator=g) * 0.5).to(dtype)
    scores[:, ::9] = -0.0
    scores[:, 1::11] = torch.randn(5, 8, generator=g).to(dtype)[:, : scores[:, 1::11].shape[1]] * 100
    settled = torch.rand(5, 80, generator=g) < 0.7
    epsilons = [0.0, 0.1, 0.2, 0.25, 0.4]
    got = exact_gap_thresholds(scores, settled, epsilons)
    assert got.dtype == dtype and got.shape == (5, 5)
    s = scores.numpy()
    flags = settled.tolist()
    for i, eps in enumerate(epsilons):
        assert got[i].tolist() == ref_exact_beta(s, flags, eps), eps


# ===================================================================== TopKGap, grid search
@pytest.mark.parametrize("kind", list(TRACES))
@pytest.mark.parametrize("bins", [100, 7])
def test_topk_grid_thresholds_and_exits_match_the_loop(kind, bins):
    cal, test = TRACES[kind](3), TRACES[kind](4)
    out, labels, _ = unpack(cal)
    gaps = ref_gaps(out)
    soft = torch.softmax(cal.outputs, -1).numpy()
    settled = ref_stably_correct(ref_predictions(soft), labels)
    tgaps = ref_gaps(test.outputs.numpy())
    epsilons = [0.0, 0.1, 0.3]
    swept = sc.sweep(TopKGap(search="grid", bins=bins), cal, test, epsilons)
    for eps, r in zip(epsilons, swept):
        beta = ref_grid_beta(gaps, settled, eps, bins)
        p = TopKGap(eps, search="grid", bins=bins).fit(cal)
        assert p.beta_.tolist() == beta, (kind, eps)
        exits = ref_exits(test.T, test.N, lambda t, n: tgaps[t, n] > beta[t])  # noqa: B023
        assert r.exit_step.tolist() == exits and p.evaluate(test).exit_step.tolist() == exits


def test_grid_gaps_exactly_on_grid_points():
    # integer gaps with max gap 10 and 10 bins: grid = 0, 1, ..., 9, so most gaps lie on a grid point;
    # a sample counts at grid[m] only when gap > grid[m] (strictly)
    gaps = torch.tensor([[10.0, 3.0, 3.0, 1.0, 0.0, 5.0, 7.0, 2.0],
                         [4.0, 4.0, 8.0, 6.0, 1.0, 9.0, 2.0, 3.0]])
    settled = torch.tensor([[True, True, False, True, False, True, True, False],
                            [True, False, True, True, True, True, False, True]])
    for dtype in (torch.float32, torch.float64):
        got = grid_gap_thresholds(gaps.to(dtype), settled, [0.0, 0.2, 0.25, 0.5], bins=10)
        for i, eps in enumerate([0.0, 0.2, 0.25, 0.5]):
            assert got[i].tolist() == ref_grid_beta(gaps.to(dtype).numpy(), settled.tolist(), eps, 10), eps
    # by hand, step 0, eps = 0: grid 2 keeps {10, 3, 3, 5, 7} with the second 3 unsettled; grid 3 keeps
    # {10, 5, 7}, all settled -> 3 (a gap on the grid point is not above it)
    assert grid_gap_thresholds(gaps, settled, [0.0], bins=10)[0, 0].item() == 3.0


def test_grid_settles_on_the_softmax_argmax():
    # sample 0: outputs [0, 1e-8], label 1: the argmax of the outputs is right, but the softmax rounds to
    # [0.5, 0.5] whose argmax (first index) is 0: for the grid it is never settled
    rows = [[0.0, 1e-8]] + [[0.0, 3.0 + i] for i in range(7)]
    out = torch.tensor([rows, [[0.0, 2e-8]] + [[0.0, 6.0 + i] for i in range(7)]])
    tr = Trace(out, torch.ones(8, dtype=torch.long))
    assert tr.predictions()[0, 0].item() == 1 and torch.softmax(out[0, 0], -1).argmax().item() == 0
    soft = torch.softmax(out, -1).numpy()
    settled = ref_stably_correct(ref_predictions(soft), tr.labels.tolist())
    assert settled[0][0] is False and settled[0][1] is True
    beta = ref_grid_beta(ref_gaps(out.numpy()), settled, 0.0)
    assert beta[0] > 0.0  # grid 0 keeps the unsettled sample 0
    assert TopKGap(0.0, search="grid").fit(tr).beta_.tolist() == beta


# ===================================================================== Conformal
def test_conformal_thresholds_split_snncutoff_and_bonferroni_from_their_ranks():
    g = torch.Generator().manual_seed(8)
    for N, T in ((29, 3), (9, 4), (19, 4), (8, 2), (28, 5), (40, 2)):
        scores = torch.rand(T, N, generator=g, dtype=torch.float64) * 5
        ordered = [sorted(scores[t].tolist()) + [INF] for t in range(T)]
        alphas = [0.0, 0.05, 0.1, 0.3, 0.4, 0.7, 0.9]
        split = conformal_thresholds(scores, alphas, "split")
        snn_alphas = [a for a in alphas if ref_snncutoff_rank(N, a) >= 1]
        snn = conformal_thresholds(scores, snn_alphas, "snncutoff")
        for i, a in enumerate(alphas):
            k = ref_split_rank(N, a)
            assert split[i].tolist() == [ordered[t][k - 1] if k else INF for t in range(T)], (N, a)
        for i, a in enumerate(snn_alphas):
            k = ref_snncutoff_rank(N, a)
            assert snn[i].tolist() == [ordered[t][k - 1] for t in range(T)], (N, a)
    # the boundary cases named: 0.3 * 30 = 9.000000000000002, 0.3 * 10 = 3.0000000000000004 in floating point
    assert ref_split_rank(29, 0.7) == 9 and ref_split_rank(9, 0.7) == 3
    assert ref_snncutoff_rank(28, 0.7) == 8 and ref_snncutoff_rank(8, 0.7) == 2


def conformal_trace(T: int, N: int, seed: int) -> Trace:
    return smooth_trace(T, N, 4, seed, signal=1.0)


def ref_true_scores(trace: Trace) -> list[list[float]]:
    soft = torch.softmax(trace.outputs, -1).double()
    return [[-math.log(float(soft[t, n, trace.labels[n]]) + 1e-5) for n in range(trace.N)] for t in range(trace.T)]


@pytest.mark.parametrize("correction", ["none", "bonferroni"])
@pytest.mark.parametrize("N,alpha", [(29, 0.7), (19, 0.4), (39, 0.2), (59, 0.1)])
def test_conformal_fit_and_exits_match_the_loop(correction, N, alpha):
    T = 4
    cal, test = conformal_trace(T, N, 11), conformal_trace(T, 50, 12)
    k = ref_split_rank(N, alpha, T if correction == "bonferroni" else 1)
    s = ref_true_scores(cal)
    q = [sorted(s[t])[k - 1] if k else INF for t in range(T)]
    p = Conformal(alpha, correction=correction).fit(cal)
    assert p.quantile_.tolist() == pytest.approx(q, rel=1e-5)
    # the rank, exactly: the threshold is the k-th smallest of the library's own (float32) scores
    own = -torch.log(torch.softmax(cal.outputs, -1).gather(-1, cal.labels.view(1, -1, 1).expand(T, -1, 1))[..., 0]
                     + 1e-5)
    assert p.quantile_.tolist() == [own[t].sort().values[k - 1].item() if k else INF for t in range(T)]
    for size in (1, 2, 3):  # 3: the (k + 1)-th smallest of C = 4 scores is the largest
        ps = Conformal(alpha, max_set_size=size, correction=correction).fit(cal)
        soft = torch.softmax(test.outputs, -1).double()
        qt = ps.quantile_.tolist()

        def passes(t, n, qt=qt, soft=soft, size=size):
            members = sum(1 for c in range(test.C) if -math.log(float(soft[t, n, c]) + 1e-5) < qt[t])
            return members <= size

        exits = ref_exits(T, test.N, passes)
        assert ps.evaluate(test).exit_step.tolist() == exits
        assert sc.sweep(Conformal(max_set_size=size, correction=correction), cal, test, [alpha])[0] \
            .exit_step.tolist() == exits


def test_bonferroni_exact_thresholds():
    # N = 19, T = 4, alpha = 0.4: without correction the ceil(0.6 * 20) = 12th smallest score; with
    # Bonferroni alpha / T = 0.1 per step: the ceil(0.9 * 20) = 18th
    labels = torch.zeros(19, dtype=torch.long)
    # logits [-(0.3 n + 0.05 t), 0]: the label-0 nonconformity grows with n, distinct at every step
    logit = -(0.3 * torch.arange(19.0).view(1, -1) + 0.05 * torch.arange(4.0).view(-1, 1))
    out = torch.stack([logit, torch.zeros_like(logit)], dim=-1)
    tr = Trace(out, labels)
    s = ref_true_scores(tr)
    plain = Conformal(0.4).fit(tr).quantile_.tolist()
    bonf = Conformal(0.4, correction="bonferroni").fit(tr).quantile_.tolist()
    assert plain == pytest.approx([sorted(s[t])[11] for t in range(4)], rel=1e-5)
    assert bonf == pytest.approx([sorted(s[t])[17] for t in range(4)], rel=1e-5)
    # T = 2: alpha / 2 = 0.2 -> ceil(0.8 * 20) = 16th
    two = Conformal(0.4, correction="bonferroni").fit(Trace(out[:2], labels)).quantile_.tolist()
    assert two == pytest.approx([sorted(s[t])[15] for t in range(2)], rel=1e-5)


# ===================================================================== Confidence
@pytest.mark.parametrize("kind", list(TRACES))
def test_confidence_exits_match_the_loop(kind):
    tr = TRACES[kind](6)
    soft = torch.softmax(tr.outputs, -1).numpy()
    epsilons = [0.0, 1e-4, 1e-3, 0.01, 0.1, 0.3]
    swept = sc.sweep(Confidence(), None, tr, epsilons)
    for eps, r in zip(epsilons, swept):
        level = soft.dtype.type(1.0 - eps)  # compared in the outputs' dtype

        def passes(t, n, level=level):
            return max(soft[t, n]) > level

        exits = ref_exits(tr.T, tr.N, passes)
        assert Confidence(eps).evaluate(tr).exit_step.tolist() == exits
        assert r.exit_step.tolist() == exits
        for t in range(tr.T):  # on line
            assert Confidence(eps).exit_now(t, tr.outputs[t]).tolist() == [passes(t, n) for n in range(tr.N)]
    assert any(e < tr.T for e in swept[2].exit_step.tolist())  # very confident rows exist: 1e-3 matters


# ===================================================================== Entropy
def test_entropy_exits_match_the_loop():
    tr = smooth_trace(8, 150, 4, 13, signal=1.2)
    out = tr.outputs.numpy()
    score = [[1.0 - ref_norm_entropy(out[t, n]) for n in range(tr.N)] for t in range(tr.T)]
    epsilons = [0.05, 0.2, 0.5, 0.8]
    swept = sc.sweep(Entropy(), None, tr, epsilons)
    checked = 0
    for eps, r in zip(epsilons, swept):
        exits = ref_exits(tr.T, tr.N, lambda t, n: score[t][n] > 1.0 - eps)  # noqa: B023
        got = Entropy(eps).evaluate(tr).exit_step.tolist()
        assert r.exit_step.tolist() == got
        for n in range(tr.N):
            near = any(abs(score[t][n] - (1.0 - eps)) < 1e-5 for t in range(tr.T))
            if not near:  # rounding in float32 cannot decide these
                assert got[n] == exits[n], (eps, n)
                checked += 1
        for t in range(tr.T):  # on line
            now = Entropy(eps).exit_now(t, tr.outputs[t]).tolist()
            for n in range(tr.N):
                if abs(score[t][n] - (1.0 - eps)) >= 1e-5:
                    assert now[n] == (score[t][n] > 1.0 - eps)
    assert checked > 0.95 * len(epsilons) * tr.N
    assert len({tuple(r.exit_step.tolist()) for r in swept}) == len(epsilons)  # every epsilon matters


def test_entropy_is_strict_and_compared_in_float32():
    # [200, 0, 0]: softmax [1, 0, 0] exactly in float32, entropy 0, score 1: never > 1 - 0
    out = torch.tensor([[[200.0, 0.0, 0.0], [1.0, 0.0, 0.0]], [[400.0, 0.0, 0.0], [2.0, 0.0, 0.0]]])
    tr = Trace(out, torch.tensor([0, 0]))
    assert Entropy(0.0).evaluate(tr).exit_step.tolist() == [2, 2]
    assert Entropy(0.0).exit_now(0, out[0]).tolist() == [False, False]
    # a score s in float32 (row [1, 0, 0] at step 0): epsilon = 1 - s gives the threshold s itself
    s = (1.0 - tr.normalized_entropy()[0, 1]).item()
    assert 0.0 < s < 1.0 and abs(s - (1.0 - ref_norm_entropy(out[0, 1].numpy()))) < 1e-6
    eps_eq = 1.0 - s
    assert Entropy(eps_eq).exit_now(0, out[0])[1].item() is False  # s > s does not hold
    assert Entropy(eps_eq).evaluate(tr).exit_step.tolist()[1] == 2
    # 1 - eps in float64 just below s, but the same float32: still no exit (the compare is in float32)
    eps_f64 = eps_eq + 1e-10
    assert np.float32(1.0 - eps_f64) == np.float32(s) and 1.0 - eps_f64 < s
    assert Entropy(eps_f64).exit_now(0, out[0])[1].item() is False
    assert Entropy(eps_f64).evaluate(tr).exit_step.tolist()[1] == 2
    assert sc.sweep(Entropy(), None, tr, [eps_f64])[0].exit_step.tolist()[1] == 2
    below = float(np.nextafter(np.float32(s), np.float32(0)))
    assert Entropy(1.0 - below).exit_now(0, out[0])[1].item() is True
    assert Entropy(1.0 - below).evaluate(tr).exit_step.tolist()[1] == 1


# ===================================================================== Stability
@pytest.mark.parametrize("steps,min_gap", [(1, 0.0), (2, 0.0), (3, 0.0), (2, 1.0), (4, 2.5)])
def test_stability_exits_match_the_loop(steps, min_gap):
    tr = integer_trace(8, 90, 3, 17)
    out = tr.outputs.numpy()
    pred = ref_predictions(out)
    runs = ref_runs(pred)
    gaps = ref_gaps(out)

    def passes(t, n):
        return runs[t][n] >= steps and float(gaps[t, n]) > min_gap

    exits = ref_exits(tr.T, tr.N, passes)
    p = Stability(steps, min_gap)
    assert p.evaluate(tr).exit_step.tolist() == exits
    # on line, one step at a time, carrying the state
    state = p.initial_state(tr.N)
    for t in range(tr.T):
        assert p.exit_now(t, tr.outputs[t], state).tolist() == [passes(t, n) for n in range(tr.N)], t
    # per-row blocks of 3 steps from each row's own step, after its earlier steps were seen one at a time
    fitted = Stability(steps, min_gap).fit(tr)
    t0 = torch.arange(tr.N) % (tr.T - 2)
    state = fitted.initial_state(tr.N)
    for n in range(tr.N):
        for t in range(int(t0[n])):
            fitted.exit_now(t, tr.outputs[t, n:n + 1], state[n:n + 1])
    rows = torch.arange(tr.N)
    block = fitted.exit_block(t0, torch.stack([tr.outputs[t0 + j, rows] for j in range(3)]), state)
    for j in range(3):
        for n in range(tr.N):
            t = int(t0[n]) + j
            assert block[j, n].item() == (passes(t, n) or t == tr.T - 1), (j, n)


def test_stability_hand_worked():
    # argmax 0, 0, 1, 1, 1 (ties take the first index: step 1 is [2, 2] -> 0) and gaps 1, 0, 1, 2, 3
    out = torch.tensor([[[1.0, 0.0]], [[2.0, 2.0]], [[2.0, 3.0]], [[2.0, 4.0]], [[2.0, 5.0]]])
    tr = Trace(out, torch.tensor([1]))
    assert Stability(1).evaluate(tr).exit_step.tolist() == [1]
    assert Stability(2).evaluate(tr).exit_step.tolist() == [4]  # step 2 has run 2 but a tied gap 0
    assert Stability(3).evaluate(tr).exit_step.tolist() == [5]
    assert Stability(2, min_gap=2.0).evaluate(tr).exit_step.tolist() == [5]  # gap must exceed 2
    assert Stability(2, min_gap=1.5).evaluate(tr).exit_step.tolist() == [4]


# ===================================================================== Timestep
def test_timestep_per_row_blocks():
    tr = smooth_trace(6, 12, 3, 19)
    for step in (1, 3, 6):
        p = Timestep(step).fit(tr)
        assert p.evaluate(tr).exit_step.tolist() == [step] * 12
        t0 = torch.arange(12) % 4
        block = p.exit_block(t0, torch.stack([tr.outputs[t0 + j, torch.arange(12)] for j in range(3)]))
        assert block.tolist() == [[int(t0[n]) + j + 1 >= step or int(t0[n]) + j == 5 for n in range(12)]
                                  for j in range(3)]


# ===================================================================== LearnedExit
LEARNED_FEATURES = ("gap_per_step", "max_softmax", "max_softmax_of_mean", "entropy", "log_run", "run_share",
                    "progress", "gap_growth")


@pytest.mark.parametrize("names", [None, LEARNED_FEATURES, ("gap_growth", "progress", "log_run")],
                         ids=["default", "all", "three"])
def test_learned_exit_scores_and_thresholds_match_the_loop(names):
    cal = smooth_trace(6, 120, 4, 23, signal=0.5)
    p = (LearnedExit(0.1) if names is None else LearnedExit(0.1, features=names)).fit(cal)
    names = tuple(getattr(p, "features", LEARNED_FEATURES))
    assert set(names) <= set(LEARNED_FEATURES)
    out = cal.outputs.numpy()
    T, N = cal.T, cal.N
    pred = ref_predictions(out)
    runs = ref_runs(pred)
    gaps = ref_gaps(out)
    feats = []  # [T][N][F] in the order of the policy's features
    for t in range(T):
        s = t + 1
        row = []
        for n in range(N):
            o = out[t, n]
            g = float(gaps[t, n])
            before = float(gaps[t - 1, n]) if t else 0.0
            value = {"gap_per_step": g / s, "max_softmax": max(ref_softmax64(o)),
                     "max_softmax_of_mean": max(ref_softmax64([float(v) / s for v in o])),
                     "entropy": ref_norm_entropy(o), "log_run": math.log(runs[t][n]), "run_share": runs[t][n] / s,
                     "progress": s / T, "gap_growth": g - before}
            row.append([value[f] for f in names])
        feats.append(row)
    flat = [f for row in feats for f in row]
    F = len(names)
    mean = [sum(f[i] for f in flat) / len(flat) for i in range(F)]
    std = [math.sqrt(sum((f[i] - mean[i]) ** 2 for f in flat) / len(flat)) for i in range(F)]
    std = [v if v > 0 else 1.0 for v in std]
    assert p.feature_mean_.tolist() == pytest.approx(mean, rel=1e-5, abs=1e-6)
    assert p.feature_scale_.tolist() == pytest.approx(std, rel=1e-4, abs=1e-6)
    w, b = p.coef_.tolist(), p.intercept_
    z = [[b + sum(w[i] * (feats[t][n][i] - mean[i]) / std[i] for i in range(F)) for n in range(N)] for t in range(T)]
    lib = p._trace_scores(cal)
    assert lib.dtype == torch.float64
    assert lib.flatten().tolist() == pytest.approx([v for row in z for v in row], abs=1e-4)
    # the thresholds: the exact search on those scores with OCT-settled samples
    settled = ref_settled_by_oct(ref_oct(pred, cal.labels.tolist()), T)
    assert p.thresholds_.tolist() == ref_exact_beta(lib.numpy(), settled, 0.1)
    thr = p.thresholds_.tolist()
    zl = lib.tolist()
    exits = ref_exits(T, N, lambda t, n: zl[t][n] > thr[t])
    assert p.evaluate(cal).exit_step.tolist() == exits
    assert any(e < T for e in exits)
    state = p.initial_state(N)
    for t in range(T):
        assert p.exit_now(t, cal.outputs[t], state).tolist() == [zl[t][n] > thr[t] or t == T - 1 for n in range(N)]


# ===================================================================== RiskControl
def _trace_from_rows(rows: list[list[list[float]]], label: int = 0) -> Trace:
    """Cumulative outputs of each sample, ``rows[n][t] = [C values]`` -> a [T, N, C] trace."""
    out = torch.tensor(rows).permute(1, 0, 2).contiguous()
    return Trace(out, torch.full((len(rows),), label, dtype=torch.long))


# T = 3, C = 2, label 0. Predictions per step of each kind:
RIGHT = [[2.0, 0.0], [4.0, 0.0], [6.0, 0.0]]  # 0 0 0
LATE = [[0.0, 1.0], [0.0, 2.0], [3.0, 2.0]]  # 1 1 0: wrong at steps 1 and 2, right at T
MID = [[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]]  # 1 0 0: wrong at step 1 only
NEVER = [[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]]  # 1 1 1: wrong at every step


def timestep_case() -> Trace:
    return _trace_from_rows([RIGHT] * 15 + [LATE] + [MID] * 2 + [NEVER] * 2)


def test_risk_control_timestep_hand_worked_relative_loss():
    tr = timestep_case()
    n, a = 20, 0.2
    # members, with the delayed start: (start 3, step 3), (2, 3), (1, 3), then (1, 2), (1, 1)
    # flips (wrong at exit, right at T): 0, 0, 0, 1 (LATE at step 2), 3 (LATE + MID at step 1)
    p0, p1, p3 = binom_cdf(0, n, a), binom_cdf(1, n, a), binom_cdf(3, n, a)
    assert p0 <= 0.1 and p1 <= 0.1 < p3
    rc = RiskControl(Timestep(), max_loss=a, delta=0.1).fit(tr)
    assert (rc.value_, rc.start_, rc.n_test_) == (2, 1, 20)
    assert rc.p_value_ == pytest.approx(p1, rel=1e-9)
    assert rc.p_values_ == pytest.approx([p0, p0, p0, p1, p3], rel=1e-9)
    assert rc.risks_ == [0.0, 0.0, 0.0, 1 / 20, 3 / 20]
    assert rc.certified_loss_ == a
    assert rc.evaluate(tr).exit_step.tolist() == [2] * 20
    # Hoeffding-Bentkus is more conservative: flips 1 of 20 gives a p-value above 0.1
    assert hb_p_value(0, n, a) <= 0.1 < hb_p_value(1, n, a)
    hb = RiskControl(Timestep(), max_loss=a, delta=0.1, method="hb").fit(tr)
    assert (hb.value_, hb.start_) == (3, 1)
    assert hb.p_values_ == pytest.approx([hb_p_value(c, n, a) for c in (0, 0, 0, 1)], rel=1e-9)


def test_risk_control_timestep_hand_worked_absolute_loss():
    tr = timestep_case()
    n, a = 20, 0.3
    # errors at exit: 2 (NEVER) at step 3; 3 (NEVER + LATE) at step 2
    p2, p3 = binom_cdf(2, n, a), binom_cdf(3, n, a)
    assert p2 <= 0.1 < p3
    rc = RiskControl(Timestep(), max_loss=a, delta=0.1, loss="absolute").fit(tr)
    assert (rc.value_, rc.start_) == (3, 1)
    assert rc.p_values_ == pytest.approx([p2, p2, p2, p3], rel=1e-9)
    assert rc.risks_ == [2 / 20, 2 / 20, 2 / 20, 3 / 20]
    with pytest.warns(sc.NotCertifiedWarning):
        none = RiskControl(Timestep(), max_loss=0.2, delta=0.1, loss="absolute").fit(tr)  # p(2; 20, .2) > .1
    assert none.value_ is None and none.start_ is None and none.certified_loss_ is None
    assert none.p_value_ == pytest.approx(binom_cdf(2, 20, 0.2), rel=1e-9)
    assert none.evaluate(tr).exit_step.tolist() == [3] * 20


def test_risk_control_stops_at_the_first_failure():
    tr = timestep_case()
    # grid 3, 1, 2: step 1 fails (3 flips), so step 2 is never tested although it would pass
    rc = RiskControl(Timestep(), max_loss=0.2, delta=0.1, grid=[3, 1, 2]).fit(tr)
    assert (rc.value_, rc.start_) == (3, 1)
    assert len(rc.p_values_) == 4 and rc.risks_ == [0.0, 0.0, 0.0, 3 / 20]


def test_risk_control_delayed_start_hand_worked():
    # Confidence exits when max softmax > 1 - 0.3 = 0.7: RIGHT is confident at every step; EARLY is
    # confidently wrong at step 1 ([0, 3]: 0.95) and confidently right from step 2 ([5, 3]: 0.88)
    early = [[0.0, 3.0], [5.0, 3.0], [7.0, 3.0]]
    tr = _trace_from_rows([RIGHT] * 17 + [early] * 3)
    n, a = 20, 0.2
    p0, p3 = binom_cdf(0, n, a), binom_cdf(3, n, a)
    rc = RiskControl(Confidence(), max_loss=a, delta=0.1, grid=[0.3, 0.5]).fit(tr)
    # members (3, 0.3): 0 flips; (2, 0.3): 0 flips; (1, 0.3): 3 flips -> fails: keep (2, 0.3)
    assert (rc.value_, rc.start_) == (0.3, 2)
    assert rc.p_values_ == pytest.approx([p0, p0, p3], rel=1e-9) and rc.risks_ == [0.0, 0.0, 3 / 20]
    thr = rc.thresholds_.tolist()
    assert math.isnan(thr[0]) and thr[1:] == [0.7, 0.7]
    assert rc.evaluate(tr).exit_step.tolist() == [2] * 20
    assert rc.exit_block(0, tr.outputs).tolist() == [[False] * 20, [True] * 20, [True] * 20]
    # without the delay the first member already fails: nothing certified, every sample runs to T
    with pytest.warns(sc.NotCertifiedWarning):
        flat = RiskControl(Confidence(), max_loss=a, delta=0.1, grid=[0.3, 0.5], delay=False).fit(tr)
    assert flat.value_ is None and flat.certified_loss_ == 0.0
    assert flat.p_value_ == pytest.approx(p3, rel=1e-9)
    assert flat.evaluate(tr).exit_step.tolist() == [3] * 20


def test_p_values_and_samples_needed_against_the_formulas():
    for n, a in ((20, 0.2), (50, 0.05), (460, 0.005), (7, 0.4)):
        counts = list(range(0, min(n, 12)))
        binom = p_values(torch.tensor(counts), n, a, "binomial")
        hb = p_values(torch.tensor(counts), n, a, "hb")
        for c, pb, ph in zip(counts, binom, hb):
            assert pb == pytest.approx(binom_cdf(c, n, a), rel=1e-9, abs=1e-300)
            assert ph == pytest.approx(hb_p_value(c, n, a), rel=1e-9, abs=1e-300)
            assert ph >= pb * (1 - 1e-12) or c == 0  # HB is never the smaller, except both (1 - a)^n at 0
    for a, delta in ((0.005, 0.1), (0.2, 0.1), (0.05, 0.05), (0.3, 0.01)):
        for method in ("binomial", "hb"):
            need = 1
            while (binom_cdf(0, need, a) if method == "binomial" else hb_p_value(0, need, a)) > delta:
                need += 1
            assert samples_needed(a, delta, method) == need, (a, delta, method)


def test_risk_control_sweep_over_max_loss_matches_the_hand_count():
    tr = timestep_case()
    # flips 0, 0, 0, 1, 3 (see above); at delta 0.2: P(Bin(20, .2) <= 3) = 0.41 fails, P(Bin(20, .3) <= 3) passes
    assert binom_cdf(1, 20, 0.2) <= 0.2 < binom_cdf(3, 20, 0.2) and binom_cdf(3, 20, 0.3) <= 0.2
    swept = sc.sweep(RiskControl(Timestep(), max_loss=0.3, delta=0.2), tr, tr, [0.2, 0.3])
    assert [r.exit_step.tolist() for r in swept] == [[2] * 20, [1] * 20]
    single = RiskControl(Timestep(), max_loss=0.3, delta=0.2).fit(tr)
    assert (single.value_, single.start_) == (1, 1)
