"""Speed of the backends: run vs step paths, adapter overhead vs native nets, real early exit.

Every figure is a ratio against a baseline measured in the same process, on the same
input, best of ``repeats`` runs (this machine is shared and noisy).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from tqdm import tqdm

import snncutoff as sc
from snncutoff import backends, models


def _best(fn: Callable[[], object], repeats: int, cuda: bool) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


class _DecidedNever(sc.Confidence):
    """``Confidence(0)`` without its score bound: scored and decided at every step, never fires."""

    score_max = math.inf


def _paired_overhead(fn: Callable[[], object], base: Callable[[], object], rounds: int, cuda: bool) -> float:
    """Median over ``rounds`` of ``time(fn) / time(base) - 1``, the two timed back to back in each round
    (a change of host load between two separate best-of runs does not enter the ratio)."""
    ratios = sorted(_best(fn, 1, cuda) / _best(base, 1, cuda) - 1.0 for _ in range(max(3, rounds)))
    return ratios[len(ratios) // 2]


def _qcfs(model: str, channels: int, size: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    ann = models.get(model, 10, channels, size)
    return sc.constraints.apply(ann, "qcfs", levels=8, threshold=2.0).eval()


def _backend(name: str, gpu_kernel: str | None):
    """The backend ``name``, with SpikingJelly-style kernel choice where it takes one (``options``)."""
    b = backends.get(name)
    if gpu_kernel is not None and "gpu_kernel" in b.options:
        return backends.get(name, gpu_kernel=gpu_kernel)
    return b


def backend_paths(model: str = "cnn", size: int = 8, channels: int = 1, batch: int = 128, T: int = 16,
                  names: list[str] | None = None, device: str = "cpu", repeats: int = 3,
                  gpu_kernel: str | None = None) -> dict:
    """Milliseconds per step: native loop, adapter ``step`` loop, adapter ``run`` (multi-step where offered).

    ``gpu_kernel`` picks SpikingJelly's kernel family (see ``SpikingJellyBackend``).
    """
    cuda = device.startswith("cuda")
    x = torch.randn(batch, channels, size, size, device=device)
    x_seq = sc.encode(x, T)
    ann = _qcfs(model, channels, size)
    out = {"model": model, "input": [batch, channels, size, size], "T": T, "device": device,
           "gpu_kernel": gpu_kernel, "backends": {}}
    for name in names or [n for n in backends.names() if backends.available(n)[0]]:
        b = _backend(name, gpu_kernel)
        if hasattr(b, "kernel"):
            out["spikingjelly_kernel"] = b.kernel()
        single = b.convert(ann).to(device)
        multi = b.convert(ann, step_mode=b.preferred_step_mode).to(device)
        native, native_reset = b.native_twin(single)
        native = native.to(device)

        def native_loop(net=native, reset=native_reset):
            reset(net)
            for t in range(T):
                net(x_seq[t])

        def step_loop(net=single, b=b):
            b.reset(net)
            for t in range(T):
                b.step(net, x_seq[t])

        def run(net=multi, b=b):
            b.reset(net)
            b.run(net, x_seq)

        with torch.no_grad():
            n_s = _best(native_loop, repeats, cuda)
            s_s = _best(step_loop, repeats, cuda)
            r_s = _best(run, repeats, cuda)
        out["backends"][name] = {
            "native_ms_per_step": 1000 * n_s / T,
            "step_ms_per_step": 1000 * s_s / T,
            "run_ms_per_step": 1000 * r_s / T,
            "adapter_overhead": s_s / n_s - 1.0,
            "run_over_step": r_s / s_s,
        }
    return out


class _CallLog:
    """A backend that records the ``(steps, rows)`` of every network call early exit makes."""

    def __init__(self, backend) -> None:
        self.backend, self.calls = backend, []

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def step(self, net: nn.Module, x_t: torch.Tensor, readout="auto") -> torch.Tensor:
        self.calls.append((1, x_t.shape[0]))
        return self.backend.step(net, x_t, readout)

    def run_block(self, net: nn.Module, x_seq: torch.Tensor, readout="auto", plan=None) -> torch.Tensor:
        self.calls.append(tuple(x_seq.shape[:2]))
        return self.backend.run_block(net, x_seq, readout, plan)


def _replay(b, net: nn.Module, x_seq: torch.Tensor, calls: list[tuple[int, int]], plan) -> None:
    """The network calls of an early-exit run and the state shrinking between them, nothing else.

    The rows kept are the first ones (which rows is immaterial to the cost); no decision,
    no cumulative sum, no bookkeeping: what early exit would cost if deciding were free."""
    stateful = b.stateful_modules(net)
    b.reset(net)
    t, rows = 0, calls[0][1]
    for k, n in calls:
        if n < rows:
            keep = torch.arange(n, device=x_seq.device)
            for m in stateful:
                b.select_module(m, keep)
            rows = n
        if k == 1:
            b.step(net, x_seq[t, :n])
        else:
            b.run_block(net, x_seq[t : t + k, :n], plan=plan)
        t += k


def early_exit_speed(batch: int = 256, T: int = 32, epsilon: float = 1e-9, policy: str = "topk",
                     names: list[str] | None = None, device: str = "cpu", repeats: int = 3,
                     ann: nn.Module | None = None, data=None, block: int | str = "auto",
                     stream_repeats: int = 16, progress: bool = False) -> dict:
    """Wall time of streaming early exit vs the plain step loop over all T, per backend.

    With a trained network and its data (``ann``, ``data`` = (calibration loader, test
    loader)), the policy is fitted on a calibration trace; ``realised_speedup`` is the
    step-loop time over the early-exit time (``block``, see :func:`snncutoff.early_exit`)
    on one batch of ``batch`` test samples, ``ideal_speedup`` is ``T / mean exit step``.
    Measured in the same run: early exit deciding after every step (``block=1``), and
    all T steps in one block call (``full_block_seconds``: multi-step, or layer by layer),
    the fastest way to run every step. ``network_only_seconds`` replays just the network
    calls (same steps, same rows, state shrunk in between) of the early-exit run:
    ``network_bound_over_ideal`` is the most any decision loop could reach with that
    schedule, ``decision_overhead`` what snncutoff's decisions and bookkeeping add
    (``step_by_step_*``: the same for ``block=1``). ``no_exit_overhead``: early exit with a
    rule that never fires (``Confidence(0)``, which the policy knows: its scores are not
    computed) against the plain step loop, the median of ``repeats`` ratios timed back to
    back; ``no_exit_decided_overhead`` the same with the rule scored and decided at every
    step. The ``loader_*`` figures cover the
    whole test loader, with continuous batching (``early_exit_loader(refill=True)``);
    ``stream_*`` a long stream, the test loader ``stream_repeats`` times over, where
    continuous batching keeps the batch full for most of the run: the median over
    ``max(3, repeats)`` rounds of all T steps on the stream timed back to back with early
    exit on it (``stream_full_seconds`` / ``stream_refill_seconds``: that round's).
    ``matches_evaluate`` / ``loader_matches_evaluate``:
    the share of samples whose exit step and prediction equal ``policy.evaluate`` on a trace of
    the same data (1.0 unless the network's arithmetic depends on the batch size).
    ``progress``: a bar per backend over these stages (updated between timings, never inside one).
    """
    cuda = device.startswith("cuda")
    cal_loader, test_loader = data
    x = torch.cat([b[0] for b in test_loader])
    out = {"T": T, "batch": batch, "device": device, "policy": policy, "epsilon": epsilon, "block": block,
           "test_samples": len(x), "stream_repeats": stream_repeats, "backends": {}}
    x = x[:batch].to(device)
    for name in names or [n for n in backends.names() if backends.available(n)[0]]:
        stages = tqdm(total=16, desc=f"early exit, {name}", unit="stage", disable=not progress, leave=False)
        b = backends.get(name)
        snn = b.convert(ann).to(device)
        cal = sc.collect_trace(b, snn, cal_loader, T, device=device, progress=False)
        stages.update(1)
        p = (sc.TopKGap(epsilon) if policy == "topk" else sc.Conformal(epsilon)).fit(cal)
        x_seq = sc.encode(x, T)
        plan = b.block_plan(snn)

        def full(b=b, snn=snn, x_seq=x_seq):
            b.reset(snn)
            for t in range(T):
                b.step(snn, x_seq[t])

        def full_block(b=b, snn=snn, x_seq=x_seq, plan=plan):
            b.reset(snn)
            b.run_block(snn, x_seq, plan=plan)

        def early(b=b, snn=snn, p=p, k=block):
            return sc.early_exit(b, snn, x, p, T, block=k)

        def never(b=b, snn=snn, rule=None):  # never exits before T: the streaming loop's overhead
            return sc.early_exit(b, snn, x, rule or sc.Confidence(0.0), T, block=block)

        schedules = {}
        for k in (block, 1):  # the network calls each early-exit run makes
            log = _CallLog(b)
            steps, _, _ = sc.early_exit(log, snn, x, p, T, block=k)
            schedules[k] = log.calls
        stages.update(1)

        def timed(measure: Callable[[], float], stages: tqdm = stages) -> float:
            value = measure()
            stages.update(1)
            return value

        with torch.no_grad():  # each variant warmed up and repeated on its own (steady state)
            t_full = timed(lambda: _best(full, repeats, cuda))
            t_early = timed(lambda: _best(early, repeats, cuda))
            t_never = timed(lambda: _best(never, repeats, cuda))
            never_overhead = timed(lambda: _paired_overhead(never, full, repeats, cuda))
            decided_overhead = timed(lambda: _paired_overhead(partial(never, rule=_DecidedNever(0.0)), full,
                                                              repeats, cuda))
            t_step_by_step = timed(lambda: _best(lambda: early(k=1), repeats, cuda))
            t_full_block = timed(lambda: _best(full_block, repeats, cuda))
            t_net, t_net_1 = (timed(partial(_best, partial(_replay, b, snn, x_seq, schedules[k], plan), repeats, cuda))
                              for k in (block, 1))
        ideal = T / float(steps.double().mean())
        realised = t_full / t_early
        # early exit against post-hoc evaluation of the same batch (equal but where the network's own
        # arithmetic depends on the batch size, see snncutoff.early_exit)
        batch_trace = sc.collect_trace(b, snn, [(x, torch.zeros(len(x), dtype=torch.long))], T, device=device,
                                       progress=False)
        post = p.evaluate(batch_trace)
        exact_steps, exact_preds, _ = sc.early_exit(b, snn, x, p, T, block=block)
        matches = float(((exact_steps == post.exit_step.cpu()) & (exact_preds == post.predictions.cpu()))
                        .double().mean())
        stages.update(1)

        def loader_full(b=b, snn=snn, batches=test_loader):
            for xb, _ in batches:
                xb_seq = sc.encode(xb.to(device), T)
                b.reset(snn)
                for t in range(T):
                    b.step(snn, xb_seq[t])

        with torch.no_grad():
            t_loader_full = timed(lambda: _best(loader_full, repeats, cuda))
        refilled = [sc.early_exit_loader(b, snn, test_loader, p, T, refill=True, device=device, progress=False)
                    for _ in range(repeats)]
        stages.update(1)
        t_refill = min(r.wall_time_s for r in refilled)
        loader_ideal = T / refilled[0].mean_steps
        loader_post = p.evaluate(sc.collect_trace(b, snn, test_loader, T, device=device, progress=False))
        loader_matches = float(((refilled[0].exit_step == loader_post.exit_step.cpu())
                                & (refilled[0].predictions == loader_post.predictions.cpu())).double().mean())
        stages.update(1)
        # a long stream: the test loader stream_repeats times over, and all T steps on the same stream timed
        # back to back with it in each round (the median ratio: a change of host load between rounds, or
        # between two separate best-of runs, does not enter it)
        stream = [batch for _ in range(stream_repeats) for batch in test_loader]
        rounds = []
        for _ in range(max(3, repeats)):
            with torch.no_grad():
                t_all = _best(partial(loader_full, batches=stream), 1, cuda)
            run = sc.early_exit_loader(b, snn, stream, p, T, refill=True, device=device, progress=False)
            rounds.append((t_all / run.wall_time_s, t_all, run))
        stream_speedup, t_stream_full, stream_result = sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]
        stages.update(1)
        stages.close()
        out["backends"][name] = {
            "full_seconds": t_full, "early_exit_seconds": t_early, "mean_exit_step": float(steps.double().mean()),
            "realised_speedup": realised, "ideal_speedup": ideal, "realised_over_ideal": realised / ideal,
            "step_by_step_seconds": t_step_by_step, "step_by_step_over_ideal": t_full / t_step_by_step / ideal,
            "full_block_seconds": t_full_block, "realised_speedup_vs_full_block": t_full_block / t_early,
            "network_only_seconds": t_net, "network_bound_over_ideal": t_full / t_net / ideal,
            "decision_overhead": t_early / t_net - 1.0, "network_calls": len(schedules[block]),
            "step_by_step_network_only_seconds": t_net_1,
            "step_by_step_network_bound_over_ideal": t_full / t_net_1 / ideal,
            "step_by_step_decision_overhead": t_step_by_step / t_net_1 - 1.0,
            "no_exit_seconds": t_never, "no_exit_overhead": never_overhead,
            "no_exit_decided_overhead": decided_overhead,
            "loader_full_seconds": t_loader_full, "loader_refill_seconds": t_refill,
            "loader_refill_speedup": t_loader_full / t_refill, "loader_ideal_speedup": loader_ideal,
            "loader_refill_over_ideal": t_loader_full / t_refill / loader_ideal,
            "matches_evaluate": matches, "loader_matches_evaluate": loader_matches,
            "stream_samples": len(stream_result.exit_step), "stream_full_seconds": t_stream_full,
            "stream_refill_seconds": stream_result.wall_time_s, "stream_refill_speedup": stream_speedup,
            "stream_refill_over_ideal": stream_speedup / loader_ideal,
        }
    return out
