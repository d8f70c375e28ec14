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


# ------------------------------------------------------------------ residual ANNs as people write them
class _CifarBlock(nn.Module):
    """The basic block of SpikingJelly's ann2snn CIFAR-10 ResNet sample: an empty nn.Sequential() is the
    identity shortcut, a 1x1 conv + BN the projection one, one ReLU module per call site."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return self.relu2(out)


class _SnncutoffBlock(nn.Module):
    """The basic block of the SNNCutoff code: a residual_function Sequential with an in-place ReLU, an
    empty nn.Sequential() shortcut, relu(residual + shortcut)."""

    def __init__(self, c: int):
        super().__init__()
        self.residual_function = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c),
                                               nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, 1, 1, bias=False),
                                               nn.BatchNorm2d(c))
        self.shortcut = nn.Sequential()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.residual_function(x) + self.shortcut(x))


def _resnet(block: str) -> nn.Module:
    torch.manual_seed(0)
    if block == "cifar":
        blocks = [_CifarBlock(8, 8), _CifarBlock(8, 16, 2)]
    else:
        blocks = [_SnncutoffBlock(8), _SnncutoffBlock(8)]
    width = 16 if block == "cifar" else 8
    net = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), *blocks,
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))
    with torch.no_grad():  # BN statistics of a trained net, roughly
        net.train()
        net(torch.cat([b[0] for b in DATA]))
    return net.eval()


@pytest.mark.parametrize("block", ["cifar", "snncutoff"])
def test_residual_anns_with_empty_sequential_shortcuts_convert_identically(block):
    ann = _resnet(block)
    nets = {"spikingjelly-s": sc.backends.get("spikingjelly").convert(ann, calibration=DATA),
            "spikingjelly-m": sc.backends.get("spikingjelly").convert(ann, calibration=DATA, step_mode="m"),
            "snntorch": sc.backends.get("snntorch").convert(ann, calibration=DATA)}
    traces = {k: sc.collect_trace(k.split("-")[0], v, DATA, T=16, count_ops=True, progress=False)
              for k, v in nets.items()}
    first = traces["spikingjelly-s"]
    for k, tr in traces.items():
        assert torch.equal(tr.outputs, first.outputs) and torch.equal(tr.ops, first.ops), k
    with torch.no_grad():  # the SNN computes what the ANN computes, near enough at T = 16
        agree = (first.predictions()[-1] == ann(torch.cat([b[0] for b in DATA])).argmax(-1)).double().mean()
    assert agree >= 0.8
    policy = sc.TopKGap(0.0).fit(first)
    post = policy.evaluate(first)
    for k, net in nets.items():
        real = sc.early_exit_loader(k.split("-")[0], net, DATA, policy, count_ops=True, progress=False)
        assert torch.equal(real.exit_step, post.exit_step) and torch.equal(real.predictions, post.predictions), k


# ------------------------------------------------------------------ networks snncutoff must refuse clearly
def test_a_network_run_with_the_wrong_backend_is_named():
    functional, layer, neuron, surrogate = _sj()
    sj_net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), neuron.IFNode())
    with pytest.raises(ValueError, match="pass backend='spikingjelly'"):
        sc.collect_trace("snntorch", sj_net, DATA, T=4, progress=False)
    snn_net = snntorch_sequential_net()
    with pytest.raises(ValueError, match="pass backend='snntorch'"):
        sc.early_exit("spikingjelly", snn_net, DATA[0][0], sc.Confidence(0.5), T=4)

    class Plain(nn.Module):
        """A neuron of the user's own, holding its membrane in a plain attribute."""

        def __init__(self):
            super().__init__()
            self.v = None

        def forward(self, x):
            self.v = x if self.v is None else self.v + x
            return (self.v > 1).float()

    with pytest.raises(ValueError, match="found no snntorch neuron in Sequential.*state would leak"):
        sc.collect_trace("snntorch", nn.Sequential(nn.Flatten(), nn.Linear(64, 10), Plain()), DATA, T=4,
                         progress=False)


def snntorch_sequential_net():
    snn = _snntorch()
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), snn.Leaky(beta=0.9, init_hidden=True),
                         nn.Linear(32, 10), snn.Leaky(beta=0.9, init_hidden=True, output=True))


