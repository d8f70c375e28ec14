r"""``Trace``: what a spiking network said on a data set, step by step.

Notation (DESIGN.md, "The data everything flows through"): a network emits
per-step outputs :math:`y_\tau \in \mathbb{R}^{N \times C}`; the trace stores the
**cumulative** output

.. math::  O_t = \sum_{\tau \le t} y_\tau, \qquad t = 0, \dots, T-1

(the SNNCutoff convention: its argmax equals the running mean's, its softmax does
not), the labels, and optionally the per-step cost ``ops[t, n]`` of sample ``n``
(spikes or synaptic operations emitted during step ``t``).

Every figure snncutoff reports is computed from traces; collecting one runs the
network once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import stats
from .io import CorruptFileError, atomic_torch_save, load_torch
from .validation import (
    check_device,
    check_index,
    check_labels,
    check_meta,
    check_ops,
    check_outputs,
    check_path,
    check_steps,
    json_ready,
)

FORMAT_VERSION = 1


def cumulative(y: Tensor, rows: int = 4096) -> Tensor:
    """``[T, N, C]`` cumulative sums along T of per-step outputs, accumulated in float64 and stored in
    ``y``'s dtype, a few samples at a time (no float64 copy of the whole; the same values)."""
    out = torch.empty_like(y)
    for s in range(0, y.shape[1], rows):
        out[:, s : s + rows] = torch.cumsum(y[:, s : s + rows].double(), dim=0).to(y.dtype)
    return out


