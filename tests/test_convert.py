"""Framework-free conversion checks: errors name the layer; thresholds; BN fusion."""

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from snncutoff import IF, ConversionError, constraints
from snncutoff.convert import calibrate_thresholds, convert_ann
from snncutoff.graph import find_functional_activations

from .helpers import random_batches, small_ann


class Probe(nn.Module):
    """Stand-in neuron: remembers its threshold."""

    def __init__(self, theta, v_init):
        super().__init__()
        self.theta, self.v_init = theta, v_init

    def forward(self, x):
        return torch.clamp(x, 0, self.theta)


class FunctionalBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return F.relu(self.fc(x))


class Untraceable(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.fc, self.act, self.functional = nn.Linear(4, 4), nn.ReLU(), functional

    def forward(self, x):
        if x.sum() > 1e9:  # data-dependent control flow: fx cannot trace this
            return x
        h = self.fc(x)
        return torch.relu(h) if self.functional else self.act(h)


def test_functional_relu_is_an_error_naming_the_module():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), FunctionalBlock(), nn.Linear(4, 2))
    with pytest.raises(ConversionError, match=r"'2' uses relu"):
        convert_ann(net, Probe, IF(threshold=1.0))
    assert find_functional_activations(net) == [("2", "relu")]


def test_tensor_method_relu_is_found():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x).relu()

    assert find_functional_activations(nn.Sequential(M())) == [("0", "Tensor.relu")]


def test_reused_relu_module_is_an_error():
    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.act = nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU()

        def forward(self, x):
            return self.act(self.b(self.act(self.a(x))))

    with pytest.raises(ConversionError, match="act.*called 2 times"):
        convert_ann(Reuse(), Probe, IF(threshold=1.0))


def test_untraceable_net_is_checked_by_running_it():
    data = [(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))]
    with pytest.raises(ConversionError, match="relu"):
        convert_ann(Untraceable(functional=True), Probe, IF(threshold=1.0), data)
    snn, acts = convert_ann(Untraceable(functional=False), Probe, IF(threshold=1.0), data)
    assert [a.path for a in acts] == ["act"]
    with pytest.raises(ConversionError, match="example_input"):
        convert_ann(Untraceable(functional=False), Probe, IF(threshold=1.0))


class _GradFloor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.floor()

    @staticmethod
    def backward(ctx, g):
        return g


class UpstreamQCFS(nn.Module):
    """The SNNCutoff code's QCFSConstrs activation (ReLU, floor with a straight-through gradient, clamp), re-typed."""

    def __init__(self, levels: int = 4, vthr: float = 1.0):
        super().__init__()
        self.vthr, self.L, self.relu = nn.Parameter(torch.tensor([vthr])), levels, nn.ReLU()

    def forward(self, x):
        x = self.relu(x) / self.vthr
        x = _GradFloor.apply(x * self.L + 0.5) / self.L
        return torch.clamp(x, 0, 1) * self.vthr


class Functional(nn.Module):
    """A conv, a ReLU module and then ``op`` in forward code."""

    def __init__(self, op, untraceable: bool = False):
        super().__init__()
        self.c, self.act, self.op, self.untraceable = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), op, untraceable

    def forward(self, x):
        if self.untraceable and x.sum() > 1e9:  # data-dependent control flow: fx cannot trace this
            return x
        return self.op(self.act(self.c(x))).flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("untraceable", [False, True])
