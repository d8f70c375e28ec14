r"""Layers for multi-step (``[T, N, ...]``) spiking networks.

``TEBN`` — temporal effective batch normalisation (Duan et al., NeurIPS 2022): one
batch normalisation over time and batch together, then a learnable scale per step,

.. math::  y_t = p_t \cdot \mathrm{BN}(x)_t,\qquad \text{statistics over } (T, N, \text{spatial}).

SpikingJelly 2.x ships one (``layer.TemporalEffectiveBatchNorm2d``); 0.0.0.0.14 and
snnTorch do not, so this framework-free version serves all three. It needs the whole
sequence, so it belongs in multi-step networks (SpikingJelly ``step_mode="m"``, or an
snnTorch module whose ``forward`` loops over time and applies it to the stacked input).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TEBN(nn.Module):
    """Temporal effective batch norm for ``[T, N, C]`` (``dims=1``) or ``[T, N, C, H, W]`` (``dims=2``).

    Args:
        num_features: C.
        T: maximum number of steps (one scale ``p_t`` each, initialised to 1).
        dims: 1 or 2 (``BatchNorm1d`` / ``BatchNorm2d`` underneath).
        eps, momentum: of the batch norm.
    """

    def __init__(self, num_features: int, T: int, dims: int = 2, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims}")
        self.bn = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(num_features, eps=eps, momentum=momentum)
        self.scale = nn.Parameter(torch.ones(T))
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != self.dims + 3:
            raise ValueError(f"TEBN(dims={self.dims}) takes [T, N, C{', H, W' if self.dims == 2 else ''}], "
                             f"got shape {tuple(x.shape)}")
        T = x.shape[0]
        if T > self.scale.shape[0]:
            raise ValueError(f"TEBN was built for T <= {self.scale.shape[0]} steps, got {T}")
        y = self.bn(x.flatten(0, 1)).view(x.shape)
        return y * self.scale[:T].view(T, *([1] * (x.dim() - 1)))

    @classmethod
    def from_batchnorm(cls, bn: nn.Module, T: int) -> TEBN:
        """A TEBN with the affine parameters and running statistics of ``bn``."""
        dims = 2 if isinstance(bn, nn.BatchNorm2d) else 1
        m = cls(bn.num_features, T, dims, bn.eps, bn.momentum if bn.momentum is not None else 0.1)
        m.bn.load_state_dict(bn.state_dict())
        return m
