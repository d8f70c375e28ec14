"""Data sets: the embedded default (scikit-learn digits) and real benchmarks from disk.

- a ``.npz`` file of your own (``x`` ``[N, H, W]`` or ``[N, C, H, W]``, ``y`` ``[N]``):
  :func:`load_npz` / :func:`from_arrays`, a seeded stratified 80 / 20 split standardised
  with the training statistics;
- ``digits`` (default, no network): scikit-learn's 1 797 handwritten digits, 8x8, ten
  classes; a fixed stratified split (seed 0, 1 347 train / 450 test), pixels scaled to
  [0, 1] then standardised with the training mean and std; tensors ``[N, 1, 8, 8]``.
- ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``: torchvision, read from
  ``data_dir``; never downloaded unless ``download=True``.
- ``cifar10-dvs``, ``dvs128-gesture``, ``n-mnist``: event frames ``[N, T, 2, H, W]`` (use
  ``encoder="frames"``), ``split_by="number"``. Frames SpikingJelly already integrated
  (``<data_dir>/frames_number_<T>_split_by_number/``) are read directly; otherwise
  SpikingJelly's data set classes build them from the raw files (imported only then).

A missing data set raises :class:`DatasetNotFoundError` naming the expected files and how
to get them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .validation import check_int

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "cifar10-dvs", "dvs128-gesture", "n-mnist")


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not on disk; the message says where it was looked for and how to get it."""


@dataclass
class DataSplit:
    """Train and test sets of one data set, with what a model needs to know about them."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    input_size: int
    event: bool = False  # frames [T, 2, H, W] per sample (use encoder="frames")

    calibration: Dataset | None = None  # held out from training (see holdout)
    #: ``(mean, std)`` the pixels in [0, 1] were standardised with (scalars or per channel), if any:
    #: ``x * std + mean`` gives them back (for rate coding)
    normalization: tuple | None = None

    def loaders(self, batch_size: int = 128, shuffle_train: bool = True, seed: int = 0,
                num_workers: int = 0) -> tuple[DataLoader, DataLoader]:
        """``(train_loader, test_loader)``; the training order is seeded."""
        g = torch.Generator().manual_seed(check_int("seed", seed, 0))
        batch_size = check_int("batch_size", batch_size, 1)
        return (
            DataLoader(self.train, batch_size=batch_size, shuffle=shuffle_train, generator=g,
                       num_workers=num_workers, drop_last=False),
            self.loader(self.test, batch_size, num_workers),
        )

    @staticmethod
    def loader(dataset: Dataset, batch_size: int = 128, num_workers: int = 0) -> DataLoader:
        """An unshuffled loader of ``dataset`` (for traces and evaluation)."""
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)

    def holdout(self, size: int | float, seed: int = 0) -> DataSplit:
        """A copy whose training set gives up ``size`` samples (an int, or a fraction of it) to a
        ``calibration`` set, stratified by class and seeded, before any training.

        Cutoff rules are calibrated there: a network is more confident on data it was
        trained on, and no guarantee survives calibrating on it."""
        n = len(self.train)
        count = int(round(size * n)) if isinstance(size, float) and 0 < size < 1 else size
        if isinstance(count, bool) or not isinstance(count, int) or not 0 < count < n:
            raise ValueError(f"calibration size must be a fraction in (0, 1) or a count in [1, {n - 1}] of the "
                             f"{n} training samples, got {size!r}")
        labels = _labels_of(self.train)
        idx = torch.arange(n).numpy()
        from sklearn.model_selection import train_test_split

        try:
            keep, held = train_test_split(idx, test_size=count, random_state=seed, stratify=labels)
        except ValueError:  # a class too rare to stratify
            keep, held = train_test_split(idx, test_size=count, random_state=seed)
        return DataSplit(self.name, Subset(self.train, sorted(keep.tolist())), self.test, self.num_classes,
                         self.in_channels, self.input_size, self.event, Subset(self.train, sorted(held.tolist())),
                         self.normalization)


def _labels_of(dataset: Dataset) -> list[int]:
    """The label of every sample (read from the tensors of a TensorDataset, else item by item)."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].tolist()
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return [int(t) for t in targets]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def from_arrays(x, y, test_size: int | float = 0.2, seed: int = 0, name: str = "arrays") -> DataSplit:
    """Images and labels in memory as a seeded, stratified train / test :class:`DataSplit`.

    Args:
        x: ``[N, H, W]`` or ``[N, C, H, W]`` images (numpy or torch), ``uint8`` (0-255, scaled
            to [0, 1]) or float; square (``H == W``), as the models expect.
        y: ``[N]`` integer labels ``0 .. classes - 1``.
        test_size: test samples, a count or a fraction.
    Pixels are standardised with the mean and standard deviation of the training images.
    """
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"x must be [N, H, W] or [N, C, H, W] images, got shape {tuple(x.shape)}")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"images must be square (the models assume H = W), got {x.shape[-2]} x {x.shape[-1]}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be [N] = [{x.shape[0]}] labels, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        if not bool((y == y.round()).all()):
            raise ValueError("y must hold integer class labels, found fractional values")
    y = y.long()
    if int(y.min()) < 0:
        raise ValueError(f"labels must be >= 0, found {int(y.min())}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN or infinite values")
    from sklearn.model_selection import train_test_split

    idx = torch.arange(len(y)).numpy()
    try:
        train_idx, test_idx = train_test_split(idx, test_size=test_size, random_state=seed, stratify=y.numpy())
    except ValueError as exc:
        raise ValueError(f"cannot split {len(y)} samples with test_size={test_size!r}: {exc}") from None
    x_train, x_test = x[train_idx], x[test_idx]
    mean, std = x_train.mean(), x_train.std().clamp(min=1e-12)
    return DataSplit(name, TensorDataset((x_train - mean) / std, y[train_idx]),
                     TensorDataset((x_test - mean) / std, y[test_idx]), num_classes=int(y.max()) + 1,
                     in_channels=x.shape[1], input_size=x.shape[-1], normalization=(float(mean), float(std)))


