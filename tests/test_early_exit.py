"""Streaming early exit equals post-hoc evaluation, sample by sample, and saves the work."""

import copy

import pytest
import torch
from torch import nn

import snncutoff as sc
from snncutoff import Confidence, Conformal, Entropy, LearnedExit, RiskControl, Stability, Timestep, TopKGap, Trace
from snncutoff.backends import Backend

from .helpers import (
    BACKENDS,
    backend_or_skip,
    digits_loaders,
    random_batches,
    small_ann,
    snntorch_sequential,
    trained_digits_cnn,
)


def _policies(cal):
    return [TopKGap(0.0).fit(cal), TopKGap(0.05).fit(cal), TopKGap(0.02, search="grid").fit(cal),
            Confidence(0.1), Conformal(0.1).fit(cal), Conformal(0.2, quantile="snncutoff").fit(cal), Timestep(3),
            Entropy(0.3), Stability(2, min_gap=0.5), LearnedExit(0.05).fit(cal)] + (
            [RiskControl(LearnedExit(), max_loss=0.2, delta=0.5).fit(cal, fit_on=cal)] if cal.N >= 8 else [])


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_digits_early_exit_matches_evaluate(name, step_mode):
    backend = backend_or_skip(name)
    if step_mode == "m" and name != "spikingjelly":
        pytest.skip("multi-step networks are a SpikingJelly feature")
    ann = trained_digits_cnn("qcfs")
    train, test = digits_loaders()
    snn = backend.convert(ann, step_mode=step_mode)
    T = 16
    cal = sc.collect_trace(backend, snn, train, T=T, progress=False)
    trace = sc.collect_trace(backend, snn, test, T=T, count_ops=True, progress=False)
    for policy in _policies(cal):
        post = policy.evaluate(trace)
        real = sc.early_exit_loader(backend, snn, test, policy, T=T, count_ops=True, progress=False)
        assert torch.equal(post.exit_step, real.exit_step), policy
        assert torch.equal(post.predictions, real.predictions), policy
        assert torch.equal(post.ops_at_exit, real.ops_at_exit), policy
        assert real.wall_time_s > 0 and real.accuracy == post.accuracy


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("batch", [1, 256])
def test_random_inputs_and_batch_sizes(name, batch):
    backend = backend_or_skip(name)
    data = random_batches(n=batch, batches=1, seed=7)
    snn = backend.convert(small_ann(), calibration=random_batches(seed=8))
    trace = sc.collect_trace(backend, snn, data, T=12, count_ops=True, progress=False)
    for policy in _policies(trace):
        post = policy.evaluate(trace)
        steps, preds, ops = sc.early_exit(backend, snn, data[0][0], policy, T=12, count_ops=True)
        assert torch.equal(post.exit_step, steps) and torch.equal(post.predictions, preds)
        assert torch.equal(post.ops_at_exit, ops)


def test_users_own_snntorch_net():
    net = snntorch_sequential()
    backend = sc.backends.get("snntorch")
    data = random_batches(seed=2)
    for readout in ("spikes", "membrane"):
        trace = sc.collect_trace(backend, net, data, T=10, readout=readout, progress=False)
        policy = Confidence(0.3)
        post = policy.evaluate(trace)
        real = sc.early_exit_loader(backend, net, data, policy, T=10, readout=readout, progress=False)
        assert torch.equal(post.exit_step, real.exit_step) and torch.equal(post.predictions, real.predictions)


def test_streaming_events_arrive_in_time_order():
    backend = backend_or_skip("snntorch")
    data = random_batches(n=40, batches=1, seed=3)
    snn = backend.convert(small_ann(), calibration=data)
    trace = sc.collect_trace(backend, snn, data, T=8, progress=False)
    policy = Confidence(0.2)
    expected = policy.evaluate(trace)
    frames_read = []

    def frames():
        for t in range(8):
            frames_read.append(t)
            yield data[0][0]

    seen = torch.zeros(40, dtype=torch.bool)
    last = 0
    for ev in sc.stream_early_exit(backend, snn, frames(), policy, T=8):
        assert ev.step > last and not seen[ev.indices].any()
        last = ev.step
        seen[ev.indices] = True
        assert torch.equal(expected.exit_step[ev.indices], torch.full_like(ev.indices, ev.step))
        assert torch.equal(expected.predictions[ev.indices], ev.predictions)
    assert seen.all() and len(frames_read) == int(expected.exit_step.max())


