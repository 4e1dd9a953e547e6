"""GIN and GIN with a virtual node, as in OGB's ``examples/graphproppred/mol`` baselines.

The layer is PyG's :class:`~torch_geometric.nn.conv.GINEConv` with a learnable epsilon and the MLP
``Linear(d, 2d) -> BatchNorm -> ReLU -> Linear(2d, d)``; bond features are embedded per layer
(OGB's ``BondEncoder``), so ``GINEConv`` computes exactly OGB's ``GINConv``:
``mlp((1 + eps) x_i + sum_j relu(x_j + e_ij))``. Around it, as in OGB's ``GNN_node`` /
``GNN_node_Virtualnode``: BatchNorm after each layer, ReLU on all but the last, dropout, last-layer
node representation, mean pooling and a linear head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import GINConv, GINEConv, global_add_pool

from graphseq.models._init import graph_batch, pool_graphs, reset_children
from graphseq.models.registry import InputSpec, register_model
from graphseq.nn.seq.base import check_positive_int, check_real

__all__ = ["GIN", "OGB_ATOM_FEATURE_DIMS", "OGB_BOND_FEATURE_DIMS", "AtomEncoder", "BondEncoder"]

#: ``ogb.utils.features.get_atom_feature_dims()`` / ``get_bond_feature_dims()`` (ogb 1.3.6),
#: copied so the models import without ogb; a test checks they agree.
OGB_ATOM_FEATURE_DIMS = (119, 5, 12, 12, 10, 6, 6, 2, 2)
OGB_BOND_FEATURE_DIMS = (5, 6, 2)


class _CategoricalEncoder(nn.Module):
    def __init__(self, dims: tuple[int, ...], emb_dim: int) -> None:
        super().__init__()
        self.dims = tuple(dims)
        self.emb_dim = emb_dim
        self.embeddings = nn.ModuleList(nn.Embedding(d, emb_dim) for d in self.dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for emb in self.embeddings:
            nn.init.xavier_uniform_(emb.weight.data)

    def forward(self, x: Tensor) -> Tensor:
        # x: [N, len(dims)] int -> [N, emb_dim]
        if x.dim() != 2 or x.size(1) != len(self.dims):
            raise ValueError(
                f"{type(self).__name__}: expected integer features of shape [N, {len(self.dims)}], "
                f"got {tuple(x.shape)}"
            )
        out = 0
        for i, emb in enumerate(self.embeddings):
            out = out + emb(x[:, i])
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.emb_dim})"


class AtomEncoder(_CategoricalEncoder):
    """OGB's ``AtomEncoder``: sum of one embedding per OGB atom feature (9 integer columns)."""

    def __init__(self, emb_dim: int) -> None:
        super().__init__(OGB_ATOM_FEATURE_DIMS, emb_dim)


class BondEncoder(_CategoricalEncoder):
    """OGB's ``BondEncoder``: sum of one embedding per OGB bond feature (3 integer columns)."""

    def __init__(self, emb_dim: int) -> None:
        super().__init__(OGB_BOND_FEATURE_DIMS, emb_dim)


def _mlp(d: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, d)
    )


