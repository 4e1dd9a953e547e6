"""pLSTM layers: the Source-Transition-Mark linear recurrence on sequences, grids and DAGs.

* :class:`PLSTM1D`: chains (sequences), on :func:`graphseq.kernels.chunked_matrix_scan`.
* :class:`PLSTM2D`: grids (images, patch grids), all four corner orientations, P- and D-mode,
  on :func:`graphseq.kernels.grid_scan_2d.grid_scan_2d` (cost linear in the number of cells).
* :class:`PLSTMVision`: a small pLSTM image classifier (patch embedding, P/D blocks, corner
  pooling).
* :class:`PLSTMGraph`: directed acyclic graphs, states on edges.

Gate parametrisation and initialisation shared by all of them: :mod:`.gates`.
"""

from .gates import HeadGate, MultiHeadRMSNorm
from .graph import PLSTMGraph
from .plstm1d import PLSTM1D
from .plstm2d import PLSTM2D
from .vision import PLSTMVision

__all__ = ["PLSTM1D", "PLSTM2D", "HeadGate", "MultiHeadRMSNorm", "PLSTMGraph", "PLSTMVision"]
