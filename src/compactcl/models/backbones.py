"""Feature extractors. Every backbone maps (B, C, H, W) images to (B, out_dim) features.

Create one by name with :func:`create_backbone`; :func:`list_backbones` names them all.
Shortcuts in residual nets are 1x1 convolutions (never zero padding) so channel pruning can
follow them through the dependency graph.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["create_backbone", "list_backbones", "register_backbone", "BACKBONES"]

BackboneFactory = Callable[..., nn.Module]
BACKBONES: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    def wrap(factory: BackboneFactory) -> BackboneFactory:
        BACKBONES[name] = factory
        return factory

    return wrap


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def create_backbone(name: str, in_channels: int = 1, input_size: int = 28, **kwargs) -> nn.Module:
    """Build backbone ``name`` for images of ``in_channels`` x ``input_size`` x ``input_size``.

    >>> net = create_backbone("cnn", in_channels=1, input_size=8)
    >>> net(torch.zeros(2, 1, 8, 8)).shape == (2, net.out_dim)
    True
    """
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; choose one of {', '.join(list_backbones())}")
    return BACKBONES[name](in_channels=in_channels, input_size=input_size, **kwargs)


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MLP(nn.Module):
    """Fully connected net on flattened pixels (Split-MNIST's 784-400-400)."""

    def __init__(self, in_channels: int, input_size: int, hidden: tuple[int, ...] = (400, 400)):
        super().__init__()
        dims = [in_channels * input_size * input_size, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_backbone("mlp")
def mlp(in_channels: int, input_size: int, hidden: tuple[int, ...] | list[int] = (400, 400)) -> nn.Module:
    return MLP(in_channels, input_size, tuple(hidden))


@register_backbone("lenet300")
def lenet300(in_channels: int, input_size: int) -> nn.Module:
    """LeNet-300-100 (Deep Compression's fully connected baseline); the head adds the last layer."""
    return MLP(in_channels, input_size, (300, 100))


class LeNet5(nn.Module):
    """LeNet-5 with 'same' padding so 8x8 inputs still have two pooling stages."""

    def __init__(self, in_channels: int, input_size: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = 16 * (input_size // 4) ** 2
        self.fc = nn.Sequential(nn.Linear(flat, 120), nn.ReLU(inplace=True), nn.Linear(120, 84), nn.ReLU(inplace=True))
        self.out_dim = 84

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


@register_backbone("lenet5")
def lenet5(in_channels: int, input_size: int) -> nn.Module:
    return LeNet5(in_channels, input_size)


class SmallCNN(nn.Module):
    """Four 3x3 conv-BN-ReLU layers, one pooling, global average pool: the small CNN."""

    def __init__(self, in_channels: int, input_size: int, width: int = 32):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv_bn(in_channels, w), _conv_bn(w, w), nn.MaxPool2d(2),
            _conv_bn(w, 2 * w), _conv_bn(2 * w, 2 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.out_dim = 2 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_backbone("cnn")
def cnn(in_channels: int, input_size: int, width: int = 32) -> nn.Module:
    return SmallCNN(in_channels, input_size, width)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, 1, act=False)
        self.shortcut = _conv_bn(cin, cout, 1, stride, act=False) if (stride != 1 or cin != cout) else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class _BasicResNet(nn.Module):
    """A 3x3 stem, then stages of ``blocks`` basic blocks at ``widths`` (stride 2 entering every stage
    but the first), global average pooling. The ResNets below differ only in these two numbers."""

    def __init__(self, in_channels: int, widths: list[int], blocks: int):
        super().__init__()
        self.stem = _conv_bn(in_channels, widths[0])
        layers: list[nn.Module] = []
        cin = widths[0]
        for stage, cout in enumerate(widths):
            for i in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.stem(x)))


class CifarResNet(_BasicResNet):
    """He et al.'s CIFAR ResNet (6n+2 layers, widths 16/32/64) with 1x1-conv shortcuts."""

    def __init__(self, in_channels: int, input_size: int, depth: int = 20, width: int = 16):
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 56...), got {depth}")
        super().__init__(in_channels, [width, 2 * width, 4 * width], (depth - 2) // 6)


@register_backbone("resnet20")
def resnet20(in_channels: int, input_size: int, width: int = 16) -> nn.Module:
    return CifarResNet(in_channels, input_size, 20, width)


@register_backbone("resnet32")
def resnet32(in_channels: int, input_size: int, width: int = 16) -> nn.Module:
    return CifarResNet(in_channels, input_size, 32, width)


class ResNet18(_BasicResNet):
    """ResNet-18 for 32x32 images (the CIFAR stem: one 3x3 stride-1 conv, no max pool), as in Mammoth.

    Four stages of two basic blocks, widths ``width`` x 1/2/4/8 (64: 11.2M parameters), 1x1-conv
    shortcuts where the shape changes.
    """

    def __init__(self, in_channels: int, input_size: int, width: int = 64):
        super().__init__(in_channels, [width, 2 * width, 4 * width, 8 * width], 2)


@register_backbone("resnet18")
def resnet18(in_channels: int, input_size: int, width: int = 64) -> nn.Module:
    return ResNet18(in_channels, input_size, width)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class SmallMobileNetV2(nn.Module):
    """A narrow MobileNetV2 (inverted residuals, depthwise 3x3) for small images."""

    # (expansion, out channels, repeats, first stride)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2))

    def __init__(self, in_channels: int, input_size: int, width_mult: float = 1.0, last_channels: int = 256):
        super().__init__()
        c = lambda v: max(8, int(round(v * width_mult / 8)) * 8)  # noqa: E731 - channel rounding
        cin = c(32)
        layers: list[nn.Module] = [_conv_bn(in_channels, cin, 3, 1)]
        for t, cout, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c(cout), s if i == 0 else 1, t))
                cin = c(cout)
        layers += [_conv_bn(cin, last_channels, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.out_dim = last_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_backbone("mobilenetv2")
def mobilenetv2(in_channels: int, input_size: int, width_mult: float = 1.0, last_channels: int = 256) -> nn.Module:
    return SmallMobileNetV2(in_channels, input_size, width_mult, last_channels)
