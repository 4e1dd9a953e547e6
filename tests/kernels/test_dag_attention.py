"""dag_attention: the compiled kernel against the dense reference and against an edge-state
loop (the recurrence it stands for), gradients (float64 gradcheck), plans of a subset of
graphs, empty inputs, thread-count invariance and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest
import torch

from graphseq.kernels.dag_attention import DagAttentionPlan, dag_attention, native
from graphseq.kernels.dag_scan import DagCycleError

needs_native = pytest.mark.skipif(
    not native.available(), reason=f"no C compiler: {native.unavailable_reason()}"
)


@pytest.fixture(autouse=True, params=["pairs", "rows"])
def form(request, monkeypatch):
    """Every test runs the kernel's two forms of the products: pair by pair (the default for
    sparse graphs) and by rows (the default for graphs with many pairs per node, e.g. grids;
    forced here on small graphs, so C = 8 also runs its compiled-constant row kernels)."""
    monkeypatch.setattr(native, "DENSE_ROWS", 1 << 40 if request.param == "pairs" else 0)
    return request.param


def random_batch(sizes, gen, density=0.35, prune=False):
    """A batch of random DAGs (edges from lower to higher node index) and their line graphs
    (``e' -> e`` whenever ``e'`` enters the node ``e`` leaves; with ``prune`` a random half of
    them, as D-mode's multitree pruning keeps a subset)."""
    edges, batch, start = [], [], 0
    for g, n in enumerate(sizes):
        for i in range(n):
            for j in range(i + 1, n):
                if torch.rand((), generator=gen) < density:
                    edges.append((start + i, start + j))
        batch += [g] * n
        start += n
    edge_index = torch.tensor(edges, dtype=torch.long).t().reshape(2, -1)
    src, dst = edge_index
    pairs = torch.nonzero(dst.unsqueeze(1) == src.unsqueeze(0))  # [l, 2]: (e', e)
    lg = pairs.t().contiguous()
    if prune and lg.shape[1]:
        lg = lg[:, torch.rand(lg.shape[1], generator=gen) < 0.5]
    return edge_index, lg, torch.tensor(batch, dtype=torch.long), start


def random_inputs(N, E, L, H, C, gen, dtype=torch.float64):
    qkv = torch.randn(N, 3, H, C, generator=gen, dtype=dtype)
    source, mark = (torch.rand(E, H, generator=gen, dtype=dtype) for _ in range(2))
    transition = torch.rand(L, H, generator=gen, dtype=dtype) * 2 - 1  # negative gates too
    if L:
        transition[0] = 0.0  # and an exact zero
    direct = torch.rand(N, H, generator=gen, dtype=dtype)
    return qkv, source, transition, mark, direct


def edge_state_loop(qkv, source, transition, mark, direct, edge_index, lg, scale):
    """C_e = sum_{e' -> e} T C_e' + S_e k v^T, h_n = sum_{e in in(n)} M_e q_n^T C_e +
    D_n (q_n . k_n) v_n, one edge at a time in a topological order of the line graph."""
    q, k, v = qkv.double().unbind(1)
    q = q * scale
    src, dst = edge_index.tolist()
    h = direct.double()[..., None] * (q * k).sum(-1, keepdim=True) * v
    E = edge_index.shape[1]
    preds = [[] for _ in range(E)]
    for j, (a, b) in enumerate(lg.t().tolist()):
        preds[b].append((j, a))
    done, C = [False] * E, [None] * E
    while not all(done):
        for e in range(E):
            if done[e] or not all(done[a] for _, a in preds[e]):
                continue
            c = source[e].double()[:, None, None] * k[src[e]][:, :, None] * v[src[e]][:, None, :]
            for j, a in preds[e]:
                c = c + transition[j].double()[:, None, None] * C[a]
            C[e], done[e] = c, True
            h[dst[e]] += mark[e].double()[:, None] * torch.einsum("hk,hkv->hv", q[dst[e]], c)
    return h


SIZES = [5, 1, 9, 2, 13, 3, 7]


@needs_native
@pytest.mark.parametrize("prune", [False, True])
# C = 70: more than the row kernels' 64-column block, so two blocks
@pytest.mark.parametrize("H,C", [(1, 1), (3, 5), (2, 8), (2, 17), (1, 70)])
def test_native_matches_reference_and_edge_state_loop(prune, H, C):
    gen = torch.Generator().manual_seed(H * 31 + C + prune)
    edge_index, lg, batch, N = random_batch(SIZES, gen, prune=prune)
    inputs = random_inputs(N, edge_index.shape[1], lg.shape[1], H, C, gen)
    plan = DagAttentionPlan.from_graph(edge_index, lg, N, batch)
    loop = edge_state_loop(*inputs, edge_index, lg, 0.7)
    ref = dag_attention(*inputs, plan, scale=0.7, backend="reference")
    got = dag_attention(*inputs, plan, scale=0.7, backend="native")
    assert got.dtype == torch.float64
    assert (ref - loop).abs().max().item() <= 1e-12
    assert (got - loop).abs().max().item() <= 1e-12
    # float32 inputs run in float32
    got32 = dag_attention(*(t.float() for t in inputs), plan, scale=0.7, backend="native")
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), loop, atol=1e-4, rtol=1e-4)


