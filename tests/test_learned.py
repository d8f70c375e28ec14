"""LearnedExit: its feature choice, and scores that do not depend on which rows are decided together."""

from __future__ import annotations

import math

import pytest
import torch

from snncutoff import LearnedExit, Trace
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
