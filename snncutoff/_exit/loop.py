"""The early-exit loop behind every form, and the two objects it keeps in order.

- :class:`Pool`: the samples running now, one row each in every per-row tensor (inputs,
  ids, steps taken, cumulative outputs, operations, the policy's per-sample state);
- :class:`Session`: one run of the network: modes, neuron state reset at the start and
  the end, the operation recorder, and the network calls with their contract checks.

:func:`exits` runs the loop: take new samples, run the next step (or block of steps),
decide, record the samples that leave, refill their rows or drop them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from ..backends.base import LoopsOverTimeError
from ..cutoff.base import CutoffPolicy
from ..validation import check_finite, check_int
from .feeds import Feed

Exits = tuple[Tensor, Tensor, Tensor, Tensor | None]
"""Samples leaving at one decision point: ``(exit_step, indices, predictions, ops)``, each ``[m]``."""


def resolve_T(policy: CutoffPolicy, T: int | None) -> int:
    """The last step of a run: ``T``, or the fitted policy's ``T_`` (and the two must agree)."""
    if not isinstance(policy, CutoffPolicy):
        hint = f" (the class: pass an instance, {policy.__name__}())" if isinstance(policy, type) else ""
        raise TypeError(f"policy must be a cutoff rule such as snncutoff.TopKGap(0.0).fit(trace), got "
                        f"{policy!r}{hint}")
    fitted = getattr(policy, "T_", None)
    if T is None:
        if fitted is None:
            raise ValueError(f"{policy!r} is not fitted on a trace: pass T (the largest number of steps)")
        return fitted
    T = check_int("T", T, 1)
    if fitted is not None and fitted != T:
        raise ValueError(f"{policy!r} was fitted on T = {fitted} steps, but T = {T} was asked for")
    return T


