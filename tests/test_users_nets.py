"""Networks written the way each framework's tutorials write them, run through snncutoff as they are."""

import pytest
import torch
from torch import nn

import snncutoff as sc

from .helpers import random_batches

DATA = random_batches(shape=(1, 8, 8), n=32)


def _sj():
    pytest.importorskip("spikingjelly.activation_based.neuron")
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    return functional, layer, neuron, surrogate


def _csnn(step_mode: str):
    """The CSNN of SpikingJelly's Fashion-MNIST tutorial, shrunk to 8x8 inputs."""
    functional, layer, neuron, surrogate = _sj()

    class CSNN(nn.Module):
        def __init__(self, channels: int = 8):
            super().__init__()
            self.conv_fc = nn.Sequential(
                layer.Conv2d(1, channels, kernel_size=3, padding=1, bias=False),
                layer.BatchNorm2d(channels),
                neuron.IFNode(surrogate_function=surrogate.ATan()),
                layer.MaxPool2d(2, 2),
                layer.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
                layer.BatchNorm2d(channels),
                neuron.IFNode(surrogate_function=surrogate.ATan()),
                layer.MaxPool2d(2, 2),
                layer.Flatten(),
                layer.Linear(channels * 2 * 2, 10, bias=False),
                neuron.IFNode(surrogate_function=surrogate.ATan()),
            )
            functional.set_step_mode(self, step_mode=step_mode)

        def forward(self, x):
            return self.conv_fc(x)

    torch.manual_seed(0)
    net = CSNN().eval()
    with torch.no_grad():  # weights that make the last layer fire now and then
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(4)
    return net


def test_spikingjelly_tutorial_csnn_single_and_multi_step():
    backend = sc.backends.get("spikingjelly")
    net_s, net_m = _csnn("s"), _csnn("m")
    net_m.load_state_dict(net_s.state_dict())
    assert not backend.is_multistep(net_s) and backend.is_multistep(net_m)
    a = sc.collect_trace(backend, net_s, DATA, T=8, count_ops=True, progress=False)
    b = sc.collect_trace(backend, net_m, DATA, T=8, count_ops=True, progress=False)
    assert torch.equal(a.outputs, b.outputs) and torch.equal(a.ops, b.ops)
    assert a.outputs[-1].sum() > 0  # spike counts accumulate (the default readout)
    assert set(a.per_step_outputs().unique().tolist()) <= {0.0, 1.0}
    # reset is per network: running it again gives the same trace
    assert torch.equal(sc.collect_trace(backend, net_m, DATA, T=8, progress=False).outputs, b.outputs)
    # the cutoff policies work on it directly
    r = sc.TopKGap(0.05).fit(a).evaluate(b)
    assert 1 <= r.mean_steps <= 8


def test_spikingjelly_membrane_readout_and_select():
    backend = sc.backends.get("spikingjelly")
    net = _csnn("m")
    v = sc.collect_trace(backend, net, DATA, T=4, readout="membrane", progress=False)
    assert v.per_step_outputs().abs().sum() > 0
    net_s1 = _csnn("s")
    net_s1.load_state_dict(net.state_dict())
    v_s = sc.collect_trace(backend, net_s1, DATA, T=4, readout="membrane", progress=False)
    assert torch.equal(v.outputs, v_s.outputs)
    x_seq = DATA[0][0].unsqueeze(0).expand(6, *DATA[0][0].shape)
    net_s = _csnn("s")
    backend.reset(net_s)
    full = backend.run(net_s, x_seq)
    backend.reset(net_s)
    backend.run(net_s, x_seq[:2])
    keep = torch.tensor([5, 1, 30])
    backend.select(net_s, keep)
    assert torch.equal(backend.run(net_s, x_seq[2:, keep]), full[2:, keep])


def test_spikingjelly_ann2snn_output_runs_as_is():
    _sj()
    pytest.importorskip("requests")  # SpikingJelly's ann2snn imports it
    from spikingjelly.activation_based import ann2snn

    torch.manual_seed(0)
    ann = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(8 * 4 * 4, 10)).eval()
    x = torch.cat([b[0] for b in DATA])
    y = torch.cat([b[1] for b in DATA])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    if hasattr(ann2snn, "RateCodingRecipe"):
        snn = ann2snn.Converter(ann2snn.RateCodingRecipe(dataloader=loader, mode="max")).convert(ann)
    else:
        snn = ann2snn.Converter(mode="max", dataloader=loader)(ann)
    backend = sc.backends.get("spikingjelly")
    trace = sc.collect_trace(backend, snn, loader, T=64, progress=False)
    with torch.no_grad():
        agree = float((trace.predictions()[-1] == ann(x).argmax(-1)).double().mean())
    assert agree >= 0.9
    # and ours gives the same kind of net from the same ANN, spiking on the same data
    ours = sc.collect_trace(backend, backend.convert(ann, calibration=loader), loader, T=64, progress=False)
    assert float((ours.predictions()[-1] == ann(x).argmax(-1)).double().mean()) >= 0.9