def test_errors():
    backend = backend_or_skip("snntorch")
    data = random_batches(n=8, batches=1)
    snn = backend.convert(small_ann(), calibration=data)
    with pytest.raises(ValueError, match="pass T"):
        sc.early_exit(backend, snn, data[0][0], Confidence(0.1))
    cal = sc.collect_trace(backend, snn, data, T=4, progress=False)
    with pytest.raises(ValueError, match="fitted on T = 4"):
        sc.early_exit(backend, snn, data[0][0], TopKGap().fit(cal), T=6)
    with pytest.raises(ValueError, match="frames ended after 2 steps"):
        list(sc.stream_early_exit(backend, snn, [data[0][0]] * 2, TopKGap().fit(cal)))


@pytest.mark.parametrize("name", BACKENDS)
def test_residual_net_operations_do_not_depend_on_the_batch(name):
    """A residual sum of two spike trains is real-valued for some samples only: counted per sample."""
    from snncutoff.models import BasicBlock

    backend = backend_or_skip(name)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), BasicBlock(4, 4),
                              BasicBlock(4, 8, 2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 10)).eval()
    data = random_batches(n=48, batches=1, seed=11)
    snn = backend.convert(net, calibration=data)
    trace = sc.collect_trace(backend, snn, data, T=10, count_ops=True, progress=False)
    policy = Confidence(0.75)  # exits spread over the steps for this untrained net
    post = policy.evaluate(trace)
    steps, preds, ops = sc.early_exit(backend, snn, data[0][0], policy, T=10, count_ops=True)
    assert torch.equal(post.exit_step, steps) and torch.equal(post.ops_at_exit, ops)
    assert len(post.exit_step.unique()) >= 3


def test_nan_outputs_stop_the_stream_with_a_clear_error():
    backend = backend_or_skip("snntorch")
    data = random_batches(n=8, batches=1)
    snn = backend.convert(small_ann(), calibration=data)
    with torch.no_grad():
        snn[-1].bias[2] = float("nan")
    with pytest.raises(ValueError, match="outputs at step 0 hold"):
        sc.early_exit(backend, snn, data[0][0], Confidence(0.1), T=4)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize(("capacity", "block"), [(None, "auto"), (1, "auto"), (7, "auto"), (7, 1), (None, 2)])
def test_refill_equals_evaluate(name, capacity, block):
    """Continuous batching: freed slots are refilled from the loader; results stay sample-exact."""
    backend = backend_or_skip(name)
    ann = trained_digits_cnn("qcfs")
    train, test = digits_loaders()
    snn = backend.convert(ann)
    cal = sc.collect_trace(backend, snn, train, T=12, progress=False)
    trace = sc.collect_trace(backend, snn, test, T=12, count_ops=True, progress=False)
    for policy in (TopKGap(0.0).fit(cal), Confidence(0.1), Timestep(4)):
        post = policy.evaluate(trace)
        real = sc.early_exit_loader(backend, snn, test, policy, T=12, refill=True, capacity=capacity,
                                    count_ops=True, block=block, progress=False)
        assert torch.equal(post.exit_step, real.exit_step) and torch.equal(post.predictions, real.predictions)
        assert torch.equal(post.ops_at_exit, real.ops_at_exit) and torch.equal(post.labels, real.labels)


