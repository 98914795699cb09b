"""A small quantized CNN whose logits tell classes apart, for tests of what ships (ONNX, predict, edge)."""

import torch

from compactcl.compress.quantize import config_for, quantize_
from compactcl.models import IncrementalNet


def quantized_cnn(classes: int = 4) -> IncrementalNet:
    """A width-8 CNN on 1x8x8 inputs, 3-bit k-means weights, seeded: the same net every call."""
    torch.manual_seed(0)
    net = IncrementalNet("cnn", 1, 8, classes, backbone_kwargs={"width": 8}).eval()
    with torch.no_grad():  # an untrained head says one class for everything: spread its logits
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.mul_(4.0)
    return quantize_(net, config_for("kmeans", 3))
