"""Lazy access to snnTorch (0.9.x and 1.x, whose neuron sources are identical)."""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

INSTALL_HINT = "install snnTorch: pip install 'snntorch>=0.9.4,<2' (./install.sh does it)"

#: state attributes snnTorch neurons keep between calls (``mem_prev``: DeltaLeaky's previous membrane)
STATE_NAMES = ("mem", "syn", "spk", "syn_exc", "syn_inh", "mem_prev")

#: stepped neurons whose state protocol the adapter follows (checked on the sources of 0.9.4 and 1.0.0):
#: ``reset_mem()`` zeroes the state (keeping its shape) and ``forward`` re-creates a state whose shape is not
#: the input's (so any batch size follows); ``DeltaLeaky`` (1.0) keeps ``mem`` and ``mem_prev``, re-created only
#: when ``mem`` is None, which is what its ``reset_mem()`` leaves
MANAGED_NEURONS = ("Leaky", "Synaptic", "Alpha", "Lapicque", "RLeaky", "RSynaptic", "SLSTM", "SConv2dLSTM",
                   "DeltaLeaky")


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
    managed = tuple(c for c in (getattr(snntorch, n, None) for n in MANAGED_NEURONS) if c is not None)
    delta = getattr(snntorch, "DeltaLeaky", None)  # 1.0 only
    return SimpleNamespace(snntorch=snntorch, SpikingNeuron=snntorch.SpikingNeuron, Leaky=snntorch.Leaky,
                           sequence_neurons=sequence, managed_neurons=managed,
                           delta_neurons=(delta,) if delta is not None else (), version=version)