def test_last_blocks_run_rows_past_T_as_padding_never_seen():
    """After a refill the last rows stand at different steps; a block runs the rows nearest
    T past it (their frame index and the rule's step held at T - 1), and nothing computed
    there is decided on or checked: here sums that are finite up to T overflow one step later."""
    pytest.importorskip("snntorch")
    import snntorch as snn

    T, N = 6, 40
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (N,), generator=g)
    turns = torch.randint(1, T + 1, (N,), generator=g)  # the step at which each sample turns confident
    frames = torch.zeros(N, T, 2)
    for i in range(N):
        if turns[i] < T:
            frames[i, turns[i] - 1, labels[i]] = 10.0
    frames[:, T - 1, 0] = 2e38  # finite sums up to step T, past float32's range one step after it
    data = [(frames[i:i + 16], labels[i:i + 16]) for i in range(0, N, 16)]
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False),
                        snn.Leaky(beta=1.0, threshold=float("inf"), reset_mechanism="none", init_hidden=True,
                                  output=True))
    with torch.no_grad():
        net[1].weight.copy_(torch.eye(2))
    backend = sc.backends.get("snntorch")
    trace = sc.collect_trace(backend, net, data, T=T, encoder="frames", readout="membrane", progress=False)
    clean = frames.clone()
    clean[:, T - 1] = 0.0
    cal = sc.collect_trace(backend, net, [(clean, labels)], T=T, encoder="frames", readout="membrane", progress=False)
    calls = []

    class Logged:
        def __getattr__(self, name):
            return getattr(backend, name)

        def run_block(self, net, x_seq, readout="auto", plan=None):
            calls.append(x_seq.shape[0])
            return backend.run_block(net, x_seq, readout, plan)

    for policy in (Confidence(0.01), TopKGap(0.0).fit(cal)):
        post = policy.evaluate(trace)
        assert post.exit_step.unique().numel() >= 4  # exits at many steps: rows drift apart after refills
        real = sc.early_exit_loader(Logged(), net, data, policy, T=T, encoder="frames", readout="membrane",
                                    refill=True, capacity=16, progress=False)
        assert torch.equal(post.exit_step, real.exit_step) and torch.equal(post.predictions, real.predictions)
    assert calls and max(calls) > 1  # the last rows ran in blocks


def test_refill_with_a_users_snntorch_net_and_frames():
    net = snntorch_sequential(2 * 4 * 4, 16, 5)
    backend = sc.backends.get("snntorch")
    g = torch.Generator().manual_seed(0)
    frames = (torch.rand(40, 6, 2, 4, 4, generator=g) < 0.4).float()  # [N, T, 2, H, W]
    data = [(frames[i:i + 16], torch.randint(0, 5, (frames[i:i + 16].shape[0],), generator=g))
            for i in range(0, 40, 16)]
    trace = sc.collect_trace(backend, net, data, T=6, encoder="frames", readout="membrane", progress=False)
    policy = Confidence(0.5)
    post = policy.evaluate(trace)
    real = sc.early_exit_loader(backend, net, data, policy, T=6, encoder="frames", readout="membrane",
                                refill=True, capacity=5, progress=False)
    assert torch.equal(post.exit_step, real.exit_step) and torch.equal(post.predictions, real.predictions)
    with pytest.raises(ValueError, match="refill=True needs encoder"):
        sc.early_exit_loader(backend, net, data, policy, T=6, encoder="none", refill=True, progress=False)


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_users_own_spikingjelly_net(step_mode):
    from .test_users_nets import DATA, _csnn

    backend = backend_or_skip("spikingjelly")
    net = _csnn(step_mode)
    trace = sc.collect_trace(backend, net, DATA, T=8, count_ops=True, progress=False)
    policy = TopKGap(0.2).fit(trace)
    post = policy.evaluate(trace)
    real = sc.early_exit_loader(backend, net, DATA, policy, count_ops=True, progress=False)
    assert torch.equal(post.exit_step, real.exit_step) and torch.equal(post.predictions, real.predictions)
    assert torch.equal(post.ops_at_exit, real.ops_at_exit)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("block", [1, 3, "auto"])
def test_block_length_changes_nothing_but_speed(name, block):
    """Steps run between decisions (one call per block) leave exits, predictions and ops as they were."""
    backend = backend_or_skip(name)
    ann = trained_digits_cnn("qcfs")
    train, test = digits_loaders()
    snn = backend.convert(ann)
    cal = sc.collect_trace(backend, snn, train, T=12, progress=False)
    batch = [next(iter(test))]
    trace = sc.collect_trace(backend, snn, batch, T=12, count_ops=True, progress=False)
    for policy in _policies(cal):
        post = policy.evaluate(trace)
        steps, preds, ops = sc.early_exit(backend, snn, batch[0][0], policy, T=12, count_ops=True, block=block)
        assert torch.equal(post.exit_step, steps) and torch.equal(post.predictions, preds), policy
        assert torch.equal(post.ops_at_exit, ops), policy


