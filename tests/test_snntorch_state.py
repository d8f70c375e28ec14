"""Every stepped snnTorch neuron keeps working after reset / select / admit / reset_rows, at any batch size.

Each network is compared with a freshly built copy stepped by hand (one new network per batch),
so the reference owes nothing to the adapter's state handling: collect_trace on batches of 32
then 16, early exit (one batch, and a loader with refill) at block 1 and "auto", then
collect_trace again, all equal to it.
"""

import pytest
import torch
from torch import nn

import snncutoff as sc
from snncutoff import Confidence, Stability, Timestep, TopKGap, Trace

snn = pytest.importorskip("snntorch")

T = 6
#: stepped (one call per step) neurons holding state; those of the installed version
NEURONS = [n for n in ("Leaky", "Synaptic", "Alpha", "Lapicque", "RLeaky", "RSynaptic", "SLSTM", "SConv2dLSTM",
                       "DeltaLeaky") if hasattr(snn, n)]


def _neuron(name: str, features: int, output: bool) -> nn.Module:
    kw = {"init_hidden": True, "output": output}
    if name == "Leaky":
        return snn.Leaky(beta=0.8, **kw)
    if name == "Synaptic":
        return snn.Synaptic(alpha=0.7, beta=0.8, **kw)
    if name == "Alpha":
        return snn.Alpha(alpha=0.8, beta=0.6, threshold=0.5, **kw)
    if name == "Lapicque":
        return snn.Lapicque(beta=0.8, threshold=0.3, **kw)
    if name == "RLeaky":
        return snn.RLeaky(beta=0.8, linear_features=features, **kw)
    if name == "RSynaptic":
        return snn.RSynaptic(alpha=0.7, beta=0.8, linear_features=features, **kw)
    if name == "SLSTM":  # input size = hidden size: snnTorch keeps SLSTM state only then
        return snn.SLSTM(features, features, threshold=0.1, **kw)
    if name == "DeltaLeaky":
        return snn.DeltaLeaky(beta=0.8, delta_threshold=0.5, **kw)
    raise AssertionError(name)


def _build(name: str) -> nn.Module:
    """A small nn.Sequential of snnTorch users' kind (init_hidden, the last neuron output=True)."""
    torch.manual_seed(0)
    if name == "SConv2dLSTM":
        net = nn.Sequential(snn.SConv2dLSTM(1, 2, 3, threshold=0.02, init_hidden=True), nn.Flatten(),
                            nn.Linear(2 * 8 * 8, 10), snn.Leaky(beta=0.8, threshold=0.2, init_hidden=True,
                                                                 output=True))
    elif name == "DeltaLeaky":  # DeltaLeaky returns (spk, (mem, mem_prev)) always: last only
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), snn.Leaky(beta=0.8, init_hidden=True),
                            nn.Linear(16, 10), _neuron(name, 10, True))
    else:
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), _neuron(name, 16, False), nn.Linear(16, 10),
                            _neuron(name, 10, True))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(2.0)
    return net


