r"""Statistics of cumulative outputs: the pure tensor functions every figure is built from.

A trace stores cumulative outputs :math:`O_t \in \mathbb{R}^{N \times C}` after ``t + 1``
steps. Everything snncutoff reports reduces to a few per-step, per-sample statistics of
them, ``[T, N, C] -> [T, N]`` (or ``[..., C] -> [...]``):

- ``top2_gap``: :math:`O_{c_1} - O_{c_2}` (largest minus second largest) and the argmax;
- ``max_softmax``: :math:`\max_c \operatorname{softmax}(O)_c`; ``softmax_argmax``;
- ``normalized_entropy``: :math:`-\sum_c p_c \log p_c / \log C` with :math:`p = \operatorname{softmax}(O)`;
- ``nonconformity`` / ``kth_nonconformity``: SpikeCP's :math:`-\log(\operatorname{softmax}(O)_c + 10^{-5})`;
- ``argmax_runs``: how many steps in a row, up to t, the argmax has been what it is at t;

and two reductions over time:

- ``optimal_cutoff_steps``: the OCT of each sample from ``correct`` ``[T, N]``;
- ``first_exit``: the first step whose exit mask is set (T at the latest).

:class:`~snncutoff.Trace` caches these per trace; the cutoff policies call them on a
trace or on the few steps of an on-line decision. Nothing here loops in Python over
samples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _native

_CHUNK_ROWS = 8192  # rows of [*, C] processed at once: keeps temporaries in cache
_BUFFER_ROWS = 32768  # rows of the reused buffer of top2_gap


def _rowwise(outputs: Tensor, fn, n_out: int) -> tuple[Tensor, ...]:
    """Apply ``fn([rows, C]) -> n_out tensors [rows]`` over ``outputs[..., C]`` in chunks."""
    flat = outputs.reshape(-1, outputs.shape[-1])
    if 0 < flat.shape[0] <= _CHUNK_ROWS:  # one step of a batch (streaming): no copies
        return tuple(p.reshape(outputs.shape[:-1]) for p in fn(flat))
    outs = None
    for start in range(0, flat.shape[0], _CHUNK_ROWS):
        parts = fn(flat[start : start + _CHUNK_ROWS])
        if outs is None:
            outs = [torch.empty(flat.shape[0], dtype=p.dtype, device=p.device) for p in parts]
        for o, p in zip(outs, parts):
            o[start : start + p.shape[0]] = p
    if outs is None:  # no rows at all
        outs = [torch.empty(0, device=outputs.device) for _ in range(n_out)]
    return tuple(o.reshape(outputs.shape[:-1]) for o in outs)


def nearest_rank(q: float, n: int) -> int:
    r"""The 1-based rank :math:`\lceil q n \rceil` of the q-quantile among n sorted values (nearest rank), in [1, n].

    The smallest value with a share of at least q of the n values at or below it; q·n is
    rounded to 9 decimals first, so ``0.92 * 100`` (92.00000000000001 in floating point)
    gives 92, not 93.
    """
    return max(1, min(n, math.ceil(round(q * n, 9))))


def top2_gap(outputs: Tensor) -> tuple[Tensor, Tensor]:
    r"""Top-1 minus top-2 of the last dimension, and the argmax.

    ``gap = O[..., c1] - O[..., c2]`` with :math:`c_1` the argmax (first index on ties)
    and :math:`c_2` the largest of the others; a tie for the maximum gives 0. The values
    equal ``torch.topk(O, 2)`` differences bit for bit, at about a third of the cost: one
    max-with-index pass, then, on a reused cache-sized buffer, the maximum with the top
    entry masked out (no full-size temporary is allocated).
    Policies reading a validated (finite) trace or a checked on-line step use the one-pass
    C kernel of :mod:`snncutoff._native` instead where it was built
    (:func:`top2_gap_of_finite`): the same values.

    Args:
        outputs: ``[..., C]`` with ``C >= 2``.
    Returns:
        ``(gap, argmax)``, both ``[...]``.
    """
    C = outputs.shape[-1]
    flat = outputs.reshape(-1, C)
    M = flat.shape[0]
    gap = torch.empty(M, dtype=outputs.dtype, device=outputs.device)
    idx = torch.empty(M, dtype=torch.long, device=outputs.device)
    buf = torch.empty(min(M, _BUFFER_ROWS), C, dtype=outputs.dtype, device=outputs.device)
    for start in range(0, M, _BUFFER_ROWS):
        chunk = flat[start : start + _BUFFER_ROWS]
        n = chunk.shape[0]
        top1, i = chunk.max(dim=-1)
        rest = buf[:n]
        rest.copy_(chunk)
        rest.scatter_(-1, i.unsqueeze(-1), float("-inf"))
        torch.sub(top1, rest.amax(dim=-1), out=gap[start : start + n])
        idx[start : start + n] = i
    return gap.reshape(outputs.shape[:-1]), idx.reshape(outputs.shape[:-1])


def top2_gap_of_finite(outputs: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`top2_gap` of outputs known to be finite (a validated trace, a checked on-line
    step): the C kernel of :mod:`snncutoff._native` where it applies, the same values."""
    native = _native.top2_gap(outputs)
    return native if native is not None else top2_gap(outputs)