@pytest.mark.parametrize("name", BACKENDS)
def test_run_block_equals_single_steps(name):
    backend = backend_or_skip(name)
    data = random_batches(n=16, batches=1, seed=5)
    snn = backend.convert(small_ann(), calibration=data)
    x_seq = sc.encode(data[0][0], 9)
    plan = backend.block_plan(snn)
    assert plan is not None and [s for _, s in plan].count(True) == 2
    with torch.no_grad():
        backend.reset(snn)
        stepped = torch.stack([backend.step(snn, x_seq[t]) for t in range(9)])
        backend.reset(snn)
        blocked = torch.cat([backend.run_block(snn, x_seq[:4], plan=plan),
                             backend.run_block(snn, x_seq[4:], plan=plan)])
    assert torch.equal(stepped, blocked)
    assert backend.block_plan(snn, readout=lambda out: out) is None  # a callable readout may read state: steps


def test_block_plan_on_users_snntorch_net_with_membrane_readout():
    net = snntorch_sequential()
    backend = sc.backends.get("snntorch")
    data = random_batches(n=32, batches=1, seed=4)
    for readout in ("spikes", "membrane"):
        trace = sc.collect_trace(backend, net, data, T=10, readout=readout, progress=False)
        for policy in (Confidence(0.3), TopKGap(0.1).fit(trace)):
            post = policy.evaluate(trace)
            steps, preds, _ = sc.early_exit(backend, net, data[0][0], policy, T=10, readout=readout, block=4)
            assert torch.equal(post.exit_step, steps) and torch.equal(post.predictions, preds)


def test_block_on_a_users_spikingjelly_sequential():
    backend = backend_or_skip("spikingjelly")
    from .test_users_nets import _sj

    functional, layer, neuron, surrogate = _sj()
    torch.manual_seed(0)
    net = torch.nn.Sequential(layer.Conv2d(1, 6, 3, padding=1), neuron.IFNode(surrogate_function=surrogate.ATan()),
                              layer.Flatten(), layer.Linear(6 * 8 * 8, 10), neuron.LIFNode(tau=2.0))
    data = random_batches(n=40, batches=1, seed=6)
    trace = sc.collect_trace(backend, net, data, T=9, count_ops=True, progress=False)
    policy = TopKGap(0.2).fit(trace)
    post = policy.evaluate(trace)
    steps, preds, ops = sc.early_exit(backend, net, data[0][0], policy, count_ops=True, block=5)
    assert torch.equal(post.exit_step, steps) and torch.equal(post.predictions, preds)
    assert torch.equal(post.ops_at_exit, ops)
    assert all(getattr(m, "step_mode", "s") == "s" for m in net.modules())  # left as it was


@pytest.mark.parametrize("block", [0, -2, 1.5, "fast", True])
def test_bad_block_is_refused(block):
    backend = backend_or_skip("snntorch")
    data = random_batches(n=4, batches=1)
    snn = backend.convert(small_ann(), calibration=data)
    with pytest.raises(ValueError, match="block must be 'auto' or an integer >= 1"):
        sc.early_exit(backend, snn, data[0][0], Confidence(0.1), T=4, block=block)


def test_early_exit_refuses_what_cannot_stop_early():
    backend = backend_or_skip("snntorch")
    data = random_batches(n=4, batches=1)
    snn = backend.convert(small_ann(), calibration=data)
    with pytest.raises(ValueError, match="encoder='none'"):
        sc.early_exit(backend, snn, data[0][0], Confidence(0.1), T=4, encoder="none")
    with pytest.raises(ValueError, match="capacity must be an integer >= 1"):
        sc.early_exit_loader(backend, snn, data, Confidence(0.1), T=4, refill=True, capacity=0, progress=False)


@pytest.mark.cuda
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_cuda_early_exit_matches_evaluate_on_the_gpu(name, step_mode):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    backend = backend_or_skip(name)
    if step_mode == "m" and name != "spikingjelly":
        pytest.skip("multi-step networks are a SpikingJelly feature")
    data = random_batches(n=64, batches=1, seed=9)
    snn = backend.convert(small_ann(), calibration=data, step_mode=step_mode).cuda()
    trace = sc.collect_trace(backend, snn, data, T=10, count_ops=True, device="cuda", progress=False)
    for policy in _policies(trace):
        post = policy.evaluate(trace)
        for block in (1, "auto"):
            steps, preds, ops = sc.early_exit(backend, snn, data[0][0].cuda(), policy, T=10, count_ops=True,
                                              block=block)
            assert torch.equal(post.exit_step.cpu(), steps) and torch.equal(post.predictions.cpu(), preds), policy
            assert torch.equal(post.ops_at_exit.cpu(), ops), policy
        real = sc.early_exit_loader(backend, snn, data, policy, T=10, refill=True, capacity=20, device="cuda",
                                    progress=False)
        assert torch.equal(post.exit_step.cpu(), real.exit_step), policy


