"""PLSTMGraph's bucketed "paths" algorithm: graphs grouped by size (GraphLayout), exactness
against the loop reference on batches mixing sizes, gradients, batching invariance, the
per-graph routing of "auto", chunked buckets, the lazily built layout, NaN spread, bad input.

The bucketed PyTorch form runs on GPUs and on CPUs without a C compiler; on CPU the layer
otherwise runs the compiled kernel (test_graph_native.py), so every test here switches it off.
"""

from __future__ import annotations

import math

import pytest
import torch

import graphseq.nn.plstm.graph as graph_module
from graphseq.nn.plstm.graph import (
    PATH_FORM_MAX_EDGES,
    PATH_FORM_MAX_NODES,
    PLSTMGraph,
    plstm_graph_reference,
    prepare_dag,
)
from graphseq.testing import DEVICE, mixed_batch, tree_with_chords


@pytest.fixture(autouse=True)
def _bucketed_path_form(monkeypatch):
    monkeypatch.setattr(graph_module, "NATIVE_PATHS", False)


# a 2-node graph, a 40-node graph, an isolated node, a graph with no edges, and others
SIZES = [2, 40, 1, -3, 7, 12, 5, 40, 9]


def layer(mode: str, edge_dim=None, **kw) -> PLSTMGraph:
    torch.manual_seed(1)
    conv = PLSTMGraph(6, 8, heads=2, mode=mode, edge_dim=edge_dim, gate_weight_std=0.7, **kw)
    with torch.no_grad():  # gates far from their constant init, so that they matter
        for name in ("source", "mark", "direct", "transition"):
            getattr(conv, name).bias.normal_(0.0, 1.0)
    return conv.double().to(DEVICE)


@pytest.mark.parametrize("overhead", [0.0, 4096.0, math.inf])
@pytest.mark.parametrize("mode", ["P", "D"])
def test_bucketed_paths_equal_loop_reference(mode, overhead):
    gen = torch.Generator().manual_seed(0)
    b, _ = mixed_batch(SIZES, gen)
    conv = layer(mode, 3)
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    ea = torch.randn(b.num_edges, 3, generator=gen, dtype=torch.float64).to(DEVICE)
    st = prepare_dag(b.edge_index, b.num_nodes, mode=mode, batch=b.batch, bucket_overhead=overhead)
    gates = conv.gates(x, st, ea)
    ref = plstm_graph_reference(*gates, st.edge_index, st.lg_edge_index)
    for algorithm in ("paths", "auto", "states"):
        h = conv.recurrence(*gates, st, algorithm=algorithm)
        assert (h - ref).abs().max().item() <= 1e-12, algorithm
    buckets = st.layout("paths").buckets
    if overhead == 0.0:  # one bucket per distinct node count
        assert len(buckets) == len({abs(n) for n in SIZES})
    if overhead == math.inf:
        assert len(buckets) == 1 and buckets[0].width == 40
    # the layer itself, with and without the structure
    torch.testing.assert_close(
        conv(x, b.edge_index, b.batch, edge_attr=ea, structure=st),
        conv.out_proj(conv.norm(ref).flatten(-2)),
        atol=1e-12,
        rtol=1e-10,
    )