def _data(n: int = 48, batch: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _membrane(out):
    mem = out[-1]
    return mem[0] if isinstance(mem, tuple) else mem  # DeltaLeaky: (mem, mem_prev)


def _reference(name: str, data, readout: str = "auto") -> Trace:
    """A new network per batch, stepped by hand: what a fresh network says."""
    outs = []
    with torch.no_grad():
        for x, _ in data:
            net = _build(name)
            steps = [net(x) for _ in range(T)]
            outs.append(torch.stack([_membrane(o) if readout == "membrane" else o[0] for o in steps]))
    return Trace.from_steps(torch.cat(outs, 1).float(), torch.cat([y for _, y in data]).long())


def _check_early_exit(backend, net, data, ref: Trace, readout: str = "auto") -> None:
    x0 = data[0][0]
    ref0 = Trace(ref.outputs[:, :x0.shape[0]], ref.labels[:x0.shape[0]])
    policies = [TopKGap(0.0).fit(ref), Confidence(0.3), Stability(2), Timestep(3)]
    moved = False
    for policy in policies:
        post, post0 = policy.evaluate(ref), policy.evaluate(ref0)
        moved |= bool((post.exit_step < T).any() and (post.exit_step > post.exit_step.min()).any())
        for block in (1, "auto"):
            steps, preds, _ = sc.early_exit(backend, net, x0, policy, T, readout=readout, block=block)
            assert torch.equal(steps, post0.exit_step) and torch.equal(preds, post0.predictions), (policy, block)
            for capacity in (None, 8):
                real = sc.early_exit_loader(backend, net, data, policy, T, readout=readout, refill=True,
                                            capacity=capacity, block=block, progress=False)
                assert torch.equal(real.exit_step, post.exit_step), (policy, block, capacity)
                assert torch.equal(real.predictions, post.predictions), (policy, block, capacity)
    assert moved  # samples leave at different steps: rows were dropped and refilled


@pytest.mark.parametrize("name", NEURONS)
def test_state_follows_any_batch_size_and_every_early_exit(name):
    backend = sc.backends.get("snntorch")
    net, data = _build(name), _data()
    ref = _reference(name, data)
    assert ref.outputs[-1].abs().sum() > 0  # the network spikes
    first = sc.collect_trace(backend, net, data, T=T, progress=False)  # batches of 32, then 16
    assert torch.equal(first.outputs, ref.outputs)
    _check_early_exit(backend, net, data, ref)
    again = sc.collect_trace(backend, net, data, T=T, progress=False)
    assert torch.equal(again.outputs, ref.outputs)


@pytest.mark.parametrize("name", NEURONS)
def test_select_to_no_row_then_admit_starts_fresh(name):
    """Early exit may drop every row and then admit new samples: they start from the initial state."""
    backend = sc.backends.get("snntorch")
    net, (x, _) = _build(name), _data()[0]
    with torch.no_grad():
        backend.reset(net)
        for _ in range(2):
            net(x[:6])
        backend.select(net, torch.zeros(6, dtype=torch.bool))
        backend.admit(net, 3)
        got = [net(x[6:9])[0] for _ in range(3)]
        fresh = _build(name)
        want = [fresh(x[6:9])[0] for _ in range(3)]
    assert torch.equal(torch.stack(got), torch.stack(want))


@pytest.mark.skipif(not hasattr(snn, "DeltaLeaky"), reason="DeltaLeaky is snnTorch 1.0's")
def test_deltaleaky_membrane_readout():
    """DeltaLeaky returns (spk, (mem, mem_prev)): readout='membrane' reads its mem."""
    backend = sc.backends.get("snntorch")
    net, data = _build("DeltaLeaky"), _data()
    ref = _reference("DeltaLeaky", data, "membrane")
    trace = sc.collect_trace(backend, net, data, T=T, readout="membrane", progress=False)
    assert torch.equal(trace.outputs, ref.outputs)
    _check_early_exit(backend, net, data, ref, "membrane")
    layer = backend.spiking_layers(net)[-1][1]
    with torch.no_grad():
        backend.reset(net)
        _, (mem, _) = net(data[0][0])
    assert torch.equal(backend.membrane_of(layer), mem)  # no reset to undo: the membrane is mem


@pytest.mark.parametrize(("name", "mechanism"), [("Leaky", "subtract"), ("Leaky", "zero"), ("Synaptic", "subtract"),
                                               ("RLeaky", "subtract"), ("RLeaky", "zero")])
def test_membrane_readout_without_reset_delay_is_snntorchs_mem(name, mechanism):
    """With reset_delay=False snnTorch's mem already holds the reset: the membrane readout is mem
    itself, also where it stays above threshold after a spike (input 2.5 at theta = 1: mem 1.5)."""
    kw = {"threshold": 1.0, "reset_mechanism": mechanism, "reset_delay": False, "init_hidden": True}
    make = {"Leaky": lambda: snn.Leaky(beta=1.0, **kw), "Synaptic": lambda: snn.Synaptic(alpha=0.5, beta=1.0, **kw),
            "RLeaky": lambda: snn.RLeaky(beta=1.0, linear_features=2, **kw)}[name]

    def build() -> nn.Sequential:
        net = nn.Sequential(nn.Linear(1, 2, bias=False), make())
        with torch.no_grad():
            net[0].weight.copy_(torch.tensor([[1.0], [0.5]]))
        return net

    frames = torch.zeros(3, T, 1)
    frames[:, 0, 0] = torch.tensor([2.5, 0.7, 1.3])
    frames[:, 2, 0] = torch.tensor([0.0, 0.9, -0.4])
    ref, net = build(), build()
    net.load_state_dict(ref.state_dict())
    mems = []
    with torch.no_grad():
        for t in range(T):
            ref(frames[:, t])
            mems.append(ref[1].mem.clone())
    trace = sc.collect_trace(sc.backends.get("snntorch"), net, [(frames, torch.tensor([0, 1, 0]))], T=T,
                             encoder="frames", readout="membrane", progress=False)
    assert torch.equal(trace.outputs, torch.stack(mems).cumsum(0))  # the trace holds the running sum
    if (name, mechanism) == ("Leaky", "subtract"):
        assert float(mems[0][0, 0]) == 1.5  # the case a second reset got wrong


def test_rsynaptic_without_reset_delay_keeps_its_reset_out_of_mem():
    """snnTorch's RSynaptic computes a reset_delay=False reset into a local variable that it drops: the
    mem it keeps and returns is pre-reset, as with the delayed reset, so the readout subtracts it."""
    backend = sc.backends.get("snntorch")
    n = snn.RSynaptic(alpha=0.5, beta=0.9, all_to_all=False, V=0.0, reset_delay=False, threshold=1.0)
    zeros = torch.zeros(1, 2)
    with torch.no_grad():
        spk, _, mem = n(torch.tensor([[1.6, 0.3]]), zeros, zeros, zeros)
    assert spk.tolist() == [[1.0, 0.0]] and torch.allclose(mem, n.mem)
    assert torch.allclose(backend.membrane_of(n), mem - spk * 1.0)  # 0.6, 0.3


def test_a_neuron_whose_state_cannot_follow_the_batch_is_named():
    """A custom neuron that keeps its state at the first batch size: the error says which, and why."""

    class Sticky(snn.Leaky):
        def forward(self, x):
            if self.mem.shape[0] == 0:
                self.mem = torch.zeros_like(x)
            self.mem = self.beta * self.mem + x
            return self.fire(self.mem), self.mem

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), Sticky(beta=0.8, init_hidden=True, output=True))
    with pytest.raises(ValueError, match=r"'2' \(Sticky\) is not one whose state snncutoff knows"):
        sc.collect_trace("snntorch", net, _data(), T=3, progress=False)
    x = torch.cat([b[0] for b in _data()])
    with pytest.raises(ValueError, match=r"'2' \(Sticky\) is not one whose state") as caught:
        sc.early_exit("snntorch", net, x, sc.Confidence(0.5), 4)  # samples leave: the batch shrinks
    for hint in ("Check that each sample", "x.view(batch_size"):  # not the shape hints: the neuron is the cause
        assert hint not in str(caught.value)