def test_refill_on_a_multi_step_spikingjelly_net():
    """Rows at different steps go through one multi-step call per block."""
    backend = backend_or_skip("spikingjelly")
    ann = trained_digits_cnn("qcfs")
    train, test = digits_loaders()
    snn = backend.convert(ann, step_mode="m")
    cal = sc.collect_trace(backend, snn, train, T=12, progress=False)
    trace = sc.collect_trace(backend, snn, test, T=12, count_ops=True, progress=False)
    for policy in (TopKGap(0.0).fit(cal), Timestep(4)):
        post = policy.evaluate(trace)
        for capacity, block in ((9, 3), (1000, "auto")):
            real = sc.early_exit_loader(backend, snn, test, policy, T=12, refill=True, capacity=capacity,
                                        block=block, count_ops=True, progress=False)
            assert torch.equal(post.exit_step, real.exit_step) and torch.equal(post.predictions, real.predictions)
            assert torch.equal(post.ops_at_exit, real.ops_at_exit)


@pytest.mark.parametrize("name", BACKENDS)
def test_runs_in_eval_mode_and_restores_every_module_mode(name):
    backend = backend_or_skip(name)
    data = random_batches(n=32, batches=1, seed=3)
    snn = backend.convert(small_ann(), calibration=random_batches(seed=4))
    trace = sc.collect_trace(backend, snn.eval(), data, T=8, progress=False)
    policy = TopKGap(0.05).fit(trace)
    expected = policy.evaluate(trace)
    bn = [m for m in snn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn, "the test needs a BatchNorm layer (batch statistics would change the outputs in training mode)"
    before = [b.running_mean.clone() for b in bn]
    snn.train()
    [m for m in snn.modules() if isinstance(m, torch.nn.Linear)][-1].eval()  # a mixed state comes back as it was
    modes = [m.training for m in snn.modules()]
    steps, preds, _ = sc.early_exit(backend, snn, data[0][0], policy, T=8)
    assert torch.equal(steps, expected.exit_step) and torch.equal(preds, expected.predictions)
    assert [m.training for m in snn.modules()] == modes
    assert all(torch.equal(b.running_mean, r) for b, r in zip(bn, before))  # statistics untouched


@pytest.mark.parametrize("name", BACKENDS)
def test_refilled_rows_restart_from_the_initial_state_in_place_or_not(name):
    """Continuous batching hands exited rows to new samples: the adapters' in-place reset and the
    generic one (fresh rows appended and moved into place) give the same state and the same results."""
    backend = backend_or_skip(name)
    snn = backend.convert(small_ann(), calibration=random_batches(seed=4))
    x = random_batches(n=12, batches=1, seed=5)[0][0]
    backend.reset(snn)
    with torch.no_grad():
        for _ in range(3):
            backend.step(snn, x)
    rows = torch.tensor([1, 4, 11])
    for m in backend.stateful_modules(snn):
        membrane = backend.membrane_of(m)
        if membrane is None:
            continue
        before = membrane.clone()
        generic = copy.deepcopy(m)
        backend.reset_rows_module(m, rows, 12)
        Backend.reset_rows_module(backend, generic, rows, 12)
        after, expected = backend.membrane_of(m), backend.membrane_of(generic)
        assert torch.equal(after, expected)
        others = torch.ones(12, dtype=torch.bool)
        others[rows] = False
        assert torch.equal(after[others], before[others]) and not torch.equal(after[rows], before[rows])

    class Generic(type(backend)):
        reset_rows_module = Backend.reset_rows_module

    data = random_batches(n=20, batches=3, seed=6)
    trace = sc.collect_trace(backend, snn, data, T=10, count_ops=True, progress=False)
    policy = TopKGap(0.05).fit(trace)
    post = policy.evaluate(trace)
    for b in (backend, Generic()):
        real = sc.early_exit_loader(b, snn, data, policy, T=10, refill=True, capacity=8, count_ops=True,
                                    progress=False)
        assert torch.equal(post.exit_step, real.exit_step) and torch.equal(post.predictions, real.predictions)
        assert torch.equal(post.ops_at_exit, real.ops_at_exit)


@pytest.mark.parametrize("name", BACKENDS)
def test_refill_with_a_random_rate_encoder(name):
    """A callable encoder (Poisson rate coding) encodes each batch as the loader is read, in the order
    collect_trace does: with the same seed, the same spikes and the same results."""
    backend = backend_or_skip(name)
    snn = backend.convert(small_ann(), calibration=random_batches(seed=4))
    data = [(x.abs().clamp(0, 1), y) for x, y in random_batches(n=20, batches=3, seed=6)]

    def rate(x, T):
        return (torch.rand(T, *x.shape) < x).float()

    torch.manual_seed(11)
    trace = sc.collect_trace(backend, snn, data, T=10, encoder=rate, progress=False)
    policy = Confidence(0.75)
    post = policy.evaluate(trace)
    assert 1 < post.mean_steps < 9  # samples exit at different steps: refilled rows are used
    torch.manual_seed(11)
    real = sc.early_exit_loader(backend, snn, data, policy, T=10, encoder=rate, refill=True, capacity=8,
                                progress=False)
    assert torch.equal(post.exit_step, real.exit_step) and torch.equal(post.predictions, real.predictions)


def test_early_exit_refuses_one_class_outputs_for_rules_that_rank_classes():
    backend = backend_or_skip("snntorch")
    import snntorch

    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 1), snntorch.Leaky(beta=0.9, init_hidden=True, output=True))
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"Stability needs C >= 2 classes, got C = 1"):
        sc.early_exit(backend, net, x, sc.Stability(2), T=4, readout="membrane")


