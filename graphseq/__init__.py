"""graphseq: recurrent and scan-based layers for graphs and structured data.

The package is layered (see ``DESIGN.md`` in the docs): :mod:`graphseq.kernels` holds the shared
parallel-scan ops (reference, vectorised PyTorch and Triton paths behind one signature),
:mod:`graphseq.datasets` the generators and loaders, and :mod:`graphseq.nn` the PyG-style
layers built on the kernels.
"""

from graphseq import datasets, kernels

__version__ = "0.1.0.dev0"

__all__ = ["__version__", "datasets", "kernels"]