def test_layout_covers_every_graph_once_with_triangular_blocks():
    gen = torch.Generator().manual_seed(1)
    b, _ = mixed_batch([*SIZES, 3, 3, 20], gen)
    st = prepare_dag(b.edge_index, b.num_nodes, batch=b.batch, bucket_overhead=500.0)
    layout = st.layout("paths")
    assert 1 < len(layout.buckets) < len(set(SIZES))
    assert layout.large is None
    assert st.layout("auto") is layout  # every graph is small: one layout for both
    assert sorted(layout.node.tolist()) == list(range(b.num_nodes))
    assert sorted(layout.edge.tolist()) == list(range(st.num_edges))
    assert sorted(layout.lg.tolist()) == list(range(st.lg_edge_index.shape[1]))
    assert torch.equal(layout.graph_sizes, torch.bincount(b.batch))
    widths = [bk.width for bk in layout.buckets]
    assert widths == sorted(widths) and widths[-1] == 40
    assert sum(bk.num_graphs for bk in layout.buckets) == len(SIZES) + 3
    for bk in layout.buckets:
        F = bk.edge_width
        if F == 0:
            continue
        # line-graph edge e' -> e: slot(e) > slot(e'), A is strictly lower triangular
        slot_src, slot_dst = (bk.lg_slot // F) % F, bk.lg_slot % F
        assert (slot_dst > slot_src).all()
        assert bk.lg_slot.unique().numel() == bk.lg_slot.numel()
        assert bk.node_slot.unique().numel() == bk.node_slot.numel()
        # entries grouped by graph slot, so that a bucket can run in chunks of graphs
        W = bk.width
        for slot, size in ((bk.node_slot, W), (bk.source_slot, W * F), (bk.lg_slot, F * F)):
            assert ((slot // size).diff() >= 0).all()


@pytest.mark.parametrize("mode", ["P", "D"])
def test_gradcheck_on_a_batch_mixing_graph_sizes(mode):
    gen = torch.Generator().manual_seed(2)
    b, _ = mixed_batch([2, 40, 1, -3, 6], gen, chords=2)
    conv = layer(mode, 2, algorithm="paths")
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    ea = torch.randn(b.num_edges, 2, generator=gen, dtype=torch.float64).to(DEVICE)
    st = prepare_dag(b.edge_index, b.num_nodes, mode=mode, batch=b.batch, bucket_overhead=0.0)
    assert len(st.layout("paths").buckets) == 5
    x.requires_grad_()
    ea.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, e: conv(a, b.edge_index, b.batch, edge_attr=e, structure=st),
        (x, ea),
        fast_mode=True,
    )
    # and the gradients of every parameter equal those through the loop reference
    dy = torch.randn(b.num_nodes, 2, 4, generator=gen, dtype=torch.float64).to(DEVICE)
    grads = []
    for fast in (True, False):
        conv.zero_grad()
        xr = x.detach().clone().requires_grad_()
        gates = conv.gates(xr, st, ea.detach())
        if fast:
            h = conv.recurrence(*gates, st, algorithm="paths")
        else:
            h = plstm_graph_reference(*gates, st.edge_index, st.lg_edge_index)
        (h * dy).sum().backward()
        grads.append([xr.grad] + [p.grad.clone() for p in conv.parameters() if p.grad is not None])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("mode", ["P", "D"])
def test_a_graph_alone_equals_the_graph_in_a_mixed_batch(mode):
    gen = torch.Generator().manual_seed(3)
    b, graphs = mixed_batch(SIZES, gen)
    conv = layer(mode, algorithm="paths")
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    out = conv(x, b.edge_index, b.batch)
    for i, g in enumerate(graphs):
        lo, hi = int(b.ptr[i]), int(b.ptr[i + 1])
        alone = conv(x[lo:hi], g.edge_index.to(DEVICE))
        torch.testing.assert_close(out[lo:hi], alone, atol=1e-12, rtol=1e-10)


class RouteSpy:
    """Records what each algorithm ran: the DAG edge count of every state-form call and the
    width of every path-form block."""

    def __init__(self, monkeypatch):
        self.state_edges, self.widths = [], []
        states, blocks = graph_module._state_form, graph_module._bucket_outputs

        def spy_states(*args):
            self.state_edges.append(args[7].shape[1])  # the DAG edges it scans
            return states(*args)

        def spy_blocks(*args):
            self.widths.append(args[7].width)  # the bucket
            return blocks(*args)

        monkeypatch.setattr(graph_module, "_state_form", spy_states)
        monkeypatch.setattr(graph_module, "_bucket_outputs", spy_blocks)

    def run(self, conv, gates, st, algorithm):
        self.state_edges, self.widths = [], []
        return conv.recurrence(*gates, st, algorithm=algorithm)


def check_routes(monkeypatch, sizes_or_batch, big_graph, chords=4):
    """``auto`` runs graph ``big_graph`` (and only it) by the state form, ``paths`` runs every
    graph by the path form, ``states`` everything by the state form; all equal the reference."""
    b = sizes_or_batch
    conv = layer("P")
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    st = conv.prepare(b.edge_index, b.num_nodes, b.batch)
    big_nodes = torch.arange(int(b.ptr[big_graph]), int(b.ptr[big_graph + 1]), device=DEVICE)
    big_edges = int((b.batch[st.edge_index[0]] == big_graph).sum())
    widest_small = max(n for i, n in enumerate(torch.diff(b.ptr).tolist()) if i != big_graph)
    large = st.layout("auto").large
    assert large is not None and torch.equal(large.node, big_nodes)
    assert large.edge.numel() == big_edges
    gates = conv.gates(x, st)
    ref = plstm_graph_reference(*gates, st.edge_index, st.lg_edge_index)
    spy = RouteSpy(monkeypatch)
    h = spy.run(conv, gates, st, "auto")
    assert spy.state_edges == [big_edges] and max(spy.widths) == widest_small
    assert (h - ref).abs().max().item() <= 1e-12
    h = spy.run(conv, gates, st, "paths")
    assert spy.state_edges == [] and max(spy.widths) == len(big_nodes)
    assert (h - ref).abs().max().item() <= 1e-12
    h = spy.run(conv, gates, st, "states")
    assert spy.state_edges == [st.num_edges] and spy.widths == []
    assert (h - ref).abs().max().item() <= 1e-12
    # the layer's own choice goes the same way
    conv.algorithm = "auto"
    spy.state_edges, spy.widths = [], []
    conv(x, b.edge_index, b.batch, structure=st)
    assert spy.state_edges == [big_edges]


def test_auto_runs_graphs_above_the_node_limit_by_states_and_the_rest_by_paths(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    b, _ = mixed_batch([5, PATH_FORM_MAX_NODES + 2, 1, 9], gen, chords=4)
    check_routes(monkeypatch, b, big_graph=1)


def first_pairs(n: int, count: int) -> torch.Tensor:
    """The first ``count`` pairs ``i < j`` of ``n`` nodes in lexicographic order, both
    directions stored: a graph with exactly ``count`` DAG edges."""
    pairs = torch.triu_indices(n, n, 1)[:, :count]
    return torch.cat([pairs, pairs.flip(0)], 1)


@pytest.mark.parametrize("extra", [0, 1])
def test_auto_runs_graphs_above_the_edge_limit_by_states(monkeypatch, extra):
    from torch_geometric.data import Batch, Data

    # 40 nodes (far below the node limit) and PATH_FORM_MAX_EDGES (+ extra) DAG edges
    dense = Data(edge_index=first_pairs(40, PATH_FORM_MAX_EDGES + extra), num_nodes=40)
    gen = torch.Generator().manual_seed(8)
    small = [Data(edge_index=tree_with_chords(n, 2, gen), num_nodes=n) for n in (7, 30)]
    b = Batch.from_data_list([small[0], dense, small[1]]).to(DEVICE)
    if extra:
        check_routes(monkeypatch, b, big_graph=1)
    else:  # at the limit: every graph by the path form
        st = prepare_dag(b.edge_index, b.num_nodes, batch=b.batch)
        assert st.layout("auto").large is None
        assert max(bk.edge_width for bk in st.layout("auto").buckets) == PATH_FORM_MAX_EDGES


def test_a_bucket_runs_in_chunks_of_graphs(monkeypatch):
    gen = torch.Generator().manual_seed(9)
    b, _ = mixed_batch([9, 7, 9, 8, 9, 6, 9], gen, chords=3)
    conv = layer("P", algorithm="paths")
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    st = prepare_dag(b.edge_index, b.num_nodes, batch=b.batch, bucket_overhead=math.inf)
    (bucket,) = st.layout("paths").buckets
    W, F = bucket.width, bucket.edge_width
    gates = conv.gates(x.clone().requires_grad_(), st)
    ref = plstm_graph_reference(*gates, st.edge_index, st.lg_edge_index)
    dy = torch.randn_like(ref)
    (want,) = torch.autograd.grad((ref * dy).sum(), gates[0])
    # blocks of 2 graphs (3 + 1 chunks), then of one graph each
    per_graph = 2 * max(F * F, F * W, W * W) * 8  # heads * largest block * float64
    for budget, chunks in ((2 * per_graph, 4), (1, 7)):
        monkeypatch.setattr(graph_module, "PATH_BLOCK_BYTES", budget)
        spy = RouteSpy(monkeypatch)
        h = spy.run(conv, gates, st, "paths")
        assert len(spy.widths) == chunks
        assert (h - ref).abs().max().item() <= 1e-12
        (got,) = torch.autograd.grad((h * dy).sum(), gates[0])  # through the checkpoints
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
        with torch.no_grad():  # chunks without checkpoints
            assert (spy.run(conv, gates, st, "paths") - ref).abs().max().item() <= 1e-12
        assert len(spy.widths) == chunks
        monkeypatch.undo()
        monkeypatch.setattr(graph_module, "NATIVE_PATHS", False)  # undone with the rest


@pytest.mark.parametrize("mode", ["P", "D"])
def test_buckets_with_reverse(mode):
    gen = torch.Generator().manual_seed(10)
    b, _ = mixed_batch(SIZES, gen)
    conv = layer(mode, 3, reverse=True)
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    ea = torch.randn(b.num_edges, 3, generator=gen, dtype=torch.float64).to(DEVICE)
    st = conv.prepare(b.edge_index, b.num_nodes, b.batch, bucket_overhead=500.0)
    assert st.reverse and len(st.layout("paths").buckets) > 1
    gates = conv.gates(x, st, ea)
    ref = plstm_graph_reference(*gates, st.edge_index, st.lg_edge_index)
    for algorithm in ("paths", "auto", "states"):
        h = conv.recurrence(*gates, st, algorithm=algorithm)
        assert (h - ref).abs().max().item() <= 1e-12, algorithm


@pytest.mark.parametrize("mode", ["P", "D"])
def test_buckets_with_directed_edges_in_shuffled_order(mode):
    """Directed DAGs whose node numbering is not topological, edges of all graphs shuffled
    together (the layout must group them by graph itself)."""
    from torch_geometric.data import Batch, Data

    gen = torch.Generator().manual_seed(11)
    graphs = []
    for n in (5, 14, 1, 9, 14, 3):
        order = torch.randperm(n, generator=gen)  # a random topological order
        ei = tree_with_chords(n, 3, gen)
        ei = ei[:, ei[0] < ei[1]]  # one direction, low -> high ...
        graphs.append(Data(edge_index=order[ei], num_nodes=n))  # ... relabelled: still a DAG
    b = Batch.from_data_list(graphs).to(DEVICE)
    perm = torch.randperm(b.num_edges, generator=gen).to(DEVICE)
    ei = b.edge_index[:, perm]
    conv = layer(mode, orientation="directed")
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    st = conv.prepare(ei, b.num_nodes, b.batch, bucket_overhead=0.0)
    assert len(st.layout("paths").buckets) == 5
    gates = conv.gates(x, st)
    ref = plstm_graph_reference(*gates, st.edge_index, st.lg_edge_index)
    for algorithm in ("paths", "auto", "states"):
        h = conv.recurrence(*gates, st, algorithm=algorithm)
        assert (h - ref).abs().max().item() <= 1e-12, algorithm


def test_structure_without_batch_or_for_another_batch():
    gen = torch.Generator().manual_seed(5)
    b, _ = mixed_batch([4, 11, 6], gen)
    conv = layer("D", algorithm="paths")
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    expected = conv(x, b.edge_index, b.batch)
    # prepared without batch: one graph; the forward's batch regroups the graphs for the call
    st = conv.prepare(b.edge_index, b.num_nodes)
    assert len(st.layout("paths").buckets) == 1
    assert st.layout("paths").buckets[0].width == b.num_nodes
    torch.testing.assert_close(conv(x, b.edge_index, b.batch, structure=st), expected)
    torch.testing.assert_close(conv(x, b.edge_index, structure=st), expected)
    # moved with the layouts built so far
    moved = conv.prepare(b.edge_index, b.num_nodes, b.batch)
    moved.layout("paths")
    moved = moved.to(DEVICE)
    assert moved.batch.device == moved.layout("paths").node.device == x.device
    torch.testing.assert_close(conv(x, b.edge_index, b.batch, structure=moved), expected)


def test_layout_is_built_lazily_once_per_structure(monkeypatch):
    gen = torch.Generator().manual_seed(12)
    b, _ = mixed_batch([4, 11, 6], gen)
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    built = []
    real = graph_module._graph_layout
    monkeypatch.setattr(graph_module, "_graph_layout", lambda *a: built.append(a[2]) or real(*a))
    st = prepare_dag(b.edge_index, b.num_nodes, batch=b.batch)
    states = layer("P", algorithm="states")
    states(x, b.edge_index, b.batch, structure=st)
    states(x, b.edge_index, b.batch)  # prepares its own structure
    assert built == []  # neither prepare_dag nor a "states" layer builds a layout
    first, second = layer("P", algorithm="auto"), layer("P", algorithm="auto")
    first(x, b.edge_index, b.batch, structure=st)
    second(x, b.edge_index, b.batch, structure=st)
    second(x, b.edge_index, structure=st)
    assert built == [True]  # once, shared; all graphs small, so "paths" reuses it
    layer("P", algorithm="paths")(x, b.edge_index, b.batch, structure=st)
    assert built == [True]


def test_empty_graphs_inside_the_batch_and_float32():
    gen = torch.Generator().manual_seed(6)
    b, _ = mixed_batch([5, 8], gen)
    batch = b.batch.clone()
    batch[5:] = 2  # graph 1 has no node
    conv = layer("P", algorithm="paths")
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    st = conv.prepare(b.edge_index, b.num_nodes, batch)
    assert st.layout("paths").graph_sizes.tolist() == [5, 0, 8]
    gates = conv.gates(x, st)
    ref = plstm_graph_reference(*gates, st.edge_index, st.lg_edge_index)
    assert (conv.recurrence(*gates, st, batch) - ref).abs().max().item() <= 1e-12
    out32 = conv.float()(x.float(), b.edge_index, batch, structure=st)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, conv.double()(x, b.edge_index, batch).float())


def test_bad_batch_and_bucket_overhead():
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]], device=DEVICE)
    with pytest.raises(ValueError, match="bucket_overhead must be >= 0"):
        prepare_dag(ei, 3, bucket_overhead=-1.0)
    with pytest.raises(ValueError, match="bucket_overhead must be >= 0"):
        prepare_dag(ei, 3, bucket_overhead=float("nan"))
    with pytest.raises(TypeError, match="bucket_overhead must be a number"):
        prepare_dag(ei, 3, bucket_overhead="large")
    with pytest.raises(ValueError, match="an edge joins two graphs of batch"):
        prepare_dag(ei, 3, batch=torch.tensor([0, 0, 1], device=DEVICE))
    with pytest.raises(ValueError, match="batch must be sorted"):
        prepare_dag(ei, 3, batch=torch.tensor([1, 0, 0], device=DEVICE))
    with pytest.raises(ValueError, match=r"batch must be an integer tensor of shape \[N\]"):
        prepare_dag(ei, 3, batch=torch.zeros(4, dtype=torch.long, device=DEVICE))
    for dtype in (torch.float32, torch.bool, torch.uint8):
        with pytest.raises(TypeError, match="batch must be a signed integer tensor"):
            prepare_dag(ei, 3, batch=torch.zeros(3, dtype=dtype, device=DEVICE))
    with pytest.raises(TypeError, match=r"batch must be a torch\.Tensor, got list"):
        prepare_dag(ei, 3, batch=[0, 0, 0])
    conv = PLSTMGraph(4, 8).to(DEVICE)
    x = torch.randn(3, 4, device=DEVICE)
    with pytest.raises(TypeError, match="batch must be a signed integer tensor"):
        conv(x, ei, torch.zeros(3, dtype=torch.bool, device=DEVICE))  # checked by prepare_dag
    st = conv.prepare(ei, 3)
    with pytest.raises(TypeError, match=r"PLSTMGraph: batch must be a torch\.Tensor"):
        conv(x, ei, [0, 0, 0], structure=st)
    with pytest.raises(ValueError, match="an edge joins two graphs of batch"):
        conv(x, ei, torch.tensor([0, 0, 1], device=DEVICE), structure=st)
    with pytest.raises(TypeError, match=r"PLSTMGraph\.recurrence: batch must be a signed"):
        conv.recurrence(*conv.gates(x, st), st, torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="algorithm"):
        conv.recurrence(*conv.gates(x, st), st, algorithm="fast")
    with pytest.raises(ValueError, match="algorithm"):
        st.layout("states")


