"""The package version, importable from every layer (the package root sits above them all)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
