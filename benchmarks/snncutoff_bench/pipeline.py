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
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import snncutoff as sc
from snncutoff import backends, constraints, data, models
from snncutoff.fidelity import conversion_report
from snncutoff.io import atomic_write_json
from snncutoff.train import TrainConfig, Trainer, load_model, seed_everything
from snncutoff.validation import check_device

from . import encoders

POLICIES = tuple(sc.cutoff.RULES)
ROUTES = ("convert", "direct")
#: parameter values of each rule shown in the compare table besides its risk-controlled value
#: (the timestep row is the first step within 1 point of the ANN; sweeps cover risk_grid)
REPORTED = {"topk": (0.0, 0.01), "confidence": (0.001,), "entropy": (0.01,), "conformal": (0.05,),
            "stability": (3,), "learned": (0.0,)}


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
    encoder: str = "direct"
    calibration_size: float = 0.35
    max_loss: float = 0.005
    delta: float = 0.1
    cache_dir: str | None = None
    download: bool = False
    extra: dict = field(default_factory=dict)

    def train_config(self) -> TrainConfig:
        direct = self.route == "direct"
        small = self.dataset == "digits" or self.dataset.endswith(".npz")  # minutes on a CPU
        epochs = self.epochs if self.epochs is not None else (
            (12 if direct else 10) if small else (100 if direct else 200))
        lr = self.lr if self.lr is not None else (3e-3 if small else 1e-3)
        T_train = min(self.T, 8) if direct else self.T
        return TrainConfig(epochs=epochs, lr=lr, seed=self.seed, batch_size=self.batch_size, T=T_train,
                           loss="tet" if direct else "ce", rcs_alpha=self.rcs_alpha,
                           encoder="frames" if self.dataset in ("cifar10-dvs", "dvs128-gesture", "n-mnist")
                           else "direct")

    def ann_key(self) -> str:
        """Hash of what determines the trained ANN (the checkpoint cache key)."""
        tc = self.train_config()
        blob = json.dumps({"dataset": self.dataset, "data": _data_fingerprint(self.dataset), "model": self.model,
                           "levels": self.levels, "route": self.route, "calibration_size": self.calibration_size,
                           "train": asdict(tc), "torch": torch.__version__.split("+")[0]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _data_fingerprint(dataset: str) -> str | None:
    """Size and modification time of a .npz data file (a changed file is a new cache entry)."""
    if not dataset.endswith(".npz") or not Path(dataset).is_file():
        return None
    st = Path(dataset).stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


class BenchInputError(ValueError):
    """Bad input a user can fix (exit status 1 with this message)."""


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def check_config(cfg: BenchConfig) -> list[str]:
    """Validate names against what exists and is installed; return the backends to use."""
    npz = cfg.dataset.endswith(".npz")
    if npz and not Path(cfg.dataset).is_file():
        raise BenchInputError(f"no .npz data file at {cfg.dataset} (it must hold arrays x [N, H, W] and y [N])")
    if not npz and cfg.dataset not in data.DATASETS:
        raise BenchInputError(f"unknown data set {cfg.dataset!r}; choose one of {', '.join(data.DATASETS)}, "
                              "or pass the path of a .npz file holding x and y")
    if cfg.model not in models.MODELS:
        raise BenchInputError(f"unknown model {cfg.model!r}; choose one of {', '.join(models.MODELS)}")
    if cfg.route not in ROUTES:
        raise BenchInputError(f"unknown route {cfg.route!r}; choose one of {', '.join(ROUTES)}")
    for p in cfg.policies:
        if p not in POLICIES:
            raise BenchInputError(f"unknown policy {p!r}; choose from {', '.join(POLICIES)}")
    if cfg.T < 1:
        raise BenchInputError(f"T must be >= 1, got {cfg.T}")
    try:
        check_device(cfg.device)
    except ValueError as exc:
        raise BenchInputError(f"--device: {exc}") from None
    for name in ("rcs_alpha", "max_loss", "delta", "calibration_size"):
        if not math.isfinite(getattr(cfg, name)):
            raise BenchInputError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(cfg, name)}")
    if cfg.seed < 0:
        raise BenchInputError(f"--seed must be >= 0, got {cfg.seed}")
    if not (0 < cfg.max_loss < 1) or not (0 < cfg.delta < 1):
        raise BenchInputError(f"--max-loss and --delta must lie in (0, 1), got {cfg.max_loss} and {cfg.delta}")
    if not (0 < cfg.calibration_size < 1 or (cfg.calibration_size >= 1 and float(cfg.calibration_size).is_integer())):
        raise BenchInputError("--calibration-size must be a fraction in (0, 1) of the training data or a count, "
                              f"got {cfg.calibration_size}")
    if cfg.encoder not in encoders.ENCODERS:
        raise BenchInputError(f"unknown encoder {cfg.encoder!r}; choose one of {', '.join(encoders.ENCODERS)}")
    if cfg.rcs_alpha < 0:
        raise BenchInputError(f"--rcs-alpha must be >= 0 (0: off), got {cfg.rcs_alpha}")
    if cfg.dataset != "digits" and not npz and cfg.data_dir is None:
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
        constraints.apply(ann, "qcfs", levels=cfg.levels)  # thresholds from the data when training starts
    return ann


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cached_ann(ann: nn.Module, path: Path, quiet: bool) -> bool:
    """Load the cache entry ``path`` into ``ann``; False (with a warning, the entry removed) when it is
    missing its content hash, altered, unreadable or of another model: it is then rebuilt."""
    digest = path.with_name(path.name + ".sha256")
    try:
        if not digest.is_file() or digest.read_text().strip() != _sha256(path):
            raise ValueError(f"{path} does not match its recorded content hash ({digest.name})")
        load_model(ann, path)
    except (ValueError, OSError) as exc:  # CorruptFileError is a ValueError
        warnings.warn(f"discarding the cached ANN {path}: {exc}; training it again", stacklevel=2)
        path.unlink(missing_ok=True)
        digest.unlink(missing_ok=True)
        return False
    _log(f"ANN loaded from cache {path}", quiet)
    return True


def trained_ann(cfg: BenchConfig, split: data.DataSplit, quiet: bool = False) -> tuple[nn.Module, dict]:
    """Train the QCFS ANN, or load it from the cache (keyed by :meth:`BenchConfig.ann_key`).

    Cache entries carry a content hash beside them (``<entry>.sha256``); one that is altered,
    truncated or unreadable is discarded with a warning and rebuilt, never fatal."""
    ann = build_ann(cfg, split)
    if cfg.extra.get("checkpoint"):
        try:
            load_model(ann, cfg.extra["checkpoint"])
        except (FileNotFoundError, ValueError) as exc:
            what = f"model {cfg.model!r}, data set {cfg.dataset!r}"
            raise BenchInputError(f"{exc} ({what})") from exc
        return ann.eval(), {"checkpoint": cfg.extra["checkpoint"], "cached": True}
    name = Path(cfg.dataset).stem if cfg.dataset.endswith(".npz") else cfg.dataset
    path = cache_dir(cfg) / f"ann-{name}-{cfg.model}-{cfg.ann_key()}.pt"
    info = {"checkpoint": str(path), "cached": path.is_file() and _cached_ann(ann, path, quiet)}
    if not info["cached"]:
        ann = build_ann(cfg, split)  # a fresh one (a failed load may have left part of the weights)
        tc = cfg.train_config()
        train, test = split.loaders(cfg.batch_size, seed=cfg.seed)
        _log(f"training {cfg.model} with QCFS (L={cfg.levels}) on {cfg.dataset} for {tc.epochs} epochs", quiet)
        t0 = time.perf_counter()
        trainer = Trainer(ann, tc, device=cfg.device, progress=not quiet).fit(train, test)
        info["train_seconds"] = time.perf_counter() - t0
        info["history"] = trainer.history_
        info["initial_thresholds"] = trainer.thresholds_
        sc.io.atomic_torch_save({"model": ann.state_dict(), "config": asdict(tc)}, path)
        sc.io.atomic_write_bytes(_sha256(path).encode(), path.with_name(path.name + ".sha256"))
    return ann.eval(), info


def ann_accuracy(ann: nn.Module, loader, device: str) -> float:
    return Trainer(ann.to(device), device=device, progress=False).evaluate(loader)


def _timestep_within(trace: sc.Trace, reference: float) -> int:
    """First step whose accuracy is within 1 point of ``reference`` (T if none)."""
    acc = trace.accuracy_per_step()
    ok = (acc >= reference - 0.01).nonzero()
    return int(ok[0]) + 1 if ok.numel() else trace.T


def _row(result: sc.CutoffResult, mean_oct: float, acc_T: float, **extra: Any) -> dict:
    d = result.to_dict()
    d.update(over_oct=d["mean_steps"] / mean_oct, loss_vs_T=100.0 * (acc_T - d["accuracy"]), **extra)
    return d


def policy_results(cfg: BenchConfig, fit_on: sc.Trace, cal: sc.Trace, test: sc.Trace,
                   reference: float) -> dict[str, dict]:
    """One entry per reported rule value and one risk-controlled entry per rule.

    Every rule is calibrated on ``cal`` (held out from training); a risk-controlled rule
    that learns (``TopKGap``, ``Conformal``, ``LearnedExit``) is fitted on ``fit_on`` and
    certified on ``cal``. Each entry: accuracy, mean steps, speed-up, operations saved,
    ``over_oct`` (mean steps / mean OCT) and ``loss_vs_T`` (accuracy points given up
    against all T steps); risk-controlled ones add ``certified_loss``, ``delta``, the
    chosen ``value`` and its ``p_value``.
    """
    mean_oct = sc.optimal_cutoff(test).mean_steps
    acc_T = float(test.accuracy_per_step()[-1])
    out: dict[str, dict] = {}
    for family in cfg.policies:
        if family == "timestep":
            step = _timestep_within(test, reference)
            out[f"timestep_{step}"] = _row(sc.Timestep(step).evaluate(test), mean_oct, acc_T)
        for value in REPORTED.get(family, ()):
            policy = sc.cutoff.rule(family).with_param(value).fit(cal)
            out[f"{family}_{policy.param}{value:g}"] = _row(policy.evaluate(test), mean_oct, acc_T)
        if family == "topk":  # the SNNCutoff code's grid search, for comparison with published figures
            out["topk_grid_eps0"] = _row(sc.TopKGap(0.0, search="grid").fit(cal).evaluate(test), mean_oct, acc_T)
        rc = sc.RiskControl(sc.cutoff.rule(family), cfg.max_loss, cfg.delta)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sc.NotCertifiedWarning)  # reported as value None below
            rc.fit(cal, fit_on=fit_on)
        out[f"risk_{family}"] = _row(rc.evaluate(test), mean_oct, acc_T, certified_loss=rc.certified_loss_,
                                     delta=rc.delta, value=rc.value_, p_value=rc.p_value_, n_calibration=rc.n_test_)
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
    multi = b.preferred_step_mode
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


