"""PLSTMGraph's path form on CPU by the compiled kernel (graphseq.kernels.dag_attention):
exactness against the loop reference and the bucketed PyTorch form, "auto"'s routing of
large graphs to the state form, gradients, low-precision inputs, NaN spread, and the fallback
to the bucketed form when the kernel cannot be built."""

from __future__ import annotations

import pytest
import torch

import graphseq.nn.plstm.graph as graph_module
from graphseq.kernels.dag_attention import native
from graphseq.nn.plstm.graph import (
    PATH_FORM_MAX_NODES,
    PLSTMGraph,
    plstm_graph_reference,
    prepare_dag,
)
from graphseq.testing import mixed_batch, tree_with_chords

pytestmark = pytest.mark.skipif(
    not native.available(), reason=f"no C compiler: {native.unavailable_reason()}"
)


def batch_of(sizes, gen, chords=3):
    return mixed_batch(sizes, gen, chords, device="cpu")[0]  # the kernel runs on CPU


def layer(mode: str, **kw) -> PLSTMGraph:
    torch.manual_seed(1)
    conv = PLSTMGraph(6, 8, heads=2, mode=mode, gate_weight_std=0.7, **kw)
    with torch.no_grad():
        for name in ("source", "mark", "direct", "transition"):
            getattr(conv, name).bias.normal_(0.0, 1.0)
    return conv.double()


SIZES = [2, 1, -3, 7, 12, 5, PATH_FORM_MAX_NODES + 9, 9]


@pytest.mark.parametrize("algorithm", ["paths", "auto"])
@pytest.mark.parametrize("mode", ["P", "D"])
def test_native_matches_loop_and_buckets(mode, algorithm, monkeypatch):
    gen = torch.Generator().manual_seed(2)
    b = batch_of(SIZES, gen)
    conv = layer(mode, algorithm=algorithm)
    st = prepare_dag(b.edge_index, b.num_nodes, mode=mode, batch=b.batch)
    gates = tuple(g.detach().requires_grad_() for g in conv.gates(
        torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64), st))  # fmt: skip
    ref = plstm_graph_reference(*gates, st.edge_index, st.lg_edge_index)
    dy = torch.randn_like(ref)
    want = torch.autograd.grad((ref * dy).sum(), gates)
    calls = []
    kernel = graph_module.dag_attention
    monkeypatch.setattr(graph_module, "dag_attention",
                        lambda *a, **k: calls.append(k["backend"]) or kernel(*a, **k))  # fmt: skip
    h = PLSTMGraph.recurrence(*gates, st, algorithm=algorithm)
    assert calls == ["native"]
    assert (h - ref).abs().max().item() <= 1e-12
    for got, w in zip(torch.autograd.grad((h * dy).sum(), gates), want):
        torch.testing.assert_close(got, w, atol=1e-11, rtol=1e-9)
    # "auto" sent the large graph to the state form: the kernel's plan leaves it out
    plan = st.native_layout(algorithm).plan
    large = st.native_layout(algorithm).large
    if algorithm == "auto":
        assert large is not None and large.node.numel() == PATH_FORM_MAX_NODES + 9
        assert plan.node.numel() == b.num_nodes - large.node.numel()
    else:
        assert large is None and plan.node.numel() == b.num_nodes
    # the bucketed PyTorch form gives the same
    monkeypatch.setattr(graph_module, "NATIVE_PATHS", False)
    torch.testing.assert_close(
        PLSTMGraph.recurrence(*gates, st, algorithm=algorithm), h, atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("mode", ["P", "D"])
def test_layer_gradcheck_through_the_kernel(mode):
    gen = torch.Generator().manual_seed(3)
    b = batch_of([4, 1, 6, -2, 5], gen, chords=2)
    conv = layer(mode)
    st = prepare_dag(b.edge_index, b.num_nodes, mode=mode, batch=b.batch)
    gates = tuple(g.detach().requires_grad_() for g in conv.gates(
        torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64), st))  # fmt: skip
    assert torch.autograd.gradcheck(
        lambda *g: PLSTMGraph.recurrence(*g, st, algorithm="paths"), gates, fast_mode=False
    )
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: conv(x, b.edge_index, b.batch), (x,))


def test_a_batch_other_than_the_structures_gets_its_own_plan():
    gen = torch.Generator().manual_seed(4)
    b = batch_of([5, 8, 3], gen)
    conv = layer("P")
    st = prepare_dag(b.edge_index, b.num_nodes)  # one graph: no batch
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64)
    gates = conv.gates(x, st)
    ref = plstm_graph_reference(*gates, st.edge_index, st.lg_edge_index)
    h = PLSTMGraph.recurrence(*gates, st, b.batch, algorithm="paths")
    assert (h - ref).abs().max().item() <= 1e-12
    assert st.native_layout("paths").plan.num_graphs == 1  # the cached one is untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_and_autocast(dtype):
    gen = torch.Generator().manual_seed(5)
    b = batch_of([6, 9, 4], gen)
    conv = layer("D").float()
    x = torch.randn(b.num_nodes, 6, generator=gen)
    want = conv(x, b.edge_index, b.batch)
    got = conv.to(dtype)(x.to(dtype, copy=True).requires_grad_(), b.edge_index, b.batch)
    assert got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 0.15  # the norm magnifies 16-bit rounding
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
    got.sum().backward()
    conv.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xa = x.detach().clone().requires_grad_()
        out = conv(xa, b.edge_index, b.batch)
        out.float().sum().backward()
    assert torch.isfinite(xa.grad).all()
    torch.testing.assert_close(out.float(), want, atol=0.15, rtol=0.15)


@pytest.mark.parametrize("mode", ["P", "D"])
def test_nan_reaches_only_what_is_downstream(mode):
    """The kernel multiplies over G's structural support only, so a NaN spreads as under
    "states": the node, its descendants and (P-mode) the descendants of its parents."""
    from torch_geometric.data import Batch, Data

    ei = torch.tensor([[0, 1, 1, 3, 2], [1, 2, 3, 4, 5]])
    gen = torch.Generator().manual_seed(13)
    graphs = [Data(edge_index=torch.cat([ei, ei.flip(0)], 1), num_nodes=6)]
    graphs += [Data(edge_index=tree_with_chords(n, 2, gen), num_nodes=n) for n in (4, 7)]
    b = Batch.from_data_list(graphs)
    conv = layer(mode, algorithm="paths")
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64)
    x[2] = float("nan")
    out = conv(x, b.edge_index, b.batch)
    assert torch.isfinite(out[6:]).all()
    rows = torch.nonzero(torch.isnan(out[:6]).any(-1)).flatten().tolist()
    assert rows == ([2, 5] if mode == "D" else [2, 3, 4, 5])


def test_falls_back_to_buckets_without_the_kernel(monkeypatch):
    gen = torch.Generator().manual_seed(6)
    b = batch_of([5, 7], gen)
    conv = layer("P")
    x = torch.randn(b.num_nodes, 6, generator=gen, dtype=torch.float64)
    want = conv(x, b.edge_index, b.batch)
    ran = []
    path_form = graph_module._path_form
    monkeypatch.setattr(graph_module, "native_available", lambda: False)
    monkeypatch.setattr(graph_module, "_path_form",
                        lambda *a, **k: ran.append(1) or path_form(*a, **k))  # fmt: skip
    got = conv(x, b.edge_index, b.batch)
    assert ran and (got - want).abs().max().item() <= 1e-12
