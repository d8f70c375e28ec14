"""The compare pipeline behind ``compare`` and ``evaluate``, callable from Python too.

:func:`run_compare` is the main job: a network per backend (converted from one
cached ANN, or trained directly with each framework's LIF neurons), a training, a
held-out calibration and a test trace per backend, then every figure of
``results.json`` computed from those traces (:mod:`.policies`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

import snncutoff as sc
from snncutoff import backends, data
from snncutoff.fidelity import conversion_report
from snncutoff.io import atomic_write_json
from snncutoff.train import Trainer

from . import encoders
from .ann import ann_accuracy, build_ann, trained_ann
from .config import BenchConfig, BenchInputError, check_config, load_split, log
from .policies import policy_results, sweep_results


def step_timing(backend: Any, snn_step: nn.Module, snn_run: nn.Module, x: torch.Tensor, T: int,
                repeats: int = 3) -> dict[str, float]:
    """Milliseconds per timestep of the ``step`` loop and of ``run`` (best of ``repeats``)."""
    x_seq = sc.encode(x, T)

    def best(fn):
        b = float("inf")
        for _ in range(repeats):
            if x.is_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if x.is_cuda:
                torch.cuda.synchronize()
            b = min(b, time.perf_counter() - t0)
        return 1000 * b / T

    with torch.no_grad():
        def stepped():
            backend.reset(snn_step)
            for t in range(T):
                backend.step(snn_step, x_seq[t])

        def ran():
            backend.reset(snn_run)
            backend.run(snn_run, x_seq)

        ran()  # warm-up (SpikingJelly 2.x registers its ops on the first call)
        out = {"run_ms_per_step": best(ran), "batch": x.shape[0]}
        if not backend.is_multistep(snn_step):  # a multi-step-only net has no step path
            stepped()
            out["step_ms_per_step"] = best(stepped)
        return out


def networks(cfg: BenchConfig, name: str, split: data.DataSplit, ann: nn.Module | None,
             init: nn.Module | None, quiet: bool) -> tuple[nn.Module, nn.Module, dict]:
    """``(net for run, net for step, info)`` of one backend for the configured route."""
    b = backends.get(name)
    info: dict = {}
    multi = b.preferred_step_mode
    if cfg.route == "convert":
        return b.convert(ann, step_mode=multi), b.convert(ann), info
    # direct training with the framework's LIF neurons, from the shared initial weights
    tc = cfg.train_config()
    spec = sc.LIF(tau=2.0, reset="hard", surrogate="atan", alpha=2.0)
    snn = b.convert(copy.deepcopy(init), spec=spec, step_mode=multi)
    train, test = split.loaders(cfg.batch_size, seed=cfg.seed)
    log(f"direct training on {name} (LIF, TET loss, T={tc.T}) for {tc.epochs} epochs", quiet)
    t0 = time.perf_counter()
    trainer = Trainer(snn, tc, backend=b, device=cfg.device, progress=not quiet).fit(train, test)
    info.update(train_seconds=time.perf_counter() - t0, history=trainer.history_)
    snn.eval()
    return snn, snn, info


def run_compare(cfg: BenchConfig, output_dir: Path, quiet: bool = False, command: str = "",
                write: bool = True) -> tuple[dict, dict[str, dict[str, sc.Trace]]]:
    """The main job: train or load, build per-backend SNNs, collect traces, compute every figure.

    Returns ``(results, traces)``: the JSON-ready results and, per backend, its ``train``,
    ``calibration`` (held out from training) and ``test`` traces (also saved under
    ``output_dir/traces`` when ``write``). Under torchrun, every process collects its share of each
    trace and gets the whole (:func:`snncutoff.collect_trace`); only the one that ``write`` s writes."""
    names = check_config(cfg)
    t_start = time.perf_counter()
    split = load_split(cfg)
    need = sc.cutoff.risk.samples_needed(cfg.max_loss, cfg.delta)
    if len(split.calibration) < need:  # found now, not after training and collecting traces
        raise BenchInputError(
            f"{len(split.calibration)} calibration samples (--calibration-size {cfg.calibration_size:g} of "
            f"{len(split.calibration) + len(split.train)} training samples) cannot certify --max-loss "
            f"{cfg.max_loss:g} at --delta {cfg.delta:g}: that needs at least {need} even with no loss at all. Raise "
            "--calibration-size (a fraction, or a count), or --max-loss / --delta, or use more data")
    encoder = "frames" if split.event else encoders.make(cfg.encoder, split.normalization)
    loaders = {"train": split.loader(split.train, cfg.batch_size), "calibration": split.loader(split.calibration,
               cfg.batch_size), "test": split.loader(split.test, cfg.batch_size)}
    results: dict[str, Any] = {
        "schema": "snncutoff-bench/compare/2",
        "command": command,
        "config": {**asdict(cfg), "backends": names},
        "versions": _versions(),
        "seed": cfg.seed,
        "data": {**{k: len(v.dataset) for k, v in loaders.items()}, "classes": split.num_classes},
        "backends": {},
    }
    ann = init = None
    if cfg.route == "convert":
        ann, info = trained_ann(cfg, split, quiet, write)
        results["ann"] = {**info, "accuracy": ann_accuracy(ann, loaders["test"], cfg.device)}
        reference = results["ann"]["accuracy"]
    else:
        init = build_ann(cfg, split)
        results["ann"] = None
        reference = None
    traces: dict[str, dict[str, sc.Trace]] = {}
    x_time = next(iter(loaders["test"]))[0][: min(cfg.batch_size, 128)].to(cfg.device)
    for name in names:
        b = backends.get(name)
        run_net, step_net, info = networks(cfg, name, split, ann, init, quiet)
        run_net, step_net = run_net.to(cfg.device), step_net.to(cfg.device)
        t0 = time.perf_counter()
        traces[name] = {}
        for k, (part, loader) in enumerate(loaders.items()):
            torch.manual_seed(cfg.seed + k)  # random encoders draw the same spikes in every backend
            traces[name][part] = sc.collect_trace(
                b, run_net, loader, cfg.T, encoder=encoder, count_ops=True, device=cfg.device, progress=not quiet,
                meta={"split": part, "model": cfg.model, "dataset": cfg.dataset, "encoder": cfg.encoder})
        collect_s = time.perf_counter() - t0
        for part, tr in traces[name].items():
            if write:
                tr.save(output_dir / "traces" / f"{name}-{part}.pt")
        fit_on, cal, tst = (traces[name][k] for k in ("train", "calibration", "test"))
        acc = tst.accuracy_per_step()
        snn_acc = float(acc[-1])
        ref = reference if reference is not None else snn_acc
        entry = {
            "version": getattr(b, "version", None),
            "ann_accuracy": reference,
            "snn_accuracy": snn_acc,
            "accuracy_per_step": acc.tolist(),
            "oct": sc.optimal_cutoff(tst).to_dict(),
            "policies": policy_results(cfg, fit_on, cal, tst, ref),
            "sweep": sweep_results(cal, tst, cfg.policies),
            "timing": {**step_timing(b, step_net, run_net, x_time, cfg.T), "collect_seconds": collect_s},
            **info,
        }
        if encoder == "frames":  # a static batch cannot time an event network's step path
            entry["timing"] = {"collect_seconds": collect_s}
        if ann is not None and cfg.encoder == "direct" and not split.event:
            entry["conversion"] = conversion_report(b, ann, run_net, loaders["test"], cfg.T, trace=tst,
                                                    device=cfg.device, warn=False)
        results["backends"][name] = entry
    results["agreement"] = agreement({n: t["test"] for n, t in traces.items()})
    results["wall_seconds"] = time.perf_counter() - t_start
    return results, traces


def agreement(tests: dict[str, sc.Trace]) -> dict:
    """Cross-backend agreement on the test traces, against the first backend."""
    names = list(tests)
    if len(names) < 2:
        return {}
    first = tests[names[0]]
    out = {}
    for other in names[1:]:
        tr = tests[other]
        same = (first.predictions() == tr.predictions()).all(dim=0)
        out[f"{names[0]}~{other}"] = {
            "identical_predictions_every_step": float(same.double().mean()),
            "max_abs_output_difference": float((first.outputs - tr.outputs).abs().max()),
        }
    return out


def _versions() -> dict:
    from .environment import describe

    d = describe()
    return {k: d[k] for k in ("python", "snncutoff", "torch", "spikingjelly", "snntorch", "cupy", "cuda_device")}


def write_results(results: dict, output_dir: Path) -> Path:
    return atomic_write_json(results, output_dir / "results.json")


