"""Hand-worked cases for OCT and every policy, and their error paths."""

import math

import pytest
import torch

import snncutoff as sc
from snncutoff import Confidence, Conformal, NotFittedError, Timestep, TopKGap, Trace, optimal_cutoff

from .conftest import make_trace

# Cumulative outputs [T=3, N=4, C=2], worked by hand in the comments.
#   n0 label 0: gaps 3,5,7  correct 1,1,1  -> OCT 1
#   n1 label 0: gaps 1,1,3  correct 0,1,1  -> OCT 2
#   n2 label 1: gaps 2,1,1  correct 0,0,1  -> OCT 3
#   n3 label 1: gaps 1,3,5  correct 0,0,0  -> OCT 3 (wrong at T)
HAND = Trace(
    torch.tensor(
        [
            [[3.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 0.0]],
            [[5.0, 0.0], [2.0, 1.0], [2.0, 1.0], [3.0, 0.0]],
            [[7.0, 0.0], [4.0, 1.0], [2.0, 3.0], [5.0, 0.0]],
        ]
    ),
    torch.tensor([0, 0, 1, 1]),
)


def test_oct_hand_worked():
    r = optimal_cutoff(HAND)
    assert r.exit_step.tolist() == [1, 2, 3, 3]
    assert r.accuracy == 0.75 == float(HAND.accuracy_per_step()[-1])
    assert r.mean_steps == 2.25 and r.speedup == 3 / 2.25


def test_topk_exact_epsilon_zero_hand_worked():
    p = TopKGap(epsilon=0.0).fit(HAND)
    # t=0: beta=2 keeps {n0} (settled); beta=1 would keep n2 (not settled)
    # t=1: beta=3 keeps {n0}; beta=1 would keep n3.  t=2: everyone settled -> smallest gap 1
    assert p.beta_.tolist() == [2.0, 3.0, 1.0] and p.T_ == 3
    r = p.evaluate(HAND)
    assert r.exit_step.tolist() == [1, 3, 3, 3]
    assert r.predictions.tolist() == [0, 0, 1, 0]
    assert r.accuracy == 0.75 and r.mean_steps == 2.5


def test_topk_exact_epsilon_half_hand_worked():
    p = TopKGap(epsilon=0.5).fit(HAND)
    assert p.beta_.tolist() == [1.0, 1.0, 1.0]
    r = p.evaluate(HAND)
    assert r.exit_step.tolist() == [1, 3, 1, 2]
    assert r.accuracy == 0.5


def test_topk_exact_no_passing_threshold_is_inf():
    # every sample wrong: no threshold keeps a settled share >= 1 before T
    tr = Trace(torch.tensor([[[1.0, 0.0]], [[2.0, 0.0]]]), torch.tensor([1]))
    p = TopKGap().fit(tr)
    assert math.isinf(p.beta_[0]) and p.evaluate(tr).exit_step.tolist() == [2]


def test_topk_grid_all_zero_gaps_gives_zero_beta():
    tr = Trace(torch.ones(3, 4, 2), torch.tensor([0, 1, 0, 1]))
    p = TopKGap(search="grid").fit(tr)
    assert p.beta_.tolist() == [0.0, 0.0, 0.0]
    assert p.evaluate(tr).exit_step.tolist() == [3, 3, 3, 3]  # 0 > 0 never holds


def test_timestep():
    r = Timestep(2).evaluate(HAND)
    assert r.exit_step.tolist() == [2, 2, 2, 2] and r.predictions.tolist() == [0, 0, 0, 0]
    assert Timestep(3).evaluate(HAND).speedup == 1.0
    with pytest.raises(ValueError, match="step must be <= T = 3"):
        Timestep(4).evaluate(HAND)


def test_confidence_hand_worked():
    # softmax max of [3, 0] = 0.9526; of [0, 1] = 0.7311
    r = Confidence(epsilon=0.1).evaluate(HAND)
    assert r.exit_step.tolist()[0] == 1
    r0 = Confidence(epsilon=0.0).evaluate(HAND)
    assert r0.exit_step.tolist() == [3, 3, 3, 3]


