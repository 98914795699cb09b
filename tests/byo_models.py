"""Hand-written user models for the bring-your-own-model tests (importable by name: tests/ is on sys.path).

They are deliberately *not* compactcl backbones: a ResNet-style net with residual adds and a
MobileNet-style net with depthwise convolutions, each ending in its own ``nn.Linear``.
"""

from __future__ import annotations

import torch
from torch import nn

from compactcl.models import model_factory

__all__ = ["TinyResNet", "TinyMobileNet", "tiny_resnet", "tiny_mobilenet", "unmarked_factory"]


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))  # residual add


class TinyResNet(nn.Module):
    def __init__(self, in_channels: int = 1, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = _Block(width, width, 1)
        self.layer2 = _Block(width, 2 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


class TinyMobileNet(nn.Module):
    """Inverted residuals with depthwise 3x3 convolutions; head is ``classifier.1`` (after dropout)."""

    def __init__(self, in_channels: int = 1, width: int = 8, num_classes: int = 10):
        super().__init__()
        hidden = 2 * width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(width, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(hidden, width, 1, bias=False), nn.BatchNorm2d(width))
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.depthwise(self.expand(x)))
        return self.classifier(x.mean((2, 3)))


@model_factory
def tiny_resnet(in_channels: int = 1, width: int = 8, num_classes: int = 10) -> nn.Module:
    return TinyResNet(in_channels, width, num_classes)


@model_factory
def tiny_mobilenet(in_channels: int = 1, width: int = 8, num_classes: int = 10) -> nn.Module:
    return TinyMobileNet(in_channels, width, num_classes)


def unmarked_factory(num_classes: int = 10) -> nn.Module:
    """Builds a model but is not marked: loading must refuse to call it."""
    return TinyResNet(num_classes=num_classes)
