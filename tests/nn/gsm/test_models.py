"""GSM and GSM++: every tokenization and global encoder on padded batches, batch independence,
the MoT router, missing tokenizations."""

import numpy as np
import pytest
import torch
import torch_geometric.transforms as T
from torch_geometric.data import Batch, Data

from graphseq.nn.gsm import (
    GSM,
    TOKENIZATIONS,
    GSMPlusPlus,
    HACTokenizer,
    KHopTokenizer,
    MoTRouter,
    NodeTokenizer,
    RandomWalkTokenizer,
)
from graphseq.nn.gsm.models import subgraph_tokens
from graphseq.nn.gsm.tokenizers import undirected_adjacency

TRANSFORM = T.Compose(
    [NodeTokenizer("degree"), NodeTokenizer("random"), NodeTokenizer("bfs"), KHopTokenizer(2),
     RandomWalkTokenizer(2, 3), HACTokenizer(levels=6)]
)  # fmt: skip


def _graphs():
    gen = torch.Generator().manual_seed(0)
    out = []
    for n in (6, 1, 0, 9, 4):  # a one-node and an empty graph in the middle
        ei = torch.randint(0, max(n, 1), (2, 2 * n), generator=gen)
        x = torch.randn(n, 3, generator=gen)
        out.append(TRANSFORM(Data(x=x, edge_index=ei, y=torch.tensor([0.0]), num_nodes=n)))
    return out


GRAPHS = _graphs()
BATCH = Batch.from_data_list(GRAPHS)


CASES = [(t, "hybrid") for t in TOKENIZATIONS] + [
    (t, g) for t in ("hac_dfs", "khop") for g in ("transformer", "ssm")
]


@pytest.mark.parametrize("tokenization, global_", CASES)
def test_gsm_batch_independence(tokenization, global_):
    model = GSM(3, 8, 2, tokenization=tokenization, global_=global_, heads=2, level="node",
                hpe=True, hpe_levels=6, local="gine").eval()  # fmt: skip
    out = model(BATCH)
    assert out.shape == (20, 2) and torch.isfinite(out).all()
    # each graph alone gives the same node outputs as inside the batch
    start = 0
    for g in GRAPHS:
        alone = model(Batch.from_data_list([g]))
        torch.testing.assert_close(alone, out[start : start + g.num_nodes], atol=1e-5, rtol=1e-4)
        start += g.num_nodes
    graph_model = GSM(3, 8, 2, tokenization=tokenization, global_=global_, heads=2)
    pooled = graph_model(BATCH)
    pooled.sum().backward()
    assert pooled.shape == (5, 2)
    assert all(p.grad is not None for p in graph_model.encoder.parameters())


def test_storage_order_matters_only_through_the_tokenization():
    """Relabelling the nodes so that the degree order (ties by node id) visits the same
    nodes in the same sequence leaves a node-order model's outputs equivariant."""
    model = GSM(
        3, 8, 1, tokenization="degree", global_="ssm", local="none", heads=2, level="node"
    ).eval()
    g = GRAPHS[3]
    n = g.num_nodes
    deg = torch.as_tensor(np.diff(undirected_adjacency(g.edge_index.numpy(), n).indptr))
    assert torch.unique(deg).numel() < n  # ties exist: the id order among them must be kept
    # a random relabelling (new node j is old node perm[j]), then, within every degree
    # class, the old nodes put back in increasing id order onto the class's new ids
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    for d in torch.unique(deg):
        slots = torch.nonzero(deg[perm] == d).flatten()  # new ids of this class, ascending
        perm[slots] = torch.sort(perm[slots]).values
    assert not torch.equal(perm, torch.arange(n))
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    h = Data(x=g.x[perm], edge_index=inv[g.edge_index], num_nodes=n)
    out_g, out_h = model(NodeTokenizer("degree")(g)), model(NodeTokenizer("degree")(h))
    torch.testing.assert_close(out_h, out_g[perm])


def test_missing_tokenization_names_the_transform():
    bare = Batch.from_data_list([Data(x=torch.randn(4, 3), edge_index=torch.tensor([[0], [1]]))])
    with pytest.raises(ValueError, match=r"KHopTokenizer"):
        GSM(3, 8, 1, tokenization="khop")(bare)
    with pytest.raises(ValueError, match=r"HACTokenizer"):
        GSMPlusPlus(3, 8, 1)(bare)
    with pytest.raises(ValueError, match="tokenization"):
        GSM(3, 8, 1, tokenization="metis")
    assert GSM(3, 8, 1, tokenization="dfs_leaves").tokenization == "hac_dfs"
    assert GSM(3, 8, 1, tokenization="ancestor_path").tokenization == "hac_bfs"


def test_stale_subgraph_tokens_are_named():
    """Tokens of a graph that lost nodes after tokenization: a ValueError naming the attribute,
    not a bare IndexError."""
    n = 10
    ei = torch.tensor([[i, (i + 1) % n] for i in range(n)] + [[0, 5], [2, 7]]).t()
    data = Data(x=torch.randn(n, 3), edge_index=ei, num_nodes=n)
    stale = RandomWalkTokenizer(2, 3)(KHopTokenizer(2)(data)).subgraph(torch.arange(6))
    for tokenization, attr in (("khop", "khop_index"), ("rw", "rw_index")):
        model = GSM(3, 8, 1, tokenization=tokenization, heads=2, level="node").eval()
        with pytest.raises(ValueError, match=rf"data.{attr} holds node ids outside \[0, 6\)"):
            model(stale)


