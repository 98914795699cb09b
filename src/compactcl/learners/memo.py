"""MEMO, Memory-efficient Expandable MOdel (Zhou et al., ICLR 2023, "A Model or 603 Exemplars"):
DER's idea — a new branch per task, old ones frozen — but the branches share the shallow blocks,
and only the deep, specialized block is added per task. Shallow layers are general and change
little between tasks; the deep ones specialize, so the growth per task is a fraction of a backbone.

Where "shallow" ends, per built-in backbone (``split_backbone``; MEMO's ResNet-32 split: the
stem and the first two stages shared, the last stage per task):

- ``resnet20`` / ``resnet32``: stem + stages 1-2 shared; stage 3 (+ pooling) per task;
- ``cnn``: the first two conv-BN-ReLU layers and the pooling shared; the last two convs per task;
- ``lenet5``: the first conv + pooling shared; the second conv and the fully connected layers per task;
- ``mobilenetv2``: everything up to the 32-channel stage shared; the 64-channel stage and the 1x1 head conv per task;
- ``mlp`` / ``lenet300``: every hidden layer but the last shared; the last hidden layer per task
  (an MLP with one hidden layer shares nothing: MEMO becomes DER).

Differences from the paper (and PyCIL's ``memo.py``): the shared blocks are frozen after the first
task (PyCIL can keep training them, ``train_base``); the auxiliary head is DER's (new classes + one
"old" class); no separate balanced fine-tuning of the classifier.

The network is registered as model kind ``memo``, so its checkpoints load (and resume) like DER's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..models.backbones import MLP, CifarResNet, LeNet5, SmallCNN, SmallMobileNetV2, create_backbone
from ..models.external import is_external_name
from ..models.protocol import empty_linear, head_params, register_model_kind, widen_head
from .base import register_learner
from .der import DER, DEROptions

__all__ = ["MEMO", "MEMONet", "split_backbone", "SPLIT_BACKBONES"]

SPLIT_BACKBONES = ("cnn", "lenet300", "lenet5", "mlp", "mobilenetv2", "resnet20", "resnet32")


def split_backbone(backbone: nn.Module) -> tuple[list[nn.Module], int]:
    """(the backbone's modules in forward order, how many of the first ones are 'shallow')."""
    if isinstance(backbone, CifarResNet):
        per_stage = len(backbone.blocks) // 3
        return [backbone.stem, *backbone.blocks, backbone.pool], 1 + 2 * per_stage
    if isinstance(backbone, SmallCNN):
        return list(backbone.body), 3  # conv, conv, max-pool | conv, conv, pool, flatten
    if isinstance(backbone, LeNet5):
        return [*backbone.conv, backbone.fc], 3  # conv, relu, pool | conv, relu, pool, flatten, fc
    if isinstance(backbone, SmallMobileNetV2):
        body = list(backbone.body)
        return body, len(body) - 5  # | the two 64-channel blocks, 1x1 conv, pool, flatten
    if isinstance(backbone, MLP):
        body = list(backbone.body)
        return body, len(body) - 2  # | the last Linear + ReLU
    raise ValueError(f"MEMO does not know where {type(backbone).__name__}'s shallow blocks end; "
                     f"use one of {', '.join(SPLIT_BACKBONES)}")


class MEMONet(nn.Module):
    """Shared shallow blocks + one deep block per task; the head reads every deep block's features.

    >>> net = MEMONet("cnn", 1, 8, backbone_kwargs={"width": 8}); net.grow(2); net.grow(2)
    >>> net(torch.zeros(3, 1, 8, 8)).shape, len(net.blocks)
    (torch.Size([3, 4]), 2)
    """

    kind: ClassVar[str] = "memo"
    grows_branches: ClassVar[bool] = True

    def __init__(self, backbone: str, in_channels: int, input_size: int, num_classes: int = 0,
                 backbone_kwargs: dict[str, Any] | None = None, blocks: int = 0, aux_classes: int = 0):
        super().__init__()
        self.backbone_name = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.in_channels, self.input_size = in_channels, input_size
        base = create_backbone(backbone, in_channels, input_size, **self.backbone_kwargs)
        modules, k = split_backbone(base)
        self.shallow = nn.Sequential(*modules[:k])
        self.out_dim: int = base.out_dim
        self.blocks = nn.ModuleList(self._deep_block() for _ in range(blocks))
        self.head = empty_linear(self.out_dim * blocks, num_classes)
        self.aux_head: nn.Linear | None = nn.Linear(self.out_dim, aux_classes) if aux_classes else None

    def _deep_block(self) -> nn.Sequential:
        modules, k = split_backbone(create_backbone(self.backbone_name, self.in_channels, self.input_size,
                                                    **self.backbone_kwargs))
        return nn.Sequential(*modules[k:])

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def spec(self) -> dict[str, Any]:
        return {"kind": "memo", "backbone": self.backbone_name, "backbone_kwargs": self.backbone_kwargs,
                "in_channels": self.in_channels, "input_size": self.input_size, "num_classes": self.num_classes,
                "blocks": len(self.blocks), "aux_classes": self.aux_head.out_features if self.aux_head else 0}

    def _deep_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        s = self.shallow(x)  # (B, C, H, W) or (B, D): computed once, shared by every deep block
        return [b(s) for b in self.blocks]  # each (B, out_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._deep_features(x), dim=1)  # (B, out_dim * blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, auxiliary logits of the newest block) for DER's loss."""
        feats = self._deep_features(x)
        aux = self.aux_head(feats[-1]) if self.aux_head is not None else None
        return self.head(torch.cat(feats, dim=1)), aux

    def grow(self, n_new: int) -> None:
        """A deep block (initialised from the newest), ``n_new`` classes; old blocks and, after the first
        task, the shared shallow blocks frozen."""
        device = self.head.weight.device
        new = self._deep_block().to(device)
        if len(self.blocks):
            new.load_state_dict(self.blocks[-1].state_dict())
            self.shallow.requires_grad_(False)
        self.blocks.append(new)
        for block in self.blocks[:-1]:
            block.requires_grad_(False)
        self.head = widen_head(self.head, self.out_dim, n_new)
        self.aux_head = nn.Linear(self.out_dim, n_new + 1).to(device) if len(self.blocks) > 1 else None

    def end_task(self) -> None:
        self.aux_head = None

    def single_params(self) -> int:
        shallow = sum(p.numel() for p in self.shallow.parameters())
        one = sum(p.numel() for p in self.blocks[0].parameters()) if len(self.blocks) else 0
        return shallow + one + head_params(self.out_dim, self.num_classes)

    def train(self, mode: bool = True) -> "MEMONet":
        super().train(mode)
        frozen = [self.shallow] if len(self.blocks) > 1 else []
        for module in [*frozen, *self.blocks[:-1]]:  # frozen blocks keep their batch-norm statistics
            module.eval()
        return self


def _saved_blocks(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> list[tuple[str, int]]:
    """A MEMO file backs as many deep blocks as it holds block weights for."""
    return [("blocks", len({k.split(".")[1] for k in state if k.startswith("blocks.") and k.count(".") >= 2}))]


register_model_kind(MEMONet.kind, lambda spec: MEMONet(**spec), saved_counts=_saved_blocks)


@register_learner
class MEMO(DER):
    """DER's training (new data + exemplars, CE + auxiliary CE) on :class:`MEMONet`."""

    name = "memo"
    Options = DEROptions
    network = MEMONet

    @classmethod
    def check_backbone(cls, backbone: str) -> None:
        if is_external_name(backbone) or backbone not in SPLIT_BACKBONES:
            raise ValueError(f"learner 'memo' splits a built-in backbone into shared and per-task blocks; "
                             f"use one of {', '.join(SPLIT_BACKBONES)} (got {backbone!r})")
