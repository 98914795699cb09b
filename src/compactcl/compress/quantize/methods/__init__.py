"""Quantization methods: one class per method, one file each, registered by name (see ``base``).

Importing this package imports every module in it, so a new method file registers itself.
"""

import importlib
import pkgutil

from .base import (LAYER_TYPES, QUANT_METHODS, BlobReader, BlobWriter, QuantConfig, QuantMethod, get_method,
                   list_methods, register_method)
from .kmeans import KMeansQuant, KMeansQuantConfig, SharedWeights
from .linear import LinearQuant, LinearQuantConfig
from .log import LogQuant, LogQuantConfig

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["LAYER_TYPES", "QUANT_METHODS", "BlobReader", "BlobWriter", "QuantConfig", "QuantMethod", "get_method",
           "list_methods", "register_method", "KMeansQuant", "KMeansQuantConfig", "SharedWeights", "LinearQuant",
           "LinearQuantConfig", "LogQuant", "LogQuantConfig"]