def test_stale_random_walk_tokens_at_the_edges_of_the_range_are_named():
    """Ids equal to the node count, negative ids (h[-1] would read the last node silently),
    a node added after tokenization, and a khop_k that is not one k per graph: ValueErrors that
    name the attribute."""
    n = 10
    ei = torch.tensor([[i, (i + 1) % n] for i in range(n)] + [[0, 5], [2, 7]]).t()
    data = Data(x=torch.randn(n, 3), edge_index=ei, num_nodes=n)
    tok = RandomWalkTokenizer(2, 3)(KHopTokenizer(2)(data))
    rw = GSM(3, 8, 1, tokenization="rw", heads=2, level="node").eval()
    khop = GSM(3, 8, 1, tokenization="khop", heads=2, level="node").eval()
    last = tok.clone()  # node n - 1 removed, one walk still visits it: id == new node count
    last.x, last.num_nodes = last.x[: n - 1], n - 1
    last.edge_index = last.edge_index[:, (last.edge_index < n - 1).all(0)]
    last.rw_index = last.rw_index[:, : n - 1].clone()
    last.rw_index[0, 0] = n - 1
    with pytest.raises(ValueError, match=rf"data.rw_index holds node ids outside \[0, {n - 1}\)"):
        rw(last)
    negative = tok.clone()
    negative.rw_index = negative.rw_index.clone()
    negative.rw_index[1, 0] = -1
    with pytest.raises(ValueError, match=rf"data.rw_index holds node ids outside \[0, {n}\)"):
        rw(negative)
    grown = tok.clone()  # a node appended: the ids stay in range, the columns do not match
    grown.x, grown.num_nodes = torch.cat([grown.x, torch.randn(1, 3)]), n + 1
    with pytest.raises(ValueError, match=r"data.rw_index must have shape \[num_walks \* 4, 11\]"):
        rw(grown)
    two_k = tok.clone()
    two_k.khop_k = torch.tensor([2, 1])
    with pytest.raises(ValueError, match=r"data.khop_k must hold one k per graph \(1\), got 2"):
        khop(two_k)


def test_mot_router_keeps_top_k():
    router = MoTRouter(4, experts=3, k=2)
    h = torch.randn(10, 4)
    ys = [torch.randn(10, 4, requires_grad=True) for _ in range(3)]
    z, g = router(h, ys)
    assert z.shape == (10, 4)
    assert ((g > 0).sum(1) == 2).all()
    torch.testing.assert_close(g.sum(1), torch.ones(10))
    p = torch.softmax(router.router(h), -1)
    kept = torch.topk(p, 2, -1).indices
    assert torch.equal((g > 0), torch.zeros_like(g, dtype=torch.bool).scatter_(1, kept, True))
    z.sum().backward()
    assert router.router.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="k"):
        MoTRouter(4, experts=1, k=2)
    with pytest.raises(ValueError, match="expected 3"):
        router(h, ys[:2])


@pytest.mark.parametrize("level", ["node", "graph"])
def test_gsm_plus_plus(level):
    model = GSMPlusPlus(3, 8, 2, tokenizations=("hac_dfs", "hac_bfs", "khop", "rw"), heads=2,
                        level=level, hpe_levels=6)  # fmt: skip
    out, gates = model(BATCH, return_gates=True)
    assert out.shape == ((20, 2) if level == "node" else (5, 2))
    assert len(gates) == 2 and gates[0].shape == (20, 4)
    out.sum().backward()
    assert model.routers[0].router.weight.grad is not None
    model.eval()
    single = model(Batch.from_data_list([GRAPHS[0]]))
    expect = model(BATCH)[: 6 if level == "node" else 1]
    torch.testing.assert_close(single, expect, atol=1e-5, rtol=1e-4)
    assert "GSMPlusPlus(3, 8, 2" in repr(model)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tokenizations": ("hac_dfs",)}, "at least k"),
        ({"tokenizations": ("hac_dfs", "dfs")}, "distinct"),
        ({"level": "edge"}, "level"),
        ({"hidden": 0}, "hidden"),
    ],
)
def test_gsm_plus_plus_bad_arguments(kwargs, match):
    args = {"in_channels": 3, "hidden": 8, "out_channels": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GSMPlusPlus(**args)


@pytest.mark.parametrize(
    "model, kwargs, match",
    [
        (GSM, {"local": "gcn"}, "GSM: local"),
        (GSM, {"global_": "mamba"}, "GSM: global_"),
        (GSM, {"hidden": 6}, r"GSM: heads \(4\) must divide hidden \(6\)"),
        (GSMPlusPlus, {"hidden": 6}, r"GSMPlusPlus: heads \(4\) must divide hidden \(6\)"),
        (GSMPlusPlus, {"hidden": 6, "attention": False, "local": "gat"}, "local='gat'"),
    ],
)
def test_model_errors_name_the_model_argument(model, kwargs, match):
    """Not a sub-layer's (LocalEncoder's conv, AttentionLayer's channels)."""
    args = {"in_channels": 3, "hidden": 8, "out_channels": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        model(**args)
    if model is GSM and "hidden" in kwargs:  # scans alone do not split the width by heads
        GSM(3, 6, 2, global_="ssm")
    if model is GSMPlusPlus and kwargs == {"hidden": 6}:
        GSMPlusPlus(3, 6, 2, attention=False)


def test_missing_hac_tree_names_the_hierarchical_pe():
    from graphseq.nn.gsm import NodeTokenizer

    d = NodeTokenizer("bfs")(
        Data(x=torch.randn(4, 3), edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]))
    )
    with pytest.raises(ValueError, match=r"GSM: hpe=True reads the HAC tree \(data.hac_child"):
        GSM(3, 16, 2, tokenization="bfs", hpe=True)(d)
    with pytest.raises(ValueError, match=r"GSMPlusPlus: the hierarchical PE .*HACTokenizer"):
        GSMPlusPlus(3, 16, 2, tokenizations=("bfs", "degree"))(d)


