r"""Constraint activations: ReLU replacements that make an ANN convertible to an SNN.

Each constrains the activation to a range :math:`[0, \theta]` that an integrate-and-fire
neuron with threshold :math:`\theta` reproduces with its firing rate. The converters read
``conversion_threshold()`` and ``v_init`` (initial membrane, as a fraction of
:math:`\theta`) from each.

- :class:`QCFS` (quantisation-clip-floor-shift, Bu et al., ICLR 2022), L levels:

  .. math::  \mathrm{QCFS}(x) = \theta\,\mathrm{clamp}\!\left(\frac{\lfloor (x/\theta) L + 1/2 \rfloor}{L}, 0, 1\right)

  with a straight-through gradient for the floor. Converted at :math:`T \ge L` with
  :math:`v_{init} = 0.5`, the SNN's mean output matches it closely.
- :class:`Clip`: :math:`\mathrm{clamp}(x, 0, \theta)`.
- :class:`TrackedReLU`: a plain ReLU that tracks the running maximum of its output
  (``momentum`` average of batch maxima in training), used as the conversion threshold.

Thresholds from the data: a ``QCFS`` or ``Clip`` made without a threshold (the default)
leaves :math:`\theta` unset until :func:`calibrate` sets it, per layer, to a high
percentile (99.9 % by default) of the layer's positive pre-activations on training data.
:class:`~snncutoff.train.Trainer` does that before its first step, and
``apply(net, "qcfs", calibration=loader)`` without a Trainer. A default that fits the data
matters: a threshold far above the activations leaves the ANN a few coarse levels, and
the SNN, which resolves finer ones as T grows, then computes another function (on
28x28 MNIST, SNNCutoff's fixed 8.0 loses 12 points at T = 32).

:func:`apply` swaps every ``nn.ReLU`` of a network for one of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .graph import Activation, child_slots, find_functional_activations
from .stats import nearest_rank
from .validation import check_int, check_number

#: percentile of the positive pre-activations :func:`calibrate` sets thresholds to
QUANTILE = 0.999


class _FloorSTE(torch.autograd.Function):
    """``floor`` forward, identity gradient (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        return grad


class Constraint(Activation):
    """Base of the activations the converters map onto an integrate-and-fire neuron."""

    #: initial membrane potential of the converted neuron, as a fraction of the threshold
    v_init: float = 0.5
    #: act as a plain ReLU (while :func:`calibrate` measures the layer's inputs)
    _passthrough: bool = False

    def threshold_is_set(self) -> bool:
        """Whether :math:`\\theta` has a value (given, calibrated or trained)."""
        return bool(torch.isfinite(self.threshold.detach()).all())

    def conversion_threshold(self) -> float:
        """The IF threshold :math:`\\theta` this activation converts to (a positive float)."""
        if not self.threshold_is_set():
            raise ValueError(f"the threshold of this {type(self).__name__} was never set: train the ANN with "
                             "snncutoff.train.Trainer (it sets thresholds from the data before its first step), or "
                             "call snncutoff.constraints.calibrate(ann, train_loader), or give threshold=")
        return float(self.threshold.detach().abs().max())

    def _check_set(self) -> None:
        if not self.threshold_is_set():
            raise ValueError(f"{type(self).__name__}'s threshold is not set yet: call "
                               "snncutoff.constraints.calibrate(net, train_loader) first (Trainer.fit does it)")


def _threshold_param(threshold: float | None, learnable: bool) -> nn.Parameter:
    if not isinstance(learnable, bool):
        raise TypeError(f"learnable must be True or False, got {learnable!r}")
    if threshold is None:
        return nn.Parameter(torch.tensor(math.nan), requires_grad=learnable)  # set by calibrate()
    value = check_number("threshold (None: from the data)", threshold, 0.0, low_open=True)
    return nn.Parameter(torch.tensor(value), requires_grad=learnable)


class QCFS(Constraint):
    """Quantisation-clip-floor-shift activation with ``levels`` steps up to ``threshold``.

    Args:
        levels: quantisation levels L (>= 1); convert at T >= L for near-lossless accuracy.
            Saved in the state dict (``_extra_state``): a checkpoint's own L wins on loading.
        threshold: initial :math:`\\theta`; None (default) sets it from the data
            (:func:`calibrate`, called by ``Trainer.fit``). SNNCutoff uses 8.0.
        learnable: train :math:`\\theta` by gradient descent.

    Shape: any; elementwise.
    """

    v_init = 0.5

    def __init__(self, levels: int = 8, threshold: float | None = None, learnable: bool = True) -> None:
        super().__init__()
        self.levels = check_int("levels", levels, 1)
        self.threshold = _threshold_param(threshold, learnable)

    def forward(self, x: Tensor) -> Tensor:
        if self._passthrough:
            return torch.relu(x)
        self._check_set()
        theta = self.threshold.abs()
        q = _FloorSTE.apply(torch.relu(x) / theta * self.levels + 0.5) / self.levels  # the SNNCutoff code's order
        return torch.clamp(q, 0.0, 1.0) * theta

    def get_extra_state(self) -> dict:
        return {"levels": self.levels}

    def set_extra_state(self, state: dict) -> None:
        self.levels = int(state["levels"])

    def extra_repr(self) -> str:
        return f"levels={self.levels}, threshold={float(self.threshold.detach()):.4g}"


class Clip(Constraint):
    """``clamp(x, 0, threshold)`` with an optionally learnable threshold (None: from the data)."""

    def __init__(self, threshold: float | None = None, learnable: bool = True) -> None:
        super().__init__()
        self.threshold = _threshold_param(threshold, learnable)

    def forward(self, x: Tensor) -> Tensor:
        if self._passthrough:
            return torch.relu(x)
        self._check_set()
        theta = self.threshold.abs()
        return torch.minimum(torch.relu(x), theta)

    def extra_repr(self) -> str:
        return f"threshold={float(self.threshold.detach()):.4g}"


class TrackedReLU(Constraint):
    """A ReLU that records the running maximum of its output as the conversion threshold.

    In training mode each batch updates ``running_max <- momentum * running_max +
    (1 - momentum) * max(batch)`` (the first batch sets it); ``momentum=0`` keeps the
    largest value ever seen. Evaluation mode leaves it alone.
    """

    def __init__(self, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = check_number("momentum", momentum, 0.0, 1.0, high_open=True)
        self.register_buffer("running_max", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))

    def threshold_is_set(self) -> bool:
        return bool(self.seen)

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


def _samples(data: Iterable, max_samples: int):
    """The input tensors of ``data``'s batches, up to ``max_samples`` samples in all."""
    seen = 0
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, Tensor):
            raise TypeError(f"calibration batches must be tensors or (x, y) pairs, got {type(x).__name__}")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError("the calibration data holds NaN or infinite inputs")
        yield x[: max_samples - seen]
        seen += min(x.shape[0], max_samples - seen)
        if seen >= max_samples:
            return