@pytest.mark.parametrize("mode", ["P", "D"])
def test_nan_spread_follows_the_documented_rule(mode):
    """A NaN stays inside its graph under every algorithm; under "states" it reaches only the
    node, its descendants and (P-mode) the descendants of its parents; under "paths" (and
    "auto" for a small graph) every node of its graph."""
    from torch_geometric.data import Batch, Data

    # graph 0 (index orientation): 0 -> 1, 1 -> 2, 1 -> 3, 3 -> 4, 2 -> 5; NaN at node 2,
    # whose descendants are {5} and whose parent 1 has the descendants {2, 3, 4, 5}
    ei = torch.tensor([[0, 1, 1, 3, 2], [1, 2, 3, 4, 5]])
    gen = torch.Generator().manual_seed(13)
    graphs = [Data(edge_index=torch.cat([ei, ei.flip(0)], 1), num_nodes=6)]
    graphs += [Data(edge_index=tree_with_chords(n, 2, gen), num_nodes=n) for n in (4, 7, 5)]
    b = Batch.from_data_list(graphs).to(DEVICE)
    conv = layer(mode)
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    x[2] = float("nan")
    st = prepare_dag(b.edge_index, b.num_nodes, mode=mode, batch=b.batch, bucket_overhead=math.inf)
    states_rows = [2, 5] if mode == "D" else [2, 3, 4, 5]
    for algorithm, rows in (("states", states_rows), ("paths", range(6)), ("auto", range(6))):
        conv.algorithm = algorithm
        out = conv(x, b.edge_index, b.batch, structure=st)
        assert torch.isfinite(out[6:]).all(), algorithm  # the other graphs
        nan_rows = torch.nonzero(torch.isnan(out[:6]).any(-1)).flatten().tolist()
        assert nan_rows == list(rows), algorithm