@pytest.mark.parametrize("tokenization", ["khop"])
def test_token_sizes_let_subgraph_tokens_see_degree(tokenization):
    # a star: equal features everywhere, so mean-pooled tokens alone cannot tell centre from leaf
    star = Data(x=torch.ones(5, 3), edge_index=torch.tensor([[0, 0, 0, 0], [1, 2, 3, 4]]))
    batch = Batch.from_data_list([TRANSFORM(star)])
    outs = {}
    for sizes in (False, True):
        torch.manual_seed(0)
        model = GSM(3, 8, 2, tokenization=tokenization, local="none", global_="ssm", level="node",
                    token_sizes=sizes).eval()  # fmt: skip
        outs[sizes] = model(batch)
    assert torch.allclose(outs[False][0], outs[False][1])  # centre == leaf without sizes
    assert not torch.allclose(outs[True][0], outs[True][1], atol=1e-4)


# --------------------------------------------------------------------------------------------
# HAC ancestor-path tokens: against a per-node loop; GSM++'s local / global-width options


def _hac_bfs_loop(batch, h):
    """Per node: the mean of h over each of its real HAC clusters, coarse to fine, then h_v."""
    tokens, sizes = [], []
    for g, data in enumerate(batch.to_data_list()):
        start = int(batch.ptr[g])
        depth, L = int(data.hac_depth), data.hac_path.size(1)
        for v in range(data.num_nodes):
            for col in range(L - depth, L):
                members = (data.hac_path[:, col] == data.hac_path[v, col]).nonzero().view(-1)
                tokens.append(h[start + members].mean(0))
                sizes.append(float(members.numel()))
            tokens.append(h[start + v])
            sizes.append(1.0)
    return torch.stack(tokens), torch.tensor(sizes, dtype=h.dtype)


@pytest.mark.parametrize("graphs", [GRAPHS, GRAPHS[3:4]], ids=["depths-differ", "one-graph"])
def test_hac_bfs_tokens_match_a_loop(graphs):
    batch = Batch.from_data_list(graphs)
    h = torch.randn(batch.num_nodes, 4, dtype=torch.float64)
    tokens, cu, size = subgraph_tokens(batch, "hac_bfs", h)
    ref_tokens, ref_size = _hac_bfs_loop(batch, h)
    torch.testing.assert_close(tokens, ref_tokens)
    torch.testing.assert_close(size, ref_size)
    depth = torch.cat([d.hac_depth.expand(d.num_nodes) for d in graphs])
    assert torch.equal(cu[1:] - cu[:-1], depth + 1)
    assert torch.equal(tokens[cu[1:] - 1], h)  # each node's last token is itself


def test_mot_router_narrow_experts():
    router = MoTRouter(8, experts=3, k=2, expert_channels=4)
    z, g = router(torch.randn(5, 8), [torch.randn(5, 4) for _ in range(3)])
    assert z.shape == (5, 8) and g.shape == (5, 3)
    assert repr(router) == "MoTRouter(8, experts=3, k=2, expert_channels=4)"
    with pytest.raises(ValueError, match="expert_channels"):
        MoTRouter(8, experts=3, expert_channels=0)