def test_confidence_threshold_is_float32_and_strict():
    import numpy as np

    # a float32 softmax maximum p (step 0, sample 0); epsilon = 1 - p makes the threshold p itself
    out = torch.tensor([[[1.3, 0.2, -0.4]], [[9.0, 0.0, 0.0]]])
    tr = Trace(out, torch.tensor([0]))
    p = torch.softmax(out[0, 0], -1).max()
    assert p.dtype == torch.float32 and 0.5 < p.item() < 1.0
    eps_equal = 1.0 - p.item()  # exact: 1 - (1 - p) == p in float64
    assert 1.0 - eps_equal == p.item()
    # strict: p > p does not hold, so no exit at step 0 (the last step is forced)
    assert Confidence(eps_equal).exit_now(0, out[0]).tolist() == [False]
    assert Confidence(eps_equal).evaluate(tr).exit_step.tolist() == [2]
    # 1 - epsilon just below p in float64 but equal to p in float32: compared in float32, still no exit
    eps_f64 = eps_equal + 1e-10
    assert 1.0 - eps_f64 < p.item() and torch.tensor(1.0 - eps_f64, dtype=torch.float32) == p
    assert Confidence(eps_f64).exit_now(0, out[0]).tolist() == [False]
    assert Confidence(eps_f64).evaluate(tr).exit_step.tolist() == [2]
    assert sc.sweep(Confidence(), None, tr, [eps_equal, eps_f64])[1].exit_step.tolist() == [2]
    # the next float32 below p as the threshold: p passes it
    below = float(np.nextafter(np.float32(p.item()), np.float32(0.0)))
    assert Confidence(1.0 - below).exit_now(0, out[0]).tolist() == [True]
    assert Confidence(1.0 - below).evaluate(tr).exit_step.tolist() == [1]
    # the same in float64 outputs: there the threshold is not rounded, and just below p passes
    tr64 = Trace(out.double(), tr.labels)
    p64 = torch.softmax(out[0, 0].double(), -1).max().item()
    assert Confidence(1.0 - p64).evaluate(tr64).exit_step.tolist() == [2]
    assert Confidence(1.0 - p64 + 1e-12).evaluate(tr64).exit_step.tolist() == [1]


def test_rule_thresholds_follow_a_changed_parameter():
    # the thresholds of Confidence / Timestep are built once and reused; a new value rebuilds them
    # softmax max at step 0: 0.9526, 0.7311, 0.8808, 0.7311; at step 1: 0.9933, 0.7311, 0.7311, 0.9526
    c = Confidence(0.01)
    assert c.exit_now(0, HAND.outputs[0]).tolist() == [False] * 4
    c.epsilon = 0.2
    assert c.exit_now(0, HAND.outputs[0]).tolist() == [True, False, True, False]
    fitted = Confidence(0.2).fit(HAND)
    assert fitted.exit_block(0, HAND.outputs).tolist() == [[True, False, True, False], [True, False, False, True],
                                                            [True, True, True, True]]  # the last: forced
    fitted.epsilon = 0.001
    assert fitted.exit_block(0, HAND.outputs)[1].tolist() == [False] * 4
    t = Timestep(2).fit(HAND)
    assert t.exit_block(0, HAND.outputs)[:, 0].tolist() == [False, True, True]
    t.step = 1
    assert t.exit_block(0, HAND.outputs)[:, 0].tolist() == [True, True, True]


