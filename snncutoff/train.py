"""A plain PyTorch training loop for ANNs (then converted) and for SNNs (direct training).

``Trainer(model, config).fit(train_loader, test_loader)`` trains with SGD or Adam and a
cosine learning-rate schedule, evaluates after every epoch, shows a tqdm bar with loss
and accuracy, and (with ``checkpoint_dir``) writes ``last.pt`` atomically every epoch
(model, optimizer, scheduler, epoch, config, best accuracy) and ``best.pt`` when the
test accuracy improves; ``resume=True`` continues from ``last.pt``.

SNN mode (``backend`` given): each batch is encoded to ``[T, N, ...]``, the network is
reset and run over T steps by the backend (``[T, N, C]`` outputs), and the loss is
:class:`~snncutoff.losses.MeanOutputLoss` or :class:`~snncutoff.losses.TETLoss`, plus the
RCS regulariser when ``rcs_alpha > 0``.

Distributed: launched with ``torchrun --nproc_per_node K``, the loop initialises
``torch.distributed`` (``gloo`` on CPU, ``nccl`` on CUDA), wraps the model in
``DistributedDataParallel``, shards the training data with a ``DistributedSampler``,
all-reduces the metrics, and only rank 0 writes files and shows progress.
"""

from __future__ import annotations

import copy
import json
import os
import random
import sys
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from ._progress import bar
from .backends import resolve
from .checkpoints import CHECKPOINT_FORMAT, load_model, rng_state, set_rng_state, state_dict_mismatch
from .collect import encode
from .constraints import QCFS, Clip, Constraint, calibrate
from .io import CorruptFileError, atomic_torch_save, load_torch
from .losses import MeanOutputLoss, TETLoss
from .regularizers import rcs_ann, rcs_snn
from .validation import (
    INPUT_HINT,
    batch_labels,
    check_choice,
    check_device,
    check_finite,
    check_int,
    check_number,
    json_ready,
)


