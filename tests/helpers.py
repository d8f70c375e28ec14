"""Helpers shared by the adapter tests: small seeded networks and data, trained once per process."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import snncutoff as sc
from snncutoff import constraints, data, models
from snncutoff.train import TrainConfig, Trainer, seed_everything

BACKENDS = ("spikingjelly", "snntorch")


def backend_or_skip(name: str):
    ok, why = sc.backends.available(name)
    if not ok:
        pytest.skip(f"{name} not available: {why}")
    return sc.backends.get(name)


@functools.cache
def digits_loaders(batch_size: int = 150):
    return data.digits().loaders(batch_size=batch_size, shuffle_train=False)


@functools.cache
def trained_digits_cnn(kind: str = "qcfs", epochs: int = 6) -> nn.Module:
    """A digits CNN trained for a few seconds (kind: 'relu' or 'qcfs'); cached per process."""
    seed_everything(0)
    ann = models.get("cnn")
    if kind == "qcfs":
        constraints.apply(ann, "qcfs", levels=8, threshold=4.0)
    train, test = data.digits().loaders(batch_size=64)
    Trainer(ann, TrainConfig(epochs=epochs, lr=3e-3, seed=0), progress=False).fit(train, test)
    return ann.eval()


def random_batches(shape=(1, 8, 8), n: int = 64, batches: int = 2, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n * batches, *shape, generator=g)
    y = torch.randint(0, classes, (n * batches,), generator=g)
    return [(x[i * n:(i + 1) * n], y[i * n:(i + 1) * n]) for i in range(batches)]


def small_ann(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def snntorch_sequential(n_in: int = 64, hidden: int = 32, classes: int = 10) -> nn.Module:
    """An snnTorch net as its tutorials write it: Flatten, Linear, Leaky(init_hidden) ... last Leaky output=True."""
    snn = pytest.importorskip("snntorch")
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), snn.Leaky(beta=0.9, init_hidden=True),
                         nn.Linear(hidden, classes), snn.Leaky(beta=0.9, init_hidden=True, output=True))
