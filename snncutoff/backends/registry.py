"""The backend registry: adapters found through the entry-point group ``snncutoff.backends``.

Adapters register in their package metadata (snncutoff's own ``pyproject.toml``
registers its two shipped adapters), so a third party adds Norse, Sinabs or Lava-dl by
shipping a package with::

    [project.entry-points."snncutoff.backends"]
    norse = "snncutoff_norse:NorseBackend"

The entry point names a factory (usually the backend class) taking the backend's
options as keyword arguments. The core never imports a framework: loading a backend
imports only its adapter module, and the adapter imports its framework lazily.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
from collections.abc import Callable
from typing import Any

from torch import nn

from .base import Backend

GROUP = "snncutoff.backends"

_registered: dict[str, Callable[..., Backend]] = {}


def register(name: str, factory: Callable[..., Backend]) -> None:
    """Register a backend in this process (an installed entry point needs no call to this)."""
    _registered[name] = factory
    _layer_packages.cache_clear()


def layer_packages() -> frozenset[str]:
    """The :attr:`Backend.layer_packages` of every registered backend whose adapter loads."""
    return _layer_packages(tuple(names()))


@functools.lru_cache(maxsize=8)
def _layer_packages(registered: tuple[str, ...]) -> frozenset[str]:
    found: set[str] = set()
    for name in registered:
        try:
            found.update(getattr(_factory(name), "layer_packages", ()))
        except (ImportError, KeyError):
            continue  # an adapter that does not load has no layers in the network either
    return frozenset(found)


def _entry_points() -> dict[str, md.EntryPoint]:
    return {ep.name: ep for ep in md.entry_points(group=GROUP)}


def names() -> list[str]:
    """Names of every registered backend, installed or not, sorted."""
    return sorted(set(_entry_points()) | set(_registered))


class UnknownBackendError(KeyError, ValueError):
    """No backend of that name is registered (a ``KeyError`` and a ``ValueError``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _factory(name: str) -> Callable[..., Backend]:
    if name in _registered:
        return _registered[name]
    eps = _entry_points()
    if name not in eps:
        raise UnknownBackendError(
            f"no snncutoff backend named {name!r}; registered: {', '.join(names()) or 'none'} (an adapter "
            f"registers under the entry-point group {GROUP!r}; is snncutoff pip-installed?)")
    try:
        return eps[name].load()
    except ImportError as exc:
        raise ImportError(f"backend {name!r} could not be loaded: {exc}") from exc


def get(name: str, **options: Any) -> Backend:
    """A new backend ``name`` configured with ``options`` (e.g. ``get("spikingjelly", gpu_kernel="cupy")``).

    Raises:
        UnknownBackendError: no backend of that name is registered (a ``KeyError`` and a ``ValueError``;
            the message lists those that are).
        ImportError: the backend exists but its framework is not installed (says what to install).
        TypeError: an option the backend does not take.
    """
    if not isinstance(name, str):
        raise TypeError(f"a backend is named by a string (or passed as a Backend object), got {type(name).__name__}")
    factory = _factory(name)
    try:
        backend = factory(**options)
    except TypeError as exc:
        if options:
            raise TypeError(f"backend {name!r} does not take the options {sorted(options)}: {exc}") from None
        raise
    ok, why = backend.available()
    if not ok:
        raise ImportError(f"backend {name!r} is not usable: {why}")
    return backend


def resolve(backend: Any) -> Backend:
    """``backend`` itself, or the registered backend when given its name (see :func:`get`)."""
    if isinstance(backend, str):
        return get(backend)
    if not isinstance(backend, Backend) and not all(hasattr(backend, a) for a in ("step", "run", "stateful_modules")):
        raise TypeError(f"backend must be a backend name ({', '.join(names())}) or a snncutoff Backend, "
                        f"got {type(backend).__name__}")
    return backend


def available(name: str) -> tuple[bool, str]:
    """``(True, "")`` if ``get(name)`` would succeed, else ``(False, reason)``."""
    try:
        get(name)
    except (KeyError, ImportError) as exc:
        return False, str(exc.args[0]) if exc.args else type(exc).__name__
    return True, ""


def recognising(net: nn.Module, exclude: str = "") -> tuple[str, str, str] | None:
    """``(backend name, framework, module classes)`` of the first installed backend that finds neurons
    in ``net``, other than ``exclude``; None if none does."""
    for name in names():
        if name == exclude or not available(name)[0]:
            continue
        b = get(name)
        found = sorted({type(m).__name__ for m in net.modules() if b.holds_neurons(m)})
        if found:
            return name, b.name, ", ".join(found[:3])
    return None
