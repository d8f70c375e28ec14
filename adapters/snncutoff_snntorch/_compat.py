"""Lazy access to snnTorch (0.9.x and 1.x, whose neuron sources are identical)."""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

INSTALL_HINT = "install snnTorch: pip install 'snntorch>=0.9.4,<2' (./install.sh does it)"

#: state attributes snnTorch neurons keep between calls
STATE_NAMES = ("mem", "syn", "spk", "syn_exc", "syn_inh")


@lru_cache(maxsize=1)
def snn() -> SimpleNamespace:
    """``snntorch`` and its version (imported on first use)."""
    import snntorch

    try:
        import importlib.metadata as md

        version = md.version("snntorch")
    except Exception:  # noqa: BLE001 - a source checkout has no metadata
        version = getattr(snntorch, "__version__", "unknown")
    # neurons that process a whole time-major sequence per call (those the installed version has)
    sequence = tuple(c for c in (getattr(snntorch, n, None) for n in
                                 ("LeakyParallel", "LeakyKernel", "StateLeaky", "AssociativeLeaky")) if c is not None)
    return SimpleNamespace(snntorch=snntorch, SpikingNeuron=snntorch.SpikingNeuron, Leaky=snntorch.Leaky,
                           sequence_neurons=sequence, version=version)
