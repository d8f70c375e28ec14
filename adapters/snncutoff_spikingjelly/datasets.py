"""Raw DVS events to frames with SpikingJelly's own data set classes (imported only when needed).

They write ``<root>/frames_number_<T>_split_by_number/[train|test]/<class>/*.npz``, which
:class:`snncutoff.data.FrameFolder` then reads without SpikingJelly.
"""

from __future__ import annotations

import importlib
from pathlib import Path

#: snncutoff's name: (module under spikingjelly.datasets, class, has train / test)
_CLASSES = {
    "cifar10-dvs": ("cifar10_dvs", "CIFAR10DVS", False),
    "dvs128-gesture": ("dvs128_gesture", "DVS128Gesture", True),
    "n-mnist": ("n_mnist", "NMNIST", True),
}


def integrate_events(dataset: str, root: Path, T: int, download: bool) -> bool:
    """Integrate ``dataset``'s raw events into T frames per sample (split by number); False if unknown."""
    if dataset not in _CLASSES:
        return False
    module_name, class_name, split = _CLASSES[dataset]
    try:
        module = importlib.import_module(f"spikingjelly.datasets.{module_name}")
    except Exception as exc:  # noqa: BLE001 - missing torchvision / torchaudio / h5py surface differently
        raise ImportError(
            f"turning raw {dataset} events into frames uses SpikingJelly's data set classes, which need the full "
            f"SpikingJelly install (torchvision, and torchaudio for 2.x): {exc}"
        ) from exc
    cls = getattr(module, class_name)
    kw = dict(data_type="frame", frames_number=T, split_by="number")
    if split:
        cls(str(root), train=True, **kw)
        cls(str(root), train=False, **kw)
    else:
        cls(str(root), **kw)
    return True
