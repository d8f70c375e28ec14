"""Checkpoints: what a training run writes, reads back, and needs to resume exactly.

A checkpoint (``last.pt`` / ``best.pt`` of :class:`~snncutoff.train.Trainer`) holds the
model, optimizer and scheduler states, the epoch, the config, the best accuracy, the
history and every random state the run draws from (:func:`rng_state`), so a run
interrupted at any point and resumed ends with the weights of a run never stopped.
:func:`load_model` reads the weights of any checkpoint, validated.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch import Tensor, nn

from .io import CorruptFileError, load_torch
from .validation import check_path

CHECKPOINT_FORMAT = 1


def state_dict_mismatch(model: nn.Module, state: dict) -> str:
    """Why ``state`` does not load into ``model`` (missing, unexpected, reshaped tensors), or ``""``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model" for k in own
                if k in state and isinstance(state[k], Tensor) and state[k].shape != own[k].shape]
    parts = []
    for what, keys in (("missing from the file", missing), ("not in the model", unexpected),
                       ("of another shape", reshaped)):
        if keys:
            first = ", ".join(keys[:2]) + (", ..." if len(keys) > 2 else "")
            parts.append(f"{len(keys)} tensor(s) {what} ({first})")
    return "; ".join(parts)


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Every random state a training run draws from: Python, NumPy, torch (CPU and CUDA),
    and the data loader's own generator (its shuffling), as tensors and plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": generator.get_state() if generator is not None else None,
    }


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` recorded (the loader's generator too, when both have one)."""
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and state["loader"] is not None:
        generator.set_state(state["loader"])


def load_model(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the weights of a checkpoint written by :class:`Trainer` (or ``{"model": state_dict}``) into ``model``.

    Raises:
        FileNotFoundError: no such file.
        CorruptFileError: the file is empty, truncated, not a torch file, or has no ``model`` entry.
        ValueError: its weights do not fit ``model`` (another architecture, class count or input size).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module to load the weights into, got {type(model).__name__} "
                        "(load_model(model, path))")
    path = check_path("path", path)
    ckpt = load_torch(path, "snncutoff checkpoint", "point to a checkpoint written by snncutoff-bench train or a "
                      "Trainer (best.pt / last.pt)")
    if not isinstance(ckpt.get("model"), dict):
        raise CorruptFileError(f"{path} is not a snncutoff checkpoint (no 'model' state dict; keys: "
                               f"{', '.join(map(str, list(ckpt)[:6]))})")
    mismatch = state_dict_mismatch(model, ckpt["model"])
    if mismatch:
        raise ValueError(f"checkpoint {path} does not match the model ({type(model).__name__}): {mismatch}; it was "
                         "written for another architecture, number of classes, input size or QCFS levels, or for "
                         "an SNN (snncutoff-bench train --route direct writes SNNs; evaluate and convert take the "
                         "ANN of --route convert)")
    bad = [k for k, v in ckpt["model"].items() if isinstance(v, Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all()) and not k.endswith("threshold")]
    if bad:
        raise CorruptFileError(f"checkpoint {path} holds NaN or infinite weights ({', '.join(bad[:3])}): the training "
                               "that wrote it diverged; train again with a lower learning rate")
    model.load_state_dict(ckpt["model"])
    return model
