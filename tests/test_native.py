"""The compiled top-2 kernel against the pure-torch top2_gap (and torch.topk)."""

import pytest
import torch

from snncutoff import TopKGap, Trace, _native
from snncutoff.stats import top2_gap

pytestmark = pytest.mark.skipif(not _native.available(), reason="the optional C kernel was not built (no compiler)")

ROWS = _native._MIN_ROWS + 123  # above the size where the kernel takes over


@pytest.fixture(params=[1, 2, 3], ids=["baseline", "avx2", "avx512"])
def level(request):
    _native.force_level(request.param)
    yield request.param
    _native.force_level(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("C", [2, 3, 7, 8, 15, 16, 17, 31, 100, 257])
def test_kernel_equals_torch_with_ties(level, dtype, C):
    g = torch.Generator().manual_seed(C)
    # few distinct values: ties for the maximum in many rows, signed zeros too
    x = (torch.randint(-3, 3, (ROWS, C), generator=g).to(dtype) * 0.5)
    x[::7] = -x[::7]
    gap, idx = _native.top2_gap(x)
    ref_gap, ref_idx = top2_gap(x)
    assert torch.equal(gap, ref_gap) and torch.equal(idx, ref_idx)
    assert (gap == 0).any()  # the ties were exercised


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_equals_topk_on_continuous_values(level, dtype):
    x = torch.randn(4, ROWS // 4, 100, generator=torch.Generator().manual_seed(1), dtype=dtype) * 1e3
    gap, idx = _native.top2_gap(x)
    top = torch.topk(x, 2, dim=-1).values
    assert gap.shape == idx.shape == x.shape[:-1]
    assert torch.equal(gap, top[..., 0] - top[..., 1])
    assert torch.equal(idx, x.argmax(dim=-1))


@pytest.mark.parametrize("rows", [1, 2, 3, 255, 256])
def test_kernel_equals_torch_on_an_on_line_step(level, rows):
    # one step of a small batch: one call on the caller's thread, the same bits
    x = (torch.randint(-4, 4, (1, rows, 10), generator=torch.Generator().manual_seed(rows)) * 0.25).float()
    gap, idx = _native.top2_gap(x)
    ref_gap, ref_idx = top2_gap(x)
    assert gap.shape == (1, rows) and torch.equal(gap, ref_gap) and torch.equal(idx, ref_idx)


def test_kernel_declines_what_it_does_not_cover():
    x = torch.randn(ROWS, 10)
    assert _native.top2_gap(x.T) is None  # not contiguous
    assert _native.top2_gap(x.half()) is None  # dtype without a kernel
    assert _native.top2_gap(x[:, :1].contiguous()) is None  # C < 2


def test_policy_results_do_not_depend_on_the_kernel(monkeypatch):
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 10, (ROWS // 8,), generator=g)
    steps = torch.randn(8, labels.shape[0], 10, generator=g)
    steps[:, torch.arange(labels.shape[0]), labels] += 0.5
    cal, test = Trace.from_steps(steps, labels), Trace.from_steps(steps.flip(0), labels)
    with_kernel = TopKGap(0.02).fit(cal).evaluate(test)
    monkeypatch.setattr(_native, "_TOP2", {})
    cal, test = Trace(cal.outputs, cal.labels), Trace(test.outputs, test.labels)  # nothing cached
    without = TopKGap(0.02).fit(cal).evaluate(test)
    assert torch.equal(with_kernel.exit_step, without.exit_step)
    assert torch.equal(with_kernel.predictions, without.predictions)


def _top2_in_child(x):
    """Run in a forked worker: returns numpy arrays, so that no torch code (whose OpenMP pool does not
    survive a fork) runs in the child to send the result back."""
    gap, idx = _native.top2_gap(torch.from_numpy(x))
    return gap.numpy(), idx.numpy()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_kernel_works_in_a_forked_child():
    import multiprocessing as mp

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # with or without xdist (whose workers set one thread): the kernel splits
    try:
        x = torch.randn(2 * _native._MIN_ROWS + 5, 12, generator=torch.Generator().manual_seed(4))
        _native.top2_gap(x)
        assert _native._pool is not None  # the parent's thread pool exists now
        with mp.get_context("fork").Pool(1) as pool:
            gap, idx = pool.apply_async(_top2_in_child, (x.numpy(),)).get(timeout=30)  # a stale pool would hang
    finally:
        torch.set_num_threads(threads)
    ref = torch.topk(x, 2, dim=-1).values
    assert torch.equal(torch.from_numpy(gap), ref[:, 0] - ref[:, 1])
    assert torch.equal(torch.from_numpy(idx), x.argmax(-1))