def max_softmax(outputs: Tensor) -> Tensor:
    """``max_c softmax(O)[..., c]`` computed as ``O.softmax(-1).amax(-1)`` (``[..., C] -> [...]``)."""
    return _rowwise(outputs, lambda c: (c.softmax(dim=-1).amax(dim=-1),), 1)[0]


def max_softmax_of_mean(outputs: Tensor, steps: Tensor | int) -> Tensor:
    r"""``max_c softmax(O / s)``: the largest softmax probability of the mean output.

    Computed as :math:`1 / \sum_c \exp\big((O_c - \max_{c'} O_{c'}) / s\big)` (exact in real
    arithmetic; a few elementwise passes, several times cheaper than a softmax on the
    few rows of an on-line decision).

    Args:
        outputs: ``[k, N, C]`` cumulative outputs with ``steps`` ``[k, N]`` or ``[k, 1]`` 1-based
            step counts s (each row divided by its own, in the outputs' dtype); or ``[N, C]``
            outputs of one step with ``steps`` an int or ``[N]``.
    Returns:
        ``[k, N]`` (or ``[N]``); computed a step at a time (no full-size temporary).
    """
    if outputs.dim() == 2:
        s = steps.to(device=outputs.device, dtype=outputs.dtype).unsqueeze(-1) if isinstance(steps, Tensor) else steps
        d = torch.sub(outputs, outputs.amax(dim=-1, keepdim=True)).div_(s)
        return d.exp_().sum(dim=-1).reciprocal_()
    steps = steps.to(device=outputs.device, dtype=outputs.dtype)
    out = torch.empty(outputs.shape[:2], dtype=outputs.dtype, device=outputs.device)
    for t in range(outputs.shape[0]):
        out[t] = max_softmax_of_mean(outputs[t], steps[t].expand(outputs.shape[1]))
    return out


def softmax_argmax(outputs: Tensor) -> Tensor:
    """``argmax`` of ``softmax(O)`` (it differs from argmax of O only where softmax rounds to a tie)."""
    return _rowwise(outputs, lambda c: (c.softmax(dim=-1).argmax(dim=-1),), 1)[0]


def nonconformity(outputs: Tensor, labels: Tensor) -> Tensor:
    r"""SpikeCP score of the true label, :math:`-\log(\mathrm{softmax}(O)_y + 10^{-5})`.

    Args:
        outputs: ``[T, N, C]``; labels: ``[N]``.
    Returns:
        ``[T, N]`` float.
    """
    T = outputs.shape[0]
    lab = labels.reshape(1, -1).expand(T, -1).reshape(-1)
    flat = outputs.reshape(-1, outputs.shape[-1])
    out = torch.empty(flat.shape[0], dtype=outputs.dtype, device=outputs.device)
    for s in range(0, flat.shape[0], _CHUNK_ROWS):
        p = flat[s : s + _CHUNK_ROWS].softmax(dim=-1)
        out[s : s + p.shape[0]] = -torch.log(p.gather(-1, lab[s : s + p.shape[0], None])[:, 0] + 1e-5)
    return out.reshape(outputs.shape[:-1])