def load_npz(path: str | os.PathLike, test_size: int | float = 0.2, seed: int = 0) -> DataSplit:
    """A ``.npz`` file holding ``x`` (images) and ``y`` (labels) as a :class:`DataSplit` (see :func:`from_arrays`)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"no .npz data file at {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x", "y") if k not in f.files]
            if missing:
                raise ValueError(f"{path} must hold arrays 'x' (images) and 'y' (labels); it has "
                                 f"{', '.join(f.files) or 'none'}")
            x, y = f["x"], f["y"]
    except (OSError, EOFError, ValueError) as exc:
        if "must hold arrays" in str(exc):
            raise
        raise ValueError(f"{path} is not a readable .npz file: {exc}") from None
    return from_arrays(x, y, test_size, seed, name=path.stem)


def digits(test_size: int = 450, seed: int = 0) -> DataSplit:
    """scikit-learn's handwritten digits as ``[N, 1, 8, 8]`` float tensors (no download)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_size, random_state=seed, stratify=d.target
    )
    x_train, x_test = x[idx_train], x[idx_test]
    mean, std = x_train.mean(), x_train.std()
    norm = lambda t: (t - mean) / std  # noqa: E731
    return DataSplit("digits", TensorDataset(norm(x_train), y[idx_train]), TensorDataset(norm(x_test), y[idx_test]),
                     num_classes=10, in_channels=1, input_size=8, normalization=(float(mean), float(std)))


_TV = {
    "mnist": ("MNIST", 10, 1, 28, "MNIST/raw/train-images-idx3-ubyte"),
    "fashion-mnist": ("FashionMNIST", 10, 1, 28, "FashionMNIST/raw/train-images-idx3-ubyte"),
    "cifar10": ("CIFAR10", 10, 3, 32, "cifar-10-batches-py/data_batch_1"),
    "cifar100": ("CIFAR100", 100, 3, 32, "cifar-100-python/train"),
}
_NORM = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_DVS = {
    # name: (submodule, class, classes, H, files expected under data_dir, how to get them)
    "cifar10-dvs": ("cifar10_dvs", "CIFAR10DVS", 10, 128, "download/*.zip (airplane.zip ... truck.zip)",
                    "SpikingJelly downloads it from figshare when download=True; or place the 10 zips in download/"),
    "dvs128-gesture": ("dvs128_gesture", "DVS128Gesture", 11, 128, "download/DvsGesture.tar.gz and gesture_mapping.csv",
                       "download DvsGesture.tar.gz from IBM's research box (see SpikingJelly's DVS128Gesture docs)"),
    "n-mnist": ("n_mnist", "NMNIST", 10, 34, "download/Train.zip and Test.zip",
                "download Train.zip and Test.zip from the N-MNIST page (Orchard et al., 2015)"),
}


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
        return _torchvision(name, root, download, augment)
    return _event(name, root, T, download)


def _torchvision(name: str, root: Path, download: bool, augment: bool) -> DataSplit:
    cls_name, classes, channels, size, probe = _TV[name]
    if not download and not (root / probe).exists():
        raise DatasetNotFoundError(
            f"{name} not found: expected {root / probe}. Download it once with "
            f"`python -c \"import torchvision; torchvision.datasets.{cls_name}('{root}', download=True)\"` "
            "or pass download=True (--download)"
        )
    try:
        import torchvision
        from torchvision import transforms as tf
    except Exception as exc:  # noqa: BLE001 - torchvision import errors vary (missing, ABI mismatch)
        raise ImportError(
            f"{name} needs torchvision ({exc}); install a torchvision matching your torch, "
            "e.g. pip install torch==2.14.1 torchvision==0.29.1"
        ) from exc
    mean, std = _NORM[name]
    test_tf = tf.Compose([tf.ToTensor(), tf.Normalize(mean, std)])
    train_tf = test_tf
    if augment and name.startswith("cifar"):
        train_tf = tf.Compose([tf.RandomCrop(size, padding=4), tf.RandomHorizontalFlip(), tf.ToTensor(),
                               tf.Normalize(mean, std)])
    cls = getattr(torchvision.datasets, cls_name)
    return DataSplit(name, cls(str(root), train=True, transform=train_tf, download=download),
                     cls(str(root), train=False, transform=test_tf, download=download),
                     classes, channels, size, normalization=(mean, std))