@pytest.mark.parametrize("budget", [None, 1])
@pytest.mark.parametrize("mode", ["P", "D"])
def test_hand_written_backward_of_every_recurrence_input(monkeypatch, mode, budget):
    """gradcheck of the path form's hand-written backward against each of its seven inputs
    (q, k, v and the four gates), with every bucket in one chunk (intermediates kept) and
    with one graph per chunk (recomputed in the backward)."""
    gen = torch.Generator().manual_seed(21)
    b, _ = mixed_batch([3, 6, 1, -2, 5], gen, chords=2)
    if budget is not None:
        monkeypatch.setattr(graph_module, "PATH_BLOCK_BYTES", budget)
    conv = layer(mode)
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    st = prepare_dag(b.edge_index, b.num_nodes, mode=mode, batch=b.batch, bucket_overhead=0.0)
    gates = tuple(g.detach().requires_grad_() for g in conv.gates(x, st))
    assert torch.autograd.gradcheck(
        lambda *g: PLSTMGraph.recurrence(*g, st, algorithm="paths"), gates, fast_mode=False
    )
    # a subset of the inputs requiring grad gets the same gradients
    ref = plstm_graph_reference(*gates, st.edge_index, st.lg_edge_index)
    dy = torch.randn_like(ref)
    want = torch.autograd.grad((ref * dy).sum(), (gates[1], gates[4]))
    partial = [g.detach() for g in gates]
    partial[1].requires_grad_()
    partial[4].requires_grad_()
    h = PLSTMGraph.recurrence(*partial, st, algorithm="paths")
    got = torch.autograd.grad((h * dy).sum(), (partial[1], partial[4]))
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, atol=1e-12, rtol=1e-10)


