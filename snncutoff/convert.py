"""ANN-to-SNN conversion, framework-free: find the activations, fix thresholds, swap neurons.

A backend converts by calling :func:`convert_ann` with a factory that builds its own
framework's integrate-and-fire neuron for a given threshold. The steps:

1. check the network: every activation is an ``nn.ReLU`` or a
   :class:`~snncutoff.constraints.Constraint` *module*, called once per forward (a
   neuron holds state); a functional ``F.relu`` / ``torch.relu`` / ``Tensor.relu``
   is an error naming the module whose ``forward`` calls it (found by tracing with
   ``torch.fx``, or by running one calibration batch when tracing fails); so is any other
   non-linear operation in ``forward`` code (``F.max_pool2d``, ``torch.clamp``, ``floor``, a
   softmax, ...), which the SNN would apply to each step's spikes instead of their rates;
2. thresholds: a constraint's own; for ``nn.ReLU`` the calibration rule (``"max"`` of
   the activation over the calibration data, or a percentile such as ``"99.9%"``);
3. layers: ``MaxPool`` is refused unless ``maxpool="avg"``; ``Dropout`` and an empty
   ``nn.Sequential()`` (the identity shortcut of residual blocks) become ``Identity``;
   ``BatchNorm`` after a ``Conv``/``Linear`` in a ``Sequential`` is fused with
   ``fuse_bn=True`` (kept otherwise: in eval mode it is affine per step);
   any other leaf module not listed in :data:`SUPPORTED` is an error naming it;
4. each activation is replaced by ``make_neuron(threshold, v_init)``; the last layer
   (no activation after it) stays non-spiking and its per-step output is the logits.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .constraints import Constraint
from .graph import (
    _library_layer,
    _scan,
    check_by_running,
    child_slots,
    is_activation,
    is_dropout,
    is_empty_sequential,
    is_voting,
    library_packages,
)
from .spec import IF
from .stats import nearest_rank
from .validation import INPUT_HINT, check_finite

SUPPORTED: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Unflatten, nn.Identity,
)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
class ConversionError(ValueError):
    """The ANN cannot be converted as it is; the message names the layer and the fix."""


@dataclass(frozen=True)
class ConvertedActivation:
    """Where an activation was and what it became."""

    path: str
    kind: str
    threshold: float
    v_init: float


def _batches(data: Iterable) -> Iterable[Tensor]:
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, Tensor):
            raise TypeError(f"calibration batches must be tensors or (x, y) pairs, got {type(x).__name__}")
        yield x


def _parse_rule(rule: str) -> float | None:
    """``"max"`` -> None; ``"99.9%"`` -> 0.999."""
    if rule == "max":
        return None
    if isinstance(rule, str) and rule.endswith("%"):
        try:
            q = float(rule[:-1]) / 100.0
        except ValueError:
            q = math.nan
        if 0.0 < q <= 1.0:
            return q
    raise ValueError(f"threshold rule must be 'max' or a percentile such as '99.9%', got {rule!r}")


@torch.no_grad()
def calibrate_thresholds(
    ann: nn.Module, data: Iterable, rule: str = "max", device: torch.device | str | None = None,
    max_batches: int | None = None,
) -> dict[str, float]:
    r"""Threshold of every ``nn.ReLU`` of ``ann`` from its outputs on ``data``.

    ``"max"``: the largest activation over all batches. ``"99.9%"`` (any percentile q):
    the mean over batches of the per-batch percentile of the layer's activations, the
    nearest-rank one (the value of rank :math:`\lceil q n \rceil` among the batch's n
    activations; robust to outliers, as in Rueckauer et al. 2017).

    Returns:
        ``{module path: threshold}``.
    """
    q = _parse_rule(rule)
    relus = {name: m for name, m in ann.named_modules() if type(m) is nn.ReLU}
    stats: dict[str, list[float]] = {name: [] for name in relus}

    def hook(name):
        def fn(_m, _i, out):
            flat = out.detach().float().flatten()
            if q is None:
                stats[name].append(float(flat.max()))
            else:  # kthvalue: quantile() refuses more than 16M elements
                k = nearest_rank(q, flat.numel())
                stats[name].append(float(flat.kthvalue(k).values))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in relus.items()]
    was_training = ann.training
    ann.eval()
    try:
        for i, x in enumerate(_batches(data)):
            if max_batches is not None and i >= max_batches:
                break
            if x.is_floating_point():
                check_finite(f"calibration batch {i}", x, ("n",), INPUT_HINT)
            try:
                ann(x.to(device) if device is not None else x)
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                raise ValueError(f"running {type(ann).__name__} on calibration batch {i} of shape "
                                 f"{list(x.shape)} failed: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
        ann.train(was_training)
    out = {}
    for name, values in stats.items():
        if not values:
            raise ConversionError(f"calibration data never reached nn.ReLU '{name}' (empty loader?)")
        t = max(values) if q is None else sum(values) / len(values)
        if not t > 0:
            raise ConversionError(
                f"nn.ReLU '{name}' never fired on the calibration data (threshold {t}); "
                "calibrate on more or different data, or train the ANN with a constraint activation"
            )
        out[name] = t
    return out


def _fuse_bn(module: nn.Module) -> None:
    """Fuse Conv/Linear followed directly by BatchNorm inside every ``nn.Sequential``."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        keys = list(seq._modules)
        for a, b in zip(keys, keys[1:]):
            first, second = seq._modules[a], seq._modules[b]
            if isinstance(first, (nn.Conv1d, nn.Conv2d)) and isinstance(second, (nn.BatchNorm1d, nn.BatchNorm2d)):
                seq._modules[a], seq._modules[b] = fuse_conv_bn_eval(first, second), nn.Identity()
            elif isinstance(first, nn.Linear) and isinstance(second, nn.BatchNorm1d):
                seq._modules[a], seq._modules[b] = fuse_linear_bn_eval(first, second), nn.Identity()


