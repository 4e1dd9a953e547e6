"""pLSTM on molecular graphs: :class:`PLSTMGraphNet`, registered as ``plstm``.

A pre-norm residual stack of :class:`~graphseq.nn.plstm.graph.PLSTMGraph` layers, as in the
paper's graph experiments (alternating P- and D-mode layers, alternating DAG direction, mean
pooling, MLP head) with OGB's atom and bond encoders in front.
"""

from __future__ import annotations

from torch import Tensor, nn

from graphseq.models._init import graph_batch, pool_graphs, reset_children
from graphseq.models.gin import AtomEncoder, BondEncoder
from graphseq.models.registry import InputSpec, register_model
from graphseq.nn.plstm.graph import PLSTMGraph, prepare_dag
from graphseq.nn.seq.base import check_positive_int

__all__ = ["PLSTMGraphNet"]


class PLSTMGraphNet(nn.Module):
    r"""A stack of pLSTM graph layers (`Pöppel et al., 2025 <https://arxiv.org/abs/2506.11997>`_)
    for graph- or node-level prediction.

    Block :math:`l` (pre-norm, residual):

    .. math::
        h &\leftarrow h + \mathrm{Dropout}\big(\mathrm{PLSTMGraph}_l(\mathrm{LN}(h),
             \mathrm{BondEncoder}_l(e))\big)

        h &\leftarrow h + \mathrm{Dropout}\big(\mathrm{MLP}_l(\mathrm{LN}(h))\big)

    Layer :math:`l` runs in P-mode for even :math:`l` and D-mode for odd :math:`l`; its DAG
    (bonds pointed from lower to higher atom index, see
    :func:`~graphseq.nn.plstm.graph.orient_edges`) is reversed for :math:`l \bmod 4 \in
    \{1, 2\}` (P forward, D reversed, P reversed, D forward, ...), so each P/D pair of layers
    (:math:`2j, 2j + 1`) sees both directions, and with four layers or more each mode sees
    both. The graph preprocessing runs once per batch for each (mode, direction) and is shared
    by the layers. Then a final LayerNorm, pooling and a linear head.

    Args:
        spec: the benchmark's :class:`~graphseq.models.InputSpec`.
        hidden: width (must be a multiple of ``heads``).
        layers: number of pLSTM layers.
        heads: pLSTM heads per layer.
        dropout: dropout on the residual branches.
        pool: ``"mean"`` or ``"sum"`` graph pooling.
        mlp_ratio: hidden size of the MLPs, in multiples of ``hidden``.

    Shapes:
        input: a PyG batch with ``x`` ``[N, 9]`` long (OGB atoms) or ``[N, node_dim]`` float,
        ``edge_index`` ``[2, E]`` (both directions), optional ``edge_attr``, ``batch`` ``[N]``.
        output: ``[num_graphs, spec.out_dim]`` (graph level) or ``[N, spec.out_dim]``.
    """

    def __init__(
        self,
        spec: InputSpec,
        hidden: int = 128,
        layers: int = 4,
        heads: int = 4,
        dropout: float = 0.1,
        pool: str = "mean",
        mlp_ratio: int = 2,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        for name, value in (
            ("hidden", hidden),
            ("layers", layers),
            ("heads", heads),
            ("mlp_ratio", mlp_ratio),
        ):
            check_positive_int(cls, name, value)
        if hidden % heads != 0:
            raise ValueError(f"{cls}: heads ({heads}) must divide hidden ({hidden})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{cls}: dropout must be in [0, 1), got {dropout}")
        if pool not in ("mean", "sum"):
            raise ValueError(f"{cls}: pool must be 'mean' or 'sum', got {pool!r}")
        self.spec, self.hidden, self.layers, self.heads = spec, hidden, layers, heads
        self.dropout, self.pool, self.mlp_ratio = dropout, pool, mlp_ratio

        if spec.node_features == "ogb-atom":
            self.node_encoder: nn.Module = AtomEncoder(hidden)
        else:
            self.node_encoder = nn.Linear(spec.node_dim, hidden)
        edge_dim = None if spec.edge_features is None else hidden
        self.edge_encoders = nn.ModuleList()
        self.convs = nn.ModuleList()
        self.mlps = nn.ModuleList()
        self.norms1 = nn.ModuleList()
        self.norms2 = nn.ModuleList()
        for layer in range(layers):
            mode = "P" if layer % 2 == 0 else "D"
            self.convs.append(
                PLSTMGraph(
                    hidden, hidden, heads, mode, edge_dim=edge_dim, reverse=layer % 4 in (1, 2)
                )
            )
            if spec.edge_features == "ogb-bond":
                self.edge_encoders.append(BondEncoder(hidden))
            elif spec.edge_features == "dense":
                self.edge_encoders.append(nn.Linear(spec.edge_dim, hidden))
            else:
                self.edge_encoders.append(nn.Identity())
            self.mlps.append(
                nn.Sequential(
                    nn.Linear(hidden, mlp_ratio * hidden),
                    nn.GELU(),
                    nn.Linear(mlp_ratio * hidden, hidden),
                )
            )
            self.norms1.append(nn.LayerNorm(hidden))
            self.norms2.append(nn.LayerNorm(hidden))
        self.final_norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, spec.out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reset every layer by its own rule (PLSTMGraph keeps its gate initialisation)."""
        reset_children(self)

    def forward(self, batch) -> Tensor:
        x, edge_index = batch.x, batch.edge_index
        self.spec.check_inputs(type(self).__name__, x, getattr(batch, "edge_attr", None))
        N = x.size(0)
        node_batch, num_graphs = graph_batch(batch, N, x.device)
        if self.spec.node_features != "ogb-atom":
            x = x.to(self.node_encoder.weight.dtype)
        h = self.node_encoder(x)  # [N, d]
        edge_attr = getattr(batch, "edge_attr", None)
        if self.spec.edge_features == "dense":
            edge_attr = edge_attr.to(h.dtype)
        structures = {}  # (mode, reverse) -> DagStructure, shared by the layers
        for layer, conv in enumerate(self.convs):
            key = (conv.mode, conv.reverse)
            if key not in structures:
                structures[key] = prepare_dag(
                    edge_index, N, mode=conv.mode, reverse=conv.reverse, batch=node_batch
                )
            e = None if self.spec.edge_features is None else self.edge_encoders[layer](edge_attr)
            out = conv(
                self.norms1[layer](h),
                edge_index,
                batch=node_batch,  # per-graph sizes: lets algorithm="auto" pick "paths"
                edge_attr=e,
                structure=structures[key],
            )
            h = h + nn.functional.dropout(out, self.dropout, self.training)
            out = self.mlps[layer](self.norms2[layer](h))
            h = h + nn.functional.dropout(out, self.dropout, self.training)
        h = self.final_norm(h)
        if self.spec.level == "node":
            return self.head(h)  # [N, out]
        return self.head(pool_graphs(h, node_batch, num_graphs, self.pool))  # [G, out]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(hidden={self.hidden}, layers={self.layers}, "
            f"heads={self.heads}, dropout={self.dropout}, pool={self.pool!r}"
            + ("" if self.mlp_ratio == 2 else f", mlp_ratio={self.mlp_ratio}")
            + ")"
        )


@register_model("plstm", description="pLSTM graph layers (P/D, both directions) on the bond DAG")
def plstm(
    spec: InputSpec,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    dropout: float = 0.1,
    pool: str = "mean",
) -> PLSTMGraphNet:
    return PLSTMGraphNet(
        spec, hidden=hidden, layers=layers, heads=heads, dropout=dropout, pool=pool
    )
