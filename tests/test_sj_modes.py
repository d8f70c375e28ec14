"""SpikingJelly step modes: blocks of steps run multi-step only where that equals stepping; ANNs written
with SpikingJelly's ``layer.*`` modules convert in both step modes."""

import copy

import pytest
import torch
from torch import nn

import snncutoff as sc
from snncutoff.cutoff import Confidence, Stability, Timestep, TopKGap

from .helpers import backend_or_skip, random_batches

pytest.importorskip("spikingjelly.activation_based.neuron")
from snncutoff_spikingjelly._compat import sj  # noqa: E402

T = 8


def _graded_node_class():
    """A node that overrides single_step_forward only (graded spikes) and inherits LIFNode's multi-step code."""

    class GradedLIF(sj().neuron.LIFNode):
        def single_step_forward(self, x, *args, **kwargs):
            spike = super().single_step_forward(x, *args, **kwargs)
            return spike * (1.0 + x.clamp(0.0, 1.0))

    return GradedLIF


def _node(kind: str) -> nn.Module:
    m = sj()
    if kind == "liaf":
        if m.legacy:  # its __init__ asserts on single_step_cupy_fp32_inference, which LIFNode lacks there
            pytest.skip("SpikingJelly 0.0.0.0.14's LIAFNode cannot be built")
        return m.neuron.LIAFNode(act=nn.ReLU(), threshold_related=False, surrogate_function=m.surrogate.ATan())
    if kind == "graded":
        return _graded_node_class()(tau=2.0, surrogate_function=m.surrogate.ATan())
    return m.neuron.LIFNode(tau=2.0, surrogate_function=m.surrogate.ATan())


def _net(kind: str) -> nn.Module:
    layer = sj().layer
    torch.manual_seed(0)
    net = nn.Sequential(layer.Flatten(), layer.Linear(64, 48), _node(kind), layer.Linear(48, 10), _node(kind))
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.Linear):
                mod.weight *= 6
    return net.eval()


def test_rule_keeps_the_usual_neurons_multi_step_and_steps_the_others():
    b = backend_or_skip("spikingjelly")
    n = sj().neuron
    for node in (n.IFNode(), n.LIFNode(), n.ParametricLIFNode()):
        assert b.multistep_matches_steps(node), type(node).__name__
    for kind in ("graded",) if sj().legacy else ("liaf", "graded"):
        assert not b.multistep_matches_steps(_node(kind)), kind
    patched = n.LIFNode()
    patched.single_step_forward = lambda x: x
    assert not b.multistep_matches_steps(patched)


@pytest.mark.parametrize("kind", ["liaf", "graded", "lif"])
def test_run_block_equals_stepping(kind):
    b = backend_or_skip("spikingjelly")
    net = _net(kind)
    x = torch.rand(T, 32, 1, 8, 8) * 2
    with torch.no_grad():
        b.reset(net)
        stepped = b.run(net, x)
        b.reset(net)
        plan = b.block_plan(net)
        assert plan is not None
        block = torch.cat([b.run_block(net, x[:3], plan=plan), b.run_block(net, x[3:], plan=plan)])
        b.reset(net)
    assert torch.equal(stepped, block)
    for node in (m for m in net.modules() if b.is_spiking(m)):
        assert node.step_mode == "s"


@pytest.mark.parametrize("kind", ["liaf", "graded"])
def test_early_exit_in_blocks_equals_evaluate(kind):
    b = backend_or_skip("spikingjelly")
    net = _net(kind)
    cal, test = random_batches(n=64, seed=1), random_batches(n=64, seed=2)
    x = torch.rand(64, 1, 8, 8)
    test = [(x, torch.zeros(64, dtype=torch.long))] + test
    trace_cal = sc.collect_trace(b, net, cal, T=T, progress=False)
    trace = sc.collect_trace(b, net, test, T=T, progress=False)
    for policy in (Stability(2), Confidence(0.2), TopKGap(0.0).fit(trace_cal), Timestep(3)):
        post = policy.evaluate(trace)
        for block in ("auto", 4):
            steps, preds, _ = sc.early_exit(b, net, x, policy, T, block=block)
            assert torch.equal(steps, post.exit_step[:64]), (policy, block)
            assert torch.equal(preds, post.predictions[:64]), (policy, block)
        real = sc.early_exit_loader(b, net, test, policy, T=T, refill=True, capacity=40, block="auto",
                                    progress=False)
        assert torch.equal(real.exit_step, post.exit_step) and torch.equal(real.predictions, post.predictions)


