"""Backend registry: how the framework-free core finds SNN framework adapters.

Adapters register under the entry-point group ``snncutoff.backends`` in their
package metadata (snncutoff's own ``pyproject.toml`` registers ``spikingjelly`` and
``snntorch``), so a third party adds Norse, Sinabs or Lava-dl by shipping a package
with::

    [project.entry-points."snncutoff.backends"]
    norse = "snncutoff_norse:NorseBackend"

The entry point names a zero-argument factory (usually the backend class). The core
never imports a framework: loading a backend imports only its adapter module, and
the adapter imports its framework lazily.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Callable
from typing import Any

GROUP = "snncutoff.backends"

_registered: dict[str, Callable[[], Any]] = {}
_instances: dict[str, Any] = {}


def register(name: str, factory: Callable[[], Any]) -> None:
    """Register a backend in this process (entry points need no call to this)."""
    _registered[name] = factory
    _instances.pop(name, None)


def _entry_points() -> dict[str, md.EntryPoint]:
    return {ep.name: ep for ep in md.entry_points(group=GROUP)}


def names() -> list[str]:
    """Names of every registered backend, installed or not, sorted."""
    return sorted(set(_entry_points()) | set(_registered))


def get(name: str) -> Any:
    """The backend called ``name`` (one shared instance per process).

    Raises:
        KeyError: no backend of that name is registered (the message lists those that are).
        ImportError: the backend exists but its framework is not installed (says what to install).
    """
    if name not in _instances:
        if name in _registered:
            factory = _registered[name]
        else:
            eps = _entry_points()
            if name not in eps:
                raise KeyError(f"no snncutoff backend named {name!r}; registered: {', '.join(names()) or 'none'}")
            factory = eps[name].load()
        backend = factory()
        ok, why = backend.available()
        if not ok:
            raise ImportError(f"backend {name!r} is not usable: {why}")
        _instances[name] = backend
    return _instances[name]


def available(name: str) -> tuple[bool, str]:
    """``(True, "")`` if ``get(name)`` would succeed, else ``(False, reason)``."""
    try:
        get(name)
    except (KeyError, ImportError) as exc:
        return False, str(exc.args[0]) if exc.args else type(exc).__name__
    return True, ""