@pytest.mark.parametrize("op, what", [
    (lambda h: F.max_pool2d(h, 2), "max_pool2d"),
    (lambda h: F.adaptive_max_pool2d(h, 1), "adaptive_max_pool2d"),
    (lambda h: torch.clamp(h, max=0.5), "clamp"),
    (lambda h: torch.minimum(h, torch.ones_like(h)), "minimum"),
    (lambda h: torch.max(h, h.flip(0)), "max"),
    (lambda h: h.floor(), "floor"),
    (lambda h: h.softmax(1), "softmax"),
    (lambda h: h * h, "a product of two values computed from the input"),
    (lambda h: h * h.mean((2, 3), keepdim=True), "a product of two values computed from the input"),
    (lambda h: h @ h.transpose(2, 3), "matmul, a product of two values"),
    (lambda h: h**2, "pow"),
    (lambda h: h / h.sum(), "a division by a value computed from the input"),
    (lambda h: 1 / (1 + h), "a division by a value computed from the input"),
    (lambda h: h / torch.linalg.vector_norm(h), "vector_norm"),
    (lambda h: torch.topk(h.flatten(1), 2).values, "topk"),
    (lambda h: torch.where(h > 1, h, torch.zeros_like(h)), "gt"),
    (lambda h: torch.where(h == h.flip(0), h, 0 * h), "eq"),
    (lambda h: torch.mul(input=h, other=h), "mul, a product of two values"),
    (lambda h: torch.einsum("nchw,nchw->nchw", [h, h]), "einsum, a product of two values"),
    (lambda h: torch.addcmul(h, h, h), "addcmul, a product of two values"),
    (lambda h: F.linear(h.flatten(1), h.flatten(1)), "linear, a product of two values"),
    (lambda h: F.cosine_similarity(h, h.flip(0)), "cosine_similarity"),
    (lambda h: h.gather(1, h.argmax(1, keepdim=True)), "argmax"),
    (lambda h: F.hardshrink(h), "hardshrink"),
    (lambda h: (h.exp_(), h)[1], "exp_"),  # in place, its result unused: h itself changed
    (lambda h: (h[:, :1].floor_(), h)[1], "floor_"),  # through a view
    (lambda h: (h.data.clamp_(0, 0.5), h)[1], "clamp_"),  # through .data
    (lambda h: torch.lerp(h, 0 * h, h), "lerp, a product"),
    (lambda h: torch.var_mean(h, 1)[0], "var_mean"),
    (lambda h: F.grid_sample(h, h.permute(0, 2, 3, 1), align_corners=False), "grid_sample, sampling at positions"),
])
def test_nonlinear_operations_in_forward_are_refused(op, what, untraceable):
    # the same operation as a module is refused (MaxPool) or impossible: its functional form must be too
    net = nn.Sequential(Functional(op, untraceable), nn.Linear(1, 2))
    x = torch.rand(3, 1, 4, 4)
    with pytest.raises(ConversionError, match=rf"'0' .*uses .*{what}.*non-linear"):
        convert_ann(net, Probe, IF(threshold=1.0), example_input=x)


def test_upstream_qcfs_module_is_refused_with_the_replacement():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), UpstreamQCFS(), nn.Flatten(), nn.Linear(2 * 2 * 2, 2))
    with pytest.raises(ConversionError, match=r"'1' \(UpstreamQCFS\) uses .*floor.*constraints\.QCFS"):
        convert_ann(net, Probe, IF(threshold=1.0))