# ------------------------------------------------------------------ ANNs from SpikingJelly layers
def _sj_layer_ann(dropout: str | None = None, seed: int = 0) -> nn.Module:
    """An MNISTNet-style ANN of layer.Conv2d / BatchNorm2d / AvgPool2d / Flatten / Linear and nn.ReLU."""
    layer = sj().layer
    drop = {"sj": lambda: layer.Dropout(0.5), "torch": lambda: nn.Dropout(0.5), None: nn.Identity}[dropout]
    torch.manual_seed(seed)
    ann = nn.Sequential(layer.Conv2d(1, 6, 3, padding=1), layer.BatchNorm2d(6), nn.ReLU(), layer.AvgPool2d(2),
                        layer.Flatten(), drop(), layer.Linear(6 * 4 * 4, 24), nn.ReLU(), drop(),
                        layer.Linear(24, 10))
    ann.train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for x, _ in random_batches(seed=5):
            ann(x)
            for mod in ann.modules():
                if hasattr(mod, "reset"):
                    mod.reset()
    return ann.eval()


def _traces(backend, ann, step_mode="s"):
    data, cal = random_batches(seed=3), random_batches(seed=4)
    snn = backend.convert(ann, calibration=cal, step_mode=step_mode)
    return snn, sc.collect_trace(backend, snn, data, T=12, count_ops=True, progress=False)


def test_sj_layer_ann_converts_in_both_step_modes_and_matches_snntorch():
    b = backend_or_skip("spikingjelly")
    ann = _sj_layer_ann()
    _, single = _traces(b, ann, "s")
    multi_net, multi = _traces(b, ann, "m")
    assert b.is_multistep(multi_net)
    for mod in multi_net.modules():  # a layer inside a SeqToANNContainer gets [T * N, ...] rows: single-step
        if isinstance(mod, sj().layer.SeqToANNContainer):
            assert all(getattr(sub, "step_mode", "s") == "s" for sub in mod.modules() if sub is not mod)
    assert torch.equal(single.outputs, multi.outputs) and torch.equal(single.ops, multi.ops)
    _, other = _traces(backend_or_skip("snntorch"), ann)
    assert torch.equal(single.outputs, other.outputs) and torch.equal(single.ops, other.ops)
    for mode in ("s", "m"):  # the block runs of early exit too
        snn = b.convert(ann, calibration=random_batches(seed=4), step_mode=mode)
        x = random_batches(seed=3)[0][0]
        post = Confidence(0.1).evaluate(sc.collect_trace(b, snn, [(x, torch.zeros(64, dtype=torch.long))], T=12,
                                                         progress=False))
        steps, preds, _ = sc.early_exit(b, snn, x, Confidence(0.1), 12)
        assert torch.equal(steps, post.exit_step) and torch.equal(preds, post.predictions)


def test_set_step_mode_leaves_the_layers_inside_step_wise_containers_single_step():
    b = backend_or_skip("spikingjelly")
    layer, neuron = sj().layer, sj().neuron
    torch.manual_seed(0)
    net = nn.Sequential(layer.SeqToANNContainer(layer.Conv2d(1, 4, 3, padding=1)), neuron.IFNode(),
                        layer.MultiStepContainer(layer.Flatten(), neuron.IFNode()), layer.Linear(4 * 8 * 8, 10))
    b.set_step_mode(net, "m")
    assert [net[1].step_mode, net[3].step_mode] == ["m", "m"]
    assert net[0][0].step_mode == "s" and net[2][0].step_mode == "s" and net[2][1].step_mode == "s"
    x = torch.rand(3, 5, 1, 8, 8)
    assert b.run(net, x).shape == (3, 5, 10)


