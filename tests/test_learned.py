"""LearnedExit: its feature choice, and scores that do not depend on which rows are decided together."""

from __future__ import annotations

import math

import pytest
import torch

from snncutoff import LearnedExit, Trace, _native
from snncutoff.cutoff import learned
from snncutoff.cutoff.learned import DEFAULT_FEATURES, FEATURES
from snncutoff.stats import max_softmax_of_mean


def drifting_trace(T: int, N: int, C: int, seed: int, ties: bool = False) -> Trace:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (N,), generator=g)
    y = torch.randn(T, N, C, generator=g)
    y[:, torch.arange(N), labels] += 0.6
    if ties:  # integer outputs: tied maxima and repeated gaps
        y = y.round()
    return Trace(y.cumsum(0), labels)


def test_max_softmax_of_mean_is_the_definition_in_float64():
    out = drifting_trace(5, 40, 7, 0).outputs.double()
    steps = torch.arange(1, 6).view(-1, 1)
    ref = [[max(math.exp(v / s) for v in row) / sum(math.exp(v / s) for v in row)
            for row in out[s - 1].tolist()] for s in range(1, 6)]
    got = max_softmax_of_mean(out, steps)
    assert got.flatten().tolist() == pytest.approx([v for row in ref for v in row], rel=1e-12)
    assert max_softmax_of_mean(out[2], 3).tolist() == pytest.approx(ref[2], rel=1e-12)


def test_max_softmax_of_mean_of_a_row_does_not_depend_on_the_other_rows():
    out = drifting_trace(3, 3001, 10, 1).outputs[2] * 7.3
    whole = max_softmax_of_mean(out, 3)
    alone = torch.cat([max_softmax_of_mean(out[i : i + 1], 3) for i in range(out.shape[0])])
    odd = torch.cat([max_softmax_of_mean(out[i : i + 13], 3) for i in range(0, out.shape[0], 13)])
    assert torch.equal(whole, alone) and torch.equal(whole, odd)


@pytest.mark.parametrize("feats", [DEFAULT_FEATURES, FEATURES, ("progress",), ("entropy", "progress", "log_run"),
                                   ("gap_growth",)])
@pytest.mark.parametrize("ties", [False, True])
def test_on_line_scores_equal_the_trace_scores_bit_for_bit(feats, ties):
    cal, test = drifting_trace(9, 300, 6, 2, ties), drifting_trace(9, 37, 6, 3, ties)
    p = LearnedExit(0.02, features=feats).fit(cal)
    whole = p._trace_scores(test)
    # one step at a time for every row, row by row, and blocks of steps with per-row starts
    state = p.initial_state(test.N)
    for t in range(test.T):
        states = p._state_scan(state, test.outputs[t : t + 1])
        state.copy_(states[-1])
        assert torch.equal(p._scores(test.outputs[t : t + 1], t, states)[0], whole[t])
    for n in (0, 17, 36):
        state = p.initial_state(1)
        rows = test.outputs[:, n : n + 1]
        states = p._state_scan(state, rows)
        assert torch.equal(p._scores(rows, 0, states)[:, 0], whole[:, n])
    t0 = torch.tensor([0] * 20 + [0] * 17)
    states = p._state_scan(p.initial_state(test.N), test.outputs[:4])
    assert torch.equal(p._scores(test.outputs[:4], t0, states), whole[:4])


def test_scores_are_the_logistic_model_on_the_stated_features():
    cal = drifting_trace(6, 200, 4, 4)
    p = LearnedExit(0.1, features=("gap_per_step", "max_softmax_of_mean", "progress")).fit(cal)
    out = cal.outputs.double()
    z = p._trace_scores(cal)
    w, b = p.coef_.tolist(), p.intercept_
    mu, sd = p.feature_mean_.tolist(), p.feature_scale_.tolist()
    for t in (0, 3, 5):
        s = t + 1
        for n in (0, 99, 199):
            row = sorted(out[t, n].tolist(), reverse=True)
            f = [(row[0] - row[1]) / s,
                 1.0 / sum(math.exp((v - row[0]) / s) for v in row),
                 s / cal.T]
            ref = b + sum(wi * (fi - m) / si for wi, fi, m, si in zip(w, f, mu, sd))
            assert float(z[t, n]) == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert list(p.feature_weights()) == ["gap_per_step", "max_softmax_of_mean", "progress"]


