"""PLSTMGraph and its preprocessing: loop-reference parity, 1D/2D special cases, P/D modes."""

from __future__ import annotations

import pytest
import torch

from graphseq.nn.plstm.graph import (
    DagStructure,
    PLSTMGraph,
    line_graph,
    orient_edges,
    plstm_graph_reference,
    pmode_normalize,
    prepare_dag,
    prune_to_multitree,
)
from graphseq.testing import DEVICE, assert_close


def random_dag_edges(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """A random DAG (edges from lower to higher rank of a random permutation), shuffled."""
    rank = torch.randperm(n, generator=gen)
    a, b = torch.triu_indices(n, n, offset=1)
    keep = torch.rand(a.numel(), generator=gen) < p
    ei = torch.stack([rank[a[keep]], rank[b[keep]]])
    return ei[:, torch.randperm(ei.shape[1], generator=gen)].to(DEVICE)


def random_undirected(n: int, extra: int, gen: torch.Generator) -> torch.Tensor:
    """A random tree plus ``extra`` chords, both directions stored (like a PyG molecule)."""
    parent = torch.tensor([int(torch.randint(i, (1,), generator=gen)) for i in range(1, n)])
    src = torch.cat([parent, torch.randint(n, (extra,), generator=gen)])
    dst = torch.cat([torch.arange(1, n), torch.randint(n, (extra,), generator=gen)])
    keep = src != dst
    src, dst = src[keep], dst[keep]
    return torch.stack([torch.cat([src, dst]), torch.cat([dst, src])]).to(DEVICE)


def layer(mode: str, edge_dim=None, **kw) -> PLSTMGraph:
    torch.manual_seed(1)
    conv = PLSTMGraph(6, 8, heads=2, mode=mode, edge_dim=edge_dim, gate_weight_std=0.7, **kw)
    with torch.no_grad():  # gates far from their constant init, so that they matter
        for name in ("source", "mark", "direct", "transition"):
            getattr(conv, name).bias.normal_(0.0, 1.0)
    return conv.double().to(DEVICE)


@pytest.mark.parametrize("algorithm", ["states", "paths"])
@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("n,p,edge_dim", [(1, 0.5, None), (9, 0.35, 3), (23, 0.15, None)])
def test_recurrence_matches_loop_reference(mode, n, p, edge_dim, algorithm):
    gen = torch.Generator().manual_seed(n)
    ei = random_dag_edges(n, p, gen)
    conv = layer(mode, edge_dim, orientation="directed", algorithm=algorithm)
    x = torch.randn(n, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    ea = None
    if edge_dim:
        ea = torch.randn(ei.shape[1], edge_dim, generator=gen, dtype=torch.float64).to(DEVICE)
    st = conv.prepare(ei, n)
    gates = conv.gates(x, st, ea)
    fast = conv.recurrence(*gates, st, algorithm=algorithm)
    ref = plstm_graph_reference(*gates, st.edge_index, st.lg_edge_index)
    assert (fast - ref).abs().max().item() <= 1e-12
    out = conv(x, ei, edge_attr=ea)
    assert out.shape == (n, 8) and torch.isfinite(out).all()
    torch.testing.assert_close(
        out, conv.out_proj(conv.norm(ref).flatten(-2)), atol=1e-12, rtol=1e-10
    )


@pytest.mark.parametrize("mode", ["P", "D"])
def test_paths_and_states_agree_on_a_batch(mode):
    from torch_geometric.data import Batch, Data

    gen = torch.Generator().manual_seed(12)
    graphs = [
        Data(edge_index=random_undirected(n, 3, gen).cpu(), num_nodes=n) for n in (6, 2, 11, 4)
    ]
    b = Batch.from_data_list(graphs).to(DEVICE)
    conv = layer(mode)
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    st = conv.prepare(b.edge_index, b.num_nodes, b.batch)
    gates = conv.gates(x, st)
    states = conv.recurrence(*gates, st, algorithm="states")
    paths = conv.recurrence(*gates, st, b.batch, algorithm="paths")
    ref = plstm_graph_reference(*gates, st.edge_index, st.lg_edge_index)
    assert (states - ref).abs().max().item() <= 1e-12
    assert (paths - ref).abs().max().item() <= 1e-12
    # the layer's "auto" choice (per graph: all small here, so the path form)
    conv.algorithm = "auto"
    torch.testing.assert_close(
        conv(x, b.edge_index, b.batch), conv.out_proj(conv.norm(ref).flatten(-2))
    )


def test_gradients_match_loop_reference():
    gen = torch.Generator().manual_seed(2)
    ei = random_undirected(10, 4, gen)
    conv = layer("P", 2)
    x = torch.randn(10, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    ea = torch.randn(ei.shape[1], 2, generator=gen, dtype=torch.float64).to(DEVICE)
    st = conv.prepare(ei, 10)
    dy = torch.randn(10, 2, 4, generator=gen, dtype=torch.float64).to(DEVICE)
    grads = []
    for fast in (True, False):
        conv.zero_grad()
        xr = x.clone().requires_grad_()
        gates = conv.gates(xr, st, ea)
        h = (
            conv.recurrence(*gates, st)
            if fast
            else plstm_graph_reference(*gates, st.edge_index, st.lg_edge_index)
        )
        (h * dy).sum().backward()
        grads.append([xr.grad] + [p.grad.clone() for p in conv.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 5
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("algorithm", ["states", "paths"])
@pytest.mark.parametrize("mode", ["P", "D"])
def test_gradcheck(mode, algorithm):
    gen = torch.Generator().manual_seed(3)
    ei = random_undirected(5, 2, gen)
    conv = layer(mode, 2, algorithm=algorithm)
    x = torch.randn(5, 6, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
    ea = torch.randn(ei.shape[1], 2, generator=gen, dtype=torch.float64).to(DEVICE)
    ea.requires_grad_()
    st = conv.prepare(ei, 5)
    assert torch.autograd.gradcheck(
        lambda a, b: conv(a, ei, edge_attr=b, structure=st), (x, ea), fast_mode=True
    )


def test_path_graph_equals_plstm1d():
    plstm1d = pytest.importorskip("graphseq.nn.plstm.plstm1d")
    T, D, H = 13, 8, 2
    torch.manual_seed(4)
    one = plstm1d.PLSTM1D(D, heads=H, gate_weight_std=0.5).double().to(DEVICE)
    conv = PLSTMGraph(D, D, heads=H, mode="D", gate_weight_std=0.5).double().to(DEVICE)
    with torch.no_grad():  # same parameters; the transition ignores the path's far ends
        conv.qkv.load_state_dict(one.qkv.state_dict())
        for name in ("source", "mark", "direct", "transition"):
            getattr(conv, name).load_state_dict(getattr(one, name).linear.state_dict())
        conv.transition_ends.weight.zero_()
        conv.norm.load_state_dict(one.norm.state_dict())
        conv.out_proj.load_state_dict(one.out_proj.state_dict())
    x = torch.randn(T, D, dtype=torch.float64, device=DEVICE)
    ei = torch.stack([torch.arange(T - 1), torch.arange(1, T)]).to(DEVICE)
    ei = torch.cat([ei, ei.flip(0)], 1)  # undirected, as PyG stores it
    expected = one(x.unsqueeze(0)).squeeze(0)
    torch.testing.assert_close(conv(x, ei), expected, atol=1e-12, rtol=1e-10)
    # and against the 1D loop with the graph layer's own gates (P-mode too)
    conv_p = layer("P")
    x6 = torch.randn(T, 6, dtype=torch.float64, device=DEVICE)
    st = conv_p.prepare(ei, T)
    q, k, v, S, Tr, M, Dg = conv_p.gates(x6, st)
    # edge t is (t -> t+1); the transition at node t (t >= 1) is line-graph edge t-1 -> t
    S1 = torch.cat([S, S[-1:]])  # node T-1 has no outgoing edge: its source is never read
    # nodes 0 and T-1 have no incoming / outgoing edge: their transitions are never used
    T1 = torch.cat([Tr[:1], Tr, Tr[:1]])
    M1 = torch.cat([M[:1], M])
    h1, _ = plstm1d.plstm1d_reference(*(t.unsqueeze(0) for t in (q, k, v, S1, T1, M1, Dg)))
    assert torch.equal(st.lg_edge_index[0], torch.arange(T - 2, device=DEVICE))
    torch.testing.assert_close(conv_p.recurrence(q, k, v, S, Tr, M, Dg, st), h1[0])


def test_grid_dag_equals_2d_single_corner_recurrence():
    X, Y = 4, 5
    node = torch.arange(X * Y).reshape(X, Y)  # node (x, y)
    right = torch.stack([node[:-1].flatten(), node[1:].flatten()])  # (x, y) -> (x + 1, y)
    down = torch.stack([node[:, :-1].flatten(), node[:, 1:].flatten()])  # (x, y) -> (x, y + 1)
    ei = torch.cat([right, down], 1).to(DEVICE)
    conv = layer("P", orientation="directed")
    x = torch.randn(X * Y, 6, dtype=torch.float64, device=DEVICE)
    st = conv.prepare(ei, X * Y)
    q, k, v, S, Tr, M, Dg = conv.gates(x, st)
    h_graph = conv.recurrence(q, k, v, S, Tr, M, Dg, st)

    # the 2D pLSTM loop of one corner (r: state on the edge to the right, d: downwards),
    # with the graph layer's gate values looked up by edge
    edge_id = {tuple(e): i for i, e in enumerate(st.edge_index.t().tolist())}
    lg_id = {tuple(e): j for j, e in enumerate(st.lg_edge_index.t().tolist())}
    zero = torch.zeros(2, 4, 4, dtype=torch.float64, device=DEVICE)
    Cr, Cd = {}, {}

    def t(e_in, e_out):
        return Tr[lg_id[(e_in, e_out)]][:, None, None]

    h_loop = torch.zeros_like(h_graph)
    for xx in range(X):
        for yy in range(Y):
            n = int(node[xx, yy])
            r_in = edge_id.get((int(node[xx - 1, yy]), n)) if xx > 0 else None
            d_in = edge_id.get((int(node[xx, yy - 1]), n)) if yy > 0 else None
            r_out = edge_id.get((n, int(node[xx + 1, yy]))) if xx < X - 1 else None
            d_out = edge_id.get((n, int(node[xx, yy + 1]))) if yy < Y - 1 else None
            kv = k[n][:, :, None] * v[n][:, None, :]
            read = Dg[n][:, None] * (q[n] * k[n]).sum(-1, keepdim=True) * v[n]
            for e_in, C in ((r_in, Cr), (d_in, Cd)):
                if e_in is not None:
                    read = read + M[e_in][:, None] * torch.einsum("hk,hkv->hv", q[n], C[e_in])
            h_loop[n] = read
            for e_out, C in ((r_out, Cr), (d_out, Cd)):
                if e_out is None:
                    continue
                c = S[e_out][:, None, None] * kv
                c = c + (t(r_in, e_out) * Cr[r_in] if r_in is not None else zero)
                c = c + (t(d_in, e_out) * Cd[d_in] if d_in is not None else zero)
                C[e_out] = c
    assert (h_graph - h_loop).abs().max().item() <= 1e-12
    h_paths = conv.recurrence(q, k, v, S, Tr, M, Dg, st, algorithm="paths")
    assert (h_paths - h_loop).abs().max().item() <= 1e-12


def test_grid_dag_equals_grid_scan_2d():
    """The same grid through plstm-grid's 2D op (single corner, all four transitions)."""
    grid = pytest.importorskip("graphseq.kernels.grid_scan_2d")
    X, Y = 3, 5
    node = torch.arange(X * Y).reshape(X, Y)
    right = torch.stack([node[:-1].flatten(), node[1:].flatten()])
    down = torch.stack([node[:, :-1].flatten(), node[:, 1:].flatten()])
    ei = torch.cat([right, down], 1).to(DEVICE)
    conv = layer("P", orientation="directed")
    x = torch.randn(X * Y, 6, dtype=torch.float64, device=DEVICE)
    st = conv.prepare(ei, X * Y)
    q, k, v, S, Tr, M, Dg = conv.gates(x, st)
    h_graph = conv.recurrence(q, k, v, S, Tr, M, Dg, st)
    edge_id = {tuple(e): i for i, e in enumerate(st.edge_index.t().tolist())}
    lg_id = {tuple(e): j for j, e in enumerate(st.lg_edge_index.t().tolist())}
    zeros = torch.zeros(1, X, Y, 2, dtype=torch.float64, device=DEVICE)
    t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u = (zeros.clone() for _ in range(8))
    for xx in range(X):
        for yy in range(Y):
            n = int(node[xx, yy])
            r_in = edge_id.get((int(node[xx - 1, yy]), n)) if xx > 0 else None
            d_in = edge_id.get((int(node[xx, yy - 1]), n)) if yy > 0 else None
            r_out = edge_id.get((n, int(node[xx + 1, yy]))) if xx < X - 1 else None
            d_out = edge_id.get((n, int(node[xx, yy + 1]))) if yy < Y - 1 else None
            for gate, e_in, e_out in (
                (t_rl, r_in, r_out), (t_ru, d_in, r_out), (t_du, d_in, d_out), (t_dl, r_in, d_out)
            ):  # fmt: skip
                if e_in is not None and e_out is not None:
                    gate[0, xx, yy] = Tr[lg_id[(e_in, e_out)]]
            for gate, e, table in (
                (s_r, r_out, S),
                (s_d, d_out, S),
                (m_l, r_in, M),
                (m_u, d_in, M),
            ):
                if e is not None:
                    gate[0, xx, yy] = table[e]

    def cells(t):  # [N, ...] -> [1, X, Y, ...]
        return t.reshape(1, X, Y, *t.shape[1:])

    h_grid, _ = grid.grid_scan_2d(
        cells(q), cells(k), cells(v), t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, cells(Dg)
    )
    assert (h_grid.reshape(X * Y, 2, 4) - h_graph).abs().max().item() <= 1e-12


@pytest.mark.parametrize("mode", ["P", "D"])
def test_batching_invariance(mode):
    from torch_geometric.data import Batch, Data

    gen = torch.Generator().manual_seed(5)
    sizes = [7, 1, 12, 3, 9]
    graphs = []
    for n in sizes:
        ei = random_undirected(n, 2, gen) if n > 1 else torch.zeros(2, 0, dtype=torch.long)
        graphs.append(Data(x=torch.randn(n, 6, generator=gen), edge_index=ei.cpu(), num_nodes=n))
    batch = Batch.from_data_list(graphs).to(DEVICE)
    torch.manual_seed(0)
    conv = PLSTMGraph(6, 8, heads=2, mode=mode, gate_weight_std=0.5).to(DEVICE)
    out = conv(batch.x, batch.edge_index, batch.batch)
    for i, g in enumerate(graphs):
        alone = conv(g.x.to(DEVICE), g.edge_index.to(DEVICE))
        lo, hi = int(batch.ptr[i]), int(batch.ptr[i + 1])
        torch.testing.assert_close(out[lo:hi], alone, atol=1e-6, rtol=1e-6)


def test_pmode_column_sums_at_most_one():
    gen = torch.Generator().manual_seed(6)
    ei = random_undirected(30, 25, gen)
    conv = layer("P", 2)
    with torch.no_grad():
        conv.transition.bias.fill_(5.0)  # large raw transitions: the bound must still hold
    x = torch.randn(30, 6, generator=gen, dtype=torch.float64).to(DEVICE) * 3
    ea = torch.randn(ei.shape[1], 2, generator=gen, dtype=torch.float64).to(DEVICE)
    st = conv.prepare(ei, 30)
    T = conv.gates(x, st, ea)[4]  # [L, H]
    col = torch.zeros(st.num_edges, 2, dtype=torch.float64, device=DEVICE)
    col.index_add_(0, st.lg_edge_index[0], T.abs())  # sum over outgoing edges e of each e'
    assert (col <= 1.0).all()
    assert col.max() > 0.9  # and the bound is approached, not trivially tiny
    assert (T < 0).any()  # signs survive the normalisation


def count_paths(lg: torch.Tensor, num_states: int) -> torch.Tensor:
    """paths[u, w]: number of directed paths u -> ... -> w of length >= 1 (dense DP)."""
    A = torch.zeros(num_states, num_states, dtype=torch.float64)
    A.index_put_((lg[0].cpu(), lg[1].cpu()), torch.ones(lg.shape[1], dtype=torch.float64),
                 accumulate=True)  # fmt: skip
    total, power = torch.zeros_like(A), A.clone()
    for _ in range(num_states):
        total += power
        power = power @ A
    return total


def test_dmode_line_graph_is_a_multitree():
    needed_pruning = 0
    for seed in range(8):
        gen = torch.Generator().manual_seed(seed)
        if seed % 2:  # relabelled, so that index orientation makes diamonds
            ei = torch.randperm(12, generator=gen).to(DEVICE)[random_undirected(12, 10, gen)]
        else:
            ei = random_dag_edges(12, 0.5, gen)
        orientation = "index" if seed % 2 else "directed"
        full = prepare_dag(ei, 12, mode="P", orientation=orientation)
        st = prepare_dag(ei, 12, mode="D", orientation=orientation)
        E = st.num_edges
        needed_pruning += int(count_paths(full.lg_edge_index, E).max() > 1)
        assert count_paths(st.lg_edge_index, E).max() <= 1
        # a subset of the line graph, and every state that had an input keeps one
        kept = set(map(tuple, st.lg_edge_index.t().tolist()))
        assert kept <= set(map(tuple, full.lg_edge_index.t().tolist()))
        assert set(full.lg_edge_index[1].tolist()) == set(st.lg_edge_index[1].tolist())
    assert needed_pruning >= 4  # the test graphs do have several paths between states


def test_pruning_keeps_a_multitree_whole_and_is_deterministic():
    # a tree with edges directed away from the root: its line graph is already a multitree
    ei = torch.tensor([[0, 0, 1, 1, 2, 4], [1, 2, 3, 4, 5, 6]], device=DEVICE)
    lg, _ = line_graph(ei, 7)
    assert prune_to_multitree(lg, 6).all()
    # diamond in the line graph: 0 -> {1, 2} -> 3; the second input of 3 goes
    lg = torch.tensor([[0, 0, 1, 2], [1, 2, 3, 3]], device=DEVICE)
    assert prune_to_multitree(lg, 4).tolist() == [True, True, True, False]
    # per-graph bitsets give the same answer as global ones
    gen = torch.Generator().manual_seed(9)
    ei = torch.cat([random_undirected(20, 15, gen), random_undirected(20, 15, gen) + 20], 1)
    dag, _ = orient_edges(ei, 40)
    lg, _ = line_graph(dag, 40)
    graph_of_state = (dag[0] >= 20).long()
    assert not prune_to_multitree(lg, dag.shape[1]).all()
    assert torch.equal(
        prune_to_multitree(lg, dag.shape[1]), prune_to_multitree(lg, dag.shape[1], graph_of_state)
    )


def test_orientation_of_undirected_input():
    # both directions stored; edge attributes differ by direction to see which copy is used
    ei = torch.tensor([[0, 1, 2, 1, 3, 3, 2, 2], [1, 0, 1, 2, 2, 2, 3, 2]], device=DEVICE)
    dag, input_edge = orient_edges(ei, 4)
    assert dag.tolist() == [[0, 1, 2], [1, 2, 3]]  # self-loop 2-2 and duplicate 3-2 dropped
    assert input_edge.tolist() == [0, 3, 6]  # the stored min -> max copies
    st = prepare_dag(ei, 4, reverse=True)
    assert st.edge_index.tolist() == [[1, 2, 3], [0, 1, 2]]
    # shuffling the edge list changes nothing
    conv = layer("P", 1)
    x = torch.randn(4, 6, dtype=torch.float64, device=DEVICE)
    ea = torch.randn(8, 1, dtype=torch.float64, device=DEVICE)
    ea[[1, 2, 4, 5, 7]] = ea[[0, 3, 6, 6, 6]]  # both copies equal, as in PyG molecules
    perm = torch.randperm(8, device=DEVICE)
    torch.testing.assert_close(
        conv(x, ei, edge_attr=ea), conv(x, ei[:, perm], edge_attr=ea[perm]), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize(
    "edges,on_cycle",
    [
        ([[0, 1, 2, 3], [1, 2, 3, 1]], {1, 2, 3}),
        ([[0, 2], [1, 2]], {2}),
        ([[0, 1], [1, 0]], {0, 1}),
    ],
)
def test_directed_cycle_raises_naming_a_node_on_it(edges, on_cycle):
    ei = torch.tensor(edges, device=DEVICE)
    conv = PLSTMGraph(3, 4, heads=1, orientation="directed").to(DEVICE)
    with pytest.raises(ValueError, match="cycle through node") as info:
        conv(torch.randn(4, 3, device=DEVICE), ei)
    node = int(str(info.value).split("cycle through node ")[1].split(";")[0])
    assert node in on_cycle
    # the same edges read as undirected are fine
    PLSTMGraph(3, 4, heads=1)(torch.randn(4, 3, device=DEVICE), ei)


def test_empty_single_node_and_isolated_nodes():
    conv = PLSTMGraph(3, 4, heads=2, mode="D").to(DEVICE)
    none = torch.zeros(2, 0, dtype=torch.long, device=DEVICE)
    assert conv(torch.zeros(0, 3, device=DEVICE), none).shape == (0, 4)
    x = torch.randn(1, 3, device=DEVICE, requires_grad=True)
    out = conv(x, none)
    out.sum().backward()
    assert out.shape == (1, 4) and torch.isfinite(x.grad).all()
    # isolated node: only the direct term, so it equals the node computed alone
    ei = torch.tensor([[0, 1], [1, 0]], device=DEVICE)
    x3 = torch.randn(3, 3, device=DEVICE)
    torch.testing.assert_close(conv(x3, ei)[2:], conv(x3[2:], none))


def test_bad_arguments_and_repr():
    with pytest.raises(ValueError, match="must divide out_channels"):
        PLSTMGraph(4, 6, heads=4)
    with pytest.raises(ValueError, match="mode"):
        PLSTMGraph(4, 8, mode="Q")
    with pytest.raises(ValueError, match="gate_bias"):
        PLSTMGraph(4, 8, gate_bias={"forget": 1.0})
    conv = PLSTMGraph(4, 8, heads=2, mode="D", edge_dim=3).to(DEVICE)
    assert repr(conv) == "PLSTMGraph(4, 8, heads=2, mode='D', edge_dim=3)"
    assert (
        repr(PLSTMGraph(4, 8, reverse=True)) == "PLSTMGraph(4, 8, heads=4, mode='P', reverse=True)"
    )
    x = torch.randn(3, 4, device=DEVICE)
    ei = torch.tensor([[0, 1], [1, 2]], device=DEVICE)
    # edge_index is checked before its width is compared with edge_attr's
    with pytest.raises(TypeError, match=r"edge_index must be a torch\.Tensor"):
        conv(x, [[0, 1], [1, 2]], edge_attr=torch.randn(2, 3, device=DEVICE))
    with pytest.raises(ValueError, match=r"edge_index must have shape \[2, E\]"):
        conv(x, ei[0], edge_attr=torch.randn(2, 3, device=DEVICE))
    with pytest.raises(ValueError, match="pass edge_attr"):
        conv(x, ei)
    with pytest.raises(ValueError, match="edge_attr must have shape"):
        conv(x, ei, edge_attr=torch.randn(3, 3, device=DEVICE))
    with pytest.raises(ValueError, match=r"x must have shape \[N, 4\]"):
        conv(x[:, :2], ei, edge_attr=torch.randn(2, 3, device=DEVICE))
    with pytest.raises(ValueError, match="edge_index entries"):
        conv(x, ei + 5, edge_attr=torch.randn(2, 3, device=DEVICE))
    st = prepare_dag(ei, 3, mode="P")
    assert isinstance(st, DagStructure)
    with pytest.raises(ValueError, match="structure was built for"):
        conv(x, ei, edge_attr=torch.randn(2, 3, device=DEVICE), structure=st)
    with pytest.raises(ValueError, match="algorithm"):
        PLSTMGraph(4, 8, algorithm="fast")
    with pytest.raises(ValueError, match="batch must be sorted"):
        conv(x, ei, torch.tensor([1, 0, 0], device=DEVICE), edge_attr=torch.randn(2, 3))
    paths = PLSTMGraph(4, 8, algorithm="paths").to(DEVICE)
    with pytest.raises(ValueError, match="an edge joins two graphs"):
        paths(x, ei, torch.tensor([0, 0, 1], device=DEVICE))
    with pytest.raises(ValueError, match="edge_dim=None"):
        PLSTMGraph(4, 8).to(DEVICE)(x, ei, edge_attr=torch.randn(2, 3, device=DEVICE))
    # reset_parameters restores the initialisation
    p = PLSTMGraph(4, 8, gate_weight_std=0.0)
    with torch.no_grad():
        p.source.weight.fill_(1.0)
    p.reset_parameters()
    assert p.source.weight.abs().sum() == 0 and p.source.bias[0] == -4.0


def test_a_sparse_adjacency_is_refused_by_name():
    """PyG's adj_t convention is not supported: say so, under the layer's name (a float
    adjacency was blamed on its dtype by orient_edges, an integer one crashed in aten::min)."""
    x = torch.randn(2, 4)
    ei = torch.tensor([[0, 1], [1, 0]])
    conv = PLSTMGraph(4, 8, heads=2)
    for adj in (
        torch.sparse_coo_tensor(ei, torch.ones(2), (2, 2)),
        torch.sparse_coo_tensor(ei, torch.ones(2), (2, 2)).to_sparse_csr(),
        torch.sparse_coo_tensor(ei, torch.ones(2, dtype=torch.long), (2, 2)),
    ):
        with pytest.raises(TypeError, match=r"PLSTMGraph: edge_index .* sparse adjacency"):
            conv(x, adj)
    with pytest.raises(TypeError, match=r"^PLSTMGraph: edge_index must be an int32/int64"):
        conv(x, ei.float())


def test_docstring_example_runs():
    import doctest

    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(PLSTMGraph, "PLSTMGraph", globs={}):
        runner.run(test)
    assert runner.tries >= 3 and runner.failures == 0
    with pytest.raises(ValueError, match="num_nodes must be >= 0"):
        prepare_dag(torch.zeros(2, 0, dtype=torch.long), -1)


@pytest.mark.parametrize("algorithm", ["states", "paths"])
def test_float32_against_float64_reference(algorithm):
    gen = torch.Generator().manual_seed(13)
    ei = random_undirected(20, 8, gen)
    conv = layer("P", 2, algorithm=algorithm)
    x = torch.randn(20, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    ea = torch.randn(ei.shape[1], 2, generator=gen, dtype=torch.float64).to(DEVICE)
    expected = conv(x, ei, edge_attr=ea)
    out = conv.float()(x.float(), ei, edge_attr=ea.float())
    assert out.dtype == torch.float32
    assert_close(out, expected)


@pytest.mark.parametrize("mode", ["P", "D"])
def test_structure_of_another_graph_is_refused(mode):
    layer = PLSTMGraph(8, 8, 2, mode)
    path = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    other = torch.tensor([[0, 2, 2, 1, 1, 3], [2, 0, 1, 2, 3, 1]])  # same sizes, other edges
    x = torch.randn(4, 8)
    structure = prepare_dag(path, 4, mode=mode)
    torch.testing.assert_close(layer(x, path, structure=structure), layer(x, path))
    with pytest.raises(ValueError, match="different edge_index"):
        layer(x, other, structure=structure)
    # a structure of part of the graph leaves edges out: refused, also when it has no edges
    for part in (path[:, :2], path[:, :0]):
        with pytest.raises(ValueError, match="different edge_index"):
            layer(x, path, structure=prepare_dag(part, 4, mode=mode))
    # self-loops are not DAG edges, so a structure without them still fits
    looped = torch.cat([path, torch.tensor([[2], [2]])], dim=1)
    torch.testing.assert_close(layer(x, looped, structure=structure), layer(x, path))
    # "directed" keeps every column: a structure of fewer columns is refused
    dag = torch.tensor([[0, 1, 2], [1, 2, 3]])
    directed = prepare_dag(dag[:, :2], 4, mode=mode, orientation="directed")
    with pytest.raises(ValueError, match="different edge_index"):
        PLSTMGraph(8, 8, 2, mode, orientation="directed")(x, dag, structure=directed)


@pytest.mark.parametrize("algorithm", ["states", "paths"])
def test_recurrence_checks_every_gate_shape(algorithm):
    """The "states" form broadcasts: a gate of the wrong shape must be refused up front,
    by every algorithm alike."""
    conv = PLSTMGraph(4, 4, 2)
    ei = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    st = prepare_dag(ei, 4)
    q, k, v, S, T, M, D = conv.gates(torch.randn(4, 4), st)
    good = {"source": S, "transition": T, "mark": M, "direct": D}
    for name, g in good.items():
        for bad in (g[:1], g[:, 0]):
            args = dict(good, **{name: bad})
            with pytest.raises(ValueError, match=name):
                conv.recurrence(q, k, v, **args, structure=st, algorithm=algorithm)
    args = dict(good, direct=D.double())
    with pytest.raises(ValueError, match=r"direct is torch\.float64"):
        conv.recurrence(q, k, v, **args, structure=st, algorithm=algorithm)
    with pytest.raises(ValueError, match="nodes"):
        conv.recurrence(q[:3], k[:3], v[:3], **good, structure=st, algorithm=algorithm)


def test_forward_names_a_dtype_mismatch():
    conv = PLSTMGraph(4, 4, 2)
    ei = torch.tensor([[0, 1], [1, 0]])
    for dtype in (torch.float64, torch.float16):
        with pytest.raises(ValueError, match=r"parameters are torch\.float32"):
            conv(torch.randn(2, 4, dtype=dtype), ei)


def test_stacked_layers_run_under_autocast():
    """Under autocast the second layer's input is the first's bfloat16 output while the
    parameters stay float32: the dtype check must let that through."""
    first, second = PLSTMGraph(4, 4, 2), PLSTMGraph(4, 4, 2)
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    x = torch.randn(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = first(x, ei)
        assert h.dtype == torch.bfloat16
        out = second(h, ei)
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("algorithm", ["states", "paths"])
def test_recurrence_names_a_structure_of_the_wrong_type(algorithm):
    conv = PLSTMGraph(4, 4, 2)
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    gates = conv.gates(torch.randn(3, 4), prepare_dag(ei, 3))
    for bad in (None, ei):
        with pytest.raises(TypeError, match="structure must be a DagStructure"):
            PLSTMGraph.recurrence(*gates, bad, algorithm=algorithm)


def test_pmode_normalize_by_hand():
    # T = t / (0.5 + sum over the outgoing successors of |t|), c = 0.5 the documented default
    t = torch.tensor([[1.0], [-3.0], [2.0]], dtype=torch.float64)
    lg_src = torch.tensor([0, 0, 1])  # state 0 has two successors, state 1 one
    T = pmode_normalize(t, lg_src, 2)
    expected = torch.tensor([[1 / 4.5], [-3 / 4.5], [2 / 2.5]], dtype=torch.float64)
    torch.testing.assert_close(T, expected)
