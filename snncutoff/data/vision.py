"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100, read from their files on disk (no torchvision).

The files are those torchvision downloads, in the folders it uses under ``data_dir``:
``MNIST/raw/`` and ``FashionMNIST/raw/`` (idx files, ``.gz`` or not), ``cifar-10-batches-py/``
and ``cifar-100-python/`` (the python pickles). Reading them here needs nothing beyond
numpy and torch; only ``download=True`` asks torchvision to fetch them. Samples come in
the files' order, as ``[C, H, W]`` float tensors equal to torchvision's ``ToTensor()`` then
``Normalize(mean, std)`` with the usual per-channel statistics; CIFAR training samples are
augmented on the fly (random crop with padding 4, horizontal flip: torch's global RNG).
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .split import DatasetNotFoundError, DataSplit

# name: (torchvision class, classes, channels, size, file whose presence says the set is there)
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


class Images(Dataset):
    """``uint8`` images ``[N, C, H, W]`` and labels ``[N]``, served standardised (and augmented).

    Attributes:
        images, targets: the stored tensors (``targets``: int64 labels).
    """

    def __init__(self, images: Tensor, targets: Tensor, mean: tuple, std: tuple, augment: bool = False) -> None:
        self.images, self.targets, self.augment = images, targets, augment
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.images[i].float().div(255)  # torchvision's ToTensor
        if self.augment:  # RandomCrop(size, padding=4), RandomHorizontalFlip()
            size = x.shape[-1]
            top, left = torch.randint(0, 9, (2,)).tolist()
            x = F.pad(x, (4, 4, 4, 4))[:, top : top + size, left : left + size]
            if float(torch.rand(1)) < 0.5:
                x = x.flip(-1)
        return x.sub(self.mean).div(self.std), self.targets[i]  # Normalize(mean, std)


def _images(name: str, root: Path, download: bool, augment: bool) -> DataSplit:
    """One of :data:`_TV` from ``root`` (fetched by torchvision first with ``download``)."""
    cls_name, classes, channels, size, probe = _TV[name]
    if download:
        _download(name, root)
    if not _exists(root / probe):
        raise DatasetNotFoundError(
            f"{name} not found: expected {root / probe} (or .gz). Download it once with "
            f"`python -c \"import torchvision; torchvision.datasets.{cls_name}('{root}', download=True)\"` "
            "or pass download=True (--download)"
        )
    read = _mnist if name in ("mnist", "fashion-mnist") else _cifar
    (x_train, y_train), (x_test, y_test) = read(name, root)
    mean, std = _NORM[name]
    return DataSplit(name, Images(x_train, y_train, mean, std, augment and name.startswith("cifar")),
                     Images(x_test, y_test, mean, std), classes, channels, size, normalization=(mean, std))


def _download(name: str, root: Path) -> None:
    try:
        import torchvision
    except Exception as exc:  # noqa: BLE001 - torchvision import errors vary (missing, ABI mismatch)
        raise ImportError(f"downloading {name} needs torchvision ({exc}); install a torchvision matching your "
                          "torch (e.g. pip install torch==2.14.1 torchvision==0.29.1), or download the files "
                          "yourself") from exc
    cls = getattr(torchvision.datasets, _TV[name][0])
    for train in (True, False):
        cls(str(root), train=train, download=True)


def _exists(path: Path) -> bool:
    return path.is_file() or path.with_name(path.name + ".gz").is_file()


def _mnist(name: str, root: Path) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    raw = root / _TV[name][4].rsplit("/", 1)[0]
    parts = []
    for prefix in ("train", "t10k"):
        x = _idx(raw / f"{prefix}-images-idx3-ubyte", 3)
        y = _idx(raw / f"{prefix}-labels-idx1-ubyte", 1)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{raw}: {prefix} images ({x.shape[0]}) and labels ({y.shape[0]}) differ in number; "
                             "download the files again")
        parts.append((torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))))
    return parts[0], parts[1]


def _idx(path: Path, dims: int) -> np.ndarray:
    """An idx file of unsigned bytes (``path`` or ``path.gz``) with ``dims`` dimensions."""
    if not path.is_file() and path.with_name(path.name + ".gz").is_file():
        path = path.with_name(path.name + ".gz")
    try:
        data = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{path} is missing; download the data set again") from None
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path} cannot be read ({exc}); download it again") from None
    if len(data) < 4 + 4 * dims or data[:2] != b"\0\0" or data[2] != 0x08 or data[3] != dims:
        raise ValueError(f"{path} is not an idx file of {dims}-d unsigned bytes; download it again")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {body.size} bytes of data for shape {shape} (truncated?); download it again")
    return body.reshape(shape)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of numpy arrays, lists and bytes) and nothing else."""

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":  # bytes in a protocol-2 pickle written by Python 3
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch file")


def _batch(path: Path, label_key: bytes) -> tuple[np.ndarray, list]:
    try:
        with open(path, "rb") as f:
            d = _ArraysOnly(f, encoding="bytes").load()
        return np.asarray(d[b"data"], dtype=np.uint8), list(d[label_key])
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{path} is missing; download the data set again") from None
    except (OSError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path} is not a readable CIFAR batch ({type(exc).__name__}: {exc}); download it "
                         "again") from None


def _cifar(name: str, root: Path) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    if name == "cifar10":
        folder, key = root / "cifar-10-batches-py", b"labels"
        files = ([folder / f"data_batch_{i}" for i in range(1, 6)], [folder / "test_batch"])
    else:
        folder, key = root / "cifar-100-python", b"fine_labels"
        files = ([folder / "train"], [folder / "test"])
    parts = []
    for group in files:
        batches = [_batch(p, key) for p in group]
        x = np.concatenate([b[0] for b in batches]).reshape(-1, 3, 32, 32)
        y = np.concatenate([np.asarray(b[1], dtype=np.int64) for b in batches])
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{folder}: images ({x.shape[0]}) and labels ({y.shape[0]}) differ in number; "
                             "download the files again")
        parts.append((torch.from_numpy(x), torch.from_numpy(y)))
    return parts[0], parts[1]