def test_membrane_readout_is_refused_where_layers_follow_the_last_neuron():
    functional, layer, neuron, surrogate = _sj()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 100), neuron.LIFNode(), layer.VotingLayer(10))
    with pytest.raises(ValueError, match=r"membrane of the last spiking layer .* \[32, 100\].* output is \[32, 10\]"):
        sc.collect_trace("spikingjelly", net, DATA, T=4, readout="membrane", progress=False)
    assert sc.collect_trace("spikingjelly", net, DATA, T=4, progress=False).C == 10  # spikes: fine


def test_snntorch_whole_sequence_neurons_run_in_one_call_and_early_exit_refuses_them():
    snn = _snntorch()
    torch.manual_seed(0)

    class Net(nn.Module):
        """snnTorch's LeakyParallel example: [T, N, features] in, [T, N, classes] out."""

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 32)
            self.lif1 = snn.LeakyParallel(input_size=32, hidden_size=10)

        def forward(self, x):
            return self.lif1(self.fc(x.flatten(2)))

    net = Net().eval()
    backend = sc.backends.get("snntorch")
    assert backend.is_multistep(net)
    trace = sc.collect_trace(backend, net, DATA, T=6, progress=False)  # one call per batch, detected
    with torch.no_grad():
        expected = net(DATA[0][0].unsqueeze(0).expand(6, *DATA[0][0].shape))
    assert torch.equal(trace.per_step_outputs()[:, :32], expected)
    with pytest.raises(ValueError, match="LeakyParallel, which computes a whole sequence per call"):
        sc.early_exit(backend, net, DATA[0][0], sc.Confidence(0.5), T=6)


def _sj_neuron(name: str):
    """SpikingJelly's neuron module, skipping when this version lacks ``name`` (0.0.0.0.14 has no PSNs)."""
    functional, layer, neuron, surrogate = _sj()
    if not hasattr(neuron, name):
        pytest.skip(f"this SpikingJelly has no neuron.{name}")
    return layer, neuron


def test_spikingjelly_whole_sequence_neurons_trace_in_one_call_and_early_exit_refuses_them():
    layer, neuron = _sj_neuron("PSN")
    psn = nn.Sequential(layer.Flatten(step_mode="m"), layer.Linear(64, 10, step_mode="m"), neuron.PSN(T=6))
    with pytest.raises(ValueError, match="PSN, which computes a whole sequence"):
        sc.early_exit("spikingjelly", psn, DATA[0][0], sc.Confidence(0.5), T=6)
    assert sc.collect_trace("spikingjelly", psn, DATA, T=6, progress=False).T == 6


def test_memories_a_refill_cannot_split_are_refused_with_the_module_named():
    functional, layer, neuron, surrogate = _sj()
    from spikingjelly.activation_based import base

    class Counting(base.MemoryModule):
        """A module counting the steps of the whole batch (a memory shared by every sample)."""

        def __init__(self):
            super().__init__()
            self.register_memory("t", 0)

        def single_step_forward(self, x):
            self.t += 1
            return x

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), Counting(), neuron.IFNode(v_threshold=0.5))
    policy = sc.Confidence(0.5)
    loader = [(x, y) for x, y in DATA]
    with pytest.raises(ValueError, match="Counting memory 't' is shared by the whole batch"):
        sc.early_exit_loader("spikingjelly", net, loader, policy, T=8, refill=True, capacity=16, progress=False)


def test_sliding_psn_queue_is_refused_with_the_module_named():
    layer, neuron = _sj_neuron("SlidingPSN")
    torch.manual_seed(0)
    sliding = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), neuron.SlidingPSN(k=2))
    with pytest.raises(ValueError, match="SlidingPSN keeps 'queue', a queue of past inputs"):
        sc.early_exit("spikingjelly", sliding, DATA[0][0], sc.TopKGap(0.0).fit(
            sc.collect_trace("spikingjelly", sliding, DATA, T=6, progress=False)), T=6)


