"""ThyroCine's machine-learning package: pure PyTorch, never imports Django.

The web platform calls it through its Python API and the CLI (`python -m ml`).
Submodules are imported lazily by callers so that `import ml` stays cheap.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
