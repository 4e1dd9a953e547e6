"""Graph sequence models and their anchors in the model registry.

* ``gsm``: :class:`~graphseq.nn.gsm.GSM` (one tokenization, local + global encoder);
* ``gsm++``: :class:`~graphseq.nn.gsm.GSMPlusPlus` (HAC + HPE + hybrid + mixture of
  tokenizations);
* ``gps``: GraphGPS with PyG's :class:`~torch_geometric.nn.conv.GPSConv` (GatedGCN or GINE
  local message passing in parallel with multi-head attention), optionally reading a positional
  encoding attribute (e.g. ``AddLaplacianEigenvectorPE``'s);
* ``gat``, ``sage``: GAT (or GAT-sep, ``sep=True``) / GraphSAGE with residual connections and
  LayerNorm, the tuned baselines of Platonov et al. (ICLR 2023) for the heterophilous
  benchmarks.

The sequence models need the tokenizer transforms of :mod:`graphseq.nn.gsm` applied to the data
(the GSM benchmarks in :mod:`graphseq.train.benchmarks_gsm` do this); they take dense float node
features (``InputSpec.node_features="dense"``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import (
    GINEConv,
    GPSConv,
    ResGatedGraphConv,
)

from graphseq.models._init import graph_batch, pool_graphs, reset_children
from graphseq.models.registry import InputSpec, register_model
from graphseq.nn.gsm import GSM, GSMPlusPlus, LocalEncoder
from graphseq.nn.gsm.encoders import mean_adjacency
from graphseq.nn.gsm.models import check_sorted_batch
from graphseq.nn.seq.base import check_choice, check_positive_int

__all__ = ["GPS", "GNNBaseline"]


def _dense_only(spec: InputSpec, name: str) -> tuple[int, int | None]:
    if spec.node_features != "dense":
        raise ValueError(f"model {name!r} takes dense node features, got {spec.node_features!r}")
    if spec.edge_features not in (None, "dense"):
        raise ValueError(
            f"model {name!r} takes dense or no edge features, got {spec.edge_features!r}"
        )
    return spec.node_dim, (spec.edge_dim if spec.edge_features == "dense" else None)


def _pool(h: Tensor, batch, pool: str) -> Tensor:
    node_batch, num_graphs = graph_batch(batch, h.size(0), h.device)
    return pool_graphs(h, node_batch, num_graphs, pool)


def _check_common(cls: str, hidden, layers, heads, pool) -> None:
    for name, v in (("hidden", hidden), ("layers", layers), ("heads", heads)):
        check_positive_int(cls, name, v)
    check_choice(cls, "pool", pool, ("mean", "sum"))


def _width(cls: str, name: str, value: Tensor, rows: int | None, width: int, what: str) -> Tensor:
    """``value`` as a ``[rows, width]`` matrix (a vector counts as one column), or a
    ``ValueError`` naming the attribute, before a matrix product meets the wrong width."""
    value = value.unsqueeze(1) if value.dim() == 1 else value
    if value.dim() != 2 or value.size(1) != width or (rows is not None and value.size(0) != rows):
        shape = f"[{rows if rows is not None else 'E'}, {what} = {width}]"
        raise ValueError(f"{cls}: {name} must have shape {shape}, got {tuple(value.shape)}")
    return value


def _features(
    batch, pe: str | None, cls: str, dtype: torch.dtype, node_dim: int, pe_dim: int = 0
) -> Tensor:
    """``x`` (and the ``pe`` attribute) as one ``dtype`` matrix: the model's parameter dtype,
    so that a ``.double()`` model takes float64 batches. Widths are checked against the
    spec's ``node_dim`` and ``pe_dim``."""
    x = _width(cls, "batch.x", batch.x.to(dtype), None, node_dim, "node_dim")
    if pe is not None:
        value = getattr(batch, pe, None)
        if value is None:
            raise ValueError(f"{cls}: pe={pe!r} but the input has no attribute {pe!r}")
        value = _width(cls, f"batch.{pe}", value.to(dtype), x.size(0), pe_dim, "pe_dim")
        x = torch.cat([x, value], -1)
    return x