def _first_example(calibration: Iterable | None, example_input: Tensor | None) -> Tensor | None:
    if example_input is not None:
        return example_input
    if calibration is None:
        return None
    for x in _batches(calibration):
        return x[:2]
    return None


def _unsupported(ann: nn.Module, maxpool: str) -> tuple[str, nn.Module] | None:
    """The first layer the inference conversion cannot turn into a spiking equivalent, or None."""
    packages = library_packages()
    for path, m in ann.named_modules():
        if m is ann or is_activation(m) or is_dropout(m) or is_empty_sequential(m):
            continue
        if isinstance(m, _MAXPOOL):
            if maxpool != "avg":
                return path, m
        elif (len(m._modules) == 0 or _library_layer(m, packages)) and not (isinstance(m, SUPPORTED)
                                                                            or is_voting(m)):
            return path, m
    return None


def check_convertible(ann: nn.Module, calibration: Iterable | None = None, example_input: Tensor | None = None,
                      device: torch.device | str | None = None) -> None:
    """Every activation is an ``nn.ReLU`` / constraint *module* called once per forward, or a
    :class:`ConversionError` naming the module whose ``forward`` breaks the rule."""
    if not isinstance(ann, nn.Module):
        raise TypeError(f"ann must be a torch.nn.Module, got {type(ann).__name__}")
    if isinstance(calibration, Tensor):
        raise TypeError("calibration must be an iterable of batches (a DataLoader, or a list of x or (x, y)), "
                        "got a single tensor: pass [x] or [(x, y)]")
    scan = _scan(ann)
    if scan is None:
        example = _first_example(calibration, example_input)
        if example is None:
            raise ConversionError(
                f"{type(ann).__name__} cannot be traced with torch.fx (data-dependent control flow?), so "
                "its forward cannot be checked for functional activations such as F.relu, which would be "
                "silently left in the SNN. Pass calibration= data or example_input= so it can be run once."
            )
        was = ann.training
        ann.eval()
        try:
            scan = check_by_running(ann, example.to(device) if device is not None else example)
        finally:
            ann.train(was)
    found, nonlinear = scan
    if found:
        where = "; ".join(f"'{p or type(ann).__name__}' uses {w}" for p, w in found)
        raise ConversionError(
            f"cannot convert: {where}. Every activation must be its own nn.ReLU (or snncutoff constraint) "
            "module, created in __init__ and called once in forward; replace functional calls such as "
            "F.relu(x) by a module and give each call site its own module."
        )
    if nonlinear:
        raise ConversionError(_nonlinear_message(ann, nonlinear))


