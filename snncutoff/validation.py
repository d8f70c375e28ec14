"""Argument and tensor validation for the whole core, in one place.

Every message names the argument, what was expected and what was received, so a
caller can fix the call without reading the source (scikit-learn's
``check_array`` is the model).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor


class NotFittedError(ValueError, AttributeError):
    """A policy that learns from calibration data was used before ``fit``."""


def json_ready(value: Any, name: str) -> Any:
    """A copy of ``value`` made of JSON types (dict with str keys, list, str, int, float, bool, None).

    NumPy scalars and 0-d arrays or tensors become Python numbers, tuples become lists,
    ``pathlib.Path`` / dates / times / enums their ``str`` (ISO format for dates);
    anything else is a ``TypeError`` naming where it is (``meta['run']['when']``).
    """
    import datetime
    import enum
    import os

    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{name} keys must be strings, got {k!r} ({type(k).__name__})")
            out[k] = json_ready(v, f"{name}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [json_ready(v, f"{name}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (os.PathLike, enum.Enum)):
        return str(value.value if isinstance(value, enum.Enum) else value)
    if hasattr(value, "item") and tuple(getattr(value, "shape", (None,))) == ():  # numpy / torch scalars
        return json_ready(value.item(), name)
    raise TypeError(f"{name} must be JSON-ready (str, number, bool, None, list, dict); got {type(value).__name__}")


def _scalar(value: Any) -> Any:
    """A 0-d tensor or array as its Python number; anything else as it is."""
    if hasattr(value, "item") and tuple(getattr(value, "shape", (None,))) == ():
        return value.item()
    return value


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int (Python, NumPy or 0-d tensor integers; not bool, float or str), ``>= minimum``."""
    value = _scalar(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float (Python, NumPy or 0-d tensor reals; not bool or str) within the bounds."""
    value = _scalar(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    lo = "" if low is None else f"{'(' if low_open else '['}{low:g}"
    hi = "" if high is None else f"{high:g}{')' if high_open else ']'}"
    where = f" in {lo or '(-inf'}, {hi or 'inf)'}" if (low is not None or high is not None) else ""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number{where}, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must lie{where}, got {value:g}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must lie{where}, got {value:g}")
    return value


def check_device(device: Any) -> Any:
    """``device`` as a ``torch.device`` (None stays None); a name torch does not know, or CUDA asked for
    where there is none, is a ``ValueError`` that says so."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N' (a torch.device), got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but torch sees no CUDA device "
                         f"(torch {torch.__version__}); use 'cpu'")
    return dev


def check_path(name: str, value: Any) -> Any:
    """``value`` as a ``pathlib.Path`` (a str or ``os.PathLike``), else a ``TypeError`` naming ``name``."""
    import os
    from pathlib import Path

    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (str or pathlib.Path), got {value!r} ({type(value).__name__})")
    return Path(value)


def batch_labels(y: Any, n: int) -> Tensor:
    """The ``[n]`` integer labels of one batch (int64, CPU), or a clear error naming what is wrong."""
    y = torch.as_tensor(y).cpu()
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"a batch of {n} inputs came with labels of shape {tuple(y.shape)}: each batch must be "
                         "(inputs [N, ...], labels [N])")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got dtype {y.dtype}")
    if n and int(y.min()) < 0:
        raise ValueError(f"labels must lie in [0, C), found {int(y.min())}")
    return y.long()


