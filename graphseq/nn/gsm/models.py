r"""Graph sequence models: GSM (tokenizer + local encoder + global encoder) and GSM++.

Both take a PyG ``Data``/``Batch`` that a tokenizer transform of :mod:`graphseq.nn.gsm.tokenizers`
has prepared, and return node-level ``[N, out]`` or graph-level ``[num_graphs, out]`` scores.

Tokenizations a model can read (``tokenization=``):

==================  ==========  ================================================================
name                kind        sequence (read from)
==================  ==========  ================================================================
``"degree"``,       node        the graph's nodes by ``degree_rank`` / ``random_rank`` /
``"random"``,                   ``bfs_rank`` (:class:`NodeTokenizer`)
``"bfs"``
``"hac_dfs"``       node        HAC leaves in depth-first order, ``hac_rank`` (alias
                                ``"dfs_leaves"``)
``"khop"``          subgraph    per node: ``N_k, ..., N_1, {v}`` (``khop_index``)
``"hac_bfs"``       subgraph    per node: its HAC clusters coarse to fine, then itself
                                (``hac_path``; alias ``"ancestor_path"``)
``"rw"``            subgraph    per node: its random walks cut at lengths ``L, ..., 0``,
                                each token the mean over walks and visits (``rw_index``)
``"none"``          node        nodes in storage order (``"w/o PE"``-style baselines)
==================  ==========  ================================================================

A node tokenization runs the global encoder over each graph's node sequence (packed with
``cu_seqlens`` = ``batch.ptr``); a subgraph tokenization runs it over every node's own token
sequence, each token the mean of the current node states over the subgraph, and keeps the last
position (the node itself). Node outputs are returned in the original node order.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn
from torch_geometric.nn import global_add_pool, global_mean_pool
from torch_geometric.utils import scatter

from graphseq.nn.seq.base import check_choice, check_matches_parameters, check_positive_int

from .encoders import (
    LOCAL_ENCODERS,
    AttentionLayer,
    HierarchicalPE,
    LocalEncoder,
    SequenceEncoder,
    _FeedForward,
    global_pattern,
    mean_adjacency,
)
from .tokenizers import sparse_adjacency_error

__all__ = ["GSM", "TOKENIZATIONS", "GSMPlusPlus", "MoTRouter", "node_tokens", "subgraph_tokens"]

NODE_TOKENIZATIONS = ("degree", "random", "bfs", "hac_dfs", "none")
SUBGRAPH_TOKENIZATIONS = ("khop", "hac_bfs", "rw")
ALIASES = {
    "dfs_leaves": "hac_dfs",
    "dfs": "hac_dfs",
    "ancestor_path": "hac_bfs",
    "bfs_hac": "hac_bfs",
}
TOKENIZATIONS = NODE_TOKENIZATIONS + SUBGRAPH_TOKENIZATIONS

_TRANSFORM = {
    "degree": "NodeTokenizer('degree')",
    "random": "NodeTokenizer('random')",
    "bfs": "NodeTokenizer('bfs')",
    "hac_dfs": "HACTokenizer()",
    "hac_bfs": "HACTokenizer()",
    "khop": "KHopTokenizer(k)",
    "rw": "RandomWalkTokenizer()",
}
_ATTR = {
    "degree": "degree_rank",
    "random": "random_rank",
    "bfs": "bfs_rank",
    "hac_dfs": "hac_rank",
    "hac_bfs": "hac_path",
    "khop": "khop_index",
    "rw": "rw_index",
}


def resolve_tokenization(name: str, cls: str) -> str:
    name = ALIASES.get(name, name)
    if name not in TOKENIZATIONS:
        raise ValueError(
            f"{cls}: tokenization must be one of {TOKENIZATIONS} (or an alias in "
            f"{sorted(ALIASES)}), got {name!r}"
        )
    return name


def _require(batch, tokenization: str, cls: str):
    attr = _ATTR.get(tokenization)
    if attr is None:
        return None
    value = getattr(batch, attr, None)
    if value is None:
        raise ValueError(
            f"{cls}: tokenization={tokenization!r} reads data.{attr}, which the input lacks; "
            f"apply graphseq.nn.gsm.{_TRANSFORM[tokenization]} to the dataset first"
        )
    x = getattr(batch, "x", None)
    _check_token_device(cls, attr, value, x)
    if attr in ("khop_index", "rw_index") and isinstance(x, Tensor) and value.numel():
        n = x.size(0)
        low, high = torch.aminmax(value)
        low, high = torch.stack([low, high]).tolist()  # one host sync
        if low < 0 or high >= n:
            raise ValueError(
                f"{cls}: data.{attr} holds node ids outside [0, {n}): the graph changed after "
                "tokenization (subgraph, node removal, ...); apply the tokenizer last"
            )
    return value


def _check_token_device(cls: str, attr: str, value: object, x: object) -> None:
    """A token attribute must be on ``x``'s device (the tokenizers store theirs on the CPU,
    so a graph tokenized after ``data.to(device)`` has them there)."""
    if isinstance(value, Tensor) and isinstance(x, Tensor) and value.device != x.device:
        raise ValueError(
            f"{cls}: data.{attr} is on {value.device} but data.x is on {x.device}; tokenize "
            "first, then move the whole batch with batch.to(device)"
        )


def _require_hac_tree(batch, cls: str, what: str, levels: int) -> tuple[Tensor, Tensor]:
    """``(hac_child, hac_size)``, the HAC tree that the hierarchical PE reads, checked against
    the model's ``hpe_levels``."""
    child, size = getattr(batch, "hac_child", None), getattr(batch, "hac_size", None)
    if child is None or size is None:
        raise ValueError(
            f"{cls}: {what} reads the HAC tree (data.hac_child, data.hac_size), which the "
            "input lacks; apply graphseq.nn.gsm.HACTokenizer to the dataset first"
        )
    x = getattr(batch, "x", None)
    _check_token_device(cls, "hac_child", child, x)
    _check_token_device(cls, "hac_size", size, x)
    if child.dim() == 2 and child.size(1) != levels:
        raise ValueError(
            f"{cls}: the data's HAC paths have {child.size(1)} levels but hpe_levels={levels}; "
            f"build the model with hpe_levels={child.size(1)} (the HACTokenizer's levels)"
        )
    return child, size


