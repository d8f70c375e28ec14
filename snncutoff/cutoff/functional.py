r"""The pure tensor functions behind every cutoff policy.

Each policy reduces to three steps, and each step is a function here:

1. a **score** per step and sample from the cumulative outputs, ``[T, N, C] -> [T, N]``
   (``top2_gap``, ``max_softmax``, ``kth_nonconformity``);
2. a **threshold** per step learned on a calibration trace, ``[T]`` (or ``[E, T]`` for E
   values of epsilon / alpha at once: ``exact_gap_thresholds``, ``grid_gap_thresholds``,
   ``conformal_thresholds``);
3. the **first exit**: sample n stops at the first step whose score passes the
   threshold, and at step T at the latest (``first_exit``).

Post-hoc ``evaluate`` applies steps 1 and 3 to a whole trace; streaming ``exit_now`` /
``exit_block`` apply the same comparison to one step or a few, so all give the same exit
steps.
No function here loops in Python over samples or thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

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


def top2_gap(outputs: Tensor) -> tuple[Tensor, Tensor]:
    r"""Top-1 minus top-2 of the last dimension, and the argmax.

    ``gap = O[..., c1] - O[..., c2]`` with :math:`c_1` the argmax (first index on ties)
    and :math:`c_2` the largest of the others; a tie for the maximum gives 0. The values
    equal ``torch.topk(O, 2)`` differences bit for bit, at about a third of the cost: one
    max-with-index pass, then, on a reused cache-sized buffer, the maximum with the top
    entry masked out (no full-size temporary is allocated).
    Policies reading a whole (validated, finite) trace use the one-pass C kernel of
    :mod:`snncutoff._native` instead where it was built: the same values.

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


def max_softmax(outputs: Tensor) -> Tensor:
    """``max_c softmax(O)[..., c]`` computed as ``O.softmax(-1).amax(-1)`` (``[..., C] -> [...]``)."""
    return _rowwise(outputs, lambda c: (c.softmax(dim=-1).amax(dim=-1),), 1)[0]


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


