"""What a compare run depends on (:class:`BenchConfig`), and its validation against what is installed."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import snncutoff as sc
from snncutoff import backends, data, models
from snncutoff.train import TrainConfig
from snncutoff.validation import check_device

from . import encoders

POLICIES = tuple(sc.cutoff.RULES)
ROUTES = ("convert", "direct")


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
    input_size: int | None = None
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
        train = asdict(self.train_config())
        if self.route == "convert" and train["encoder"] == "direct":
            del train["T"]  # an ANN on static inputs trains without time steps: one checkpoint serves every T
        blob = json.dumps({"dataset": self.dataset, "data": _data_fingerprint(self.dataset), "model": self.model,
                           "levels": self.levels, "route": self.route, "calibration_size": self.calibration_size,
                           "input_size": self.input_size,
                           "train": train, "torch": torch.__version__.split("+")[0],
                           "threads": torch.get_num_threads()},  # (float sums' order: 1 thread trains another net)
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _data_fingerprint(dataset: str) -> str | None:
    """Size and modification time of a .npz data file (a changed file is a new cache entry)."""
    if not dataset.endswith(".npz") or not Path(dataset).is_file():
        return None
    st = Path(dataset).stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


class BenchInputError(ValueError):
    """Bad input a user can fix (exit status 1 with this message)."""


def load_split(cfg: BenchConfig) -> data.DataSplit:
    """The configured data set, resized to ``input_size`` if asked, with its calibration set held out."""
    split = data.load(cfg.dataset, cfg.data_dir, T=cfg.T, download=cfg.download)
    if cfg.input_size is not None:
        split = split.resized(cfg.input_size)
    size = int(cfg.calibration_size) if cfg.calibration_size >= 1 else cfg.calibration_size
    return split.holdout(size, cfg.seed)


def log(msg: str, quiet: bool) -> None:
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


def holdout_record(cfg: BenchConfig) -> dict:
    """What a checkpoint written by ``train`` records of its data and model (``TrainConfig.extra``):
    ``evaluate --checkpoint`` checks that it holds out the same calibration samples (a different
    ``--calibration-size``, ``--seed`` or data set would calibrate on samples it was trained on)."""
    return {"dataset": cfg.dataset, "model": cfg.model, "calibration_size": cfg.calibration_size, "seed": cfg.seed,
            "levels": cfg.levels, "input_size": cfg.input_size}


def check_holdout(cfg: BenchConfig, checkpoint: str) -> None:
    """A ``BenchInputError`` when ``checkpoint`` (written by ``train``) was trained with another hold-out,
    data set or model than ``cfg`` asks for; nothing when it records none (a checkpoint of your own)."""
    from snncutoff.io import load_torch

    try:
        ckpt = load_torch(checkpoint, "snncutoff checkpoint", "point to best.pt or last.pt of a train run")
    except FileNotFoundError:
        return  # named by the loader, with the model
    extra = ckpt.get("config", {}).get("extra") if isinstance(ckpt.get("config"), dict) else None
    if not isinstance(extra, dict):
        return
    mine = holdout_record(cfg)
    diff = [f"--{k.replace('_', '-')} {extra[k]!r} (asked: {mine[k]!r})" for k in ("dataset", "model",
            "calibration_size", "seed", "levels", "input_size") if k in extra and extra[k] != mine[k]]
    if diff:
        raise BenchInputError(
            f"{checkpoint} was trained with {', '.join(diff)}: pass the same options, so that the calibration "
            "samples held out now are the ones held out from its training (with others, some were trained on and "
            "no certificate holds)")

