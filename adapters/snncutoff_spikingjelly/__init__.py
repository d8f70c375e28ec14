"""snncutoff's SpikingJelly adapter (registered as the ``spikingjelly`` backend).

This package is the only place snncutoff imports SpikingJelly, lazily and only its
``activation_based`` core (neuron, layer, functional, surrogate, base).
"""

from .backend import GPU_KERNELS, SpikingJellyBackend
from .neurons import ScaledNeuron, SpikeFunction

__all__ = ["GPU_KERNELS", "ScaledNeuron", "SpikeFunction", "SpikingJellyBackend"]