@dataclass(frozen=True, eq=False)
class Trace:
    """Cumulative outputs of an SNN over ``T`` steps on ``N`` labelled samples.

    Args:
        outputs: ``[T, N, C]`` float, cumulative output after ``t + 1`` steps. float16 and
            bfloat16 halve or quarter the memory, and every statistic is computed in that
            dtype: integer spike counts stay exact up to 2048 (float16) or 256 (bfloat16)
            per class, beyond which gaps round and ties appear that float32 would not
            have; real-valued outputs keep 11 (8) significant bits, so near-ties between
            classes and thresholds are decided at that precision. Use float32 when in doubt.
        labels: ``[N]`` integer class indices in ``[0, C)``.
        ops: optional ``[T, N]`` non-negative cost of each step (not cumulative).
        meta: optional JSON-ready description (backend, network, data set ...).

    Raises:
        ValueError / TypeError: on a wrong shape or dtype, ``T < 1``, ``N = 0``,
            labels outside ``[0, C)``, or NaN / infinite outputs (the message gives
            their count and the first ``(t, n)``).

    Example:
        >>> y = torch.tensor([[[1., 0.]], [[0., 2.]]])       # per-step, [T=2, N=1, C=2]
        >>> tr = Trace.from_steps(y, torch.tensor([1]))
        >>> tr.outputs[:, 0].tolist()
        [[1.0, 0.0], [1.0, 2.0]]
        >>> tr.predictions().tolist()
        [[0], [1]]
    """

    outputs: Tensor
    labels: Tensor
    ops: Tensor | None = None
    meta: dict = field(default_factory=dict)
    # statistics (gaps, softmax maxima ...) computed once per trace, lazily (see the methods below)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        outputs = check_outputs(self.outputs).detach()
        labels = check_labels(self.labels, outputs.shape[1], outputs.shape[2]).detach().to(outputs.device)
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "labels", labels)
        if self.ops is not None:
            object.__setattr__(self, "ops", check_ops(self.ops, outputs.shape[0], outputs.shape[1]).detach())
        object.__setattr__(self, "meta", check_meta(self.meta))

    # ------------------------------------------------------------------ build
    @classmethod
    def from_steps(
        cls,
        per_step_outputs: Tensor | Sequence[Tensor],
        labels: Tensor,
        ops: Tensor | None = None,
        meta: dict | None = None,
    ) -> Trace:
        """Build a trace from per-step outputs ``y_t`` (``[T, N, C]`` or a list of ``[N, C]``).

        The cumulative sum is taken along T with ``torch.cumsum`` in float64 and stored in
        the outputs' dtype (what CPU ``cumsum`` does for float32 anyway); streaming early
        exit accumulates the same way, so both see bit-identical cumulative outputs.
        """
        what = "per_step_outputs must be a [T, N, C] tensor or a list of [N, C] tensors"
        if not isinstance(per_step_outputs, Tensor):
            if not isinstance(per_step_outputs, (list, tuple)):
                raise TypeError(f"{what}, got {type(per_step_outputs).__name__}")
            if len(per_step_outputs) == 0:
                raise ValueError("per_step_outputs is empty: T must be >= 1")
            shapes = {tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__ for y in per_step_outputs}
            if len(shapes) != 1 or not all(isinstance(y, Tensor) for y in per_step_outputs):
                raise ValueError(f"{what}: every step must be a tensor of the same [N, C] shape, got "
                                 f"{sorted(map(str, shapes))}")
            per_step_outputs = torch.stack(list(per_step_outputs))
        check_outputs(per_step_outputs, "per_step_outputs")
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
        y = per_step_outputs.detach()
        return cls(cumulative(y), labels, ops, dict(meta or {}))

    @classmethod
    def cat(cls, traces: Sequence[Trace]) -> Trace:
        """Concatenate traces along N (same T and C; ``ops`` kept only if all have it)."""
        if isinstance(traces, Trace) or not isinstance(traces, (list, tuple)):
            raise TypeError(f"Trace.cat takes a list of traces, got {type(traces).__name__}")
        traces = list(traces)
        if not traces:
            raise ValueError("Trace.cat needs at least one trace")
        for i, tr in enumerate(traces):
            if not isinstance(tr, Trace):
                raise TypeError(f"Trace.cat: item {i} is a {type(tr).__name__}, not a Trace")
        T, _, C = traces[0].outputs.shape
        for i, tr in enumerate(traces):
            if (tr.T, tr.C) != (T, C):
                raise ValueError(f"Trace.cat: trace {i} has (T, C) = ({tr.T}, {tr.C}), expected ({T}, {C})")
        ops = None
        if all(tr.ops is not None for tr in traces):
            ops = torch.cat([tr.ops for tr in traces], dim=1)
        return cls(
            torch.cat([tr.outputs for tr in traces], dim=1),
            torch.cat([tr.labels for tr in traces]),
            ops,
            dict(traces[0].meta),
        )

    def subset(self, index: Tensor) -> Trace:
        """The samples ``index`` (``[K]`` indices or an ``[N]`` bool mask), in that order, with their ops and meta."""
        index = check_index(index, self.N).to(self.outputs.device)
        ops = None if self.ops is None else self.ops[:, index.to(self.ops.device)]
        return Trace(self.outputs[:, index], self.labels[index], ops, dict(self.meta))

    # ------------------------------------------------------------------ sizes
    @property
    def T(self) -> int:
        """Number of timesteps."""
        return self.outputs.shape[0]

    @property
    def N(self) -> int:
        """Number of samples."""
        return self.outputs.shape[1]

    @property
    def C(self) -> int:
        """Number of classes."""
        return self.outputs.shape[2]

    # ---------------------------------------------------------- statistics
    # Each is computed once per trace (the trace is immutable) and kept with it, so every
    # policy, evaluation and sweep on the same trace shares it. The maths is in snncutoff.stats.
    def _stat(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def predictions(self) -> Tensor:
        """``[T, N]`` argmax of the cumulative output at every step (first index on ties)."""
        if "top2" in self._cache:
            return self._cache["top2"][1]
        return self._stat("predictions", lambda: self.outputs.argmax(dim=-1))

    def gaps(self) -> Tensor:
        """``[T, N]`` top-1 minus top-2 of the cumulative output (:func:`snncutoff.stats.top2_gap`).

        Uses the one-pass compiled kernel where it was built (same values: the outputs are
        validated finite); the argmax it finds on the way is kept as :meth:`predictions`."""

        def compute() -> tuple[Tensor, Tensor]:
            return stats.top2_gap_of_finite(self.outputs)

        if self.C < 2:
            raise ValueError(f"the top-1 / top-2 gap needs C >= 2 classes, got C = {self.C}")
        return self._stat("top2", compute)[0]

    def max_softmax(self) -> Tensor:
        """``[T, N]`` largest softmax probability of the cumulative output (outputs' dtype)."""
        return self._stat("max_softmax", lambda: stats.max_softmax(self.outputs))

    def softmax_argmax(self) -> Tensor:
        """``[T, N]`` argmax of the softmax (differs from :meth:`predictions` only where softmax rounds to a tie)."""
        return self._stat("softmax_argmax", lambda: stats.softmax_argmax(self.outputs))

    def normalized_entropy(self) -> Tensor:
        """``[T, N]`` entropy of the softmax of the cumulative output over ``log C``, in [0, 1]."""
        return self._stat("entropy", lambda: stats.normalized_entropy(self.outputs))

    def max_softmax_of_mean(self) -> Tensor:
        """``[T, N]`` largest softmax probability of the mean output ``O_t / (t + 1)``."""
        steps = torch.arange(1, self.T + 1, device=self.outputs.device).view(-1, 1)
        return self._stat("max_softmax_of_mean", lambda: stats.max_softmax_of_mean(self.outputs, steps))

    def label_nonconformity(self) -> Tensor:
        """``[T, N]`` SpikeCP nonconformity of each sample's own label (see :mod:`snncutoff.stats`)."""
        return self._stat("label_nonconformity", lambda: stats.nonconformity(self.outputs, self.labels))

    def argmax_runs(self) -> Tensor:
        """``[T, N]`` int64: steps in a row, ending at t, with the argmax of step t (``>= 1``)."""
        return self._stat("runs", lambda: stats.argmax_runs(self.predictions()))

    def kth_nonconformity(self, k: int) -> Tensor:
        """``[T, N]`` k-th smallest SpikeCP nonconformity over the classes (see :mod:`snncutoff.stats`)."""
        return self._stat(("kth_nonconformity", k), lambda: stats.kth_nonconformity(self.outputs, k))

    def oct_steps(self) -> Tensor:
        """``[N]`` int64 Optimal Cutoff Timestep of every sample, 1-based (see :mod:`snncutoff.oct`)."""
        return self._stat("oct", lambda: stats.optimal_cutoff_steps(self.correct()))

    def ops_cumulative(self) -> Tensor | None:
        """``[T, N]`` float64 operations up to and including each step, or None without ``ops``."""
        if self.ops is None:
            return None
        return self._stat("ops_cumulative", lambda: self.ops.to(torch.float64).cumsum(dim=0))

    def summary(self, max_set_size: int = 1) -> Any:
        """The :class:`~snncutoff.summary.TraceSummary` of this trace: every statistic the policies and the
        OCT read, O(T N), giving them the same results (``Conformal`` up to ``max_set_size``)."""
        from .summary import TraceSummary

        return TraceSummary.of(self, max_set_size)

    def predictions_at(self, steps: Tensor) -> Tensor:
        """``[N]`` prediction of sample n after ``steps[n]`` steps (1-based, ``[N]`` int).

        Reads the ``[T, N]`` predictions when they have been computed, otherwise takes the
        argmax of the N selected rows only.
        """
        steps = check_steps(steps, self.N, self.T)
        rows = torch.arange(self.N, device=steps.device)
        if "top2" in self._cache or "predictions" in self._cache:
            return self.predictions()[steps - 1, rows]
        return self.outputs[steps - 1, rows].argmax(dim=-1)

    def correct(self) -> Tensor:
        """``[T, N]`` bool: the prediction at step t is the label."""
        return self.predictions() == self.labels

    def accuracy_per_step(self) -> Tensor:
        """``[T]`` float64 accuracy (0 to 1) at every step."""
        return self.correct().double().mean(dim=1)

    def per_step_outputs(self) -> Tensor:
        """``[T, N, C]`` the per-step outputs ``y_t`` (differences of the cumulative ones)."""
        return torch.diff(self.outputs, dim=0, prepend=torch.zeros_like(self.outputs[:1]))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}}

    def __repr__(self) -> str:
        ops = ", ops" if self.ops is not None else ""
        return f"Trace(T={self.T}, N={self.N}, C={self.C}{ops})"

    # ------------------------------------------------------------------- I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write the trace atomically; readable with ``torch.load(weights_only=True)``.

        ``meta`` is written as JSON-ready data (numpy scalars, dates and paths converted, even
        if they were put in after the trace was made), so what saves loads."""
        payload = {
            "format_version": FORMAT_VERSION,
            "outputs": self.outputs.cpu(),
            "labels": self.labels.cpu(),
            "ops": None if self.ops is None else self.ops.cpu(),
            "meta": json_ready(self.meta, "meta"),
        }
        return atomic_torch_save(payload, check_path("path", path))

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False) -> Trace:
        """Read a trace written by :meth:`save` (``weights_only=True``: no code is run).

        ``mmap=True`` maps the file's outputs into memory instead of reading them: a trace larger
        than memory is evaluated from disk, its pages read as the statistics need them (validation
        reads them once; every statistic is then kept, ``[T, N]``, in memory).

        Raises:
            FileNotFoundError: no such file.
            CorruptFileError: empty, truncated, foreign or newer-format file (one line naming it).
            ValueError: the stored tensors do not form a valid trace.
        """
        path = check_path("path", path)
        fix = "collect it again (snncutoff.collect_trace, snncutoff-bench compare) and save it with Trace.save"
        payload = load_torch(path, "snncutoff trace", fix, check_device(map_location), mmap)
        version = payload.get("format_version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise CorruptFileError(f"{path} has an invalid trace format {version!r}; {fix}")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise CorruptFileError(f"{path} has trace format {version}, newer than this snncutoff reads "
                                   f"({FORMAT_VERSION}); upgrade snncutoff")
        if "statistics" in payload and "outputs" not in payload:
            raise CorruptFileError(f"{path} holds a trace summary (collect_trace(..., keep='summary')), not the "
                                   "outputs: read it with snncutoff.TraceSummary.load")
        if version is None or "outputs" not in payload or "labels" not in payload:
            keys = ", ".join(map(str, payload))
            raise CorruptFileError(f"{path} is not a snncutoff trace file (keys: {keys}); {fix}")
        try:
            return cls(payload["outputs"], payload["labels"], payload.get("ops"), payload.get("meta") or {})
        except (TypeError, ValueError) as exc:
            raise CorruptFileError(f"{path} holds an invalid trace: {exc}") from None