@pytest.mark.parametrize("kind", ["linear", "elementwise"])
def test_spikingjelly_recurrent_containers_refill_exactly(kind):
    functional, layer, neuron, surrogate = _sj()
    torch.manual_seed(0)
    if kind == "linear":
        rec = layer.LinearRecurrentContainer(neuron.IFNode(v_threshold=0.5), in_features=16, out_features=16)
    else:
        rec = layer.ElementWiseRecurrentContainer(neuron.IFNode(v_threshold=0.5), element_wise_function=torch.add)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), rec, nn.Linear(16, 10), neuron.IFNode(v_threshold=0.3))
    trace = sc.collect_trace("spikingjelly", net, DATA, T=10, progress=False)
    policy = sc.Confidence(0.6)
    post = policy.evaluate(trace)
    assert 1 < post.mean_steps < 10
    for refill in (False, True):
        real = sc.early_exit_loader("spikingjelly", net, DATA, policy, T=10, refill=refill, capacity=12,
                                    progress=False)
        assert torch.equal(real.exit_step, post.exit_step) and torch.equal(real.predictions, post.predictions)


@pytest.mark.parametrize("neuron_kind", ["Synaptic", "RLeaky", "RSynaptic", "Alpha", "Lapicque"])
def test_snntorch_neurons_keep_their_state_through_select_and_refill(neuron_kind):
    snn = _snntorch()
    torch.manual_seed(0)
    make = {
        "Synaptic": lambda out: snn.Synaptic(alpha=0.8, beta=0.9, threshold=0.5, init_hidden=True, output=out),
        "RLeaky": lambda out: snn.RLeaky(beta=0.9, linear_features=16 if not out else 10, threshold=0.5,
                                         init_hidden=True, output=out),
        "RSynaptic": lambda out: snn.RSynaptic(alpha=0.8, beta=0.9, linear_features=16 if not out else 10,
                                               threshold=0.5, init_hidden=True, output=out),
        "Alpha": lambda out: snn.Alpha(alpha=0.9, beta=0.8, threshold=0.3, init_hidden=True, output=out),
        "Lapicque": lambda out: snn.Lapicque(beta=0.9, threshold=0.5, init_hidden=True, output=out),
    }[neuron_kind]
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), make(False), nn.Linear(16, 10), make(True))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(3)
    trace = sc.collect_trace("snntorch", net, DATA, T=10, progress=False)
    policy = sc.TopKGap(0.0).fit(trace)
    post = policy.evaluate(trace)
    for refill in (False, True):
        real = sc.early_exit_loader("snntorch", net, DATA, policy, refill=refill, capacity=12, progress=False)
        assert torch.equal(real.exit_step, post.exit_step), (neuron_kind, refill)
        assert torch.equal(real.predictions, post.predictions), (neuron_kind, refill)


# ------------------------------------------------------------------ contract errors that say what to do
def test_early_exit_explains_networks_it_cannot_step():
    snn = _snntorch()

    class LoopNet(nn.Module):
        """snnTorch tutorial 5: forward loops over num_steps and returns stacked records."""

        def __init__(self):
            super().__init__()
            self.fc1, self.lif1 = nn.Linear(64, 10), snn.Leaky(beta=0.95)

        def forward(self, x):
            mem, rec = self.lif1.init_leaky(), []
            for _ in range(5):
                spk, mem = self.lif1(self.fc1(x.flatten(1)), mem)
                rec.append(spk)
            return torch.stack(rec)

    with pytest.raises(ValueError, match="loop over time itself.*collect_trace\\(..., encoder='none'"):
        sc.early_exit("snntorch", LoopNet(), DATA[0][0], sc.Confidence(0.5), T=5)

    class FixedBatch(nn.Module):
        """snnTorch tutorial 6's class network: reshapes with a fixed batch size."""

        def __init__(self, batch_size: int):
            super().__init__()
            self.batch_size = batch_size
            self.fc1, self.lif1 = nn.Linear(64, 10), snn.Leaky(beta=0.5, threshold=0.2, init_hidden=True)

        def forward(self, x):
            return self.lif1(self.fc1(x.view(self.batch_size, -1)))

    net = FixedBatch(32)
    trace = sc.collect_trace("snntorch", net, DATA, T=6, progress=False)
    policy = sc.Confidence(0.15)
    assert 1 < policy.evaluate(trace).mean_steps < 6  # some samples exit, so the batch shrinks
    with pytest.raises(ValueError, match=r"drops samples from the batch.*x.flatten\(1\)"):
        sc.early_exit("snntorch", net, DATA[0][0], policy, T=6)


