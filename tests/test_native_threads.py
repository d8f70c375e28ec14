"""The compiled top-2 kernel on its threaded path: rows split over 2 or 3 threads, every chunk computed.

The thread count is set inside each test (and restored), so the split happens with and without
pytest-xdist (whose workers run torch with one thread)."""

import pytest
import torch

from snncutoff import TopKGap, Trace, _native

pytestmark = pytest.mark.skipif(not _native.available(), reason="the optional C kernel was not built (no compiler)")


@pytest.fixture
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    top = torch.topk(x, 2, dim=-1).values
    return top[..., 0] - top[..., 1], x.argmax(dim=-1)


@pytest.mark.parametrize("threads", [2, 3], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_threaded_kernel_computes_every_row(threads, dtype):
    rows = threads * _native._MIN_ROWS + 2 * threads + 1  # an uneven split: chunks of different sizes
    g = torch.Generator().manual_seed(threads)
    x = torch.randn(rows, 10, generator=g, dtype=dtype) * 10
    x[::3, 4] = x[::3].amax(-1)  # tied maxima: the first index and a gap of 0
    x[-1] = torch.arange(10, dtype=dtype)  # the very last row, gap 1 at index 9
    x[0] = -torch.arange(10, dtype=dtype)  # the first row, gap 1 at index 0
    assert max(1, min(torch.get_num_threads(), rows // _native._MIN_ROWS)) == threads  # the kernel splits
    gap, idx = _native.top2_gap(x)
    ref_gap, ref_idx = reference(x)
    assert torch.equal(gap, ref_gap) and torch.equal(idx, ref_idx)
    assert gap[-1].item() == 1.0 and idx[-1].item() == 9 and gap[0].item() == 1.0 and idx[0].item() == 0
    assert _native._pool is not None and _native._pool[0] >= threads  # the threaded path ran
    # the chunk edges, where a split may drop or repeat a row
    for k in range(1, threads):
        edge = rows * k // threads
        assert torch.equal(gap[edge - 2:edge + 2], ref_gap[edge - 2:edge + 2])


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_threaded_kernel_on_a_trace_matches_topk(threads):
    # a [T, N, C] trace of more than 2 x _MIN_ROWS rows: Trace.gaps() goes through the threaded kernel
    T, N = 4, _native._MIN_ROWS // 2 + 7
    g = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 6, (N,), generator=g)
    tr = Trace(torch.randn(T, N, 6, generator=g).cumsum(0), labels)
    ref_gap, ref_idx = reference(tr.outputs)
    assert torch.equal(tr.gaps(), ref_gap) and torch.equal(tr.predictions(), ref_idx)
    # a policy's thresholds and exits do not depend on which path computed the gaps
    cal = Trace(tr.outputs[:, : N // 2].contiguous(), labels[: N // 2])
    p = TopKGap(0.05).fit(cal)
    exits = p.evaluate(tr).exit_step
    passes = ref_gap > p.beta_.view(-1, 1)
    passes[-1] = True
    assert torch.equal(exits, passes.to(torch.uint8).argmax(0) + 1)
