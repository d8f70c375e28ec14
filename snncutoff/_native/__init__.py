"""Optional compiled kernels (plain C, loaded with :mod:`ctypes`).

``pip install`` compiles ``top2.c`` when a C compiler is present (an optional
extension: without one the install still succeeds). Every kernel has a pure-torch
twin in :mod:`snncutoff.stats` giving the same values, which is used when
the library was not built, for tensors that are not contiguous CPU float32 / float64,
for small inputs, or when the environment sets ``SNNCUTOFF_NATIVE=0``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

_MIN_ROWS = 1 << 15  # below this, thread start-up costs more than the kernel saves
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


def _load() -> ctypes.CDLL | None:
    if os.environ.get("SNNCUTOFF_NATIVE", "1") == "0":
        return None
    spec = importlib.util.find_spec(f"{__name__}._top2")
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

    Same values as :func:`snncutoff.stats.top2_gap`; one read of the data,
    rows split over ``torch.get_num_threads()`` threads. Outputs must be finite.
    """
    fn = _TOP2.get(outputs.dtype)
    C = outputs.shape[-1] if outputs.dim() else 0
    if fn is None or outputs.device.type != "cpu" or not outputs.is_contiguous() or C < 2:
        return None
    M = outputs.numel() // C
    if M < _MIN_ROWS:
        return None
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
