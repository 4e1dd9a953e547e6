"""PyG-style layers built on :mod:`graphseq.kernels` (one family per subpackage)."""

__all__: list[str] = []
