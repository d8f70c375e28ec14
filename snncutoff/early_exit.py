"""Real early exit: step the network, stop each sample at its cutoff, compute only for the rest.

At every step t (0-based) the samples still running advance one step; the policy
decides from their cumulative outputs (``policy.exit_now(t, O_t)`` — the same code as
``policy.evaluate`` on a trace); exiting samples are recorded (exit step ``t + 1``,
prediction ``argmax O_t``) and dropped from the batch and from every neuron's state
(``backend.select``), so later steps cost only what is still running. Every sample
exits at step T at the latest. Once few samples remain, several steps run in one call
before the next decision (``block``, see :func:`early_exit`): the decisions are the
same, each made for its own step.

Cumulative outputs are accumulated in float64 and read in the outputs' dtype, exactly
as :meth:`Trace.from_steps` does, so exit steps and predictions equal
``policy.evaluate(collect_trace(...))`` sample for sample.

Three forms:

- :func:`stream_early_exit` — a generator for streaming data: feed one input frame per
  step (for the whole batch), receive an :class:`ExitEvent` whenever samples exit;
- :func:`early_exit` — one batch, returns the per-sample results;
- :func:`early_exit_loader` — a whole data loader, returns a :class:`CutoffResult` with
  wall time and (``count_ops=True``) operations up to each sample's exit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._progress import bar
from ._progress import progress as progress_bar
from .backends import resolve
from .collect import Encoder, _split, encode
from .cutoff.base import CutoffPolicy
from .result import CutoffResult
from .validation import check_finite


@dataclass(frozen=True)
class ExitEvent:
    """Samples that stopped at ``step`` (1-based): their batch indices and predictions.

    ``ops`` (``[K]``, with ``count_ops``) is each one's operations up to this step.
    """

    step: int
    indices: Tensor
    predictions: Tensor
    ops: Tensor | None = None


_Exits = tuple[Tensor, Tensor, Tensor, Tensor | None]
"""Samples leaving at one decision point: ``(exit_step, indices, predictions, ops)``, each ``[m]``."""


def _resolve_T(policy: CutoffPolicy, T: int | None) -> int:
    fitted = getattr(policy, "T_", None)
    if T is None:
        if fitted is None:
            raise ValueError(f"{policy!r} is not fitted on a trace: pass T (the largest number of steps)")
        return fitted
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T!r}")
    if fitted is not None and fitted != T:
        raise ValueError(f"{policy!r} was fitted on T = {fitted} steps, but T = {T} was asked for")
    return T


def _block_length(block: int | str, T: int, t_max: int, running: int, capacity: int, pending: bool) -> int:
    """Steps to run before the next decision point (``block="auto"``: see :func:`early_exit`).

    One step while new samples may still join (refill); never past the forced exit of
    the row furthest on (``t_max``)."""
    if pending:
        return 1
    k = min(max(1, capacity // (2 * running)), max(1, T // 2)) if block == "auto" else block
    return min(k, T - t_max)


def _check_block(block: int | str) -> int | str:
    if block == "auto" or (isinstance(block, int) and not isinstance(block, bool) and block >= 1):
        return block
    raise ValueError(f"block must be 'auto' or an integer >= 1, got {block!r}")


def _running_sum(start: Tensor | None, steps: Tensor) -> Tensor:
    """``start + steps[0]``, ``+ steps[1]``, ... added one step at a time in float64 (``[k, ...]``).

    The same additions, in the same order, as the float64 cumulative sum of
    :meth:`Trace.from_steps`, so blocks of any length give the same bits."""
    if start is None:
        return steps.double() if steps.shape[0] == 1 else steps.double().cumsum(0)
    if steps.shape[0] == 1:  # one mixed add: float64 + x is float64 + x.double()
        return start.unsqueeze(0) + steps
    return torch.cat([start.unsqueeze(0), steps.double()]).cumsum(0)[1:]


def _grow(a: Tensor, n: int) -> Tensor:
    """``a`` with zero rows appended up to ``n`` rows."""
    return a if a.shape[0] == n else torch.cat([a, a.new_zeros((n - a.shape[0], *a.shape[1:]))])


class _Feed:
    """Where the samples of an early-exit run come from, and their input at each step.

    ``take(free)`` returns up to ``free`` new samples (all there are when ``free`` is
    None) as a payload ``[m, ...]``, or None; ``pending`` says whether more may come;
    ``frames(payload, t_rows, k)`` returns the inputs ``[k, n, ...]`` of steps
    ``t_rows .. t_rows + k - 1`` of the running samples (their payload rows)."""

    capacity: int | None = None
    pending: bool = True

    def take(self, free: int | None) -> Tensor | None:
        raise NotImplementedError

    def frames(self, payload: Tensor, t_rows: Tensor, k: int) -> Tensor:
        raise NotImplementedError


class _Payload(_Feed):
    """Per-sample inputs: static images ``[n, ...]`` (``"direct"``) or sequences ``[n, T, ...]``."""

    def __init__(self, direct: bool) -> None:
        self.direct = direct

    def frames(self, payload: Tensor, t_rows: Tensor, k: int) -> Tensor:
        if self.direct:
            return payload.unsqueeze(0).expand(k, *payload.shape)
        steps = t_rows.to(payload.device).view(1, -1) + torch.arange(k, device=payload.device).view(-1, 1)
        return payload[torch.arange(payload.shape[0], device=payload.device).view(1, -1), steps]


class _BatchFeed(_Payload):
    """One batch, admitted at once (:func:`early_exit`)."""

    def __init__(self, inputs: Tensor, T: int, encoder: Encoder) -> None:
        if encoder == "none":
            raise ValueError("early exit steps the network one step at a time: encoder='none' (a network that "
                             "loops over time itself) cannot stop early; give it per-step inputs instead")
        super().__init__(encoder == "direct")
        self.inputs = inputs if self.direct else encode(inputs, T, encoder).transpose(0, 1)  # [N, T, ...]

    def take(self, free: int | None) -> Tensor | None:
        x, self.inputs, self.pending = self.inputs, None, False
        if x is not None:
            self.capacity = x.shape[0]
        return x


class _LoaderFeed(_Payload):
    """Samples of a data loader, taken as slots free up (continuous batching)."""

    def __init__(self, data: Iterable, T: int, encoder: Encoder, device, capacity: int | None) -> None:
        if not callable(encoder) and encoder not in ("direct", "frames", "time_major"):
            raise ValueError("refill=True needs encoder 'direct', 'frames', 'time_major' or a callable, "
                             f"got {encoder!r}")
        super().__init__(encoder == "direct")
        self.batches, self.T, self.encoder, self.device = iter(data), T, encoder, device
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
            check_finite("inputs", x)
        if callable(self.encoder):  # encoded batch by batch as it is read, as collect_trace does
            x = encode(x, self.T, self.encoder).transpose(0, 1)
        elif self.encoder == "time_major":
            x = x.transpose(0, 1)
        if not self.direct and x.shape[1] < self.T:
            raise ValueError(f"encoder={self.encoder!r}: the data holds {x.shape[1]} frames, fewer than T = {self.T}")
        self.queue.append(x)
        self.waiting += x.shape[0]
        self.labels.append(torch.as_tensor(y).cpu().long())
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


class _StreamFeed(_Feed):
    """Frames of a whole batch arriving one step at a time (:func:`stream_early_exit`)."""

    def __init__(self, frames: Iterable[Tensor]) -> None:
        self.it = iter(frames)
        self.first: Tensor | None = None

    def take(self, free: int | None) -> Tensor | None:
        if not self.pending:
            return None
        self.pending = False
        self.first = next(self.it, None)
        if self.first is None:
            return None
        self.capacity = self.first.shape[0]
        return torch.arange(self.capacity, device=self.first.device)  # payload: each row's batch index

    def frames(self, payload: Tensor, t_rows: Tensor, k: int) -> Tensor | None:
        frame, self.first = (self.first, None) if self.first is not None else (next(self.it, None), None)
        if frame is None:
            return None
        if payload.numel() != frame.shape[0]:
            frame = frame[payload.to(frame.device)]
        return frame.unsqueeze(0)


class _Pool:
    """The samples running now, one row each in every per-row tensor, kept aligned here.

    ``payload`` (what the feed needs to make their inputs), ``ids`` (order of admission),
    ``t`` (steps taken), ``cum`` (float64 cumulative outputs ``[n, C]``, None before the
    first step), ``spent`` (operations so far, with ``count_ops``) and ``state`` (the
    policy's per-sample state, for rules that look back)."""

    def __init__(self, policy: CutoffPolicy, count_ops: bool) -> None:
        self.policy, self.count_ops = policy, count_ops
        self.payload = self.ids = self.t = self.cum = self.spent = self.state = None
        self.admitted = 0

    @property
    def n(self) -> int:
        return 0 if self.ids is None else self.ids.shape[0]

    def _fresh(self, payload: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        m, device = payload.shape[0], payload.device
        ids = torch.arange(self.admitted, self.admitted + m, device=device)
        self.admitted += m
        return ids, torch.zeros(m, dtype=torch.long, device=device), self.policy.initial_state(m, device)

    def add(self, payload: Tensor) -> None:
        """Append new samples after the running ones (they start at step 0)."""
        ids, t, state = self._fresh(payload)
        if self.ids is None:
            self.payload, self.ids, self.t, self.state = payload, ids, t, state
            return
        self.payload, self.ids = torch.cat([self.payload, payload]), torch.cat([self.ids, ids])
        self.t = torch.cat([self.t, t])
        self.state = None if state is None else torch.cat([self.state, state.to(self.state)])
        n = self.ids.shape[0]
        self.cum = None if self.cum is None else _grow(self.cum, n)
        self.spent = None if self.spent is None else _grow(self.spent, n)

    def refill(self, slots: Tensor, payload: Tensor) -> None:
        """New samples take over rows ``slots`` (of exited ones), from step 0."""
        ids, _, state = self._fresh(payload)
        self.payload = self.payload.index_copy(0, slots.to(self.payload.device), payload.to(self.payload.dtype))
        sd = slots.to(self.ids.device)
        self.ids, self.t = self.ids.index_copy(0, sd, ids.to(self.ids.device)), self.t.index_fill(0, sd, 0)
        self.cum = self.cum.index_fill(0, slots.to(self.cum.device), 0.0)
        if self.spent is not None:
            self.spent = self.spent.index_fill(0, slots.to(self.spent.device), 0.0)
        if self.state is not None:
            self.state = self.state.index_copy(0, slots.to(self.state.device), state.to(self.state))

    def keep(self, rows: Tensor) -> None:
        """Keep only rows ``rows`` (the others have left)."""
        self.payload = self.payload.index_select(0, rows.to(self.payload.device))
        self.ids, self.t = self.ids.index_select(0, rows.to(self.ids.device)), self.t.index_select(0, rows)
        for name in ("cum", "spent", "state"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, v.index_select(0, rows.to(v.device)))

    def span(self) -> tuple[int, int]:
        """The earliest and the latest step count among the running samples."""
        return int(self.t.min()), int(self.t.max())


class _Session:
    """One early-exit run of a network: eval mode (every module's own mode restored after),
    neuron state reset at the start and at the end, the operation recorder, and the network
    calls, checked against what early exit needs of them."""

    def __init__(self, backend: Any, net: nn.Module, readout: Any, count_ops: bool, block: int | str) -> None:
        self.backend, self.net, self.readout = backend, net, readout
        backend.check_network(net)
        whole = [type(m).__name__ for m in net.modules() if backend.processes_sequences(m)]
        if whole:
            raise ValueError(
                f"{type(net).__name__} holds {whole[0]}, which computes a whole sequence per call (its output at "
                "step t depends on the sequence it is given), so early exit cannot run it a step or a block at a "
                "time. Measure its cutoff post hoc: collect_trace(...), then policy.evaluate(trace)"
            )
        self.multistep = backend.is_multistep(net)
        self.plan = None if self.multistep else backend.block_plan(net, readout)
        # stepping through a block one call at a time saves nothing
        self.block = block if (self.plan is not None or self.multistep) else 1
        self.stateful = backend.stateful_modules(net)  # found once, not at every exit
        self.count_ops = count_ops
        self.first_batch: int | None = None

    def __enter__(self) -> _Session:
        self.modes = [(m, m.training) for m in self.net.modules()]
        if any(mode for _, mode in self.modes):
            self.net.eval()
        self.backend.reset(self.net, modules=self.stateful)
        self.recorder = self.backend.record(self.net, multistep=self.multistep, T=1) if self.count_ops else None
        self.rec = self.recorder.__enter__() if self.recorder is not None else None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.recorder is not None:
            self.recorder.__exit__(None, None, None)
        self.backend.reset(self.net, modules=self.stateful)
        for m, mode in self.modes:
            m.training = mode

    def keep(self, rows: Tensor) -> None:
        self.backend.select(self.net, rows, modules=self.stateful)

    def admit(self, m: int) -> None:
        self.backend.admit(self.net, m, modules=self.stateful)

    def reset_rows(self, slots: Tensor, n: int) -> None:
        self.backend.reset_rows(self.net, slots, n, modules=self.stateful)

    def run(self, x: Tensor, t_first: int) -> tuple[Tensor, Tensor | None]:
        """Steps ``[k, n, ...]`` -> per-step outputs ``[k, n, C]`` and operations ``[k, n]`` (or None)."""
        k, n = x.shape[:2]
        if self.first_batch is None:
            self.first_batch = n
        try:
            if k == 1 and not self.multistep:
                y = self.backend.step(self.net, x[0], self.readout)
                y = y.unsqueeze(0) if isinstance(y, Tensor) and y.dim() == 2 else y
            else:
                y = self.backend.run_block(self.net, x, self.readout, self.plan)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ValueError(self._failure(exc, n)) from exc
        self._check(y, k, n)
        check_finite(f"outputs at step {t_first}" if k == 1 else f"outputs at steps {t_first}..{t_first + k - 1}", y)
        ops = self.rec.take_ops(k).view(k, -1) if self.rec is not None else None
        return y, ops

    def _failure(self, exc: BaseException, n: int) -> str:
        what = f"running {type(self.net).__name__} for early exit failed on a batch of {n}: {exc}"
        if self.first_batch is not None and n < self.first_batch:
            return (f"{what}. Early exit drops samples from the batch as they exit (it had {self.first_batch}), so "
                    "the network must take any batch size: a forward that reshapes with a fixed batch size, such "
                    "as x.view(batch_size, -1), must use x.flatten(1) (or x.view(x.shape[0], -1))")
        return what

    def _check(self, y: Any, k: int, n: int) -> None:
        name = type(self.net).__name__
        if not isinstance(y, Tensor):
            raise ValueError(f"{name}'s output, read with readout={self.readout!r}, is a {type(y).__name__}, not "
                             "a tensor of per-step outputs; pass a readout that picks it")
        if y.dim() == 3 and y.shape[:2] == (k, n):
            return
        shape = tuple(y.shape)
        if k == 1 and not self.multistep and y.dim() == 3 and y.shape[1] == n:
            raise ValueError(
                f"{name} returned a {list(shape)} tensor for one step of a batch of {n}: its forward seems to loop "
                "over time itself (stacked records [T, N, C]). Early exit steps a network one step per call: give "
                "it a network whose forward takes one step (snnTorch: layers and Leaky(init_hidden=True) neurons "
                "in an nn.Sequential, the last with output=True; SpikingJelly: single-step mode). A network that "
                "loops over time can still be measured post hoc: collect_trace(..., encoder='none', "
                "multistep=True), then policy.evaluate(trace)"
            )
        if y.dim() == 3 and y.shape[0] == k and y.shape[1] != n:
            raise ValueError(
                f"{name} returned {list(shape)} for a batch of {n} samples: the output's batch dimension must "
                f"be the input's. Early exit drops samples from the batch as they exit, so a forward that "
                "reshapes with a fixed batch size (x.view(batch_size, -1)) must use x.flatten(1)"
            )
        raise ValueError(f"{name}'s per-step output must be [N, C] = [{n}, C] ([k, N, C] for a block of k steps), "
                         f"got {list(shape)} (readout={self.readout!r})")


def _decide(policy: CutoffPolicy, pool: _Pool, out: Tensor, k: int, T: int, t_first: int, t_max: int) -> Tensor:
    """``[k, n]`` decisions for the block's k steps (the forced exit at T included)."""
    if t_first == t_max:  # every row at the same step (always, without refill)
        done = policy.exit_block(t_first, out, pool.state)
        if t_first + k == T:
            done[-1] = True  # the forced exit (also for rules that need no fit)
        return done
    steps = pool.t.to(out.device).view(1, -1) + torch.arange(k, device=out.device).view(-1, 1)
    return policy.exit_block(pool.t, out, pool.state) | (steps == T - 1)


@torch.no_grad()
def _exits(backend, net, feed: _Feed, policy: CutoffPolicy, T: int, readout, count_ops: bool,
           block: int | str) -> Iterator[_Exits]:
    """The early-exit loop behind every form: one record per decision point at which
    samples exit (``indices`` count samples in the order the feed admitted them)."""
    pool = _Pool(policy, count_ops)
    with _Session(backend, net, readout, count_ops, block) as session:
        while True:
            new = feed.take(None if pool.ids is None else feed.capacity - pool.n) if feed.pending else None
            if new is not None:
                if pool.ids is not None:  # fresh rows after the running ones start from the initial state
                    session.admit(new.shape[0])
                pool.add(new)
            if pool.n == 0:
                return
            n, (t_first, t_max) = pool.n, pool.span()
            k = _block_length(session.block, T, t_max, n, feed.capacity, feed.pending)
            x = feed.frames(pool.payload, pool.t, k)
            if x is None:
                raise ValueError(f"frames ended after {t_max} steps with samples still running (T = {T})")
            k = x.shape[0]
            y, ops = session.run(x, t_first)
            cum_k = _running_sum(pool.cum, y)
            out = cum_k.to(y.dtype)  # [k, n, C]
            spent_k = _running_sum(pool.spent, ops) if ops is not None else None
            done = _decide(policy, pool, out, k, T, t_first, t_max)
            pool.t, pool.cum = pool.t + k, cum_k[-1]
            pool.spent = spent_k[-1] if spent_k is not None else None
            exited = done[0] if k == 1 else done.any(0)
            if not bool(exited.any()):
                continue
            first = done.to(torch.uint8).argmax(0)  # [n]: the block step of each exit
            rows = exited.nonzero().flatten()
            at = first[rows]
            exit_step = pool.t[rows.to(pool.t.device)] - k + at.to(pool.t.device) + 1
            yield (exit_step, pool.ids[rows.to(pool.ids.device)], out[at, rows].argmax(-1),
                   spent_k[at, rows] if spent_k is not None else None)
            new = feed.take(rows.numel()) if feed.pending else None
            if new is not None:  # the next samples take over freed rows in place (nothing else is copied)
                slots = rows[: new.shape[0]]
                session.reset_rows(slots, n)
                pool.refill(slots, new)
                exited = exited.index_fill(0, slots, False)
            if new is None or new.shape[0] < rows.numel():  # rows nobody takes over leave the batch
                keep = (~exited).nonzero().flatten()
                session.keep(keep)
                pool.keep(keep)


def stream_early_exit(
    backend: Any,
    net: nn.Module,
    frames: Iterable[Tensor],
    policy: CutoffPolicy,
    T: int | None = None,
    *,
    readout: str | Callable = "auto",
    count_ops: bool = False,
) -> Iterator[ExitEvent]:
    """Run ``net`` one step per incoming frame and yield the samples that exit at each step.

    Args:
        backend: the network's backend (or its name).
        net: converted or user-written network (stepped one step at a time; a
            SpikingJelly multi-step network is fed ``[1, N, ...]`` per step).
        frames: the input of each step for the whole batch, ``[N, ...]``, in time order
            (the caller does not track who has exited: rows of exited samples are dropped
            here). At most T frames are read.
        policy: a cutoff policy (fitted, or a rule such as ``Confidence``).
        T: the last step (forced exit); defaults to the fitted policy's ``T_``.
        readout: as in :func:`snncutoff.collect_trace`.
        count_ops: attach per-sample operations to each event.

    Yields:
        :class:`ExitEvent` for each step where at least one sample stops. Stops after
        every sample has exited (it does not read further frames).
    """
    backend, T = resolve(backend), _resolve_T(policy, T)
    for steps, indices, predictions, ops in _exits(backend, net, _StreamFeed(frames), policy, T, readout,
                                                    count_ops, 1):
        for s in steps.unique().tolist():  # one step per decision point here (block 1); kept general
            sel = (steps == s).nonzero().flatten()
            yield ExitEvent(int(s), indices[sel.to(indices.device)], predictions[sel],
                            ops[sel] if ops is not None else None)


def early_exit(
    backend: Any,
    net: nn.Module,
    inputs: Tensor,
    policy: CutoffPolicy,
    T: int | None = None,
    *,
    encoder: Encoder = "direct",
    readout: str | Callable = "auto",
    count_ops: bool = False,
    block: int | str = "auto",
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Early exit on one batch.

    Args:
        inputs: the batch as the encoder expects it (``[N, ...]`` static images for
            ``"direct"``, ``[N, T, ...]`` frames for ``"frames"``, ``[T, N, ...]`` for
            ``"time_major"``, or what a callable encoder takes).
        block: steps run between two decision points. ``1``: decide after every step.
            ``"auto"`` (default): one step while many samples run, then, once only n of
            the batch's N samples are left, blocks of ``N // (2 n)`` steps (at most T / 2,
            so the last samples do not run far past their exit) in one call
            (a multi-step network, or a single-step ``nn.Sequential`` run layer by layer:
            see :meth:`Backend.run_block`), so the last few samples do not pay a whole
            network call per step. Decisions, exit steps, predictions and operations are
            the same for every block length: only the compute spent by samples after
            their exit inside a block differs (it is not counted in ``ops``).
    Returns:
        ``(exit_step [N] (1-based), predictions [N], ops [N] or None)``.
    """
    backend, T = resolve(backend), _resolve_T(policy, T)
    feed = _BatchFeed(inputs, T, encoder)
    n = feed.inputs.shape[0]
    exit_step = torch.full((n,), T, dtype=torch.long)
    predictions = torch.empty(n, dtype=torch.long)
    ops = torch.zeros(n, dtype=torch.float64) if count_ops else None
    for steps, indices, preds, spent in _exits(backend, net, feed, policy, T, readout, count_ops,
                                               _check_block(block)):
        idx = indices.cpu()
        exit_step[idx] = steps.cpu()
        predictions[idx] = preds.cpu()
        if ops is not None:
            ops[idx] = spent.cpu()
    return exit_step, predictions, ops


def early_exit_loader(
    backend: Any,
    net: nn.Module,
    data: Iterable,
    policy: CutoffPolicy,
    T: int | None = None,
    *,
    encoder: Encoder = "direct",
    readout: str | Callable = "auto",
    count_ops: bool = False,
    device: torch.device | str | None = None,
    refill: bool = False,
    capacity: int | None = None,
    block: int | str = "auto",
    progress: bool = True,
) -> CutoffResult:
    """Early exit over a whole data loader: a :class:`CutoffResult` with ``wall_time_s``.

    By default each batch runs on its own (:func:`early_exit`), so a batch lasts as long
    as its slowest sample. With ``refill=True`` the network runs one pool of at most
    ``capacity`` samples (default: the first batch's size): every slot freed by an exit
    is filled by the next sample of the loader at once, so each step runs a full batch
    until the data runs out ("continuous batching"; each sample keeps its own step count
    and starts from the initial state, in the rows an exited sample left, nothing else
    moved: :meth:`Backend.reset_rows_module`); then the last samples run in blocks as in
    :func:`early_exit` (``block``). Exit steps and predictions are the same either way.
    Refill takes any encoder but ``"none"``; a callable one (rate coding) encodes each
    batch as it is read, in the order :func:`snncutoff.collect_trace` does.

    ``wall_time_s`` covers the network steps, decisions and state bookkeeping (data
    loading included only with ``refill``); ``ops_at_exit`` holds each sample's
    operations with ``count_ops=True``.
    """
    backend, T = resolve(backend), _resolve_T(policy, T)
    block = _check_block(block)
    if refill:
        return _refilled(backend, net, data, policy, T, encoder, readout, count_ops, device, capacity, block,
                         progress)
    steps, preds, labels, ops = [], [], [], []
    wall = 0.0
    for batch in progress_bar(data, "early exit", progress):
        x, y = _split(batch)
        if device is not None:
            x = x.to(device)
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        e, p, o = early_exit(backend, net, x, policy, T, encoder=encoder, readout=readout, count_ops=count_ops,
                             block=block)
        wall += time.perf_counter() - t0
        steps.append(e)
        preds.append(p)
        labels.append(torch.as_tensor(y).cpu().long())
        if o is not None:
            ops.append(o)
    if not steps:
        raise ValueError("data yielded no batch")
    return CutoffResult(torch.cat(steps), torch.cat(preds), torch.cat(labels), T,
                        torch.cat(ops) if ops else None, None, f"early exit: {policy!r}", wall)


def _refilled(backend, net, data, policy, T, encoder, readout, count_ops, device, capacity, block,
              progress) -> CutoffResult:
    """Continuous batching: a pool of running samples, refilled from ``data`` as samples exit."""
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1):
        raise ValueError(f"capacity must be an integer >= 1, got {capacity!r}")
    feed = _LoaderFeed(data, T, encoder, device, capacity)
    records: list[_Exits] = []
    t_start = time.perf_counter()
    with bar("early exit (refill)", progress, "sample") as b:
        for rec in _exits(backend, net, feed, policy, T, readout, count_ops, block):
            records.append(rec)
            b.update(rec[1].numel())
    wall = time.perf_counter() - t_start
    if not records:
        raise ValueError("data yielded no batch")
    idx = torch.cat([r[1].cpu() for r in records])  # every admitted sample exits once

    def gather(i: int, dtype: torch.dtype) -> Tensor:
        out = torch.empty(idx.numel(), dtype=dtype)
        out[idx] = torch.cat([r[i].cpu() for r in records]).to(dtype)
        return out

    ops = gather(3, torch.float64) if count_ops else None
    return CutoffResult(gather(0, torch.long), gather(2, torch.long),
                        torch.cat(feed.labels), T, ops, None, f"early exit (refill): {policy!r}", wall)
