"""Build a sequence layer by name, so graph models can take ``global_encoder='aaren'``."""

from __future__ import annotations

from typing import Any

# pLSTM's 1D layer lives with its family (graphseq.nn.plstm) and is registered here too.
from ..plstm.plstm1d import PLSTM1D
from .aaren import Aaren
from .base import SequenceLayer
from .gated_linear_rnn import GatedLinearRNN
from .parallel_gru import ParallelGRU

#: Registered layers by canonical name. Every one maps ``[B, T, channels]`` to
#: ``[B, T, channels]`` when built through :func:`sequence_layer`.
SEQUENCE_LAYERS: dict[str, type[SequenceLayer]] = {
    "gated_linear_rnn": GatedLinearRNN,
    "aaren": Aaren,
    "parallel_gru": ParallelGRU,
    "plstm1d": PLSTM1D,
}


def _normalize(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def sequence_layer(query: str | SequenceLayer, channels: int, **kwargs: Any) -> SequenceLayer:
    """Resolve ``query`` to a sequence layer with ``channels`` inputs and outputs.

    Names are matched ignoring case, ``_`` and ``-``, against :data:`SEQUENCE_LAYERS`'s keys
    and the class names (``"gated_linear_rnn"``, ``"GatedLinearRNN"`` and ``"gatedlinearrnn"``
    are the same). An existing :class:`~graphseq.nn.seq.base.SequenceLayer` instance is
    returned unchanged after checking its sizes. ``kwargs`` go to the constructor.

    Args:
        query: a registered name, or a layer instance.
        channels: input and output size. :class:`ParallelGRU` gets
            ``in_channels = hidden_channels = channels``.
        **kwargs: further constructor arguments (e.g. ``heads=4``).

    Returns:
        The layer.

    Example:
        >>> layer = sequence_layer("gated_linear_rnn", channels=16, heads=4)
        >>> layer
        GatedLinearRNN(16, heads=4, eigenvalue_range=(-1.0, 1.0))
    """
    if isinstance(query, SequenceLayer):
        if query.in_channels != channels or query.out_channels != channels:
            raise ValueError(
                f"sequence_layer: the given {type(query).__name__} maps {query.in_channels} to "
                f"{query.out_channels} channels, but channels = {channels} was asked for"
            )
        return query
    if not isinstance(query, str):
        raise TypeError(
            f"sequence_layer: query must be a layer name or a SequenceLayer, "
            f"got {type(query).__name__}"
        )
    wanted = _normalize(query)
    for name, cls in SEQUENCE_LAYERS.items():
        if wanted in (_normalize(name), _normalize(cls.__name__)):
            if cls is ParallelGRU:
                return cls(channels, channels, **kwargs)
            return cls(channels, **kwargs)
    raise ValueError(
        f"sequence_layer: unknown layer {query!r}; choose one of {sorted(SEQUENCE_LAYERS)}"
    )
