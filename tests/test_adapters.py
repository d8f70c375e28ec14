"""The backend contract and DESIGN.md's invariants, for every installed backend."""

import pytest
import torch
from torch import nn

import snncutoff as sc
from snncutoff import IF, LIF, Trace

from .helpers import BACKENDS, backend_or_skip, digits_loaders, random_batches, small_ann, trained_digits_cnn


def _seq(x, T):
    return x.unsqueeze(0).expand(T, *x.shape)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return backend_or_skip(request.param)


def _converted(backend, step_mode="s"):
    data = random_batches()
    return backend.convert(small_ann(), calibration=data, step_mode=step_mode), data


def test_convert_uses_the_frameworks_own_neurons(backend):
    snn, _ = _converted(backend)
    layers = backend.spiking_layers(snn)
    assert len(layers) == 2
    acts = snn.snncutoff_activations
    assert [a.path for a in acts] == ["2", "6"] and all(a.v_init == 0.5 for a in acts)
    if backend.name == "spikingjelly":
        from spikingjelly.activation_based import neuron

        node = layers[0][1]
        assert isinstance(node, neuron.IFNode) and node.v_reset is None
        assert node.v_threshold == pytest.approx(acts[0].threshold)
    else:
        import snntorch

        assert isinstance(snn[2].lif, snntorch.Leaky)


def test_run_equals_step_loop(backend):
    snn, data = _converted(backend)
    x_seq = _seq(data[0][0], 12)
    backend.reset(snn)
    ran = backend.run(snn, x_seq)
    backend.reset(snn)
    stepped = torch.stack([backend.step(snn, x_seq[t]) for t in range(12)])
    assert ran.shape == (12, 64, 10) and torch.equal(ran, stepped)


def test_same_batch_twice_no_state_leak(backend):
    snn, data = _converted(backend)
    a = sc.collect_trace(backend, snn, data, T=10, progress=False)
    b = sc.collect_trace(backend, snn, data, T=10, progress=False)
    assert torch.equal(a.outputs, b.outputs)
    # and a different batch in between changes nothing either
    sc.collect_trace(backend, snn, random_batches(seed=5), T=3, progress=False)
    assert torch.equal(sc.collect_trace(backend, snn, data, T=10, progress=False).outputs, a.outputs)


def test_select_then_continue_equals_full_run(backend):
    snn, data = _converted(backend)
    x_seq = _seq(data[0][0], 9)
    backend.reset(snn)
    full = backend.run(snn, x_seq)
    for keep in (torch.tensor([3, 0, 17, 63]), torch.arange(64) % 3 == 0):
        backend.reset(snn)
        backend.run(snn, x_seq[:4])
        backend.select(snn, keep)
        rest = backend.run(snn, x_seq[4:][:, keep])
        assert torch.equal(rest, full[4:][:, keep])


def test_converted_relu_net_approaches_the_ann(backend):
    ann = trained_digits_cnn("relu")
    train, test = digits_loaders()
    snn = backend.convert(ann, calibration=train)
    trace = sc.collect_trace(backend, snn, test, T=256, progress=False)
    with torch.no_grad():
        ann_pred = torch.cat([ann(x).argmax(-1) for x, _ in test])
    agreement = float((trace.predictions()[-1] == ann_pred).double().mean())
    assert agreement >= 0.99


def test_qcfs_net_at_T_ge_L_loses_at_most_one_point(backend):
    ann = trained_digits_cnn("qcfs")
    _, test = digits_loaders()
    with torch.no_grad():
        ann_acc = float(torch.cat([(ann(x).argmax(-1) == y) for x, y in test]).double().mean())
    snn = backend.convert(ann)
    trace = sc.collect_trace(backend, snn, test, T=8, progress=False)  # L = 8
    assert float(trace.accuracy_per_step()[-1]) >= ann_acc - 0.01


def test_both_backends_agree_exactly():
    backends = [backend_or_skip(n) for n in BACKENDS]
    train, test = digits_loaders()
    for ann, data, kw in ((trained_digits_cnn("qcfs"), test, {}),
                          (small_ann(), random_batches(seed=3), {"calibration": random_batches(seed=4)})):
        traces = [sc.collect_trace(b, b.convert(ann, **kw), data, T=24, count_ops=True, progress=False)
                  for b in backends]
        delta = float((traces[0].outputs - traces[1].outputs).abs().max())
        print(f"max |output difference| between backends: {delta}")
        assert delta == 0.0
        assert torch.equal(traces[0].predictions(), traces[1].predictions())
        assert torch.equal(traces[0].ops, traces[1].ops)


def test_count_ops_is_spikes_times_fan_out(backend):
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    data = [(torch.randn(4, 6), torch.zeros(4, dtype=torch.long))]
    snn = backend.convert(ann, calibration=data)
    trace = sc.collect_trace(backend, snn, data, T=5, count_ops=True, progress=False)
    with backend.record(snn, store=True) as rec:
        backend.reset(snn)
        backend.run(snn, _seq(data[0][0], 5))
    spikes = torch.stack(next(iter(rec.spikes.values())))  # [T, N, 5], 0/1
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    expected = 6 * 5 + spikes.sum(-1) * 3  # dense MACs of the first layer + spikes x fan-out 3
    assert torch.equal(trace.ops, expected.double())
    assert torch.equal(rec.spike_counts(), spikes.sum(-1).double())


def test_conv_fan_out_counts_borders_exactly(backend):
    from snncutoff.record import synaptic_ops

    conv = nn.Conv2d(1, 2, 3, padding=1)
    s = torch.zeros(1, 1, 4, 4)
    s[0, 0, 0, 0] = 1.0  # a corner spike reaches 2x2 positions of each of 2 output maps
    s[0, 0, 1, 1] = 1.0  # an inner spike reaches 3x3
    assert float(synaptic_ops(conv, s)) == 2 * (4 + 9)


