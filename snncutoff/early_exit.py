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

from ._exit.feeds import BatchFeed, LoaderFeed, StreamFeed, check_classes
from ._exit.loop import Exits, check_block, exits, resolve_T
from ._progress import bar
from ._progress import progress as progress_bar
from .backends import resolve
from .collect import Encoder, _split
from .cutoff.base import CutoffPolicy
from .result import CutoffResult
from .validation import batch_labels, check_device, check_int


@dataclass(frozen=True)
class ExitEvent:
    """Samples that stopped at ``step`` (1-based): their batch indices and predictions.

    ``ops`` (``[K]``, with ``count_ops``) is each one's operations up to this step.
    """

    step: int
    indices: Tensor
    predictions: Tensor
    ops: Tensor | None = None



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
    backend, T = resolve(backend), resolve_T(policy, T)
    for steps, indices, predictions, ops in exits(backend, net, StreamFeed(frames), policy, T, readout,
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
    backend, T = resolve(backend), resolve_T(policy, T)
    exit_step, predictions, ops, _ = _batch(backend, net, inputs, policy, T, encoder, readout, count_ops,
                                            check_block(block))
    return exit_step, predictions, ops


def _batch(backend, net, inputs, policy, T, encoder, readout, count_ops, block) -> tuple[Tensor, Tensor,
                                                                                        Tensor | None, int]:
    """:func:`early_exit` on one batch, also returning the classes C of the network's outputs."""
    feed = BatchFeed(inputs, T, encoder)
    n = feed.inputs.shape[0]
    exit_step = torch.full((n,), T, dtype=torch.long)
    predictions = torch.empty(n, dtype=torch.long)
    ops = torch.zeros(n, dtype=torch.float64) if count_ops else None
    for steps, indices, preds, spent in exits(backend, net, feed, policy, T, readout, count_ops, block):
        idx = indices.cpu()
        exit_step[idx] = steps.cpu()
        predictions[idx] = preds.cpu()
        if ops is not None:
            ops[idx] = spent.cpu()
    return exit_step, predictions, ops, feed.classes


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
    :func:`early_exit` (``block``), as long as the sample furthest behind needs: a sample
    that reaches T inside a block runs its remaining steps as padding (its last frame
    again, never decided on or checked). Exit steps and predictions are the same either way.
    Refill takes any encoder but ``"none"``; a callable one (rate coding) encodes each
    batch as it is read, in the order :func:`snncutoff.collect_trace` does.

    ``wall_time_s`` covers the network steps, decisions and state bookkeeping (data
    loading included only with ``refill``); ``ops_at_exit`` holds each sample's
    operations with ``count_ops=True``.
    """
    backend, T = resolve(backend), resolve_T(policy, T)
    block = check_block(block)
    device = check_device(device)
    if capacity is not None:
        capacity = check_int("capacity", capacity, 1)
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
        e, p, o, classes = _batch(backend, net, x, policy, T, encoder, readout, count_ops, block)
        wall += time.perf_counter() - t0
        steps.append(e)
        preds.append(p)
        labels.append(batch_labels(y, e.shape[0]))
        check_classes(labels[-1], classes)
        if o is not None:
            ops.append(o)
    if not steps:
        raise ValueError("data yielded no batch")
    return CutoffResult(torch.cat(steps), torch.cat(preds), torch.cat(labels), T,
                        torch.cat(ops) if ops else None, None, f"early exit: {policy!r}", wall)


def _refilled(backend, net, data, policy, T, encoder, readout, count_ops, device, capacity, block,
              progress) -> CutoffResult:
    """Continuous batching: a pool of running samples, refilled from ``data`` as samples exit."""
    feed = LoaderFeed(data, T, encoder, device, capacity)
    records: list[Exits] = []
    t_start = time.perf_counter()
    with bar("early exit (refill)", progress, "sample") as b:
        for rec in exits(backend, net, feed, policy, T, readout, count_ops, block):
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
    labels = torch.cat(feed.labels)
    check_classes(labels, feed.classes)
    return CutoffResult(gather(0, torch.long), gather(2, torch.long), labels, T, ops, None,
                        f"early exit (refill): {policy!r}", wall)