def test_a_wrapper_module_around_a_sequential_runs_as_it_is():
    """The tutorial's CSNN object itself (not only its .conv_fc) goes through every form."""
    net = _csnn("s")
    trace = sc.collect_trace("spikingjelly", net, DATA, T=6, progress=False)
    policy = sc.Confidence(0.4)
    post = policy.evaluate(trace)
    real = sc.early_exit_loader("spikingjelly", net, DATA, policy, T=6, refill=True, capacity=16, progress=False)
    assert torch.equal(real.exit_step, post.exit_step) and torch.equal(real.predictions, post.predictions)


def test_a_forward_that_loops_over_its_input_as_time_is_refused_unless_multistep():
    """The snnTorch tutorials' forward loops ``for step in range(x.size(0))`` over a time-major
    ``[T, N, F]`` input: given one step ``[N, F]`` it would loop over the samples."""
    snn = _snntorch()
    from snncutoff.backends.base import LoopsOverTimeError

    class LoopNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.lif1 = nn.Linear(64, 16), snn.Leaky(beta=0.5, threshold=0.3)
            self.fc2, self.lif2 = nn.Linear(16, 10), snn.Leaky(beta=0.5, threshold=0.3)

        def forward(self, x):
            mem1, mem2, rec = self.lif1.init_leaky(), self.lif2.init_leaky(), []
            for step in range(x.size(0)):
                spk1, mem1 = self.lif1(self.fc1(x[step]), mem1)
                spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
                rec.append(spk2)
            return torch.stack(rec)

    torch.manual_seed(0)
    net = LoopNet()
    flat = [(x.flatten(1), y) for x, y in DATA]
    with pytest.raises(LoopsOverTimeError, match=r"'lif1' 32 time\(s\) for 1 step\(s\) of 32 samples.*multistep=True"):
        sc.collect_trace("snntorch", net, flat, T=6, progress=False)
    with pytest.raises(LoopsOverTimeError, match="early exit needs a forward that takes one step per call"):
        sc.early_exit("snntorch", net, flat[0][0], sc.Confidence(0.5), T=6)
    whole = sc.collect_trace("snntorch", net, flat, T=6, multistep=True, progress=False)
    with torch.no_grad():
        want = net(flat[0][0].unsqueeze(0).expand(6, -1, -1))
    assert torch.equal(whole.per_step_outputs()[:, :32], want)


