"""Image data sets through torchvision, read from a local folder (downloaded only when asked)."""

from __future__ import annotations

from pathlib import Path

from .split import DatasetNotFoundError, DataSplit

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