def test_linear_operations_in_forward_still_convert():
    # mean pooling, a residual add, scaling, concatenation and reshapes are linear: kept
    class Linearish(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.act = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()

            self.scale, self.log_gain = nn.Parameter(torch.full((1, 2, 1, 1), 0.5)), nn.Parameter(torch.zeros(1))

        def forward(self, x):
            h = self.act(self.c(x))
            h = F.avg_pool2d(h, 2) + 0.5 * F.avg_pool2d(h, 2)
            # products and quotients with weights and numbers, even non-linear functions of weights alone
            h = h * self.scale / 4 * torch.exp(self.log_gain) * self.scale.sum() ** 2 + h @ torch.eye(2) / x.size(0)
            return torch.cat([h.mean((2, 3)), h.flatten(1).sum(1, keepdim=True)], 1).view(x.shape[0], -1)

    snn, acts = convert_ann(nn.Sequential(Linearish(), nn.Linear(3, 2)), Probe, IF(threshold=1.0))  # traced
    assert [a.path for a in acts] == ["0.act"]
    from snncutoff.graph import check_by_running  # the check of a network fx cannot trace

    assert check_by_running(nn.Sequential(Linearish(), nn.Linear(3, 2)), torch.rand(3, 1, 4, 4)) == ([], [])


@pytest.mark.parametrize("untraceable", [False, True])
@pytest.mark.parametrize("op, what", [
    (lambda h: (h.relu_(), h)[1], "relu_"),
    (lambda h: (F.relu(h, inplace=True), h)[1], "relu"),
    (lambda h: (F.elu_(h), h)[1], "elu_"),
    (lambda h: torch.cat([torch.zeros_like(h).narrow(1, 0, 1).copy_(F.leaky_relu(h[:, :1])), h[:, 1:]], 1),
     "leaky_relu"),  # written into a buffer
])
def test_activations_written_in_place_or_into_a_buffer_are_refused(op, what, untraceable):
    net = nn.Sequential(Functional(op, untraceable), nn.Linear(1, 2))
    with pytest.raises(ConversionError, match=rf"uses (Tensor\.)?{what}\b.*own nn.ReLU"):
        convert_ann(net, Probe, IF(threshold=1.0), example_input=torch.rand(3, 1, 4, 4))


def test_outputs_in_dataclasses_and_operations_the_check_cannot_see_are_no_way_around_it():
    import dataclasses

    from snncutoff.graph import check_by_running

    @dataclasses.dataclass
    class Out:
        logits: torch.Tensor

    @torch.jit.script
    def scaled(h: torch.Tensor) -> torch.Tensor:  # the run-time check does not see inside TorchScript
        return h * 2.0

    class Net(nn.Module):
        def __init__(self, wrap: bool):
            super().__init__()
            self.c, self.fc, self.wrap = nn.Conv2d(1, 2, 3, padding=1), nn.Linear(2, 2), wrap

        def forward(self, x):
            if x.sum() > 1e9:  # fx cannot trace this
                return x
            h = F.relu(self.c(x)).mean((2, 3))
            return Out(self.fc(h)) if self.wrap else self.fc(scaled(h))

    x = torch.rand(3, 1, 4, 4)
    assert check_by_running(Net(True), x) == ([("", "relu")], [])  # followed into the dataclass
    # past TorchScript, every finding counts (the control flow's comparison too)
    assert check_by_running(Net(False), x) == ([("", "relu")], [("", "gt")])


def test_a_layer_subclass_with_its_own_forward_is_checked_and_attention_is_refused():
    class CosineLinear(nn.Linear):  # a cosine classifier: nn.Linear's weights, its own non-linear forward
        def forward(self, x):
            return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1)) * 16

    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.ReLU(), CosineLinear(4, 2))
    with pytest.raises(ConversionError, match=r"'3' \(CosineLinear\) uses F\.normalize"):
        convert_ann(net, Probe, IF(threshold=1.0), example_input=torch.rand(3, 1, 4, 4))

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(4, 1, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    net = nn.Sequential(nn.Flatten(2), nn.Linear(16, 4), nn.ReLU(), Attention(), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ConversionError, match=r"layer '3\.mha' \(MultiheadAttention\) cannot be converted"):
        convert_ann(net, Probe, IF(threshold=1.0), example_input=torch.rand(3, 1, 4, 4))


class Rescaled(nn.Module):
    """A conv, a ReLU module and ``op(self, x or h)``: constants shaped or typed after the input."""

    def __init__(self, op, untraceable: bool = False):
        super().__init__()
        self.c, self.act, self.op, self.untraceable = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), op, untraceable
        self.gamma = nn.Parameter(torch.full((2,), 0.5))
        self.register_buffer("mean", torch.full((1, 1, 1, 1), 0.1))
        self.register_buffer("std", torch.full((1, 1, 1, 1), 2.0))

    def forward(self, x, temperature=2.0):
        if self.untraceable and x.sum() > 1e9:  # data-dependent control flow: fx cannot trace this
            return x
        return self.op(self, x).flatten(1).sum(1, keepdim=True) / temperature


