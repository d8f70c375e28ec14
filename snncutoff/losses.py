r"""Losses for spiking networks trained over T steps (outputs ``[T, N, C]``, per step).

- :class:`MeanOutputLoss`: cross-entropy of the mean output,
  :math:`\mathcal{L} = \mathrm{CE}(\frac{1}{T}\sum_t y_t,\ y)`.
- :class:`TETLoss` (temporal efficient training, Deng et al., ICLR 2022):
  :math:`\mathcal{L} = \frac{1}{T}\sum_t \left[(1-\lambda)\mathrm{CE}(y_t, y)
  + \lambda\,\mathrm{MSE}(y_t, \phi)\right]`
  with :math:`\phi` the target value ``means`` (1.0 by default) — the TET paper's
  regulariser pulling every step's output towards a constant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check(outputs: Tensor, labels: Tensor) -> None:
    if outputs.dim() != 3:
        raise ValueError(f"outputs must be per-step [T, N, C], got shape {tuple(outputs.shape)}")
    if labels.shape != outputs.shape[1:2]:
        raise ValueError(f"labels must be [N] = [{outputs.shape[1]}], got {tuple(labels.shape)}")


class MeanOutputLoss(nn.Module):
    """Cross-entropy on the output averaged over T; ``forward(outputs [T, N, C], labels [N])``."""

    def forward(self, outputs: Tensor, labels: Tensor) -> Tensor:
        _check(outputs, labels)
        return F.cross_entropy(outputs.mean(0), labels)


class TETLoss(nn.Module):
    """Temporal efficient training loss.

    Args:
        lamb: weight :math:`\\lambda` of the MSE term (TET uses 0.05; 0 gives the mean of
            per-step cross-entropies, SpikingJelly's ``temporal_efficient_training_cross_entropy``).
        means: target :math:`\\phi` of the MSE term.
    """

    def __init__(self, lamb: float = 0.05, means: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= lamb <= 1.0:
            raise ValueError(f"lamb must lie in [0, 1], got {lamb}")
        self.lamb, self.means = float(lamb), float(means)

    def forward(self, outputs: Tensor, labels: Tensor) -> Tensor:
        _check(outputs, labels)
        T, N, C = outputs.shape
        ce = F.cross_entropy(outputs.reshape(T * N, C), labels.repeat(T))
        if self.lamb == 0.0:
            return ce
        mse = F.mse_loss(outputs, torch.full_like(outputs, self.means))
        return (1 - self.lamb) * ce + self.lamb * mse
