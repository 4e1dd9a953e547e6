"""dag_scan: the wavefront and Triton paths against the loop reference, a dense solve, and bad
input (the Triton path runs in the interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch

from graphseq.kernels.dag_scan import DagCycleError, DagScanPlan, dag_scan
from graphseq.testing import DEVICE, FAST_BACKENDS, assert_close, requires_triton


def random_dag(num_states: int, p: float, gen: torch.Generator, parallel: bool = True):
    """Edges from lower to higher rank of a random permutation, in shuffled order."""
    rank = torch.randperm(num_states, generator=gen)
    a, b = torch.triu_indices(num_states, num_states, offset=1)
    keep = torch.rand(a.numel(), generator=gen) < p
    src, dst = rank[a[keep]], rank[b[keep]]
    if parallel and src.numel() > 2:  # a few parallel edges
        dup = torch.randint(src.numel(), (2,), generator=gen)
        src, dst = torch.cat([src, src[dup]]), torch.cat([dst, dst[dup]])
    perm = torch.randperm(src.numel(), generator=gen)
    return torch.stack([src[perm], dst[perm]]).to(DEVICE)


def random_weights(L: int, H: int, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """Weights in (-1.2, 1.2) with some exact zeros and sign changes."""
    w = (torch.rand(L, H, generator=gen, dtype=torch.float64) * 2.4 - 1.2).to(dtype)
    w[torch.rand(L, H, generator=gen) < 0.15] = 0.0
    return w.to(DEVICE)


def batch_of(graphs):
    """Concatenate (edge_index, num_states) pairs into one disjoint DAG."""
    edges, offset = [], 0
    for ei, n in graphs:
        edges.append(ei + offset)
        offset += n
    return torch.cat(edges, 1), offset


def dense_solution(x, w, edge_index):
    """C = (I - A)^{-1} x per head, with A[s, p] = sum of the weights of the edges p -> s."""
    S, H = x.shape[:2]
    out = []
    for h in range(H):
        A = torch.zeros(S, S, dtype=torch.float64, device=x.device)
        A.index_put_((edge_index[1], edge_index[0]), w[:, h], accumulate=True)
        eye = torch.eye(S, dtype=torch.float64, device=x.device)
        out.append(torch.linalg.solve(eye - A, x[:, h].reshape(S, -1)))
    return torch.stack(out, 1).reshape(x.shape)


@pytest.mark.parametrize("num_states,p", [(1, 0.5), (2, 1.0), (7, 0.4), (33, 0.15), (101, 0.05)])
@pytest.mark.parametrize("state", [(), (5,), (3, 7)])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_fast_paths_match_reference_float64(num_states, p, state, backend):
    gen = torch.Generator().manual_seed(num_states * 31 + len(state))
    ei = random_dag(num_states, p, gen)
    H = 3
    x = torch.randn(num_states, H, *state, generator=gen, dtype=torch.float64).to(DEVICE)
    w = random_weights(ei.shape[1], H, gen)
    ref = dag_scan(x, w, ei, backend="reference")
    out = dag_scan(x, w, ei, backend=backend)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert (out - ref).abs().max().item() <= 1e-12 * max(1.0, ref.abs().max().item())
    assert_close(ref, dense_solution(x, w, ei))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_low_precision_against_float64(dtype, backend):
    gen = torch.Generator().manual_seed(3)
    ei = random_dag(40, 0.1, gen)
    x = torch.randn(40, 2, 4, 3, generator=gen, dtype=torch.float64).to(DEVICE)
    w = random_weights(ei.shape[1], 2, gen) * 0.5
    ref = dag_scan(x, w, ei, backend="reference")
    out = dag_scan(x.to(dtype), w.to(dtype), ei, backend=backend)
    assert out.dtype == dtype
    # inputs are rounded to dtype before the scan, so compare with the rounded problem
    ref_rounded = dag_scan(x.to(dtype).double(), w.to(dtype).double(), ei, backend="reference")
    assert_close(out, ref_rounded, dtype=dtype)
    assert ref.shape == out.shape


@pytest.mark.parametrize("num_states,p", [(9, 0.4), (31, 0.12)])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gradients_match_reference(num_states, p, backend):
    gen = torch.Generator().manual_seed(num_states)
    ei = random_dag(num_states, p, gen)
    H = 2
    x = torch.randn(num_states, H, 3, 2, generator=gen, dtype=torch.float64).to(DEVICE)
    w = random_weights(ei.shape[1], H, gen)
    dy = torch.randn(num_states, H, 3, 2, generator=gen, dtype=torch.float64).to(DEVICE)
    grads = {}
    for b in ("reference", backend):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        (dag_scan(xr, wr, ei, backend=b) * dy).sum().backward()
        grads[b] = (xr.grad, wr.grad)
    for a, b in zip(grads[backend], grads["reference"]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gradcheck_small(backend):
    gen = torch.Generator().manual_seed(5)
    ei = random_dag(6, 0.6, gen)
    x = torch.randn(6, 2, 2, 2, generator=gen, dtype=torch.float64).to(DEVICE)
    w = random_weights(ei.shape[1], 2, gen)
    x.requires_grad_()
    w.requires_grad_()
    plan = DagScanPlan.from_edge_index(ei, 6)
    # fast mode (a random projection of the Jacobian) keeps the interpreted kernels quick
    assert torch.autograd.gradcheck(
        lambda a, b: dag_scan(a, b, ei, plan=plan, backend=backend),
        (x, w),
        fast_mode=backend == "triton",
    )


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_only_weight_or_only_x_requires_grad(backend):
    gen = torch.Generator().manual_seed(6)
    ei = random_dag(8, 0.5, gen)
    x = torch.randn(8, 1, 2, generator=gen, dtype=torch.float64).to(DEVICE)
    w = random_weights(ei.shape[1], 1, gen).requires_grad_()
    dag_scan(x, w, ei, backend=backend).sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()
    x.requires_grad_()
    dag_scan(x, w.detach(), ei, backend=backend).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_batch_equals_graphs_alone(backend):
    gen = torch.Generator().manual_seed(7)
    sizes = [5, 1, 0, 17, 2, 9]
    graphs = [(random_dag(n, 0.3, gen), n) for n in sizes]
    ei, S = batch_of(graphs)
    x = torch.randn(S, 2, 3, generator=gen, dtype=torch.float64).to(DEVICE)
    w = random_weights(ei.shape[1], 2, gen)
    out = dag_scan(x, w, ei, backend=backend)
    offset, e_off = 0, 0
    for g_ei, n in graphs:
        L = g_ei.shape[1]
        alone = dag_scan(x[offset : offset + n], w[e_off : e_off + L], g_ei, backend=backend)
        assert torch.equal(out[offset : offset + n], alone)  # bit-identical
        offset, e_off = offset + n, e_off + L


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_empty_and_single_state(backend):
    x = torch.zeros(0, 2, 3, 3, dtype=torch.float64, device=DEVICE)
    w = torch.zeros(0, 2, dtype=torch.float64, device=DEVICE)
    ei = torch.zeros(2, 0, dtype=torch.long, device=DEVICE)
    for b in ("reference", backend):
        assert dag_scan(x, w, ei, backend=b).shape == (0, 2, 3, 3)
    x1 = torch.randn(1, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    out = dag_scan(x1, w, ei, backend=backend)
    assert torch.equal(out, x1)
    out.sum().backward()
    assert torch.equal(x1.grad, torch.ones_like(x1))
    assert DagScanPlan.from_edge_index(ei, 0).depth == 0
    # states with no entries (a zero-size state shape) on a graph with edges
    chain = torch.tensor([[0, 1], [1, 2]], device=DEVICE)
    x0 = torch.zeros(3, 2, 0, dtype=torch.float64, device=DEVICE, requires_grad=True)
    w0 = torch.ones(2, 2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    out = dag_scan(x0, w0, chain, backend=backend)
    assert out.shape == (3, 2, 0)
    gx, gw = torch.autograd.grad(out.sum(), (x0, w0))
    assert gx.shape == x0.shape and torch.equal(gw, torch.zeros_like(w0))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_zero_weights_cut_paths_and_nan_stays_downstream(backend):
    # chain 0 -> 1 -> 2 -> 3 with w(1 -> 2) = 0: state 0 no longer reaches 2 and 3
    ei = torch.tensor([[0, 1, 2], [1, 2, 3]], device=DEVICE)
    x = torch.zeros(4, 1, 1, dtype=torch.float64, device=DEVICE)
    x[0] = 1.0
    w = torch.tensor([[2.0], [0.0], [-3.0]], dtype=torch.float64, device=DEVICE)
    assert dag_scan(x, w, ei, backend=backend).flatten().tolist() == [1.0, 2.0, 0.0, 0.0]
    # NaN at state 1 of a diamond-free batch reaches 1's descendants only
    ei = torch.tensor([[0, 1, 3], [1, 2, 4]], device=DEVICE)
    x = torch.ones(5, 1, 1, dtype=torch.float64, device=DEVICE)
    x[1] = float("nan")
    w = torch.ones(3, 1, dtype=torch.float64, device=DEVICE)
    out = dag_scan(x, w, ei, backend=backend).flatten()
    assert torch.isnan(out).tolist() == [False, True, True, False, False]


def test_plan_levels_are_longest_paths():
    gen = torch.Generator().manual_seed(11)
    ei = random_dag(60, 0.08, gen)
    plan = DagScanPlan.from_edge_index(ei, 60)
    longest = [0] * 60
    from graphseq.kernels.dag_scan.reference import topological_order

    preds = [[] for _ in range(60)]
    for s, d in ei.t().tolist():
        preds[d].append(s)
    for s in topological_order(ei, 60):
        longest[s] = max((longest[p] + 1 for p in preds[s]), default=0)
    assert plan.level.tolist() == longest
    assert plan.depth == max(longest) + 1
    assert (plan.level[plan.src] < plan.level[plan.dst]).all()
    # edges sorted by target level; edge_perm maps back to the caller's edges
    assert torch.equal(plan.src, ei[0][plan.edge_perm])
    assert sorted(plan.edge_perm.tolist()) == list(range(ei.shape[1]))
    assert "depth=" in repr(plan) and plan.to("cpu").depth == plan.depth


@pytest.mark.parametrize(
    "edges,on_cycle",
    [
        ([[0, 1, 2, 3], [1, 2, 3, 1]], {1, 2, 3}),  # 0 -> (1 -> 2 -> 3 -> 1)
        ([[0, 2], [1, 2]], {2}),  # self-loop
        ([[4, 0, 1], [0, 1, 0]], {0, 1}),
    ],
)
def test_cycle_raises_naming_a_state_on_it(edges, on_cycle):
    ei = torch.tensor(edges, device=DEVICE)
    x = torch.zeros(5, 1, 1, device=DEVICE)
    w = torch.ones(ei.shape[1], 1, device=DEVICE)
    for backend in ("torch", "reference"):
        with pytest.raises(DagCycleError) as info:
            dag_scan(x, w, ei, backend=backend)
        assert info.value.state in on_cycle
        assert str(info.value.state) in str(info.value)
        assert isinstance(info.value, ValueError)


def test_bad_arguments():
    ei = torch.tensor([[0, 1], [1, 2]], device=DEVICE)
    x = torch.zeros(3, 2, 4, device=DEVICE)
    w = torch.zeros(2, 2, device=DEVICE)
    with pytest.raises(ValueError, match="backend"):
        dag_scan(x, w, ei, backend="cuda-graph")
    with pytest.raises(ValueError, match="weight must have shape"):
        dag_scan(x, w[:1], ei)
    with pytest.raises(TypeError, match="x must be a floating"):
        dag_scan(x.long(), w, ei)
    with pytest.raises(ValueError, match="weight has dtype"):
        dag_scan(x, w.double(), ei)
    with pytest.raises(TypeError, match="edge_index must be an int"):
        dag_scan(x, w, ei.float())
    with pytest.raises(ValueError, match=r"edge_index must have shape \[2, L\]"):
        dag_scan(x, w, ei[:1])
    with pytest.raises(ValueError, match="x must have shape"):
        dag_scan(torch.zeros(3, device=DEVICE), w, ei)
    with pytest.raises(ValueError, match="num_states"):
        dag_scan(x[:2], w, ei)  # state 2 does not exist
    plan = DagScanPlan.from_edge_index(ei, 4)
    with pytest.raises(ValueError, match="plan was built for 4 states"):
        dag_scan(x, w, ei, plan=plan)
    with pytest.raises(TypeError, match="plan must be a DagScanPlan"):
        dag_scan(x, w, ei, plan="levels")
    with pytest.raises(TypeError, match="num_states must be an int"):
        DagScanPlan.from_edge_index(ei, 3.0)


def test_docstring_examples_run():
    import doctest

    from graphseq.kernels.dag_scan import plan as plan_module

    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for obj, name in ((dag_scan, "dag_scan"), (plan_module.DagScanPlan, "DagScanPlan")):
        for test in doctest.DocTestFinder().find(obj, name, globs={"torch": torch}):
            runner.run(test)
    assert runner.tries >= 5 and runner.failures == 0


def test_plan_of_another_graph_with_the_same_sizes_is_refused():
    x, w = torch.ones(3, 1, 1), torch.ones(2, 1)
    chain = torch.tensor([[0, 1], [1, 2]])
    other = DagScanPlan.from_edge_index(torch.tensor([[2, 1], [1, 0]]), 3)
    with pytest.raises(ValueError, match="different edge_index"):
        dag_scan(x, w, chain, plan=other)
    own = DagScanPlan.from_edge_index(chain, 3)
    assert dag_scan(x, w, chain, plan=own).flatten().tolist() == [1.0, 2.0, 3.0]


def assert_triton_matches_reference(x, w, edge_index, gen):
    """Values and both gradients of the Triton path equal the loop's (float64)."""
    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(DEVICE)
    grads = {}
    for backend in ("reference", "triton"):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = dag_scan(xr, wr, edge_index, backend=backend)
        (y * dy).sum().backward()
        grads[backend] = (y.detach(), xr.grad, wr.grad)
    for a, b in zip(grads["triton"], grads["reference"]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@requires_triton
def test_triton_wide_states_span_several_programs():
    # 300 entries per state: more than one program per (state, head) in both passes
    gen = torch.Generator().manual_seed(12)
    ei = random_dag(14, 0.3, gen)
    x = torch.randn(14, 2, 300, generator=gen, dtype=torch.float64).to(DEVICE)
    w = random_weights(ei.shape[1], 2, gen)
    assert_triton_matches_reference(x, w, ei, gen)


@requires_triton
def test_triton_schedule_rows_cover_every_edge_once():
    from graphseq.kernels.dag_scan.triton import schedule

    gen = torch.Generator().manual_seed(13)
    ei = random_dag(40, 0.1, gen)
    plan = DagScanPlan.from_edge_index(ei, 40)
    sched = schedule(plan)
    assert schedule(plan) is sched  # built once per plan
    level = plan.level
    # forward rows: a state's incoming edges, levels ascending
    rows = torch.repeat_interleave(sched.in_state, sched.in_ptr.diff())
    assert torch.equal(rows, plan.dst)
    lv = [int(level[sched.in_state[lo]]) for lo, _ in sched.in_levels]
    assert lv == sorted(lv) and len(set(lv)) == len(lv) and min(lv) >= 1
    # backward rows: a state's outgoing edges, levels descending
    rows = torch.repeat_interleave(sched.out_state, sched.out_ptr.diff())
    assert torch.equal(rows, plan.src[sched.out_perm])
    assert torch.equal(sched.out_nbr, plan.dst[sched.out_perm])
    assert sorted(sched.out_perm.tolist()) == list(range(plan.num_edges))
    lv = [int(level[sched.out_state[lo]]) for lo, _ in sched.out_levels]
    assert lv == sorted(lv, reverse=True) and len(set(lv)) == len(lv)
    for lo, hi in sched.out_levels:  # one level per launch
        assert (level[sched.out_state[lo:hi]] == level[sched.out_state[lo]]).all()


@requires_triton
def test_triton_grids_stay_within_cuda_limits(monkeypatch):
    # CUDA allows at most 65535 programs along grid dimensions 1 and 2: many heads (a
    # channel-wise scan) or one 4096 x 4096 state per head must not ask for more
    from graphseq.kernels.dag_scan import triton as triton_path

    grids = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: grids.append(tuple(grid))

    monkeypatch.setattr(triton_path, "_pull_kernel", Recorder())
    monkeypatch.setattr(triton_path, "_edge_dot_kernel", Recorder())
    chain = torch.tensor([[0], [1]], device=DEVICE)
    for shape in ((2, 70000), (2, 1, 4096, 4096)):
        x = torch.zeros(shape, device=DEVICE, requires_grad=True)
        w = torch.ones(1, shape[1], device=DEVICE, requires_grad=True)
        dag_scan(x, w, chain, backend="triton").sum().backward()
    assert len(grids) == 6
    assert all(max(g[1:], default=1) <= 65535 for g in grids), grids


@requires_triton
def test_triton_programs_loop_when_the_grid_is_capped(monkeypatch):
    # with the cap at 2 programs, every program covers several (head, block) pairs
    from graphseq.kernels.dag_scan import triton as triton_path

    monkeypatch.setattr(triton_path, "_MAX_GRID_YZ", 2)
    gen = torch.Generator().manual_seed(14)
    ei = random_dag(9, 0.4, gen)
    x = torch.randn(9, 3, 300, generator=gen, dtype=torch.float64).to(DEVICE)
    w = random_weights(ei.shape[1], 3, gen)
    assert_triton_matches_reference(x, w, ei, gen)


@pytest.mark.parametrize("prebuilt", [False, True])
def test_compile_with_backward_matches_eager(prebuilt):
    """torch.compile through the wavefront path and its backward (PLSTMGraph's "states"
    algorithm builds its plan inside the compiled forward)."""
    gen = torch.Generator().manual_seed(7)
    ei = random_dag(9, 0.4, gen).cpu()
    x = torch.randn(9, 2, 3, generator=gen, requires_grad=True)
    w = (torch.rand(ei.shape[1], 2, generator=gen) - 0.5).requires_grad_()
    dx, dw = torch.autograd.grad(dag_scan(x, w, ei, backend="torch").square().sum(), (x, w))

    def f(x, w):
        plan = DagScanPlan.from_edge_index(ei, 9) if prebuilt else None
        return dag_scan(x, w, ei, plan=plan, backend="torch")

    torch._dynamo.reset()
    out = torch.compile(f, backend="eager")(x, w)
    cdx, cdw = torch.autograd.grad(out.square().sum(), (x, w))
    torch.testing.assert_close(cdx, dx)
    torch.testing.assert_close(cdw, dw)