@torch.no_grad()
def calibrate(net: nn.Module, data: Iterable, quantile: float = QUANTILE, overwrite: bool = False,
              max_samples: int = 2048, device: torch.device | str | None = None) -> dict[str, float]:
    r"""Set each unset constraint threshold to a percentile of its layer's positive pre-activations.

    The network runs once over up to ``max_samples`` samples of ``data`` (batches ``x`` or
    ``(x, y)``), in evaluation mode (every module's mode restored after; a BatchNorm that
    was never trained normalises with each batch's statistics, as it will in training, its
    buffers untouched), with the layers to calibrate acting as plain ReLUs; each of their :math:`\theta` becomes the
    ``quantile`` (0.999: the 99.9th percentile, rank :math:`\lceil qn \rceil` of the n
    values) of the positive values entering the layer (at most about a million per layer,
    a seeded subset of larger ones). Thresholds already set (given by the user, or trained)
    are kept unless ``overwrite``.

    Returns:
        ``{layer path: threshold}`` of the layers it set.
    Raises:
        ValueError: no batch, NaN inputs, or a layer that never sees a positive input.
    """
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must lie in (0, 1], got {quantile!r}")
    todo = [(n, m) for n, m in net.named_modules() if isinstance(m, (QCFS, Clip))
            and (overwrite or not m.threshold_is_set())]
    if not todo:
        return {}
    batches = list(_samples(data, max_samples))
    if not batches:
        raise ValueError("the calibration data yielded no batch")
    cap = max(1, (1 << 20) // len(batches))  # values kept per layer and batch
    g = torch.Generator().manual_seed(0)
    values: dict[str, list[Tensor]] = {n: [] for n, _ in todo}

    def keep(name: str):
        def hook(_m: nn.Module, inputs: tuple) -> None:
            x = inputs[0].detach().flatten()
            pos = x[x > 0].float().cpu()
            if pos.numel() > cap:
                pos = pos[torch.randperm(pos.numel(), generator=g)[:cap]]
            values[name].append(pos)
        return hook

    modes = [(m, m.training) for m in net.modules()]
    handles = [m.register_forward_pre_hook(keep(n)) for n, m in todo]
    for _, m in todo:
        m._passthrough = True
    net.eval()
    # BatchNorm never trained yet normalises with each batch's statistics, as it will in training
    fresh = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats and int(m.num_batches_tracked) == 0]
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in fresh]
    for m in fresh:
        m.train()
    try:
        for x in batches:
            net(x.to(device) if device is not None else x)
    finally:
        for h in handles:
            h.remove()
        for _, m in todo:
            m._passthrough = False
        for m, buffers in zip(fresh, saved):
            for k, v in buffers.items():
                getattr(m, k).copy_(v)
        for m, mode in modes:
            m.training = mode
    out = {}
    for name, layer in todo:
        pos = torch.cat(values[name]) if values[name] else torch.empty(0)
        if pos.numel() == 0:
            raise ValueError(f"constraint layer '{name}' never received a positive input on the calibration data; "
                             "calibrate on more or different data, or give it threshold=")
        k = nearest_rank(quantile, pos.numel())
        theta = float(pos.kthvalue(k).values)
        layer.threshold.data.fill_(theta)
        out[name] = theta
    return out