@pytest.mark.parametrize("untraceable", [False, True])
@pytest.mark.parametrize("op", [
    lambda m, x: m.act(m.c((x - m.mean.type_as(x)) / m.std.type_as(x))),
    lambda m, x: m.act(m.c((x - m.mean.to(x)) / m.std.to(x, non_blocking=True))),
    lambda m, x: (h := m.act(m.c(x.type(torch.float32)))) * m.gamma.view(1, -1, 1, 1).expand_as(h),
    lambda m, x: (h := m.act(m.c(x))) * m.gamma.view_as(h[0, :, 0, 0])[None, :, None, None],
    lambda m, x: (h := m.act(m.c(x))) / h[0].nelement() / x.numel() * x.dim(),
    lambda m, x: m.act(m.c(x)) * x.new_tensor(0.5) + torch.ones_like(x) * x.new_ones(1) - torch.full_like(x, 2.0),
    lambda m, x: m.act(m.c(x)) * torch.tensor(x.shape[-1] / x.size(2), dtype=x.dtype, device=x.device),
    lambda m, x: (h := m.act(m.c(x))) * h.new(h.size()).fill_(0.5) * torch.ones_like(input=h),
    lambda m, x: (h := m.act(m.c(x))) * h.detach().clone().zero_().add_(1),
    lambda m, x: m.act(m.c(torch.where(x == x, x, 0))).masked_fill((v := x[:, :1]) != v, 0),  # NaN tests
])
def test_values_shaped_or_typed_after_the_input_are_constants(op, untraceable):
    """type_as / to / expand_as / view_as / new_* / *_like / nelement read the input's shape or
    type, never its values: the results are constants, and multiplying by them is linear; an
    argument with a default (the temperature) is a constant too."""
    from snncutoff.graph import _scan, check_by_running

    net, x = Rescaled(op, untraceable), torch.rand(3, 1, 4, 4)
    assert (_scan(net) is None) == untraceable
    assert untraceable or _scan(net) == ([], [])
    assert check_by_running(net, x) == ([], [])
    convert_ann(nn.Sequential(net, nn.Linear(1, 2)), Probe, IF(threshold=1.0), example_input=x)


def test_a_conversion_of_the_input_still_leaves_its_values_checked():
    # x.type(dtype) carries x's values (only x.type(), a string, does not)
    net = Rescaled(lambda m, x: F.relu(m.c(x.type(torch.float32))))
    with pytest.raises(ConversionError, match=r"uses relu\b"):
        convert_ann(nn.Sequential(net, nn.Linear(1, 2)), Probe, IF(threshold=1.0))
    net = Rescaled(lambda m, x: m.act(m.c(x.to(torch.float32))).floor())
    with pytest.raises(ConversionError, match=r"uses Tensor.floor"):
        convert_ann(nn.Sequential(net, nn.Linear(1, 2)), Probe, IF(threshold=1.0))


class SideChecks(nn.Module):
    """Non-linear operations on the input whose results never reach the output: a range check
    that steers control flow (fx cannot trace it), an assert, a statistic kept on the side."""

    def __init__(self):
        super().__init__()
        self.c, self.act = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()

    def forward(self, x):
        assert (x.abs() < 1e6).all()
        if (x > 100).sum() > 0:
            x = x / 255
        h = self.act(self.c(x))
        self.sparsity = float((h > 0).float().mean())
        self.peak = h.amax().floor()
        return h.mean((2, 3))


def test_operations_whose_results_do_not_reach_the_output_are_not_refused():
    from snncutoff.graph import _scan, check_by_running

    x = torch.rand(3, 1, 4, 4)
    assert _scan(SideChecks()) is None
    assert check_by_running(SideChecks(), x) == ([], [])
    convert_ann(nn.Sequential(SideChecks(), nn.Linear(2, 2)), Probe, IF(threshold=1.0), example_input=x)

    class Unused(nn.Module):  # traced: the floor's result is computed but not used
        def __init__(self):
            super().__init__()
            self.c, self.act = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()

        def forward(self, x):
            h = self.act(self.c(x))
            _ = F.relu(h).floor()
            return h.mean((2, 3))

    assert _scan(Unused()) == ([], [])

    class Masked(SideChecks):  # the same mask, now used on the output's values: refused
        def forward(self, x):
            h = self.act(self.c(x))
            h[h > 0.5] = 0.5
            return h.mean((2, 3))

    assert check_by_running(Masked(), x) == ([], [("", "gt")])


