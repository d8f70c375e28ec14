"""The benchmark pipelines behind the commands, callable from Python too.

:func:`run_compare` is the main job: a network per backend (converted from one
cached ANN, or trained directly with each framework's LIF neurons), one calibration
and one test trace per backend, then every figure of ``results.json`` computed from
those traces.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import snncutoff as sc
from snncutoff import backends, constraints, data, models
from snncutoff.io import atomic_write_json
from snncutoff.train import TrainConfig, Trainer, load_model, seed_everything

POLICIES = ("timestep", "topk", "confidence", "conformal")
ROUTES = ("convert", "direct")
TOPK_EPSILONS = (0.0, 0.01, 0.05)


@dataclass
class BenchConfig:
    """Everything a compare run depends on (stored in ``results.json``)."""

    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "cnn"
    route: str = "convert"
    T: int = 32
    backends: tuple[str, ...] = ()
    device: str = "cpu"
    seed: int = 0
    epochs: int | None = None
    batch_size: int = 128
    lr: float | None = None
    levels: int = 8
    rcs_alpha: float = 0.0
    policies: tuple[str, ...] = POLICIES
    confidence_epsilon: float = 0.001
    conformal_alpha: float = 0.05
    cache_dir: str | None = None
    download: bool = False
    extra: dict = field(default_factory=dict)

    def train_config(self) -> TrainConfig:
        direct = self.route == "direct"
        epochs = self.epochs if self.epochs is not None else (
            (12 if direct else 10) if self.dataset == "digits" else (100 if direct else 200))
        lr = self.lr if self.lr is not None else (3e-3 if self.dataset == "digits" else 1e-3)
        T_train = min(self.T, 8) if direct else self.T
        return TrainConfig(epochs=epochs, lr=lr, seed=self.seed, batch_size=self.batch_size, T=T_train,
                           loss="tet" if direct else "ce", rcs_alpha=self.rcs_alpha,
                           encoder="frames" if self.dataset in ("cifar10-dvs", "dvs128-gesture", "n-mnist")
                           else "direct")

    def ann_key(self) -> str:
        """Hash of what determines the trained ANN (the checkpoint cache key)."""
        tc = self.train_config()
        blob = json.dumps({"dataset": self.dataset, "model": self.model, "levels": self.levels, "route": self.route,
                           "train": asdict(tc), "torch": torch.__version__.split("+")[0]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class BenchInputError(ValueError):
    """Bad input a user can fix (exit status 1 with this message)."""


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def check_config(cfg: BenchConfig) -> list[str]:
    """Validate names against what exists and is installed; return the backends to use."""
    if cfg.dataset not in data.DATASETS:
        raise BenchInputError(f"unknown data set {cfg.dataset!r}; choose one of {', '.join(data.DATASETS)}")
    if cfg.model not in models.MODELS:
        raise BenchInputError(f"unknown model {cfg.model!r}; choose one of {', '.join(models.MODELS)}")
    if cfg.route not in ROUTES:
        raise BenchInputError(f"unknown route {cfg.route!r}; choose one of {', '.join(ROUTES)}")
    for p in cfg.policies:
        if p not in POLICIES:
            raise BenchInputError(f"unknown policy {p!r}; choose from {', '.join(POLICIES)}")
    if cfg.T < 1:
        raise BenchInputError(f"T must be >= 1, got {cfg.T}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchInputError("--device cuda was asked for but torch sees no CUDA device "
                              f"(torch {torch.__version__}); use --device cpu")
    if cfg.dataset != "digits" and cfg.data_dir is None:
        raise BenchInputError(f"data set {cfg.dataset!r} is read from disk: pass --data-dir")
    if cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
        raise BenchInputError(f"--data-dir {cfg.data_dir} does not exist")
    names = list(cfg.backends) or backends.names()
    usable = []
    for name in names:
        if name not in backends.names():
            raise BenchInputError(f"unknown backend {name!r}; registered: {', '.join(backends.names())}")
        ok, why = backends.available(name)
        if ok:
            usable.append(name)
        elif cfg.backends:
            raise BenchInputError(why)
    if not usable:
        raise BenchInputError("no backend is installed: pip install snntorch, and/or "
                              "pip install --no-deps spikingjelly loguru (./install.sh does both)")
    return usable


def cache_dir(cfg: BenchConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "snncutoff"


def build_ann(cfg: BenchConfig, split: data.DataSplit) -> nn.Module:
    """The architecture of ``cfg.model`` for the data set (QCFS activations for conversion)."""
    seed_everything(cfg.seed)
    ann = models.get(cfg.model, split.num_classes, split.in_channels, split.input_size)
    if cfg.route == "convert":
        constraints.apply(ann, "qcfs", levels=cfg.levels, threshold=4.0 if cfg.dataset == "digits" else 8.0)
    return ann


def trained_ann(cfg: BenchConfig, split: data.DataSplit, quiet: bool = False) -> tuple[nn.Module, dict]:
    """Train the QCFS ANN, or load it from the cache (keyed by :meth:`BenchConfig.ann_key`)."""
    ann = build_ann(cfg, split)
    if cfg.extra.get("checkpoint"):
        try:
            load_model(ann, cfg.extra["checkpoint"])
        except (FileNotFoundError, ValueError) as exc:
            what = f"model {cfg.model!r}, data set {cfg.dataset!r}, QCFS L={cfg.levels}"
            raise BenchInputError(f"{exc} ({what})") from exc
        return ann.eval(), {"checkpoint": cfg.extra["checkpoint"], "cached": True}
    path = cache_dir(cfg) / f"ann-{cfg.dataset}-{cfg.model}-{cfg.ann_key()}.pt"
    info = {"checkpoint": str(path), "cached": path.exists()}
    if path.exists():
        load_model(ann, path)
        _log(f"ANN loaded from cache {path}", quiet)
    else:
        tc = cfg.train_config()
        train, test = split.loaders(cfg.batch_size, seed=cfg.seed)
        _log(f"training {cfg.model} with QCFS (L={cfg.levels}) on {cfg.dataset} for {tc.epochs} epochs", quiet)
        t0 = time.perf_counter()
        trainer = Trainer(ann, tc, device=cfg.device, progress=not quiet).fit(train, test)
        info["train_seconds"] = time.perf_counter() - t0
        info["history"] = trainer.history_
        sc.io.atomic_torch_save({"model": ann.state_dict(), "config": asdict(tc)}, path)
    return ann.eval(), info


def ann_accuracy(ann: nn.Module, loader, device: str) -> float:
    return Trainer(ann.to(device), device=device, progress=False).evaluate(loader)


def _timestep_within(trace: sc.Trace, reference: float) -> int:
    """First step whose accuracy is within 1 point of ``reference`` (T if none)."""
    acc = trace.accuracy_per_step()
    ok = (acc >= reference - 0.01).nonzero()
    return int(ok[0]) + 1 if ok.numel() else trace.T


def policy_results(cfg: BenchConfig, cal: sc.Trace, test: sc.Trace, reference: float) -> dict[str, dict]:
    """One entry per configured policy: accuracy, mean steps, speed-up, operations saved."""
    out: dict[str, dict] = {}
    if "timestep" in cfg.policies:
        step = _timestep_within(test, reference)
        out[f"timestep_{step}"] = sc.Timestep(step).evaluate(test).to_dict()
    if "topk" in cfg.policies:
        for eps, r in zip(TOPK_EPSILONS, sc.sweep(sc.TopKGap(search="exact"), cal, test, TOPK_EPSILONS)):
            out[f"topk_eps{eps:g}"] = r.to_dict()
        out["topk_grid_eps0"] = sc.TopKGap(0.0, search="grid").fit(cal).evaluate(test).to_dict()
    if "confidence" in cfg.policies:
        conf = sc.Confidence(cfg.confidence_epsilon)
        out[f"confidence_eps{cfg.confidence_epsilon:g}"] = conf.evaluate(test).to_dict()
    if "conformal" in cfg.policies:
        out[f"conformal_alpha{cfg.conformal_alpha:g}"] = \
            sc.Conformal(cfg.conformal_alpha).fit(cal).evaluate(test).to_dict()
    return out


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
    multi = "m" if name == "spikingjelly" else "s"
    if cfg.route == "convert":
        return b.convert(ann, step_mode=multi), b.convert(ann), info
    # direct training with the framework's LIF neurons, from the shared initial weights
    tc = cfg.train_config()
    spec = sc.LIF(tau=2.0, reset="hard", surrogate="atan", alpha=2.0)
    snn = b.convert(copy.deepcopy(init), spec=spec, step_mode=multi)
    train, test = split.loaders(cfg.batch_size, seed=cfg.seed)
    _log(f"direct training on {name} (LIF, TET loss, T={tc.T}) for {tc.epochs} epochs", quiet)
    t0 = time.perf_counter()
    trainer = Trainer(snn, tc, backend=b, device=cfg.device, progress=not quiet).fit(train, test)
    info.update(train_seconds=time.perf_counter() - t0, history=trainer.history_)
    snn.eval()
    return snn, snn, info


def run_compare(cfg: BenchConfig, output_dir: Path, quiet: bool = False, command: str = "") -> dict:
    """The main job: train or load, build per-backend SNNs, collect traces, compute every figure."""
    names = check_config(cfg)
    t_start = time.perf_counter()
    split = data.load(cfg.dataset, cfg.data_dir, T=cfg.T, download=cfg.download)
    encoder = "frames" if split.event else "direct"
    train, test = split.loaders(cfg.batch_size, shuffle_train=False, seed=cfg.seed)
    results: dict[str, Any] = {
        "schema": "snncutoff-bench/compare/1",
        "command": command,
        "config": {**asdict(cfg), "backends": names},
        "versions": _versions(),
        "seed": cfg.seed,
        "backends": {},
    }
    ann = init = None
    if cfg.route == "convert":
        ann, info = trained_ann(cfg, split, quiet)
        results["ann"] = {**info, "accuracy": ann_accuracy(ann, test, cfg.device)}
        reference = results["ann"]["accuracy"]
    else:
        init = build_ann(cfg, split)
        results["ann"] = None
        reference = None
    traces_dir = output_dir / "traces"
    x_time = next(iter(test))[0][: min(cfg.batch_size, 128)].to(cfg.device)
    for name in names:
        b = backends.get(name)
        run_net, step_net, info = networks(cfg, name, split, ann, init, quiet)
        run_net, step_net = run_net.to(cfg.device), step_net.to(cfg.device)
        t0 = time.perf_counter()
        cal = sc.collect_trace(b, run_net, train, cfg.T, encoder=encoder, count_ops=True, device=cfg.device,
                               progress=not quiet, meta={"split": "train", "model": cfg.model, "dataset": cfg.dataset})
        tst = sc.collect_trace(b, run_net, test, cfg.T, encoder=encoder, count_ops=True, device=cfg.device,
                               progress=not quiet, meta={"split": "test", "model": cfg.model, "dataset": cfg.dataset})
        collect_s = time.perf_counter() - t0
        cal.save(traces_dir / f"{name}-train.pt")
        tst.save(traces_dir / f"{name}-test.pt")
        acc = tst.accuracy_per_step()
        snn_acc = float(acc[-1])
        ref = reference if reference is not None else snn_acc
        entry = {
            "version": getattr(b, "version", None),
            "ann_accuracy": reference,
            "snn_accuracy": snn_acc,
            "accuracy_per_step": acc.tolist(),
            "oct": sc.optimal_cutoff(tst).to_dict(),
            "policies": policy_results(cfg, cal, tst, ref),
            "timing": {**step_timing(b, step_net, run_net, x_time, cfg.T), "collect_seconds": collect_s},
            **info,
        }
        if encoder == "frames":  # a static batch cannot time an event network's step path
            entry["timing"] = {"collect_seconds": collect_s}
        results["backends"][name] = entry
    results["agreement"] = agreement(traces_dir, names)
    results["wall_seconds"] = time.perf_counter() - t_start
    return results


def agreement(traces_dir: Path, names: list[str]) -> dict:
    """Cross-backend agreement on the test traces, against the first backend."""
    if len(names) < 2:
        return {}
    first = sc.Trace.load(traces_dir / f"{names[0]}-test.pt")
    out = {}
    for other in names[1:]:
        tr = sc.Trace.load(traces_dir / f"{other}-test.pt")
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


SWEEP_EPSILONS = (0.0, 1e-5, 1e-4, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)
SWEEP_ALPHAS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)


def sweep_results(cal: sc.Trace, test: sc.Trace, families: tuple[str, ...] = POLICIES,
                  epsilons: tuple[float, ...] = SWEEP_EPSILONS,
                  alphas: tuple[float, ...] = SWEEP_ALPHAS) -> dict[str, list[dict]]:
    """Accuracy / mean-exit-step points of each policy family over its hyper-parameter, from traces."""
    out: dict[str, list[dict]] = {}
    if "timestep" in families:
        out["timestep"] = sc.sweep(sc.Timestep(1), None, test, range(1, test.T + 1))
    if "topk" in families:
        out["topk"] = sc.sweep(sc.TopKGap(), cal, test, epsilons)
    if "confidence" in families:
        out["confidence"] = sc.sweep(sc.Confidence(), None, test, epsilons)
    if "conformal" in families:
        out["conformal"] = sc.sweep(sc.Conformal(), cal, test, alphas)
    return {k: [r.to_dict() for r in v] for k, v in out.items()}


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point beats on both accuracy and mean steps."""
    best, front = -1.0, []
    for p in sorted(points, key=lambda r: (r["mean_steps"], -r["accuracy"])):
        if p["accuracy"] > best:
            front.append(p)
            best = p["accuracy"]
    return front
