"""Boundaries: dtype switches at T = 255 / 256, chunk and buffer edges, exit-step validation, per-row
blocks crossing silent steps, Trace.cat in full and the percentile calibration rule exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from snncutoff import Confidence, Conformal, CutoffPolicy, CutoffResult, Timestep, TopKGap, Trace, optimal_cutoff, stats
from snncutoff.convert import calibrate_thresholds

from .test_oracles import ref_argmax, ref_exits, ref_gap, ref_oct, ref_runs


# ===================================================================== long traces (T >= 255)
@pytest.mark.parametrize("T", [254, 255, 256, 257, 300])
def test_first_exit_and_oct_on_long_traces(T):
    # samples: exit at step 1, at step 255, at step 256 (when T allows), never (forced at T)
    N = 4
    mask = torch.zeros(T, N, dtype=torch.bool)
    mask[0, 0] = True
    mask[min(254, T - 1), 1] = True
    mask[min(255, T - 1), 2] = True
    mask[T - 1, 2] = True
    expected = ref_exits(T, N, lambda t, n: bool(mask[t, n]))
    assert expected[0] == 1 and expected[3] == T
    assert stats.first_exit(mask).tolist() == expected
    assert stats.first_exit(mask.unsqueeze(0).expand(3, -1, -1)).tolist() == [expected] * 3  # [..., T, N]
    # the same through a policy: a fixed step, and thresholds that open at those steps only
    tr = Trace(torch.tensor([1.0, 0.0]).repeat(T, N, 1).cumsum(0), torch.zeros(N, dtype=torch.long))
    assert Timestep(1).evaluate(tr).exit_step.tolist() == [1] * N
    p = TopKGap(0.0).fit(tr)
    p.beta_ = torch.full((T,), math.inf)
    p.beta_[0] = 0.0  # every gap (>= 1) passes at step 1
    assert p.evaluate(tr).exit_step.tolist() == [1] * N
    p.beta_[0] = math.inf
    p.beta_[-2] = 0.0
    assert p.evaluate(tr).exit_step.tolist() == [T - 1] * N
    # OCT: wrong at step 1 only; wrong last at step T - 1; wrong at T; right throughout
    correct = torch.ones(T, N, dtype=torch.bool)
    correct[0, 0] = False
    correct[T - 2, 1] = False
    correct[T - 1, 2] = False
    out = torch.zeros(T, N, 2)
    out[..., 0] = 1.0
    out[..., 1] = (~correct).float() * 2.0  # class 1 wins where the sample must be wrong
    tr = Trace(out, torch.zeros(N, dtype=torch.long))
    pred = [[ref_argmax(tr.outputs[t, n].tolist()) for n in range(N)] for t in range(T)]
    want = ref_oct(pred, [0] * N)
    assert want == [2, T, T, 1]
    assert optimal_cutoff(tr).exit_step.tolist() == want
    assert stats.optimal_cutoff_steps(correct).tolist() == want


# ===================================================================== CutoffResult
def test_cutoff_result_validates_and_computes_from_exit_steps():
    out = torch.tensor([[[1.0, 1.0], [0.0, 2.0], [3.0, 0.0]],
                        [[1.0, 2.0], [2.0, 2.0], [3.0, 4.0]],
                        [[5.0, 2.0], [2.0, 1.0], [3.0, 9.0]]])
    ops = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [100.0, 200.0, 300.0]])
    tr = Trace(out, torch.tensor([0, 1, 1]), ops=ops)
    for bad in ([0, 1, 1], [1, 4, 1], [-1, 2, 3], [3, 3, 0]):
        with pytest.raises(ValueError, match=r"\[1, T\] = \[1, 3\]"):
            CutoffResult.from_exit_steps(tr, torch.tensor(bad))
    with pytest.raises(ValueError, match=r"shape \[N\] = \[3\]"):
        CutoffResult.from_exit_steps(tr, torch.tensor([1, 1, 1, 1]))
    for steps in ([1, 1, 1], [3, 3, 3], [1, 2, 3], [2, 1, 3]):
        r = CutoffResult.from_exit_steps(tr, torch.tensor(steps), "hand")
        pred = [ref_argmax(out[e - 1, n].tolist()) for n, e in enumerate(steps)]  # first index on ties
        assert r.predictions.tolist() == pred and r.exit_step.tolist() == steps
        assert r.accuracy == sum(p == y for p, y in zip(pred, [0, 1, 1])) / 3
        assert r.mean_steps == sum(steps) / 3 and r.speedup == 3 / (sum(steps) / 3)
        spent = [sum(float(ops[t, n]) for t in range(e)) for n, e in enumerate(steps)]
        assert r.ops_at_exit.tolist() == spent
        assert r.ops_full.tolist() == [111.0, 222.0, 333.0]
        assert r.ops_saved == pytest.approx(1 - (sum(spent) / 3) / 222.0)
        assert r.to_dict(per_sample=True)["exit_step"] == steps and r.N == 3 and r.T == 3


# ===================================================================== per-row blocks across silent steps
@pytest.mark.parametrize("k", [3, 4])
def test_per_row_blocks_crossing_into_steps_that_can_pass(k):
    g = torch.Generator().manual_seed(3)
    T, N = 10, 40
    labels = torch.randint(0, 4, (N,), generator=g)
    tr = Trace((torch.randn(T, N, 4, generator=g) + torch.nn.functional.one_hot(labels, 4)).cumsum(0), labels)
    p = TopKGap(0.0).fit(tr)
    beta = [math.inf] * 5 + [0.5, 1.0, 0.0, 2.0, math.inf]
    p.beta_ = torch.tensor(beta)
    gaps = [[ref_gap(tr.outputs[t, n].numpy()) for n in range(N)] for t in range(T)]
    rows = torch.arange(N)
    for starts in ([0, 1, 2], [2, 3], [5 - k + 1], [T - k]):  # some rows reach step 5 only at the block's end
        t0 = torch.tensor([starts[n % len(starts)] for n in range(N)])
        block = p.exit_block(t0, torch.stack([tr.outputs[t0 + j, rows] for j in range(k)]))
        want = [[bool(gaps[int(t0[n]) + j][n] > beta[int(t0[n]) + j]) or int(t0[n]) + j == T - 1 for n in range(N)]
                for j in range(k)]
        assert block.tolist() == want, starts
        if len(starts) == 1:  # one start for all: the same as an int t0
            assert p.exit_block(starts[0], tr.outputs[starts[0]:starts[0] + k]).tolist() == want
    assert p.exit_block(5 - k + 1, tr.outputs[5 - k + 1:6])[-1].any()  # the last step of the block can pass


# ===================================================================== conformal boundary N and alpha
@pytest.mark.parametrize("N,alpha,rank", [(29, 0.7, 9), (9, 0.7, 3), (19, 0.9, 2), (19, 0.05, 19), (19, 0.04, None),
                                          (3, 0.3, 3)])
def test_split_conformal_rank_at_the_boundary(N, alpha, rank):
    # ceil((1 - alpha)(N + 1)) in exact arithmetic: 0.3 * 30 = 9 although 9.000000000000002 in floating point
    logit = -(0.25 * torch.arange(N, dtype=torch.float32)).view(1, N)  # label-0 score grows with n
    out = torch.stack([logit, torch.zeros_like(logit)], dim=-1)
    tr = Trace(out, torch.zeros(N, dtype=torch.long))
    scores = sorted(-math.log(float(torch.softmax(out[0, n], -1)[0]) + 1e-5) for n in range(N))
    q = Conformal(alpha).fit(tr).quantile_[0].item()
    if rank is None:
        assert q == math.inf
    else:
        assert q == pytest.approx(scores[rank - 1], rel=1e-5)
        if rank > 1:
            assert q > scores[rank - 2] + 1e-3


# ===================================================================== chunk and buffer edges
def test_statistics_across_chunks_and_buffers():
    # rows just past two chunks of _rowwise and past two buffers of top2_gap: every row must be computed
    g = torch.Generator().manual_seed(9)
    rows = 2 * stats._CHUNK_ROWS + 5
    x = torch.randn(rows, 5, generator=g) * 3
    x[-1] = torch.tensor([9.0, 1.0, 1.0, 1.0, 1.0])  # the very last row
    soft = torch.softmax(x, -1)
    assert torch.equal(stats.max_softmax(x), soft.amax(-1))
    assert torch.equal(stats.softmax_argmax(x), soft.argmax(-1))
    logp = torch.log_softmax(x, -1)
    assert torch.allclose(stats.normalized_entropy(x), -(logp.exp() * logp).sum(-1) / math.log(5), atol=1e-6)
    nc = -torch.log(soft + 1e-5)
    assert torch.allclose(stats.kth_nonconformity(x, 2), nc.sort(-1).values[:, 1], atol=1e-5)
    assert torch.allclose(stats.kth_nonconformity(x, 5), nc.amax(-1), atol=1e-5)  # k = C: the largest, finite
    assert torch.equal(stats.kth_nonconformity(x, 6), torch.full((rows,), math.inf))  # k > C: a set never exceeds C
    labels = torch.randint(0, 5, (rows,), generator=g)
    got = stats.nonconformity(x.view(1, rows, 5), labels)[0]
    assert torch.allclose(got, nc[torch.arange(rows), labels], atol=1e-5)
    big = torch.randn(2 * stats._BUFFER_ROWS + 3, 6, generator=g)
    big[::5, 1] = big[::5, 0]  # tied maxima in some rows
    gap, idx = stats.top2_gap(big)
    top = torch.topk(big, 2, dim=-1).values
    assert torch.equal(gap, top[:, 0] - top[:, 1]) and torch.equal(idx, big.argmax(-1))
    assert (gap[::5] >= 0).all()


def test_top2_gap_of_negative_rows_and_ties():
    x = torch.tensor([[-5.0, -1.0, -3.0], [-2.0, -2.0, -7.0], [-1e30, -1e30, -1e30], [0.0, -0.0, -1.0]])
    gap, idx = stats.top2_gap(x)
    assert gap.tolist() == [float(ref_gap(r.numpy())) for r in x] == [2.0, 0.0, 0.0, 0.0]
    assert idx.tolist() == [ref_argmax(r.tolist()) for r in x] == [1, 0, 0, 0]


def test_argmax_runs_continue_across_calls():
    pred = torch.tensor([[0, 1, 2], [0, 1, 1], [1, 1, 1], [1, 0, 1]])
    want = ref_runs(pred.tolist())
    assert stats.argmax_runs(pred).tolist() == want
    # continuing from an earlier step whose argmax was (0, 1, 5) with runs (2, 1, 4)
    prev = (torch.tensor([0, 1, 5]), torch.tensor([2, 1, 4]))
    assert stats.argmax_runs(pred, prev).tolist() == [[3, 2, 1], [4, 3, 1], [1, 4, 2], [2, 1, 3]]


def test_per_row_decisions_keep_the_forced_exit_where_no_score_can_pass():
    tr = Trace(torch.tensor([[[3.0, 0.0]], [[6.0, 0.0]]]).repeat(1, 3, 1), torch.zeros(3, dtype=torch.long))
    p = Confidence(0.1).fit(tr)
    assert p.exit_now(torch.tensor([0, 1, 0]), tr.outputs[0]).tolist() == [True, True, True]
    never = Confidence(0.0).fit(tr)
    assert never.exit_now(torch.tensor([0, 1, 0]), tr.outputs[0]).tolist() == [False, True, False]  # forced at T - 1


def test_a_non_strict_rule_passes_an_infinite_threshold_on_line_too():
    # Conformal with alpha = 0 has q = +inf (every label in the set); with max_set_size >= C the score (the
    # (k + 1)-th smallest nonconformity, k + 1 > C) is +inf too, and +inf >= +inf: every sample exits at once
    out = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[5.0, 0.0, 0.0], [0.0, 2.0, 0.0]],
                        [[6.0, 0.0, 0.0], [0.0, 3.0, 0.0]]])
    tr = Trace(out, torch.tensor([0, 1]))
    p = Conformal(alpha=0.0, max_set_size=3, quantile="snncutoff").fit(tr)  # the non-strict set s < q
    assert p.quantile_.tolist() == [math.inf] * 3
    assert p.evaluate(tr).exit_step.tolist() == [1, 1]
    assert p.exit_now(0, out[0]).tolist() == [True, True]
    assert p.exit_block(0, out[:2]).tolist() == [[True, True], [True, True]]
    assert p.exit_now(torch.tensor([0, 1]), out[0]).tolist() == [True, True]
    two = Conformal(alpha=0.0, max_set_size=2, quantile="snncutoff").fit(tr)  # finite third smallest: never >= +inf
    assert two.evaluate(tr).exit_step.tolist() == [3, 3]
    assert two.exit_block(0, out[:2]).tolist() == [[False, False], [False, False]]


def test_a_non_strict_rule_with_a_bounded_score_can_reach_its_bound_on_line():
    # a rule of one's own: score = max softmax (at most score_max = 1), exit when score >= level (not strict);
    # level 1 can be reached (the softmax of [200, 0] is exactly 1 in float32), so it is not skipped
    class AtLeast(CutoffPolicy):
        param, strict, needs_fit, score_max = "level", False, False, 1.0

        def __init__(self, level: float = 1.0) -> None:
            self.level = level

        def _scores(self, outputs, t0=0, states=None):
            return outputs.softmax(dim=-1).amax(dim=-1)

        def _thresholds(self, calibration, values, T):
            return torch.tensor(values, dtype=torch.float64).view(-1, 1).expand(-1, T or 1)

    out = torch.tensor([[[200.0, 0.0], [1.0, 0.0]], [[400.0, 0.0], [2.0, 0.0]]])
    tr = Trace(out, torch.tensor([0, 0]))
    assert AtLeast(1.0).evaluate(tr).exit_step.tolist() == [1, 2]
    assert AtLeast(1.0).exit_now(0, out[0]).tolist() == [True, False]
    assert AtLeast(1.0).fit(tr).exit_block(0, out).tolist() == [[True, False], [True, True]]
    above = AtLeast(1.0 + 1e-6)  # beyond the bound: nothing passes, on line or not
    assert above.evaluate(tr).exit_step.tolist() == [2, 2] and above.exit_now(0, out[0]).tolist() == [False, False]


# ===================================================================== Trace.cat
def test_trace_cat_keeps_everything_in_order():
    def tr(n, seed, ops):
        g = torch.Generator().manual_seed(seed)
        return Trace(torch.randn(3, n, 4, generator=g).cumsum(0), torch.randint(0, 4, (n,), generator=g),
                     ops=torch.rand(3, n, generator=g) if ops else None, meta={"part": seed})

    a, b, c = tr(2, 1, True), tr(3, 2, True), tr(4, 3, True)
    cat = Trace.cat([a, b, c])
    assert (cat.T, cat.N, cat.C) == (3, 9, 4)
    assert cat.labels.tolist() == a.labels.tolist() + b.labels.tolist() + c.labels.tolist()
    assert torch.equal(cat.outputs, torch.cat([a.outputs, b.outputs, c.outputs], dim=1))
    assert torch.equal(cat.ops, torch.cat([a.ops, b.ops, c.ops], dim=1))
    assert cat.meta == {"part": 1}
    assert cat.predictions().tolist() == [a.predictions()[t].tolist() + b.predictions()[t].tolist()
                                          + c.predictions()[t].tolist() for t in range(3)]
    # equal sizes: the order of the parts must still be kept
    d, e = tr(3, 4, False), tr(3, 5, True)
    de = Trace.cat([d, e])
    assert de.labels.tolist() == d.labels.tolist() + e.labels.tolist() and de.ops is None
    assert Trace.cat([e, d]).ops is None  # ops kept only if every part has them
    assert torch.equal(Trace.cat([e]).labels, e.labels)


# ===================================================================== percentile calibration rule
def _relu_net() -> nn.Module:
    # one hidden ReLU whose outputs are the inputs themselves (identity weights): activations known exactly
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(3))
        net[0].bias.zero_()
    return net


@pytest.mark.parametrize("rule,q", [("99%", 0.99), ("92%", 0.92), ("80%", 0.8), ("100%", 1.0), ("50%", 0.5),
                                    ("45%", 0.45), ("15%", 0.15), ("1%", 0.01)])
def test_percentile_rule_is_the_mean_of_per_batch_nearest_rank_percentiles(rule, q):
    g = torch.Generator().manual_seed(0)
    # 3 batches of 10 samples x 3 units = 30 activations each, distinct values, different scales
    batches = [(torch.randperm(30, generator=g).float().view(10, 3) * s + 0.5, torch.zeros(10)) for s in (1, 2, 5)]
    net = _relu_net()
    per_batch = []
    for x, _ in batches:
        acts = sorted(x.flatten().tolist())  # ReLU of positive values: themselves
        n = len(acts)
        k = math.ceil(q * n - 1e-9)  # the nearest rank: the smallest value with a share >= q at or below it
        per_batch.append(acts[k - 1])
    got = calibrate_thresholds(net, batches, rule)
    assert list(got) == ["1"]
    assert got["1"] == pytest.approx(sum(per_batch) / len(per_batch), rel=1e-12)
    assert calibrate_thresholds(net, batches, "max")["1"] == max(max(x.flatten().tolist()) for x, _ in batches)
    assert calibrate_thresholds(net, batches, rule, max_batches=1)["1"] == pytest.approx(per_batch[0], rel=1e-12)
