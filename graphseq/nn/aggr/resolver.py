"""Resolve aggregations by name: graphseq's first, then PyG's.

PyG's :func:`torch_geometric.nn.resolver.aggregation_resolver` only searches the namespace
``torch_geometric.nn.aggr``, and PyG already owns the name ``"lcm"`` there (its padded
``LCMAggregation``). Registering graphseq's classes would mean patching PyG's module at import
time and would still lose ``"lcm"`` to PyG's class, so graphseq does not touch PyG. Instead
this resolver knows graphseq's names and falls back to PyG's resolver for everything else.
Pass its result to a convolution as an instance::

    from torch_geometric.nn import SAGEConv
    from graphseq.nn.aggr import aggregation_resolver

    conv = SAGEConv(64, 64, aggr=aggregation_resolver("lcm", 64, 64))
    conv = SAGEConv(64, 64, aggr=aggregation_resolver(["lcm", "mean"], 64, 64))  # Multi

(A string ``aggr="lcm"`` given directly to a PyG convolution still means PyG's class.)
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch_geometric.nn.aggr import Aggregation, MultiAggregation
from torch_geometric.nn.resolver import aggregation_resolver as pyg_aggregation_resolver
from torch_geometric.resolver import normalize_string

from .lcm import LCMAggregation
from .recurrent import RecurrentAggregation

#: graphseq's aggregation names (matched ignoring case, ``_``, ``-`` and spaces; the class
#: names ``LCMAggregation`` / ``RecurrentAggregation`` work too).
AGGREGATIONS: dict[str, Any] = {
    "lcm": LCMAggregation,
    "lcm_gru": partial(LCMAggregation, cell="gru"),
    "lcm_mlp": partial(LCMAggregation, cell="mlp"),
    "recurrent": RecurrentAggregation,
    "recurrent_gru": partial(RecurrentAggregation, cell="gru"),
    "recurrent_lstm": partial(RecurrentAggregation, cell="lstm"),
}


def aggregation_resolver(query: Any, *args: Any, **kwargs: Any) -> Aggregation:
    """Build an aggregation from a name, a list of names, or return an instance unchanged.

    Args:
        query: a graphseq name from :data:`AGGREGATIONS` (``"lcm"``, ``"lcm_mlp"``,
            ``"recurrent"``, ``"recurrent_lstm"``, ...), any name PyG's resolver knows
            (``"sum"``, ``"mean"``, ``"max"``, ``"softmax"``, ...), a list or tuple of those
            (a :class:`~torch_geometric.nn.aggr.MultiAggregation`; ``args``/``kwargs`` go to
            the graphseq entries, PyG entries get none), or an
            :class:`~torch_geometric.nn.aggr.Aggregation` (returned unchanged).
        *args: constructor arguments, e.g. ``in_channels, out_channels``.
        **kwargs: constructor keyword arguments.

    Example:
        >>> aggregation_resolver("recurrent_lstm", 16, 16)
        RecurrentAggregation(16, 16, cell='lstm', order='given', num_layers=1)
        >>> aggregation_resolver("max")
        MaxAggregation()
    """
    if isinstance(query, list | tuple):
        return MultiAggregation([_resolve_one(q, args, kwargs, in_list=True) for q in query])
    return _resolve_one(query, args, kwargs)


def _resolve_one(query: Any, args: tuple, kwargs: dict, in_list: bool = False) -> Aggregation:
    if not isinstance(query, str):
        return query
    wanted = normalize_string(query)
    for name, cls in AGGREGATIONS.items():
        if wanted == normalize_string(name):
            # a name such as "lcm_mlp" fixes a keyword; a different value in kwargs would
            # silently build another aggregation than the one named
            for key, value in getattr(cls, "keywords", {}).items():
                if key in kwargs and kwargs[key] != value:
                    raise ValueError(
                        f"aggregation_resolver: {query!r} means {key}={value!r}, but "
                        f"{key}={kwargs[key]!r} was given; drop the argument or use the "
                        f"name without the {key}"
                    )
            return cls(*args, **kwargs)
    for cls in (LCMAggregation, RecurrentAggregation):
        if wanted == normalize_string(cls.__name__):
            return cls(*args, **kwargs)
    # PyG's own names; inside a list they get no arguments (its basic aggregations take none)
    try:
        if in_list:
            return pyg_aggregation_resolver(query)
        return pyg_aggregation_resolver(query, *args, **kwargs)
    except ValueError as err:
        # only PyG's own "unknown name" error is rewritten; a ValueError raised by the
        # constructor of a class PyG did resolve (bad q, missing num_layers, ...) is the
        # user's real error and passes through unchanged
        if not str(err).startswith("Could not resolve"):
            raise
        raise ValueError(
            f"aggregation_resolver: unknown aggregation {query!r}; graphseq knows "
            f"{sorted(AGGREGATIONS)}, the rest is resolved by PyG"
        ) from None
