"""Property tests (hypothesis) for OCT and the policy invariants of DESIGN.md."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snncutoff import Confidence, Conformal, Timestep, TopKGap, Trace, optimal_cutoff, sweep

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def traces(draw, min_classes: int = 2, T: int | None = None, C: int | None = None) -> Trace:
    T = T or draw(st.integers(1, 7))
    N = draw(st.integers(1, 40))
    C = C or draw(st.integers(min_classes, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (N,), generator=g)
    if draw(st.booleans()):  # small integers: many ties, exercising first-index rules
        y = torch.randint(-1, 3, (T, N, C), generator=g).float()
    else:
        y = torch.randn(T, N, C, generator=g) + draw(st.floats(0, 2)) * torch.nn.functional.one_hot(labels, C)
    return Trace.from_steps(y, labels)


def policies():
    return st.one_of(
        st.builds(TopKGap, st.floats(0, 0.99), st.sampled_from(["exact", "grid"]), st.integers(1, 20)),
        st.builds(Confidence, st.floats(0, 0.99)),
        st.builds(Conformal, st.floats(0, 0.9), st.integers(1, 3), st.just("split"),
                  st.sampled_from(["none", "bonferroni"])),
    )


@SETTINGS
@given(traces(min_classes=1))
def test_oct_accuracy_equals_accuracy_at_T(tr):
    r = optimal_cutoff(tr)
    assert r.accuracy == float(tr.accuracy_per_step()[-1])
    assert int(r.exit_step.min()) >= 1 and int(r.exit_step.max()) <= tr.T
    correct = tr.correct()
    for n in range(tr.N):
        e = int(r.exit_step[n])
        if correct[-1, n]:
            assert correct[e - 1 :, n].all() and (e == 1 or not correct[e - 2, n])
        else:
            assert e == tr.T


@SETTINGS
@given(traces(min_classes=1))
def test_timestep_T_is_the_full_run(tr):
    r = Timestep(tr.T).evaluate(tr)
    assert r.speedup == 1.0 and r.accuracy == float(tr.accuracy_per_step()[-1])
    assert torch.equal(r.predictions, tr.predictions()[-1])


@SETTINGS
@given(traces())
def test_topk_epsilon_zero_loses_nothing_on_its_own_trace(tr):
    r = TopKGap(0.0).fit(tr).evaluate(tr)
    assert r.accuracy == float(tr.accuracy_per_step()[-1])
    assert torch.all(r.exit_step >= optimal_cutoff(tr).exit_step)


@SETTINGS
@given(traces(), st.lists(st.floats(0, 0.99), min_size=2, max_size=6))
def test_exact_topk_exit_never_grows_with_epsilon(tr, eps):
    eps = sorted(eps)
    results = sweep(TopKGap(), tr, tr, eps)
    for a, b in zip(results, results[1:]):
        assert torch.all(b.exit_step <= a.exit_step)
        assert b.mean_steps <= a.mean_steps


@SETTINGS
@given(traces(), policies())
def test_evaluate_equals_exit_now_step_by_step(tr, policy):
    policy.fit(tr)
    r = policy.evaluate(tr)
    exit_step = torch.full((tr.N,), tr.T)
    done = torch.zeros(tr.N, dtype=torch.bool)
    for t in range(tr.T):
        now = policy.exit_now(t, tr.outputs[t]) & ~done
        exit_step[now] = t + 1
        done |= now
    assert torch.equal(r.exit_step, exit_step)


@SETTINGS
@given(traces(), policies(), st.data())
def test_exit_block_rows_equal_exit_now(tr, policy, data):
    policy.fit(tr)
    t0 = data.draw(st.integers(0, tr.T - 1))
    k = data.draw(st.integers(1, tr.T - t0))
    block = policy.exit_block(t0, tr.outputs[t0 : t0 + k])
    assert block.shape == (k, tr.N)
    for j in range(k):
        assert torch.equal(block[j], policy.exit_now(t0 + j, tr.outputs[t0 + j]))


@st.composite
def trace_pairs(draw) -> tuple[Trace, Trace]:
    cal = draw(traces())
    return cal, draw(traces(T=cal.T, C=cal.C))


@SETTINGS
@given(trace_pairs(), policies(), st.lists(st.floats(0, 0.9), min_size=1, max_size=4))
def test_sweep_equals_fitting_each_value(pair, policy, values):
    cal, test = pair
    swept = sweep(policy, cal, test, values)
    for v, r in zip(values, swept):
        single = policy.with_param(v).fit(cal).evaluate(test)
        assert torch.equal(r.exit_step, single.exit_step) and torch.equal(r.predictions, single.predictions)
        assert repr(r.policy) == repr(single.policy)


@SETTINGS
@given(traces())
def test_save_load_roundtrip(tmp_path_factory, tr):
    path = tmp_path_factory.mktemp("t") / "trace.pt"
    back = Trace.load(tr.save(path))
    assert torch.equal(back.outputs, tr.outputs) and torch.equal(back.labels, tr.labels)