# ---------------------------------------------------------------- thresholds
def _sorted_counts(scores: Tensor, flags: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row of ``scores`` ``[T, N]`` ascending.

    Returns ``(s, cum)``: the sorted scores ``[T, N]`` and ``cum[t, k]``, the number
    of flagged samples among the k smallest, ``[T, N + 1]`` int64.

    On the CPU, numpy's vectorised sorts (x86-simd-sort) do the work: float32 scores
    and their flags are packed into one int64 key (order-preserving integer image of
    the float, shifted left, flag in the lowest bit) and sorted without indices;
    float64 ones are argsorted. Elsewhere ``torch.sort``.
    """
    T, N = scores.shape
    cum = torch.zeros(T, N + 1, dtype=torch.int64, device=scores.device)
    if scores.device.type == "cpu" and scores.dtype == torch.float32:
        bits = scores.view(torch.int32)
        ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()  # monotone in the float
        key = torch.from_numpy(np.sort((ordered * 2 + flags).numpy(), axis=1))
        ordered = (key >> 1).int()
        s = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered).view(torch.float32)
        torch.cumsum(key & 1, dim=1, out=cum[:, 1:])
        return s, cum
    if scores.device.type == "cpu" and scores.dtype == torch.float64:
        order = torch.from_numpy(np.argsort(scores.numpy(), axis=1))
    else:
        order = scores.sort(dim=1).indices
    torch.cumsum(flags.gather(1, order), dim=1, out=cum[:, 1:])
    return scores.gather(1, order), cum


def exact_gap_thresholds(gaps: Tensor, settled: Tensor, epsilons: Sequence[float]) -> Tensor:
    r"""Smallest observed gap :math:`\beta_t` meeting the Top-K calibration constraint.

    For each step t and each :math:`\epsilon`: among samples with ``gap_t > beta_t`` the
    share with ``settled`` (OCT <= t + 1) must be at least :math:`1 - \epsilon`, computed
    as "unsettled / kept <= epsilon" in float64. The search runs over the observed gaps
    (all at once: sort, cumulative counts); a step where no observed gap meets it gets
    ``+inf`` (never exits there).

    Args:
        gaps: ``[T, N]``; settled: ``[T, N]`` bool; epsilons: E values in [0, 1).
    Returns:
        ``[E, T]`` thresholds, dtype of ``gaps``.
    """
    T, N = gaps.shape
    s, cum = _sorted_counts(gaps, ~settled)
    # candidate beta = s[t, j] at the end j of each run of equal gaps: the samples kept
    # (gap > beta) are those after j, N - 1 - j of them, cum[N] - cum[j + 1] unsettled
    run_end = torch.ones_like(s, dtype=torch.bool)
    run_end[:, :-1] = s[:, 1:] != s[:, :-1]
    kept = torch.arange(N - 1, -1, -1, device=gaps.device, dtype=torch.float64)
    bad = (cum[:, -1:] - cum[:, 1:]).double()
    share = torch.where(run_end & (kept > 0), bad / kept.clamp(min=1), math.inf)
    # smallest passing gap = first j with share <= eps = first j whose prefix minimum is
    # <= eps (the prefix minimum does not increase, so a searchsorted finds it)
    prefix_min = share.cummin(dim=1).values
    eps = torch.tensor(list(epsilons), dtype=torch.float64, device=gaps.device)
    first = torch.searchsorted(-prefix_min, -eps.expand(T, -1).contiguous(), side="left")  # [T, E]
    beta = s.gather(1, first.clamp(max=N - 1))
    return torch.where(first < N, beta, torch.full_like(beta, math.inf)).T.contiguous()


def grid_gap_thresholds(gaps: Tensor, settled: Tensor, epsilons: Sequence[float], bins: int = 100) -> Tensor:
    r"""The SNNCutoff code's grid search for :math:`\beta_t`, reproduced bit for bit.

    One grid for all steps, ``grid[m] = m * (max(gaps) / bins)`` in the gaps' dtype; a
    sample counts at (m, t) when ``gap_t > grid[m]``; ``conf[m, t]`` = settled / counted in
    float32 (an empty bin is NaN and never passes); the last row is forced to pass; the
    threshold is the first grid value with ``conf >= 1 - epsilon`` (float32 compare).

    Args:
        gaps: ``[T, N]``; settled: ``[T, N]`` bool (argmax of *softmax* correct at t and
            every later step); epsilons: E values; bins: grid size.
    Returns:
        ``[E, T]`` thresholds in the gaps' dtype.
    """
    T, N = gaps.shape
    disc = gaps.max() / bins
    grid = torch.arange(bins, dtype=gaps.dtype, device=gaps.device) * disc  # [M], the gaps' dtype
    s, cum = _sorted_counts(gaps, settled)
    # kept[t, m] = #(gap_t > grid[m]): the samples after the last one <= grid[m]
    below = torch.searchsorted(s, grid.expand(T, -1).contiguous(), side="right")  # [T, M]
    kept = N - below
    conf = (cum[:, -1:] - cum.gather(1, below)).float() / kept.float()  # 0/0 = NaN
    conf = conf.T.clone()  # [M, T]
    conf[-1] = 1.0
    out = []
    for eps in epsilons:
        ok = (conf >= (1 - eps)).to(torch.uint8)  # float32 compare, NaN never passes
        out.append(grid[ok.argmax(dim=0)])
    return torch.stack(out)


def conformal_thresholds(scores: Tensor, alphas: Sequence[float], quantile: str = "split") -> Tensor:
    r"""Per-step SpikeCP thresholds from calibration nonconformity scores.

    - ``"split"``: the :math:`\lceil (1-\alpha)(N+1) \rceil`-th smallest score, ``+inf``
      when that rank exceeds N (textbook split conformal).
    - ``"snncutoff"``: the SNNCutoff code: append ``+inf`` to the N scores, take
      :math:`k = \lceil \mathrm{float32}((1-\alpha)(N+2)) \rceil - 1` and the k-th smallest;
      ``k <= 0`` is an error.

    Args:
        scores: ``[T, N]``; alphas: E per-step levels in [0, 1); quantile: as above.
    Returns:
        ``[E, T]`` thresholds.
    """
    T, N = scores.shape
    inf_col = torch.full((T, 1), math.inf, dtype=scores.dtype, device=scores.device)
    s = torch.cat([scores.sort(dim=1).values, inf_col], dim=1)  # [T, N + 1], ascending
    ranks = []
    for a in alphas:
        if quantile == "split":
            k = math.ceil((1.0 - a) * (N + 1) - 1e-9)  # guard 0.9 * 10 = 9.000000000000002
            k = min(max(k, 1), N + 1)
        else:
            k = math.ceil(float(torch.tensor((1.0 - a) * (N + 2), dtype=torch.float32))) - 1
            if k <= 0:
                raise ValueError(
                    f"quantile='snncutoff' needs ceil((1 - alpha)(N + 2)) - 1 >= 1; alpha = {a} with "
                    f"N = {N} calibration samples gives {k}. Lower alpha or calibrate on more samples."
                )
        ranks.append(k - 1)
    idx = torch.tensor(ranks, device=scores.device)
    return s[:, idx].T.contiguous()
