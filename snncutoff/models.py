"""Conversion-ready model zoo: every activation an ``nn.ReLU`` module, average pooling.

``get(name, num_classes, in_channels, input_size)``:

- ``cnn``: a small CNN for digits (8x8) and MNIST (28x28): three 3x3 conv-BN-ReLU
  blocks, two average poolings, a linear classifier;
- ``vgg11`` / ``vgg16``: CIFAR-style VGG with BatchNorm and average pooling;
- ``resnet18`` (4 stages of 2 basic blocks) and ``resnet20`` (3 stages of 3, CIFAR);
- ``vggsnn``: the VGG-11-like network of the TET paper for DVS frames (48x48 input after
  pooling; works on 128x128 and 34x34 inputs through adaptive pooling).

Residual blocks call a separate ReLU module after the addition, so conversion and
constraint swapping see every activation.
"""

from __future__ import annotations

from torch import Tensor, nn

from .validation import check_int

MODELS = ("cnn", "vgg11", "vgg16", "resnet18", "resnet20", "vggsnn")


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def cnn(num_classes: int = 10, in_channels: int = 1, input_size: int = 8, width: int = 16) -> nn.Module:
    """Small CNN: [conv-BN-ReLU] x3 with two 2x2 average poolings, then a linear layer."""
    size = input_size // 4
    return nn.Sequential(
        *_conv_bn(in_channels, width), nn.AvgPool2d(2),
        *_conv_bn(width, 2 * width), nn.AvgPool2d(2),
        *_conv_bn(2 * width, 4 * width),
        nn.Flatten(), nn.Linear(4 * width * size * size, num_classes),
    )


_VGG = {
    "vgg11": [64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P"],
    "vgg16": [64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P"],
}


def vgg(name: str = "vgg16", num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
        dropout: float = 0.0) -> nn.Module:
    """CIFAR-style VGG (BatchNorm, average pooling, one linear classifier after a global pool)."""
    layers: list[nn.Module] = []
    c = in_channels
    for v in _VGG[name]:
        if v == "P":
            layers.append(nn.AvgPool2d(2))
        else:
            layers += _conv_bn(c, v)
            c = v
    head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout:
        head.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, *head, nn.Linear(c, num_classes))


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` with ReLU modules."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet of :class:`BasicBlock` stages, global average pooling, linear classifier."""

    def __init__(self, stages: list[int], widths: list[int], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0]))
        blocks, c = [], widths[0]
        for i, (n, w) in enumerate(zip(stages, widths)):
            for j in range(n):
                blocks.append(BasicBlock(c, w, 2 if (j == 0 and i > 0) else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


def vggsnn(num_classes: int = 10, in_channels: int = 2, input_size: int = 48) -> nn.Module:
    """TET's VGGSNN for DVS frames: 64-128-P-256-256-P-512-512-P-512-512-P, adaptive to 3x3."""
    cfg = [64, 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P"]
    layers: list[nn.Module] = []
    if input_size > 48:
        layers.append(nn.AdaptiveAvgPool2d(48))
    c = in_channels
    for v in cfg:
        if v == "P":
            layers.append(nn.AvgPool2d(2))
        else:
            layers += _conv_bn(c, v)
            c = v
    layers += [nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(c * 9, num_classes)]
    return nn.Sequential(*layers)


#: the smallest input side each model takes (its poolings halve the input)
MIN_INPUT = {"cnn": 4, "vgg11": 32, "vgg16": 32, "resnet18": 8, "resnet20": 4, "vggsnn": 16}


def get(name: str, num_classes: int = 10, in_channels: int = 1, input_size: int = 8) -> nn.Module:
    """A fresh, randomly initialised model by name (see :data:`MODELS`)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    num_classes = check_int("num_classes", num_classes, 2)
    in_channels = check_int("in_channels", in_channels, 1)
    input_size = check_int("input_size", input_size, 1)
    if input_size < MIN_INPUT[name]:
        raise ValueError(f"model {name!r} takes inputs of at least {MIN_INPUT[name]}x{MIN_INPUT[name]} "
                         f"(its poolings halve them), got {input_size}x{input_size}")
    if name == "cnn":
        return cnn(num_classes, in_channels, input_size)
    if name in _VGG:
        return vgg(name, num_classes, in_channels, input_size)
    if name == "resnet18":
        return ResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_channels)
    if name == "resnet20":
        return ResNet([3, 3, 3], [16, 32, 64], num_classes, in_channels)
    if name == "vggsnn":
        return vggsnn(num_classes, in_channels, input_size)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
