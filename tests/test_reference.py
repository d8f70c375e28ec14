"""The SNNCutoff-compatible searches against straightforward loop implementations.

The loops below follow the published procedure step by step (one grid value, one
step, one sample count at a time); the library's vectorised versions must give the
same numbers bit for bit.
"""

import math

import pytest
import torch

from snncutoff import Confidence, Conformal, TopKGap, Trace
from snncutoff_bench.core_speed import loop_grid_beta  # the SNNCutoff procedure as a plain loop

from .conftest import make_trace


def loop_exits(scores: torch.Tensor, passes) -> list[int]:
    T, N = scores.shape
    exits = []
    for n in range(N):
        e = T
        for t in range(T):
            if passes(scores[t, n], t):
                e = t + 1
                break
        exits.append(e)
    return exits


def loop_conformal_snncutoff(trace: Trace, alpha: float) -> torch.Tensor:
    q = []
    for t in range(trace.T):
        p = trace.outputs[t].softmax(-1)
        s = (-torch.log(torch.gather(p, -1, trace.labels[:, None]) + 1e-5))[:, 0].tolist()
        s = sorted(s) + [math.inf]
        k = math.ceil(float(torch.tensor((1 - alpha) * (len(s) + 1)))) - 1
        q.append(s[k - 1])
    return torch.tensor(q, dtype=trace.outputs.dtype)


CASES = [
    dict(T=8, N=300, C=10, seed=1, signal=0.4),
    dict(T=5, N=50, C=3, seed=2, signal=1.0),
    dict(T=16, N=500, C=10, seed=3, signal=0.2),
    dict(T=1, N=40, C=4, seed=4, signal=0.5),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("epsilon", [0.0, 0.01, 0.05, 0.2])
def test_grid_search_matches_the_loop_bit_for_bit(case, epsilon):
    tr = make_trace(**case)
    p = TopKGap(epsilon, search="grid").fit(tr)
    ref = loop_grid_beta(tr, epsilon)
    assert p.beta_.dtype == torch.float32
    assert torch.equal(p.beta_, ref)
    test = make_trace(**{**case, "seed": case["seed"] + 100})
    top = torch.topk(test.outputs, 2, dim=-1).values
    gaps = top[..., 0] - top[..., 1]
    expected = loop_exits(gaps, lambda g, t: bool(g > ref[t]))
    assert p.evaluate(test).exit_step.tolist() == expected


def test_grid_search_with_ties_and_integer_outputs():
    g = torch.Generator().manual_seed(7)
    out = torch.randint(0, 4, (6, 200, 4), generator=g).float().cumsum(0)
    tr = Trace(out, torch.randint(0, 4, (200,), generator=g))
    for eps in (0.0, 0.1, 0.3):
        assert torch.equal(TopKGap(eps, search="grid").fit(tr).beta_, loop_grid_beta(tr, eps))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.1, 0.3])
def test_conformal_snncutoff_matches_the_loop(case, alpha):
    tr = make_trace(**case)
    p = Conformal(alpha, quantile="snncutoff").fit(tr)
    q = loop_conformal_snncutoff(tr, alpha)
    assert torch.equal(p.quantile_, q)
    test = make_trace(**{**case, "seed": case["seed"] + 50})
    nc = -(test.outputs.softmax(-1) + 1e-5).log()
    size = (nc < q.view(-1, 1, 1)).float().sum(-1)
    expected = loop_exits(size, lambda s, t: bool(s <= 1))
    assert p.evaluate(test).exit_step.tolist() == expected


@pytest.mark.parametrize("quantile", ["split", "snncutoff"])
@pytest.mark.parametrize("max_set_size", [1, 2, 3])
def test_conformal_set_size_equivalence(max_set_size, quantile):
    # on its own calibration trace: at every step one sample's label score equals q exactly (a tie)
    tr = make_trace(T=6, N=200, C=5, seed=9, signal=0.8)
    p = Conformal(0.2, max_set_size=max_set_size, quantile=quantile).fit(tr)
    nc = -(tr.outputs.softmax(-1) + 1e-5).log()
    q = p.quantile_.view(-1, 1, 1)
    size = (nc <= q if quantile == "split" else nc < q).sum(-1)  # textbook set / the SNNCutoff code's
    expected = loop_exits(size, lambda s, t: bool(s <= max_set_size))
    assert p.evaluate(tr).exit_step.tolist() == expected


@pytest.mark.parametrize("epsilon", [0.0, 0.01, 0.1, 0.5])
def test_confidence_matches_the_loop(epsilon):
    tr = make_trace(T=10, N=300, C=10, seed=5, signal=0.7)
    conf = tr.outputs.softmax(-1).max(-1).values
    expected = loop_exits(conf, lambda c, t: bool(c > (1.0 - epsilon)))
    assert Confidence(epsilon).evaluate(tr).exit_step.tolist() == expected


def loop_exact_beta(trace: Trace, epsilon: float) -> list[float]:
    T = trace.T
    pred = trace.outputs.argmax(-1)
    correct = pred == trace.labels
    oct_ = []
    for n in range(trace.N):
        o = T
        for t in range(T - 1, -1, -1):
            if correct[t:, n].all():
                o = t + 1
        oct_.append(o)
    top = torch.topk(trace.outputs, 2, dim=-1).values
    gaps = top[..., 0] - top[..., 1]
    betas = []
    for t in range(T):
        best = math.inf
        for beta in sorted(set(gaps[t].tolist())):
            kept = [n for n in range(trace.N) if gaps[t, n] > beta]
            if kept and sum(oct_[n] > t + 1 for n in kept) / len(kept) <= epsilon:
                best = beta
                break
        betas.append(best)
    return betas


@pytest.mark.parametrize("epsilon", [0.0, 0.05, 0.25])
def test_exact_search_matches_the_loop(epsilon):
    tr = make_trace(T=5, N=60, C=3, seed=11, signal=0.8)
    assert TopKGap(epsilon).fit(tr).beta_.tolist() == loop_exact_beta(tr, epsilon)


@pytest.mark.parametrize("epsilon", [0.0, 0.01, 0.1])
def test_float64_traces_follow_the_reference_arithmetic(epsilon):
    tr32 = make_trace(T=6, N=200, C=5, seed=21, signal=0.6)
    tr = Trace(tr32.outputs.double(), tr32.labels)
    p = TopKGap(epsilon, search="grid").fit(tr)
    assert p.beta_.dtype == torch.float64 and torch.equal(p.beta_, loop_grid_beta(tr, epsilon))
    conf = tr.outputs.softmax(-1).max(-1).values
    expected = loop_exits(conf, lambda c, t: bool(c > (1.0 - epsilon)))
    assert Confidence(epsilon).evaluate(tr).exit_step.tolist() == expected
    q = loop_conformal_snncutoff(tr, 0.1)
    assert torch.equal(Conformal(0.1, quantile="snncutoff").fit(tr).quantile_, q)
