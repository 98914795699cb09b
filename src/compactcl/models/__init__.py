from .backbones import BACKBONES, create_backbone, list_backbones, register_backbone
from .checkpoint import load_checkpoint, save_checkpoint
from .external import ExternalNet, create_external, from_module, load_weights, model_factory
from .net import DERNet, IncrementalNet
from .protocol import IncrementalModel, create_model, list_model_kinds, register_model_kind

__all__ = ["BACKBONES", "create_backbone", "list_backbones", "register_backbone", "DERNet", "IncrementalNet",
           "create_model", "load_checkpoint", "save_checkpoint", "ExternalNet", "create_external", "from_module",
           "load_weights", "model_factory", "IncrementalModel", "list_model_kinds", "register_model_kind"]
