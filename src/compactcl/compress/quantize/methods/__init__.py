"""Quantization methods: one class per method, one file each, registered by name (see ``base``).

Importing this package registers the built-in methods.
"""

from .base import (LAYER_TYPES, QUANT_METHODS, BlobReader, BlobWriter, QuantConfig, QuantMethod, get_method,
                   list_methods, register_method)
from .kmeans import KMeansQuant, KMeansQuantConfig, SharedWeights
from .linear import LinearQuant, LinearQuantConfig
from .log import LogQuant, LogQuantConfig

__all__ = ["LAYER_TYPES", "QUANT_METHODS", "BlobReader", "BlobWriter", "QuantConfig", "QuantMethod", "get_method",
           "list_methods", "register_method", "KMeansQuant", "KMeansQuantConfig", "SharedWeights", "LinearQuant",
           "LinearQuantConfig", "LogQuant", "LogQuantConfig"]
