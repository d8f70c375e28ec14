"""Optional compiled kernels (plain C, loaded with :mod:`ctypes`).

``pip install`` compiles ``top2.c`` and ``learned.c`` when a C compiler is present (an
optional extension: without one the install still succeeds). Every kernel has a
pure-torch twin, which is used when the library was not built, for tensors it does not
take (not on the CPU, another dtype, not contiguous), or when
the environment sets ``SNNCUTOFF_NATIVE=0``:

- :func:`top2_gap`: :func:`snncutoff.stats.top2_gap`, the same values (bit for bit but for
  the sign of a zero gap between tied zeros, which no comparison sees);
- :func:`run_state`: ``RunState._state_scan`` of one step (exact: integers and copies);
- :func:`learned_scores` / :func:`learned_step`: ``LearnedExit``'s float64 score (of a
  trace's step, or of an on-line step with its run state), the same bits as its torch
  twin in :mod:`snncutoff.cutoff.learned`.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

_MIN_ROWS = 1 << 15  # rows per thread at least: below this, thread start-up costs more than it saves
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (size, pool), made on first use


def _workers(n: int) -> ThreadPoolExecutor:
    """A pool of at least ``n`` threads, kept for later calls."""
    global _pool
    if _pool is None or _pool[0] < n:
        _pool = (n, ThreadPoolExecutor(max_workers=n, thread_name_prefix="snncutoff-top2"))
    return _pool[1]


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of the parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


class LearnedModel(ctypes.Structure):
    """``struct learned_model`` of ``learned.c``: a fitted ``LearnedExit`` on raw features.

    Holds pointers into the tensors it is made from (kept alive here)."""

    _fields_ = [("codes", ctypes.c_void_p), ("a", ctypes.c_void_p), ("F", ctypes.c_int64), ("T", ctypes.c_double),
                ("a_progress", ctypes.c_double), ("c", ctypes.c_double), ("has_progress", ctypes.c_int),
                ("log_table", ctypes.c_void_p), ("log_size", ctypes.c_int64)]

    def __init__(self, codes: Tensor, weights: Tensor, T: int, a_progress: float | None, c: float,
                 log_table: Tensor) -> None:
        super().__init__(codes.data_ptr(), weights.data_ptr(), codes.shape[0], float(T),
                         0.0 if a_progress is None else a_progress, c, a_progress is not None,
                         log_table.data_ptr(), log_table.shape[0])
        self.tensors = (codes, weights, log_table)


def learned_model(codes: Tensor, weights: Tensor, T: int, a_progress: float | None, c: float,
                  log_table: Tensor) -> LearnedModel | None:
    """The model for :func:`learned_scores` / :func:`learned_step` (int64 ``codes``, float64
    ``weights`` and ``log_table``, contiguous on the CPU), or None without the kernels."""
    return None if _LIB is None else LearnedModel(codes, weights, T, a_progress, c, log_table)


def _load() -> ctypes.CDLL | None:
    if os.environ.get("SNNCUTOFF_NATIVE", "1") == "0":
        return None
    spec = importlib.util.find_spec(f"{__name__}._kernels")
    if spec is None or not spec.origin:
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError:
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.snncutoff_top2_force_level.argtypes = [ctypes.c_int]
    lib.snncutoff_top2_force_level.restype = ctypes.c_int
    for name in ("snncutoff_top2_f32", "snncutoff_top2_f64"):
        fn = getattr(lib, name)
        fn.argtypes = [ptr, i64, i64, i64, ptr, ptr]
        fn.restype = None
    lib.snncutoff_run_state.argtypes = [i64, ptr, ptr, ctypes.c_int, ptr]
    lib.snncutoff_run_state.restype = None
    step_args = [i64, ptr, ptr, ptr, i64, ptr, ctypes.c_int, ctypes.c_double, ptr, ctypes.POINTER(LearnedModel), ptr]
    lib.snncutoff_learned_scores.argtypes = step_args
    lib.snncutoff_learned_scores.restype = None
    lib.snncutoff_learned_step.argtypes = [i64, ptr, i64, ctypes.c_int, ptr] + step_args[5:]
    lib.snncutoff_learned_step.restype = ctypes.c_int
    return lib


_LIB = _load()
_TOP2 = {} if _LIB is None else {
    torch.float32: _LIB.snncutoff_top2_f32, torch.float64: _LIB.snncutoff_top2_f64
}


def available() -> bool:
    """Whether the compiled kernels were built and loaded."""
    return _LIB is not None


def force_level(level: int) -> None:
    """Run the kernels' 0 = best supported, 1 = baseline, 2 = AVX2 or 3 = AVX-512 build
    (for tests; a level the CPU lacks falls back to the best it has)."""
    if _LIB is not None:
        _LIB.snncutoff_top2_force_level(level)


def top2_gap(outputs: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(gap, argmax)`` of the last dimension, or None where the kernel does not apply.

    Same values as :func:`snncutoff.stats.top2_gap`; one read of the data, rows split
    over up to ``torch.get_num_threads()`` threads of at least ``_MIN_ROWS`` rows each (one
    call on the caller's thread for an on-line step). Outputs must be finite.
    """
    fn = _TOP2.get(outputs.dtype)
    C = outputs.shape[-1] if outputs.dim() else 0
    if fn is None or outputs.device.type != "cpu" or not outputs.is_contiguous() or C < 2:
        return None
    M = outputs.numel() // C
    gap = torch.empty(M, dtype=outputs.dtype)
    idx = torch.empty(M, dtype=torch.long)
    parts = max(1, min(torch.get_num_threads(), M // _MIN_ROWS))
    bounds = [M * k // parts for k in range(parts + 1)]
    args = [(outputs.data_ptr(), lo, hi, C, gap.data_ptr(), idx.data_ptr()) for lo, hi in zip(bounds, bounds[1:])]
    if parts == 1:
        fn(*args[0])
    else:
        list(_workers(parts).map(lambda a: fn(*a), args))
    return gap.reshape(outputs.shape[:-1]), idx.reshape(outputs.shape[:-1])


def run_state(argmax: Tensor, gap: Tensor, state: Tensor) -> bool:
    """Updates the run state ``[n, 4]`` float64 in place after one step (``argmax``,
    ``gap`` ``[n]``; see ``RunState``); False where the kernel does not apply."""
    if (_LIB is None or gap.dtype not in (torch.float32, torch.float64) or argmax.dtype != torch.long
            or state.dtype != torch.float64 or state.device.type != "cpu"
            or not (argmax.is_contiguous() and gap.is_contiguous() and state.is_contiguous())):
        return False
    _LIB.snncutoff_run_state(gap.shape[0], argmax.data_ptr(), gap.data_ptr(), int(gap.dtype == torch.float32),
                             state.data_ptr())
    return True


def _stats(stats: list[Tensor]) -> tuple[ctypes.Array, bool] | None:
    """The statistics' pointer table and whether they are float32 (all float32 or all
    float64, contiguous), or None."""
    if not stats:
        return _NO_STATS, False
    dtype = stats[0].dtype
    if dtype not in _FLOAT or any(t.dtype != dtype or not t.is_contiguous() for t in stats):
        return None
    return _POINTERS[len(stats)](*[t.data_ptr() for t in stats]), dtype == torch.float32


_FLOAT = (torch.float32, torch.float64)
_NO_STATS = (ctypes.c_void_p * 1)(None)
_POINTERS = [ctypes.c_void_p * k for k in range(9)]  # pointer table types by length (at most 8 features)


def learned_scores(runs: Tensor, gaps: Tensor, before: Tensor, stats: list[Tensor], s: float | Tensor,
                   model: LearnedModel) -> Tensor | None:
    """``[n]`` float64 scores of ``LearnedExit`` (see ``learned.c``), or None where the kernel does not apply.

    ``runs``, ``gaps``, ``before``: float64 ``[n]`` with one stride (rows of a trace's
    history); ``stats``: ``[n]`` each; ``s``: the 1-based step, one number or a float64
    contiguous ``[n]``; ``model``: :func:`learned_model`.
    """
    table = _stats(stats)
    if (table is None or runs.device.type != "cpu" or not runs.stride(0) == gaps.stride(0) == before.stride(0)
            or not runs.dtype == gaps.dtype == before.dtype == torch.float64):
        return None
    per_row = isinstance(s, Tensor)
    out = torch.empty(runs.shape[0], dtype=torch.float64)
    _LIB.snncutoff_learned_scores(runs.shape[0], runs.data_ptr(), gaps.data_ptr(), before.data_ptr(), runs.stride(0),
                                  table[0], table[1], 0.0 if per_row else s, s.data_ptr() if per_row else None,
                                  model, out.data_ptr())
    return out


def learned_step(outputs: Tensor, state: Tensor, stats: list[Tensor], s: float | Tensor,
                 model: LearnedModel) -> Tensor | None:
    """One on-line step in one call: the top-2 gap and argmax of the cumulative outputs
    ``[n, C]`` (finite), :func:`run_state`, then :func:`learned_scores` of the updated
    state: scores ``[1, n]``; None (state untouched) where the kernel does not apply."""
    table = _stats(stats)
    if (table is None or outputs.dtype not in _FLOAT or outputs.device.type != "cpu" or not outputs.is_contiguous()
            or state.dtype != torch.float64 or state.device.type != "cpu" or not state.is_contiguous()):
        return None
    per_row = isinstance(s, Tensor)
    n, C = outputs.shape
    out = torch.empty(1, n, dtype=torch.float64)
    if _LIB.snncutoff_learned_step(n, outputs.data_ptr(), C, outputs.dtype == torch.float32, state.data_ptr(),
                                   table[0], table[1], 0.0 if per_row else s, s.data_ptr() if per_row else None,
                                   model, out.data_ptr()):
        raise MemoryError(f"no memory for the scratch rows of a LearnedExit step ({n} rows)")
    return out