def _graph_info(batch, num_nodes: int, device) -> tuple[Tensor, Tensor]:
    node_batch = getattr(batch, "batch", None)
    if node_batch is None:
        node_batch = torch.zeros(num_nodes, dtype=torch.long, device=device)
    ptr = getattr(batch, "ptr", None)
    if ptr is None:
        counts = torch.bincount(node_batch, minlength=int(getattr(batch, "num_graphs", 1) or 1))
        ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return node_batch, ptr


def check_sorted_batch(cls: str, node_batch: Tensor, name: str = "data.batch") -> None:
    """Each graph's nodes must be contiguous (a PyG ``Batch``): the node sequences and the
    attention layers read graph ``g`` as rows ``ptr[g]:ptr[g + 1]``, so an interleaved
    ``batch`` vector mixed graphs silently (GPS's ``GPSConv`` failed in its residual sum)."""
    if node_batch.numel() > 1 and bool((node_batch[1:] < node_batch[:-1]).any()):
        raise ValueError(
            f"{cls}: {name} must be sorted, each graph's nodes contiguous (as in a PyG Batch); "
            "reorder the nodes or build the input with Batch.from_data_list"
        )


def node_tokens(batch, tokenization: str, node_batch: Tensor, cls: str = "GSM") -> Tensor:
    """Permutation ``[N]`` listing every graph's nodes in sequence order, graph after graph."""
    n = node_batch.numel()
    if tokenization == "none":
        return torch.arange(n, device=node_batch.device)
    rank = _require(batch, tokenization, cls)
    if rank.shape != (n,):
        raise ValueError(
            f"{cls}: data.{_ATTR[tokenization]} must have shape [{n}], got {tuple(rank.shape)}"
        )
    return torch.argsort(node_batch * (n + 1) + rank, stable=True)


def subgraph_tokens(
    batch, tokenization: str, h: Tensor, cls: str = "GSM"
) -> tuple[Tensor, Tensor, Tensor]:
    """Every node's token sequence, coarse to fine, packed: tokens ``[ΣK, D]`` (the mean of
    ``h`` over each token's subgraph), ``cu_seqlens`` ``[N + 1]`` and each token's subgraph size
    ``[ΣK]`` (nodes in the k-hop ball or HAC cluster; the walk length for random walks).

    The last token of each node's sequence is ``h`` itself (size 1). Sequence lengths depend
    only on the node's own graph (``k + 1`` for k-hop, ``depth + 1`` for HAC ancestor paths,
    ``L + 1`` for random walks), never on the rest of the batch.

    Sums, counts and means are formed in float32 for float16/bfloat16 ``h`` (a subgraph's sum
    overflowed float16 at 65,504 although its mean is O(|h|), and a size above 65,504 became
    inf); the tokens come back in ``h``'s dtype, the sizes in float32.
    """
    acc = torch.promote_types(h.dtype, torch.float32)
    tokens, cu, size = _subgraph_tokens(batch, tokenization, h.to(acc), cls)
    return tokens.to(h.dtype), cu, size