def check_unit_interval(name: str, value: Any) -> float:
    """Return ``value`` as a float in ``[0, 1)`` or raise ``ValueError``."""
    value = _scalar(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1), got {value!r} ({type(value).__name__})")
    value = float(value)
    if not (0.0 <= value < 1.0):
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
    return value


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as an int ``>= minimum`` or raise (see :func:`check_int`)."""
    return check_int(name, value, minimum)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


INPUT_HINT = "The data set holds them: clean or drop those samples before running the network."


def check_finite(name: str, x: Tensor, axes: tuple[str, ...] = ("t", "n"),
                 hint: str = "Check the network for exploding activations or an input that is not normalised.") -> None:
    """Raise ``ValueError`` naming the count and first position (``axes``: its leading dimensions,
    ``("t", "n")`` for ``[T, N, ...]``, ``("n",)`` for a batch) of non-finite values.

    One reduction in the tensor's own dtype, with no temporary, decides the common case: a
    NaN or an infinity makes the sum NaN or infinite, so a finite sum implies that every
    element is finite; only when the sum is not (or overflowed) is the element-wise mask built.
    """
    if x.numel() == 0 or math.isfinite(float(x.detach().sum())):
        return
    bad = ~torch.isfinite(x)
    count = int(bad.sum())
    if count == 0:  # the sum overflowed; every element is finite
        return
    first = tuple(int(i) for i in bad.nonzero()[0])
    k = min(len(axes), x.dim())
    where = (f"({', '.join(axes[:k])}) = {first[:k]}" if k > 1 else f"{axes[0]} = {first[0]}") if k else "index ()"
    raise ValueError(f"{name} holds {count} NaN or infinite value(s); the first is at {where}. {hint}")


def check_outputs(outputs: Any, name: str = "outputs") -> Tensor:
    """Check a cumulative output tensor ``[T, N, C]`` (float, finite, T, N >= 1)."""
    if not isinstance(outputs, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [T, N, C], got {type(outputs).__name__}")
    if outputs.is_meta:
        raise ValueError(f"{name} is on the meta device: it holds no values")
    if outputs.dim() != 3:
        raise ValueError(f"{name} must be 3-D [T, N, C], got shape {tuple(outputs.shape)}")
    T, N, C = outputs.shape
    if T < 1:
        raise ValueError(f"{name} must have T >= 1 timesteps, got T = {T}")
    if N < 1:
        raise ValueError(f"{name} must hold at least one sample, got N = 0")
    if C < 1:
        raise ValueError(f"{name} must have at least one class, got C = 0")
    if not outputs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {outputs.dtype}")
    check_finite(name, outputs)
    return outputs


def check_labels(labels: Any, n: int, num_classes: int) -> Tensor:
    """Check integer labels ``[N]`` with values in ``[0, C)``; return them as int64."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of shape [N], got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape [N] = [{n}], got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    labels = labels.long()
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"labels must lie in [0, C) = [0, {num_classes}), found {bad}")
    return labels


def check_index(index: Any, n: int) -> Tensor:
    """Sample indices ``[K]`` (in ``[-N, N)``) or an ``[N]`` bool mask, as int64 indices."""
    if not isinstance(index, Tensor) or index.dim() != 1:
        raise TypeError("index must be a 1-D tensor of sample indices or an [N] bool mask")
    if index.dtype == torch.bool:
        if index.shape[0] != n:
            raise ValueError(f"a bool mask must have shape [N] = [{n}], got {tuple(index.shape)}")
        index = index.nonzero().flatten()
    if index.is_floating_point() or index.is_complex():
        raise TypeError(f"index must hold integer sample indices (or be an [N] bool mask), got {index.dtype}")
    if index.numel() and not (-n <= int(index.min()) and int(index.max()) < n):
        raise IndexError(f"sample indices must lie in [0, N) = [0, {n}) (or -N .. -1 from the end), "
                         f"got {int(index.min())} .. {int(index.max())}")
    return index.long()


def check_steps(steps: Any, n: int, T: int, name: str = "steps") -> Tensor:
    """1-based step counts ``[N]`` (integers in ``[1, T]``), as int64."""
    if not isinstance(steps, Tensor):
        raise TypeError(f"{name} must be a [N] integer tensor of 1-based steps, got {type(steps).__name__}")
    if steps.is_floating_point() or steps.is_complex() or steps.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of 1-based steps, got dtype {steps.dtype}")
    if tuple(steps.shape) != (n,):
        raise ValueError(f"{name} must have shape [N] = [{n}], got {tuple(steps.shape)}")
    if n and (int(steps.min()) < 1 or int(steps.max()) > T):
        raise ValueError(f"{name} must lie in [1, T] = [1, {T}] (1-based steps), got {int(steps.min())} .. "
                         f"{int(steps.max())}")
    return steps.long()


def check_meta(meta: Any) -> dict:
    """A trace's ``meta``: a dict, returned as a JSON-ready copy (:func:`json_ready`)."""
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    return json_ready(meta, "meta")


def check_ops(ops: Any, T: int, n: int) -> Tensor:
    """Check a per-step cost tensor ``[T, N]`` (finite, non-negative)."""
    if not isinstance(ops, Tensor):
        raise TypeError(f"ops must be a torch.Tensor of shape [T, N], got {type(ops).__name__}")
    if tuple(ops.shape) != (T, n):
        raise ValueError(f"ops must have shape [T, N] = [{T}, {n}], got {tuple(ops.shape)}")
    ops = ops.to(torch.float64) if not ops.is_floating_point() else ops
    check_finite("ops", ops)
    if bool((ops < 0).any()):
        raise ValueError("ops must be non-negative (it counts spikes or synaptic operations per step)")
    return ops


def check_min_classes(num_classes: int, policy: str) -> None:
    """``TopKGap``, ``Confidence`` and ``Conformal`` need at least two classes."""
    if num_classes < 2:
        raise ValueError(f"{policy} needs C >= 2 classes, got C = {num_classes}")