def _snntorch():
    return pytest.importorskip("snntorch")


def test_snntorch_sequential_init_hidden():
    snn = _snntorch()
    from snntorch import surrogate

    torch.manual_seed(0)
    spike_grad = surrogate.atan()
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.MaxPool2d(2),
        snn.Leaky(beta=0.9, spike_grad=spike_grad, init_hidden=True),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
        snn.Leaky(beta=0.9, spike_grad=spike_grad, init_hidden=True, output=True),
    )
    backend = sc.backends.get("snntorch")
    a = sc.collect_trace(backend, net, DATA, T=8, count_ops=True, progress=False)
    b = sc.collect_trace(backend, net, DATA, T=8, count_ops=True, progress=False)
    assert torch.equal(a.outputs, b.outputs) and torch.equal(a.ops, b.ops)
    assert set(a.per_step_outputs().unique().tolist()) <= {0.0, 1.0}
    m = sc.collect_trace(backend, net, DATA, T=8, readout="membrane", progress=False)
    assert not torch.equal(m.outputs, a.outputs)
    # a second, independent network is not reset by running the first (no global reset)
    other = nn.Sequential(nn.Linear(4, 3), snn.Leaky(beta=0.5, init_hidden=True, output=True))
    other(torch.ones(2, 4))
    before = other[1].mem.clone()
    sc.collect_trace(backend, net, DATA, T=2, progress=False)
    assert torch.equal(other[1].mem, before)


def test_snntorch_tutorial_module_that_loops_over_time():
    snn = _snntorch()

    class Net(nn.Module):
        """snnTorch tutorial 5 style: the forward loops over num_steps and stacks records."""

        def __init__(self, num_steps: int):
            super().__init__()
            self.num_steps = num_steps
            self.fc1, self.lif1 = nn.Linear(64, 100), snn.Leaky(beta=0.95)
            self.fc2, self.lif2 = nn.Linear(100, 10), snn.Leaky(beta=0.95)

        def forward(self, x):
            mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
            spk2_rec, mem2_rec = [], []
            for _ in range(self.num_steps):
                spk1, mem1 = self.lif1(self.fc1(x.flatten(1)), mem1)
                spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
                spk2_rec.append(spk2)
                mem2_rec.append(mem2)
            return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0)

    torch.manual_seed(0)
    net = Net(num_steps=10)
    backend = sc.backends.get("snntorch")
    spikes = sc.collect_trace(backend, net, DATA, T=10, encoder="none", multistep=True, count_ops=True,
                              progress=False)
    mem = sc.collect_trace(backend, net, DATA, T=10, encoder="none", multistep=True, readout="membrane",
                           progress=False)
    with torch.no_grad():
        spk_rec, mem_rec = net(DATA[0][0])
    assert torch.equal(spikes.per_step_outputs()[:, :32], spk_rec)
    assert torch.allclose(mem.outputs[:, :32], mem_rec.cumsum(0))
    assert spikes.ops.shape == (10, 64)
    with pytest.raises(ValueError, match=r"\[T, N, C\] = \[8, N, C\]"):
        sc.collect_trace(backend, net, DATA, T=8, encoder="none", multistep=True, progress=False)


def test_snntorch_synaptic_neurons_and_rate_coding():
    snn = _snntorch()
    from snntorch import spikegen

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), snn.Synaptic(alpha=0.8, beta=0.9, init_hidden=True),
                        nn.Linear(32, 10), snn.Synaptic(alpha=0.8, beta=0.9, init_hidden=True, output=True))
    backend = sc.backends.get("snntorch")
    data = [(torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,)))]
    torch.manual_seed(1)
    rate = sc.collect_trace(backend, net, data, T=6, encoder=lambda x, T: spikegen.rate(x, num_steps=T),
                            readout="membrane", progress=False)
    with torch.no_grad():  # the same by hand: reset, feed the same Poisson spikes, read mem
        torch.manual_seed(1)
        x_seq = spikegen.rate(data[0][0], num_steps=6)
        for m in net.modules():
            for name in ("syn", "mem"):
                if isinstance(getattr(m, name, None), torch.Tensor):
                    setattr(m, name, torch.zeros(0))
        mems = torch.stack([net(x_seq[t])[-1] for t in range(6)])
    assert torch.allclose(rate.per_step_outputs(), mems, atol=1e-5)
    # select keeps syn and mem rows of both layers
    x_seq = x_seq[:, :4]
    backend.reset(net)
    full = backend.run(net, x_seq)
    backend.reset(net)
    backend.run(net, x_seq[:2])
    keep = torch.tensor([3, 1])
    backend.select(net, keep)
    assert torch.equal(backend.run(net, x_seq[2:, keep]), full[2:, keep])
