"""snncutoff's snnTorch adapter (registered as the ``snntorch`` backend).

This package is the only place snncutoff imports snnTorch, lazily.
"""

from .backend import SnnTorchBackend
from .neurons import IFNeuron, LIFNeuron

__all__ = ["IFNeuron", "LIFNeuron", "SnnTorchBackend"]
