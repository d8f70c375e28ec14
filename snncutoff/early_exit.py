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
from tqdm.auto import tqdm

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


def _block_length(block: int | str, t: int, T: int, running: int | None, capacity: int | None) -> int:
    """Steps to run before the next decision point (``block="auto"``: see :func:`early_exit`)."""
    if block == "auto":
        k = 1 if running is None else max(1, capacity // (2 * running))
    else:
        k = block
    return min(k, T - t)


def _check_block(block: int | str) -> int | str:
    if block == "auto" or (isinstance(block, int) and not isinstance(block, bool) and block >= 1):
        return block
    raise ValueError(f"block must be 'auto' or an integer >= 1, got {block!r}")


def _running_sum(start: Tensor | None, steps: Tensor) -> Tensor:
    """``start + steps[0]``, ``+ steps[1]``, ... added one step at a time in float64 (``[k, ...]``).

    The same additions, in the same order, as the float64 cumulative sum of
    :meth:`Trace.from_steps`, so blocks of any length give the same bits."""
    steps = steps.double()
    if start is None:
        return steps.cumsum(0)
    if steps.shape[0] == 1:
        return (start + steps[0]).unsqueeze(0)
    return torch.cat([start.unsqueeze(0), steps]).cumsum(0)[1:]


@torch.no_grad()
def _exits(backend, net, frames_for, policy: CutoffPolicy, T: int, readout, count_ops: bool,
           block: int | str) -> Iterator[ExitEvent]:
    """The early-exit loop shared by every form.

    ``frames_for(t0, k, running)`` returns the inputs of steps ``t0 .. t0 + k - 1`` for
    the running samples, ``[k', n, ...]`` (``k' <= k``), or None when the input has ended.
    """
    multistep = backend.is_multistep(net)
    plan = None if multistep else backend.block_plan(net, readout)
    if plan is None and not multistep:
        block = 1  # stepping through a block one call at a time saves nothing
    stateful = backend.stateful_modules(net)  # found once, not at every exit
    was_training = net.training
    net.eval()
    backend.reset(net)
    running: Tensor | None = None  # original indices of the samples still running
    capacity: int | None = None
    cum: Tensor | None = None  # float64 cumulative outputs of the running samples
    spent: Tensor | None = None  # operations spent so far by the running samples
    recorder = backend.record(net, multistep=multistep, T=1) if count_ops else None
    rec = recorder.__enter__() if recorder is not None else None
    try:
        t = 0
        while t < T:
            k = _block_length(block, t, T, None if running is None else running.numel(), capacity)
            x = frames_for(t, k, running)
            if x is None:
                raise ValueError(f"frames ended after {t} steps with samples still running (T = {T})")
            k = x.shape[0]
            if running is None:
                running = torch.arange(x.shape[1], device=x.device)
                capacity = x.shape[1]
            if k == 1 and not multistep:
                y = backend.step(net, x[0], readout).unsqueeze(0)
            else:
                y = backend.run_block(net, x, readout, plan)
            check_finite(f"outputs at step {t}" if k == 1 else f"outputs at steps {t}..{t + k - 1}", y)
            cum_k = _running_sum(cum, y)  # [k, n, C]
            out = cum_k.to(y.dtype)
            spent_k = None
            if rec is not None:
                block_ops = rec.take_ops(k)
                spent_k = _running_sum(spent, block_ops.view(k, -1))
            if t + k == T:  # the forced exit (also for rules that need no fit)
                done = torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)
                if k > 1:
                    done[:-1] = policy.exit_block(t, out[:-1])
            else:
                done = policy.exit_block(t, out)
            exited = done[0] if k == 1 else done.any(0)
            if bool(exited.any()):
                first = done.to(torch.uint8).argmax(0)  # [n]: the block step of each exit
                for j in first[exited].unique().tolist():
                    rows = (exited & (first == j)).nonzero().flatten()
                    yield ExitEvent(t + j + 1, running[rows.to(running.device)], out[j, rows].argmax(-1),
                                    spent_k[j, rows] if spent_k is not None else None)
                keep = (~exited).nonzero().flatten()
                if keep.numel() == 0:
                    return
                for m in stateful:
                    backend.select_module(m, keep)
                running, cum = running[keep.to(running.device)], cum_k[-1, keep]
                spent = spent_k[-1, keep] if spent_k is not None else None
            else:
                cum = cum_k[-1]
                spent = spent_k[-1] if spent_k is not None else None
            t += k
    finally:
        if recorder is not None:
            recorder.__exit__(None, None, None)
        backend.reset(net)
        net.train(was_training)


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
    from . import backends as _backends

    if isinstance(backend, str):
        backend = _backends.get(backend)
    T = _resolve_T(policy, T)
    it = iter(frames)

    def frames_for(t0: int, k: int, running: Tensor | None) -> Tensor | None:
        frame = next(it, None)
        if frame is None:
            return None
        if running is not None and running.numel() != frame.shape[0]:
            frame = frame[running.to(frame.device)]
        return frame.unsqueeze(0)

    yield from _exits(backend, net, frames_for, policy, T, readout, count_ops, 1)


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
            ``"direct"``, ``[N, T, ...]`` frames for ``"frames"``, ``[T, N, ...]`` for ``"time_major"``).
        block: steps run between two decision points. ``1``: decide after every step.
            ``"auto"`` (default): one step while many samples run, then, once only n of
            the batch's N samples are left, blocks of ``N // (2 n)`` steps in one call
            (a multi-step network, or a single-step ``nn.Sequential`` run layer by layer:
            see :meth:`Backend.run_block`), so the last few samples do not pay a whole
            network call per step. Decisions, exit steps, predictions and operations are
            the same for every block length: only the compute spent by samples after
            their exit inside a block differs (it is not counted in ``ops``).
    Returns:
        ``(exit_step [N] (1-based), predictions [N], ops [N] or None)``.
    """
    from . import backends as _backends

    if isinstance(backend, str):
        backend = _backends.get(backend)
    T = _resolve_T(policy, T)
    block = _check_block(block)
    if encoder == "direct":  # no need to materialise T copies of a static batch
        n = inputs.shape[0]

        def frames_for(t0: int, k: int, running: Tensor | None) -> Tensor:
            x = inputs if running is None or running.numel() == n else inputs[running.to(inputs.device)]
            return x.unsqueeze(0).expand(k, *x.shape)
    else:
        seq = encode(inputs, T, encoder)
        n = seq.shape[1]

        def frames_for(t0: int, k: int, running: Tensor | None) -> Tensor:
            x = seq[t0 : t0 + k]
            return x if running is None or running.numel() == n else x[:, running.to(x.device)]

    exit_step = torch.full((n,), T, dtype=torch.long)
    predictions = torch.empty(n, dtype=torch.long)
    ops = torch.zeros(n, dtype=torch.float64) if count_ops else None
    for ev in _exits(backend, net, frames_for, policy, T, readout, count_ops, block):
        idx = ev.indices.cpu()
        exit_step[idx] = ev.step
        predictions[idx] = ev.predictions.cpu()
        if ops is not None:
            ops[idx] = ev.ops.cpu()
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
    and starts from the initial state). Exit steps and predictions are the same either way.
    ``block`` is :func:`early_exit`'s (batches without refill; a refilled pool steps one
    step at a time, as its rows are at different steps).

    ``wall_time_s`` covers the network steps, decisions and state bookkeeping (data
    loading included only with ``refill``); ``ops_at_exit`` holds each sample's
    operations with ``count_ops=True``.
    """
    T = _resolve_T(policy, T)
    if refill:
        return _refilled(backend, net, data, policy, T, encoder, readout, count_ops, device, capacity, progress)
    steps, preds, labels, ops = [], [], [], []
    wall = 0.0
    for batch in tqdm(data, desc="early exit", disable=not progress, leave=False, unit="batch"):
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


