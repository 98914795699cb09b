"""compactcl: class-incremental learning that stays small enough to ship.

>>> import compactcl
>>> model = compactcl.load("runs/demo")  # doctest: +SKIP
"""

from .api import checkpoint_data, load
from .errors import CompactCLError

__version__ = "0.1.0"
__all__ = ["load", "checkpoint_data", "CompactCLError", "__version__"]