@pytest.mark.parametrize("local", ["sage", "gat"])
def test_gsm_plus_plus_local_stack_and_narrow_global(local):
    torch.manual_seed(0)
    model = GSMPlusPlus(3, 8, 2, heads=2, level="node", hpe_levels=6, local=local,
                        local_layers=2, global_hidden=4, attention=False)  # fmt: skip
    assert len(model.locals[0]) == 2 and model.locals[0][0].prenorm
    assert model.scans[0][0].channels == 4 and model.global_in[0].out_features == 4
    out = model(BATCH)
    assert out.shape == (20, 2) and torch.isfinite(out).all()
    # the global residual starts at zero: the output is the local stack's (+ FFN, norm, head),
    # and the HPE (width global_hidden) enters only through it
    assert all(r.out.weight.abs().sum() == 0 for r in model.routers)
    assert model.pe.channels == 4
    moved = BATCH.clone()
    moved.hac_child = torch.zeros_like(moved.hac_child)
    torch.manual_seed(2)
    first = model(moved)
    torch.manual_seed(2)
    torch.testing.assert_close(first, model(BATCH))
    out.sum().backward()
    assert model.routers[0].out.weight.grad.abs().sum() > 0
    for r in model.routers:  # once the router's output map is non-zero, the scans learn too
        torch.nn.init.normal_(r.out.weight)
    model.zero_grad()
    model(BATCH).sum().backward()
    for p in (model.global_in[0].weight, model.scans[1][1].mixers[0].norm.weight,
              model.locals[1][1].conv.lin_l.weight if local == "sage"
              else model.locals[1][1].root.weight):  # fmt: skip
        assert p.grad is not None and p.grad.abs().sum() > 0
    model.eval()  # one graph alone == the same graph inside the batch
    start = 0
    full = model(BATCH)
    for g in GRAPHS:
        alone = model(Batch.from_data_list([g]))
        torch.testing.assert_close(alone, full[start : start + g.num_nodes], atol=1e-5, rtol=1e-4)
        start += g.num_nodes
    for p in model.parameters():
        p.data.add_(1.0)
    perturbed = [p.detach().clone() for p in model.parameters()]
    model.reset_parameters()  # reaches the new modules: the local stack and the down-projection
    changed = [not torch.equal(a, b) for a, b in zip(perturbed, model.parameters(), strict=True)]
    assert all(changed)
    assert f"local='{local}', local_layers=2" in repr(model)


def test_gsm_plus_plus_defaults_keep_the_published_layout():
    model = GSMPlusPlus(3, 8, 2, heads=2, hpe_levels=6)
    assert model.global_in is None and model.global_hidden == 8
    assert model.locals[0].conv_type == "gatedgcn" and not model.locals[0].prenorm
    assert model.scans[0][0].mixers[0].dropout == 0.0


@pytest.mark.parametrize("local", ["gatedgcn", "gine"])
def test_gsm_plus_plus_local_norm_sum(local):
    torch.manual_seed(0)
    model = GSMPlusPlus(3, 8, 2, heads=2, level="node", hpe_levels=6, local=local,
                        local_layers=2, local_norm_sum=True)  # fmt: skip
    layers = [layer for block in model.locals for layer in block]
    assert len(layers) == 4 and all(layer.norm_sum and not layer.prenorm for layer in layers)
    out = model(BATCH)
    assert out.shape == (20, 2) and torch.isfinite(out).all()
    out.sum().backward()
    for layer in layers:
        assert layer.norm.weight.grad.abs().sum() > 0
        assert all(p.grad is not None for p in layer.conv.parameters())
    model.eval()  # one graph alone == the same graph inside the batch
    start, full = 0, model(BATCH)
    for g in GRAPHS:
        alone = model(Batch.from_data_list([g]))
        torch.testing.assert_close(alone, full[start : start + g.num_nodes], atol=1e-5, rtol=1e-4)
        start += g.num_nodes
    assert "local_norm_sum=True" in repr(model)
    assert "norm_sum" not in repr(GSMPlusPlus(3, 8, 2, heads=2, hpe_levels=6))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"local": "gcn"}, "local"),
        ({"local": "sage", "local_norm_sum": True}, "local_norm_sum"),
        ({"local_layers": 0}, "local_layers"),
        ({"global_dropout": 1.0}, "global_dropout"),
        ({"global_hidden": 0}, "global_hidden"),
    ],
)
def test_gsm_plus_plus_bad_local_and_global_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GSMPlusPlus(3, 8, 2, **kwargs)


def _with_pe(graphs, dim=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for g in graphs:
        g = g.clone()
        g.lap_pe = torch.randn(g.num_nodes, dim, generator=gen)
        out.append(g)
    return out


def test_gsm_positional_encoding_is_read_added_and_sign_flipped_only_in_training():
    graphs = _with_pe(GRAPHS)
    batch = Batch.from_data_list(graphs)
    kwargs = dict(tokenization="random", global_="ssm", local="none", heads=2, level="node")
    torch.manual_seed(0)
    model = GSM(3, 8, 2, pe="lap_pe", pe_dim=3, pe_sign_flip=True, **kwargs).eval()
    torch.manual_seed(0)
    plain = GSM(3, 8, 2, **kwargs).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "pe_proj" not in k})
    # h0 = W x + W_pe pe: zeroing the PE map gives the model without PE
    with torch.no_grad():
        model.pe_proj.weight.zero_()
        model.pe_proj.bias.zero_()
    torch.testing.assert_close(model(batch), plain(batch))
    model.reset_parameters()
    out = model(batch)
    assert not torch.allclose(out, plain(batch))
    # evaluation reads the PE as it is (no flip): h0 = W x + W_pe pe exactly
    torch.testing.assert_close(
        model._embed(batch, batch.x), model.encoder(batch.x) + model.pe_proj(batch.lap_pe)
    )
    batch2 = batch.clone()
    batch2.lap_pe = batch.lap_pe.clone()
    batch2.lap_pe[0] += 1.0
    assert not torch.allclose(model(batch2)[0], out[0])
    # training flips the sign of whole PE columns: every embedding is one of the 2^3 choices,
    # and over 20 batches not always the unflipped one
    model.train()
    pe = batch.lap_pe
    base = model.encoder(batch.x)
    signs = torch.tensor([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)]).float()
    options = [base + model.pe_proj(pe * s) for s in signs]
    seen = set()
    for _ in range(20):
        emb = model._embed(batch, batch.x)
        hits = [i for i, o in enumerate(options) if torch.allclose(emb, o)]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) > 1
    assert "pe='lap_pe'" in repr(model)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pe": "lap_pe"}, "pe_dim"),
        ({"pe": "lap_pe", "pe_dim": 0}, "pe_dim"),
        ({"pe_dim": 3}, "without pe"),
        ({"pe_sign_flip": True}, "without pe"),
        ({"pe": "", "pe_dim": 3}, "pe must be"),
    ],
)
def test_gsm_positional_encoding_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GSM(3, 8, 2, **kwargs)