class GPS(nn.Module):
    r"""GraphGPS (`Rampášek et al., NeurIPS 2022 <https://arxiv.org/abs/2205.12454>`_) from PyG's
    :class:`~torch_geometric.nn.conv.GPSConv`: per layer, a local MPNN and multi-head attention
    in parallel, summed, then an MLP (batch norm).

    Args:
        spec: the benchmark's :class:`InputSpec` (dense node features).
        hidden: width. layers: GPS layers. heads: attention heads.
        local: ``"gatedgcn"`` (``ResGatedGraphConv``) or ``"gine"``.
        attn_type: ``"multihead"`` (exact, quadratic) or ``"performer"`` (PyG's linear-time
            FAVOR+ attention, the GPS+Performer variant for large graphs).
        pe: name of a node attribute concatenated to ``x`` (e.g. ``"lap_pe"``), or ``None``.
        pe_dim: its width. dropout / attn_dropout: as in ``GPSConv``, each in ``[0, 1)``
            (``attn_dropout`` drops attention weights of ``"multihead"`` only; PyG's Performer
            attention has no such dropout, so ``"performer"`` ignores it). pool: graph
            pooling.

    Shapes:
        input: a PyG batch; output ``[N, out]`` (node level) or ``[G, out]``.
    """

    def __init__(
        self,
        spec: InputSpec,
        hidden: int = 64,
        layers: int = 4,
        heads: int = 4,
        local: str = "gatedgcn",
        pe: str | None = None,
        pe_dim: int = 0,
        dropout: float = 0.0,
        attn_dropout: float = 0.5,
        pool: str = "mean",
        attn_type: str = "multihead",
    ) -> None:
        super().__init__()
        node_dim, edge_dim = _dense_only(spec, "gps")
        _check_common("GPS", hidden, layers, heads, pool)
        if hidden % heads:
            raise ValueError(f"GPS: heads ({heads}) must divide hidden ({hidden})")
        if pe is not None:
            if not isinstance(pe, str) or not pe:
                raise ValueError(f"GPS: pe must be a non-empty attribute name, got {pe!r}")
            check_positive_int("GPS", "pe_dim", pe_dim)
        elif pe_dim:
            raise ValueError(f"GPS: pe_dim ({pe_dim}) given without pe")
        for name, rate in (("dropout", dropout), ("attn_dropout", attn_dropout)):
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
                raise ValueError(f"GPS: {name} must be a number in [0, 1), got {rate!r}")
        if attn_type not in ("multihead", "performer"):
            raise ValueError(
                f"GPS: attn_type must be 'multihead' or 'performer', got {attn_type!r}"
            )
        self.attn_type = attn_type
        if local not in ("gatedgcn", "gine"):
            raise ValueError(f"GPS: local must be 'gatedgcn' or 'gine', got {local!r}")
        self.spec, self.hidden, self.layers, self.heads, self.local = (
            spec,
            hidden,
            layers,
            heads,
            local,
        )
        self.pe, self.pe_dim, self.pool = pe, (pe_dim if pe else 0), pool
        self.dropout, self.attn_dropout = dropout, attn_dropout
        self.encoder = nn.Linear(node_dim + (pe_dim if pe else 0), hidden)
        self.edge_encoder = nn.Linear(edge_dim, hidden) if edge_dim else None
        convs = []
        for _ in range(layers):
            if local == "gatedgcn":
                conv = ResGatedGraphConv(hidden, hidden, edge_dim=hidden if edge_dim else None)
            else:
                mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
                conv = GINEConv(mlp, edge_dim=hidden) if edge_dim else GINEConv(mlp, edge_dim=1)
            kwargs = {"dropout": attn_dropout} if attn_type == "multihead" else {}
            convs.append(
                GPSConv(hidden, conv, heads=heads, dropout=dropout, attn_type=attn_type,
                        attn_kwargs=kwargs)
            )  # fmt: skip
        self.convs = nn.ModuleList(convs)
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, spec.out_dim)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in self.convs:
            out_proj = getattr(getattr(conv, "attn", None), "out_proj", None)
            if out_proj is not None:
                # MultiheadAttention's own reset leaves the output weight as it is (it only
                # zeroes the bias, which GPSConv's reset below still does)
                out_proj.reset_parameters()
        reset_children(self)

    def forward(self, batch) -> Tensor:
        node_dim = self.spec.node_dim
        x = _features(batch, self.pe, "GPS", self.encoder.weight.dtype, node_dim, self.pe_dim)
        h = self.encoder(x)
        node_batch = getattr(batch, "batch", None)
        if isinstance(node_batch, Tensor):  # GPSConv's to_dense_batch needs it sorted
            check_sorted_batch("GPS", node_batch, "batch.batch")
        kwargs = {}
        if self.edge_encoder is not None:
            edge_attr = getattr(batch, "edge_attr", None)
            if not isinstance(edge_attr, Tensor):
                raise ValueError(
                    "GPS: the spec has dense edge features but batch.edge_attr is None"
                )
            edge_attr = _width("GPS", "batch.edge_attr", edge_attr.to(h.dtype),
                               batch.edge_index.size(1), self.edge_encoder.in_features,
                               "edge_dim")  # fmt: skip
            kwargs["edge_attr"] = self.edge_encoder(edge_attr)
        elif self.local == "gine":
            kwargs["edge_attr"] = h.new_zeros(batch.edge_index.size(1), 1)
        for conv in self.convs:
            h = conv(h, batch.edge_index, node_batch, **kwargs)
        if self.spec.level == "graph":
            h = _pool(h, batch, self.pool)
        return self.head(h)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(hidden={self.hidden}, layers={self.layers}, "
            f"heads={self.heads}, local={self.local!r}, pe={self.pe!r}, "
            + (f"pe_dim={self.pe_dim}, " if self.pe else "")
            + f"attn_type={self.attn_type!r}"
            + (f", dropout={self.dropout}" if self.dropout else "")
            + (f", attn_dropout={self.attn_dropout}" if self.attn_dropout != 0.5 else "")
            + (f", pool={self.pool!r}" if self.pool != "mean" else "")
            + ")"
        )


