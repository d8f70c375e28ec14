"""Event data sets (DVS): frames ``[T, 2, H, W]`` per sample, integrated from the raw events.

Frames already integrated (``<data_dir>/frames_number_<T>_split_by_number/<class>/*.npz``,
the layout SpikingJelly writes) are read directly, without any framework. Raw events are
turned into frames by the first installed backend that can (``Backend.integrate_events``;
the SpikingJelly adapter does it with SpikingJelly's own data set classes).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .split import DatasetNotFoundError, DataSplit

#: name: (classes, frame size, files expected under data_dir, how to get them)
EVENT_SETS = {
    "cifar10-dvs": (10, 128, "download/*.zip (airplane.zip ... truck.zip)",
                    "SpikingJelly downloads it from figshare when download=True; or place the 10 zips in download/"),
    "dvs128-gesture": (11, 128, "download/DvsGesture.tar.gz and gesture_mapping.csv",
                       "download DvsGesture.tar.gz from IBM's research box (see SpikingJelly's DVS128Gesture docs)"),
    "n-mnist": (10, 34, "download/Train.zip and Test.zip",
                "download Train.zip and Test.zip from the N-MNIST page (Orchard et al., 2015)"),
}


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
    classes, size, files, how = EVENT_SETS[name]
    frames = root / f"frames_number_{T}_split_by_number"
    if not frames.is_dir():
        _integrate(name, root, T, download)
    if name == "cifar10-dvs":  # published without a split: 90 / 10 per class, seeded
        train, test = _split_per_class(FrameFolder(frames, T=T))
    else:
        train, test = FrameFolder(frames / "train", T=T), FrameFolder(frames / "test", T=T)
    return DataSplit(name, train, test, classes, 2, size, event=True)


def _integrate(name: str, root: Path, T: int, download: bool) -> None:
    """Have the first installed backend that can turn the raw events into T frames per sample."""
    from .. import backends

    _, _, files, how = EVENT_SETS[name]
    if not download and not (root / "download").exists() and not (root / "events_np").exists():
        raise DatasetNotFoundError(
            f"{name} not found under {root}: expected frames_number_{T}_split_by_number/ (integrated frames) or "
            f"the raw files {files}. {how}"
        )
    reasons = []
    for backend_name in backends.names():
        ok, why = backends.available(backend_name)
        if not ok:
            reasons.append(f"{backend_name}: {why}")
            continue
        if backends.get(backend_name).integrate_events(name, root, T, download):
            return
    raise ImportError(f"no installed backend can integrate the raw {name} events into frames ("
                      f"{'; '.join(reasons) or 'none offers it'}); the SpikingJelly adapter does, with the full "
                      "SpikingJelly install (torchvision, and torchaudio for 2.x)")