def test_gsm_positional_encoding_bad_input():
    model = GSM(3, 8, 2, tokenization="random", local="none", pe="lap_pe", pe_dim=3)
    with pytest.raises(ValueError, match="no such attribute"):
        model(BATCH)
    batch = Batch.from_data_list(_with_pe(GRAPHS, dim=2))
    with pytest.raises(ValueError, match=r"lap_pe must have shape \(20, 3\)"):
        model(batch)


@pytest.mark.parametrize("local", ["gatedgcn", "sage"])
def test_gsm_plus_plus_reads_a_node_positional_encoding(local):
    """GSM++'s ``pe``: h0 gains W_pe pe (zeroing the map gives the model without it), the
    output moves with the PE, signs flip only in training, and bad input names the attribute."""
    batch = Batch.from_data_list(_with_pe(GRAPHS))
    kwargs = dict(heads=2, level="node", hpe_levels=6, local=local)
    torch.manual_seed(0)
    model = GSMPlusPlus(3, 8, 2, pe="lap_pe", pe_dim=3, pe_sign_flip=True, **kwargs).eval()
    plain = GSMPlusPlus(3, 8, 2, **kwargs).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "pe_proj" not in k})
    out = model(batch)
    assert not torch.allclose(out, plain(batch))
    with torch.no_grad():
        model.pe_proj.weight.zero_()
        model.pe_proj.bias.zero_()
    torch.testing.assert_close(model(batch), plain(batch))
    model.reset_parameters()
    moved = batch.clone()
    moved.lap_pe = batch.lap_pe.clone()
    moved.lap_pe[0] += 1.0
    assert not torch.allclose(model(moved)[0], model(batch)[0])
    # evaluation is deterministic (no flips); training draws column signs
    torch.testing.assert_close(model(batch), model(batch))
    model.train()
    torch.manual_seed(1)
    flips = [model._node_pe(batch, 20) for _ in range(10)]
    assert any(not torch.equal(f, batch.lap_pe) for f in flips)
    assert all(torch.equal(f.abs(), batch.lap_pe.abs()) for f in flips)
    assert "pe='lap_pe', pe_dim=3, pe_sign_flip=True" in repr(model)
    with pytest.raises(ValueError, match="GSMPlusPlus: pe='lap_pe' but the input has no such"):
        model(BATCH)
    with pytest.raises(ValueError, match=r"GSMPlusPlus: lap_pe must have shape \(20, 3\)"):
        model(Batch.from_data_list(_with_pe(GRAPHS, dim=2)))
    for bad, match in (({"pe": "lap_pe"}, "pe_dim"), ({"pe_dim": 3}, "without pe")):
        with pytest.raises(ValueError, match=match):
            GSMPlusPlus(3, 8, 2, **bad)


@pytest.mark.parametrize("kwargs", [{}, {"local": "gine"}], ids=["gatedgcn", "gine"])
@pytest.mark.parametrize("cls", [GSM, GSMPlusPlus])
def test_trains_on_a_batch_of_one_node(cls, kwargs):
    """A training step on one one-node graph (batch norm in the local encoder) runs, uses
    the running statistics and leaves them unchanged."""
    model = cls(3, 8, 2, heads=2, hpe_levels=6, **kwargs).train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms
    before = [n.running_mean.clone() for n in norms]
    out = model(Batch.from_data_list([GRAPHS[1]]))
    assert out.shape == (1, 2) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.equal(n.running_mean, b) for n, b in zip(norms, before, strict=True))


def test_input_dtype_and_width_are_named():
    model = GSM(3, 8, 2, heads=2, hpe_levels=6)
    g = GRAPHS[0]
    with pytest.raises(ValueError, match=r"GSM: x has dtype torch\.float64 but the layer"):
        model(Batch.from_data_list([g.clone().update({"x": g.x.double()})]))
    with pytest.raises(ValueError, match=r"in_channels = 3\], got \(6, 2\)"):
        model(Batch.from_data_list([g.clone().update({"x": g.x[:, :2]})]))
    # integer features are converted to the model's dtype, as before
    model.double()
    out = model(Batch.from_data_list([g.clone().update({"x": g.x.long()})]))
    assert out.dtype == torch.float64