def test_the_run_time_check_keeps_no_intermediate_alive():
    """Tensors are followed by weak reference: a deep network's activations are freed as it runs."""
    from snncutoff.graph import check_by_running

    class Deep(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(4))
            self.act = nn.ModuleList(nn.ReLU() for _ in range(4))

        def forward(self, x):
            if x.sum() > 1e9:  # fx cannot trace this
                return x
            refs = []
            for layer, act in zip(self.layers, self.act):
                x = act(layer(x))
                refs.append(weakref.ref(x))
            gc.collect()
            self.alive = sum(r() is not None for r in refs)
            return x

    net = Deep()
    check_by_running(net, torch.rand(2, 4))
    assert net.alive == 1  # only the last, still held by the forward


def test_maxpool_needs_avg():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 2))
    with pytest.raises(ConversionError, match=r"'2' \(MaxPool2d\).*maxpool='avg'"):
        convert_ann(net, Probe, IF(threshold=1.0))
    snn, _ = convert_ann(net, Probe, IF(threshold=1.0), maxpool="avg")
    assert isinstance(snn[2], nn.AvgPool2d) and snn[2].kernel_size == 2


@pytest.mark.parametrize("backend_name, step_mode", [("spikingjelly", "s"), ("spikingjelly", "m"), ("snntorch", "s")])
def test_a_pooling_module_placed_at_several_places_is_converted_at_each(backend_name, step_mode):
    """SNNCutoff's VGG_Gesture holds one nn.MaxPool2d at five places of its nn.Sequential."""
    from snncutoff import collect_trace

    from .helpers import backend_or_skip

    backend = backend_or_skip(backend_name)

    def net(pool: nn.Module, shared: bool) -> nn.Module:
        torch.manual_seed(0)
        pools = [pool, pool, pool] if shared else [pool, type(pool)(2), type(pool)(2)]
        return constraints.apply(nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), pools[0], nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), pools[1],
            nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), pools[2], nn.Flatten(), nn.Linear(4, 3)), "qcfs", levels=4,
            threshold=1.0).eval()

    data = random_batches(shape=(1, 8, 8), n=8, batches=1, classes=3)
    for pool in (nn.MaxPool2d(2), nn.AvgPool2d(2)):
        shared = backend.convert(net(pool, True), step_mode=step_mode, maxpool="avg")
        assert not any(isinstance(m, nn.MaxPool2d) for m in shared.modules())
        got = collect_trace(backend, shared, data, T=6, progress=False)
        want = collect_trace(backend, backend.convert(net(type(pool)(2), False), step_mode=step_mode, maxpool="avg"),
                             data, T=6, progress=False)
        assert torch.equal(got.outputs, want.outputs)


@pytest.mark.parametrize("layer", [nn.Sigmoid(), nn.LSTM(4, 4), nn.GELU(), nn.LayerNorm(4)])
def test_unsupported_layer_is_named(layer):
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), layer, nn.Linear(4, 2))
    with pytest.raises(ConversionError, match=rf"'2' \({type(layer).__name__}\)"):
        convert_ann(net, Probe, IF(threshold=1.0))


def test_relu_without_calibration_asks_for_it():
    with pytest.raises(ConversionError, match="calibration="):
        convert_ann(small_ann(), Probe)


def test_thresholds_from_calibration_and_constraints():
    net = small_ann()
    data = random_batches()
    expected = calibrate_thresholds(net, data)
    snn, acts = convert_ann(net, Probe, calibration=data)
    assert {a.path: a.threshold for a in acts} == expected
    assert all(a.v_init == 0.5 for a in acts)
    # the max rule is the largest activation over all batches
    with torch.no_grad():
        h = torch.cat([net[:3](x) for x, _ in data])
    assert expected["2"] == pytest.approx(float(h.max()))
    q = constraints.apply(small_ann(), "qcfs", levels=4, threshold=2.5)
    _, acts = convert_ann(q, Probe)
    assert [a.threshold for a in acts] == [2.5, 2.5] and [a.kind for a in acts] == ["QCFS", "QCFS"]
    _, acts = convert_ann(q, Probe, IF(threshold=1.0, v_init=0.0))
    assert [(a.threshold, a.v_init) for a in acts] == [(1.0, 0.0), (1.0, 0.0)]