def test_neurons_fed_transposed_or_token_inputs_or_called_twice_are_no_loop_over_time():
    """Only a neuron called once per sample (the samples taken as steps) is a loop over time;
    a neuron whose state rows are not samples refuses early exit (rows cannot be dropped)."""
    functional, layer, neuron, surrogate = _sj()
    from snncutoff.backends.base import LoopsOverTimeError

    class Tokens(nn.Module):  # [N, 64] -> 8 tokens of 8 features flattened into the batch; a neuron used twice
        def __init__(self, out: int = 64, transposed: bool = True):
            super().__init__()
            self.fc, self.n1, self.n2, self.t = nn.Linear(8, 8), neuron.IFNode(), neuron.IFNode(), neuron.IFNode()
            self.out, self.transposed = nn.Linear(out, 10), transposed

        def forward(self, x):
            h = self.n2(self.n2(self.n1(self.fc(x.reshape(-1, 8)))))  # [N * 8, 8]
            h = h.reshape(x.shape[0], -1)
            return self.out(self.t(h.t()).t() if self.transposed else h)  # a neuron on [F, N]

    torch.manual_seed(0)
    x, y = DATA[0][0].flatten(1), DATA[0][1]
    for n in (1, 2, 3, 32):  # n2 is called twice per step on [8 n, 8]
        trace = sc.collect_trace("spikingjelly", Tokens(), [(x[:n], y[:n])], T=4, progress=False)
        assert trace.outputs.shape == (4, n, 10)
        with pytest.raises(ValueError, match=rf"neuron 'n1' inputs of shape \[{8 * n}, 8\] for {n} samples.*post hoc"):
            sc.early_exit("spikingjelly", Tokens(), x[:n], sc.Stability(2), T=4)
    with pytest.raises(ValueError, match="8x64 and 63x10") as info:  # a plain shape error stays one
        sc.collect_trace("spikingjelly", Tokens(63), [(x[:8], y[:8])], T=4, progress=False)
    assert not isinstance(info.value, LoopsOverTimeError)

    class Rows(Tokens):  # the batch first everywhere: early exit runs, as evaluate
        def forward(self, x):
            return self.out(self.t(self.n2(self.n2(self.n1(self.fc(x.view(-1, 8, 8))))).flatten(1)))

    net = Rows()
    trace = sc.collect_trace("spikingjelly", net, [(x, y)], T=4, progress=False)
    steps = sc.early_exit("spikingjelly", net, x, sc.Stability(2), T=4)[0]
    assert torch.equal(steps, sc.Stability(2).evaluate(trace).exit_step)

    class MultiStepTokens(nn.Module):  # the same in multi-step mode: [T, N, 64] -> [T, 8 N, 8] for the neuron
        def __init__(self):
            super().__init__()
            self.fc, self.n1, self.out = nn.Linear(8, 8), neuron.IFNode(step_mode="m"), nn.Linear(64, 10)

        def forward(self, x):
            steps, n = x.shape[:2]
            return self.out(self.n1(self.fc(x.reshape(steps, n * 8, 8))).reshape(steps, n, -1))

    net = MultiStepTokens()
    assert sc.collect_trace("spikingjelly", net, [(x, y)], T=4, progress=False).outputs.shape == (4, 32, 10)
    for block in (1, 2, "auto"):
        with pytest.raises(ValueError, match=r"neuron 'n1' inputs of shape \[\d, 256, 8\] for 32 samples"):
            sc.early_exit("spikingjelly", net, x, sc.Stability(2), T=4, block=block)
    with pytest.raises(ValueError, match=r"inputs of shape \[1, 8, 8\] for 1 samples"):  # not [k, n] = [1, 1]
        sc.early_exit("spikingjelly", net, x[:1], sc.Stability(2), T=4, block=1)


def test_a_forward_that_loops_over_a_fixed_number_of_steps_is_refused():
    """snnTorch's tutorials also loop ``for step in range(num_steps): ... x[step]`` with num_steps
    smaller than the batch: given one step [N, ...] the neurons see one sample at a time."""
    snn = _snntorch()
    from snncutoff.backends.base import LoopsOverTimeError

    class LoopFixed(nn.Module):
        def __init__(self, num_steps: int = 4):
            super().__init__()
            self.num_steps = num_steps
            self.fc1, self.lif1 = nn.Linear(64, 16), snn.Leaky(beta=0.5, threshold=0.3)
            self.fc2, self.lif2 = nn.Linear(16, 10), snn.Leaky(beta=0.5, threshold=0.3)

        def forward(self, x):
            mem1, mem2, rec = self.lif1.init_leaky(), self.lif2.init_leaky(), []
            for step in range(self.num_steps):
                spk1, mem1 = self.lif1(self.fc1(x[step].flatten()), mem1)
                spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
                rec.append(spk2)
            return torch.stack(rec)

    torch.manual_seed(0)
    x, y = DATA[0][0][:16], DATA[0][1][:16]  # [16] into lif1 (a multiple of the batch), [10] into lif2
    with pytest.raises(LoopsOverTimeError, match=r"neuron 'lif2' 4 time\(s\) for 1 step\(s\) of 16 samples"):
        sc.collect_trace("snntorch", LoopFixed(), [(x, y)], T=4, progress=False)
    with pytest.raises(LoopsOverTimeError, match="early exit needs a forward that takes one step per call"):
        sc.early_exit("snntorch", LoopFixed(), x, sc.Confidence(0.5), T=4)


