"""Spike encoders of the two frameworks for ``compare --encoder``, on standardised images.

The networks are trained on standardised pixels :math:`\\tilde x = (x - \\mu) / \\sigma`.
An encoder takes the pixels back to :math:`x \\in [0, 1]`, turns them into spikes
:math:`s_t \\in \\{0, 1\\}` with the framework's own encoder, and standardises the spikes
the same way, :math:`(s_t - \\mu) / \\sigma`: under rate coding
:math:`E[s_t] = x`, so the network sees its training input on average.

- ``rate``: snnTorch ``spikegen.rate`` (Bernoulli of x at every step);
- ``poisson``: SpikingJelly ``encoding.PoissonEncoder`` (the same distribution, its own draws);
- ``latency``: snnTorch ``spikegen.latency(normalize=True, linear=True)``: one spike per pixel, earlier
  for brighter ones (information in timing, which a rate-trained network reads poorly).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ENCODERS = ("direct", "rate", "poisson", "latency")


def make(name: str, normalization: tuple | None) -> str | Callable[[Tensor, int], Tensor]:
    """``"direct"``, or a callable ``(x [N, ...], T) -> [T, N, ...]`` (see the module docstring)."""
    if name == "direct":
        return name
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    if normalization is None:
        raise ValueError(f"--encoder {name} needs a data set whose pixel standardisation is known")
    mean, std = (torch.as_tensor(v, dtype=torch.float32) for v in normalization)

    def shape(v: Tensor, x: Tensor) -> Tensor:  # per channel [C] -> [C, 1, 1]
        return v.view(-1, *([1] * (x.dim() - 2))) if v.dim() else v

    def pixels(x: Tensor) -> Tensor:
        return (x * shape(std, x) + shape(mean, x)).clamp(0.0, 1.0)

    def spikes(x: Tensor, T: int) -> Tensor:
        if name == "poisson":
            from spikingjelly.activation_based import encoding

            enc, p = encoding.PoissonEncoder(), pixels(x)
            return torch.stack([enc(p) for _ in range(T)])
        from snntorch import spikegen

        if name == "rate":
            return spikegen.rate(pixels(x), num_steps=T)
        return spikegen.latency(pixels(x), num_steps=T, normalize=True, linear=True)

    def encoder(x: Tensor, T: int) -> Tensor:
        return (spikes(x, T).to(x.dtype) - shape(mean, x)) / shape(std, x)

    encoder.__name__ = f"{name}_encoder"
    return encoder
