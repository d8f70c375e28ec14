r"""Constraint activations: ReLU replacements that make an ANN convertible to an SNN.

Each constrains the activation to a range :math:`[0, \theta]` that an integrate-and-fire
neuron with threshold :math:`\theta` reproduces with its firing rate. The converters read
``conversion_threshold()`` and ``v_init`` (initial membrane, as a fraction of
:math:`\theta`) from each.

- :class:`QCFS` (quantisation-clip-floor-shift, Bu et al., ICLR 2022), L levels:

  .. math::  \mathrm{QCFS}(x) = \theta\,\mathrm{clamp}\!\left(\frac{\lfloor x L/\theta + 1/2 \rfloor}{L}, 0, 1\right)

  with a straight-through gradient for the floor. Converted at :math:`T \ge L` with
  :math:`v_{init} = 0.5`, the SNN's mean output matches it closely.
- :class:`Clip`: :math:`\mathrm{clamp}(x, 0, \theta)`.
- :class:`TrackedReLU`: a plain ReLU that tracks the running maximum of its output
  (``momentum`` average of batch maxima in training), used as the conversion threshold.

:func:`apply` swaps every ``nn.ReLU`` of a network for one of them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _FloorSTE(torch.autograd.Function):
    """``floor`` forward, identity gradient (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        return grad


class Constraint(nn.Module):
    """Base of the activations the converters map onto an integrate-and-fire neuron."""

    #: initial membrane potential of the converted neuron, as a fraction of the threshold
    v_init: float = 0.5

    def conversion_threshold(self) -> float:
        """The IF threshold :math:`\\theta` this activation converts to (a positive float)."""
        return float(self.threshold.detach().abs().max())


def _threshold_param(threshold: float, learnable: bool) -> nn.Parameter:
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    return nn.Parameter(torch.tensor(float(threshold)), requires_grad=learnable)


class QCFS(Constraint):
    """Quantisation-clip-floor-shift activation with ``levels`` steps up to ``threshold``.

    Args:
        levels: quantisation levels L (>= 1); convert at T >= L for near-lossless accuracy.
        threshold: initial :math:`\\theta` (SNNCutoff's default 8.0).
        learnable: train :math:`\\theta` by gradient descent.

    Shape: any; elementwise.
    """

    v_init = 0.5

    def __init__(self, levels: int = 8, threshold: float = 8.0, learnable: bool = True) -> None:
        super().__init__()
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
        self.levels = levels
        self.threshold = _threshold_param(threshold, learnable)

    def forward(self, x: Tensor) -> Tensor:
        theta = self.threshold.abs()
        q = _FloorSTE.apply(torch.relu(x) * self.levels / theta + 0.5) / self.levels
        return torch.clamp(q, 0.0, 1.0) * theta

    def extra_repr(self) -> str:
        return f"levels={self.levels}, threshold={float(self.threshold):.4g}"


class Clip(Constraint):
    """``clamp(x, 0, threshold)`` with an optionally learnable threshold."""

    def __init__(self, threshold: float = 8.0, learnable: bool = True) -> None:
        super().__init__()
        self.threshold = _threshold_param(threshold, learnable)

    def forward(self, x: Tensor) -> Tensor:
        theta = self.threshold.abs()
        return torch.minimum(torch.relu(x), theta)

    def extra_repr(self) -> str:
        return f"threshold={float(self.threshold):.4g}"


class TrackedReLU(Constraint):
    """A ReLU that records the running maximum of its output as the conversion threshold.

    In training mode each batch updates ``running_max <- momentum * running_max +
    (1 - momentum) * max(batch)`` (the first batch sets it); ``momentum=0`` keeps the
    largest value ever seen. Evaluation mode leaves it alone.
    """

    def __init__(self, momentum: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("running_max", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(x)
        if self.training:
            with torch.no_grad():
                m = y.max() if y.numel() else y.new_tensor(0.0)
                if not bool(self.seen):
                    self.running_max.copy_(m)
                    self.seen.fill_(True)
                elif self.momentum == 0.0:
                    self.running_max.copy_(torch.maximum(self.running_max, m))
                else:
                    self.running_max.mul_(self.momentum).add_((1 - self.momentum) * m)
        return y

    def conversion_threshold(self) -> float:
        if not bool(self.seen) or float(self.running_max) <= 0:
            raise ValueError("TrackedReLU has seen no positive activation; train it or convert with calibration=")
        return float(self.running_max)


_KINDS = {"qcfs": QCFS, "clip": Clip, "tracked": TrackedReLU}


def apply(ann: nn.Module, kind: str = "qcfs", **kwargs) -> nn.Module:
    """Replace every ``nn.ReLU`` module of ``ann`` (in place) by a constraint activation.

    Args:
        ann: the network; its ReLUs must be modules (``nn.ReLU``), not ``F.relu`` calls.
        kind: ``"qcfs"``, ``"clip"`` or ``"tracked"``.
        **kwargs: passed to the constraint (e.g. ``levels=8, threshold=8.0``).
    Returns:
        ``ann`` itself.
    Raises:
        ValueError: unknown kind, or no ``nn.ReLU`` found and a functional relu is used
            (the message names the module whose ``forward`` calls it).
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, _KINDS))}; got {kind!r}")
    from .convert import find_functional_activations

    found = find_functional_activations(ann)
    if found:
        where = "; ".join(f"{path or '<root>'} ({what})" for path, what in found)
        raise ValueError(
            f"functional activations cannot be replaced: {where}. Use nn.ReLU modules in __init__ "
            "and call them in forward, then apply the constraint."
        )
    replaced = 0
    for module in list(ann.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.ReLU:
                setattr(module, child_name, _KINDS[kind](**kwargs))
                replaced += 1
    if replaced == 0:
        raise ValueError("no nn.ReLU module found to replace")
    return ann