@needs_native
@pytest.mark.parametrize("prune", [False, True])
@pytest.mark.parametrize("C", [3, 4])  # 4: a head size the row kernels compile as a constant
def test_native_gradcheck_every_input(prune, C):
    gen = torch.Generator().manual_seed(3 + prune)
    edge_index, lg, batch, N = random_batch([4, 1, 6, 3], gen, density=0.5, prune=prune)
    inputs = random_inputs(N, edge_index.shape[1], lg.shape[1], 2, C, gen)
    plan = DagAttentionPlan.from_graph(edge_index, lg, N, batch)
    inputs = tuple(t.requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(
        lambda *a: dag_attention(*a, plan, scale=0.5, backend="native"), inputs, fast_mode=False
    )


@needs_native
def test_native_gradients_match_reference_float32():
    gen = torch.Generator().manual_seed(5)
    edge_index, lg, batch, N = random_batch(SIZES, gen)
    inputs = random_inputs(N, edge_index.shape[1], lg.shape[1], 3, 8, gen)
    plan = DagAttentionPlan.from_graph(edge_index, lg, N, batch)
    dy = torch.randn(N, 3, 8, generator=gen, dtype=torch.float64)
    ref_in = tuple(t.clone().requires_grad_() for t in inputs)
    ref = dag_attention(*ref_in, plan, scale=0.3, backend="reference")
    want = torch.autograd.grad((ref * dy).sum(), ref_in)
    got_in = tuple(t.float().requires_grad_() for t in inputs)
    got = dag_attention(*got_in, plan, scale=0.3, backend="native")
    grads = torch.autograd.grad((got * dy.float()).sum(), got_in)
    for g, w in zip(grads, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, atol=2e-4, rtol=2e-4)


@needs_native
def test_plan_of_a_subset_of_graphs_leaves_the_others_zero():
    gen = torch.Generator().manual_seed(8)
    edge_index, lg, batch, N = random_batch(SIZES, gen)
    inputs = tuple(
        t.requires_grad_() for t in random_inputs(N, edge_index.shape[1], lg.shape[1], 2, 4, gen)
    )
    graphs = torch.tensor([True, False, True, True, False, True, False])
    plan = DagAttentionPlan.from_graph(edge_index, lg, N, batch, graphs)
    full = DagAttentionPlan.from_graph(edge_index, lg, N, batch)
    got = dag_attention(*inputs, plan, backend="native")
    want = dag_attention(*inputs, full, backend="native")
    kept = graphs[batch]
    assert torch.equal(got[kept], want[kept]) and not got[~kept].any()
    dy = torch.randn_like(got)
    grads = torch.autograd.grad((got * dy).sum(), inputs)
    assert not grads[0][~kept].any() and not grads[4][~kept].any()
    edge_kept = kept[edge_index[0]]
    assert not grads[1][~edge_kept].any() and not grads[3][~edge_kept].any()
    assert not grads[2][~edge_kept[lg[1]]].any()
    # the planned graphs' gradients are those of the full plan
    want_grads = torch.autograd.grad((want * dy).sum(), inputs)
    torch.testing.assert_close(grads[0][kept], want_grads[0][kept], atol=1e-12, rtol=0)


@needs_native
def test_threads_give_the_same_bits():
    gen = torch.Generator().manual_seed(9)
    edge_index, lg, batch, N = random_batch(SIZES * 3, gen)
    inputs = random_inputs(N, edge_index.shape[1], lg.shape[1], 2, 6, gen, torch.float32)
    plan = DagAttentionPlan.from_graph(edge_index, lg, N, batch)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = dag_attention(*inputs, plan, backend="native")
        torch.set_num_threads(2)
        two = dag_attention(*inputs, plan, backend="native")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@needs_native
@pytest.mark.parametrize("sizes", [[], [1], [3, 1], [4]])
def test_empty_and_edgeless_inputs(sizes):
    gen = torch.Generator().manual_seed(10)
    edge_index, lg, batch, N = random_batch(sizes, gen, density=0.0 if sizes == [4] else 0.35)
    inputs = tuple(
        t.requires_grad_() for t in random_inputs(N, edge_index.shape[1], lg.shape[1], 2, 3, gen)
    )
    plan = DagAttentionPlan.from_graph(edge_index, lg, N, batch if N else None)
    got = dag_attention(*inputs, plan, backend="native")
    want = dag_attention(*inputs, plan, backend="reference")
    assert got.shape == (N, 2, 3)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    got.sum().backward()
    assert inputs[0].grad is not None and inputs[0].grad.shape == inputs[0].shape


@needs_native
def test_a_non_finite_key_does_not_reach_the_gradients_of_other_edges():
    """README 'Non-finite values': an inf in k of node 2 reaches only what is downstream of
    it. The mark gate of e2 (3 -> 5) does not see node 2: its gradient stays that of a finite
    k (the backward used to sum dG[5] . P[e2] over e2's whole span, 0 * inf = NaN)."""
    ei = torch.tensor([[0, 2, 3, 4], [3, 4, 5, 5]])  # e0: 0->3, e1: 2->4, e2: 3->5, e3: 4->5
    lg = torch.tensor([[0, 1], [2, 3]])  # e0 -> e2, e1 -> e3
    plan = DagAttentionPlan.from_graph(ei, lg, 6)
    gen = torch.Generator().manual_seed(0)
    qkv, *gates = random_inputs(6, 4, 2, 1, 2, gen)
    bad = qkv.clone()
    bad[2, 1] = float("inf")
    for node in (3, 5):  # a loss on node 3 (M of e2 unused) and on node 5 (M of e2 used)
        dy = torch.zeros(6, 1, 2, dtype=torch.float64)
        dy[node] = 1.0
        grads = []
        for q in (qkv, bad):
            inputs = [q, *(g.clone().requires_grad_() for g in gates)]
            h = dag_attention(*inputs, plan, backend="native")
            grads.append(torch.autograd.grad((h * dy).sum(), inputs[1:]))
        (_, dt_ok, dm_ok, _), (_, dt_bad, dm_bad, _) = grads
        torch.testing.assert_close(dm_bad[[0, 2]], dm_ok[[0, 2]], atol=1e-12, rtol=0)
        torch.testing.assert_close(dt_bad[0], dt_ok[0], atol=1e-12, rtol=0)


def test_plan_checks_its_arguments():
    ei = torch.tensor([[0, 1], [1, 2]])
    lg = torch.tensor([[0], [1]])
    with pytest.raises(ValueError, match="edge of edge_index joins two graphs"):
        DagAttentionPlan.from_graph(ei, lg, 3, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="batch must have shape"):
        DagAttentionPlan.from_graph(ei, lg, 3, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="graphs must be a bool tensor"):
        DagAttentionPlan.from_graph(ei, lg, 3, None, torch.tensor([1]))
    with pytest.raises(ValueError, match="level must have shape"):
        DagAttentionPlan.from_graph(ei, lg, 3, level=torch.zeros(5, dtype=torch.long))
    with pytest.raises(DagCycleError):
        DagAttentionPlan.from_graph(ei, torch.tensor([[0, 1], [1, 0]]), 3)
    # what the kernel relies on and would otherwise read or write out of bounds
    with pytest.raises(ValueError, match="batch must be sorted"):
        DagAttentionPlan.from_graph(torch.tensor([[0], [2]]), lg[:, :0], 3, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match=r"edge_index must hold node ids in \[0, 3\)"):
        DagAttentionPlan.from_graph(torch.tensor([[0], [3]]), lg[:, :0], 3)
    with pytest.raises(ValueError, match=r"edge_index must hold node ids in \[0, 3\)"):
        DagAttentionPlan.from_graph(torch.tensor([[-1], [2]]), lg[:, :0], 3)
    with pytest.raises(ValueError, match=r"lg_edge_index must hold edge ids in \[0, 2\)"):
        DagAttentionPlan.from_graph(ei, torch.tensor([[0], [2]]), 3)
    with pytest.raises(ValueError, match=r"edge_index must have shape \[2, E\]"):
        DagAttentionPlan.from_graph(ei[0], lg, 3)
    with pytest.raises(ValueError, match="level is not a topological order"):
        DagAttentionPlan.from_graph(ei, lg, 3, level=torch.tensor([1, 0]))
    # a topological order shifted below zero once sorted one graph's edges into another's
    two = torch.tensor([[0, 1, 3, 4], [1, 2, 4, 5]])
    with pytest.raises(ValueError, match="level must be >= 0, got a minimum of -10"):
        DagAttentionPlan.from_graph(
            two, torch.tensor([[0, 2], [1, 3]]), 6, torch.tensor([0, 0, 0, 1, 1, 1]),
            level=torch.tensor([0, 1, 0, 1]) - 10,
        )  # fmt: skip
    # integer tensors and an int count only: a float id or graph would be truncated
    with pytest.raises(TypeError, match="edge_index must be an integer tensor"):
        DagAttentionPlan.from_graph(ei.float(), lg, 3)
    with pytest.raises(TypeError, match="batch must be an integer tensor"):
        DagAttentionPlan.from_graph(ei, lg, 3, torch.tensor([0.9, 0.9, 1.5]))
    with pytest.raises(TypeError, match=r"lg_edge_index must be a torch\.Tensor, got list"):
        DagAttentionPlan.from_graph(ei, lg.tolist(), 3)
    with pytest.raises(ValueError, match=r"num_nodes must be a non-negative int, got 3\.0"):
        DagAttentionPlan.from_graph(ei, lg, 3.0)
    with pytest.raises(TypeError, match="graphs must be a bool tensor of shape \\[1\\], got list"):
        DagAttentionPlan.from_graph(ei, lg, 3, graphs=[True])


def test_plan_of_large_levels_keeps_every_graph_s_edges_together():
    """Any non-negative topological level works, also a large one: sorting by a combined key
    graph * (max level + 1) + level overflowed and put graph 1's edges in graph 0's run."""
    ei = torch.tensor([[0, 1, 3, 4, 6, 7], [1, 2, 4, 5, 7, 8]])  # three chains a -> b -> c
    lg = torch.tensor([[0, 2, 4], [1, 3, 5]])
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    good = DagAttentionPlan.from_graph(ei, lg, 9, batch)
    level = torch.tensor([0, 1, 0, 1, 0, 1]) + 2**62
    shifted = DagAttentionPlan.from_graph(ei, lg, 9, batch, level=level)
    assert good.edge.tolist() == shifted.edge.tolist() == [0, 1, 2, 3, 4, 5]
    gen = torch.Generator().manual_seed(0)
    inputs = random_inputs(9, 6, 3, 1, 2, gen)
    torch.testing.assert_close(
        dag_attention(*inputs, shifted, backend="reference"),
        dag_attention(*inputs, good, backend="reference"),
    )


def test_op_checks_its_arguments():
    ei = torch.tensor([[0, 1], [1, 2]])
    lg = torch.tensor([[0], [1]])
    plan = DagAttentionPlan.from_graph(ei, lg, 3)
    gen = torch.Generator().manual_seed(0)
    qkv, s, t, m, d = random_inputs(3, 2, 1, 2, 4, gen)
    with pytest.raises(ValueError, match=r"qkv must have shape \[N, 3, H, C\]"):
        dag_attention(qkv[:, :2], s, t, m, d, plan)
    with pytest.raises(ValueError, match="qkv has 2 nodes but the plan 3"):
        dag_attention(qkv[:2], s, t, m, d[:2], plan)
    with pytest.raises(ValueError, match=r"transition must have shape \[1, 2\]"):
        dag_attention(qkv, s, t[:, :1], m, d, plan)
    with pytest.raises(ValueError, match=r"mark must have shape \[2, 2\]"):
        dag_attention(qkv, s, t, m[:1], d, plan)
    with pytest.raises(TypeError, match="direct must be a floating-point tensor"):
        dag_attention(qkv, s, t, m, d.long(), plan)
    with pytest.raises(TypeError, match=r"qkv must be a torch\.Tensor"):
        dag_attention(qkv.tolist(), s, t, m, d, plan)
    with pytest.raises(ValueError, match="backend must be one of"):
        dag_attention(qkv, s, t, m, d, plan, backend="torch")
    with pytest.raises(TypeError, match="plan must be a DagAttentionPlan"):
        dag_attention(qkv, s, t, m, d, None)
    for bad in ("x", float("nan"), torch.tensor(0.5)):
        with pytest.raises(ValueError, match="scale must be a finite real number"):
            dag_attention(qkv, s, t, m, d, plan, scale=bad)


def test_reference_output_of_an_empty_plan_takes_gradients():
    """With nothing planned the reference (the fallback without a compiler) returns zeros
    that stay connected to the inputs, so a training step's backward runs."""
    gen = torch.Generator().manual_seed(1)
    ei = torch.tensor([[0, 1], [1, 2]])
    plan = DagAttentionPlan.from_graph(
        ei, torch.tensor([[0], [1]]), 3, graphs=torch.tensor([False])
    )
    inputs = tuple(t.requires_grad_() for t in random_inputs(3, 2, 1, 2, 4, gen))
    out = dag_attention(*inputs, plan, backend="reference")
    assert torch.equal(out, torch.zeros(3, 2, 4, dtype=torch.float64))
    out.sum().backward()
    assert all(torch.equal(t.grad, torch.zeros_like(t)) for t in inputs)


@needs_native
def test_a_compiler_command_with_arguments_builds(monkeypatch, tmp_path):
    """$CC may hold a command with arguments ("ccache cc", "cc -m64"), as make allows."""
    monkeypatch.setenv("CC", "cc -DGRAPHSEQ_CC_ARGUMENT=1")
    monkeypatch.setenv("GRAPHSEQ_CACHE_DIR", str(tmp_path))
    assert native._compile("double") is not None
    assert list(tmp_path.glob("dag_attention_double_*.so"))


def test_missing_compiler_is_reported_not_raised(monkeypatch, tmp_path):
    """Without a C compiler the library cannot be built: _compile raises OSError naming the
    compiler (which _library turns into unavailable_reason, and callers into a fallback)."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("GRAPHSEQ_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(OSError, match="no-such-cc"):
        native._compile("float")


def test_the_temporary_fallback_folder_must_be_this_users_alone(monkeypatch, tmp_path):
    """Without a usable cache folder the libraries go to <tmp>/graphseq-<uid>, a predictable
    name in a folder every user can write to: one that another user made (and may write to)
    must not be used, or a library planted there with the predictable name would be loaded."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("GRAPHSEQ_CACHE_DIR", str(blocker / "cache"))  # cannot be made
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    planted = tmp_path / f"graphseq-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)  # as made by someone else for us: writable by all
    try:
        os.chown(planted, os.getuid() + 1, -1)  # another owner (possible when run as root)
    except PermissionError:
        pass
    # someone else's, or ours but writable by others (who may have planted a file): never used
    with pytest.raises(OSError, match="GRAPHSEQ_CACHE_DIR"):
        native._writable_folder()
    if planted.stat().st_uid == os.getuid():
        planted.chmod(0o755)  # ours, readable by others only: used, closed to others
        assert native._writable_folder() == planted
        assert planted.stat().st_mode & 0o077 == 0


@needs_native
def test_a_cached_library_that_cannot_be_loaded_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHSEQ_CACHE_DIR", str(tmp_path))
    # built in another process: this one must not have it loaded (dlopen reuses a loaded path)
    code = "from graphseq.kernels.dag_attention import native; native._compile('double')"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tempfile.gettempdir())
    (lib,) = tmp_path.glob("dag_attention_double_*.so")
    lib.write_bytes(b"")  # truncated
    assert native._compile("double") is not None
    assert lib.stat().st_size > 0