def test_spikingjelly_multistep_container_networks_run_as_multistep():
    """The older multi-step style: single-step layers and neurons wrapped in layer.MultiStepContainer."""
    functional, layer, neuron, surrogate = _sj()
    torch.manual_seed(0)
    net = nn.Sequential(layer.MultiStepContainer(nn.Flatten(), nn.Linear(64, 32), neuron.IFNode(v_threshold=0.3)),
                        layer.MultiStepContainer(nn.Linear(32, 10), neuron.IFNode(v_threshold=0.3)))
    backend = sc.backends.get("spikingjelly")
    assert backend.is_multistep(net)
    trace = sc.collect_trace(backend, net, DATA, T=6, progress=False)
    assert torch.equal(trace.outputs, sc.collect_trace(backend, net, DATA, T=6, multistep=True, progress=False).outputs)
    x, y = DATA[0]
    one = sc.collect_trace(backend, net, [(x[i : i + 1], y[i : i + 1]) for i in range(3)], T=6, progress=False)
    assert torch.equal(one.outputs, trace.outputs[:, :3])  # no state shared between samples
    policy = sc.Stability(2)
    want = policy.evaluate(trace.subset(torch.arange(32)))
    steps, preds = sc.early_exit(backend, net, DATA[0][0], policy, T=6)[:2]
    assert torch.equal(steps, want.exit_step) and torch.equal(preds, want.predictions)


def test_spikingjelly_stateless_multistep_neurons_and_spiking_rnns_are_whole_sequence_modules():
    layer, neuron = _sj_neuron("DSRIFNode")
    for node in (neuron.DSRIFNode(T=6, v_threshold=1.0), neuron.DSRLIFNode(T=6, v_threshold=1.0)):
        net = nn.Sequential(layer.Flatten(step_mode="m"), layer.Linear(64, 10, step_mode="m"), node)
        with pytest.raises(ValueError, match=f"{type(node).__name__}, which computes a whole sequence"):
            sc.early_exit("spikingjelly", net, DATA[0][0], sc.Confidence(0.5), T=6)
        assert sc.collect_trace("spikingjelly", net, DATA, T=6, progress=False).T == 6
    from spikingjelly.activation_based import rnn

    class LSTMNet(nn.Module):  # SpikingJelly's spiking_lstm_sequential_mnist example, every step read out
        def __init__(self):
            super().__init__()
            self.lstm, self.fc = rnn.SpikingLSTM(8, 16, 1), nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.lstm(x)[0])

    rows = lambda x, T: x.flatten(1, 2).permute(1, 0, 2)[:T]  # noqa: E731 - [N, 1, 8, 8] -> [8 rows, N, 8]
    net = LSTMNet()
    trace = sc.collect_trace("spikingjelly", net, DATA, T=8, encoder=rows, progress=False)
    with torch.no_grad():
        assert torch.allclose(trace.per_step_outputs()[:, :32], net(rows(DATA[0][0], 8)), atol=1e-5)
    with pytest.raises(ValueError, match="SpikingLSTM, which computes a whole sequence"):
        sc.early_exit("spikingjelly", net, DATA[0][0], sc.Confidence(0.5), T=8, encoder=rows)


@pytest.mark.parametrize("readout", ["spikes", "membrane"])
def test_spikingjelly_multistep_neurons_storing_v_seq_shrink_and_refill(readout):
    """0.0.0.0.14 registers ``v_seq`` [T, N, ...] as a memory: it must not be sliced as [N, ...]."""
    functional, layer, neuron, surrogate = _sj()
    torch.manual_seed(0)
    net = nn.Sequential(layer.Flatten(), layer.Linear(64, 32), neuron.IFNode(v_threshold=0.3, store_v_seq=True),
                        layer.Linear(32, 10), neuron.IFNode(v_threshold=0.3, store_v_seq=True))
    functional.set_step_mode(net, "m")
    trace = sc.collect_trace("spikingjelly", net, DATA, T=6, readout=readout, progress=False)
    policy = sc.Stability(2)
    want = policy.evaluate(trace)
    assert 1 < want.mean_steps < 6
    for block in (1, "auto"):  # batches of 32 > T = 6
        steps, preds = sc.early_exit("spikingjelly", net, DATA[0][0], policy, T=6, readout=readout, block=block)[:2]
        assert torch.equal(steps, want.exit_step[:32]) and torch.equal(preds, want.predictions[:32])
    res = sc.early_exit_loader("spikingjelly", net, DATA, policy, T=6, readout=readout, refill=True, progress=False)
    assert torch.equal(res.exit_step, want.exit_step) and torch.equal(res.predictions, want.predictions)