def _subgraph_tokens(
    batch, tokenization: str, h: Tensor, cls: str
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`subgraph_tokens` in ``h``'s dtype."""
    n, D = h.shape
    value = _require(batch, tokenization, cls)
    device = h.device
    if tokenization == "khop":
        k = _scalar(batch, "khop_k", cls, "KHopTokenizer")
        # each graph's own k: a batch may mix graphs tokenized with different k, and a node of
        # a k = 1 graph must not get the k = 2 token of its k = 1 ball
        node_batch, ptr = _graph_info(batch, n, device)
        k_graph = batch.khop_k.reshape(-1).to(device)
        if k_graph.numel() not in (1, ptr.numel() - 1):
            raise ValueError(
                f"{cls}: data.khop_k must hold one k per graph ({ptr.numel() - 1}), got "
                f"{k_graph.numel()}"
            )
        k_node = k_graph.expand(n) if k_graph.numel() == 1 else k_graph[node_batch]
        dist = batch.khop_dist
        center, other = value
        sums, counts, tokens, sizes = h, h.new_ones(n, 1), [], []
        for d in range(1, k + 1):
            sel = dist == d
            sums = sums + scatter(h[other[sel]], center[sel], 0, dim_size=n, reduce="sum")
            counts = counts + torch.bincount(center[sel], minlength=n).unsqueeze(1).to(h.dtype)
            tokens.append(sums / counts)
            sizes.append(counts)
        full = torch.stack([*reversed(tokens), h], 1)  # [N, k + 1, D]
        size = torch.cat([*reversed(sizes), h.new_ones(n, 1)], 1)  # [N, k + 1]
        if not n or bool((k_node == k).all()):  # one k: every sequence has k + 1 tokens
            cu = torch.arange(n + 1, device=device) * (k + 1)
            return full.reshape(-1, D), cu, size.reshape(-1)
        # a smaller k: drop the tokens beyond the node's own graph's k (copies of its N_k)
        keep = torch.arange(k + 1, device=device) >= (k - k_node).unsqueeze(1)
        lengths = k_node + 1
        cu = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
        return full[keep], cu, size[keep]
    if tokenization == "hac_bfs":
        node_batch, _ = _graph_info(batch, n, device)
        depth = batch.hac_depth[node_batch]  # [N]
        # the stored paths are left-padded with the root up to `levels` columns: read only the
        # deepest tree's levels (every column further left is padding for every node)
        L = int(depth.max()) if n else 0
        value, hac_size = value[:, value.size(1) - L :], batch.hac_size[:, value.size(1) - L :]
        offset = torch.cumsum(batch.hac_num_clusters, 0) - batch.hac_num_clusters
        ids = value + offset[node_batch].unsqueeze(1)  # [N, L] unique over the batch
        total = int(batch.hac_num_clusters.sum())
        src = h.unsqueeze(1).expand(n, L, D).reshape(-1, D)
        means = scatter(src, ids.reshape(-1), 0, dim_size=total, reduce="mean")
        full = torch.cat([means[ids], h.unsqueeze(1)], 1)  # [N, L + 1, D]
        lengths = depth + 1
        size = torch.cat([hac_size, hac_size.new_ones(n, 1)], 1).to(h.dtype)
        cu = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
        if n and bool((depth == L).all()):  # one depth (a single graph): no padding to drop
            return full.reshape(-1, D), cu, size.reshape(-1)
        # keep each node's real levels (drop the root padding of shallower trees) and itself
        keep = torch.arange(L + 1, device=device) >= (L - depth).unsqueeze(1)
        return full[keep], cu, size[keep]
    # random walks: token t = mean over walks of the mean of h over steps 0..t
    L1 = _scalar(batch, "rw_walk_length", cls, "RandomWalkTokenizer") + 1
    lengths = batch.rw_walk_length.reshape(-1)
    if bool((lengths != L1 - 1).any()):
        # rw_index rows are [num_walks * (walk_length + 1)]: with another walk length they
        # would be re-cut into walks of the batch's longest length, silently
        raise ValueError(
            f"{cls}: the batch mixes graphs tokenized with different walk lengths "
            f"({sorted(set(lengths.tolist()))}); tokenize every graph with one "
            "RandomWalkTokenizer"
        )
    if value.dim() != 2 or value.size(0) % L1 or value.size(1) != n:
        raise ValueError(
            f"{cls}: data.rw_index must have shape [num_walks * {L1}, {n}], got "
            f"{tuple(value.shape)}"
        )
    W = value.size(0) // L1
    steps = h[value.reshape(W, L1, n)]  # [W, L + 1, N, D]
    norm = torch.arange(1, L1 + 1, device=device, dtype=h.dtype).view(1, -1, 1, 1)
    tokens = (steps.cumsum(1) / norm).mean(0).transpose(0, 1)  # [N, L + 1, D]
    # coarse (longest walks) first, the node itself last
    size = torch.arange(L1, 0, -1, device=device, dtype=h.dtype).repeat(n)
    return tokens.flip(1).reshape(-1, D), torch.arange(n + 1, device=device) * L1, size


def _scalar(batch, attr: str, cls: str, transform: str) -> int:
    value = getattr(batch, attr, None)
    if value is None or value.numel() == 0:
        raise ValueError(f"{cls}: data.{attr} is missing; apply graphseq.nn.gsm.{transform}")
    return int(value.reshape(-1).max())


def _reset_children(module: nn.Module) -> None:
    """Call ``reset_parameters`` of every child that has one; descend into those that do not
    (containers), so each layer's own initialisation is not overwritten by its sublayers'."""
    for child in module.children():
        if hasattr(child, "reset_parameters"):
            child.reset_parameters()
        else:
            _reset_children(child)


def _nondefault(model: nn.Module, cls: type, names: tuple[str, ...]) -> str:
    """``", name=value"`` for every constructor argument of ``cls`` in ``names`` whose value
    on ``model`` differs from the signature's default (for :meth:`__repr__`)."""
    params = inspect.signature(cls.__init__).parameters
    out = ""
    for name in names:
        value = getattr(model, name)
        if value != params[name].default:
            out += f", {name}={value!r}"
    return out


def _layers(module: nn.Module) -> tuple[nn.Module, ...]:
    return tuple(module) if isinstance(module, nn.Sequential) else (module,)


def _pool(h: Tensor, node_batch: Tensor, num_graphs: int, pool: str) -> Tensor:
    if pool == "mean":
        # summed in float32 at least: a float16 sum overflows past 65,504 (a graph of 3,000
        # nodes with |h| ~ 30), and inf / count gave an inf graph embedding for a finite mean
        acc = torch.promote_types(h.dtype, torch.float32)
        return global_mean_pool(h.to(acc), node_batch, size=num_graphs).to(h.dtype)
    return global_add_pool(h, node_batch, size=num_graphs)


class _Base(nn.Module):
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        if self.token_sizes and self.size_proj is None:
            # state dicts saved before size_proj was limited to subgraph tokenizations hold
            # one that no forward pass read; drop it, so they still load strictly
            for key in (prefix + "size_proj.weight", prefix + "size_proj.bias"):
                state_dict.pop(key, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _input(self, batch) -> tuple[Tensor, Tensor, Tensor, Tensor, int, Tensor | None]:
        cls = type(self).__name__
        x = batch.x
        if x is None:
            raise ValueError(f"{cls}: the input has no node features x")
        weight = self.encoder.weight
        x = x.to(weight.dtype) if not torch.is_floating_point(x) else x
        check_matches_parameters(cls, "x", x, weight)
        if x.dim() == 1:
            x = x.unsqueeze(1)
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ValueError(
                f"{cls}: x must have shape [num_nodes, in_channels = {self.in_channels}], "
                f"got {tuple(batch.x.shape)}"
            )
        n = x.size(0)
        node_batch, ptr = _graph_info(batch, n, x.device)
        check_sorted_batch(cls, node_batch)
        num_graphs = ptr.numel() - 1
        edge_attr = getattr(batch, "edge_attr", None) if self.edge_dim is not None else None
        if edge_attr is not None and edge_attr.dim() == 1:
            edge_attr = edge_attr.unsqueeze(1)
        if edge_attr is not None and (edge_attr.dim() != 2 or edge_attr.size(1) != self.edge_dim):
            raise ValueError(
                f"{cls}: edge_attr must have shape [num_edges, edge_dim = {self.edge_dim}], "
                f"got {tuple(batch.edge_attr.shape)}"
            )
        edge_index = getattr(batch, "edge_index", None)
        if edge_index is None:  # no edges, as the tokenizers read a graph without edge_index
            sparse_adjacency_error(batch, cls)  # ... unless its edges are in adj_t
            edge_index = torch.zeros(2, 0, dtype=torch.long, device=x.device)
        return x, edge_index, node_batch, ptr, num_graphs, edge_attr

    def _init_pe(self, pe: str | None, pe_dim: int, pe_sign_flip: bool, hidden: int) -> None:
        """Check the node-PE arguments and build their linear map (``None`` without ``pe``)."""
        cls = type(self).__name__
        if pe is not None:
            if not isinstance(pe, str) or not pe:
                raise ValueError(f"{cls}: pe must be a non-empty attribute name, got {pe!r}")
            check_positive_int(cls, "pe_dim", pe_dim)
        elif pe_dim or pe_sign_flip:
            raise ValueError(f"{cls}: pe_dim / pe_sign_flip given without pe")
        self.pe_attr, self.pe_dim, self.pe_sign_flip = pe, pe_dim, bool(pe_sign_flip)
        self.pe_proj = nn.Linear(pe_dim, hidden) if pe is not None else None

    def _node_pe(self, batch, n: int) -> Tensor:
        cls = type(self).__name__
        pe = getattr(batch, self.pe_attr, None)
        if not isinstance(pe, Tensor):
            raise ValueError(f"{cls}: pe={self.pe_attr!r} but the input has no such attribute")
        if pe.shape != (n, self.pe_dim):
            raise ValueError(
                f"{cls}: {self.pe_attr} must have shape ({n}, {self.pe_dim}), got {tuple(pe.shape)}"
            )
        if self.training and self.pe_sign_flip:
            pe = pe * (torch.randint(0, 2, (self.pe_dim,), device=pe.device) * 2 - 1)
        return pe

    def _pe_repr(self) -> str:
        if not self.pe_attr:
            return ""
        return f", pe={self.pe_attr!r}, pe_dim={self.pe_dim}, pe_sign_flip={self.pe_sign_flip}"


class GSM(_Base):
    r"""Graph sequence model (`Behrouz et al., ICML 2025 <https://arxiv.org/abs/2411.15671>`_):
    tokenization, local encoding, global encoding, then a node or graph head.

    .. math::
        h^{(0)} = \mathbf{W}_{in} x \;\big[+\, \mathbf{W}_{pe} (s \odot p)\big], \qquad
        h^{(l)} = \tilde h + \Psi^{(l)}\big(T(\tilde h)\big),\;
        \tilde h = \phi^{(l)}_{Local}(h^{(l-1)}) \quad (l = 1..L)

    where :math:`T` reads the tokenization stored by a tokenizer transform,
    :math:`\Psi` is a :class:`SequenceEncoder` (``"transformer"``, ``"ssm"`` or ``"hybrid"``),
    and the bracket is present with ``pe``: :math:`p` the node positional encoding,
    :math:`s \in \{\pm 1\}^{\text{pe\_dim}}` drawn per batch while training with
    ``pe_sign_flip``, else all ones.

    Args:
        in_channels (int): node feature width.
        hidden (int): width :math:`D`.
        out_channels (int): outputs per node / graph.
        tokenization (str): see the module docstring. (default: ``"hac_dfs"``)
        local (str): ``"gatedgcn"``, ``"gine"``, ``"sage"``, ``"gat"`` (GAT-sep with
            ``heads`` heads) or ``"none"``. (default: ``"gatedgcn"``)
        global_ (str): ``"transformer"``, ``"ssm"`` or ``"hybrid"``. (default: ``"hybrid"``)
        layers (int): blocks :math:`L`. (default: ``2``)
        seq_layers (int): mixers per global encoder. (default: ``2``)
        heads (int): attention heads. (default: ``4``)
        level (str): ``"node"`` or ``"graph"``. (default: ``"graph"``)
        edge_dim (int, optional): ``edge_attr`` width for the local encoder.
        hpe (bool): add the :class:`HierarchicalPE` (needs :class:`HACTokenizer`).
            (default: ``False``)
        hpe_levels (int): the tokenizer's ``levels``. (default: ``16``)
        pool (str): graph pooling, ``"mean"`` or ``"sum"``. (default: ``"mean"``)
        dropout (float): dropout. (default: ``0.0``)
        token_sizes (bool): add a learned projection of ``log(1 + |subgraph|)`` to every
            subgraph token (a mean alone cannot tell a degree-2 from a degree-9 node when the
            features are equal); the projection exists only for the subgraph tokenizations
            (``"khop"``, ``"hac_bfs"``, ``"rw"``), a node tokenization has no sizes to project.
            (default: ``True``)
        pe (str, optional): name of a node attribute holding a positional encoding (e.g.
            ``"lap_pe"`` from PyG's :class:`~torch_geometric.transforms.AddLaplacianEigenvectorPE`
            with ``attr_name="lap_pe"``); a linear map of it is added to :math:`h^{(0)}`.
            (default: ``None``)
        pe_dim (int): its width, required with ``pe``. (default: ``0``)
        pe_sign_flip (bool): while training, multiply each PE column by a random sign per
            batch (the Laplacian eigenvectors' sign is arbitrary; GraphGPS's augmentation).
            Only for sign-ambiguous encodings. (default: ``False``)

    Shapes:
        - **input:** a PyG ``Data``/``Batch`` with ``x`` :math:`(N, F)`, ``edge_index``,
          optionally ``batch``/``ptr`` and ``edge_attr``, plus the tokenization's attributes
          (and ``pe`` :math:`(N, \text{pe\_dim})` when set).
        - **output:** :math:`(N, \text{out})` (node level) or :math:`(G, \text{out})`.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        out_channels: int,
        tokenization: str = "hac_dfs",
        local: str = "gatedgcn",
        global_: str = "hybrid",
        layers: int = 2,
        seq_layers: int = 2,
        heads: int = 4,
        level: str = "graph",
        edge_dim: int | None = None,
        hpe: bool = False,
        hpe_levels: int = 16,
        pool: str = "mean",
        dropout: float = 0.0,
        token_sizes: bool = True,
        pe: str | None = None,
        pe_dim: int = 0,
        pe_sign_flip: bool = False,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        for name, v in (("in_channels", in_channels), ("hidden", hidden),
                        ("out_channels", out_channels), ("layers", layers),
                        ("seq_layers", seq_layers), ("heads", heads),
                        ("hpe_levels", hpe_levels)):  # fmt: skip
            check_positive_int(cls, name, v)
        check_choice(cls, "level", level, ("node", "graph"))
        check_choice(cls, "pool", pool, ("mean", "sum"))
        check_choice(cls, "local", local, LOCAL_ENCODERS)
        check_choice(cls, "global_", global_, ("transformer", "ssm", "hybrid"))
        if global_ != "ssm" and hidden % heads:  # the attention layers split hidden by heads
            raise ValueError(
                f"{cls}: heads ({heads}) must divide hidden ({hidden}) for global_={global_!r}"
            )
        if local == "gat" and hidden % heads:  # so does the GAT local encoder
            raise ValueError(
                f"{cls}: heads ({heads}) must divide hidden ({hidden}) for local='gat'"
            )
        self._init_pe(pe, pe_dim, pe_sign_flip, hidden)
        self.tokenization = resolve_tokenization(tokenization, cls)
        self.pattern = global_pattern(global_, seq_layers)
        self.in_channels, self.hidden, self.out_channels = in_channels, hidden, out_channels
        self.local, self.global_, self.layers, self.level = local, global_, layers, level
        self.edge_dim, self.hpe, self.pool = edge_dim, bool(hpe), pool
        self.seq_layers, self.heads, self.hpe_levels = seq_layers, heads, hpe_levels
        self.dropout, self.token_sizes = dropout, bool(token_sizes)
        self.encoder = nn.Linear(in_channels, hidden)
        self.pe = HierarchicalPE(hidden, hpe_levels) if hpe else None
        # node tokens have no subgraph size: no projection that would never get a gradient
        # (an unused parameter stops DDP at its second step)
        sized = token_sizes and self.tokenization in SUBGRAPH_TOKENIZATIONS
        self.size_proj = nn.Linear(1, hidden) if sized else None
        self.locals = nn.ModuleList(
            LocalEncoder(hidden, local, edge_dim, dropout=dropout, heads=heads)
            for _ in range(layers)
        )
        self.globals = nn.ModuleList(
            SequenceEncoder(hidden, self.pattern, heads, dropout=dropout) for _ in range(layers)
        )
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_channels)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_children(self)

    def _embed(self, batch, x: Tensor) -> Tensor:
        h = self.encoder(x)
        if self.pe is not None:
            child, size = _require_hac_tree(batch, type(self).__name__, "hpe=True", self.hpe_levels)
            h = h + self.pe(child, size)
        if self.pe_proj is not None:
            h = h + self.pe_proj(self._node_pe(batch, x.size(0)).to(h.dtype))
        return h

    def _global(self, encoder, batch, h, node_batch, ptr, tokenization) -> Tensor:
        cls = type(self).__name__
        if tokenization in SUBGRAPH_TOKENIZATIONS:
            tokens, cu, size = subgraph_tokens(batch, tokenization, h, cls)  # [ΣK, D], [N + 1]
            if self.size_proj is not None:
                # a mean forgets how many nodes it averaged: tell the encoder the subgraph size
                # log1p of the float32 sizes, then the tokens' dtype
                tokens = tokens + self.size_proj(torch.log1p(size).to(tokens.dtype).unsqueeze(1))
            # cu is built here from the tokens, so the encoder need not check it
            return encoder(tokens, cu, validate=False)[cu[1:] - 1]  # each node's last token
        perm = node_tokens(batch, tokenization, node_batch, cls)
        y = encoder(h[perm], ptr)
        return torch.empty_like(y).index_copy_(0, perm, y)  # back to node order

    def forward(self, batch) -> Tensor:
        x, edge_index, node_batch, ptr, num_graphs, edge_attr = self._input(batch)
        h = self._embed(batch, x)
        if self.local == "sage":  # one sparse adjacency for all layers, as GSMPlusPlus builds
            edge_index = mean_adjacency(
                edge_index, x.size(0), torch.promote_types(h.dtype, torch.float32)
            )
        for local, enc in zip(self.locals, self.globals, strict=True):
            h = local(h, edge_index, edge_attr)
            h = self._global(enc, batch, h, node_batch, ptr, self.tokenization)
        if self.level == "graph":
            h = _pool(h, node_batch, num_graphs, self.pool)
        return self.head(h)

    def __repr__(self) -> str:
        # every argument that changes the parameters or the outputs, when not the default
        extra = _nondefault(self, GSM, ("heads", "edge_dim", "hpe", "hpe_levels", "pool",
                                        "dropout", "token_sizes"))  # fmt: skip
        return (
            f"{type(self).__name__}({self.in_channels}, {self.hidden}, {self.out_channels}, "
            f"tokenization={self.tokenization!r}, local={self.local!r}, "
            f"global_={self.global_!r}, layers={self.layers}, seq_layers={self.seq_layers}, "
            f"level={self.level!r}{extra}{self._pe_repr()})"
        )


class MoTRouter(nn.Module):
    r"""Mixture-of-tokenization router: per node, keep the top-``k`` of ``T`` experts.

    .. math::
        p = \mathrm{softmax}(\mathbf{W}_r h_v), \quad
        g_t = \frac{p_t\,[t \in \mathrm{top}_k(p)]}{\sum_{s \in \mathrm{top}_k(p)} p_s}, \quad
        z_v = \mathbf{W}_o\,[g_1 y_1 \,\|\, \dots \,\|\, g_T y_T]

    The concatenation of the selected experts' encodings (zeros elsewhere) is projected back to
    :math:`D`; the renormalised soft weights pass gradients to :math:`\mathbf{W}_r` (as in
    sparse mixture-of-experts). Ties in :math:`p` go to the lower expert index.

    Args:
        channels (int): width :math:`D`.
        experts (int): number of tokenizations :math:`T`.
        k (int): experts kept per node. (default: ``2``)
        expert_channels (int, optional): width :math:`D_e` of the experts' encodings
            (``None``: :math:`D`); :math:`\mathbf{W}_o` maps :math:`T D_e` back to :math:`D`.

    Shapes:
        - **input:** ``h`` :math:`(N, D)`, ``ys`` a list of :math:`T` tensors :math:`(N, D_e)`.
        - **output:** ``(z, g)``: :math:`(N, D)` and the gates :math:`(N, T)`.
    """

    def __init__(
        self, channels: int, experts: int, k: int = 2, expert_channels: int | None = None
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        check_positive_int(cls, "channels", channels)
        check_positive_int(cls, "experts", experts)
        check_positive_int(cls, "k", k)
        expert_channels = channels if expert_channels is None else expert_channels
        check_positive_int(cls, "expert_channels", expert_channels)
        if k > experts:
            raise ValueError(f"{cls}: k ({k}) must be <= experts ({experts})")
        self.channels, self.experts, self.k = channels, experts, k
        self.expert_channels = expert_channels
        self.router = nn.Linear(channels, experts)
        self.out = nn.Linear(experts * expert_channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.router.reset_parameters()
        self.out.reset_parameters()

    def forward(self, h: Tensor, ys: list[Tensor]) -> tuple[Tensor, Tensor]:
        if len(ys) != self.experts:
            raise ValueError(
                f"{type(self).__name__}: expected {self.experts} encodings, got {len(ys)}"
            )
        cls = type(self).__name__
        check_matches_parameters(cls, "h", h, self.router.weight)
        for t, y in enumerate(ys):
            check_matches_parameters(cls, f"ys[{t}]", y, self.out.weight)
        p = torch.softmax(self.router(h), -1)  # [N, T]
        # a stable sort: ties in p go to the lower expert index (topk leaves them unordered)
        top = torch.argsort(p, dim=-1, descending=True, stable=True)[:, : self.k]
        keep = torch.zeros_like(p, dtype=torch.bool).scatter_(1, top, True)
        g = torch.where(keep, p, torch.zeros_like(p))
        g = g / g.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
        z = self.out(torch.cat([g[:, t : t + 1] * y for t, y in enumerate(ys)], -1))
        return z, g

    def __repr__(self) -> str:
        extra = (
            f", expert_channels={self.expert_channels}"
            if self.expert_channels != self.channels
            else ""
        )
        return f"{type(self).__name__}({self.channels}, experts={self.experts}, k={self.k}{extra})"


class GSMPlusPlus(_Base):
    r"""GSM++ (`Behrouz et al., ICML 2025 <https://arxiv.org/abs/2411.15671>`_): HAC tokenization,
    hierarchical positional encoding, hybrid scan-then-attention encoder and a mixture of
    tokenizations with a top-2 router.

    Each of the ``layers`` blocks:

    1. local encoding :math:`\tilde h = \phi_{Local}(h)`: ``local_layers`` residual
       message-passing layers (GatedGCN by default; see ``local``);
    2. every tokenization :math:`t \in \tau` (default HAC leaves, HAC ancestor paths, k-hop)
       encodes :math:`\tilde h` with its own scan stack (``scan_layers`` bidirectional
       :class:`ScanLayer`\ s) into :math:`y_t`;
    3. the :class:`MoTRouter` keeps the top-2 tokenizations per node and projects their
       concatenation: :math:`h' = \tilde h + \mathrm{MoT}(\tilde h, \{y_t\})`;
    4. one attention layer over each graph's nodes and a feed-forward block (the "T" of the
       hybrid), padding-masked per graph.

    The input embedding adds the :class:`HierarchicalPE` of the HAC tree (with ``local="sage"``
    or ``"gat"``: the scan encoders' input, see ``local``). The paper's exact
    widths, depths and router training are not public (see ``research/gsm.md``); these are
    graphseq's choices.

    Args:
        in_channels (int): node feature width.
        hidden (int): width :math:`D`.
        out_channels (int): outputs per node / graph.
        tokenizations (tuple of str): the experts :math:`\tau` (at least ``k``).
            (default: ``("hac_dfs", "hac_bfs", "khop")``)
        layers (int): blocks. (default: ``2``)
        scan_layers (int): scan layers per tokenization and block. (default: ``2``)
        heads (int): attention heads. (default: ``4``)
        k (int): tokenizations kept per node. (default: ``2``)
        level (str): ``"node"`` or ``"graph"``. (default: ``"graph"``)
        edge_dim (int, optional): ``edge_attr`` width for the local encoder.
        hpe_levels (int): the :class:`HACTokenizer`'s ``levels``. (default: ``16``)
        attention (bool): include step 4 (``False`` for graphs too large for full
            attention). (default: ``True``)
        pool (str): graph pooling. (default: ``"mean"``)
        dropout (float): dropout. (default: ``0.0``)
        attn_dropout (float): attention-weight dropout. (default: ``0.0``)
        token_sizes (bool): as in :class:`GSM`. (default: ``True``)
        local (str): the local encoder's convolution. ``"gatedgcn"`` (the paper's) and
            ``"gine"`` use :class:`LocalEncoder`'s post-BatchNorm ReLU layer; ``"sage"``
            (GraphSAGE, separate ego/neighbour weights) and ``"gat"`` (GAT-sep) use the
            pre-LayerNorm GELU layer of the tuned GAT/SAGE baselines
            (:class:`graphseq.models.gsm.GNNBaseline`), so that GSM++'s local part is exactly
            that baseline and the global part adds to it: with these two the router's output
            map starts at zero (the scan experts add nothing at initialisation; the
            feed-forward block, and the attention layer when on, are ordinary residual
            blocks on top of the local stack from the start), the hierarchical PE is added to
            the scan encoders' input instead of the node embedding (the local stack sees the
            features alone, as the baseline does), and a LayerNorm precedes the head.
            (default: ``"gatedgcn"``)
        local_layers (int): message-passing layers per block. (default: ``1``)
        global_dropout (float, optional): dropout inside the scan encoders (over every token
            of every sequence: with subgraph tokens ``(depth + 1) * N`` rows, and CPU random
            numbers are slow); ``None`` uses ``dropout``. (default: ``None``)
        global_hidden (int, optional): width of the scan encoders. With a value below
            ``hidden``, each block projects :math:`\tilde h` down to it before tokenizing, and
            the router's output map brings the experts back to ``hidden``: a subgraph
            tokenization runs its encoder over ``(depth + 1) * N`` tokens, so its cost falls
            with the square of this width. ``None``: ``hidden``. (default: ``None``)
        pe (str, optional): name of a node attribute holding a positional or structural
            encoding (e.g. ``"rw_pe"`` from PyG's
            :class:`~torch_geometric.transforms.AddRandomWalkPE`); a linear map of it is added
            to the node embedding, beside the hierarchical PE, as in :class:`GSM`. With
            ``local="sage"`` or ``"gat"`` it is added to the embedding that the local stack
            reads (the hierarchical PE still goes to the scan encoders only).
            (default: ``None``)
        pe_dim (int): its width, required with ``pe``. (default: ``0``)
        pe_sign_flip (bool): as in :class:`GSM` (for sign-ambiguous encodings such as
            Laplacian eigenvectors). (default: ``False``)
        local_norm_sum (bool): with ``"gatedgcn"`` or ``"gine"``, local layers in the form of
            ``GPSConv``'s local branch, :math:`h \leftarrow \mathrm{BN}(h +
            \mathrm{Dropout}(\mathrm{Conv}(h)))` (:class:`LocalEncoder`'s ``norm_sum``),
            instead of adding :math:`\mathrm{ReLU}(\mathrm{BN}(\mathrm{Conv}(h)))` to an
            unnormalised stream. (default: ``False``)

    Shapes:
        - **input:** a PyG ``Data``/``Batch`` with the tokenizers' attributes (and ``pe``
          :math:`(N, \text{pe\_dim})` when set).
        - **output:** :math:`(N, \text{out})` or :math:`(G, \text{out})`.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        out_channels: int,
        tokenizations: tuple[str, ...] = ("hac_dfs", "hac_bfs", "khop"),
        layers: int = 2,
        scan_layers: int = 2,
        heads: int = 4,
        k: int = 2,
        level: str = "graph",
        edge_dim: int | None = None,
        hpe_levels: int = 16,
        attention: bool = True,
        pool: str = "mean",
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        token_sizes: bool = True,
        local: str = "gatedgcn",
        local_layers: int = 1,
        global_dropout: float | None = None,
        global_hidden: int | None = None,
        pe: str | None = None,
        pe_dim: int = 0,
        pe_sign_flip: bool = False,
        local_norm_sum: bool = False,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        for name, v in (("in_channels", in_channels), ("hidden", hidden),
                        ("out_channels", out_channels), ("layers", layers),
                        ("scan_layers", scan_layers), ("local_layers", local_layers),
                        ("heads", heads), ("k", k), ("hpe_levels", hpe_levels)):  # fmt: skip
            check_positive_int(cls, name, v)
        if isinstance(tokenizations, str):
            raise TypeError(
                f"{cls}: tokenizations must be a sequence of names, got the string "
                f"{tokenizations!r}; write ({tokenizations!r},) for one"
            )
        check_choice(cls, "level", level, ("node", "graph"))
        check_choice(cls, "pool", pool, ("mean", "sum"))
        check_choice(cls, "local", local, ("gatedgcn", "gine", "sage", "gat"))
        if (attention or local == "gat") and hidden % heads:  # both split hidden by heads
            raise ValueError(
                f"{cls}: heads ({heads}) must divide hidden ({hidden}) with attention=True or "
                "local='gat'"
            )
        if local_norm_sum and local in ("sage", "gat"):
            raise ValueError(
                f"{cls}: local_norm_sum applies to local='gatedgcn' or 'gine' only; "
                f"local={local!r} uses the baselines' pre-norm layer"
            )
        global_dropout = dropout if global_dropout is None else global_dropout
        global_hidden = hidden if global_hidden is None else global_hidden
        check_positive_int(cls, "global_hidden", global_hidden)
        if not 0.0 <= float(global_dropout) < 1.0:
            raise ValueError(f"{cls}: global_dropout must be in [0, 1), got {global_dropout}")
        toks = tuple(resolve_tokenization(t, cls) for t in tokenizations)
        if len(set(toks)) != len(toks):
            raise ValueError(f"{cls}: tokenizations must be distinct, got {tokenizations!r}")
        if len(toks) < k:
            raise ValueError(f"{cls}: need at least k={k} tokenizations, got {len(toks)}")
        self.in_channels, self.hidden, self.out_channels = in_channels, hidden, out_channels
        self.tokenizations, self.layers, self.k, self.level = toks, layers, k, level
        self.edge_dim, self.attention, self.pool = edge_dim, bool(attention), pool
        self.local, self.local_layers = local, local_layers
        self.scan_layers, self.heads, self.hpe_levels = scan_layers, heads, hpe_levels
        self.dropout, self.attn_dropout = dropout, attn_dropout
        self.token_sizes = bool(token_sizes)
        self.encoder = nn.Linear(in_channels, hidden)
        self._init_pe(pe, pe_dim, pe_sign_flip, hidden)
        # baseline-local mode: the HPE is the sequence encoders' positional input only
        self.pe = HierarchicalPE(global_hidden if self._prenorm else hidden, hpe_levels)
        self.global_hidden = global_hidden
        sized = token_sizes and any(t in SUBGRAPH_TOKENIZATIONS for t in toks)
        self.size_proj = nn.Linear(1, global_hidden) if sized else None
        self.global_dropout = float(global_dropout)
        if local in ("sage", "gat"):  # the tuned baselines' block (GNNBaseline)
            block = dict(norm="layer", prenorm=True, act="gelu", heads=heads)
        else:  # GraphGPS-style post-BatchNorm block
            block = {"norm_sum": True} if local_norm_sum else {}
        self.local_norm_sum = bool(local_norm_sum)
        self.locals = nn.ModuleList(
            nn.Sequential(
                *(LocalEncoder(hidden, local, edge_dim, dropout=dropout, **block)
                  for _ in range(local_layers))
            )
            if local_layers > 1
            else LocalEncoder(hidden, local, edge_dim, dropout=dropout, **block)
            for _ in range(layers)
        )  # fmt: skip
        self.global_in = (
            nn.ModuleList(nn.Linear(hidden, global_hidden) for _ in range(layers))
            if global_hidden != hidden
            else None
        )
        self.scans = nn.ModuleList(
            nn.ModuleList(
                SequenceEncoder(
                    global_hidden, "M" * scan_layers, heads, dropout=self.global_dropout
                )
                for _ in toks
            )
            for _ in range(layers)
        )
        self.routers = nn.ModuleList(
            MoTRouter(hidden, len(toks), k, expert_channels=global_hidden) for _ in range(layers)
        )
        self.attns = nn.ModuleList(
            AttentionLayer(hidden, heads, dropout, attn_dropout) if attention else nn.Identity()
            for _ in range(layers)
        )
        self.ffns = nn.ModuleList(_FeedForward(hidden, dropout) for _ in range(layers))
        # pre-norm residual stacks end with a norm before the head (as the baselines do)
        self.out_norm = nn.LayerNorm(hidden) if self._prenorm else nn.Identity()
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_channels)
        )
        self.reset_parameters()

    @property
    def _prenorm(self) -> bool:
        return self.local in ("sage", "gat")

    def reset_parameters(self) -> None:
        _reset_children(self)
        if self._prenorm:
            # the global part starts as a zero residual on the baseline's local stack
            for router in self.routers:
                nn.init.zeros_(router.out.weight)
                nn.init.zeros_(router.out.bias)

    _global = GSM._global

    def forward(self, batch, return_gates: bool = False):
        cls = type(self).__name__
        x, edge_index, node_batch, ptr, num_graphs, edge_attr = self._input(batch)
        child, size = _require_hac_tree(
            batch, cls, "the hierarchical PE (always on in GSM++)", self.hpe_levels
        )
        pe = self.pe(child, size)
        h = self.encoder(x) if self._prenorm else self.encoder(x) + pe
        if self.pe_proj is not None:
            h = h + self.pe_proj(self._node_pe(batch, x.size(0)).to(h.dtype))
        if self.local == "sage":  # one sparse adjacency for all layers: SpMM instead of scatter
            # float32 at least: the mean's sum overflows float16 at a hub
            edge_index = mean_adjacency(
                edge_index, x.size(0), torch.promote_types(h.dtype, torch.float32)
            )
        gates = []
        for block in range(self.layers):
            for layer in _layers(self.locals[block]):
                h = layer(h, edge_index, edge_attr)
            hg = h if self.global_in is None else self.global_in[block](h)
            if self._prenorm:
                hg = hg + pe
            ys = [
                self._global(enc, batch, hg, node_batch, ptr, tok)
                for enc, tok in zip(self.scans[block], self.tokenizations, strict=True)
            ]
            z, g = self.routers[block](h, ys)
            gates.append(g)
            h = h + z
            if self.attention:
                h = self.attns[block](h, ptr) if node_batch.numel() else h
            h = self.ffns[block](h)
        h = self.out_norm(h)
        if self.level == "graph":
            h = _pool(h, node_batch, num_graphs, self.pool)
        out = self.head(h)
        return (out, gates) if return_gates else out

    def __repr__(self) -> str:
        local = (
            f", local={self.local!r}, local_layers={self.local_layers}"
            if (self.local, self.local_layers) != ("gatedgcn", 1)
            else ""
        )
        if self.local_norm_sum:
            local += ", local_norm_sum=True"
        extra = _nondefault(self, GSMPlusPlus, ("scan_layers", "heads", "edge_dim", "hpe_levels",
                                                "attention", "pool", "dropout", "attn_dropout",
                                                "token_sizes"))  # fmt: skip
        if self.global_dropout != self.dropout:  # the default follows dropout
            extra += f", global_dropout={self.global_dropout}"
        if self.global_hidden != self.hidden:  # the default follows hidden
            extra += f", global_hidden={self.global_hidden}"
        return (
            f"{type(self).__name__}({self.in_channels}, {self.hidden}, {self.out_channels}, "
            f"tokenizations={self.tokenizations}, layers={self.layers}, k={self.k}, "
            f"level={self.level!r}{local}{extra}{self._pe_repr()})"
        )