@needs_native
def test_mixed_dtypes_run_in_the_widest_and_the_backend_variable(monkeypatch):
    """float32 qkv with float64 gates: computed in float64 (the gates are never narrowed),
    equal to the reference; GRAPHSEQ_BACKEND=reference selects the reference."""
    gen = torch.Generator().manual_seed(5)
    edge_index, lg, batch, N = random_batch(SIZES, gen)
    qkv, *gates = random_inputs(N, edge_index.shape[1], lg.shape[1], 2, 3, gen)
    plan = DagAttentionPlan.from_graph(edge_index, lg, N, batch)
    qkv32 = qkv.float()
    got = dag_attention(qkv32, *gates, plan, backend="native")
    ref = dag_attention(qkv32.double(), *gates, plan, backend="reference")
    assert got.dtype == torch.float64
    assert (got - ref).abs().max().item() <= 1e-12
    # bfloat16 qkv with float32 gates (autocast) runs in float32
    assert dag_attention(qkv.bfloat16(), *(g.float() for g in gates), plan).dtype == torch.float32
    monkeypatch.setenv("GRAPHSEQ_BACKEND", "reference")
    assert dag_attention(qkv32, *(g.float() for g in gates), plan).dtype == torch.float64
    monkeypatch.setenv("GRAPHSEQ_BACKEND", "torch")  # a path this op lacks: the default
    assert dag_attention(qkv32, *(g.float() for g in gates), plan).dtype == torch.float32