def test_router_ties_go_to_the_lower_expert():
    for experts in (3, 4, 8):
        router = MoTRouter(4, experts, k=2)
        torch.nn.init.zeros_(router.router.weight)
        torch.nn.init.zeros_(router.router.bias)
        _, g = router(torch.randn(5, 4), [torch.randn(5, 4) for _ in range(experts)])
        assert torch.equal(torch.nonzero(g[0]).flatten(), torch.tensor([0, 1]))


def test_gsm_plus_plus_and_tokenizer_arguments_are_named():
    with pytest.raises(TypeError, match="GSMPlusPlus: k must be an int"):
        GSMPlusPlus(3, 8, 1, k="2")
    with pytest.raises(TypeError, match="tokenizations must be a sequence of names"):
        GSMPlusPlus(3, 8, 1, tokenizations="khop", k=1)
    with pytest.raises(ValueError, match="GSMPlusPlus: heads must be"):
        GSMPlusPlus(3, 8, 1, heads=0)
    for bad in ("a", -1, 1.5):
        with pytest.raises(ValueError, match="NodeTokenizer: seed must be None or"):
            NodeTokenizer("random", seed=bad)
        with pytest.raises(ValueError, match="RandomWalkTokenizer: seed must be None or"):
            RandomWalkTokenizer(seed=bad)
    assert NodeTokenizer("random", seed=np.int64(3)).seed == 3
    model = GSMPlusPlus(3, 8, 1, heads=2, scan_layers=3, hpe_levels=5, dropout=0.1)
    assert (model.heads, model.scan_layers, model.hpe_levels, model.dropout) == (2, 3, 5, 0.1)
    gsm = GSM(3, 8, 1, heads=2, seq_layers=3, level="node")
    assert (gsm.heads, gsm.seq_layers) == (2, 3)
    assert "seq_layers=3, level='node'" in repr(gsm)


def test_hac_bfs_aliases():
    """The paper's HAC(BFS) is 'hac_bfs' (aliases 'ancestor_path', 'bfs_hac'); the bare
    'bfs' is NodeTokenizer's breadth-first order, as the docstrings say."""
    for name in ("hac_bfs", "ancestor_path", "bfs_hac"):
        assert GSM(3, 8, 1, tokenization=name).tokenization == "hac_bfs"
    assert GSM(3, 8, 1, tokenization="bfs").tokenization == "bfs"


def test_gsm_gat_local_uses_the_model_heads():
    """GSM(local='gat') builds its GAT layers with GSM's heads, and a width those heads do not
    divide is refused naming GSM's arguments (not LocalEncoder's default of 4 heads)."""
    model = GSM(3, 8, 2, heads=2, local="gat")
    assert all(local.conv.heads == 2 for local in model.locals)
    assert GSM(3, 6, 2, heads=3, local="gat").locals[0].conv.heads == 3
    with pytest.raises(ValueError, match=r"GSM: heads \(4\) must divide hidden \(6\) for local="):
        GSM(3, 6, 2, global_="ssm", local="gat")
    out = GSM(3, 6, 2, heads=3, local="gat", level="node").eval()(BATCH)
    assert out.shape == (20, 2) and torch.isfinite(out).all()


def test_hpe_levels_mismatch_names_hpe_levels():
    """A model whose hpe_levels differs from the HACTokenizer's levels says so in its own
    terms, not in those of its HierarchicalPE sub-layer."""
    g = Batch.from_data_list([GRAPHS[0]])  # tokenized with HACTokenizer(levels=6)
    for model in (GSM(3, 8, 2, heads=2, hpe=True), GSMPlusPlus(3, 8, 2, heads=2)):
        name = type(model).__name__
        with pytest.raises(ValueError, match=rf"{name}: .* 6 levels but hpe_levels=16"):
            model(g)


@pytest.mark.parametrize("local", ["gatedgcn", "sage"])
def test_graph_without_edge_index_is_edgeless(local):
    """The tokenizers read a graph without edge_index as one without edges; so do the models."""
    x = torch.randn(3, 3)
    bare, empty = Data(x=x), Data(x=x, edge_index=torch.zeros(2, 0, dtype=torch.long))
    torch.manual_seed(0)
    model = GSMPlusPlus(3, 8, 2, heads=2, hpe_levels=6, local=local, level="node").eval()
    gsm = GSM(3, 8, 2, heads=2, tokenization="khop", level="node").eval()
    for m in (model, gsm):
        a, b = (m(Batch.from_data_list([TRANSFORM(d)])) for d in (bare, empty))
        torch.testing.assert_close(a, b)


def test_sparse_adjacency_without_edge_index_is_refused():
    """After T.ToSparseTensor the edges live in adj_t; the models must not run as if the graph
    had none."""
    ei = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    data = TRANSFORM(Data(x=torch.randn(4, 3), edge_index=torch.cat([ei, ei.flip(0)], 1)))
    sparse = Batch.from_data_list([T.ToSparseTensor()(data.clone())])
    models = (
        GSM(3, 8, 2, heads=2, tokenization="khop"),
        GSMPlusPlus(3, 8, 2, heads=2, hpe_levels=6),
    )
    for m in models:
        with pytest.raises(ValueError, match="adj_t"):
            m.eval()(sparse)
    kept = Batch.from_data_list([T.ToSparseTensor(remove_edge_index=False)(data.clone())])
    assert GSM(3, 8, 2, heads=2, tokenization="khop").eval()(kept).shape == (1, 2)