@dataclass
class TrainConfig:
    """Hyper-parameters of a run (stored in checkpoints; ``to_json`` keys the cache).

    Args:
        epochs: passes over the training data.
        lr: initial learning rate (cosine-annealed to 0 over ``epochs``).
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9, Nesterov).
        weight_decay: L2 penalty.
        batch_size: used by :meth:`Trainer.fit` when it builds distributed loaders.
        seed: seeds Python, NumPy and torch.
        T: timesteps (SNN mode).
        encoder: ``"direct"`` or ``"frames"`` (SNN mode, see :func:`snncutoff.encode`).
        loss: ``"ce"`` (ANN), ``"mean"`` or ``"tet"`` (SNN).
        tet_lambda: MSE weight of the TET loss.
        rcs_alpha: weight of the RCS regulariser (0: off).
        rcs_fraction: RCS's late window, the last ``int(rcs_fraction * T)`` steps (all T when
            that is 0): the reference activity and the steps a sample must be right at.
        label_smoothing: for the ANN cross-entropy.
    """

    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: int = 128
    seed: int = 0
    T: int = 8
    encoder: str = "direct"
    loss: str = "ce"
    tet_lambda: float = 0.05
    rcs_alpha: float = 0.0
    rcs_fraction: float = 0.3
    label_smoothing: float = 0.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, ("adam", "sgd"))
        check_choice("loss", self.loss, ("ce", "mean", "tet"))
        check_choice("encoder", self.encoder, ("direct", "frames"))
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("T", 1), ("seed", 0)):
            setattr(self, name, check_int(name, getattr(self, name), minimum))
        self.lr = check_number("lr", self.lr, 0.0, low_open=True)
        for name in ("weight_decay", "tet_lambda", "rcs_alpha"):
            setattr(self, name, check_number(name, getattr(self, name), 0.0))
        self.rcs_fraction = check_number("rcs_fraction", self.rcs_fraction, 0.0, 1.0, low_open=True)
        self.label_smoothing = check_number("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        if not isinstance(self.extra, dict):
            raise TypeError(f"extra must be a dict, got {type(self.extra).__name__}")
        self.extra = json_ready(self.extra, "extra")

    def to_json(self) -> str:
        """Canonical JSON (sorted keys)."""
        return json.dumps(asdict(self), sort_keys=True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def distributed_env() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment; ``(0, 1)`` when not launched by it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def distributed_init(device: torch.device | str | None = None) -> tuple[int, int]:
    """Initialise ``torch.distributed`` when launched by torchrun (``gloo`` on CPU, ``nccl`` on CUDA), once;
    returns ``(rank, world_size)``."""
    rank, world = distributed_env()
    if world > 1 and not dist.is_initialized():
        cuda = device is not None and torch.device(device).type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world


class _SequenceModule(nn.Module):
    """Runs the whole T-step loop in one ``forward`` (so DDP sees one forward per backward)."""

    def __init__(self, net: nn.Module, backend: Any) -> None:
        super().__init__()
        self.net, self.backend = net, backend

    def forward(self, x_seq: Tensor) -> Tensor:
        self.backend.reset(self.net)
        return self.backend.run(self.net, x_seq)


class Trainer:
    """Train an ANN (``backend=None``) or an SNN built from a backend's neurons (``backend``: a
    backend or its name, ``"spikingjelly"`` / ``"snntorch"``).

    Constraint activations made without a threshold (``constraints.apply(net, "qcfs")``)
    get one from the data before the first step (:func:`snncutoff.constraints.calibrate`
    on a seeded sample of 2 048 training samples).

    Attributes (after ``fit``):
        thresholds_: ``{layer: threshold}`` set from the data before training (empty when
            every threshold was given, or when resuming).
        history_: one dict per epoch (loss, train and test accuracy, learning rate).
        best_accuracy_: best test accuracy seen (0 to 1).
        epoch_: epochs completed.
    """

    def __init__(self, model: nn.Module, config: TrainConfig | None = None, backend: Any = None,
                 device: torch.device | str | None = None, checkpoint_dir: str | os.PathLike | None = None,
                 resume: bool = False, progress: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if config is not None and not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.model = model
        self.config = config or TrainConfig()
        self.backend = None if backend is None else resolve(backend)
        self.device = check_device(device) or torch.device("cpu")
        if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
            raise TypeError(f"checkpoint_dir must be a folder path, got {type(checkpoint_dir).__name__}")
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir= (the folder holding last.pt)")
        self.resume = resume
        self.progress = progress
        if backend is None and self.config.loss != "ce":
            raise ValueError(f"loss={self.config.loss!r} is for SNNs: pass backend= (or use loss='ce')")
        if backend is not None and self.config.loss == "ce":
            raise ValueError("an SNN is trained with loss='mean' or loss='tet'")

    # ------------------------------------------------------------------ parts
    def _criterion(self):
        c = self.config
        if c.loss == "ce":
            return nn.CrossEntropyLoss(label_smoothing=c.label_smoothing)
        return MeanOutputLoss() if c.loss == "mean" else TETLoss(c.tet_lambda)

    def _optimizer(self, params) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.lr, momentum=0.9, nesterov=True, weight_decay=c.weight_decay)

    def _forward(self, module: nn.Module, x: Tensor) -> Tensor:
        if self.backend is None:
            return module(x)
        return module(encode(x, self.config.T, self.config.encoder))

    @contextmanager
    def _rcs(self):
        """Capture what the RCS regulariser needs during one forward; yields ``penalty(out, y)``."""
        c = self.config
        if c.rcs_alpha <= 0:
            yield None
            return
        if self.backend is None:  # ANN: the constrained activations
            acts: list[Tensor] = []
            handles = [m.register_forward_hook(lambda _m, i, _o: acts.append(i[0]))  # before clip and floor
                       for m in self.model.modules() if isinstance(m, Constraint)]
            if not handles:
                raise ValueError("rcs_alpha > 0 on an ANN needs constraint activations (snncutoff.constraints.apply)")
            try:
                yield lambda out, y: rcs_ann(acts, out.detach().argmax(-1) == y)
            finally:
                for h in handles:
                    h.remove()
            return
        layers = dict(self.backend.spiking_layers(self.model))
        with self.backend.record(self.model, store=True, membrane=True, T=c.T, keep_graph=True) as rec:
            def penalty(out: Tensor, y: Tensor) -> Tensor:
                spikes, mems = rec.sequences("spikes"), rec.sequences("membranes")
                names = [n for n in spikes if n in mems]
                return rcs_snn([spikes[n] for n in names], [mems[n] for n in names], out, y, c.rcs_fraction,
                               [_threshold(layers[n]) for n in names])

            yield penalty

    def _batch(self, x: Any, y: Any, i: int, what: str) -> tuple[Tensor, Tensor]:
        """A batch on the device, validated: tensor inputs without NaN, integer labels ``[N]``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{what} batch {i}: inputs must be a tensor, got {type(x).__name__}")
        if x.is_floating_point():
            check_finite(f"inputs of {what} batch {i}", x, ("n",), INPUT_HINT)
        return x.to(self.device), batch_labels(y, x.shape[0]).to(self.device)

    def _run(self, module: nn.Module, x: Tensor, i: int, what: str) -> Tensor:
        try:
            return self._forward(module, x)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ValueError(f"running {type(self.model).__name__} on {what} batch {i} of shape {list(x.shape)} "
                             f"failed: {exc}") from exc

    @staticmethod
    def _check_classes(out: Tensor, y: Tensor) -> None:
        C = out.shape[-1]
        if y.numel() and int(y.max()) >= C:
            raise ValueError(f"labels must lie in [0, C) = [0, {C}) (the model has {C} outputs), found {int(y.max())}")

    @staticmethod
    def _prediction(out: Tensor) -> Tensor:
        return (out.mean(0) if out.dim() == 3 else out).argmax(-1)

    # ---------------------------------------------------------------- public
    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> float:
        """Accuracy (0 to 1) of the model on ``loader`` (SNN: argmax of the mean output)."""
        module = self.model if self.backend is None else _SequenceModule(self.model, self.backend)
        was = self.model.training
        self.model.eval()
        correct = total = 0
        try:
            for i, (x, y) in enumerate(loader):
                x, y = self._batch(x, y, i, "evaluation")
                out = self._run(module, x, i, "evaluation")
                self._check_classes(out, y)
                correct += int((self._prediction(out) == y).sum())
                total += y.numel()
        finally:
            if self.backend is not None:
                self.backend.reset(self.model)
            self.model.train(was)
        if total == 0:
            raise ValueError("evaluate: the loader yielded no sample")
        return correct / total

    def fit(self, train_loader: DataLoader, test_loader: DataLoader | None = None) -> Trainer:
        """Train for ``config.epochs`` epochs (continuing from ``last.pt`` with ``resume``)."""
        c = self.config
        rank, world = distributed_init(self.device)
        seed_everything(c.seed)
        model = self.model.to(self.device)
        module: nn.Module = model if self.backend is None else _SequenceModule(model, self.backend)
        if world > 1:
            module = nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            sampler = DistributedSampler(train_loader.dataset, num_replicas=world, rank=rank, seed=c.seed)
            train_loader = DataLoader(train_loader.dataset, batch_size=train_loader.batch_size, sampler=sampler)
        opt = self._optimizer([p for p in model.parameters() if p.requires_grad])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.epochs)
        criterion = self._criterion()
        self.history_: list[dict] = []
        self.best_accuracy_ = 0.0
        start = 0
        if self.resume and (self.checkpoint_dir / "last.pt").exists():
            start = self._load(self.checkpoint_dir / "last.pt", opt, sched, train_loader)
        elif self.resume:
            warnings.warn(f"resume=True, but {self.checkpoint_dir / 'last.pt'} does not exist: training from the "
                          "start", stacklevel=2)
        if start == 0:
            self.thresholds_ = self._initial_thresholds(model, train_loader)
        show = self.progress and rank == 0
        for epoch in range(start, c.epochs):
            if world > 1:
                train_loader.sampler.set_epoch(epoch)
            model.train()
            sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss*n, correct, n
            with bar(f"epoch {epoch + 1}/{c.epochs}", show, total=len(train_loader)) as b:
                for i, (x, y) in enumerate(train_loader):
                    x, y = self._batch(x, y, i, "training")
                    with self._rcs() as penalty:
                        out = self._run(module, x, i, "training")
                    self._check_classes(out, y)
                    loss = criterion(out, y)
                    if c.rcs_alpha > 0:
                        loss = loss + c.rcs_alpha * penalty(out, y)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss became {float(loss.detach())} at epoch {epoch + 1}; "
                                                 f"lower the learning rate (now {c.lr})")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    n = y.numel()
                    sums += torch.tensor([float(loss.detach()) * n, float((self._prediction(out.detach()) == y).sum()),
                                          n], dtype=torch.float64, device=self.device)
                    b.update(1)
                    b.set_postfix(loss=f"{float(sums[0] / sums[2]):.4f}", acc=f"{float(sums[1] / sums[2]):.3f}")
            if world > 1:
                dist.all_reduce(sums)
            if float(sums[2]) == 0:
                raise ValueError("the training loader yielded no batch")
            sched.step()
            record = {"epoch": epoch + 1, "loss": float(sums[0] / sums[2]), "train_accuracy": float(sums[1] / sums[2]),
                      "lr": sched.get_last_lr()[0]}
            if test_loader is not None:
                acc = self.evaluate(test_loader)
                if world > 1:
                    t = torch.tensor([acc], dtype=torch.float64, device=self.device)
                    dist.all_reduce(t)
                    acc = float(t) / world
                record["test_accuracy"] = acc
                improved = acc > self.best_accuracy_
                self.best_accuracy_ = max(self.best_accuracy_, acc)
            else:
                improved = False
            self.history_.append(record)
            if show:
                tqdm.write(json.dumps(record), file=sys.stderr)
            if rank == 0 and self.checkpoint_dir is not None:
                # best.pt first: a run stopped between the two writes resumes from the epoch before and
                # writes the same best.pt again
                if improved:
                    self._save(self.checkpoint_dir / "best.pt", opt, sched, epoch + 1, train_loader)
                self._save(self.checkpoint_dir / "last.pt", opt, sched, epoch + 1, train_loader)
        self.epoch_ = c.epochs
        return self

    def _initial_thresholds(self, model: nn.Module, train_loader: DataLoader) -> dict[str, float]:
        """Constraint thresholds never set are set from the data (:func:`snncutoff.constraints.calibrate`)
        on a seeded sample of the training set, drawn without touching the loader's own random state."""
        if self.backend is not None or not any(isinstance(m, (QCFS, Clip)) and not m.threshold_is_set()
                                                for m in model.modules()):
            return {}
        dataset = getattr(train_loader, "dataset", None)
        if dataset is None:  # batches given as a list: the first 2 048 samples
            sample = train_loader
        else:
            pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.config.seed))[:2048]
            sample = DataLoader(Subset(dataset, pick.tolist()), batch_size=256)
        try:
            return calibrate(model, sample, device=self.device)
        except (RuntimeError, TypeError, IndexError) as exc:
            raise ValueError(f"running {type(self.model).__name__} on the training data to set its constraint "
                             f"thresholds failed: {exc}") from exc

    # ----------------------------------------------------------- checkpoints
    def _save(self, path: Path, opt, sched, epoch: int, loader: DataLoader) -> None:
        atomic_torch_save({
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": epoch,
            "config": asdict(self.config),
            "best_accuracy": self.best_accuracy_,
            "history": self.history_,
            "rng": rng_state(getattr(loader, "generator", None)),
        }, path)

    def _load(self, path: Path, opt, sched, loader: DataLoader) -> int:
        ckpt = load_torch(path, "snncutoff training checkpoint",
                          f"delete {path} to train from the start (resume=False / without --resume)", self.device)
        keys = ("model", "optimizer", "scheduler", "epoch", "config", "rng", "best_accuracy", "history")
        missing = [k for k in keys if k not in ckpt]
        if missing:
            raise CorruptFileError(f"{path} cannot be resumed from: it lacks {', '.join(missing)} (written by another "
                                   "program or an older snncutoff); delete it to train from the start")
        epoch = ckpt["epoch"]
        if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["history"], list) or isinstance(epoch, bool) \
                or not isinstance(epoch, int) or not 0 <= epoch <= self.config.epochs:
            raise CorruptFileError(f"{path} cannot be resumed from: its config, history or epoch ({epoch!r}) is not "
                                   f"what snncutoff writes (an epoch in 0 .. {self.config.epochs}); delete it to train "
                                   "from the start")
        saved, now = _comparable(ckpt["config"]), _comparable(asdict(self.config))
        if saved != now:
            raise ValueError(f"checkpoint {path} was written with a different config "
                             f"({'; '.join(_differences(saved, now))}); "
                             "resume with the same settings, or delete it to start afresh")
        mismatch = state_dict_mismatch(self.model, ckpt["model"])
        if mismatch:
            raise ValueError(f"checkpoint {path} does not match the model: {mismatch}")
        generator = getattr(loader, "generator", None)
        # all or nothing: a state that fails to restore leaves the model, optimizer and RNG as they were
        before = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(opt.state_dict()),
                  copy.deepcopy(sched.state_dict()), rng_state(generator))
        try:
            best = check_number("best_accuracy", ckpt["best_accuracy"])
            self.model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            set_rng_state(ckpt["rng"], generator)
        except Exception as exc:  # noqa: BLE001 - whatever a foreign state raises, nothing stays half restored
            self.model.load_state_dict(before[0])
            opt.load_state_dict(before[1])
            sched.load_state_dict(before[2])
            set_rng_state(before[3], generator)
            raise CorruptFileError(f"{path} cannot be resumed from: restoring its state failed ({type(exc).__name__}: "
                                   f"{exc}); delete it to train from the start (the model is left as it was)") from None
        self.best_accuracy_ = best
        self.history_ = list(ckpt["history"])
        return epoch