def test_steps_no_score_can_pass_skip_the_scores():
    # +inf thresholds of a strict rule, or Confidence at 1 - epsilon >= 1: nothing is computed there,
    # and the decisions are those of computing
    tr = make_trace(T=6, N=40, C=4, seed=5)
    p = TopKGap(0.0).fit(tr)
    p.beta_ = p.beta_.clone()
    p.beta_[:3] = math.inf
    expected = p._passes(p._scores(tr.outputs), p.beta_.view(-1, 1))
    expected[-1] = True
    calls = []
    scores = p._scores
    p._scores = lambda outputs, t0=0, states=None: calls.append(t0) or scores(outputs, t0)
    assert torch.equal(p.exit_block(0, tr.outputs[:3]), torch.zeros(3, 40, dtype=torch.bool)) and calls == []
    assert torch.equal(p.exit_block(0, tr.outputs), expected) and calls == [0]  # steps 3.. can pass
    rows = torch.tensor([0, 1] * 20)  # per-row steps: only rows within the silent steps are skipped
    assert torch.equal(p.exit_block(rows, tr.outputs[:2]), expected[rows.view(1, -1) + torch.arange(2).view(-1, 1),
                                                                    torch.arange(40)])
    assert calls == [0]
    p.beta_ = p.beta_.clone()  # a new thresholds tensor (a refit) is looked at afresh
    p.beta_[:3] = 0.0
    assert bool(p.exit_block(0, tr.outputs[:3]).any()) and len(calls) == 2
    never = Confidence(0.0)
    never._scores = lambda outputs, t0=0, states=None: pytest.fail("scores computed where 1 - epsilon = 1")
    assert not bool(never.exit_block(0, tr.outputs).any())
    assert not bool(never.fit(tr).exit_block(0, tr.outputs[:5]).any())
    assert Confidence(0.2).exit_now(5, tr.outputs[5]).any()  # a rule that can fire still decides


def test_conformal_split_quantile_hand_worked():
    # two classes, T=1: scores of the true label for 4 calibration samples
    logits = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 3.0]]])
    tr = Trace(logits, torch.tensor([0, 0, 0, 0]))
    scores = -torch.log(logits[0].softmax(-1)[:, 0] + 1e-5)
    s = scores.sort().values
    # alpha=0.25: ceil(0.75 * 5) = 4 -> the 4th smallest (= the largest)
    assert Conformal(alpha=0.25).fit(tr).quantile_.tolist() == [s[3].item()]
    # alpha=0.5: ceil(0.5 * 5) = 3
    assert Conformal(alpha=0.5).fit(tr).quantile_.tolist() == [s[2].item()]
    # alpha=0: rank 5 > N -> +inf: every label is in the set
    assert math.isinf(Conformal(alpha=0.0).fit(tr).quantile_[0])


def test_conformal_snncutoff_quantile_hand_worked():
    logits = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 3.0]]])
    tr = Trace(logits, torch.tensor([0, 0, 0, 0]))
    s = (-torch.log(logits[0].softmax(-1)[:, 0] + 1e-5)).sort().values
    # N=4: k = ceil(f32(0.75 * 6)) - 1 = 5 - 1 = 4 -> 4th smallest of the 5 (with +inf)
    assert Conformal(0.25, quantile="snncutoff").fit(tr).quantile_.tolist() == [s[3].item()]
    # alpha = 0: k = 6 - 1 = 5 -> the appended +inf
    assert math.isinf(Conformal(0.0, quantile="snncutoff").fit(tr).quantile_[0])
    with pytest.raises(ValueError, match="k|alpha"):
        Conformal(0.9, quantile="snncutoff").fit(Trace(logits[:, :1], torch.tensor([0])))


