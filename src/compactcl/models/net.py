"""Classifiers that grow: one backbone + expandable head, or DER's one-branch-per-task net.

Both are :class:`~compactcl.models.protocol.IncrementalModel` s, registered as model kinds
``single`` and ``der``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .backbones import create_backbone
from .protocol import empty_linear, grow_linear, head_params, register_model_kind, widen_head

__all__ = ["IncrementalNet", "DERNet"]


class IncrementalNet(nn.Module):
    """One backbone and a linear head that grows with every task.

    >>> net = IncrementalNet("mlp", in_channels=1, input_size=8, num_classes=2)
    >>> net.grow(2); net(torch.zeros(3, 1, 8, 8)).shape
    torch.Size([3, 4])
    """

    kind: ClassVar[str] = "single"
    grows_branches: ClassVar[bool] = False

    def __init__(self, backbone: str, in_channels: int, input_size: int, num_classes: int = 0,
                 backbone_kwargs: dict[str, Any] | None = None):
        super().__init__()
        self.backbone_name = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.in_channels, self.input_size = in_channels, input_size
        self.backbone = create_backbone(backbone, in_channels, input_size, **self.backbone_kwargs)
        self.head = empty_linear(self.backbone.out_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def spec(self) -> dict[str, Any]:
        return {"kind": "single", "backbone": self.backbone_name, "backbone_kwargs": self.backbone_kwargs,
                "in_channels": self.in_channels, "input_size": self.input_size, "num_classes": self.num_classes}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes)

    def grow(self, n_new: int) -> None:
        self.head = grow_linear(self.head, n_new)

    def single_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class DERNet(nn.Module):
    """Dynamically Expandable Representation (Yan et al., CVPR 2021).

    Each task adds a fresh backbone branch; the head reads the concatenated features of all
    branches. ``aux_head`` (new classes + one "old" class) trains the newest branch to be
    discriminative on its own and is dropped after the task. The model grows by one
    backbone per task, which is why its deployed form must be compressed.
    """

    kind: ClassVar[str] = "der"
    grows_branches: ClassVar[bool] = True

    def __init__(self, backbone: str, in_channels: int, input_size: int, num_classes: int = 0,
                 backbone_kwargs: dict[str, Any] | None = None, branches: int = 0, aux_classes: int = 0):
        super().__init__()
        self.backbone_name = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.in_channels, self.input_size = in_channels, input_size
        self.branches = nn.ModuleList(
            create_backbone(backbone, in_channels, input_size, **self.backbone_kwargs) for _ in range(branches))
        self.head = empty_linear(sum(b.out_dim for b in self.branches), num_classes)
        self.aux_head: nn.Linear | None = nn.Linear(self.branches[-1].out_dim, aux_classes) if aux_classes else None

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def spec(self) -> dict[str, Any]:
        return {"kind": "der", "backbone": self.backbone_name, "backbone_kwargs": self.backbone_kwargs,
                "in_channels": self.in_channels, "input_size": self.input_size,
                "num_classes": self.num_classes, "branches": len(self.branches),
                "aux_classes": self.aux_head.out_features if self.aux_head is not None else 0}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)  # (B, sum of branch dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, auxiliary logits of the newest branch) for the DER loss."""
        feats = [b(x) for b in self.branches]
        logits = self.head(torch.cat(feats, dim=1))
        aux = self.aux_head(feats[-1]) if self.aux_head is not None else None
        return logits, aux

    def grow(self, n_new: int) -> None:
        """Add a branch (initialised from the newest one, old ones frozen) and ``n_new`` classes."""
        new = create_backbone(self.backbone_name, self.in_channels, self.input_size, **self.backbone_kwargs)
        if len(self.branches):
            new.load_state_dict(self.branches[-1].state_dict())
        device = self.head.weight.device
        self.branches.append(new.to(device))
        for branch in self.branches[:-1]:
            branch.requires_grad_(False)
        self.head = widen_head(self.head, new.out_dim, n_new)
        # The auxiliary head needs an 'old' class to contrast with: none on the first task.
        self.aux_head = nn.Linear(new.out_dim, n_new + 1).to(device) if len(self.branches) > 1 else None

    def end_task(self) -> None:
        self.aux_head = None

    def single_params(self) -> int:
        one = self.branches[0]
        return sum(p.numel() for p in one.parameters()) + head_params(one.out_dim, self.num_classes)

    def train(self, mode: bool = True) -> "DERNet":
        super().train(mode)
        for branch in self.branches[:-1]:  # frozen branches keep their batch-norm statistics
            branch.eval()
        return self


register_model_kind(IncrementalNet.kind, lambda spec: IncrementalNet(**spec))
def _der_branches(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> list[tuple[str, int]]:
    """A DER file backs as many branches as it holds branch weights for."""
    return [("branches", len({k.split(".")[1] for k in state if k.startswith("branches.") and k.count(".") >= 2}))]


register_model_kind(DERNet.kind, lambda spec: DERNet(**spec), saved_counts=_der_branches)