def _nonlinear_message(ann: nn.Module, nonlinear: list[tuple[str, str]]) -> str:
    """What to do about non-linear operations in ``ann``'s forward code (besides the activations)."""
    modules = dict(ann.named_modules())
    where = "; ".join((f"'{p}' ({type(modules[p]).__name__})" if p in modules and p else type(ann).__name__)
                      + f" uses {w}" for p, w in dict.fromkeys(nonlinear))
    hints = []
    if any("max_pool" in w for _, w in nonlinear):
        hints.append("for max pooling use an nn.MaxPool2d module and convert with maxpool='avg', or train with "
                     "nn.AvgPool2d")
    if any(w.split(".")[-1].startswith(("clamp", "clip", "floor", "round")) for _, w in nonlinear):
        hints.append("a clipped or quantised activation (QCFS, clip, e.g. SNNCutoff's QCFSConstrs / ClipConstrs) "
                     "must be snncutoff's own: snncutoff.constraints.QCFS(levels=L, threshold=vthr) or Clip"
                     "(threshold=vthr) in place of the module, or constraints.apply(ann, 'qcfs', ...) on the "
                     "ReLU network; their thresholds convert directly (a clamp(min=0) alone is a ReLU: use an "
                     "nn.ReLU module)")
    if any("softmax" in w for _, w in nonlinear):
        hints.append("leave the softmax out of the network: cutoff rules read the logits (they take the softmax "
                     "where a rule needs it)")
    hint = "; ".join(hints) or ("compute it with supported layers, or outside the network")
    return (f"cannot convert: {where}. A converted network would apply such a non-linear operation to each "
            f"step's spikes, not to their rates, so its outputs would not approach the ANN's: {hint}.")


def convert_for_training(
    ann: nn.Module, make_neuron: Callable[[float, float], nn.Module], threshold: float = 1.0,
    map_layer: Callable[[nn.Module], nn.Module] | None = None, example_input: Tensor | None = None,
) -> tuple[nn.Module, list[ConvertedActivation]]:
    """A copy of ``ann`` to train directly: every activation becomes ``make_neuron(threshold, 0)`` (a
    trainable LIF neuron), every other leaf layer — Dropout and MaxPool included — is kept
    (``map_layer`` may swap it for the framework's multi-step version); modes are kept."""
    check_convertible(ann, example_input=example_input)
    snn = copy.deepcopy(ann)
    trained: list[ConvertedActivation] = []

    done: dict[int, tuple[nn.Module, nn.Module]] = {}  # a layer held at several places: converted once

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in child_slots(module):
            path = f"{prefix}.{name}" if prefix else name
            if id(child) in done:
                new = done[id(child)][1]
            elif is_activation(child):
                new = make_neuron(threshold, 0.0)
                trained.append(ConvertedActivation(path, type(child).__name__, threshold, 0.0))
            elif len(child._modules) == 0:
                new = map_layer(child) if map_layer is not None else child
            else:
                visit(child, path)
                new = child
            done[id(child)] = (child, new)
            if new is not child:
                setattr(module, name, new)

    visit(snn, "")
    if not trained:
        raise ConversionError("no activation (nn.ReLU or constraint module) found: nothing to make spike")
    return snn, trained


