"""Where the samples of an early-exit run come from, and their input at each step.

A feed hands out new samples as rows free up (``take``) and builds the inputs of the
running rows for the next k steps (``frames``): one batch at once (:class:`BatchFeed`),
a data loader read as slots free up (:class:`LoaderFeed`, continuous batching), or the
frames of a stream arriving step by step (:class:`StreamFeed`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ..collect import Encoder, _split, encode
from ..validation import INPUT_HINT, batch_labels, check_finite


def check_classes(labels: Tensor, classes: int | None) -> None:
    """Labels the outputs ``[.., C]`` can be compared with: ``[0, C)``."""
    if classes is not None and labels.numel() and int(labels.max()) >= classes:
        raise ValueError(f"labels must lie in [0, C) = [0, {classes}) (the network's outputs have {classes} "
                         f"classes), found {int(labels.max())}")


class Feed:
    """Where the samples of an early-exit run come from, and their input at each step.

    ``take(free)`` returns up to ``free`` new samples (all there are when ``free`` is
    None) as a payload ``[m, ...]``, or None; ``pending`` says whether more may come;
    ``frames(payload, t_rows, k)`` returns the inputs ``[k, n, ...]`` of steps
    ``t_rows .. t_rows + k - 1`` of the running samples (their payload rows)."""

    capacity: int | None = None
    pending: bool = True
    #: classes C of the network's outputs (set by the loop at the first step)
    classes: int | None = None

    def take(self, free: int | None) -> Tensor | None:
        raise NotImplementedError

    def frames(self, payload: Tensor, t_rows: Tensor, k: int) -> Tensor:
        raise NotImplementedError


class Payload(Feed):
    """Per-sample inputs: static images ``[n, ...]`` (``"direct"``) or sequences ``[n, T, ...]``."""

    def __init__(self, direct: bool) -> None:
        self.direct = direct

    def frames(self, payload: Tensor, t_rows: Tensor, k: int) -> Tensor:
        if self.direct:
            return payload.unsqueeze(0).expand(k, *payload.shape)
        steps = t_rows.to(payload.device).view(1, -1) + torch.arange(k, device=payload.device).view(-1, 1)
        steps = steps.clamp_(max=payload.shape[1] - 1)  # padding past a row's last frame (see _block_length)
        return payload[torch.arange(payload.shape[0], device=payload.device).view(1, -1), steps]


class BatchFeed(Payload):
    """One batch, admitted at once (:func:`early_exit`)."""

    def __init__(self, inputs: Tensor, T: int, encoder: Encoder) -> None:
        if encoder == "none":
            raise ValueError("early exit steps the network one step at a time: encoder='none' (a network that "
                             "loops over time itself) cannot stop early; give it per-step inputs instead")
        super().__init__(encoder == "direct")
        if not isinstance(inputs, Tensor):
            raise TypeError(f"inputs must be a torch.Tensor batch, got {type(inputs).__name__}")
        if inputs.is_floating_point():
            check_finite("inputs", inputs, ("n",), INPUT_HINT)
        self.inputs = inputs if self.direct else encode(inputs, T, encoder).transpose(0, 1)  # [N, T, ...]

    def take(self, free: int | None) -> Tensor | None:
        x, self.inputs, self.pending = self.inputs, None, False
        if x is not None:
            self.capacity = x.shape[0]
        return x


class LoaderFeed(Payload):
    """Samples of a data loader, taken as slots free up (continuous batching)."""

    def __init__(self, data: Iterable, T: int, encoder: Encoder, device, capacity: int | None) -> None:
        if not callable(encoder) and encoder not in ("direct", "frames", "time_major"):
            raise ValueError("refill=True needs encoder 'direct', 'frames', 'time_major' or a callable, "
                             f"got {encoder!r}")
        super().__init__(encoder == "direct")
        if isinstance(data, (Tensor, str)) or not hasattr(data, "__iter__"):
            raise TypeError(f"data must be an iterable of (inputs, labels) batches, got {type(data).__name__}")
        self.batches, self.T, self.encoder, self.device = iter(data), T, encoder, device
        self.sample_shape: tuple | None = None  # of every sample's payload, set by the first batch
        self.capacity = capacity
        self.queue: list[Tensor] = []  # batches (or what is left of them) waiting for slots
        self.waiting = 0  # samples in the queue
        self.labels: list[Tensor] = []

    def _next_batch(self) -> bool:
        batch = next(self.batches, None)
        if batch is None:
            self.pending = False
            return False
        x, y = _split(batch)
        x = x.to(self.device) if self.device is not None else x
        if x.is_floating_point():
            check_finite("inputs", x, ("n",), INPUT_HINT)
        if callable(self.encoder):  # encoded batch by batch as it is read, as collect_trace does
            x = encode(x, self.T, self.encoder).transpose(0, 1)
        elif self.encoder == "time_major":
            x = x.transpose(0, 1)
        if not self.direct and x.shape[1] < self.T:
            raise ValueError(f"encoder={self.encoder!r}: the data holds {x.shape[1]} frames, fewer than T = {self.T}")
        if self.sample_shape is None:
            self.sample_shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"refill=True runs samples of different batches together, so every sample must have "
                             f"the same shape: a batch has {list(x.shape[1:])} per sample after "
                             f"{list(self.sample_shape)}")
        self.queue.append(x)
        self.waiting += x.shape[0]
        self.labels.append(batch_labels(y, x.shape[0]))
        if self.capacity is None:
            self.capacity = x.shape[0]
        return True

    def take(self, free: int | None) -> Tensor | None:
        while (not self.waiting or (free is not None and self.waiting < free)) and self._next_batch():
            pass
        free = self.capacity if free is None else free
        if not self.waiting or free <= 0:
            self.pending = bool(self.waiting) or self.pending
            return None
        parts, need = [], min(free, self.waiting)
        self.waiting -= need
        while need:  # the first rows of the queued batches, in order
            head = self.queue[0]
            parts.append(head[:need])
            if head.shape[0] > need:
                self.queue[0] = head[need:]
            else:
                self.queue.pop(0)
            need -= parts[-1].shape[0]
        self.pending = bool(self.waiting) or self.pending
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class StreamFeed(Feed):
    """Frames of a whole batch arriving one step at a time (:func:`stream_early_exit`)."""

    def __init__(self, frames: Iterable[Tensor]) -> None:
        if isinstance(frames, (Tensor, str)) or not hasattr(frames, "__iter__"):
            raise TypeError("frames must be an iterable of [N, ...] tensors, one per step (a list, a generator), "
                            f"got {type(frames).__name__}")
        self.it = iter(frames)
        self.first: Tensor | None = None
        self.t = 0

    def take(self, free: int | None) -> Tensor | None:
        if not self.pending:
            return None
        self.pending = False
        self.first = self._check(next(self.it, None))
        if self.first is None:
            return None
        self.capacity = self.first.shape[0]
        return torch.arange(self.capacity, device=self.first.device)  # payload: each row's batch index

    def _check(self, frame: object) -> Tensor | None:
        if frame is None:
            return None
        if not isinstance(frame, Tensor) or frame.dim() < 1:
            raise TypeError(f"frame {self.t} of the stream is a {type(frame).__name__}, not an [N, ...] tensor")
        if self.capacity is not None and frame.shape[0] != self.capacity:
            raise ValueError(f"frame {self.t} of the stream has {frame.shape[0]} rows, the first had {self.capacity}: "
                             "every frame holds the whole batch (rows of exited samples are dropped here)")
        if frame.is_floating_point():
            check_finite(f"frame {self.t} of the stream", frame, ("n",), INPUT_HINT)
        self.t += 1
        return frame

    def frames(self, payload: Tensor, t_rows: Tensor, k: int) -> Tensor | None:
        frame, self.first = (self.first, None) if self.first is not None else (self._check(next(self.it, None)), None)
        if frame is None:
            return None
        if payload.numel() != frame.shape[0]:
            frame = frame[payload.to(frame.device)]
        return frame.unsqueeze(0)
