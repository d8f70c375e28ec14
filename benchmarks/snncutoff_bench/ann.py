"""The ANN of a compare run: built, trained (QCFS thresholds from the data), cached by a content-checked key."""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from torch import nn

import snncutoff as sc
from snncutoff import constraints, data, models
from snncutoff.io import load_torch
from snncutoff.train import Trainer, load_model, seed_everything

from .config import BenchConfig, BenchInputError, log


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


def _cached_ann(ann: nn.Module, path: Path, quiet: bool) -> dict | None:
    """Load the cache entry ``path`` into ``ann`` and return what it records of the training (time,
    history, initial thresholds); None (with a warning, the entry removed) when it is missing its
    content hash, altered, unreadable or of another model: it is then rebuilt."""
    digest = path.with_name(path.name + ".sha256")
    try:
        if not digest.is_file() or digest.read_text().strip() != _sha256(path):
            raise ValueError(f"{path} does not match its recorded content hash ({digest.name})")
        load_model(ann, path)
        training = load_torch(path, "cached ANN", "it is trained again").get("training", {})
    except (ValueError, OSError) as exc:  # CorruptFileError is a ValueError
        warnings.warn(f"discarding the cached ANN {path}: {exc}; training it again", stacklevel=2)
        path.unlink(missing_ok=True)
        digest.unlink(missing_ok=True)
        return None
    log(f"ANN loaded from cache {path}", quiet)
    return dict(training)


def trained_ann(cfg: BenchConfig, split: data.DataSplit, quiet: bool = False,
                write: bool = True) -> tuple[nn.Module, dict]:
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
        return ann.eval(), {"checkpoint": cfg.extra["checkpoint"], "cached": False, "given": True}
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every process looks at the cache in the same state
    name = Path(cfg.dataset).stem if cfg.dataset.endswith(".npz") else cfg.dataset
    path = cache_dir(cfg) / f"ann-{name}-{cfg.model}-{cfg.ann_key()}.pt"
    training = _cached_ann(ann, path, quiet) if path.is_file() else None
    info = {"checkpoint": str(path), "cached": training is not None, **(training or {})}
    if not info["cached"]:
        ann = build_ann(cfg, split)  # a fresh one (a failed load may have left part of the weights)
        tc = cfg.train_config()
        train, test = split.loaders(cfg.batch_size, seed=cfg.seed)
        log(f"training {cfg.model} with QCFS (L={cfg.levels}) on {cfg.dataset} for {tc.epochs} epochs", quiet)
        t0 = time.perf_counter()
        trainer = Trainer(ann, tc, device=cfg.device, progress=not quiet).fit(train, test)
        info["train_seconds"] = time.perf_counter() - t0
        info["history"] = trainer.history_
        info["initial_thresholds"] = trainer.thresholds_
        if write:
            record = {k: info[k] for k in ("train_seconds", "history", "initial_thresholds")}
            sc.io.atomic_torch_save({"model": ann.state_dict(), "config": asdict(tc), "training": record}, path)
            sc.io.atomic_write_bytes(_sha256(path).encode(), path.with_name(path.name + ".sha256"))
    return ann.eval(), info


def ann_accuracy(ann: nn.Module, loader, device: str) -> float:
    return Trainer(ann.to(device), device=device, progress=False).evaluate(loader)