def test_no_algorithm_gives_a_partial_second_derivative():
    """Both hand-written backward passes (path form, states wavefront) refuse as soon as the
    gradient's graph is requested, not later: a second derivative with respect to the weights
    alone would otherwise drop the kernels' share silently. First order is unaffected."""
    gen = torch.Generator().manual_seed(22)
    b, _ = mixed_batch([4, 5], gen, chords=1)
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    x.requires_grad_()
    grads = []
    for algorithm, what in (("paths", "PLSTMGraph path form"), ("states", "dag_scan")):
        conv = layer("P", algorithm=algorithm)
        with pytest.raises(RuntimeError, match=f"{what}.*once_differentiable"):
            torch.autograd.grad(conv(x, b.edge_index, b.batch).square().sum(), x, create_graph=True)
        grads.append(torch.autograd.grad(conv(x, b.edge_index, b.batch).square().sum(), x)[0])
    torch.testing.assert_close(grads[0], grads[1])


def test_structure_to_device_moves_every_field_and_cached_layout():
    gen = torch.Generator().manual_seed(23)
    b, _ = mixed_batch([5, 1, 7, -2], gen, chords=2)
    conv = layer("P", algorithm="paths")
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    st = prepare_dag(b.edge_index, b.num_nodes, batch=b.batch)
    want = conv(x, b.edge_index, b.batch, structure=st)  # builds the layout and its plans
    layout = st.layout("paths")
    assert layout is st.layout("auto") and layout.plans  # one layout under both keys
    moved = st.to(DEVICE)
    for name in ("num_nodes", "mode", "orientation", "reverse", "bucket_overhead"):
        assert getattr(moved, name) == getattr(st, name)
    for name in ("edge_index", "input_edge", "lg_edge_index", "lg_node", "batch"):
        assert torch.equal(getattr(moved, name), getattr(st, name))
    copy = moved.layout("paths")
    assert copy is not layout and copy is moved.layout("auto")  # moved once, still shared
    assert not copy.plans  # the cache starts empty
    assert [bk.width for bk in copy.buckets] == [bk.width for bk in layout.buckets]
    assert torch.equal(copy.buckets[0].lg_slot, layout.buckets[0].lg_slot)
    assert torch.equal(conv(x, b.edge_index, b.batch, structure=moved), want)