def test_feature_choice_is_validated():
    with pytest.raises(ValueError, match="distinct names"):
        LearnedExit(features=("gap_per_step", "entropy_of_mean"))
    with pytest.raises(ValueError, match="distinct names"):
        LearnedExit(features=())
    with pytest.raises(ValueError, match="distinct names"):
        LearnedExit(features=("log_run", "log_run"))
    with pytest.raises(TypeError, match="sequence of names"):
        LearnedExit(features="log_run")
    assert LearnedExit().features == DEFAULT_FEATURES
    assert LearnedExit(features=["entropy"]).with_param(0.1).features == ("entropy",)


def _runs_by_definition(argmax: list[int]) -> list[int]:
    """Steps in a row, ending at each step, whose argmax is the one at that step."""
    runs = []
    for t, a in enumerate(argmax):
        runs.append(runs[-1] + 1 if t and argmax[t - 1] == a else 1)
    return runs


def test_scores_are_the_logistic_model_on_every_feature_in_float64():
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 5, (120,), generator=g)
    steps = torch.randn(7, 120, 5, generator=g, dtype=torch.float64)
    steps[:, torch.arange(120), labels] += 0.4
    cal = Trace(steps.cumsum(0), labels)
    p = LearnedExit(0.1, features=FEATURES).fit(cal)
    z = p._trace_scores(cal)
    w, b = p.coef_.tolist(), p.intercept_
    mu, sd = p.feature_mean_.tolist(), p.feature_scale_.tolist()
    out = cal.outputs
    for n in (0, 41, 119):
        rows = [out[t, n].tolist() for t in range(cal.T)]
        argmax = [r.index(max(r)) for r in rows]  # first index on ties
        gaps = [sorted(r, reverse=True)[0] - sorted(r, reverse=True)[1] for r in rows]
        runs = _runs_by_definition(argmax)
        for t in range(cal.T):
            s, r = t + 1, rows[t]
            e = [math.exp(v - max(r)) for v in r]
            probs = [v / sum(e) for v in e]
            em = [math.exp((v - max(r)) / s) for v in r]
            f = {"gap_per_step": gaps[t] / s, "max_softmax": max(probs), "max_softmax_of_mean": 1.0 / sum(em),
                 "entropy": -sum(q * math.log(q) for q in probs if q > 0) / math.log(len(r)),
                 "log_run": math.log(runs[t]), "run_share": runs[t] / s, "progress": s / cal.T,
                 "gap_growth": gaps[t] - (gaps[t - 1] if t else 0.0)}
            ref = b + sum(wi * (f[name] - m) / si for name, wi, m, si in zip(FEATURES, w, mu, sd))
            assert float(z[t, n]) == pytest.approx(ref, rel=1e-9, abs=1e-9)


def _plan_without_kernel(p: LearnedExit):
    return p._plan()._replace(native=None)