@pytest.mark.parametrize("tokenization", TOKENIZATIONS)
def test_gsm_every_parameter_gets_a_gradient(tokenization):
    # an unused parameter (size_proj under a node tokenization) stops DDP at its second step
    model = GSM(3, 8, 2, tokenization=tokenization, heads=2, hpe=True, hpe_levels=6)
    model(BATCH).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_gsm_plus_plus_node_tokenizations_every_parameter_gets_a_gradient():
    model = GSMPlusPlus(3, 8, 2, tokenizations=("hac_dfs", "degree"), heads=2, hpe_levels=6)
    model(BATCH).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_gsm_state_dict_with_the_unused_size_proj_still_loads_strictly():
    torch.manual_seed(0)
    old = GSM(3, 8, 2, heads=2).eval()
    state = old.state_dict()
    state["size_proj.weight"], state["size_proj.bias"] = torch.zeros(8, 1), torch.zeros(8)
    new = GSM(3, 8, 2, heads=2).eval()
    new.load_state_dict(state)  # strict
    torch.testing.assert_close(new(BATCH), old(BATCH))


def test_khop_tokens_are_balls_coarse_to_fine():
    """Node v's k-hop tokens are the means of h over N_k(v), ..., N_1(v), then h_v itself,
    with the ball sizes; on the path 0-1-2-3-4 with k = 2 and h = node id."""
    path = Data(edge_index=torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]), num_nodes=5)
    batch = Batch.from_data_list([KHopTokenizer(2)(path)])
    h = torch.arange(5.0, dtype=torch.float64).unsqueeze(1)
    tokens, cu, size = subgraph_tokens(batch, "khop", h)
    assert torch.equal(cu, torch.arange(6) * 3)
    want, want_size = [], []
    for v in range(5):
        for radius in (2, 1, 0):
            ball = [u for u in range(5) if abs(u - v) <= radius]
            want.append(sum(ball) / len(ball))
            want_size.append(float(len(ball)))
    torch.testing.assert_close(tokens[:, 0], torch.tensor(want, dtype=torch.float64))
    torch.testing.assert_close(size, torch.tensor(want_size, dtype=torch.float64))


def test_khop_batch_mixing_k_is_per_graph():
    """A graph tokenized with k = 1 gives the same outputs beside a k = 2 graph as alone (its
    nodes get k + 1 = 2 tokens, not the batch's largest k + 1)."""
    gen = torch.Generator().manual_seed(0)

    def graph(n, k):
        ei = torch.randint(0, n, (2, 2 * n), generator=gen)
        x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
        return KHopTokenizer(k)(HACTokenizer(levels=6)(Data(x=x, edge_index=ei, num_nodes=n)))

    a, b = graph(7, 1), graph(8, 2)
    batch = Batch.from_data_list([a, b])
    h = torch.randn(15, 2, dtype=torch.float64)
    _, cu, _ = subgraph_tokens(batch, "khop", h)
    assert (cu.diff() == torch.tensor([2] * 7 + [3] * 8)).all()
    for model in (
        GSM(3, 8, 2, tokenization="khop", local="gine", heads=2, level="node"),
        GSMPlusPlus(3, 8, 2, heads=2, level="node", hpe_levels=6, local="gine"),
    ):
        model = model.double().eval()
        out = model(batch)
        torch.testing.assert_close(out[:7], model(Batch.from_data_list([a])))
        torch.testing.assert_close(out[7:], model(Batch.from_data_list([b])))


def test_random_walk_tokens_are_longest_walk_first_node_last():
    """Token t of node v is the mean over walks of the mean of h over steps 0..t, listed from
    the longest prefix (size L + 1) down to the node itself (size 1)."""
    g = Data(edge_index=torch.tensor([[0, 1, 1], [1, 2, 3]]), num_nodes=4)
    W, L = 3, 4
    data = RandomWalkTokenizer(num_walks=W, walk_length=L, seed=0)(g)
    batch = Batch.from_data_list([data])
    h = torch.randn(4, 2, dtype=torch.float64)
    tokens, cu, size = subgraph_tokens(batch, "rw", h)
    walks = data.rw_index.view(W, L + 1, 4)
    want = []
    for v in range(4):
        for t in range(L, -1, -1):
            want.append(torch.stack([h[walks[w, : t + 1, v]].mean(0) for w in range(W)]).mean(0))
    torch.testing.assert_close(tokens, torch.stack(want))
    torch.testing.assert_close(size, torch.arange(L + 1, 0, -1, dtype=torch.float64).repeat(4))
    torch.testing.assert_close(tokens[cu[1:] - 1], h)  # the node itself, last


