r"""How faithfully a converted SNN computes its ANN: accuracies and the conversion error per layer.

For every converted activation :math:`\ell` (a QCFS / Clip / ReLU layer of the ANN, an
integrate-and-fire layer of the SNN with threshold :math:`\theta_\ell`), over the samples
n and units i of the layer:

.. math::  e_\ell = \operatorname{mean}_{n,i} \big| a^\ell_{n,i} - \theta_\ell\, r^\ell_{n,i}(T) \big|,
           \qquad r^\ell_{n,i}(T) = \frac{1}{T} \sum_{t=1}^{T} S^\ell_{n,i,t}

where :math:`a^\ell` is the ANN's activation and :math:`r^\ell(T)` the SNN layer's firing
rate after T steps: the conversion error of the layer, in the activation's units (0 for
a perfect conversion at T). The report also gives the ANN's accuracy, the SNN's at T and
at its best step, and warns (:class:`ConversionWarning`) when the SNN at T is more than
1 point below the ANN, or when its accuracy falls more than 1 point below its running
maximum after the ANN's quantisation level L (naming the layer with the largest error).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .backends import resolve
from .collect import _split, encode
from .trace import Trace

#: accuracy points: a larger gap between ANN and SNN at T, or a larger fall after t = L, is warned about
TOLERANCE = 1.0


class ConversionWarning(UserWarning):
    """The converted SNN loses accuracy against its ANN, or loses it again as T grows."""


def _ann_activations(ann: nn.Module, paths: list[str], x: Tensor) -> list[Tensor]:
    modules = dict(ann.named_modules())
    out: list[Tensor | None] = [None] * len(paths)
    handles = [modules[p].register_forward_hook(lambda _m, _i, o, k=k: out.__setitem__(k, o.detach().clone()))
               for k, p in enumerate(paths)]
    try:
        ann(x)
    finally:
        for h in handles:
            h.remove()
    return out


@torch.no_grad()
def conversion_report(backend: Any, ann: nn.Module, snn: nn.Module, data: Iterable, T: int,
                      trace: Trace | None = None, max_batches: int | None = 4, levels: int | None = None,
                      device: torch.device | str | None = None, warn: bool = True) -> dict:
    """The conversion report of ``snn`` (from ``backend.convert(ann)``) on labelled ``data``.

    Args:
        backend: the SNN's backend (or its name).
        ann: the ANN it was converted from.
        snn: the converted network (single- or multi-step).
        data: ``(x, y)`` batches of static inputs (direct encoding).
        T: steps.
        trace: the SNN's trace on ``data`` (accuracy per step), collected here if None.
        max_batches: the per-layer errors are measured on this many batches (None: all).
        levels: the ANN's quantisation level L (after which accuracy should not fall);
            default: the largest ``levels`` of its QCFS layers, or 0.
        warn: emit :class:`ConversionWarning` for what the report's ``warnings`` list.

    Returns:
        JSON-ready ``{"ann_accuracy", "snn_accuracy", "best_step", "best_accuracy",
        "largest_fall_after_L", "layers": [{"path", "kind", "threshold", "error",
        "ann_mean", "snn_mean"}], "warnings": [...]}`` (accuracies 0 to 1, errors in the
        activation's units).
    """
    from .collect import collect_trace

    backend = resolve(backend)
    acts = getattr(snn, "snncutoff_activations", None)
    if acts is None:
        raise ValueError("conversion_report needs the network backend.convert(ann) returned (it lists the "
                         "converted activations)")
    if trace is None:
        trace = collect_trace(backend, snn, data, T, device=device, progress=False)
    layers = backend.spiking_layers(snn)
    if len(layers) != len(acts):
        raise ValueError(f"{len(acts)} converted activations but {len(layers)} spiking layers in the network")
    was = ann.training
    ann.eval()
    err = torch.zeros(len(acts), dtype=torch.float64)
    a_sum, r_sum, count = err.clone(), err.clone(), err.clone()
    correct = total = 0
    try:
        for i, batch in enumerate(data):
            x, y = _split(batch)
            x = x.to(device) if device is not None else x
            correct += int((ann(x).argmax(-1).cpu() == torch.as_tensor(y).cpu()).sum())
            total += len(y)
            if max_batches is not None and i >= max_batches:
                continue
            a = _ann_activations(ann, [c.path for c in acts], x)
            backend.reset(snn)
            with backend.record(snn, store=True, T=T) as rec:
                backend.run(snn, encode(x, T))
            spikes = rec.sequences("spikes")
            for k, ((name, _), conv) in enumerate(zip(layers, acts)):
                s = spikes[name].reshape(T, *a[k].shape).double()
                rate = s.sum(0) / T * conv.threshold
                err[k] += (a[k].double() - rate).abs().sum().cpu()
                a_sum[k] += a[k].double().sum().cpu()
                r_sum[k] += rate.sum().cpu()
                count[k] += a[k].numel()
    finally:
        backend.reset(snn)
        ann.train(was)
    if levels is None:
        levels = max((int(getattr(m, "levels", 0)) for m in ann.modules()), default=0)
    acc = trace.accuracy_per_step()
    best = int(acc.argmax())
    running = torch.cummax(acc, dim=0).values
    fall_from = min(max(levels, 1), trace.T)
    falls = (running - acc)[fall_from - 1:]
    fall_at = int(falls.argmax()) + fall_from
    report = {
        "ann_accuracy": correct / total,
        "snn_accuracy": float(acc[-1]),
        "best_step": best + 1,
        "best_accuracy": float(acc[best]),
        "largest_fall_after_L": {"points": 100 * float(falls.max()), "step": fall_at, "L": levels},
        "layers": [{"path": c.path, "kind": c.kind, "threshold": c.threshold,
                    "error": float(err[k] / count[k]), "ann_mean": float(a_sum[k] / count[k]),
                    "snn_mean": float(r_sum[k] / count[k])} for k, c in enumerate(acts)],
        "warnings": [],
    }
    worst = max(report["layers"], key=lambda d: d["error"]) if report["layers"] else None
    where = f"; the largest conversion error is in layer '{worst['path']}' ({worst['error']:.3g})" if worst else ""
    gap = 100 * (report["ann_accuracy"] - report["snn_accuracy"])
    if gap > TOLERANCE:
        snn_acc, ann_acc = 100 * report["snn_accuracy"], 100 * report["ann_accuracy"]
        report["warnings"].append(f"the SNN at T = {trace.T} is {gap:.1f} points below the ANN "
                                  f"({snn_acc:.2f}% vs {ann_acc:.2f}%){where}")
    if report["largest_fall_after_L"]["points"] > TOLERANCE:
        report["warnings"].append(
            f"the SNN's accuracy falls {report['largest_fall_after_L']['points']:.1f} points below its best so far "
            f"at step {fall_at} (after L = {levels}): it computes another function as T grows{where}")
    if warn:
        for w in report["warnings"]:
            warnings.warn(w, ConversionWarning, stacklevel=2)
    return report
