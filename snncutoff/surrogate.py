r"""Spike functions with surrogate gradients, framework-free.

Forward: the Heaviside step with :math:`H(0) = 1` (a neuron fires when its membrane
*reaches* the threshold, SpikingJelly's convention). Backward, with :math:`x = U - \theta`:

- ``atan``:     :math:`\frac{\alpha}{2} \big/ \left(1 + (\frac{\pi}{2}\alpha x)^2\right)`
- ``sigmoid``:  :math:`\alpha\,\sigma(\alpha x)(1 - \sigma(\alpha x))`
- ``triangle``: :math:`\frac{\alpha}{2}\max(0, 1 - \frac{\alpha}{2}|x|)`

``atan`` and ``sigmoid`` equal SpikingJelly's ``surrogate.ATan`` / ``surrogate.Sigmoid``
and snnTorch's ``surrogate.atan`` / ``surrogate.sigmoid(slope=alpha)``; snnTorch's own
functions fire on ``x > 0``, so its adapter uses these instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .validation import check_choice

_GRADS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "atan": lambda x, a: (a / 2) / (1 + (math.pi / 2 * a * x) ** 2),
    "sigmoid": lambda x, a: a * torch.sigmoid(a * x) * (1 - torch.sigmoid(a * x)),
    "triangle": lambda x, a: (a / 2) * torch.clamp(1 - (a / 2) * x.abs(), min=0),
}


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, name: str, alpha: float) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        ctx.name, ctx.alpha = name, alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        (x,) = ctx.saved_tensors
        return grad * _GRADS[ctx.name](x, ctx.alpha), None, None


def spike_function(name: str = "atan", alpha: float = 2.0) -> Callable[[Tensor], Tensor]:
    """``f(x) = [x >= 0]`` with the named surrogate gradient (``x = U - θ``)."""
    check_choice("surrogate", name, tuple(_GRADS))
    if not alpha > 0:
        raise ValueError(f"surrogate alpha must be > 0, got {alpha}")

    def spike(x: Tensor) -> Tensor:
        return _Spike.apply(x, name, float(alpha))

    spike.__name__ = f"spike_{name}"
    spike.__qualname__ = spike.__name__
    return spike