def run_compare(cfg: BenchConfig, output_dir: Path, quiet: bool = False,
                command: str = "") -> tuple[dict, dict[str, dict[str, sc.Trace]]]:
    """The main job: train or load, build per-backend SNNs, collect traces, compute every figure.

    Returns ``(results, traces)``: the JSON-ready results and, per backend, its ``train``,
    ``calibration`` (held out from training) and ``test`` traces (also saved under
    ``output_dir/traces``)."""
    names = check_config(cfg)
    t_start = time.perf_counter()
    split = data.load(cfg.dataset, cfg.data_dir, T=cfg.T, download=cfg.download)
    split = split.holdout(int(cfg.calibration_size) if cfg.calibration_size >= 1 else cfg.calibration_size, cfg.seed)
    encoder = "frames" if split.event else encoders.make(cfg.encoder, split.normalization)
    loaders = {"train": split.loader(split.train, cfg.batch_size), "calibration": split.loader(split.calibration,
               cfg.batch_size), "test": split.loader(split.test, cfg.batch_size)}
    results: dict[str, Any] = {
        "schema": "snncutoff-bench/compare/2",
        "command": command,
        "config": {**asdict(cfg), "backends": names},
        "versions": _versions(),
        "seed": cfg.seed,
        "data": {k: len(v.dataset) for k, v in loaders.items()},
        "backends": {},
    }
    ann = init = None
    if cfg.route == "convert":
        ann, info = trained_ann(cfg, split, quiet)
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


def sweep_results(cal: sc.Trace, test: sc.Trace, families: tuple[str, ...] = POLICIES,
                  values: dict[str, tuple] | None = None) -> dict[str, list[dict]]:
    """Accuracy / mean-exit-step points of each rule over its parameter (``risk_grid`` by default), from traces."""
    out = {}
    for family in families:
        rule = sc.cutoff.rule(family)
        grid = (values or {}).get(rule.param) or rule.risk_grid(test.T)
        out[family] = [r.to_dict() for r in sc.sweep(rule, cal, test, grid)]
    return out


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point beats on both accuracy and mean steps."""
    best, front = -1.0, []
    for p in sorted(points, key=lambda r: (r["mean_steps"], -r["accuracy"])):
        if p["accuracy"] > best:
            front.append(p)
            best = p["accuracy"]
    return front
