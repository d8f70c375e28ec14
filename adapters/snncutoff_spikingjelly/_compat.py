"""Lazy, version-aware access to SpikingJelly (0.0.0.0.14 and 2.x), detected by feature.

Only ``activation_based.{neuron, layer, functional, surrogate, base}`` are imported, and
only on first use: never ``datasets``, ``monitor`` or ``model`` (they pull torchvision,
torchaudio and tensorboard).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from functools import cache, lru_cache
from types import ModuleType, SimpleNamespace

INSTALL_HINT = (
    "install SpikingJelly: pip install --no-deps 'spikingjelly==2.0.0' 'loguru>=0.7,<1' "
    "(or 'spikingjelly==0.0.0.0.14'); ./install.sh does it"
)
_NEURON_ENV = ("SJ_IF_CUDA_IMPLEMENTATION", "SJ_LIF_CUDA_IMPLEMENTATION", "SJ_PLIF_CUDA_IMPLEMENTATION")


def set_cuda_implementation(kind: str) -> bool:
    """2.x: choose ``cuda`` / ``triton`` / ``torch`` / ``auto`` for IF, LIF and PLIF on CUDA.

    SpikingJelly reads ``SJ_*_CUDA_IMPLEMENTATION`` when its ops are imported; before
    that the variables are set, afterwards the request is passed to each op's selection
    if it has not chosen yet. Returns False when a selection was already made.
    """
    for var in _NEURON_ENV:
        os.environ[var] = kind
    applied = True
    for op in ("if_", "lif", "plif"):
        mod_name = f"spikingjelly._ops.{op}"
        mod = importlib.import_module(mod_name) if _imported(mod_name) else None
        sel = getattr(mod, "_selection", None) if mod else None
        if sel is not None and hasattr(sel, "_requested"):
            if getattr(sel, "_selections", None):
                applied = False
            sel._requested = kind
    return applied


def _imported(name: str) -> bool:
    import sys

    return name in sys.modules


@lru_cache(maxsize=1)
def sj() -> SimpleNamespace:
    """The SpikingJelly modules the adapter uses, plus ``legacy`` (0.0.0.0.14) and ``version``."""
    # torch-cpu logs "Triton not available" twice per neuron type on 2.x's first call
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)
    from spikingjelly.activation_based import base, functional, layer, neuron, surrogate

    legacy = "backend" in inspect.signature(neuron.IFNode).parameters
    if legacy:
        _restore_numpy_int()
    try:
        import importlib.metadata as md

        version = md.version("spikingjelly")
    except Exception:  # noqa: BLE001 - a source checkout has no metadata
        version = "unknown"
    return SimpleNamespace(base=base, functional=functional, layer=layer, neuron=neuron,
                           surrogate=surrogate, legacy=legacy, version=version)


def _restore_numpy_int() -> None:
    """Let 0.0.0.0.14's cupy kernels run beside numpy >= 1.24.

    Its ``auto_cuda.base`` compares dtypes with ``np.int``, an alias numpy 1.24 removed, so
    every cupy neuron fails with ``AttributeError`` there. That module alone gets a numpy
    namespace with ``int`` restored (as the builtin, its old meaning); numpy is untouched.
    """
    import numpy

    try:
        from spikingjelly.activation_based.auto_cuda import base as cuda_base
    except ImportError:
        return
    if hasattr(cuda_base.np, "int"):
        return
    shim = ModuleType("numpy")
    shim.__dict__.update(numpy.__dict__)
    shim.int = int
    cuda_base.np = shim


def cupy_available() -> tuple[bool, str]:
    """Whether 0.0.0.0.14's cupy backend can run here (cupy importable and CUDA present)."""
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False, "cupy is not installed (pip install cupy-cuda12x, matching your CUDA)"
    return True, ""


_SINGLE_STEP = ("single_step_forward", "single_step_functional_forward",
                "neuronal_charge", "neuronal_fire", "neuronal_reset")
_MULTI_STEP = ("multi_step_forward", "multi_step_functional_forward")


def multistep_matches_steps(module: object) -> bool:
    """Whether ``module`` (a SpikingJelly ``MemoryModule``) in multi-step mode computes what stepping it
    one step at a time computes, judged from where its methods are defined (never from its name).

    A multi-step method (``multi_step_forward``, 2.x's ``multi_step_functional_forward``) is
    trusted when it is SpikingJelly's generic one (``MemoryModule`` / ``BaseNode`` /
    ``SimpleBaseNode``: a loop over the single step, or a delegation to the functional
    forward, itself a loop), or when it is defined in the class that defines every
    single-step method (``single_step_forward``, ``single_step_functional_forward``, the
    ``neuronal_*`` hooks) or in a subclass of it, i.e. written knowing them. It is not
    when a subclass overrides a single step but inherits a specialised multi-step kernel
    (2.x's ``LIAFNode``: ``act(v)`` in single steps, LIF spikes in multi-step mode).
    """
    if any(name in vars(module) for name in _SINGLE_STEP + _MULTI_STEP):  # patched on the instance
        return False
    return _class_matches(type(module))


@cache
def _class_matches(cls: type) -> bool:
    m = sj()
    generic = tuple(c for c in (m.base.MemoryModule, getattr(m.neuron, "BaseNode", None),
                                getattr(m.neuron, "SimpleBaseNode", None)) if c is not None)
    for multi in _MULTI_STEP:
        cm = _definer(cls, multi)
        if cm is None:
            continue
        if cm in generic:
            if multi == "multi_step_forward" and not _calls(cm.__dict__[multi], "single_step_forward"):
                # 2.x: the generic multi-step forward goes through the functional forward, past an
                # overridden single_step_forward
                cs = _definer(cls, "single_step_forward")
                if cs is not None and cs not in generic and not issubclass(cm, cs):
                    return False
            continue
        for single in _SINGLE_STEP:
            cs = _definer(cls, single)
            if cs is not None and not issubclass(cm, cs):
                return False
    return True


def _definer(cls: type, name: str) -> type | None:
    """The class in ``cls``'s MRO whose body defines ``name``, or None."""
    return next((c for c in cls.__mro__ if name in vars(c)), None)


def _calls(fn: object, name: str) -> bool:
    """Whether the code of ``fn`` refers to the attribute ``name`` (e.g. calls ``self.name(...)``)."""
    code = getattr(inspect.unwrap(fn), "__code__", None) if callable(fn) else None
    return code is not None and name in code.co_names