@pytest.mark.parametrize("quantile", ["split", "snncutoff"])
def test_conformal_set_size_rule(quantile):
    # scores: s_0 = -log(softmax_0 + 1e-5) small, s_1 = s_2 large
    out = torch.tensor([[[4.0, 0.0, 0.0]], [[4.0, 0.0, 0.0]]])
    tr = Trace(out, torch.tensor([0]))
    s = -(out[0, 0].softmax(-1) + 1e-5).log()
    p = Conformal(alpha=0.0, max_set_size=1, quantile=quantile)
    p.fit(tr)  # q = +inf: every label in the set -> no early exit
    assert p.evaluate(tr).exit_step.tolist() == [2]
    p.quantile_ = torch.tensor([1.0, 1.0])  # between the two scores: one label -> exits
    assert p.evaluate(tr).exit_step.tolist() == [1]
    p.quantile_ = torch.tensor([0.0, 0.0])  # empty set also exits
    assert p.evaluate(tr).exit_step.tolist() == [1]
    p.quantile_ = s[1].repeat(2)  # q equal to the tied larger scores: {s <= q} holds all 3, {s < q} one
    assert p.evaluate(tr).exit_step.tolist() == ([2] if quantile == "split" else [1])
    p3 = Conformal(alpha=0.0, max_set_size=3, quantile=quantile).fit(tr)  # a set never exceeds C = 3
    assert p3.evaluate(tr).exit_step.tolist() == [1]
    assert p3.quantile_.tolist() == ([-math.inf] * 2 if quantile == "split" else [math.inf] * 2)
    assert p3.exit_now(0, out[0]).tolist() == [True] and p3.exit_block(0, out).tolist() == [[True], [True]]


def test_conformal_split_set_covers_ties():
    # spike counts, no output spike at step 1: every score ties with q there
    g = torch.Generator().manual_seed(0)
    y = torch.randn(6, 300, 10, generator=g).clamp(min=0).round()
    y[0] = 0
    labels = (y.sum(0) + 0.01 * torch.randn(300, 10, generator=g)).argmax(1)
    tr = Trace.from_steps(y, labels)
    alpha = 0.1
    split = Conformal(alpha).fit(tr)
    r = split.evaluate(tr)
    assert int((r.exit_step == 1).sum()) == 0  # the set at step 1 is every label: nobody exits on a tie
    # in-sample coverage of the textbook set, from the definitions (float64): >= 1 - alpha at every step
    o = tr.outputs.double()
    nc = -(o.softmax(-1) + 1e-5).log()
    label_nc = nc.gather(-1, labels.view(1, -1, 1).expand(tr.T, -1, 1)).squeeze(-1)
    q = split.quantile_.double().view(-1, 1)
    assert torch.all((label_nc <= q + 1e-6).double().mean(1) >= 1 - alpha)
    # the SNNCutoff code's strict set is empty on the tie: everyone leaves at step 1, predicting class 0
    ref = Conformal(alpha, quantile="snncutoff").fit(tr).evaluate(tr)
    assert ref.exit_step.eq(1).all() and ref.predictions.eq(0).all()


def test_conformal_bonferroni_is_more_conservative():
    tr = make_trace(T=6, N=200, seed=4, signal=1.5)
    plain = Conformal(0.2).fit(tr)
    bonf = Conformal(0.2, correction="bonferroni").fit(tr)
    assert torch.all(bonf.quantile_ >= plain.quantile_)
    assert bonf.evaluate(tr).mean_steps >= plain.evaluate(tr).mean_steps


def test_ops_are_accounted():
    tr = make_trace(T=4, N=10, ops=True)
    r = Timestep(2).evaluate(tr)
    assert torch.allclose(r.ops_at_exit, tr.ops[:2].sum(0))
    assert torch.allclose(r.ops_full, tr.ops.sum(0))
    d = r.to_dict()
    assert d["ops_saved"] == pytest.approx(1 - tr.ops[:2].sum() / tr.ops.sum())
    assert set(d) >= {"accuracy", "mean_steps", "speedup", "T", "mean_ops", "mean_ops_full"}
    assert "ops_saved" not in Timestep(2).evaluate(make_trace(T=4, N=10)).to_dict()


@pytest.mark.parametrize("make", [lambda: TopKGap(), lambda: Conformal(0.1)])
def test_not_fitted(make):
    p = make()
    with pytest.raises(NotFittedError, match="fit"):
        p.evaluate(HAND)
    with pytest.raises(NotFittedError):
        p.exit_now(0, HAND.outputs[0])


