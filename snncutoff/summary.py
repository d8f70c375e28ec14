r"""``TraceSummary``: what every policy and the OCT need of a trace, in O(T N) memory.

A :class:`~snncutoff.Trace` keeps the cumulative outputs ``[T, N, C]``: 6.4 GB for
ImageNet's 50 000 samples, 1 000 classes and T = 32. The policies read only a few
per-step, per-sample statistics of them; a summary keeps exactly those, computed by the
same functions (:mod:`snncutoff.stats`), so every policy, sweep, risk control and the OCT
give bit-identical results on a summary and on the full trace:

- ``predictions`` (argmax, int64), ``gaps`` (top-1 minus top-2), ``softmax_argmax``;
- ``max_softmax``, ``max_softmax_of_mean``, ``normalized_entropy``;
- ``label_nonconformity`` and the ``max_set_size + 1`` smallest nonconformity scores
  (``Conformal`` up to that ``max_set_size``);
- labels and, optionally, ``ops``.

That is :math:`(36 + 4 (k + 1))` bytes per sample and step for ``max_set_size`` k (44 for
k = 1), against :math:`4 C` for float32 outputs. What needs the outputs themselves — a new
statistic, ``Conformal`` with a larger ``max_set_size``, per-class analyses, training
losses — needs the full trace. ``collect_trace(..., keep="summary")`` builds a summary
batch by batch, never holding the outputs of more than one batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import stats
from .io import CorruptFileError, atomic_torch_save, load_torch
from .validation import (
    check_device,
    check_finite,
    check_index,
    check_int,
    check_labels,
    check_meta,
    check_ops,
    check_path,
    check_steps,
    json_ready,
)

FORMAT = "snncutoff-trace-summary/1"
FIELDS = ("predictions", "gaps", "softmax_argmax", "max_softmax", "max_softmax_of_mean", "normalized_entropy",
          "label_nonconformity")


def summarize(outputs: Tensor, labels: Tensor, max_set_size: int = 1) -> dict[str, Tensor]:
    """The statistics of cumulative outputs ``[T, n, C]`` a summary keeps (one batch, or a whole trace)."""
    gap, argmax = stats.top2_gap(outputs)
    steps = torch.arange(1, outputs.shape[0] + 1, device=outputs.device).view(-1, 1)
    k = min(max_set_size + 1, outputs.shape[-1])
    smallest = torch.stack([  # a step at a time: no full-size temporary
        torch.topk(-(o.softmax(dim=-1) + 1e-5).log(), k, dim=-1, largest=False).values for o in outputs])
    return {"predictions": argmax, "gaps": gap, "softmax_argmax": stats.softmax_argmax(outputs),
            "max_softmax": stats.max_softmax(outputs), "max_softmax_of_mean": stats.max_softmax_of_mean(outputs, steps),
            "normalized_entropy": stats.normalized_entropy(outputs),
            "label_nonconformity": stats.nonconformity(outputs, labels), "smallest_nonconformity": smallest}


def _statistic(name: str, doc: str) -> Callable[[TraceSummary], Tensor]:
    """A method returning the kept statistic ``name``, as the Trace method of that name computes it."""

    def get(self: TraceSummary) -> Tensor:
        return self.statistics[name]

    get.__name__ = get.__qualname__ = name
    get.__doc__ = doc
    return get


def check_summary_classes(C: int) -> int:
    """``C``, the classes of a summary: at least 2 (its top-1 / top-2 gap), or a ``ValueError`` saying what to do."""
    if C < 2:
        raise ValueError(f"a trace summary needs C >= 2 classes (its top-1 / top-2 gap), got C = {C}: a binary "
                         "classifier's single logit z is one class; give the rules two, torch.cat([-z, z], 1)")
    return C


@dataclass(frozen=True, eq=False)
class TraceSummary:
    """Per-step statistics ``[T, N]`` of a trace, with its labels and ops (see the module docstring).

    Args:
        statistics: the :data:`FIELDS`, each ``[T, N]``, and ``smallest_nonconformity`` ``[T, N, k + 1]``.
        labels: ``[N]``; C: number of classes; ops: optional ``[T, N]``; meta: JSON-ready.
    """

    statistics: dict
    labels: Tensor
    C: int
    ops: Tensor | None = None
    meta: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.statistics, dict):
            raise TypeError(f"statistics must be a dict of tensors, got {type(self.statistics).__name__}")
        missing = [f for f in (*FIELDS, "smallest_nonconformity") if f not in self.statistics]
        if missing:
            raise ValueError(f"a trace summary needs the statistics {', '.join(missing)}")
        object.__setattr__(self, "C", check_summary_classes(check_int("C", self.C, 1)))
        for name, value in self.statistics.items():
            if not isinstance(value, Tensor) or value.dim() < 2:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"summary statistic {name!r} must be a [T, N] tensor, got {got}")
        T, N = self.statistics["predictions"].shape[:2]
        if T < 1 or N < 1:
            raise ValueError(f"a trace summary needs T >= 1 and N >= 1, got T = {T}, N = {N}")
        for name, value in self.statistics.items():
            if tuple(value.shape[:2]) != (T, N):
                raise ValueError(f"summary statistic {name!r} must be [T, N] = [{T}, {N}], got {tuple(value.shape)}")
            if value.is_floating_point():
                check_finite(f"summary statistic {name!r}", value)
            elif name in ("predictions", "softmax_argmax") and not (
                    int(value.min()) >= 0 and int(value.max()) < self.C):
                raise ValueError(f"summary statistic {name!r} must hold classes in [0, C) = [0, {self.C}), got "
                                 f"{int(value.min())} .. {int(value.max())}")
        object.__setattr__(self, "labels", check_labels(self.labels, N, self.C))
        if self.ops is not None:
            object.__setattr__(self, "ops", check_ops(self.ops, T, N))
        object.__setattr__(self, "meta", check_meta(self.meta))

    @classmethod
    def of(cls, trace: Any, max_set_size: int = 1) -> TraceSummary:
        """The summary of a full :class:`~snncutoff.Trace`."""
        s = summarize(trace.outputs, trace.labels, max_set_size)
        s["gaps"], s["predictions"] = trace.gaps(), trace.predictions()  # the kernel's values: the same
        return cls(s, trace.labels, trace.C, trace.ops, dict(trace.meta))

    @classmethod
    def cat(cls, parts: list[TraceSummary]) -> TraceSummary:
        """Summaries of consecutive batches as one (same T, C and statistics)."""
        if not parts or not all(isinstance(p, TraceSummary) for p in parts):
            raise TypeError("TraceSummary.cat takes a non-empty list of summaries")
        T, C = parts[0].T, parts[0].C
        for i, p in enumerate(parts):
            if (p.T, p.C) != (T, C):
                raise ValueError(f"TraceSummary.cat: part {i} has (T, C) = ({p.T}, {p.C}), expected ({T}, {C})")
        s = {k: torch.cat([p.statistics[k] for p in parts], dim=1) for k in parts[0].statistics}
        ops = torch.cat([p.ops for p in parts], dim=1) if all(p.ops is not None for p in parts) else None
        return cls(s, torch.cat([p.labels for p in parts]), C, ops, dict(parts[0].meta))

    # ------------------------------------------------------------------ sizes
    @property
    def T(self) -> int:
        """Number of timesteps."""
        return self.statistics["predictions"].shape[0]

    @property
    def N(self) -> int:
        """Number of samples."""
        return self.statistics["predictions"].shape[1]

    @property
    def max_set_size(self) -> int:
        """The largest ``Conformal.max_set_size`` this summary serves."""
        return self.statistics["smallest_nonconformity"].shape[2] - 1

    def subset(self, index: Tensor) -> TraceSummary:
        """The samples ``index`` (``[K]`` indices or an ``[N]`` bool mask)."""
        index = check_index(index, self.N)
        s = {k: v[:, index] for k, v in self.statistics.items()}
        ops = None if self.ops is None else self.ops[:, index]
        return TraceSummary(s, self.labels[index], self.C, ops, dict(self.meta))

    # ---------------------------------------------------------- statistics (as Trace's methods)
    predictions = _statistic("predictions", "``[T, N]`` argmax of the cumulative outputs (int64).")
    gaps = _statistic("gaps", "``[T, N]`` top-1 minus top-2 of the cumulative outputs.")
    softmax_argmax = _statistic("softmax_argmax", "``[T, N]`` argmax of the softmax (ties as softmax rounds).")
    max_softmax = _statistic("max_softmax", "``[T, N]`` largest softmax probability of the cumulative outputs.")
    max_softmax_of_mean = _statistic("max_softmax_of_mean", "``[T, N]`` largest softmax of the mean output O_t / t.")
    normalized_entropy = _statistic("normalized_entropy", "``[T, N]`` softmax entropy over log C, in [0, 1].")
    label_nonconformity = _statistic("label_nonconformity", "``[T, N]`` nonconformity score of the true label.")

    def kth_nonconformity(self, k: int) -> Tensor:
        """The k-th smallest nonconformity over the classes (``k <= max_set_size + 1``; ``+inf`` past C)."""
        smallest = self.statistics["smallest_nonconformity"]
        if k > self.C:
            return torch.full((self.T, self.N), math.inf, dtype=smallest.dtype)
        if k > smallest.shape[2]:
            raise ValueError(f"this summary keeps the {smallest.shape[2]} smallest nonconformity scores, so it serves "
                             f"Conformal(max_set_size <= {self.max_set_size}); collect it with a larger max_set_size, "
                             "or keep the full trace")
        return smallest[..., k - 1]

    def argmax_runs(self) -> Tensor:
        return self._stat("runs", lambda: stats.argmax_runs(self.predictions()))

    def correct(self) -> Tensor:
        return self.predictions() == self.labels

    def accuracy_per_step(self) -> Tensor:
        return self.correct().double().mean(dim=1)

    def oct_steps(self) -> Tensor:
        return self._stat("oct", lambda: stats.optimal_cutoff_steps(self.correct()))

    def ops_cumulative(self) -> Tensor | None:
        if self.ops is None:
            return None
        return self._stat("ops_cumulative", lambda: self.ops.to(torch.float64).cumsum(dim=0))

    def predictions_at(self, steps: Tensor) -> Tensor:
        steps = check_steps(steps, self.N, self.T)
        return self.predictions()[steps - 1, torch.arange(self.N, device=steps.device)]

    def _stat(self, key: str, compute: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def __repr__(self) -> str:
        return f"TraceSummary(T={self.T}, N={self.N}, C={self.C}, max_set_size={self.max_set_size})"

    # ------------------------------------------------------------------- I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write the summary atomically (``weights_only`` readable)."""
        payload = {"format": FORMAT, "statistics": {k: v.cpu() for k, v in self.statistics.items()},
                   "labels": self.labels.cpu(), "C": self.C, "ops": None if self.ops is None else self.ops.cpu(),
                   "meta": json_ready(self.meta, "meta")}
        return atomic_torch_save(payload, check_path("path", path))

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> TraceSummary:
        """Read a summary written by :meth:`save` (``mmap=True``: mapped, not read whole)."""
        path = check_path("path", path)
        fix = "collect it again with collect_trace(..., keep='summary')"
        payload = load_torch(path, "snncutoff trace summary", fix, check_device(map_location), mmap)
        if payload.get("format") != FORMAT:
            raise CorruptFileError(f"{path} is not a snncutoff trace summary (format {payload.get('format')!r}); {fix}")
        try:
            return cls(payload["statistics"], payload["labels"], payload["C"], payload.get("ops"),
                       payload.get("meta") or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{path} holds an invalid trace summary: {exc}") from None
