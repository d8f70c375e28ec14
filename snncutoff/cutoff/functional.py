r"""Threshold searches of the cutoff policies, from calibration statistics.

Each policy compares a per-step score (:mod:`snncutoff.stats`) with a per-step threshold
``[T]`` learned on a calibration trace; these functions learn thresholds for E values of
epsilon / alpha at once (``[E, T]``): :func:`exact_gap_thresholds` (the exact search over
observed scores), :func:`grid_gap_thresholds` (SNNCutoff's grid, bit for bit) and
:func:`conformal_thresholds` (SpikeCP's per-step quantiles). No function here loops in
Python over samples or thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


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