def test_t_mismatch():
    p = TopKGap().fit(HAND)
    with pytest.raises(ValueError, match="fitted on T = 3 steps but the trace has T = 8"):
        p.evaluate(make_trace(C=2))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_epsilon_alpha_range(bad):
    for make in (lambda v: TopKGap(epsilon=v), lambda v: Confidence(epsilon=v), lambda v: Conformal(alpha=v)):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            make(bad)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        sc.sweep(TopKGap(), HAND, HAND, [0.0, bad])


def test_other_bad_arguments():
    with pytest.raises(TypeError, match="epsilon"):
        TopKGap(epsilon="0.1")
    with pytest.raises(ValueError, match="search"):
        TopKGap(search="fast")
    with pytest.raises(ValueError, match="step"):
        Timestep(0)
    with pytest.raises(ValueError, match="max_set_size"):
        Conformal(max_set_size=0)
    with pytest.raises(ValueError, match="quantile"):
        Conformal(quantile="median")


def test_single_class_is_rejected():
    one = Trace(torch.zeros(2, 3, 1), torch.zeros(3, dtype=torch.long))
    for p in (TopKGap(), Confidence(0.1), Conformal(0.1)):
        with pytest.raises(ValueError, match="C >= 2"):
            (p.fit(one) if p.needs_fit else p.evaluate(one))
    assert Timestep(1).evaluate(one).accuracy == 1.0
    assert optimal_cutoff(one).exit_step.tolist() == [1, 1, 1]


def test_exit_now_checks():
    p = TopKGap().fit(HAND)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        p.exit_now(3, HAND.outputs[0])
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        p.exit_now(0, HAND.outputs)
    assert p.exit_now(2, HAND.outputs[2]).all()  # forced at the last step


def test_repr_and_params():
    p = TopKGap(0.05, search="grid")
    assert repr(p) == "TopKGap(epsilon=0.05, search='grid', bins=100)"
    assert p.with_param(0.1).epsilon == 0.1 and p.with_param(0.1).search == "grid"
    assert "speedup" in repr(p.fit(HAND).evaluate(HAND))


@pytest.mark.parametrize("make", [lambda tr: TopKGap(0.1).fit(tr), lambda tr: Confidence(0.2),
                                  lambda tr: Conformal(0.2).fit(tr), lambda tr: Timestep(3)])
def test_exit_now_with_one_step_per_row(make):
    tr = make_trace(T=6, N=30, seed=5, signal=1.0)
    p = make(tr)
    t = torch.arange(30) % 6
    rows = torch.arange(30)
    per_row = p.exit_now(t, tr.outputs[t, rows])
    one_by_one = torch.stack([p.exit_now(int(t[n]), tr.outputs[int(t[n]), n:n + 1])[0] for n in range(30)])
    assert torch.equal(per_row, one_by_one)
    with pytest.raises(ValueError, match=r"\[N\] = \[30\]"):
        p.exit_now(torch.zeros(3, dtype=torch.long), tr.outputs[0])


def test_thresholds_edited_in_place_are_seen_by_on_line_decisions():
    g = torch.Generator().manual_seed(0)

    def trace(n: int) -> Trace:
        y = torch.randn(6, n, 5, generator=g)
        labels = torch.randint(0, 5, (n,), generator=g)
        y[:, torch.arange(n), labels] += 0.8
        return Trace(y.cumsum(0), labels)

    cal, test = trace(300), trace(50)
    cal = Trace(cal.outputs.double(), cal.labels)  # float64 thresholds, float32 scores: a converted copy
    p = TopKGap(0.05).fit(cal)
    assert p.beta_.dtype == torch.float64
    assert p.exit_now(2, test.outputs[2]).any()  # builds the caches
    p.beta_[:] = 1e6  # in place: no sample may exit before T now
    assert int((p.evaluate(test).exit_step < 6).sum()) == 0
    assert not p.exit_now(2, test.outputs[2]).any()
    assert p.exit_now(5, test.outputs[5]).all()  # the forced exit stays