def convert_ann(
    ann: nn.Module,
    make_neuron: Callable[[float, float], nn.Module],
    spec: IF | None = None,
    calibration: Iterable | None = None,
    *,
    threshold_rule: str = "max",
    maxpool: str = "error",
    fuse_bn: bool = False,
    map_layer: Callable[[nn.Module], nn.Module] | None = None,
    example_input: Tensor | None = None,
    device: torch.device | str | None = None,
) -> tuple[nn.Module, list[ConvertedActivation]]:
    """Convert a copy of ``ann`` into integrate-and-fire neurons for inference; ``ann`` is not modified.

    Args:
        ann: ReLU or constraint-activation network (``nn.Module``).
        make_neuron: ``(threshold, v_init_fraction) -> module`` of the backend's framework;
            the module emits ``threshold * spike`` per step and holds its membrane.
        spec: :class:`~snncutoff.spec.IF` overrides (fixed threshold, v_init).
        calibration: batches (``x`` or ``(x, y)``) to set ``nn.ReLU`` thresholds.
        threshold_rule: ``"max"`` or a percentile such as ``"99.9%"``.
        maxpool: ``"error"`` (default) or ``"avg"`` to replace max pooling by average pooling.
        fuse_bn: fold BatchNorm into the preceding Conv/Linear.
        map_layer: optional backend hook applied to every kept stateless layer (e.g. to
            swap ``nn.Conv2d`` for SpikingJelly's multi-step ``layer.Conv2d``).
        example_input: one input batch, used to check functional activations when the
            network cannot be traced and no calibration data is given.
    Returns:
        ``(snn, activations)``: the converted network (eval mode) and what each
        activation became.
    Raises:
        ConversionError: naming the offending layer and what to do.
    """
    spec = spec or IF()
    if maxpool not in ("error", "avg"):
        raise ValueError(f"maxpool must be 'error' or 'avg', got {maxpool!r}")
    check_convertible(ann, calibration, example_input, device)
    bad = _unsupported(ann, maxpool)
    if bad is not None:
        path, layer = bad
        if isinstance(layer, _MAXPOOL):
            raise ConversionError(
                f"layer '{path}' ({type(layer).__name__}) has no rate-coded spiking equivalent; pass "
                "maxpool='avg' to replace it by average pooling (best with an ANN trained with AvgPool)")
        raise ConversionError(
            f"layer '{path}' ({type(layer).__name__}) cannot be converted. Supported layers: "
            f"{', '.join(c.__name__ for c in SUPPORTED)}, Dropout, MaxPool (with maxpool='avg'), SpikingJelly's "
            "VotingLayer, nn.ReLU "
            "and snncutoff.constraints activations, and containers / custom modules made of them. "
            "Replace the layer, or wrap it in a custom module whose children are supported.")
    snn = copy.deepcopy(ann).eval()
    if fuse_bn:
        _fuse_bn(snn)
    relu_paths = [n for n, m in snn.named_modules() if type(m) is nn.ReLU]
    thresholds: dict[str, float] = {}
    if relu_paths and spec.threshold is None:
        if calibration is None:
            raise ConversionError(
                f"{len(relu_paths)} nn.ReLU layer(s) (first: '{relu_paths[0]}') need a threshold: pass "
                "calibration= data (e.g. the training loader; rule 'max' or '99.9%'), or IF(threshold=...), "
                "or train with snncutoff.constraints (QCFS / Clip) whose thresholds convert directly"
            )
        thresholds = calibrate_thresholds(snn, calibration, threshold_rule, device)
    converted: list[ConvertedActivation] = []

    def neuron(child: nn.Module, path: str) -> nn.Module:
        if spec.threshold is not None:
            theta = float(spec.threshold)
        elif isinstance(child, Constraint):
            theta = child.conversion_threshold()
        else:
            theta = thresholds[path]
        v_init = spec.v_init if spec.v_init is not None else getattr(child, "v_init", 0.5)
        converted.append(ConvertedActivation(path, type(child).__name__, theta, float(v_init)))
        return make_neuron(theta, float(v_init))

    done: dict[int, tuple[nn.Module, nn.Module]] = {}  # a layer held at several places: converted once

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in child_slots(module):
            path = f"{prefix}.{name}" if prefix else name
            if id(child) in done:
                new = done[id(child)][1]
            elif is_activation(child):
                new = neuron(child, path)
            elif is_dropout(child) or is_empty_sequential(child):
                new = nn.Identity()  # Dropout in eval mode, and an empty shortcut, pass the input on
            elif isinstance(child, _MAXPOOL):
                new = map_layer(_avg_of(child)) if map_layer else _avg_of(child)
            elif isinstance(child, SUPPORTED) or is_voting(child):
                new = map_layer(child) if map_layer else child
            else:
                visit(child, path)
                new = child
            done[id(child)] = (child, new)
            if new is not child:
                setattr(module, name, new)

    visit(snn, "")
    if not converted:
        raise ConversionError("no activation (nn.ReLU or constraint module) found: nothing to make spike")
    return snn, converted


def _avg_of(pool: nn.Module) -> nn.Module:
    if isinstance(pool, nn.MaxPool2d):
        return nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode)
    if isinstance(pool, nn.MaxPool1d):
        return nn.AvgPool1d(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode)
    if isinstance(pool, nn.AdaptiveMaxPool2d):
        return nn.AdaptiveAvgPool2d(pool.output_size)
    return nn.AdaptiveAvgPool1d(pool.output_size)