def test_sj_voting_layer_is_kept_and_votes_as_the_mean_of_each_group():
    """layer.VotingLayer (the DVS-Gesture examples' output layer: the mean of each group of
    voting_size outputs) is linear: kept as it is, in both step modes and in snnTorch."""
    b = backend_or_skip("spikingjelly")
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 40))
    ann = nn.Sequential(*copy.deepcopy(body), sj().layer.VotingLayer(4)).eval()
    data = random_batches(seed=5)
    _, votes = _traces(b, body.eval(), "s")  # [T, N, 40] cumulative outputs before the vote
    expected = votes.outputs.view(12, -1, 10, 4).sum(-1) / 4  # the mean of each group of 4, from the definition
    for mode in ("s", "m"):
        snn, trace = _traces(b, ann, mode)
        assert any(type(m).__name__ == "VotingLayer" for m in snn.modules())
        torch.testing.assert_close(trace.outputs, expected, rtol=0, atol=1e-5)
        x = data[0][0]
        post = Confidence(0.1).evaluate(sc.collect_trace(b, snn, [(x, torch.zeros(len(x), dtype=torch.long))],
                                                         T=12, progress=False))
        steps, preds, _ = sc.early_exit(b, snn, x, Confidence(0.1), 12)
        assert torch.equal(steps, post.exit_step) and torch.equal(preds, post.predictions)
    _, single = _traces(b, ann, "s")
    _, other = _traces(backend_or_skip("snntorch"), ann)
    assert torch.equal(single.outputs, other.outputs)


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_sj_dropout_converts_as_the_identity(step_mode):
    b = backend_or_skip("spikingjelly")
    ann = _sj_layer_ann("sj")
    snn, with_sj = _traces(b, ann, step_mode)
    assert not any(isinstance(m, sj().layer.Dropout) for m in snn.modules())
    assert any(isinstance(m, sj().layer.Dropout) for m in ann.modules())  # the ANN is left as it was
    _, with_torch = _traces(b, _sj_layer_ann("torch"), step_mode)
    _, without = _traces(b, _sj_layer_ann(None), step_mode)
    assert torch.equal(with_sj.outputs, with_torch.outputs) and torch.equal(with_sj.outputs, without.outputs)
    assert torch.equal(with_sj.ops, without.ops)
    _, in_snntorch = _traces(backend_or_skip("snntorch"), ann)  # not taken for a neuron by the other framework
    assert torch.equal(in_snntorch.outputs, without.outputs)


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_direct_training_keeps_the_sj_dropout(step_mode):
    b = backend_or_skip("spikingjelly")
    ann = _sj_layer_ann("sj")
    x = random_batches()[0][0]
    snn = b.convert(copy.deepcopy(ann), spec=sc.spec.LIF(), step_mode=step_mode, example_input=x[:2])
    drops = [m for m in snn.modules() if isinstance(m, sj().layer.Dropout)]
    assert len(drops) == 2 and all(d.step_mode == step_mode for d in drops)
    assert all(d in b.stateful_modules(snn) for d in drops)  # its mask is reset with the neurons
    snn.train()
    out = snn(x.unsqueeze(0).repeat(3, 1, 1, 1, 1)) if step_mode == "m" else snn(x)
    assert out.shape[-1] == 10


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_sj_maxpool_is_a_layer_the_converter_knows(step_mode):
    # layer.MaxPool2d is an nn.MaxPool2d (the converter checks it as a module, not its F.max_pool2d inside)
    b = backend_or_skip("spikingjelly")
    layer = sj().layer
    torch.manual_seed(0)
    ann = nn.Sequential(layer.Conv2d(1, 4, 3, padding=1), nn.ReLU(), layer.MaxPool2d(2), layer.Flatten(),
                        layer.Linear(4 * 4 * 4, 10)).eval()
    with pytest.raises(sc.ConversionError, match=r"'2' \(MaxPool2d\).*maxpool='avg'"):
        b.convert(ann, calibration=random_batches(seed=4), step_mode=step_mode)
    avg = nn.Sequential(layer.Conv2d(1, 4, 3, padding=1), nn.ReLU(), layer.AvgPool2d(2), layer.Flatten(),
                        layer.Linear(4 * 4 * 4, 10)).eval()
    avg.load_state_dict(ann.state_dict())
    snn = b.convert(ann, calibration=random_batches(seed=4), step_mode=step_mode, maxpool="avg")
    ref = b.convert(avg, calibration=random_batches(seed=4), step_mode=step_mode)
    data = random_batches(seed=3)
    assert torch.equal(sc.collect_trace(b, snn, data, T=6, progress=False).outputs,
                       sc.collect_trace(b, ref, data, T=6, progress=False).outputs)
