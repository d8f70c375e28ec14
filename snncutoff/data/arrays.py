"""Data in memory: scikit-learn's digits (the embedded default) and arrays or ``.npz`` files of your own."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from ..validation import check_int
from .split import DatasetNotFoundError, DataSplit


def from_arrays(x, y, test_size: int | float = 0.2, seed: int = 0, name: str = "arrays") -> DataSplit:
    """Images and labels in memory as a seeded, stratified train / test :class:`DataSplit`.

    Args:
        x: ``[N, H, W]`` or ``[N, C, H, W]`` images (numpy or torch), ``uint8`` (0-255, scaled
            to [0, 1]) or float; square (``H == W``), as the models expect.
        y: ``[N]`` integer labels ``0 .. classes - 1``.
        test_size: test samples, a count or a fraction.
    Pixels are standardised with the mean and standard deviation of the training images.
    """
    try:
        x, y = torch.as_tensor(x), torch.as_tensor(y)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise ValueError(f"x must be numeric images and y integer labels (numpy or torch arrays): {exc}") from None
    if x.is_complex() or not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int8, torch.int16,
                                                                     torch.int32, torch.int64)):
        raise ValueError(f"x must hold real pixel values (uint8 0-255, or float), got dtype {x.dtype}")
    if y.is_complex() or not (y.is_floating_point() or y.dtype == torch.bool or y.dtype in (
            torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise ValueError(f"y must hold integer class labels 0 .. classes - 1, got dtype {y.dtype}")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"x must be [N, H, W] or [N, C, H, W] images, got shape {tuple(x.shape)}")
    if x.shape[-1] != x.shape[-2]:
        hint = ("; these look channel-last [N, H, W, C]: pass x.transpose(0, 3, 1, 2)"
                if x.dim() == 4 and x.shape[-1] <= 4 < x.shape[1] == x.shape[2] else "")
        raise ValueError(f"images must be square (the models assume H = W), got {x.shape[-2]} x {x.shape[-1]}{hint}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be [N] = [{x.shape[0]}] labels, got shape {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x and y hold no sample (N = 0)")
    if y.dtype == torch.bool:
        y = y.to(torch.uint8)
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise ValueError("y must hold integer class labels, found fractional values")
    y = y.long()
    if int(y.min()) < 0:
        raise ValueError(f"labels must be >= 0, found {int(y.min())}")
    present = torch.unique(y)
    if present.numel() < 2:
        raise ValueError(f"y holds one class only ({int(present[0])}): a classifier needs at least two")
    if present.numel() != int(present[-1]) + 1:  # the class count is the largest label + 1
        missing = sorted(set(range(min(int(present[-1]) + 1, 10**6))) - set(present.tolist()))
        raise ValueError(f"labels must be 0 .. classes - 1: y holds {present.numel()} classes with labels up to "
                         f"{int(present[-1])} (missing: {', '.join(map(str, missing[:5]))}"
                         f"{', ...' if len(missing) > 5 else ''}); renumber them, e.g. "
                         "y = numpy.unique(y, return_inverse=True)[1]")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN or infinite values")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds values beyond float32's range (|x| > 3.4e38): rescale the images")
    train_idx, test_idx = _stratified_split(y, test_size, seed)
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
    how = "save one with numpy.savez(path, x=images, y=labels)"
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} holds a single array (a .npy file), not a .npz archive of x and y; {how}")
        with f:
            missing = [k for k in ("x", "y") if k not in f.files]
            if missing:
                raise ValueError(f"{path} must hold arrays 'x' (images) and 'y' (labels); it has "
                                 f"{', '.join(f.files) or 'none'}")
            x, y = f["x"], f["y"]
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        if str(path) in str(exc):  # our own message
            raise
        why = f"{type(exc).__name__}: {exc}"
        if "allow_pickle" in str(exc):  # numpy's advice for a file that is not a zip of arrays: wrong here
            why = "not a .npz archive of arrays"
        raise ValueError(f"{path} is not a readable .npz file ({why}); {how}") from None
    try:
        return from_arrays(x, y, test_size, seed, name=path.stem)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def digits(test_size: int = 450, seed: int = 0) -> DataSplit:
    """scikit-learn's handwritten digits as ``[N, 1, 8, 8]`` float tensors (no download)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    idx_train, idx_test = _stratified_split(y, test_size, seed)
    x_train, x_test = x[idx_train], x[idx_test]
    mean, std = x_train.mean(), x_train.std()
    norm = lambda t: (t - mean) / std  # noqa: E731
    return DataSplit("digits", TensorDataset(norm(x_train), y[idx_train]), TensorDataset(norm(x_test), y[idx_test]),
                     num_classes=10, in_channels=1, input_size=8, normalization=(float(mean), float(std)))


def _stratified_split(y: torch.Tensor, test_size: int | float, seed: int) -> tuple:
    """Seeded stratified train / test indices of labels ``y`` ``[N]`` (a clear error for a size that cannot be)."""
    from sklearn.model_selection import train_test_split

    seed = check_int("seed", seed, 0)
    if seed >= 2**32:
        raise ValueError(f"seed must lie in [0, 2**32), got {seed}")
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)):
        raise TypeError(f"test_size must be a number of samples or a fraction in (0, 1), got {test_size!r}")
    try:
        return train_test_split(torch.arange(len(y)).numpy(), test_size=test_size, random_state=seed,
                                stratify=y.numpy())
    except ValueError as exc:  # (sklearn's InvalidParameterError too)
        raise ValueError(f"cannot split {len(y)} samples with test_size={test_size!r} (a number of samples in "
                         f"[{int(y.max()) + 1}, {len(y) - int(y.max()) - 1}] or a fraction in (0, 1)): {exc}") from None
