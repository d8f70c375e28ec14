"""Data sets: the embedded default (scikit-learn digits) and real benchmarks from disk.

- a ``.npz`` file of your own (``x`` ``[N, H, W]`` or ``[N, C, H, W]``, ``y`` ``[N]``):
  :func:`load_npz` / :func:`from_arrays`, a seeded stratified 80 / 20 split standardised
  with the training statistics;
- ``digits`` (default, no network): scikit-learn's 1 797 handwritten digits, 8x8, ten
  classes; a fixed stratified split (seed 0, 1 347 train / 450 test), pixels scaled to
  [0, 1] then standardised with the training mean and std; tensors ``[N, 1, 8, 8]``.
- ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``: the files torchvision downloads,
  read from ``data_dir`` without torchvision (:mod:`~snncutoff.data.vision`); never
  downloaded unless ``download=True`` (which needs torchvision).
- ``cifar10-dvs``, ``dvs128-gesture``, ``n-mnist``: event frames ``[N, T, 2, H, W]`` (use
  ``encoder="frames"``), ``split_by="number"``. Frames already integrated
  (``<data_dir>/frames_number_<T>_split_by_number/``) are read directly; otherwise a
  backend integrates them from the raw files (:mod:`snncutoff.data.events`).

Where a new data set goes: in memory, :mod:`~snncutoff.data.arrays`; image files,
:mod:`~snncutoff.data.vision`; event frames, :mod:`~snncutoff.data.events`; then a name
in :data:`DATASETS` and a branch in :func:`load`.

A missing data set raises :class:`DatasetNotFoundError` naming the expected files and how
to get them.
"""

from __future__ import annotations

import os
from pathlib import Path

from .arrays import digits, from_arrays, load_npz
from .events import EVENT_SETS, FrameFolder, _event
from .split import DatasetNotFoundError, DataSplit
from .vision import _TV, _images

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", *EVENT_SETS)


def load(name: str, data_dir: str | os.PathLike | None = None, *, T: int = 16, download: bool = False,
         augment: bool = True) -> DataSplit:
    """Load a data set by name (see module docstring for the list and on-disk layout).

    Args:
        name: one of :data:`DATASETS`, or the path of a ``.npz`` file (see :func:`load_npz`).
        data_dir: root folder of the real data sets (each in a sub-folder named like
            torchvision / SpikingJelly expect); unused for digits.
        T: frames per sample for event data sets.
        download: allow torchvision / SpikingJelly to download (never in tests).
        augment: CIFAR training augmentation (random crop with padding 4, horizontal flip).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a data set name or a .npz path (str), got {type(name).__name__}")
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be a folder path, got {type(data_dir).__name__}")
    if name == "digits":
        return digits()
    if str(name).endswith(".npz"):
        return load_npz(name)
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is None:
        raise DatasetNotFoundError(f"data set {name!r} is read from disk: pass data_dir (--data-dir)")
    root = Path(data_dir)
    if name in _TV:
        return _images(name, root, download, augment)
    return _event(name, root, T, download)


__all__ = ["DATASETS", "DataSplit", "DatasetNotFoundError", "FrameFolder", "digits", "from_arrays", "load",
           "load_npz"]