@pytest.mark.parametrize("mode", ["P", "D"])
def test_auto_with_a_large_graph_has_the_reference_gradients(mode):
    """The path form on only some of the nodes (the others run by the state form): its
    gradients reach every input at the right rows, and zero at the large graph's rows."""
    gen = torch.Generator().manual_seed(24)
    b, _ = mixed_batch([5, PATH_FORM_MAX_NODES + 2, 1, 9], gen, chords=4)
    conv = layer(mode)
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    st = conv.prepare(b.edge_index, b.num_nodes, b.batch)
    assert st.layout("auto").large is not None
    gates = tuple(g.detach().requires_grad_() for g in conv.gates(x, st))
    ref = plstm_graph_reference(*gates, st.edge_index, st.lg_edge_index)
    dy = torch.randn_like(ref)
    want = torch.autograd.grad((ref * dy).sum(), gates)
    h = PLSTMGraph.recurrence(*gates, st, algorithm="auto")
    assert (h - ref).abs().max().item() <= 1e-12
    got = torch.autograd.grad((h * dy).sum(), gates)
    for name, a, w in zip(("q", "k", "v", "S", "T", "M", "D"), got, want):
        torch.testing.assert_close(a, w, atol=1e-12, rtol=1e-10, msg=name)


@pytest.mark.parametrize("algorithm", ["paths", "auto", "states"])
@pytest.mark.parametrize("value_channels", [2, 7])
def test_recurrence_with_values_of_another_width(algorithm, value_channels):
    """``v`` ``[N, H, V]`` with ``V`` other than ``q``'s and ``k``'s ``K`` (the reference
    allows it; the path form packs ``q, k, v`` into one block, zero-padded to ``max(K, V)``)."""
    gen = torch.Generator().manual_seed(25)
    b, _ = mixed_batch([5, 1, 9, -2], gen, chords=2)
    conv = layer("P")
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    st = conv.prepare(b.edge_index, b.num_nodes, b.batch)
    q, k, _, *gates = conv.gates(x, st)
    v = torch.randn(b.num_nodes, 2, value_channels, generator=gen, dtype=torch.float64)
    inputs = [t.detach().requires_grad_() for t in (q, k, v.to(DEVICE), *gates)]
    ref = plstm_graph_reference(*inputs, st.edge_index, st.lg_edge_index)
    h = PLSTMGraph.recurrence(*inputs, st, algorithm=algorithm)
    assert h.shape == (b.num_nodes, 2, value_channels)
    assert (h - ref).abs().max().item() <= 1e-12
    dy = torch.randn_like(ref)
    want = torch.autograd.grad((ref * dy).sum(), inputs)
    got = torch.autograd.grad((h * dy).sum(), inputs)
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, atol=1e-12, rtol=1e-10)


