"""``check_backend``: the conformance kit a backend (shipped or third-party) must pass.

It runs the invariants of DESIGN.md ("The backend contract") on small networks it builds
itself, and says which one fails and why:

1. ``convert``: a QCFS network converted by the backend computes, bit for bit, the IF
   dynamics written out here (:math:`H = V + X`, :math:`S = [H \\ge \\theta]`,
   :math:`V = H - \\theta S`, :math:`V_0 = \\theta / 2`, output :math:`\\theta S`);
   ``spiking_layers`` finds one layer per converted activation;
2. ``reset``: the same batch twice gives the same outputs (no state leaks);
3. ``run`` equals a loop of ``step`` (and ``run_block`` the same steps);
4. ``select``: dropping rows mid-run leaves the others computing what they would have;
5. ``admit`` / ``reset_rows``: rows added, or reset, mid-run compute what a fresh sample
   computes from its first step (needed by continuous batching only);
6. ``record``: per-sample operations do not depend on which other samples share the batch;
7. early exit: ``early_exit`` and ``early_exit_loader(refill=True)`` give the exit steps
   and predictions of ``policy.evaluate(collect_trace(...))``.

A Norse, Sinabs or Lava-dl author runs ``check_backend(MyBackend())`` in their tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .backends import resolve
from .collect import collect_trace, encode


@dataclass(frozen=True)
class Check:
    """One invariant: its name, whether it held, and why not."""

    name: str
    passed: bool
    detail: str = ""


class BackendCheckError(AssertionError):
    """A backend broke the contract; the message lists every failed invariant."""


def _ann(seed: int = 0) -> nn.Module:
    from .constraints import QCFS

    g = torch.Generator().manual_seed(seed)
    ann = nn.Sequential(nn.Linear(6, 8), QCFS(levels=4, threshold=1.0), nn.Linear(8, 8), QCFS(levels=4, threshold=0.8),
                        nn.Linear(8, 4))
    with torch.no_grad():
        for m in ann:
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.8 - 0.2)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2)
    return ann.eval()


def _reference(ann: nn.Module, x_seq: Tensor) -> Tensor:
    """The IF dynamics of the converted ``ann`` written out, float32, ``[T, N, C]`` per-step outputs."""
    layers = list(ann)
    v: dict[int, Tensor] = {}
    outs = []
    for t in range(x_seq.shape[0]):
        h = x_seq[t]
        for i, m in enumerate(layers):
            if isinstance(m, nn.Linear):
                h = m(h)
            else:
                theta = torch.tensor(float(m.threshold.detach()), dtype=h.dtype)
                if i not in v:
                    v[i] = torch.full_like(h, float(0.5 * float(m.threshold.detach())))
                charged = v[i] + h
                spike = (charged >= theta).to(h.dtype)
                out = spike * theta
                v[i] = charged - out
                h = out
        outs.append(h)
    return torch.stack(outs)


def _first_difference(a: Tensor, b: Tensor) -> str:
    if a.shape != b.shape:
        return f"shapes {list(a.shape)} and {list(b.shape)}"
    diff = (a - b).abs()
    where = tuple(int(i) for i in (diff == diff.max()).nonzero()[0])
    return f"max |difference| {float(diff.max()):.3g} at {where}"


@torch.no_grad()
def check_backend(backend: Any, raise_errors: bool = True, T: int = 12) -> list[Check]:
    """Run every invariant on ``backend`` (an object or a registered name).

    Returns:
        the :class:`Check` of each invariant, in order.
    Raises:
        BackendCheckError: listing the failed invariants, when ``raise_errors``.
    """
    backend = resolve(backend)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(10, 6, generator=g) * 1.5
    x_seq = encode(x, T)
    ann = _ann()
    results: list[Check] = []

    def check(name: str, fn: Callable[[], str | None]) -> None:
        try:
            problem = fn()
        except NotImplementedError as exc:
            problem = f"not implemented: {exc}"
        except Exception as exc:  # noqa: BLE001 - any failure of the backend is reported, not raised
            problem = f"{type(exc).__name__}: {exc}"
        results.append(Check(name, problem is None, problem or ""))

    snn = backend.convert(ann)

    def converts() -> str | None:
        layers = backend.spiking_layers(snn)
        if len(layers) != 2:
            return f"spiking_layers found {len(layers)} layers for 2 converted activations"
        backend.reset(snn)
        out, ref = backend.run(snn, x_seq), _reference(ann, x_seq)
        if not torch.equal(out, ref):
            return f"the converted network differs from the IF equations: {_first_difference(out, ref)}"
        for mode in getattr(backend, "step_modes", ("s",)):
            other = backend.convert(ann, step_mode=mode)
            backend.reset(other)
            got = backend.run(other, x_seq)
            if not torch.equal(got, ref):
                return f"converted with step_mode={mode!r}, it differs: {_first_difference(got, ref)}"
        return None

    def resets() -> str | None:
        backend.reset(snn)
        a = backend.run(snn, x_seq)
        backend.reset(snn)
        b = backend.run(snn, x_seq)
        return None if torch.equal(a, b) else f"a second run of the same batch differs: {_first_difference(a, b)}"

    def run_equals_step() -> str | None:
        backend.reset(snn)
        run = backend.run(snn, x_seq)
        backend.reset(snn)
        steps = torch.stack([backend.step(snn, x_seq[t]) for t in range(T)])
        if not torch.equal(run, steps):
            return f"run and a loop of step differ: {_first_difference(run, steps)}"
        backend.reset(snn)
        block = torch.cat([backend.run_block(snn, x_seq[:5], plan=backend.block_plan(snn)),
                           backend.run_block(snn, x_seq[5:], plan=backend.block_plan(snn))])
        return None if torch.equal(run, block) else f"run_block differs from run: {_first_difference(run, block)}"

    def selects() -> str | None:
        backend.reset(snn)
        full = backend.run(snn, x_seq)
        backend.reset(snn)
        backend.run(snn, x_seq[:4])
        keep = torch.tensor([7, 2, 5])
        backend.select(snn, keep)
        rest = backend.run(snn, x_seq[4:, keep])
        if not torch.equal(rest, full[4:, keep]):
            return f"rows kept by select drift: {_first_difference(rest, full[4:, keep])}"
        return None

    def admits() -> str | None:
        fresh = x[:3]
        backend.reset(snn)
        alone = backend.run(snn, encode(fresh, T))
        backend.reset(snn)
        backend.run(snn, x_seq[:4])
        backend.admit(snn, 3)
        both = backend.run(snn, encode(torch.cat([x, fresh]), T - 4))
        if not torch.equal(both[:, 10:], alone[: T - 4]):
            return f"admitted rows do not start fresh: {_first_difference(both[:, 10:], alone[: T - 4])}"
        backend.reset(snn)
        backend.run(snn, x_seq[:4])
        rows = torch.tensor([1, 6])
        backend.reset_rows(snn, rows, 10)
        mixed = backend.run(snn, x_seq[: T - 4])
        backend.reset(snn)
        restart = backend.run(snn, x_seq[: T - 4])
        if not torch.equal(mixed[:, rows], restart[:, rows]):
            return f"reset_rows does not restart the rows: {_first_difference(mixed[:, rows], restart[:, rows])}"
        return None

    def records() -> str | None:
        ops = []
        for batch in (x, x[:1]):
            backend.reset(snn)
            with backend.record(snn, T=T) as rec:
                backend.run(snn, encode(batch, T))
            counts = rec.ops()
            if counts is None or tuple(counts.shape) != (T, batch.shape[0]):
                return f"record gave operations of shape {None if counts is None else list(counts.shape)}"
            ops.append(counts)
        return None if torch.equal(ops[1][:, 0], ops[0][:, 0]) else "a sample's operations depend on its batch"

    def exits_early() -> str | None:
        from . import early_exit, early_exit_loader
        from .cutoff import TopKGap

        data = [(x[:5], torch.tensor([0, 1, 2, 3, 0])), (x[5:], torch.tensor([1, 2, 3, 0, 1]))]
        trace = collect_trace(backend, snn, data, T, progress=False)
        policy = TopKGap(0.0).fit(trace.subset(torch.arange(10)))
        post = policy.evaluate(trace)
        steps, preds, _ = early_exit(backend, snn, x, policy)
        if not (torch.equal(steps, post.exit_step) and torch.equal(preds, post.predictions)):
            return f"early_exit differs from evaluate for {int((steps != post.exit_step).sum())} samples"
        try:
            refilled = early_exit_loader(backend, snn, data, policy, refill=True, capacity=3, progress=False)
        except NotImplementedError:
            return None  # no admit_module: continuous batching is refused, which is allowed
        if not (torch.equal(refilled.exit_step, post.exit_step) and torch.equal(refilled.predictions,
                                                                                 post.predictions)):
            return "early_exit_loader(refill=True) differs from evaluate"
        return None

    check("convert: the IF equations, bit for bit", converts)
    check("reset: no state leaks between runs", resets)
    check("run equals a loop of step (and run_block)", run_equals_step)
    check("select keeps the other rows exact", selects)
    check("admit / reset_rows start rows fresh", admits)
    check("record: per-sample operations", records)
    check("early exit equals evaluate", exits_early)
    failed = [c for c in results if not c.passed]
    if failed and raise_errors:
        lines = "\n".join(f"- {c.name}: {c.detail}" for c in failed)
        raise BackendCheckError(f"backend {getattr(backend, 'name', backend)!r} fails {len(failed)} of "
                                f"{len(results)} invariants:\n{lines}")
    return results


__all__ = ["BackendCheckError", "Check", "check_backend"]
