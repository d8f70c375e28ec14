"""``DataSplit``: the train / calibration / test sets of one data set, and what a model needs to know."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..validation import check_int


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

    def resized(self, size: int) -> DataSplit:
        """A copy with every image resized to ``size`` x ``size`` (bilinear; in-memory sets, before ``holdout``),
        e.g. 8x8 digits up to the 32x32 a VGG expects."""
        import torch.nn.functional as F

        size = check_int("size", size, 1)
        if size == self.input_size:
            return self
        if self.event or self.calibration is not None or not all(
                isinstance(d, TensorDataset) for d in (self.train, self.test)):
            raise ValueError("resized() works on in-memory image sets (digits, arrays, .npz) before holdout()")

        def scale(d: TensorDataset) -> TensorDataset:
            x = F.interpolate(d.tensors[0], size=(size, size), mode="bilinear", align_corners=False)
            return TensorDataset(x, d.tensors[1])

        return DataSplit(self.name, scale(self.train), scale(self.test), self.num_classes, self.in_channels, size,
                         normalization=self.normalization)

    def holdout(self, size: int | float, seed: int = 0) -> DataSplit:
        """A copy whose training set gives up ``size`` samples (an int, or a fraction of it) to a
        ``calibration`` set, stratified by class and seeded, before any training.

        Cutoff rules are calibrated there: a network is more confident on data it was
        trained on, and no guarantee survives calibrating on it."""
        if self.calibration is not None:
            raise ValueError(f"this split already holds a calibration set ({len(self.calibration)} samples): call "
                             "holdout once, on the split without one")
        n = len(self.train)
        if isinstance(size, numbers.Integral) and not isinstance(size, bool):
            size = int(size)  # (NumPy integers too)
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
