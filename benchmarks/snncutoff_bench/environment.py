"""What is installed: versions, CUDA, and the state of every registered backend."""

from __future__ import annotations

import importlib.metadata as md
import platform

import torch


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def describe() -> dict:
    """JSON-ready description of the environment snncutoff runs in."""
    from snncutoff import _native, backends

    cuda = torch.cuda.is_available()
    d = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "snncutoff": _version("snncutoff"),
        "torch": torch.__version__,
        "spikingjelly": _version("spikingjelly"),
        "snntorch": _version("snntorch"),
        "cupy": _version("cupy") or _version("cupy-cuda12x") or _version("cupy-cuda11x"),
        "triton": _version("triton"),
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "cpu_threads": torch.get_num_threads(),
        "native_kernels": _native.available(),
        "backends": {},
    }
    for name in backends.names():
        ok, why = backends.available(name)
        d["backends"][name] = "available" if ok else f"unavailable: {why}"
    return d
