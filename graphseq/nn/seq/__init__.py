"""1D sequence layers on the shared scan kernels.

* :class:`GatedLinearRNN`: diagonal gated linear RNN whose gates may be negative (state
  tracking), on :func:`graphseq.kernels.linear_scan`.
* :class:`Aaren`: softmax attention with learned queries as a many-to-many RNN (running max,
  then ``linear_scan``), with O(1)-memory streaming.
* :class:`ParallelGRU`: a nonlinear GRU solved in parallel over time by Newton iterations,
  each a ``linear_scan`` (ParaRNN), or sequentially.
* :class:`~graphseq.nn.plstm.PLSTM1D`: pLSTM on a chain (the mLSTM/GLA form with decoupled
  source, transition, mark and direct gates), on :func:`graphseq.kernels.chunked_matrix_scan`;
  defined in :mod:`graphseq.nn.plstm`, exported here too.
* :func:`sequence_layer`: build any of them by name (for graph models' global encoders).

All take ``[B, T, D]`` or packed ``[1, ΣT, D]`` with ``cu_seqlens``, and carry an explicit
state through ``forward(..., state=, return_state=True)`` and ``step``.
"""

from .aaren import Aaren, AarenState
from .base import SequenceLayer
from .gated_linear_rnn import GatedLinearRNN
from .parallel_gru import ParallelGRU
from .resolver import PLSTM1D, SEQUENCE_LAYERS, sequence_layer

__all__ = [
    "PLSTM1D",
    "SEQUENCE_LAYERS",
    "Aaren",
    "AarenState",
    "GatedLinearRNN",
    "ParallelGRU",
    "SequenceLayer",
    "sequence_layer",
]