def _block_length(block: int | str, T: int, t_min: int, running: int, capacity: int, pending: bool) -> int:
    """Steps to run before the next decision point (``block="auto"``: see :func:`early_exit`).

    One step while new samples may still join (refill); never past the forced exit of
    the row furthest behind (``t_min``). Rows further on, after a refill, may run past
    their own forced exit at T: those steps are padding, never decided on (see :func:`_decide`)."""
    if pending:
        return 1
    k = min(max(1, capacity // (2 * running)), max(1, T // 2)) if block == "auto" else block
    return min(k, T - t_min)


def check_block(block: int | str) -> int | str:
    """``"auto"`` or an integer >= 1."""
    if block == "auto":
        return block
    try:
        return check_int("block", block, 1)
    except (TypeError, ValueError):
        raise ValueError(f"block must be 'auto' or an integer >= 1, got {block!r}") from None


def _running_sum(start: Tensor | None, steps: Tensor) -> Tensor:
    """``start + steps[0]``, ``+ steps[1]``, ... added one step at a time in float64 (``[k, ...]``).

    The same additions, in the same order, as the float64 cumulative sum of
    :meth:`Trace.from_steps`, so blocks of any length give the same bits. Never ``steps``
    itself (a network's float64 output may be its own membrane)."""
    if start is None:  # a copy even of float64 steps: the pool writes its rows in place
        return steps.to(torch.float64, copy=True) if steps.shape[0] == 1 else steps.double().cumsum(0)
    if steps.shape[0] == 1:  # one mixed add: float64 + x is float64 + x.double()
        return start.unsqueeze(0) + steps
    return torch.cat([start.unsqueeze(0), steps.double()]).cumsum(0)[1:]


def _grow(a: Tensor, n: int) -> Tensor:
    """``a`` with zero rows appended up to ``n`` rows."""
    return a if a.shape[0] == n else torch.cat([a, a.new_zeros((n - a.shape[0], *a.shape[1:]))])


class Pool:
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

    def _fresh(self, payload: Tensor) -> tuple[Tensor, Tensor | None]:
        """Ids and initial policy state of new samples."""
        m, device = payload.shape[0], payload.device
        ids = torch.arange(self.admitted, self.admitted + m, device=device)
        self.admitted += m
        return ids, self.policy.initial_state(m, device)

    def add(self, payload: Tensor) -> None:
        """Append new samples after the running ones (they start at step 0)."""
        ids, state = self._fresh(payload)
        t = torch.zeros(payload.shape[0], dtype=torch.long, device=payload.device)
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
        """New samples take over rows ``slots`` (of exited ones), from step 0. In place: the
        loop's own tensors (what it yields are copies; the payload, maybe a view of the
        caller's batch, is copied here)."""
        ids, state = self._fresh(payload)
        self.payload = self.payload.index_copy(0, slots.to(self.payload.device), payload.to(self.payload.dtype))
        sd = slots.to(self.ids.device)
        self.ids.index_copy_(0, sd, ids.to(self.ids.device))
        self.t.index_fill_(0, sd, 0)
        self.cum.index_fill_(0, slots.to(self.cum.device), 0.0)
        if self.spent is not None:
            self.spent.index_fill_(0, slots.to(self.spent.device), 0.0)
        if self.state is not None:
            self.state.index_copy_(0, slots.to(self.state.device), state.to(self.state))

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
        lo, hi = torch.aminmax(self.t)
        return int(lo), int(hi)


class Session:
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
        self.classes: int | None = None

    def __enter__(self) -> Session:
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
        first = self.first_batch is None
        if first:
            self.first_batch = n
        try:
            checking = self.backend.checking_steps(self.net, n, k) if first else nullcontext({})
            with checking as unbatched:
                if k == 1 and not self.multistep:
                    y = self.backend.step(self.net, x[0], self.readout)
                    y = y.unsqueeze(0) if isinstance(y, Tensor) and y.dim() == 2 else y
                else:
                    y = self.backend.run_block(self.net, x, self.readout, self.plan)
        except LoopsOverTimeError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ValueError(self._failure(exc, x)) from exc
        if unbatched:
            name, shape = next(iter(unbatched.items()))
            raise ValueError(
                f"{type(self.net).__name__} feeds its neuron '{name}' inputs of shape {list(shape)} for {n} samples: "
                "their first dimension is not the samples (a transposed or token-flattened input, or a forward that "
                "loops over its input's first dimension as time), so the rows of its state are not samples and early "
                "exit cannot drop an exited sample's. A network that takes one step per call, its inputs [N, ...], "
                "can be measured post hoc: collect_trace(...), then policy.evaluate(trace) (the same exits, without "
                "the saving in time)")
        self._check(y, k, n)
        if self.classes is None:
            self.classes = y.shape[-1]
        elif y.shape[-1] != self.classes:
            raise ValueError(f"{type(self.net).__name__} returned {y.shape[-1]} classes at step {t_first} after "
                             f"{self.classes} before: the outputs must keep their [N, C] shape from step to step")
        ops = self.rec.take_ops(k).view(k, -1) if self.rec is not None else None
        return y, ops

    def _failure(self, exc: BaseException, x: Tensor) -> str:
        n = x.shape[1]
        what = (f"running {type(self.net).__name__} for early exit failed on inputs of shape {list(x.shape[1:])} "
                f"({n} samples): {exc}")
        if "neuron" in str(exc):  # an adapter's own explanation of a neuron's state: nothing to add
            return what
        if self.first_batch is not None and n < self.first_batch:
            return (f"{what}. Early exit drops samples from the batch as they exit (it had {self.first_batch}), so "
                    "the network must take any batch size: a forward that reshapes with a fixed batch size, such "
                    "as x.view(batch_size, -1), must use x.flatten(1) (or x.view(x.shape[0], -1))")
        return (f"{what}. Check that each sample, {list(x.shape[2:])} here, has the shape the network was built "
                "for (the same as in collect_trace)")

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


def _steps(pool: Pool, k: int, device: torch.device) -> Tensor:
    """``[k, n]``: each row's 0-based step at each step of the block."""
    return pool.t.to(device).view(1, -1) + torch.arange(k, device=device).view(-1, 1)


def _decide(policy: CutoffPolicy, pool: Pool, out: Tensor, k: int, T: int, t_first: int, t_max: int) -> Tensor:
    """``[k, n]`` decisions for the block's k steps (the forced exit at T included); the
    outputs are finite (checked as the rule sees them) where steps are in range. Steps
    past T - 1 (padding after a row's forced exit) may decide anything: every row exits
    at or before its step T - 1."""
    if t_first == t_max:  # every row at the same step (always, without refill)
        done = policy._exit_block(t_first, out, pool.state, t_first, t_first + k - 1)
        if t_first + k == T:
            done[-1] = True  # the forced exit (also for rules that need no fit)
        return done
    done = policy._exit_block(pool.t.to(out.device), out, pool.state, t_first, t_max + k - 1)
    if policy._is_fitted() or t_max + k < T:  # a fitted rule forced the exit at T_ - 1 = T - 1 itself
        return done
    return done | (_steps(pool, k, out.device) == T - 1)


@torch.no_grad()
def exits(backend, net, feed: Feed, policy: CutoffPolicy, T: int, readout, count_ops: bool,
           block: int | str) -> Iterator[Exits]:
    """The early-exit loop behind every form: one record per decision point at which
    samples exit (``indices`` count samples in the order the feed admitted them)."""
    pool = Pool(policy, count_ops)
    with Session(backend, net, readout, count_ops, block) as session:
        while True:
            new = feed.take(None if pool.ids is None else feed.capacity - pool.n) if feed.pending else None
            if new is not None:
                if pool.ids is not None:  # fresh rows after the running ones start from the initial state
                    session.admit(new.shape[0])
                pool.add(new)
            if pool.n == 0:
                return
            n, (t_first, t_max) = pool.n, pool.span()
            k = _block_length(session.block, T, t_first, n, feed.capacity, feed.pending)
            x = feed.frames(pool.payload, pool.t, k)
            if x is None:
                raise ValueError(f"frames ended after {t_max} steps with samples still running (T = {T})")
            k = x.shape[0]
            y, ops = session.run(x, t_first)
            feed.classes = y.shape[-1]
            cum_k = _running_sum(pool.cum, y)
            out = cum_k.to(y.dtype)  # [k, n, C]
            # the outputs as the rule sees them: a NaN step, or a sum past the dtype's range, stops here (the
            # padding past a row's step T, if any, is never seen)
            check_finite(f"outputs at step {t_first}" if k == 1 else f"outputs at steps {t_first}..{t_first + k - 1}",
                         out if t_max + k <= T else torch.where(_steps(pool, k, out.device).unsqueeze(-1) < T, out, 0),
                         ("k", "n"))
            spent_k = _running_sum(pool.spent, ops) if ops is not None else None
            done = _decide(policy, pool, out, k, T, t_first, t_max)
            pool.t, pool.cum = pool.t + k, cum_k[-1]
            pool.spent = spent_k[-1] if spent_k is not None else None
            exited = done[0] if k == 1 else done.any(0)
            if not bool(exited.any()):
                continue
            rows = exited.nonzero().flatten()
            if k == 1:  # every exit at the step just run (pool.t counts it)
                exit_step, at = pool.t[rows.to(pool.t.device)], 0
            else:
                at = done.to(torch.uint8).argmax(0)[rows]  # the block step of each exit
                exit_step = pool.t[rows.to(pool.t.device)] - k + at.to(pool.t.device) + 1
            yield (exit_step, pool.ids[rows.to(pool.ids.device)], out[at, rows].argmax(-1),
                   spent_k[at, rows] if spent_k is not None else None)
            new = feed.take(rows.numel()) if feed.pending else None
            if new is not None:  # the next samples take over freed rows in place (nothing else is copied)
                slots = rows[: new.shape[0]]
                session.reset_rows(slots, n)
                pool.refill(slots, new)
            if new is None or new.shape[0] < rows.numel():  # rows nobody takes over leave the batch
                if new is not None:
                    exited = exited.index_fill(0, slots, False)
                keep = (~exited).nonzero().flatten()
                session.keep(keep)
                pool.keep(keep)