def test_refill_of_a_float64_membrane_readout_keeps_the_network_state():
    """The first step's float64 outputs may be the neuron's own membrane: the pool must copy
    them, or writing its rows in place at a refill resets the network's state as well."""
    backend = backend_or_skip("snntorch")
    from snncutoff_snntorch.neurons import IFNeuron

    node = IFNeuron(threshold=1.0)  # initial membrane 0.5
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), node)
    with torch.no_grad():
        net[1].weight.mul_(3.0)
    net = net.double()
    x = torch.randn(60, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    data = [(x[i : i + 20], torch.zeros(20, dtype=torch.long)) for i in range(0, 60, 20)]
    kw = {"T": 8, "readout": "membrane", "progress": False}
    plain = sc.early_exit_loader(backend, net, data, Confidence(0.6), **kw)
    refill = sc.early_exit_loader(backend, net, data, Confidence(0.6), refill=True, capacity=20, **kw)
    assert (plain.exit_step == 1).sum() > 5  # rows are refilled after the first step
    assert torch.equal(plain.exit_step, refill.exit_step) and torch.equal(plain.predictions, refill.predictions)


def test_cumulative_outputs_past_the_dtype_range_stop_early_exit_with_a_clear_error():
    """float16 outputs whose running sum overflows: named, never scored (a NaN score would
    otherwise keep a row from its forced exit)."""
    backend = backend_or_skip("spikingjelly")
    from spikingjelly.activation_based import neuron

    net = nn.Sequential(nn.Linear(2, 4), neuron.IFNode(v_threshold=6e4, v_reset=None))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[4000.0, 0], [4000.0, 0], [0, 0], [0, 0]]))
        net[0].bias.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0]))
    net = net.half()
    T = 8
    cal = Trace(torch.arange(1, T + 1).view(T, 1, 1) * torch.tensor([[1.0, 0, 0, 0]]).expand(T, 20, 4).clone(),
                torch.zeros(20, dtype=torch.long))
    policy = Confidence(0.1).fit(cal)
    xs = torch.tensor([[1.0, 0], [0, 0], [0, 0], [0, 0], [1.0, 0], [0, 0]]).half()
    data = [(xs[i : i + 1], torch.zeros(1, dtype=torch.long)) for i in range(xs.shape[0])]
    with pytest.raises(ValueError, match=r"outputs at step \d+ holds? \d+ NaN or infinite"):
        sc.early_exit_loader(backend, net, data, policy, T=T, readout="membrane", refill=True, capacity=2,
                             progress=False)