class GNNBaseline(nn.Module):
    r"""GAT or GraphSAGE with pre-LayerNorm residual blocks, as tuned by `Platonov et al.
    (ICLR 2023) <https://arxiv.org/abs/2302.11640>`_ for heterophilous graphs:

    .. math::
        h \leftarrow h + \mathrm{Dropout}(\mathrm{GELU}(\mathrm{Conv}(\mathrm{LN}(h))))

    Each block is a :class:`~graphseq.nn.gsm.LocalEncoder` (``prenorm=True``, LayerNorm, GELU),
    the same layer GSM++ uses as its local encoder with ``local="sage"`` / ``"gat"``. SAGE keeps
    the ego and neighbour embeddings apart natively (:math:`W_1 h_i + W_2\,\mathrm{mean}_j
    h_j`); ``sep=True`` gives GAT the same separation (GAT-sep: a root linear map plus attention
    over the neighbours only).

    Args:
        spec: the benchmark's :class:`InputSpec`. conv: ``"gat"`` or ``"sage"``. hidden, layers,
        heads (GAT: ``hidden / heads`` per head, concatenated), dropout, pool.
        sep: GAT-sep instead of GAT (self-loops, no root map); ignored by SAGE.
            (default: ``False``)

    Shapes:
        input: a PyG batch; output ``[N, out]`` (node level) or ``[G, out]``.
    """

    def __init__(
        self,
        spec: InputSpec,
        conv: str = "sage",
        hidden: int = 64,
        layers: int = 3,
        heads: int = 4,
        dropout: float = 0.2,
        pool: str = "mean",
        sep: bool = False,
    ) -> None:
        super().__init__()
        node_dim, _ = _dense_only(spec, conv)
        if conv not in ("gat", "sage"):
            raise ValueError(f"GNNBaseline: conv must be 'gat' or 'sage', got {conv!r}")
        _check_common("GNNBaseline", hidden, layers, heads, pool)
        if conv == "gat" and hidden % heads:
            raise ValueError(f"GNNBaseline: heads ({heads}) must divide hidden ({hidden})")
        self.spec, self.conv, self.hidden, self.layers, self.heads = (
            spec,
            conv,
            hidden,
            layers,
            heads,
        )
        self.dropout, self.pool, self.sep = dropout, pool, bool(sep) and conv == "gat"
        self.encoder = nn.Linear(node_dim, hidden)
        self.blocks = nn.ModuleList(
            LocalEncoder(hidden, conv, norm="layer", dropout=dropout, prenorm=True, act="gelu",
                         heads=heads, sep=self.sep)
            for _ in range(layers)
        )  # fmt: skip
        self.out_norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, spec.out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_children(self)

    def forward(self, batch) -> Tensor:
        dtype = self.encoder.weight.dtype
        h = self.encoder(_features(batch, None, "GNNBaseline", dtype, self.spec.node_dim))
        edge_index = batch.edge_index
        if self.conv == "sage":  # one sparse adjacency for all layers: SpMM instead of scatter
            # float32 at least: the mean's sum overflows float16 at a hub
            edge_index = mean_adjacency(
                edge_index, h.size(0), torch.promote_types(h.dtype, torch.float32)
            )
        for block in self.blocks:
            h = block(h, edge_index)
        h = self.out_norm(h)
        if self.spec.level == "graph":
            h = _pool(h, batch, self.pool)
        return self.head(h)

    def __repr__(self) -> str:
        sep = ", sep=True" if self.sep else ""
        pool = f", pool={self.pool!r}" if self.pool != "mean" else ""
        return (
            f"{type(self).__name__}(conv={self.conv!r}, hidden={self.hidden}, "
            f"layers={self.layers}, heads={self.heads}, dropout={self.dropout}{pool}{sep})"
        )


def _gsm_reads_tokens(args: dict) -> bool:
    """``tokenization="none"`` without the hierarchical PE reads no tokenizer attribute."""
    return args.get("tokenization") != "none" or bool(args.get("hpe"))