def apply(ann: nn.Module, kind: str = "qcfs", calibration: Iterable | None = None, **kwargs) -> nn.Module:
    """Replace every ``nn.ReLU`` module of ``ann`` (in place) by a constraint activation.

    Args:
        ann: the network; its ReLUs must be modules (``nn.ReLU``), not ``F.relu`` calls.
        kind: ``"qcfs"``, ``"clip"`` or ``"tracked"``.
        calibration: training batches to set the thresholds from now (:func:`calibrate`);
            without it, ``QCFS`` / ``Clip`` made without ``threshold=`` wait for
            ``Trainer.fit`` (or a call of :func:`calibrate`).
        **kwargs: passed to the constraint (e.g. ``levels=8``; ``threshold=8.0`` fixes it).
    Returns:
        ``ann`` itself.
    Raises:
        ValueError: unknown kind, or no ``nn.ReLU`` found and a functional relu is used
            (the message names the module whose ``forward`` calls it).
    """
    if not isinstance(ann, nn.Module):
        raise TypeError(f"ann must be a torch.nn.Module, got {type(ann).__name__}")
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, _KINDS))}; got {kind!r}")
    found = find_functional_activations(ann)
    if found:
        where = "; ".join(f"{path or '<root>'} ({what})" for path, what in found)
        raise ValueError(
            f"these activations cannot be replaced: {where}. Each must be an nn.ReLU module (not a functional "
            "call such as F.relu), made in __init__ and called once in forward (give each call site its own), "
            "then apply the constraint."
        )
    made: dict[int, tuple[nn.Module, nn.Module]] = {}  # a ReLU held under several names: one constraint
    for module in list(ann.modules()):
        for child_name, child in child_slots(module):
            if type(child) is nn.ReLU:
                if id(child) not in made:
                    made[id(child)] = (child, _KINDS[kind](**kwargs))
                setattr(module, child_name, made[id(child)][1])
    replaced = len(made)
    if replaced == 0:
        raise ValueError("no nn.ReLU module found to replace")
    if calibration is not None:
        calibrate(ann, calibration)
    return ann
