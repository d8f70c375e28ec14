"""Backends: the contract an adapter implements (:class:`Backend`) and the registry that finds them.

``snncutoff.backends.get("snntorch")`` returns a configured backend;
:mod:`snncutoff.backends.base` holds the contract, :mod:`snncutoff.backends.registry`
the entry-point registry (group ``snncutoff.backends``).
"""

from .base import Backend, Readout
from .registry import GROUP, available, get, names, recognising, register, resolve

__all__ = ["GROUP", "Backend", "Readout", "available", "get", "names", "recognising", "register", "resolve"]