def test_recurrence_refuses_q_k_v_of_mismatched_shapes():
    gen = torch.Generator().manual_seed(26)
    b, _ = mixed_batch([4, 3], gen, chords=1)
    conv = layer("P")
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    st = conv.prepare(b.edge_index, b.num_nodes, b.batch)
    q, k, v, *gates = conv.gates(x, st)
    with pytest.raises(ValueError, match="q and k must have one shape"):
        PLSTMGraph.recurrence(q, k[:, :, :3], v, *gates, st, algorithm="paths")
    with pytest.raises(ValueError, match="q and k must have one shape"):
        PLSTMGraph.recurrence(q, k, v[:-1], *gates, st, algorithm="paths")


@pytest.mark.parametrize("grad", [False, True])
def test_path_form_under_autocast(grad):
    """Under CPU autocast (bfloat16 linear maps) the path form runs in its own float32 and the
    layer stays close to its float32 result, forward and (with ``grad``) backward."""
    gen = torch.Generator().manual_seed(27)
    b, _ = mixed_batch([5, 9, 1, -2, 12], gen, chords=2)
    torch.manual_seed(1)
    conv = PLSTMGraph(6, 8, heads=2, mode="P", gate_weight_std=0.7, algorithm="paths")
    x = torch.randn(b.num_nodes, 6, generator=gen)
    st = conv.prepare(b.edge_index, b.num_nodes, b.batch)
    want = conv(x, b.edge_index, b.batch, structure=st)
    xs = x.clone().requires_grad_(grad)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        got = conv(xs, b.edge_index, b.batch, structure=st)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.1)
    if grad:
        got.float().sum().backward()
        assert xs.grad is not None and torch.isfinite(xs.grad).all()