class GIN(nn.Module):
    r"""GIN (`Xu et al., 2019 <https://arxiv.org/abs/1810.00826>`_), optionally with a virtual
    node (`Gilmer et al., 2017 <https://arxiv.org/abs/1704.01212>`_), as in OGB's baselines.

    .. math::
        h_i^{(l+1)} = \mathrm{MLP}^{(l)}\Big((1 + \epsilon^{(l)}) h_i^{(l)}
            + \sum_{j \in \mathcal{N}(i)} \mathrm{ReLU}(h_j^{(l)} + e_{ji}^{(l)})\Big)

    With ``virtual_node=True`` a per-graph vector ``v`` is added to every node before each layer
    and updated between layers as ``v <- MLP(sum_i h_i + v)``.

    Args:
        spec: the benchmark's :class:`InputSpec`.
        hidden: embedding width (OGB: 300).
        layers: number of GIN layers (OGB: 5).
        dropout: dropout after each layer (OGB: 0.5).
        virtual_node: add a virtual node (OGB's ``gin-virtual``).
        pool: ``"mean"`` (OGB's default) or ``"sum"`` graph pooling.

    Shapes:
        input: a PyG batch with ``x`` ``[N, 9]`` long (OGB atoms) or ``[N, node_dim]`` float,
        ``edge_index`` ``[2, E]``, optional ``edge_attr``, ``batch`` ``[N]``.
        output: ``[num_graphs, spec.out_dim]`` (graph level) or ``[N, spec.out_dim]`` (node level).
    """

    def __init__(
        self,
        spec: InputSpec,
        hidden: int = 300,
        layers: int = 5,
        dropout: float = 0.5,
        virtual_node: bool = False,
        pool: str = "mean",
    ) -> None:
        super().__init__()
        check_positive_int("GIN", "hidden", hidden)
        check_positive_int("GIN", "layers", layers)
        dropout = check_real("GIN", "dropout", dropout, minimum=0.0)
        if not dropout < 1.0:
            raise ValueError(f"GIN: dropout must be in [0, 1), got {dropout}")
        if pool not in ("mean", "sum"):
            raise ValueError(f"GIN: pool must be 'mean' or 'sum', got {pool!r}")
        self.spec, self.hidden, self.layers = spec, hidden, layers
        self.dropout, self.virtual_node, self.pool = dropout, virtual_node, pool

        if spec.node_features == "ogb-atom":
            self.node_encoder: nn.Module = AtomEncoder(hidden)
        else:
            self.node_encoder = nn.Linear(spec.node_dim, hidden)
        self.convs = nn.ModuleList()
        self.edge_encoders = nn.ModuleList()
        for _ in range(layers):
            if spec.edge_features is None:
                self.convs.append(GINConv(_mlp(hidden, 2 * hidden), train_eps=True))
                self.edge_encoders.append(nn.Identity())
            else:
                self.convs.append(GINEConv(_mlp(hidden, 2 * hidden), train_eps=True))
                self.edge_encoders.append(
                    BondEncoder(hidden)
                    if spec.edge_features == "ogb-bond"
                    else nn.Linear(spec.edge_dim, hidden)
                )
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden) for _ in range(layers))
        if virtual_node:
            self.vn_embedding = nn.Embedding(1, hidden)
            self.vn_mlps = nn.ModuleList(
                nn.Sequential(
                    nn.Linear(hidden, 2 * hidden),
                    nn.BatchNorm1d(2 * hidden),
                    nn.ReLU(),
                    nn.Linear(2 * hidden, hidden),
                    nn.BatchNorm1d(hidden),
                    nn.ReLU(),
                )
                for _ in range(layers - 1)
            )
        self.head = nn.Linear(hidden, spec.out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # each layer by its own rule once (a walk over all modules re-initialised the atom
        # and bond encoders' embeddings with N(0, 1) after their Xavier init, unlike OGB)
        reset_children(self)
        for conv in self.convs:
            conv.eps.data.fill_(0.0)
        if self.virtual_node:
            nn.init.zeros_(self.vn_embedding.weight)

    def forward(self, batch) -> Tensor:
        x, edge_index = batch.x, batch.edge_index
        self.spec.check_inputs(type(self).__name__, x, getattr(batch, "edge_attr", None))
        node_batch, num_graphs = graph_batch(batch, x.size(0), x.device)
        if self.virtual_node and self.training and self.layers > 1 and num_graphs < 2:
            # the virtual-node MLP batch-normalises over graphs: torch's own error ("Expected
            # more than 1 value per channel") named neither the model nor the cause
            raise ValueError(
                f"{type(self).__name__}(virtual_node=True): training batch-normalises the "
                f"virtual node over the batch's graphs and needs at least 2 of them, got "
                f"{num_graphs}; a node-level task on one graph (fake-node, minesweeper, "
                "tolokers) cannot train it: use gin, or layers=1"
            )
        # dense features in the model's dtype (a .double() model takes float64 batches)
        if self.spec.node_features != "ogb-atom":
            x = x.to(self.node_encoder.weight.dtype)
        h = self.node_encoder(x)  # [N, d]
        if self.virtual_node:
            vn = self.vn_embedding.weight.new_zeros(num_graphs, self.hidden)  # [G, d]
            vn = vn + self.vn_embedding.weight
        for layer in range(self.layers):
            if self.virtual_node:
                h = h + vn[node_batch]
            h_in = h
            if self.spec.edge_features is None:
                h = self.convs[layer](h, edge_index)
            else:
                edge_attr = batch.edge_attr
                if self.spec.edge_features == "dense":
                    edge_attr = edge_attr.to(h.dtype)
                h = self.convs[layer](h, edge_index, self.edge_encoders[layer](edge_attr))
            h = self.norms[layer](h)
            if layer < self.layers - 1:
                h = torch.relu(h)
            h = nn.functional.dropout(h, self.dropout, self.training)
            if self.virtual_node and layer < self.layers - 1:
                pooled = global_add_pool(h_in, node_batch, size=num_graphs) + vn  # [G, d]
                vn = nn.functional.dropout(self.vn_mlps[layer](pooled), self.dropout, self.training)
        if self.spec.level == "node":
            return self.head(h)  # [N, out]
        return self.head(pool_graphs(h, node_batch, num_graphs, self.pool))  # [G, out]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(hidden={self.hidden}, layers={self.layers}, "
            f"dropout={self.dropout}, virtual_node={self.virtual_node}, pool={self.pool!r})"
        )


@register_model("gin", description="GIN with bond features (OGB's gin baseline)")
def gin(
    spec: InputSpec, hidden: int = 300, layers: int = 5, dropout: float = 0.5, pool: str = "mean"
) -> GIN:
    return GIN(spec, hidden=hidden, layers=layers, dropout=dropout, pool=pool)


@register_model("gin-vn", description="GIN with a virtual node (OGB's gin-virtual baseline)")
def gin_vn(
    spec: InputSpec, hidden: int = 300, layers: int = 5, dropout: float = 0.5, pool: str = "mean"
) -> GIN:
    return GIN(spec, hidden=hidden, layers=layers, dropout=dropout, virtual_node=True, pool=pool)