@register_model(
    "gsm",
    description="graph sequence model: one tokenization, local + global encoder",
    node_features=("dense",),
    tokenized=_gsm_reads_tokens,
)
def gsm(
    spec: InputSpec,
    hidden: int = 64,
    layers: int = 2,
    seq_layers: int = 2,
    tokenization: str = "hac_dfs",
    local: str = "gatedgcn",
    global_: str = "hybrid",
    heads: int = 4,
    hpe: bool = False,
    hpe_levels: int = 16,
    dropout: float = 0.0,
    pool: str = "mean",
    token_sizes: bool = True,
    pe: str | None = None,
    pe_dim: int = 0,
    pe_sign_flip: bool = False,
) -> GSM:
    node_dim, edge_dim = _dense_only(spec, "gsm")
    return GSM(
        node_dim, hidden, spec.out_dim, tokenization=tokenization, local=local, global_=global_,
        layers=layers, seq_layers=seq_layers, heads=heads, level=spec.level, edge_dim=edge_dim,
        hpe=hpe, hpe_levels=hpe_levels, pool=pool, dropout=dropout, token_sizes=token_sizes,
        pe=pe, pe_dim=pe_dim, pe_sign_flip=pe_sign_flip,
    )  # fmt: skip


@register_model(
    "gsm++",
    description="GSM++: HAC tokens, hierarchical PE, hybrid scan+attention, MoT",
    node_features=("dense",),
    tokenized=True,
)
def gsm_plus_plus(
    spec: InputSpec,
    hidden: int = 64,
    layers: int = 2,
    scan_layers: int = 2,
    tokenizations: tuple[str, ...] = ("hac_dfs", "hac_bfs", "khop"),
    heads: int = 4,
    k: int = 2,
    hpe_levels: int = 16,
    attention: bool = True,
    dropout: float = 0.0,
    attn_dropout: float = 0.0,
    pool: str = "mean",
    token_sizes: bool = True,
    local: str = "gatedgcn",
    local_layers: int = 1,
    global_dropout: float | None = None,
    global_hidden: int | None = None,
    pe: str | None = None,
    pe_dim: int = 0,
    pe_sign_flip: bool = False,
    local_norm_sum: bool = False,
) -> GSMPlusPlus:
    node_dim, edge_dim = _dense_only(spec, "gsm++")
    # a string (--model-arg tokenizations=hac_dfs) goes through as is, for GSMPlusPlus to
    # refuse by name: tuple() would split it into one-letter names
    toks = tokenizations if isinstance(tokenizations, str) else tuple(tokenizations)
    return GSMPlusPlus(
        node_dim, hidden, spec.out_dim, tokenizations=toks, layers=layers,
        scan_layers=scan_layers, heads=heads, k=k, level=spec.level, edge_dim=edge_dim,
        hpe_levels=hpe_levels, attention=attention, pool=pool, dropout=dropout,
        attn_dropout=attn_dropout, token_sizes=token_sizes, local=local,
        local_layers=local_layers, global_dropout=global_dropout, global_hidden=global_hidden,
        pe=pe, pe_dim=pe_dim, pe_sign_flip=pe_sign_flip, local_norm_sum=local_norm_sum,
    )  # fmt: skip


@register_model(
    "gps",
    description="GraphGPS from PyG's GPSConv (GatedGCN/GINE + attention)",
    node_features=("dense",),
)
def gps(
    spec: InputSpec,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    local: str = "gatedgcn",
    pe: str | None = None,
    pe_dim: int = 0,
    dropout: float = 0.0,
    attn_dropout: float = 0.5,
    pool: str = "mean",
    attn_type: str = "multihead",
) -> GPS:
    return GPS(
        spec, hidden, layers, heads, local, pe, pe_dim, dropout, attn_dropout, pool, attn_type
    )


@register_model(
    "gat",
    description="GAT (or GAT-sep) with residual connections and LayerNorm",
    node_features=("dense",),
)
def gat(
    spec: InputSpec, hidden: int = 64, layers: int = 3, heads: int = 4, dropout: float = 0.2,
    pool: str = "mean", sep: bool = False,
) -> GNNBaseline:  # fmt: skip
    return GNNBaseline(spec, "gat", hidden, layers, heads, dropout, pool, sep)


@register_model(
    "sage",
    description="GraphSAGE with residual connections and LayerNorm",
    node_features=("dense",),
)
def sage(
    spec: InputSpec, hidden: int = 64, layers: int = 3, dropout: float = 0.2, pool: str = "mean"
) -> GNNBaseline:  # fmt: skip
    return GNNBaseline(spec, "sage", hidden, layers, 1, dropout, pool)