def _threshold(neuron: nn.Module) -> float | Tensor:
    """A spiking layer's firing threshold: SpikingJelly's ``v_threshold``, snnTorch's ``threshold``, an
    adapter neuron's ``spec.threshold`` (1 if none)."""
    for value in (getattr(neuron, "v_threshold", None), getattr(neuron, "threshold", None),
                  getattr(getattr(neuron, "spec", None), "threshold", None)):
        if isinstance(value, (int, float)) and not isinstance(value, bool) or isinstance(value, Tensor):
            return value
    return 1.0


def _comparable(config: dict) -> dict:
    """A config as resuming compares it: ``rcs_fraction`` only counts with RCS on (``rcs_alpha`` > 0), so a
    checkpoint written before its default moved (0.5 to 0.3) resumes when RCS is off."""
    return config if config.get("rcs_alpha") else {k: v for k, v in config.items() if k != "rcs_fraction"}


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """``"key: saved -> now"`` for every setting that differs (the keys of nested dicts such as ``extra`` too)."""
    out = []
    for k in sorted(set(saved) | set(now), key=str):
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} in the checkpoint, {b!r} now")
    return out


__all__ = ["TrainConfig", "Trainer", "distributed_env", "distributed_init", "load_model", "rng_state",
           "seed_everything", "set_rng_state"]
