"""SpikingJelly-specific: multi-step conversion, GPU kernel selection, version handling."""

import logging

import pytest
import torch

import snncutoff as sc

from .helpers import random_batches, small_ann

pytest.importorskip("spikingjelly.activation_based.neuron")
from snncutoff_spikingjelly import SpikingJellyBackend  # noqa: E402
from snncutoff_spikingjelly._compat import sj  # noqa: E402


def test_multistep_conversion_equals_single_step():
    b = sc.backends.get("spikingjelly")
    data = random_batches()
    s = b.convert(small_ann(), calibration=data)
    m = b.convert(small_ann(), calibration=data, step_mode="m")
    assert b.is_multistep(m) and not b.is_multistep(s)
    a = sc.collect_trace(b, s, data, T=12, count_ops=True, progress=False)
    c = sc.collect_trace(b, m, data, T=12, count_ops=True, progress=False)
    assert torch.equal(a.outputs, c.outputs) and torch.equal(a.ops, c.ops)


def test_residual_block_converts_in_both_step_modes():
    from snncutoff.models import BasicBlock

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), BasicBlock(4, 8, 2),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    b = sc.backends.get("spikingjelly")
    data = random_batches()
    s = b.convert(net, calibration=data)
    m = b.convert(net, calibration=data, step_mode="m")
    assert len(b.spiking_layers(s)) == 3
    a = sc.collect_trace(b, s, data, T=6, count_ops=True, progress=False)
    c = sc.collect_trace(b, m, data, T=6, count_ops=True, progress=False)
    assert torch.equal(a.outputs, c.outputs) and torch.equal(a.ops, c.ops)


def test_step_mode_is_checked():
    with pytest.raises(ValueError, match="step_mode"):
        sc.backends.get("spikingjelly").convert(small_ann(), calibration=random_batches(), step_mode="x")
    with pytest.raises(ValueError, match="step_mode='s' only"):
        sc.backends.get("snntorch").convert(small_ann(), calibration=random_batches(), step_mode="m")


def test_gpu_kernel_choices():
    with pytest.raises(ValueError, match="gpu_kernel"):
        SpikingJellyBackend(gpu_kernel="cuda-graphs")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="gpu_kernel='cupy' cannot be used: no CUDA"):
            SpikingJellyBackend(gpu_kernel="cupy").kernel()
    assert SpikingJellyBackend("torch").kernel() == "torch"
    auto = SpikingJellyBackend("auto").kernel()
    assert auto in (("cupy", "torch") if sj().legacy else ("auto",))


def test_triton_on_legacy_falls_back_with_a_warning(caplog):
    if not sj().legacy:
        assert SpikingJellyBackend("triton").kernel() == "triton"
        return
    with caplog.at_level(logging.WARNING, logger="snncutoff.spikingjelly"):
        assert SpikingJellyBackend("triton").kernel() in ("cupy", "torch")
    assert "no triton" in caplog.text


@pytest.mark.cuda
def test_cuda_run_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    b = SpikingJellyBackend("auto")
    data = random_batches()
    ann = small_ann()
    cpu = sc.collect_trace(b, b.convert(ann, calibration=data, step_mode="m"), data, T=8, progress=False)
    gpu_net = b.convert(ann, calibration=data, step_mode="m").cuda()
    gpu = sc.collect_trace(b, gpu_net, data, T=8, device="cuda", progress=False)
    assert float((cpu.outputs - gpu.outputs).abs().max()) < 1e-3
    assert float((cpu.predictions() == gpu.predictions()).double().mean()) > 0.99


@pytest.mark.cupy
def test_legacy_cupy_kernels_see_numpy_int_while_numpy_is_untouched():
    if not sj().legacy:
        pytest.skip("the np.int shim is for SpikingJelly 0.0.0.0.14")
    import numpy
    from spikingjelly.activation_based.auto_cuda import base as cuda_base

    assert cuda_base.np.int is int  # what 0.0.0.0.14's dtype checks compare against
    assert cuda_base.np.float32 is numpy.float32 and cuda_base.np.float16 is numpy.float16
    assert numpy.dtype("int64") == cuda_base.np.int


def test_cupy_kernel_matches_torch():
    ok = torch.cuda.is_available() and sj().legacy
    if not ok:
        pytest.skip("needs SpikingJelly 0.0.0.0.14, cupy and a CUDA GPU")
    pytest.importorskip("cupy")
    data = random_batches()
    ann = small_ann()
    outs = []
    for kernel in ("cupy", "torch"):
        b = SpikingJellyBackend(kernel)
        net = b.convert(ann, calibration=data, step_mode="m").cuda()
        outs.append(sc.collect_trace(b, net, data, T=8, device="cuda", progress=False).outputs)
    assert float((outs[0] - outs[1]).abs().max()) < 1e-4


def test_operation_counts_agree_with_spikingjellys_op_counter():
    """SpikingJelly 2.x counts SynOps (binary inputs) and MACs (the rest) on its own; the totals match ours."""
    try:
        from spikingjelly.activation_based import op_counter
    except ImportError:
        pytest.skip("this SpikingJelly has no op_counter (0.0.0.0.14)")
    from spikingjelly.activation_based import functional, layer, neuron

    torch.manual_seed(0)
    net = torch.nn.Sequential(layer.Conv2d(1, 8, 3, padding=1), neuron.IFNode(), layer.AvgPool2d(2), layer.Flatten(),
                              layer.Linear(8 * 4 * 4, 32), neuron.IFNode(), layer.Linear(32, 10), neuron.IFNode(),
                              layer.Linear(10, 10))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.mul_(3)
    x = torch.randn(16, 1, 8, 8)
    b = sc.backends.get("spikingjelly")
    trace = sc.collect_trace(b, net, [(x, torch.zeros(16, dtype=torch.long))], T=4, count_ops=True, progress=False)
    syn, mac = op_counter.SynOpCounter(), op_counter.MACCounter()
    functional.reset_net(net)
    with torch.no_grad(), op_counter.DispatchCounterMode([syn, mac]):
        for _ in range(4):
            net(x)
    assert syn.get_total() > 0
    assert float(trace.ops.sum()) == syn.get_total() + mac.get_total()
