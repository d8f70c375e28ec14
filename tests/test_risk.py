"""RiskControl: the guarantee holds over re-drawn calibration sets, and every misuse is a clear error."""

import math
import warnings

import pytest
import torch

import snncutoff as sc
from snncutoff import Confidence, Conformal, Entropy, LearnedExit, RiskControl, Stability, Timestep, TopKGap, Trace
from snncutoff.cutoff.risk import p_values, samples_needed

from .conftest import make_trace


def _pool(N: int = 6000, T: int = 12, C: int = 10, seed: int = 0) -> Trace:
    """A synthetic trace whose samples settle at different steps, some wrong early and right later
    (accuracy 0.39 at step 1, 0.90 at T; mean OCT 4.7)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (N,), generator=g)
    drive = 0.4 + 1.6 * torch.rand(N, 1, generator=g)
    decoy = torch.randint(0, C, (N,), generator=g)
    y = torch.randn(T, N, C, generator=g)
    y += drive * torch.nn.functional.one_hot(labels, C)
    y[:3] += torch.nn.functional.one_hot(decoy, C)  # an early wrong favourite, overtaken later
    return Trace.from_steps(y, labels)


RULES = [TopKGap(), Confidence(), Entropy(), Conformal(), Stability(), LearnedExit(), Timestep()]


def _loss(trace: Trace, result: sc.CutoffResult) -> float:
    """Accuracy given up against all T steps (the relative loss), from the definitions."""
    return float(trace.accuracy_per_step()[-1]) - result.accuracy


@pytest.mark.parametrize("rule", RULES, ids=lambda r: type(r).__name__)
def test_the_certified_loss_is_exceeded_no_more_often_than_delta(rule):
    """Over 200 random calibration draws from a fixed pool, the loss on the rest of the pool (standing
    for the population) exceeds max_loss in at most delta + 3 standard errors of the draws, while the
    certified rule still exits well before T on average."""
    pool = _pool()
    fit_on = _pool(N=400, seed=99)  # learning rules are fitted on independent data
    max_loss, delta, n_cal, splits = 0.02, 0.2, 500, 200
    g = torch.Generator().manual_seed(1)
    exceeded, steps = 0, []
    correct_T = pool.correct()[-1]
    for _ in range(splits):
        order = torch.randperm(pool.N, generator=g)
        rc = RiskControl(rule, max_loss=max_loss, delta=delta)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sc.NotCertifiedWarning)
            rc.fit(pool.subset(order[:n_cal]), fit_on=fit_on)
        r = rc.evaluate(pool)  # the pool's statistics are computed once; the loss is read on the rest
        rest = order[n_cal:]
        loss = float(correct_T[rest].double().mean() - (r.predictions[rest] == pool.labels[rest]).double().mean())
        exceeded += loss > max_loss
        steps.append(float(r.exit_step[rest].double().mean()))
    assert exceeded / splits <= delta + 3 * math.sqrt(delta * (1 - delta) / splits)
    if not isinstance(rule, Timestep):  # accuracy keeps rising here: no fixed step is safe before T
        assert sum(steps) / splits < pool.T - 1  # it does exit early, so the bound is not vacuous


def test_on_digits_the_certified_loss_holds_over_redrawn_calibration_sets():
    from .helpers import backend_or_skip, digits_loaders, trained_digits_cnn

    backend = backend_or_skip("spikingjelly")
    snn = backend.convert(trained_digits_cnn("qcfs"))
    train, test = digits_loaders()
    pool = Trace.cat([sc.collect_trace(backend, snn, loader, T=16, progress=False) for loader in (train, test)])
    max_loss, delta, splits = 0.02, 0.2, 200
    g = torch.Generator().manual_seed(2)
    correct_T = pool.correct()[-1]
    for rule in (Confidence(), TopKGap()):
        exceeded = 0
        for _ in range(splits):
            order = torch.randperm(pool.N, generator=g)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", sc.NotCertifiedWarning)
                rc = RiskControl(rule, max_loss=max_loss, delta=delta).fit(pool.subset(order[300:800]),
                                                                           fit_on=pool.subset(order[:300]))
            r, rest = rc.evaluate(pool), order[800:]
            loss = correct_T[rest].double().mean() - (r.predictions[rest] == pool.labels[rest]).double().mean()
            exceeded += float(loss) > max_loss
        assert exceeded / splits <= delta + 3 * math.sqrt(delta * (1 - delta) / splits), rule


def test_binomial_p_values_and_the_samples_needed_from_their_definitions():
    # P(Bin(n, a) <= k), summed by hand
    n, a = 20, 0.1
    for k in (0, 1, 3):
        ref = sum(math.comb(n, i) * a**i * (1 - a) ** (n - i) for i in range(k + 1))
        assert p_values(torch.tensor([k]), n, a)[0] == pytest.approx(ref, rel=1e-12)
    # with no loss at all: (1 - a)^n <= delta first at n = ceil(log delta / log(1 - a))
    assert samples_needed(0.005, 0.1) == 460 and 0.995**460 <= 0.1 < 0.995**459
    # Hoeffding-Bentkus: min(exp(-n h(r, a)), e * P(Bin <= n r)) with h(r, a) = r log(r/a) + (1-r) log((1-r)/(1-a))
    r = 1 / n
    h = r * math.log(r / a) + (1 - r) * math.log((1 - r) / (1 - a))
    bentkus = math.e * sum(math.comb(n, i) * a**i * (1 - a) ** (n - i) for i in range(2))
    assert p_values(torch.tensor([1]), n, a, "hb")[0] == pytest.approx(min(math.exp(-n * h), bentkus))


def test_fixed_sequence_testing_keeps_the_last_value_before_the_first_failure():
    # T = 2, C = 2. Confidence exits at step 1 when max softmax > 1 - eps: samples 0..9 are right at
    # step 1 with probability 0.88 (gap 2), samples 10..11 wrong at step 1 (0.73) and right at T.
    right = [[[2.0, 0.0]], [[4.0, 0.0]]]
    wrong = [[[0.0, 1.0]], [[3.0, 0.0]]]
    outputs = torch.tensor([right] * 10 + [wrong] * 2).squeeze(2).permute(1, 0, 2).contiguous()
    trace = Trace(outputs, torch.zeros(12, dtype=torch.long))
    rc = RiskControl(Confidence(), max_loss=0.5, delta=0.3, grid=[0.01, 0.2, 0.3], delay=False).fit(trace)
    # eps 0.01: nobody exits at step 1 (0 flips); 0.2: the ten right ones exit (0 flips);
    # 0.3: everyone exits, the two wrong ones flip: P(Bin(12, 0.5) <= 2) = 79 / 4096 <= 0.3 still passes
    assert rc.risks_ == [0.0, 0.0, 2 / 12]
    assert rc.p_values_[2] == pytest.approx(79 / 4096)
    assert rc.value_ == 0.3 and rc.start_ == 1
    strict = RiskControl(Confidence(), max_loss=0.1, delta=0.3, grid=[0.01, 0.2, 0.3], delay=False).fit(trace)
    # P(Bin(12, 0.1) <= 2) = 0.889 > 0.3: stops at 0.3, keeps 0.2
    assert strict.value_ == 0.2 and strict.evaluate(trace).mean_steps == pytest.approx((10 * 1 + 2 * 2) / 12)


def test_nothing_certifiable_warns_and_runs_every_sample_to_T():
    trace = _pool(N=500, seed=3)
    with pytest.warns(sc.NotCertifiedWarning, match="nothing could be certified.*runs all 12 steps"):
        rc = RiskControl(Confidence(), max_loss=0.01, delta=0.3, grid=[0.5], delay=False).fit(trace)
    r = rc.evaluate(trace)
    assert rc.value_ is None and rc.certified_loss_ == 0.0 and r.mean_steps == trace.T
    assert torch.equal(r.predictions, trace.predictions()[-1])
    state = None
    assert not bool(rc.exit_block(0, trace.outputs[:11], state).any())  # on line too


@pytest.mark.parametrize("kwargs, error, message", [
    ({"max_loss": 0.0}, ValueError, r"max_loss must lie in \(0, 1\)"),
    ({"max_loss": 1.0}, ValueError, r"max_loss must lie in \(0, 1\)"),
    ({"delta": -0.1}, ValueError, r"delta must lie in \(0, 1\)"),
    ({"delta": float("nan")}, ValueError, r"delta must lie in \(0, 1\)"),
    ({"loss": "squared"}, ValueError, "loss must be one of 'relative', 'absolute'"),
    ({"method": "wsr"}, ValueError, "method must be one of 'binomial', 'hb'"),
    ({"grid": []}, ValueError, "grid must list at least one value"),
    ({"grid": [0.1, 1.5]}, ValueError, r"epsilon must lie in \[0, 1\)"),
])
def test_bad_arguments_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        RiskControl(TopKGap(), **kwargs)


def test_policies_without_a_calibratable_parameter_are_refused():
    with pytest.raises(TypeError, match="policy must be a cutoff rule"):
        RiskControl("topk")
    with pytest.raises(TypeError, match="not RiskControl"):
        RiskControl(RiskControl(TopKGap()))

    class NoGrid(Confidence):
        def risk_grid(self, T):
            raise NotImplementedError

    with pytest.raises(TypeError, match="does not say which values of 'epsilon' to try"):
        RiskControl(NoGrid())
    RiskControl(NoGrid(), grid=[0.0, 0.1])  # a grid of one's own is enough


def test_too_small_a_calibration_trace_says_how_many_samples_are_needed():
    small = make_trace(T=6, N=300, C=4)
    with pytest.raises(ValueError, match="testing on 300, but max_loss=0.005 at delta=0.1 needs at least 460"):
        RiskControl(Confidence()).fit(small)
    with pytest.raises(ValueError, match=r"the 300 of 600 calibration samples left after fitting TopKGap.*"
                                         r"at least 920 held-out samples \(460 left to test"):
        RiskControl(TopKGap()).fit(make_trace(T=6, N=600, C=4))
    with pytest.raises(ValueError, match=r"testing on 300, .*at least 460 held-out samples") as caught:
        RiskControl(TopKGap()).fit(small, fit_on=make_trace(T=6, N=300, C=4, seed=1))
    assert "fit_on" not in str(caught.value)  # given already


def test_calibration_and_test_traces_must_have_the_same_T_and_C():
    cal = _pool(N=800, T=12)
    rc = RiskControl(Confidence(), max_loss=0.05).fit(cal)
    with pytest.raises(ValueError, match="fitted on T = 12 steps but the trace has T = 10"):
        rc.evaluate(_pool(N=50, T=10))
    with pytest.raises(ValueError, match="fitted on outputs of C = 10 classes, these have C = 6"):
        rc.evaluate(_pool(N=50, T=12, C=6))
    with pytest.raises(ValueError, match="fit_on has C = 6 classes but calibration has C = 10"):
        RiskControl(TopKGap(), max_loss=0.05).fit(cal, fit_on=_pool(N=100, T=12, C=6))
    with pytest.raises(ValueError, match="fit_on has T = 10 but calibration has T = 12"):
        RiskControl(TopKGap(), max_loss=0.05).fit(cal, fit_on=_pool(N=100, T=10))


def test_sweep_over_max_loss_matches_separate_fits():
    cal, test = _pool(N=1500, seed=4), _pool(N=500, seed=5)
    values = [0.01, 0.03, 0.1]
    swept = sc.sweep(RiskControl(Confidence()), cal, test, values)
    for v, r in zip(values, swept):
        single = RiskControl(Confidence(), max_loss=v).fit(cal).evaluate(test)
        assert torch.equal(single.exit_step, r.exit_step), v
    assert swept[0].mean_steps >= swept[-1].mean_steps  # a looser bound exits earlier


@pytest.mark.parametrize("rule", [LearnedExit(), TopKGap(), Conformal()], ids=lambda r: type(r).__name__)
def test_a_sweep_leaves_a_fitted_rule_as_it_was(rule):
    cal, other, test = _pool(N=1500, seed=4), _pool(N=1500, seed=7), _pool(N=500, seed=5)
    rc = RiskControl(rule, max_loss=0.05).fit(cal)
    before = rc.evaluate(test)
    state = rc.initial_state(test.N)
    online = [rc.exit_now(t, test.outputs[t], state) for t in range(test.T)]
    sc.sweep(rc, other, test, [0.01, 0.1])  # fits the wrapped rule again on other data, for the sweep only
    after = rc.evaluate(test)
    assert torch.equal(before.exit_step, after.exit_step) and torch.equal(before.predictions, after.predictions)
    state = rc.initial_state(test.N)
    assert all(torch.equal(a, rc.exit_now(t, test.outputs[t], state)) for t, a in enumerate(online))


def test_report_of_a_fitted_rule():
    rc = RiskControl(Stability(), max_loss=0.05, delta=0.2).fit(_pool(N=1000, seed=6))
    assert rc.certified_loss_ == 0.05 and 1 <= rc.value_ <= 12 and rc.start_ >= 1
    assert rc.p_value_ <= 0.2 and rc.n_test_ == 1000 and len(rc.p_values_) == len(rc.risks_)
    assert f"-> steps={rc.value_}" in repr(rc)