class FrameFolder(Dataset):
    """Event frames already integrated by SpikingJelly, read without importing SpikingJelly.

    SpikingJelly writes each sample as ``<root>/<class>/<name>.npz`` holding ``frames``
    (``[T, 2, H, W]``); classes are indexed in sorted folder-name order, as its
    ``DatasetFolder`` does. Items are ``(float32 tensor [T, 2, H, W], label)``.
    """

    def __init__(self, root: Path, files: list[tuple[Path, int]] | None = None, T: int | None = None) -> None:
        self.root = Path(root)
        self.T = T
        classes = sorted(d.name for d in self.root.iterdir() if d.is_dir()) if self.root.is_dir() else []
        self.classes = classes
        self.files = files if files is not None else [
            (f, i) for i, c in enumerate(classes) for f in sorted((self.root / c).glob("*.npz"))]
        if not self.files:
            raise DatasetNotFoundError(f"no <class>/*.npz frame files under {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        import numpy as np

        path, label = self.files[i]
        try:
            with np.load(path, allow_pickle=False) as f:
                if "frames" not in f.files:
                    raise ValueError(f"it holds {', '.join(f.files) or 'no array'}, not 'frames'")
                frames = np.asarray(f["frames"], dtype=np.float32)
        except (OSError, EOFError, ValueError) as exc:
            raise ValueError(f"event-frame file {path} is unreadable ({exc}); delete the frames folder to have "
                             "SpikingJelly integrate the events again") from None
        if self.T is not None and frames.shape[0] != self.T:
            raise ValueError(f"event-frame file {path} holds {frames.shape[0]} frames, the folder name promises "
                             f"{self.T}; delete the folder to integrate the events again")
        return torch.from_numpy(frames), label


def _split_per_class(folder: FrameFolder, train_ratio: float = 0.9, seed: int = 0) -> tuple[FrameFolder, FrameFolder]:
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for label in range(len(folder.classes)):
        items = [f for f in folder.files if f[1] == label]
        order = torch.randperm(len(items), generator=g).tolist()
        cut = int(round(train_ratio * len(items)))
        train += [items[j] for j in order[:cut]]
        test += [items[j] for j in order[cut:]]
    if not train or not test:
        raise DatasetNotFoundError(f"{folder.root} holds {len(folder.files)} samples: too few to split "
                                   f"{train_ratio:g} / {1 - train_ratio:g} per class into training and test sets")
    return FrameFolder(folder.root, train, folder.T), FrameFolder(folder.root, test, folder.T)


def _event(name: str, root: Path, T: int, download: bool) -> DataSplit:
    sub, cls_name, classes, size, files, how = _DVS[name]
    frames = root / f"frames_number_{T}_split_by_number"
    if not frames.is_dir():
        _integrate_with_spikingjelly(name, root, T, download)
    if name == "cifar10-dvs":  # published without a split: 90 / 10 per class, seeded
        train, test = _split_per_class(FrameFolder(frames, T=T))
    else:
        train, test = FrameFolder(frames / "train", T=T), FrameFolder(frames / "test", T=T)
    return DataSplit(name, train, test, classes, 2, size, event=True)


def _integrate_with_spikingjelly(name: str, root: Path, T: int, download: bool) -> None:
    """Let SpikingJelly turn the raw events into T frames per sample (written under ``root``)."""
    import importlib

    sub, cls_name, _, _, files, how = _DVS[name]
    if not download and not (root / "download").exists() and not (root / "events_np").exists():
        raise DatasetNotFoundError(
            f"{name} not found under {root}: expected frames_number_{T}_split_by_number/ (SpikingJelly's frames) or "
            f"the raw files {files}. {how}"
        )
    try:
        module = importlib.import_module(f"spikingjelly.datasets.{sub}")
    except Exception as exc:  # noqa: BLE001 - missing torchvision / torchaudio / h5py surface differently
        raise ImportError(
            f"turning raw {name} events into frames uses SpikingJelly's data set classes, which need the full "
            f"SpikingJelly install (torchvision, and torchaudio for 2.x): {exc}"
        ) from exc
    cls = getattr(module, cls_name)
    kw = dict(data_type="frame", frames_number=T, split_by="number")
    if name == "cifar10-dvs":
        cls(str(root), **kw)
    else:
        cls(str(root), train=True, **kw)
        cls(str(root), train=False, **kw)
