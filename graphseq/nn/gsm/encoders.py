r"""Local and global encoders of graph sequence models, and the hierarchical positional encoding.

* :class:`LocalEncoder`: one residual message-passing layer (GatedGCN = PyG's
  :class:`~torch_geometric.nn.conv.ResGatedGraphConv`, GINE, GraphSAGE or GAT-sep) — the
  :math:`\phi_{Local}` of GSM.
* :class:`ScanLayer`: a selective state-space layer — :class:`~graphseq.nn.seq.GatedLinearRNN`
  with input-dependent diagonal decays in :math:`(0, 1)` (one scalar state per channel, so fast
  on CPU), optionally bidirectional, on packed sequences (``cu_seqlens``).
* :class:`AttentionLayer`: multi-head self-attention with
  :func:`torch.nn.functional.scaled_dot_product_attention` and a key-padding mask.
* :class:`SequenceEncoder`: a stack of such mixers, each followed by a feed-forward block, given
  by a pattern string: ``"TT"`` (Transformer), ``"MM"`` (scan / Mamba-like), ``"MMT"`` (hybrid:
  scan layers then one attention layer, as GSM++).
* :class:`HierarchicalPE`: absolute positional encoding from the HAC tree.

Every sequence input is packed: ``x`` ``[ΣT, D]`` with ``cu_seqlens`` ``[S + 1]`` (PyG's
``ptr``), the same convention as :func:`graphseq.kernels.linear_scan`.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GINConv, GINEConv, ResGatedGraphConv, SAGEConv
from torch_geometric.utils import is_sparse, spmm

from graphseq.nn.seq import GatedLinearRNN
from graphseq.nn.seq.base import (
    check_choice,
    check_matches_parameters,
    check_positive_int,
    sequence_index,
)

__all__ = [
    "LOCAL_ENCODERS",
    "AttentionLayer",
    "HierarchicalPE",
    "LocalEncoder",
    "ScanLayer",
    "SequenceEncoder",
    "global_pattern",
    "mean_adjacency",
]

LOCAL_ENCODERS = ("gatedgcn", "gine", "sage", "gat", "none")
_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def _check_rate(cls: str, name: str, value: float) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{cls}: {name} must be in [0, 1), got {value}")
    return float(value)


def mean_adjacency(
    edge_index: Tensor, num_nodes: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``edge_index`` ``[2, E]`` as the transposed sparse CSR adjacency (row = target node,
    one entry of value 1 per edge, duplicates kept) that PyG convolutions accept in place of
    ``edge_index``. :class:`LocalEncoder`'s ``"sage"`` then aggregates by one sparse-dense
    product instead of a gather/scatter over edges (the same mean, about 3x faster forward on
    CPU); build it once per forward, for every layer, in the node features' ``dtype`` (float32
    for float16/bfloat16 features: :class:`LocalEncoder` then sums the mean in float32)."""
    from torch_geometric.utils import to_torch_csr_tensor

    # int64 keys: target * num_nodes overflows int32 above 46,341 nodes, and rows out of order
    # under is_coalesced=True put neighbours on the wrong rows
    source, target = edge_index.long()
    order = torch.argsort(target * max(num_nodes, 1) + source)  # by row; duplicates stay apart
    adj_t = torch.stack([target[order], source[order]])
    value = torch.ones(edge_index.size(1), dtype=dtype, device=edge_index.device)
    with warnings.catch_warnings():  # torch's "beta" / "invariant checks" notices, every call
        warnings.filterwarnings("ignore", message="Sparse (CSR tensor|invariant)")
        # is_coalesced=True: rows are sorted; duplicates must not be summed into one entry
        # (the mean reduction counts stored entries, as the scatter mean counts edges)
        return to_torch_csr_tensor(adj_t, value, (num_nodes, num_nodes), is_coalesced=True)