@pytest.mark.parametrize("padding, size", [("same", 5), ("valid", 3), (2, 7)])
def test_conv_dense_cost_for_every_padding_form(padding, size):
    from snncutoff.record import synaptic_ops

    x = torch.rand(2, 2, 5, 5) + 0.5  # analog input: dense cost, out positions x out channels x (2 x 3 x 3)
    assert synaptic_ops(nn.Conv2d(2, 3, 3, padding=padding), x).tolist() == [size * size * 3 * 18] * 2
    x1 = torch.rand(2, 2, 5) + 0.5
    assert synaptic_ops(nn.Conv1d(2, 3, 3, padding=padding), x1).tolist() == [size * 3 * 6] * 2


def test_recorder_membranes(backend):
    snn, data = _converted(backend)
    with backend.record(snn, store=True, membrane=True) as rec:
        backend.reset(snn)
        backend.run(snn, _seq(data[0][0], 3))
    v = next(iter(rec.membranes.values()))
    assert len(v) == 3 and v[0].shape == (64, 8, 8, 8)
    # post-reset membranes of a soft-reset IF stay below the threshold
    theta = snn.snncutoff_activations[0].threshold
    assert float(torch.stack(v).max()) < theta + 1e-4


def test_nan_output_is_reported(backend):
    snn, data = _converted(backend)
    with torch.no_grad():
        snn[-1].weight[3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite value\(s\); the first is at \(t, n\) = \(0, 0\)"):
        sc.collect_trace(backend, snn, data, T=2, progress=False)
    with pytest.raises(ValueError, match=r"batch 0 holds .* NaN or infinite value\(s\); the first is at \(t, n\)"):
        sc.collect_trace(backend, snn, data, T=2, keep="summary", progress=False)


def test_nan_input_is_reported(backend):
    snn, data = _converted(backend)
    bad = [data[0], (torch.full_like(data[1][0], float("nan")), data[1][1])]
    with pytest.raises(ValueError, match="batch 1"):
        sc.collect_trace(backend, snn, bad, T=2, progress=False)


def test_bad_T_and_shapes(backend):
    snn, data = _converted(backend)
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        sc.collect_trace(backend, snn, data, T=0, progress=False)
    with pytest.raises(ValueError, match=r"time-major \[T, N, ...\], encoder='none'"):
        sc.collect_trace(backend, snn, data, T=4, encoder="none", progress=False)
    with pytest.raises(ValueError, match=r"must be \[T, N, C\] = \[4, N, C\]"):
        sc.collect_trace(backend, snn, data, T=4, readout=lambda out: out[0], progress=False)


def test_lif_spec_builds_trainable_nets(backend):
    ann = small_ann()
    snn = backend.convert(ann, spec=LIF(tau=2.0, surrogate="sigmoid", alpha=4.0))
    assert len(backend.spiking_layers(snn)) == 2
    x_seq = _seq(random_batches()[0][0], 4)
    backend.reset(snn)
    out = backend.run(snn, x_seq)
    out.sum().backward()
    assert snn[0].weight.grad is not None and float(snn[0].weight.grad.abs().sum()) > 0


def test_lif_dynamics_match_across_backends():
    """Same LIF spec: SpikingJelly's LIFNode and the snnTorch Leaky-based neuron agree."""
    backends = [backend_or_skip(n) for n in BACKENDS]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 200, generator=g) * 3
    for reset in ("hard", "soft"):
        spec = LIF(tau=2.0, reset=reset)
        outs = []
        for b in backends:
            n = b.lif_neuron(spec)
            b.reset(n)
            outs.append(torch.stack([n(x[t].unsqueeze(0))[0] for t in range(16)]))
        assert float((outs[0] - outs[1]).abs().max()) == 0.0


def test_lif_surrogate_gradients_match_across_backends():
    backends = [backend_or_skip(n) for n in BACKENDS]
    for surrogate in ("atan", "sigmoid", "triangle"):
        grads = []
        for b in backends:
            x = torch.linspace(0.5, 1.5, 11, requires_grad=True)
            n = b.lif_neuron(LIF(tau=2.0, surrogate=surrogate, alpha=2.0))
            b.reset(n)
            n(x * 2.0).sum().backward()  # one step: H = x (decay_input), spike when >= 1
            grads.append(x.grad.clone())
        assert torch.allclose(grads[0], grads[1], atol=1e-6), surrogate


def test_convert_rejects_bad_spec(backend):
    with pytest.raises(TypeError, match="spec"):
        backend.convert(small_ann(), spec="IF")
    with pytest.raises(ValueError, match="threshold"):
        IF(threshold=0.0)
    with pytest.raises(ValueError, match="tau"):
        LIF(tau=1.0)


def test_trace_meta_names_the_backend(backend):
    snn, data = _converted(backend)
    tr = sc.collect_trace(backend, snn, data, T=2, progress=False, meta={"model": "small"})
    assert isinstance(tr, Trace) and tr.meta["backend"] == backend.name and tr.meta["model"] == "small"


def test_conv1d_networks_convert_identically():
    backends = [backend_or_skip(n) for n in BACKENDS]
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Conv1d(2, 6, 3, padding=1), nn.BatchNorm1d(6), nn.ReLU(), nn.AvgPool1d(2), nn.Flatten(),
                        nn.Linear(6 * 8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(32, 2, 16, generator=g), torch.randint(0, 4, (32,), generator=g))]
    traces = [sc.collect_trace(b, b.convert(ann, calibration=data), data, T=16, count_ops=True, progress=False)
              for b in backends]
    assert torch.equal(traces[0].outputs, traces[1].outputs) and torch.equal(traces[0].ops, traces[1].ops)
