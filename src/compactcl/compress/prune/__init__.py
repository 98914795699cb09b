"""Pruning: importance scores, sensitivity analysis, unstructured masks, structural channel removal.

Entry point: :func:`prune_` with one of the configs, then :func:`finetune_` and :func:`finalize_`.
Torch-Pruning and matplotlib are imported only when structural pruning or plots are used.
Every module in this package is imported here, so a pruning method (``@register_pruner``) or an
importance score (``@register_importance``) in a new file registers itself.
"""

import importlib
import pkgutil

from .api import (PRUNERS, L1Config, MagnitudeConfig, PruneData, PruneResult, SensitivityConfig, StructuredConfig,
                  accumulate_grads, config_for, cross_entropy, finalize_, finetune_, list_methods, prune_,
                  register_pruner)
from .importance import IMPORTANCES, get_importance, list_importances, register_importance, score
from .sensitivity import (Sensitivity, ratios_for_target, ratios_within_drop, read_sensitivity, save_sensitivity,
                          sensitivity_analysis)
from .structured import channel_counts, prune_channels_
from .unstructured import (agp_sparsity, apply_masks_, l1_penalty, layer_sparsity, magnitude_prune_, masks_of,
                           select_masks, sparsity_of, strip_masks_, with_l1)

__all__ = ["PRUNERS", "L1Config", "MagnitudeConfig", "PruneData", "PruneResult", "SensitivityConfig",
           "StructuredConfig", "accumulate_grads", "config_for", "cross_entropy", "finalize_", "finetune_",
           "list_methods", "prune_", "register_pruner", "IMPORTANCES", "get_importance", "list_importances",
           "register_importance", "score", "Sensitivity", "ratios_for_target", "ratios_within_drop",
           "read_sensitivity", "save_sensitivity",
           "sensitivity_analysis", "channel_counts", "prune_channels_", "agp_sparsity", "apply_masks_",
           "l1_penalty", "layer_sparsity", "magnitude_prune_", "masks_of", "select_masks", "sparsity_of",
           "strip_masks_", "with_l1"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