class _BatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` that also trains on a batch of one node (the last batch of a dataset
    of single-atom molecules, ``batch_size=1``): that row is normalised with the running
    statistics, which it leaves unchanged, as PyG's ``BatchNorm(allow_single_element=True)``
    does. Same parameters and buffers as ``BatchNorm1d``."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.size(0) == 1 and self.running_mean is not None:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                self.eps,
            )  # fmt: skip
        return super().forward(x)


class LocalEncoder(nn.Module):
    r"""One residual message-passing layer, post-norm (GraphGPS's GatedGCN layer, the default),
    pre-norm (`Platonov et al., ICLR 2023 <https://arxiv.org/abs/2302.11640>`_'s tuned
    baselines) or with the residual sum normalised (the local branch of PyG's ``GPSConv``):

    .. math::
        h &\leftarrow h + \mathrm{Dropout}(\sigma(\mathrm{Norm}(\mathrm{Conv}(h))))
        \quad \text{(default)} \\
        h &\leftarrow h + \mathrm{Dropout}(\sigma(\mathrm{Conv}(\mathrm{Norm}(h))))
        \quad \text{(prenorm)} \\
        h &\leftarrow \mathrm{Norm}(h + \mathrm{Dropout}(\mathrm{Conv}(h)))
        \quad \text{(norm\_sum)}

    With :math:`\sigma = \mathrm{ReLU}` the default's update is non-negative and its residual
    stream is never normalised; ``norm_sum``'s update is signed and the stream is normalised
    after every layer.

    Convolutions:

    * ``"gatedgcn"``: residual gated graph convolution
      (`Bresson & Laurent, 2017 <https://arxiv.org/abs/1711.07553>`_, PyG's
      ``ResGatedGraphConv``), :math:`\mathbf{W}_1 h_i + \sum_j \sigma(\mathbf{W}_3 h_i +
      \mathbf{W}_4 h_j [+ e_{ij}]) \odot \mathbf{W}_2 h_j`;
    * ``"gine"``: GINE (`Hu et al., 2020 <https://arxiv.org/abs/1905.12265>`_) with a two-layer
      MLP (GIN when ``edge_dim`` is ``None``);
    * ``"sage"``: GraphSAGE with separate ego and neighbour weights,
      :math:`\mathbf{W}_1 h_i + \mathbf{W}_2\,\mathrm{mean}_{j \in N(i)} h_j` (PyG's
      ``SAGEConv``; ``edge_index`` may be the :func:`mean_adjacency` of the graph);
    * ``"gat"``: GAT-sep, :math:`\mathbf{W}_0 h_i + \Vert_{k}\sum_{j \in N(i)} \alpha^k_{ij}
      \mathbf{W}^k h_j` — a root linear map plus multi-head attention over the neighbours only
      (PyG's ``GATConv`` without self-loops), the "-sep" variant of Platonov et al.;
    * ``"none"``: identity (node tokens without local encoding; no parameters, ``norm`` is
      not built).

    Args:
        channels (int): width :math:`D`.
        conv (str): one of ``"gatedgcn"``, ``"gine"``, ``"sage"``, ``"gat"``, ``"none"``.
            (default: ``"gatedgcn"``)
        edge_dim (int, optional): width of ``edge_attr`` (``None``: no edge features; ``"sage"``
            takes none).
        norm (str): ``"batch"``, ``"layer"`` or ``"none"``; ``"batch"`` trains on a batch
            of one node too, normalising it with the running statistics. (default:
            ``"batch"``)
        dropout (float): dropout on the update. (default: ``0.0``)
        prenorm (bool): normalise the input of the convolution instead of its output.
            (default: ``False``)
        norm_sum (bool): normalise the residual sum instead of the update, with no
            activation (``act`` must then be left at ``"relu"``; it is not applied).
            Excludes ``prenorm``. (default: ``False``)
        act (str): :math:`\sigma`, ``"relu"`` or ``"gelu"``. (default: ``"relu"``)
        heads (int): attention heads of ``"gat"``; must divide ``channels``. (default: ``4``)
        sep (bool): ``"gat"`` only: ``True`` is GAT-sep (above); ``False`` the original GAT,
            attention over the neighbours and the node itself (self-loops), no root map.
            (default: ``True``)

    Shapes:
        - **input:** ``x`` :math:`(N, D)`, ``edge_index`` :math:`(2, E)` (or, without edge
          features, a sparse adjacency, see :func:`mean_adjacency`), ``edge_attr``
          :math:`(E, \text{edge\_dim})` in ``edge_index``'s column order, or ``None``.
        - **output:** :math:`(N, D)`.
    """

    def __init__(
        self,
        channels: int,
        conv: str = "gatedgcn",
        edge_dim: int | None = None,
        norm: str = "batch",
        dropout: float = 0.0,
        prenorm: bool = False,
        act: str = "relu",
        heads: int = 4,
        sep: bool = True,
        norm_sum: bool = False,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        check_positive_int(cls, "channels", channels)
        if norm_sum and prenorm:
            raise ValueError(f"{cls}: norm_sum and prenorm exclude each other; set one")
        if norm_sum and act != "relu":
            raise ValueError(
                f"{cls}: norm_sum applies no activation, so act={act!r} would be ignored; "
                "leave act at 'relu'"
            )
        check_choice(cls, "conv", conv, LOCAL_ENCODERS)
        check_choice(cls, "norm", norm, ("batch", "layer", "none"))
        check_choice(cls, "act", act, tuple(_ACTIVATIONS))
        check_positive_int(cls, "heads", heads)
        if conv == "gat" and channels % heads:
            raise ValueError(f"{cls}: heads ({heads}) must divide channels ({channels})")
        if conv == "sage" and edge_dim is not None:
            raise ValueError(f"{cls}: conv='sage' takes no edge features, got edge_dim={edge_dim}")
        self.channels, self.conv_type, self.edge_dim, self.norm_type = (
            channels,
            conv,
            edge_dim,
            norm,
        )
        self.prenorm, self.act, self.heads, self.sep = bool(prenorm), act, heads, bool(sep)
        self.norm_sum = bool(norm_sum)
        self.dropout = _check_rate(cls, "dropout", dropout)
        self.root: nn.Module | None = None
        if conv == "gatedgcn":
            self.conv: nn.Module | None = ResGatedGraphConv(channels, channels, edge_dim=edge_dim)
        elif conv == "gine":
            mlp = nn.Sequential(
                nn.Linear(channels, 2 * channels), nn.ReLU(), nn.Linear(2 * channels, channels)
            )
            self.conv = (
                GINConv(mlp, train_eps=True)
                if edge_dim is None
                else GINEConv(mlp, train_eps=True, edge_dim=edge_dim)
            )
        elif conv == "sage":
            self.conv = SAGEConv(channels, channels)
        elif conv == "gat":
            self.conv = GATConv(
                channels, channels // heads, heads=heads, add_self_loops=not sep, edge_dim=edge_dim
            )
            self.root = nn.Linear(channels, channels, bias=False) if sep else None
        else:
            self.conv = None
        self.norm = (
            nn.Identity()  # "none" is the identity: a norm there would never be used
            if conv == "none"
            else _BatchNorm(channels)
            if norm == "batch"
            else nn.LayerNorm(channels)
            if norm == "layer"
            else nn.Identity()
        )
        self.reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        if self.conv is None:
            # state dicts saved before conv="none" stopped building its unused norm hold one
            for key in [k for k in state_dict if k.startswith(prefix + "norm.")]:
                state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_parameters(self) -> None:
        if self.conv is not None:
            self.conv.reset_parameters()  # PyG convolutions reset their MLPs too
        if self.root is not None:
            self.root.reset_parameters()
        if hasattr(self.norm, "reset_parameters"):
            self.norm.reset_parameters()

    def _conv(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None) -> Tensor:
        if (
            self.conv_type == "sage"
            and not is_sparse(edge_index)
            and x.dtype in (torch.float16, torch.bfloat16)
        ):
            # SAGEConv's scatter mean sums in x's dtype: a float16 sum over a hub's neighbours
            # overflows at 65,504 although the mean is finite (the models build the float32
            # adjacency once per forward; this serves a LocalEncoder called on edge_index)
            edge_index = mean_adjacency(edge_index, x.size(0), torch.float32)
        if self.conv_type == "sage" and is_sparse(edge_index):
            # SAGEConv's fused mean, called here rather than through its propagate: PyG 2.8
            # renders a convolution class's propagate once per process, with the first
            # instance's fuse flag, so after any SAGEConv with a module aggregation (graphseq's
            # LCM, for one) every SAGEConv refuses a sparse adjacency
            # summed in the adjacency's dtype when it is wider (mean_adjacency in float32 for
            # half features: a float16 sum over a hub's neighbours overflows at 65,504)
            acc = torch.promote_types(x.dtype, edge_index.dtype)
            adj = edge_index if edge_index.dtype == acc else edge_index.to(acc)
            mean = spmm(adj, x.to(acc), reduce="mean").to(x.dtype)
            return self.conv.lin_l(mean) + self.conv.lin_r(x)
        if self.edge_dim is None:
            out = self.conv(x, edge_index)
        else:
            if edge_attr is None:
                raise ValueError(f"{type(self).__name__}: edge_dim is set but edge_attr is None")
            if is_sparse(edge_index):
                # edge_attr rows follow edge_index's columns; a sparse adjacency stores its
                # entries sorted by row (mean_adjacency, PyG's to_torch_csr_tensor), so the
                # convolution paired every edge with another edge's features, silently
                raise ValueError(
                    f"{type(self).__name__}: edge_attr needs a dense edge_index [2, E] (its "
                    "rows are in edge_index's column order); a sparse adjacency stores the "
                    "edges in another order"
                )
            out = self.conv(x, edge_index, edge_attr.to(x.dtype))
        return out if self.root is None else out + self.root(x)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None) -> Tensor:
        if self.conv is None:
            return x
        check_matches_parameters(type(self).__name__, "x", x, next(self.conv.parameters()))
        if self.norm_sum:
            out = self._conv(x, edge_index, edge_attr)
            return self.norm(x + F.dropout(out, self.dropout, self.training))
        act = _ACTIVATIONS[self.act]
        if self.prenorm:
            out = act(self._conv(self.norm(x), edge_index, edge_attr))
        else:
            out = act(self.norm(self._conv(x, edge_index, edge_attr)))
        return x + F.dropout(out, self.dropout, self.training)

    def __repr__(self) -> str:
        extra = ""
        if self.prenorm or self.act != "relu":
            extra += f", prenorm={self.prenorm}, act={self.act!r}"
        if self.norm_sum:
            extra += ", norm_sum=True"
        if self.conv_type == "gat":
            extra += f", heads={self.heads}, sep={self.sep}"
        if self.dropout:
            extra += f", dropout={self.dropout}"
        return (
            f"{type(self).__name__}({self.channels}, conv={self.conv_type!r}, "
            f"edge_dim={self.edge_dim}, norm={self.norm_type!r}{extra})"
        )


def check_cu_seqlens(cls: str, cu_seqlens: object, x: Tensor) -> Tensor:
    """``cu_seqlens`` must be the ``[S + 1]`` integer boundaries of ``x``'s packed rows, on its
    device: one-dimensional, from 0 to ``x.size(0)``, non-decreasing. One host sync for all
    three value checks (the kernels' ``check_boundaries`` takes three, for messages that say
    which one failed; these layers run inside every GSM layer)."""
    total = x.size(0)
    if not isinstance(cu_seqlens, Tensor):
        raise TypeError(
            f"{cls}: cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}"
        )
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{cls}: cu_seqlens must be an int32/int64 tensor, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(
            f"{cls}: cu_seqlens must be a 1-D tensor of S + 1 >= 1 boundaries, "
            f"got shape {tuple(cu_seqlens.shape)}"
        )
    if cu_seqlens.device != x.device:
        raise ValueError(f"{cls}: cu_seqlens is on {cu_seqlens.device} but x is on {x.device}")
    cu = cu_seqlens.long()
    bad = (cu[0] != 0) | (cu[-1] != total) | (cu[1:] < cu[:-1]).any()
    if bool(bad):
        raise ValueError(
            f"{cls}: cu_seqlens must run non-decreasing from 0 to x.size(0) = {total}, "
            f"got {cu.tolist() if cu.numel() <= 8 else tuple(cu.shape)}"
        )
    return cu


def reverse_index(cu_seqlens: Tensor) -> Tensor:
    """``[ΣT]`` permutation reversing every packed sequence in place (an involution)."""
    seq = sequence_index(cu_seqlens)
    pos = torch.arange(seq.numel(), device=cu_seqlens.device)
    return cu_seqlens[:-1][seq] + cu_seqlens[1:][seq] - 1 - pos


def uniform_length(cu_seqlens: Tensor, total: int) -> int | None:
    """The common length ``T`` when all packed sequences are equally long and non-empty
    (then ``[ΣT, D]`` is a view of ``[S, T, D]``), else ``None``."""
    S = cu_seqlens.numel() - 1
    if S < 1 or total == 0 or total % S:
        return None
    T = total // S
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    return T if bool((lengths == T).all()) else None


class ScanLayer(nn.Module):
    r"""Selective state-space layer: pre-norm, a gated linear recurrence with input-dependent
    diagonal decay, residual.

    .. math::
        a_t = \sigma(\mathbf{W}_a x_t) \in (0, 1)^D, \quad
        s_t = a_t \odot s_{t-1} + \mathbf{W}_v x_t, \quad
        y_t = \mathbf{W}_o (s_t \odot \mathrm{SiLU}(\mathbf{W}_g x_t))

    (:class:`~graphseq.nn.seq.GatedLinearRNN` with one gate per channel and eigenvalue range
    ``(0, 1)``; the scan is :func:`graphseq.kernels.linear_scan`.) With ``bidirectional=True``
    a second recurrence runs over each reversed sequence and the two outputs are added, as in
    Graph Mamba (GMN)'s bidirectional Mamba. Output: :math:`x + \mathrm{Dropout}(y)`.

    Args:
        channels (int): width :math:`D`.
        bidirectional (bool): also scan backwards. (default: ``True``)
        dropout (float): dropout on :math:`y`. (default: ``0.0``)

    Shapes:
        - **input:** ``x`` :math:`(\sum_s T_s, D)`, ``cu_seqlens`` :math:`(S + 1)`; or, for
          sequences of one length, ``x`` :math:`(S, T, D)` and ``cu_seqlens=None`` (the same
          result without packing: the reverse scan is a flip of the time axis).
        - **output:** the shape of ``x``; nothing crosses sequence boundaries.
    """

    def __init__(self, channels: int, bidirectional: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        cls = type(self).__name__
        self.channels = check_positive_int(cls, "channels", channels)
        self.bidirectional = bool(bidirectional)
        self.dropout = _check_rate(cls, "dropout", dropout)
        self.norm = nn.LayerNorm(channels)
        self.forward_rnn = GatedLinearRNN(channels, heads=channels, eigenvalue_range=(0.0, 1.0))
        self.backward_rnn = (
            GatedLinearRNN(channels, heads=channels, eigenvalue_range=(0.0, 1.0))
            if bidirectional
            else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.forward_rnn.reset_parameters()
        if self.backward_rnn is not None:
            self.backward_rnn.reset_parameters()

    def forward(
        self,
        x: Tensor,
        cu_seqlens: Tensor | None = None,
        rev: Tensor | None = None,
        *,
        validate: bool = True,
    ) -> Tensor:
        """``validate=False`` skips the check of ``cu_seqlens`` (one host sync) for boundaries
        the caller built or already checked."""
        check_matches_parameters(type(self).__name__, "x", x, self.norm.weight)
        if cu_seqlens is None:  # equal-length sequences as a batch [S, T, D]
            if x.dim() != 3:
                raise ValueError(
                    f"{type(self).__name__}: without cu_seqlens x must be [S, T, D], "
                    f"got {tuple(x.shape)}"
                )
            h = self.norm(x)
            y = self.forward_rnn(h)
            if self.backward_rnn is not None:
                y = y + self.backward_rnn(h.flip(1)).flip(1)
            return x + F.dropout(y, self.dropout, self.training)
        if validate:
            cu_seqlens = check_cu_seqlens(type(self).__name__, cu_seqlens, x)
        h = self.norm(x).unsqueeze(0)  # [1, ΣT, D]
        y = self.forward_rnn(h, cu_seqlens=cu_seqlens)[0]
        if self.backward_rnn is not None:
            rev = reverse_index(cu_seqlens) if rev is None else rev
            y = y + self.backward_rnn(h[:, rev], cu_seqlens=cu_seqlens)[0][rev]
        return x + F.dropout(y, self.dropout, self.training)

    def __repr__(self) -> str:
        drop = f", dropout={self.dropout}" if self.dropout else ""
        return f"{type(self).__name__}({self.channels}, bidirectional={self.bidirectional}{drop})"


def _to_dense(x: Tensor, cu_seqlens: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Packed ``[ΣT, D]`` -> padded ``[S, T_max, D]``, key mask ``[S, T_max]``, (seq, pos)."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    S = lengths.numel()
    T = int(lengths.max()) if S else 0
    seq = sequence_index(cu_seqlens)
    pos = torch.arange(seq.numel(), device=x.device) - cu_seqlens[:-1][seq]
    dense = x.new_zeros(S, T, x.size(-1))
    dense[seq, pos] = x
    mask = torch.arange(T, device=x.device) < lengths.unsqueeze(1)
    return dense, mask, seq, pos


class AttentionLayer(nn.Module):
    r"""Pre-norm multi-head self-attention over each packed sequence, residual.

    :math:`x + \mathrm{Dropout}(\mathbf{W}_o\,\mathrm{softmax}(QK^\top/\sqrt{d})V)` computed by
    :func:`~torch.nn.functional.scaled_dot_product_attention`; padding keys are masked out, so a
    sequence's output does not depend on the others in the batch. No positional information
    enters here: attention is permutation-equivariant within a sequence.

    Args:
        channels (int): width :math:`D`.
        heads (int): attention heads; must divide ``channels``. (default: ``4``)
        dropout (float): dropout on the output. (default: ``0.0``)
        attn_dropout (float): dropout on the attention weights. (default: ``0.0``)

    Shapes:
        - **input:** ``x`` :math:`(\sum_s T_s, D)`, ``cu_seqlens`` :math:`(S + 1)`.
        - **output:** :math:`(\sum_s T_s, D)`.
    """

    def __init__(
        self, channels: int, heads: int = 4, dropout: float = 0.0, attn_dropout: float = 0.0
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        self.channels = check_positive_int(cls, "channels", channels)
        self.heads = check_positive_int(cls, "heads", heads)
        if channels % heads:
            raise ValueError(f"{cls}: heads ({heads}) must divide channels ({channels})")
        self.dropout = _check_rate(cls, "dropout", dropout)
        self.attn_dropout = _check_rate(cls, "attn_dropout", attn_dropout)
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.qkv.reset_parameters()
        self.out.reset_parameters()

    def forward(self, x: Tensor, cu_seqlens: Tensor, *, validate: bool = True) -> Tensor:
        """``validate=False`` skips the check of ``cu_seqlens`` (one host sync) for boundaries
        the caller built or already checked."""
        check_matches_parameters(type(self).__name__, "x", x, self.qkv.weight)
        if validate:
            cu_seqlens = check_cu_seqlens(type(self).__name__, cu_seqlens, x)
        if x.size(0) == 0:
            return x
        dense, mask, seq, pos = _to_dense(self.norm(x), cu_seqlens)  # [S, T, D], [S, T]
        S, T, D = dense.shape
        q, k, v = self.qkv(dense).view(S, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        # an all-padding sequence (an empty graph) attends to its zeros instead of to nothing
        keys = mask | ~mask.any(1, keepdim=True)
        att = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=keys[:, None, None, :],
            dropout_p=self.attn_dropout if self.training else 0.0,
        )  # fmt: skip  [S, H, T, D/H]
        y = self.out(att.transpose(1, 2).reshape(S, T, D))[seq, pos]
        return x + F.dropout(y, self.dropout, self.training)

    def __repr__(self) -> str:
        extra = f", dropout={self.dropout}" if self.dropout else ""
        extra += f", attn_dropout={self.attn_dropout}" if self.attn_dropout else ""
        return f"{type(self).__name__}({self.channels}, heads={self.heads}{extra})"


class _FeedForward(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.lin1 = nn.Linear(channels, 2 * channels)
        self.lin2 = nn.Linear(2 * channels, channels)
        self.dropout = dropout

    def reset_parameters(self) -> None:
        for m in (self.norm, self.lin1, self.lin2):
            m.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        y = self.lin2(F.dropout(F.gelu(self.lin1(self.norm(x))), self.dropout, self.training))
        return x + F.dropout(y, self.dropout, self.training)


def global_pattern(kind: str, layers: int) -> str:
    """Mixer pattern of a global encoder: ``"transformer"`` -> ``"T" * layers``, ``"ssm"`` ->
    ``"M" * layers``, ``"hybrid"`` -> ``"M" * (layers - 1) + "T"`` (scan layers then one
    attention layer; one layer gives ``"T"``)."""
    check_positive_int("global_pattern", "layers", layers)
    if kind == "transformer":
        return "T" * layers
    if kind == "ssm":
        return "M" * layers
    if kind == "hybrid":
        return "M" * (layers - 1) + "T"
    raise ValueError(f"global_pattern: kind must be 'transformer', 'ssm' or 'hybrid', got {kind!r}")


class SequenceEncoder(nn.Module):
    r"""A stack of sequence mixers, each followed by a pre-norm feed-forward block.

    ``pattern`` lists the mixers in order: ``"M"`` a :class:`ScanLayer`, ``"T"`` an
    :class:`AttentionLayer`. ``"MMT"`` is GSM++'s hybrid: the scan layers inject the order of the
    tokens, the final attention layer mixes globally and avoids the recurrent layers'
    representational collapse over depth (Behrouz et al., 2025, §5).

    Args:
        channels (int): width :math:`D`.
        pattern (str): e.g. ``"TT"``, ``"MM"``, ``"MMT"``.
        heads (int): attention heads. (default: ``4``)
        bidirectional (bool): bidirectional scans. (default: ``True``)
        dropout (float): dropout after each mixer and feed-forward block. (default: ``0.0``)
        attn_dropout (float): attention-weight dropout. (default: ``0.0``)

    Shapes:
        - **input:** ``x`` :math:`(\sum_s T_s, D)`, ``cu_seqlens`` :math:`(S + 1)`.
        - **output:** :math:`(\sum_s T_s, D)`.
    """

    def __init__(
        self,
        channels: int,
        pattern: str,
        heads: int = 4,
        bidirectional: bool = True,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        if not isinstance(pattern, str) or not pattern or set(pattern) - {"M", "T"}:
            raise ValueError(
                f"{cls}: pattern must be a non-empty string of 'M' and 'T', got {pattern!r}"
            )
        self.channels, self.pattern = channels, pattern
        self.heads, self.bidirectional = heads, bool(bidirectional)
        self.dropout, self.attn_dropout = dropout, attn_dropout
        self.mixers = nn.ModuleList(
            ScanLayer(channels, bidirectional, dropout)
            if p == "M"
            else AttentionLayer(channels, heads, dropout, attn_dropout)
            for p in pattern
        )
        self.ffns = nn.ModuleList(_FeedForward(channels, dropout) for _ in pattern)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (*self.mixers, *self.ffns):
            m.reset_parameters()

    def forward(self, x: Tensor, cu_seqlens: Tensor, *, validate: bool = True) -> Tensor:
        """``validate=False`` skips the check of ``cu_seqlens`` (one host sync) for boundaries
        the caller built or already checked; the mixers never check them again."""
        if validate:
            cu_seqlens = check_cu_seqlens(type(self).__name__, cu_seqlens, x)
        T = uniform_length(cu_seqlens, x.size(0)) if "M" in self.pattern else None
        rev = reverse_index(cu_seqlens) if "M" in self.pattern and T is None else None
        for mixer, ffn in zip(self.mixers, self.ffns, strict=True):
            if not isinstance(mixer, ScanLayer):
                x = mixer(x, cu_seqlens, validate=False)
            elif T is not None:  # equal lengths (k-hop tokens, one graph's HAC paths): batched
                x = mixer(x.view(-1, T, x.size(-1))).view(-1, x.size(-1))
            else:
                x = mixer(x, cu_seqlens, rev, validate=False)
            x = ffn(x)
        return x

    def __repr__(self) -> str:
        extra = f", heads={self.heads}" if "T" in self.pattern and self.heads != 4 else ""
        extra += ", bidirectional=False" if "M" in self.pattern and not self.bidirectional else ""
        extra += f", dropout={self.dropout}" if self.dropout else ""
        if "T" in self.pattern and self.attn_dropout:
            extra += f", attn_dropout={self.attn_dropout}"
        return f"{type(self).__name__}({self.channels}, pattern={self.pattern!r}{extra})"


class HierarchicalPE(nn.Module):
    r"""Hierarchical positional encoding from an HAC tree (GSM++; the exact formula of the paper
    is not public, this is graphseq's construction).

    For node :math:`v` with coarse-to-fine path clusters :math:`c_1(v), \dots, c_L(v)`:

    .. math::
        \mathrm{HPE}(v) = \sum_{l=1}^{L} \mathbf{E}_l\big[\min(r_l(v), R - 1)\big]
            + \mathbf{W} \Big[\frac{\log(1 + |c_l(v)|)}{\log(1 + n)}\Big]_{l=1}^{L}

    where :math:`r_l(v)` is the rank of :math:`c_l(v)` among its siblings (``hac_child``),
    :math:`|c_l(v)|` its size (``hac_size``) and :math:`n = |c_1(v)|` the size of the root (the
    graph), so the size features lie in :math:`[0, 1]` whatever the graph size. Two nodes get
    the same encoding only if they sit at the same sibling ranks at every level, in clusters of
    the same sizes. Both terms start small (``std = 0.02``) so they do not drown the features.

    Args:
        channels (int): output width.
        levels (int): path width (the tokenizer's ``levels``).
        max_children (int): sibling ranks at or above this share one embedding. (default: 16)

    Shapes:
        - **input:** ``child`` :math:`(N, L)` long, ``size`` :math:`(N, L)` long.
        - **output:** :math:`(N, \text{channels})`.
    """

    def __init__(self, channels: int, levels: int, max_children: int = 16) -> None:
        super().__init__()
        cls = type(self).__name__
        self.channels = check_positive_int(cls, "channels", channels)
        self.levels = check_positive_int(cls, "levels", levels)
        self.max_children = check_positive_int(cls, "max_children", max_children)
        self.child = nn.Embedding(levels * max_children, channels)
        self.size = nn.Linear(levels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # small at initialisation, so that the encoding does not drown the node features
        nn.init.normal_(self.child.weight, std=0.02)
        nn.init.normal_(self.size.weight, std=0.02)
        nn.init.zeros_(self.size.bias)

    def forward(self, child: Tensor, size: Tensor) -> Tensor:
        cls = type(self).__name__
        if child.dim() != 2 or child.size(1) != self.levels or child.shape != size.shape:
            raise ValueError(
                f"{cls}: child and size must both have shape [N, levels={self.levels}], got "
                f"{tuple(child.shape)} and {tuple(size.shape)}; build HierarchicalPE with the "
                "HACTokenizer's levels"
            )
        offset = torch.arange(self.levels, device=child.device) * self.max_children
        idx = child.clamp(max=self.max_children - 1) + offset  # [N, L]
        # the sizes in float32 at least: a cluster above 65,504 nodes is inf in float16, and
        # inf / inf made the encoding of every node of such a graph NaN
        dtype = self.size.weight.dtype
        acc = torch.promote_types(dtype, torch.float32)
        logs = torch.log1p(size.to(acc))  # [N, L]; column 0 is the root
        rel = logs / logs[:, :1].clamp_min(math.log(2.0))
        return self.child(idx).sum(1) + self.size(rel.to(dtype))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.channels}, levels={self.levels}, "
            f"max_children={self.max_children})"
        )
