"""Quantization: pure primitives (linear, log2, k-means), bit packing, ``quantize_``, QAT, bit-width search.

Each method is one class in ``methods/`` registered by name (:func:`register_method`,
:func:`list_methods`); everything else asks the registry.

>>> from compactcl.compress.quantize import quantize_, LinearQuantConfig
>>> quantize_(model, LinearQuantConfig(bits=8))  # doctest: +SKIP
"""

from .api import (QUANTIZERS, ActivationFakeQuant, KMeansQuantConfig, LinearQuantConfig, LogQuantConfig, QuantConfig,
                  calibrate_activations_, config_for, describe, list_quantizers, quantize_, remove_activation_quant_,
                  round_side_tensors_, select_layers)
from .methods import QUANT_METHODS, QuantMethod, get_method, list_methods, register_method
from .packing import pack_bits, pack_mask, unpack_bits, unpack_mask
from .qat import QATConfig, qat_
from .search import SearchResult, search_layer_bits, search_model_bits
from .state import WeightQuant, get_weight_quant, quantized_layers

__all__ = ["QUANTIZERS", "ActivationFakeQuant", "KMeansQuantConfig", "LinearQuantConfig", "LogQuantConfig",
           "QuantConfig", "calibrate_activations_", "config_for", "describe", "list_quantizers", "quantize_",
           "remove_activation_quant_", "round_side_tensors_", "select_layers", "QUANT_METHODS", "QuantMethod",
           "get_method", "list_methods", "register_method", "pack_bits", "pack_mask", "unpack_bits", "unpack_mask",
           "QATConfig", "qat_", "SearchResult", "search_layer_bits", "search_model_bits", "WeightQuant",
           "get_weight_quant", "quantized_layers"]