def kth_nonconformity(outputs: Tensor, k: int) -> Tensor:
    r"""The ``k``-th smallest of :math:`-\log(\mathrm{softmax}(O)_c + 10^{-5})` over c.

    The SpikeCP prediction set at threshold q is :math:`\{c : s_c < q\}`; it holds at most
    ``k - 1`` labels exactly when this score is ``>= q``. ``k > C`` gives ``+inf`` (a set
    never exceeds C labels).

    Args:
        outputs: ``[..., C]``; k: ``>= 1``.
    Returns:
        ``[...]`` float.
    """
    C = outputs.shape[-1]
    if k > C:
        return torch.full(outputs.shape[:-1], math.inf, dtype=outputs.dtype, device=outputs.device)

    def fn(c: Tensor) -> tuple[Tensor]:
        nc = -(c.softmax(dim=-1) + 1e-5).log()
        return (torch.topk(nc, k, dim=-1, largest=False).values[:, -1],)

    return _rowwise(outputs, fn, 1)[0]


def stable_correct(correct: Tensor) -> Tensor:
    """``[T, N]`` bool: correct at step t and at every later step (no forcing at T)."""
    return correct.flip(0).to(torch.uint8).cummin(dim=0).values.flip(0).bool()


def optimal_cutoff_steps(correct: Tensor) -> Tensor:
    """OCT ``[N]`` (1-based): earliest t correct at t and every later step; T if wrong at T.

    That is one step after the last wrong one (``[T, N]`` bool in), found as a vertical
    maximum of ``wrong[t] * (t + 1)``."""
    T = correct.shape[0]
    dtype = torch.uint8 if T < 255 else torch.int32
    step = torch.arange(1, T + 1, dtype=dtype, device=correct.device).view(-1, 1)
    last_wrong = ((~correct).to(dtype) * step).amax(dim=0).long()  # 0: never wrong
    return (last_wrong + 1).clamp_(max=T)


def first_exit(exit_mask: Tensor) -> Tensor:
    """1-based first step where ``exit_mask`` ``[..., T, N]`` is True, T if never (forced exit).

    Computed as ``T + 1 - max_t(mask[t] * (T - t))``: a vertical maximum, which torch
    vectorises, unlike an argmax over a middle dimension."""
    T = exit_mask.shape[-2]
    dtype = torch.uint8 if T < 256 else torch.int32
    weight = torch.arange(T, 0, -1, dtype=dtype, device=exit_mask.device).view(-1, 1)  # T - t
    last = (exit_mask.to(dtype) * weight).amax(dim=-2).clamp_(min=1)  # 1: the forced exit at T
    return T + 1 - last.long()


def normalized_entropy(outputs: Tensor) -> Tensor:
    r"""Entropy of :math:`\operatorname{softmax}(O)` divided by :math:`\log C`, in [0, 1] (``[..., C] -> [...]``).

    :math:`H = -\sum_c p_c \log p_c` with the convention :math:`0 \log 0 = 0`, computed from
    ``log_softmax`` (no ``log(0)``). ``C = 1`` gives 0.
    """
    C = outputs.shape[-1]
    if C < 2:
        return torch.zeros(outputs.shape[:-1], dtype=outputs.dtype, device=outputs.device)
    scale = 1.0 / math.log(C)

    def fn(c: Tensor) -> tuple[Tensor]:
        logp = c.log_softmax(dim=-1)
        return (-(logp.exp() * logp).sum(dim=-1) * scale,)

    return _rowwise(outputs, fn, 1)[0]


def argmax_runs(argmax: Tensor, previous: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Run length of the argmax: ``run[t, n]`` = steps in a row, ending at t, with the argmax of t.

    Args:
        argmax: ``[T, N]`` integer argmax of the cumulative outputs.
        previous: ``(last_argmax [N], last_run [N])`` before the first of these steps (on-line
            decisions continue a run), or None at the first step.
    Returns:
        ``[T, N]`` int64, ``>= 1``.
    """
    runs = torch.empty(argmax.shape, dtype=torch.long, device=argmax.device)
    last, run = previous if previous is not None else (None, None)
    for t in range(argmax.shape[0]):
        cur = argmax[t]
        run = torch.ones_like(cur) if last is None else torch.where(cur == last, run + 1, 1)
        runs[t], last = run, cur
    return runs