def _grow(a: Tensor, n: int) -> Tensor:
    """``a`` with zero rows appended up to ``n`` rows."""
    return a if a.shape[0] == n else torch.cat([a, a.new_zeros((n - a.shape[0], *a.shape[1:]))])


@torch.no_grad()
def _refilled(backend, net, data, policy, T, encoder, readout, count_ops, device, capacity, progress) -> CutoffResult:
    """Continuous batching: a pool of running samples, refilled from ``data`` as samples exit."""
    from . import backends as _backends

    if isinstance(backend, str):
        backend = _backends.get(backend)
    if encoder not in ("direct", "frames", "time_major"):
        raise ValueError(f"refill=True needs encoder 'direct', 'frames' or 'time_major', got {encoder!r}")
    multistep = backend.is_multistep(net)
    stateful = backend.stateful_modules(net)
    was_training = net.training
    net.eval()
    backend.reset(net)
    batches = iter(data)
    pend_x: list[Tensor] = []  # samples waiting for a slot, per sample: [...] or [T, ...]
    labels: list[Tensor] = []
    exit_step: dict[int, int] = {}
    prediction: dict[int, int] = {}
    op_at_exit: dict[int, float] = {}
    inputs = t_vec = gid = cum = spent = None
    queued = 0
    bar = tqdm(desc="early exit (refill)", disable=not progress, leave=False, unit="sample")
    recorder = backend.record(net, multistep=multistep, T=1) if count_ops else None
    rec = recorder.__enter__() if recorder is not None else None
    t_start = time.perf_counter()
    try:
        while True:
            running = 0 if gid is None else gid.shape[0]
            free = (capacity or 0) - running
            while (free > 0 or capacity is None) and (pend_x or batches is not None):
                if not pend_x:
                    batch = next(batches, None)
                    if batch is None:
                        batches = None
                        break
                    x, y = _split(batch)
                    x = x.to(device) if device is not None else x
                    if x.is_floating_point():
                        check_finite("inputs", x)
                    if encoder == "time_major":
                        x = x.transpose(0, 1)
                    if encoder != "direct" and x.shape[1] < T:
                        raise ValueError(f"encoder={encoder!r}: the data holds {x.shape[1]} frames, fewer than T = {T}")
                    pend_x = list(x.unbind(0))
                    labels.append(torch.as_tensor(y).cpu().long())
                    if capacity is None:
                        capacity = len(pend_x)
                        free = capacity - running
                k = min(free, len(pend_x))
                new = torch.stack(pend_x[:k])
                pend_x = pend_x[k:]
                ids = torch.arange(queued, queued + k, device=new.device)
                queued += k
                if gid is None:
                    inputs, gid = new, ids
                    t_vec = torch.zeros(k, dtype=torch.long, device=new.device)
                else:  # fresh rows after the running ones (a no-op before the first step)
                    backend.admit(net, k)
                    inputs, gid = torch.cat([inputs, new]), torch.cat([gid, ids])
                    t_vec = torch.cat([t_vec, torch.zeros(k, dtype=torch.long, device=new.device)])
                free -= k
            if gid is None or gid.shape[0] == 0:
                break
            rows = torch.arange(gid.shape[0], device=inputs.device)
            x_t = inputs if encoder == "direct" else inputs[rows, t_vec]
            y = backend.run(net, x_t.unsqueeze(0), readout, True)[0] if multistep else backend.step(net, x_t, readout)
            check_finite("outputs", y)
            n = y.shape[0]  # rows admitted since the last step start from zero
            cum = y.double() if cum is None else _grow(cum, n) + y.double()
            out_t = cum.to(y.dtype)
            if rec is not None:
                step_ops = rec.take_ops()
                spent = step_ops if spent is None else _grow(spent, n) + step_ops
            done = policy.exit_now(t_vec, out_t).to(out_t.device) | (t_vec.to(out_t.device) == T - 1)
            if bool(done.any()):
                idx = done.nonzero().flatten()
                for g, s, p in zip(gid[idx].tolist(), (t_vec[idx] + 1).tolist(), out_t[idx].argmax(-1).tolist()):
                    exit_step[g], prediction[g] = s, p
                if spent is not None:
                    for g, o in zip(gid[idx].tolist(), spent[idx].tolist()):
                        op_at_exit[g] = o
                bar.update(int(idx.numel()))
                keep = (~done).nonzero().flatten()
                for m in stateful:
                    backend.select_module(m, keep)
                inputs, gid, t_vec, cum = inputs[keep], gid[keep], t_vec[keep], cum[keep]
                if spent is not None:
                    spent = spent[keep]
            t_vec = t_vec + 1
    finally:
        if recorder is not None:
            recorder.__exit__(None, None, None)
        bar.close()
        backend.reset(net)
        net.train(was_training)
    wall = time.perf_counter() - t_start
    if queued == 0:
        raise ValueError("data yielded no batch")
    order = range(queued)
    ops = torch.tensor([op_at_exit[i] for i in order], dtype=torch.float64) if count_ops else None
    return CutoffResult(torch.tensor([exit_step[i] for i in order]), torch.tensor([prediction[i] for i in order]),
                        torch.cat(labels), T, ops, None, f"early exit (refill): {policy!r}", wall)