def test_percentile_rule():
    net = small_ann()
    data = random_batches()
    t_max = calibrate_thresholds(net, data, "max")
    t_p = calibrate_thresholds(net, data, "99%")
    assert all(t_p[k] < t_max[k] for k in t_max)
    with pytest.raises(ValueError, match="percentile"):
        calibrate_thresholds(net, data, "median")


def test_dead_relu_is_reported():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.fill_(-1.0)
    with pytest.raises(ConversionError, match="never fired"):
        convert_ann(net, Probe, calibration=[(torch.randn(4, 4), torch.zeros(4))])


def test_fuse_bn_preserves_the_function():
    net = small_ann()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    data = random_batches()
    fused, _ = convert_ann(net, Probe, IF(threshold=100.0), fuse_bn=True)
    kept, _ = convert_ann(net, Probe, IF(threshold=100.0))
    assert isinstance(fused[1], nn.Identity) and isinstance(kept[1], nn.BatchNorm2d)
    x = data[0][0]
    assert torch.allclose(fused(x), kept(x), atol=1e-5)


def test_original_ann_is_untouched_and_dropout_removed():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    snn, _ = convert_ann(net, Probe, IF(threshold=1.0))
    assert isinstance(net[1], nn.ReLU) and isinstance(net[2], nn.Dropout) and net.training
    assert isinstance(snn[1], Probe) and isinstance(snn[2], nn.Identity) and not snn.training


def test_constraints_apply():
    net = small_ann()
    constraints.apply(net, "clip", threshold=3.0)
    assert isinstance(net[2], constraints.Clip) and isinstance(net[6], constraints.Clip)
    with pytest.raises(ValueError, match="no nn.ReLU"):
        constraints.apply(nn.Sequential(nn.Linear(2, 2)), "qcfs")
    with pytest.raises(ValueError, match="functional"):
        constraints.apply(nn.Sequential(FunctionalBlock()), "qcfs")
    with pytest.raises(ValueError, match="kind"):
        constraints.apply(small_ann(), "relu6")


def test_qcfs_clip_and_tracked_relu():
    q = constraints.QCFS(levels=4, threshold=2.0)
    x = torch.tensor([-1.0, 0.0, 0.24, 0.26, 1.0, 1.9, 5.0], requires_grad=True)
    # clamp(floor(x / 2 * 4 + 0.5) / 4, 0, 1) * 2
    assert q(x).tolist() == [0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 2.0]
    # the SNNCutoff code's order, (x / theta) * L, decides at a level boundary when L is no power of two:
    # in float32, 0.2499999851 / 2.5 * 5 + 0.5 rounds to 1.0 (level 1: 0.5), 0.2499999851 * 5 / 2.5 + 0.5 stays below
    five = constraints.QCFS(levels=5, threshold=2.5)
    edge = torch.tensor([0.2499999851], dtype=torch.float32)
    assert float(edge / 2.5 * 5 + 0.5) == 1.0 and float(edge * 5 / 2.5 + 0.5) < 1.0
    assert five(edge).tolist() == [0.5]
    q(x).sum().backward()  # straight-through floor: gradient flows
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert q.conversion_threshold() == 2.0 and q.v_init == 0.5
    assert constraints.Clip(1.5)(torch.tensor([-1.0, 1.0, 3.0])).tolist() == [0.0, 1.0, 1.5]
    t = constraints.TrackedReLU(momentum=0.5)
    with pytest.raises(ValueError, match="seen no positive"):
        t.conversion_threshold()
    t.train()
    t(torch.tensor([1.0, 4.0]))
    t(torch.tensor([2.0]))
    assert t.conversion_threshold() == pytest.approx(0.5 * 4.0 + 0.5 * 2.0)
    t.eval()
    t(torch.tensor([100.0]))  # evaluation does not move it
    assert t.conversion_threshold() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="levels"):
        constraints.QCFS(levels=0)
    with pytest.raises(ValueError, match="threshold"):
        constraints.Clip(threshold=-1.0)