@pytest.mark.skipif(not _native.available(), reason="the optional C kernel was not built (no compiler)")
@pytest.mark.parametrize("feats", [DEFAULT_FEATURES, FEATURES, ("progress",), ("log_run", "entropy", "max_softmax"),
                                   ("gap_growth", "run_share")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_kernel_and_its_torch_twin_give_the_same_bits(feats, dtype):
    cal = drifting_trace(12, 400, 7, 6, ties=True)
    test = Trace(drifting_trace(12, 301, 7, 7).outputs.to(dtype), drifting_trace(12, 301, 7, 7).labels)
    p = LearnedExit(0.05, features=feats).fit(cal)
    m = p._plan()
    runs, gaps, before = p._trace_history(test)
    stat = {"max_softmax": test.max_softmax(), "max_softmax_of_mean": test.max_softmax_of_mean(),
            "entropy": test.normalized_entropy()}
    s_rows = torch.randint(1, 13, (test.N,), generator=torch.Generator().manual_seed(8)).double()
    for t in (0, 5, 11):
        stats = [stat[name][t] for name in m.stat_names]
        for s in (float(t + 1), s_rows):
            native = _native.learned_scores(runs[t], gaps[t], before[t], stats, s, m.native)
            twin = learned._twin_scores(m, s, runs[t], gaps[t], before[t], stats)
            assert native is not None and native.dtype == twin.dtype == torch.float64
            assert torch.equal(native, twin)
    # runs longer than T (a state carried past the last step) read C's log, not the table
    long = runs[5] + test.T
    stats = [stat[name][5] for name in m.stat_names]
    native = _native.learned_scores(long, gaps[5], before[5], stats, 6.0, m.native)
    assert torch.allclose(native, learned._twin_scores(m, 6.0, long, gaps[5], before[5], stats), rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("per_row", [False, True])
def test_the_fused_on_line_step_equals_the_state_scan_and_scores(dtype, per_row):
    cal, test = drifting_trace(10, 300, 6, 9, ties=True), drifting_trace(10, 53, 6, 10, ties=True)
    p = LearnedExit(0.05).fit(cal)
    fused_state, plain_state = p.initial_state(test.N), p.initial_state(test.N)
    starts = torch.arange(test.N) % 3 if per_row else torch.zeros(test.N, dtype=torch.long)
    for t in range(test.T - 3):
        steps = starts + t
        out = test.outputs[steps, torch.arange(test.N)].unsqueeze(0).to(dtype)
        t0 = steps if per_row else t
        fused = p._fused_step(t0, out, fused_state)
        states = p._state_scan(plain_state, out)
        plain_state.copy_(states[-1])
        plain = p._scores(out, t0, states)
        if dtype == torch.float16 or not _native.available():  # the kernel takes float32 / float64 only
            assert fused is None
            fused_state.copy_(plain_state)
            continue
        assert torch.equal(fused_state, plain_state)
        assert torch.equal(fused, plain)
        # and the same as scoring in torch alone
        p._plan_cache = (p.coef_, _plan_without_kernel(p))
        assert torch.equal(p._scores(out, t0, states), plain)
        del p._plan_cache


def test_a_used_rule_pickles_and_copies_and_decides_the_same():
    import copy
    import pickle

    cal, test = drifting_trace(8, 300, 5, 11), drifting_trace(8, 40, 5, 12)
    p = LearnedExit(0.05).fit(cal)
    state = p.initial_state(test.N)
    p.exit_now(0, test.outputs[0], state)  # builds the caches (the C kernel's model among them)
    for q in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p)):
        assert torch.equal(q.evaluate(test).exit_step, p.evaluate(test).exit_step)
        s1, s2 = state.clone(), state.clone()
        assert torch.equal(q.exit_now(1, test.outputs[1], s1), p.exit_now(1, test.outputs[1], s2))
        assert torch.equal(s1, s2)


@pytest.mark.skipif(not _native.available(), reason="the optional C kernel was not built (no compiler)")
def test_a_state_that_is_not_a_run_state_gives_nan_or_the_twin_not_a_crash():
    cal = drifting_trace(6, 200, 4, 13)
    p = LearnedExit(0.05, features=("log_run", "gap_per_step")).fit(cal)
    m = p._plan()
    runs = torch.tensor([2.5, -3.0, -1e12, float("nan"), 1e300, 3.0], dtype=torch.float64)
    gaps, before = torch.ones(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    native = _native.learned_scores(runs, gaps, before, [], 4.0, m.native)
    twin = learned._twin_scores(m, 4.0, runs, gaps, before, [])
    assert torch.equal(native.isnan(), twin.isnan()) and native[1:4].isnan().all()
    assert torch.allclose(native[[0, 4, 5]], twin[[0, 4, 5]], rtol=1e-14, atol=0)