def test_random_walk_batch_mixing_walk_lengths_is_refused():
    """rw_index of (num_walks=2, walk_length=4) and (1, 9) graphs both have 10 rows and collate;
    the model must not re-cut the first graph's two 5-step walks into one 10-step walk."""
    gen = torch.Generator().manual_seed(0)

    def graph(n, W, L):
        ei = torch.randint(0, n, (2, 2 * n), generator=gen)
        data = Data(x=torch.randn(n, 3, generator=gen), edge_index=ei, num_nodes=n)
        return RandomWalkTokenizer(W, L)(data)

    batch = Batch.from_data_list([graph(7, 2, 4), graph(8, 1, 9)])
    model = GSM(3, 8, 2, tokenization="rw", local="gine", heads=2, level="node").eval()
    with pytest.raises(ValueError, match="walk lengths"):
        model(batch)
    same = Batch.from_data_list([graph(7, 2, 4), graph(8, 2, 4)])
    assert model(same).shape == (15, 2)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (GSM, dict(heads=2, edge_dim=3, hpe=True, hpe_levels=8, pool="sum", dropout=0.5,
                   token_sizes=False, tokenization="khop")),
        (GSMPlusPlus, dict(scan_layers=1, heads=2, edge_dim=3, hpe_levels=8, attention=False,
                           pool="sum", dropout=0.5, attn_dropout=0.5, token_sizes=False,
                           global_dropout=0.25, global_hidden=4)),
    ],
)  # fmt: skip
def test_repr_round_trips(cls, kwargs):
    """Every argument that changes the parameters or the outputs shows in the repr when it is
    not the default, and the repr rebuilds an equivalent model."""
    default = repr(
        cls(4, 8, 2, **{k: v for k, v in kwargs.items() if k in ("heads", "hpe_levels")})
    )
    for name, value in kwargs.items():
        if name in ("heads", "hpe_levels"):
            continue
        base = {k: v for k, v in kwargs.items() if k in ("heads", "hpe_levels")}
        assert repr(cls(4, 8, 2, **base, **{name: value})) != default, name
    torch.manual_seed(0)
    model = cls(4, 8, 2, **kwargs)
    rebuilt = eval(repr(model), {cls.__name__: cls})
    rebuilt.load_state_dict(model.state_dict())  # strict: the same parameters
    assert repr(rebuilt) == repr(model)
    for name in kwargs:
        assert getattr(rebuilt, name) == getattr(model, name), name


def test_mot_router_output_is_the_gated_concatenation():
    torch.manual_seed(0)
    router = MoTRouter(4, experts=3, k=2)
    h, ys = torch.randn(6, 4), [torch.randn(6, 4) for _ in range(3)]
    z, g = router(h, ys)
    ref = router.out(torch.cat([g[:, t : t + 1] * y for t, y in enumerate(ys)], -1))
    torch.testing.assert_close(z, ref)
    # an expert the router did not keep for a node does not reach that node's output
    moved = [y + 100.0 * (g[:, t : t + 1] == 0) for t, y in enumerate(ys)]
    torch.testing.assert_close(router(h, moved)[0], z)


@pytest.mark.parametrize("local", ["sage", "gat"])
def test_gsm_plus_plus_baseline_local_feeds_the_hpe_to_the_scans(local):
    """With local='sage'/'gat' the hierarchical PE is added to the scan encoders' input: once
    the router's output map is non-zero, the output depends on the HAC tree and the PE learns."""
    torch.manual_seed(0)
    model = GSMPlusPlus(3, 8, 2, heads=2, level="node", hpe_levels=6, local=local,
                        attention=False).eval()  # fmt: skip
    for r in model.routers:
        torch.nn.init.normal_(r.out.weight)
    moved = BATCH.clone()
    moved.hac_child = torch.zeros_like(moved.hac_child)
    with torch.no_grad():
        assert not torch.allclose(model(BATCH), model(moved))
    model(BATCH).sum().backward()
    assert model.pe.child.weight.grad is not None and model.pe.child.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("which", ["gsm", "gsm++"])
def test_unsorted_batch_vector_is_refused(which):
    """A Data carrying an interleaved batch vector (no ptr) is refused: the node sequences and
    the attention read graph g as rows ptr[g]:ptr[g + 1], so its graphs were mixed silently."""
    torch.manual_seed(0)
    model = (
        GSM(3, 8, 2, tokenization="none", heads=2, hpe_levels=6)
        if which == "gsm"
        else GSMPlusPlus(3, 8, 2, tokenizations=("hac_dfs", "hac_bfs"), heads=2, hpe_levels=6)
    ).eval()
    b = Batch.from_data_list([GRAPHS[0], GRAPHS[4]])
    n0 = GRAPHS[0].num_nodes
    perm = torch.tensor([0, n0, 1, n0 + 1, *range(2, n0), *range(n0 + 2, b.num_nodes)])
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    d = Data(x=b.x[perm], edge_index=inv[b.edge_index], batch=b.batch[perm])
    for k in ("hac_rank", "hac_path", "hac_child", "hac_size"):
        d[k] = b[k][perm]
    d.hac_num_clusters, d.hac_depth = b.hac_num_clusters, b.hac_depth
    with pytest.raises(ValueError, match="batch must be sorted"):
        model(d)
    # the same nodes in graph order (a Data without ptr) still run
    plain = Data(x=b.x, edge_index=b.edge_index, batch=b.batch)
    for k in ("hac_rank", "hac_path", "hac_child", "hac_size", "hac_num_clusters", "hac_depth"):
        plain[k] = b[k]
    with torch.no_grad():
        torch.testing.assert_close(model(plain), model(b))
