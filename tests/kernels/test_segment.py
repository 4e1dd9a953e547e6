"""Tests of graphseq.kernels.segment: segment_tree_reduce, segment_scan and their plans."""

from __future__ import annotations

import copy
import doctest
import json
import math
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.autograd import gradcheck as _gradcheck
from torch.autograd import gradgradcheck as _gradgradcheck
from torch_geometric.utils import scatter

from graphseq.kernels import segment as seg_pkg
from graphseq.kernels.segment import (
    SegmentPlan,
    SegmentScanPlan,
    segment_scan,
    segment_tree_reduce,
)
from graphseq.kernels.segment import ops as seg_ops
from graphseq.kernels.segment import plan as seg_plan
from graphseq.kernels.segment.reference import (
    segment_fold_reference,
    segment_scan_sequential_reference,
)
from graphseq.testing import DEVICE, FAST_BACKENDS, assert_close, requires_triton

NAMES = ("sum", "max", "min", "prod")
LENGTHS = (3, 0, 1000, 7, 1, 63, 2, 0, 3)  # odd, empty and long segments, unsorted
# the interpreter runs tl.associative_scan (max/min scans) element by element: keep it small
LENGTHS_SMALL = (3, 0, 17, 7, 1, 2, 0, 3)


def make_ptr(lengths, device=DEVICE) -> torch.Tensor:
    lengths = torch.as_tensor(list(lengths), dtype=torch.long)
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(device)


def segment_index(ptr: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=ptr.device), ptr.diff())


def named_input(name, E, C, dtype=torch.float64, device=DEVICE):
    x = torch.randn(E, C, dtype=torch.float64)
    if name == "prod":  # products of 1000 factors stay O(1)
        x = 1 + 0.02 * x
    return x.to(device=device, dtype=dtype)


def lengths_for(backend, name):
    return LENGTHS_SMALL if backend == "triton" and name in ("max", "min") else LENGTHS


class SymMLP(nn.Module):
    """A learned commutative (non-associative) combine: symmetrised MLP on [a, b]."""

    def __init__(self, c: int, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * c, hidden), nn.Tanh(), nn.Linear(hidden, c))

    def forward(self, a, b):
        return 0.5 * (self.net(torch.cat([a, b], -1)) + self.net(torch.cat([b, a], -1)))


class SymGRU(nn.Module):
    """LCM's combine: 0.5 * (GRUCell(a, b) + GRUCell(b, a)), one cell call per level."""

    def __init__(self, c: int):
        super().__init__()
        self.cell = nn.GRUCell(c, c)

    def forward(self, a, b):
        p = a.shape[0]
        out = self.cell(torch.cat([a, b]), torch.cat([b, a]))
        return 0.5 * (out[:p] + out[p:])


class RowwiseCombine(nn.Module):
    """A learned, non-commutative combine computed row by row with elementwise ops and
    last-dim sums only, so its arithmetic is the same for any batch size (unlike a BLAS
    matmul, whose blocking and hence rounding depend on the number of rows)."""

    def __init__(self, c: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(c, c) / math.sqrt(c))
        self.w2 = nn.Parameter(torch.randn(c, c) / math.sqrt(c))
        self.bias = nn.Parameter(0.1 * torch.randn(c))

    def forward(self, a, b):
        h = (a.unsqueeze(1) * self.w1).sum(-1) + (b.unsqueeze(1) * self.w2).sum(-1)
        return torch.tanh(h + self.bias)


class Counting:
    """Wraps a combine and counts calls and combined rows."""

    def __init__(self, fn):
        self.fn, self.calls, self.rows = fn, 0, 0

    def __call__(self, a, b):
        self.calls += 1
        self.rows += a.shape[0]
        return self.fn(a, b)


def affine(p, q):
    """(a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2 = (a1 a2) h + (a2 b1 + b2)."""
    a1, b1 = p[..., 0], p[..., 1]
    a2, b2 = q[..., 0], q[..., 1]
    return torch.stack([a1 * a2, a2 * b1 + b2], -1)


def matmul(p, q):
    return p @ q


# ---------------------------------------------------------------------------------------------
# segment_tree_reduce: values


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reduce_named_matches_reference(backend, name, dtype):
    ptr = make_ptr(LENGTHS)
    x = named_input(name, int(ptr[-1]), 5, dtype)
    out = segment_tree_reduce(x, ptr, name, backend=backend)
    expected = segment_tree_reduce(x.double(), ptr, name, backend="reference")
    assert out.shape == (len(LENGTHS), 5) and out.dtype == dtype
    assert_close(out, expected, dtype=dtype)
    # the associative fold agrees with the tree up to rounding
    fn, identity = seg_ops.NAMED_COMBINES[name]
    fold = segment_fold_reference(x.double(), ptr, fn, torch.full((5,), identity))
    nonempty = ptr.diff() > 0
    assert_close(out[nonempty], fold[nonempty], dtype=dtype)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduce_half_precision(backend, dtype):
    ptr = make_ptr((5, 0, 40, 1))
    x = torch.randn(int(ptr[-1]), 3, device=DEVICE).to(dtype)
    for name in ("sum", "max"):
        out = segment_tree_reduce(x, ptr, name, backend=backend)
        assert out.dtype == dtype
        assert_close(out, segment_tree_reduce(x.double(), ptr, name, backend="reference"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("make", [SymMLP, SymGRU, RowwiseCombine])
def test_reduce_learned_combine_matches_tree_reference(dtype, make):
    C = 6
    ptr = make_ptr(LENGTHS)
    combine = make(C).to(DEVICE, dtype)
    x = torch.randn(int(ptr[-1]), C, device=DEVICE, dtype=dtype)
    identity = torch.zeros(C, device=DEVICE, dtype=dtype)
    out = segment_tree_reduce(x, ptr, combine, identity)
    combine64 = copy.deepcopy(combine).double()
    expected = segment_tree_reduce(
        x.double(), ptr, combine64, identity.double(), backend="reference"
    )
    assert_close(out, expected, dtype=dtype)
    # and it is not a left fold: the bracketing is part of the contract
    fold = segment_fold_reference(x.double(), ptr, combine64, identity.double())
    assert (fold - expected).abs().max() > 1e-3


def test_reduce_callable_runs_on_any_input_shape():
    """x of shape [E, *]: the combine sees [P, *] rows."""
    ptr = make_ptr((4, 0, 3))
    x = torch.randn(7, 2, 2, dtype=torch.float64, device=DEVICE)
    eye = torch.eye(2, dtype=torch.float64, device=DEVICE)
    out = segment_tree_reduce(x, ptr, matmul, identity=eye)
    expected = segment_fold_reference(x, ptr, matmul, eye)
    assert_close(out, expected)
    assert torch.equal(out[1], eye)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("shape", [(), (2, 3)])
def test_reduce_named_any_trailing_shape(backend, shape):
    ptr = make_ptr((3, 0, 5))
    x = torch.randn(8, *shape, dtype=torch.float64, device=DEVICE)
    out = segment_tree_reduce(x, ptr, "sum", backend=backend)
    assert out.shape == (3, *shape)
    assert_close(out, segment_tree_reduce(x, ptr, "sum", backend="reference"))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_reduce_non_contiguous_input(backend):
    ptr = make_ptr((3, 0, 5))
    x = torch.randn(4, 8, dtype=torch.float64, device=DEVICE).t()  # [8, 4], strided
    assert not x.is_contiguous()
    out = segment_tree_reduce(x, ptr, "max", backend=backend)
    assert_close(out, segment_tree_reduce(x.contiguous(), ptr, "max", backend="reference"))


@pytest.mark.parametrize("backend", (*FAST_BACKENDS, "reference"))
def test_reduce_identities_and_empty_input(backend):
    C = 3
    ptr = make_ptr((0, 2, 0))
    x = torch.randn(2, C, device=DEVICE)
    expect_empty = {"sum": 0.0, "max": -math.inf, "min": math.inf, "prod": 1.0}
    for name, value in expect_empty.items():
        out = segment_tree_reduce(x, ptr, name, backend=backend)
        assert torch.all(out[0] == value) and torch.all(out[2] == value)
    # a user identity replaces the monoid identity for empty segments only (PyG's 0 for max)
    out = segment_tree_reduce(x, ptr, "max", identity=0.0, backend=backend)
    assert torch.all(out[0] == 0) and torch.equal(out[1], x.max(0).values)
    ident = torch.tensor([1.0, 2.0, 3.0], device=DEVICE)
    out = segment_tree_reduce(x, ptr, "sum", identity=ident, backend=backend)
    assert torch.equal(out[2], ident)
    # E = 0: N identity rows; N = 0: [0, *]
    empty = torch.zeros(0, C, device=DEVICE)
    out = segment_tree_reduce(empty, make_ptr((0, 0, 0, 0)), "min", backend=backend)
    assert out.shape == (4, C) and torch.all(out == math.inf)
    out = segment_tree_reduce(empty, make_ptr(()), "sum", backend=backend)
    assert out.shape == (0, C)
    if backend != "triton":
        out = segment_tree_reduce(empty, make_ptr((0, 0)), SymMLP(C).to(DEVICE), ident)
        assert torch.equal(out, ident.expand(2, C))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_reduce_nan_propagates_and_stays_in_its_segment(backend):
    ptr = make_ptr((3, 4, 2))
    x = torch.randn(9, 2, device=DEVICE, dtype=torch.float64)
    x[4, 0] = math.nan
    for name in NAMES:
        out = segment_tree_reduce(x, ptr, name, backend=backend)
        assert torch.isnan(out[1, 0]), name
        assert not torch.isnan(out[[0, 2]]).any() and not torch.isnan(out[1, 1]), name


# ---------------------------------------------------------------------------------------------
# segment_scan: values


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scan_named_matches_reference(backend, name, dtype):
    ptr = make_ptr(lengths_for(backend, name))
    x = named_input(name, int(ptr[-1]), 3, dtype)
    out = segment_scan(x, ptr, name, backend=backend)
    assert out.shape == x.shape and out.dtype == dtype
    assert_close(out, segment_scan(x.double(), ptr, name, backend="reference"), dtype=dtype)
    fn = seg_ops.NAMED_COMBINES[name][0]
    assert_close(out, segment_scan_sequential_reference(x.double(), ptr, fn), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scan_affine_monoid_is_a_linear_recurrence(dtype):
    """Non-commutative: (a, b) pairs compose like h -> a h + b, with negative and zero a."""
    ptr = make_ptr(LENGTHS)
    E, C = int(ptr[-1]), 4
    a = torch.empty(E, C, dtype=torch.float64).uniform_(-1, 1)
    a[torch.rand(E, C) < 0.05] = 0.0
    b = torch.randn(E, C, dtype=torch.float64)
    x = torch.stack([a, b], -1).to(DEVICE, dtype)  # [E, C, 2]
    y = segment_scan(x, ptr, affine)
    h = torch.empty(E, C, dtype=torch.float64)  # the recurrence, h = 0 before each segment
    for s in range(len(LENGTHS)):
        state = torch.zeros(C, dtype=torch.float64)
        for t in range(int(ptr[s]), int(ptr[s + 1])):
            state = a[t] * state + b[t]
            h[t] = state
    assert_close(y[..., 1], h.to(DEVICE), dtype=dtype)
    assert_close(y, segment_scan(x.double(), ptr, affine, backend="reference"), dtype=dtype)


def test_scan_matrix_product_non_commutative():
    ptr = make_ptr(LENGTHS)
    E = int(ptr[-1])
    x = torch.eye(2, dtype=torch.float64) + 0.3 * torch.randn(E, 2, 2, dtype=torch.float64)
    x = x / torch.linalg.matrix_norm(x, ord=2)[:, None, None]  # keep products O(1)
    x = x.to(DEVICE)
    y = segment_scan(x, ptr, matmul)
    assert_close(y, segment_scan_sequential_reference(x, ptr, matmul))
    assert_close(y, segment_scan(x, ptr, matmul, backend="reference"))
    # the order matters: the reversed product is different
    y_rev = segment_scan(x, ptr, lambda p, q: q @ p)
    assert (y_rev - y).abs().max() > 1e-2


def test_scan_learned_combine_matches_even_odd_reference():
    """For a non-associative combine the bracketing is visible: it must be the even/odd one."""
    ptr = make_ptr(LENGTHS)
    combine = RowwiseCombine(4).double().to(DEVICE)
    x = torch.randn(int(ptr[-1]), 4, dtype=torch.float64, device=DEVICE)
    assert_close(segment_scan(x, ptr, combine), segment_scan(x, ptr, combine, backend="reference"))


@pytest.mark.parametrize("backend", (*FAST_BACKENDS, "reference"))
def test_scan_empty_inputs(backend):
    empty = torch.zeros(0, 3, device=DEVICE)
    assert segment_scan(empty, make_ptr((0, 0)), "sum", backend=backend).shape == (0, 3)
    assert segment_scan(empty, make_ptr(()), "max", backend=backend).shape == (0, 3)
    x = torch.randn(3, 3, device=DEVICE)
    y = segment_scan(x, make_ptr((1, 0, 1, 1)), "sum", backend=backend)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_scan_nan_stays_in_its_segment(backend):
    ptr = make_ptr((3, 4, 2))
    x = torch.randn(9, 2, device=DEVICE, dtype=torch.float64)
    x[4, 0] = math.nan
    for name in NAMES:
        y = segment_scan(x, ptr, name, backend=backend)
        assert torch.isnan(y[4:7, 0]).all() and not torch.isnan(y[3, 0]), name
        assert not torch.isnan(y[[0, 1, 2, 7, 8]]).any() and not torch.isnan(y[:, 1]).any()


# ---------------------------------------------------------------------------------------------
# gradients


def _grads(fn, *inputs, upstream):
    out = fn(*inputs)
    return torch.autograd.grad(out, inputs, upstream(out))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_reduce_gradients_match_reference(backend, name):
    ptr = make_ptr((3, 0, 200, 7, 1, 2))
    x = named_input(name, int(ptr[-1]), 4).requires_grad_()
    g = torch.randn(len(ptr) - 1, 4, dtype=torch.float64, device=DEVICE)
    (gx,) = _grads(
        lambda v: segment_tree_reduce(v, ptr, name, backend=backend), x, upstream=lambda o: g
    )
    (gr,) = _grads(
        lambda v: segment_tree_reduce(v, ptr, name, backend="reference"), x, upstream=lambda o: g
    )
    assert_close(gx, gr)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_reduce_prod_gradient_with_zeros(backend):
    # segments with no zero, one zero, two zeros, and a lone zero
    ptr = make_ptr((4, 5, 6, 1, 3))
    x = 1 + 0.5 * torch.randn(19, 2, dtype=torch.float64, device=DEVICE)
    x[6, 0] = 0.0
    x[9, 1] = 0.0
    x[10, 1] = 0.0
    x[15, :] = 0.0
    x[17, 0] = 0.0
    x.requires_grad_()
    g = torch.randn(5, 2, dtype=torch.float64, device=DEVICE)
    (gx,) = _grads(
        lambda v: segment_tree_reduce(v, ptr, "prod", backend=backend), x, upstream=lambda o: g
    )
    (gr,) = _grads(
        lambda v: segment_tree_reduce(v, ptr, "prod", backend="reference"), x, upstream=lambda o: g
    )
    assert_close(gx, gr)
    assert gx[6, 0] != 0 and torch.all(gx[9:11, 1] == 0)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_scan_gradients_match_reference(backend, name):
    lengths = (3, 0, 100, 7, 1, 2) if name in ("sum", "prod") else (3, 0, 20, 7, 1, 2)
    ptr = make_ptr(lengths)
    x = named_input(name, int(ptr[-1]), 3)
    if name == "prod":
        x[5, 0] = 0.0  # zeros must be exact
        x[6:8, 1] = 0.0
    x.requires_grad_()
    g = torch.randn_like(x)
    (gx,) = _grads(lambda v: segment_scan(v, ptr, name, backend=backend), x, upstream=lambda o: g)
    (gr,) = _grads(
        lambda v: segment_scan(v, ptr, name, backend="reference"), x, upstream=lambda o: g
    )
    assert_close(gx, gr)


def test_learned_combine_gradients_match_reference():
    """Autograd through combine, the gathers and the identity, against the loop reference."""
    C = 4
    ptr = make_ptr((3, 0, 64, 7, 1, 2))
    combine = SymGRU(C).double().to(DEVICE)
    x = torch.randn(int(ptr[-1]), C, dtype=torch.float64, device=DEVICE, requires_grad=True)
    ident = torch.randn(C, dtype=torch.float64, device=DEVICE, requires_grad=True)
    g = torch.randn(len(ptr) - 1, C, dtype=torch.float64, device=DEVICE)
    params = (x, ident, *combine.parameters())

    def run(backend):
        out = segment_tree_reduce(x, ptr, combine, ident, backend=backend)
        return torch.autograd.grad(out, params, g)

    for got, want in zip(run("torch"), run("reference")):
        assert_close(got, want)


def gradcheck(fn, inputs):
    """float64 gradcheck in fast mode (random projections of the Jacobian): the full
    Jacobian costs seconds per call in the interpreter."""
    return _gradcheck(fn, inputs, fast_mode=True)


def gradgradcheck(fn, inputs):
    return _gradgradcheck(fn, inputs, fast_mode=True)


def test_gradcheck_torch_path():
    ptr = make_ptr((3, 0, 5, 1, 2))
    x = torch.randn(11, 2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    for name in NAMES:
        # identity=0: finite differences of the -inf of an empty max segment are NaN
        assert gradcheck(lambda v, n=name: segment_tree_reduce(v, ptr, n, 0.0), (x,))
        assert gradcheck(lambda v, n=name: segment_scan(v, ptr, n), (x,))
    mlp = SymMLP(2, hidden=4).double().to(DEVICE)
    ident = torch.randn(2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert gradcheck(lambda v, e: segment_tree_reduce(v, ptr, mlp, e), (x, ident))
    assert gradcheck(lambda v: segment_scan(v, ptr, mlp), (x,))
    # the vectorised path is plain autograd: second derivatives work too
    assert gradgradcheck(lambda v: segment_tree_reduce(v, ptr, mlp, 0.0), (x,))


@requires_triton
def test_gradcheck_triton_path():
    ptr = make_ptr((3, 0, 5, 1))
    x = torch.randn(9, 2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    for name in NAMES:
        assert gradcheck(
            lambda v, n=name: segment_tree_reduce(v, ptr, n, 0.0, backend="triton"), (x,)
        )
        assert gradcheck(lambda v, n=name: segment_scan(v, ptr, n, backend="triton"), (x,))


@requires_triton
def test_triton_max_gradient_ties_go_to_the_first_element():
    ptr = make_ptr((4, 3))
    x = torch.tensor([1.0, 5.0, 5.0, 2.0, 7.0, 7.0, 7.0], dtype=torch.float64, device=DEVICE)
    x.requires_grad_()
    (gx,) = torch.autograd.grad(segment_tree_reduce(x, ptr, "max", backend="triton").sum(), x)
    assert gx.tolist() == [0, 1, 0, 0, 1, 0, 0]
    (gx,) = torch.autograd.grad(segment_scan(x, ptr, "max", backend="triton").sum(), x)
    assert gx.tolist() == [1, 3, 0, 0, 3, 0, 0]


@requires_triton
@pytest.mark.parametrize("name", ["max", "min"])
def test_triton_scan_gradient_of_a_nan_prefix_goes_to_the_first_nan(name):
    """A NaN prefix comes from its first NaN: the scan's last row is the reduction, and both
    put its gradient on the same row (not on the later, finite rows)."""
    ptr = make_ptr((4, 2))
    x = torch.tensor([1.0, math.nan, 3.0, 2.0, math.nan, 4.0], dtype=torch.float64, device=DEVICE)
    x.requires_grad_()
    y = segment_scan(x, ptr, name, backend="triton")
    (g_scan,) = torch.autograd.grad(y[[3, 5]].sum(), x)
    (g_red,) = torch.autograd.grad(segment_tree_reduce(x, ptr, name, backend="triton").sum(), x)
    assert g_scan.tolist() == g_red.tolist() == [0, 1, 0, 0, 1, 0]
    (g_all,) = torch.autograd.grad(segment_scan(x, ptr, name, backend="triton").sum(), x)
    assert g_all.tolist() == [1, 3, 0, 0, 2, 0]


# ---------------------------------------------------------------------------------------------
# properties (hypothesis)

lengths_strategy = st.lists(st.integers(0, 20), min_size=0, max_size=8)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@settings(max_examples=25, deadline=None)
@given(lengths=lengths_strategy, channels=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_property_reduce_equals_pyg_scatter(backend, lengths, channels, seed):
    """sum and max equal PyG's scatter on non-empty segments. Empty segments differ by design:
    PyG gives 0 for both, we give the monoid identity (0 for sum, -inf for max)."""
    gen = torch.Generator().manual_seed(seed)
    ptr = make_ptr(lengths)
    E, N = int(ptr[-1]), len(lengths)
    x = torch.randn(E, channels, generator=gen, dtype=torch.float64).to(DEVICE)
    index = segment_index(ptr)
    nonempty = ptr.diff() > 0
    for name in ("sum", "max"):
        out = segment_tree_reduce(x, ptr, name, backend=backend)
        expected = scatter(x, index, dim=0, dim_size=N, reduce=name)
        assert_close(out[nonempty], expected[nonempty])
        assert torch.all(out[~nonempty] == (0.0 if name == "sum" else -math.inf))
        assert torch.all(expected[~nonempty] == 0.0)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@settings(max_examples=25, deadline=None)
@given(lengths=lengths_strategy, channels=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_property_scan_sum_equals_cumsum(backend, lengths, channels, seed):
    gen = torch.Generator().manual_seed(seed)
    ptr = make_ptr(lengths)
    x = torch.randn(int(ptr[-1]), channels, generator=gen, dtype=torch.float64).to(DEVICE)
    y = segment_scan(x, ptr, "sum", backend=backend)
    parts = [torch.cumsum(x[ptr[i] : ptr[i + 1]], 0) for i in range(len(lengths))]
    assert_close(y, torch.cat([x[:0], *parts]))


# ---------------------------------------------------------------------------------------------
# schedule: batch independence, depth, work


@pytest.mark.parametrize(
    "others",
    [((), ()), ((1, 2), (100,)), ((1000, 0), (3, 5, 64)), ((7,) * 9, (2,) * 5)],
)
@pytest.mark.parametrize("length", [13, 64])
def test_result_independent_of_batch_bitwise(others, length):
    """A segment's result is bitwise the same alone and among segments of other lengths."""
    C = 8
    combine = RowwiseCombine(C).to(DEVICE)
    before, after = others
    target = torch.randn(length, C, device=DEVICE)
    alone = segment_tree_reduce(target, make_ptr((length,)), combine)
    alone_scan = segment_scan(target, make_ptr((length,)), combine)
    x = torch.cat(
        [
            torch.randn(sum(before), C, device=DEVICE),
            target,
            torch.randn(sum(after), C, device=DEVICE),
        ]
    )
    ptr = make_ptr((*before, length, *after))
    out = segment_tree_reduce(x, ptr, combine, identity=torch.zeros(C, device=DEVICE))
    assert torch.equal(out[len(before)], alone[0])
    y = segment_scan(x, ptr, combine)
    start = sum(before)
    assert torch.equal(y[start : start + length], alone_scan)


def test_gru_combine_batch_independent_up_to_blas_rounding():
    """With a matmul-based combine (LCM's GRU cell) the tree is the same, but BLAS rounds
    differently for different numbers of rows: agreement is to rounding, not bitwise. PyG's
    padded LCMAggregation differs by O(0.1) here (research/lcm.md)."""
    C = 16
    combine = SymGRU(C).to(DEVICE)
    target = torch.randn(13, C, device=DEVICE)
    alone = segment_tree_reduce(target, make_ptr((13,)), combine)
    x = torch.cat([torch.randn(1000, C, device=DEVICE), target, torch.randn(5, C, device=DEVICE)])
    out = segment_tree_reduce(x, make_ptr((1000, 13, 2, 3)), combine)
    torch.testing.assert_close(out[1], alone[0], atol=1e-5, rtol=1e-5)


def _expected_scan_calls(max_length: int) -> tuple[int, int]:
    """(up-sweep calls, total calls) of the even/odd scan of a segment of max_length."""
    up = fix = 0
    n = max_length
    while n >= 2:
        up += 1
        fix += n >= 3
        n //= 2
    return up, up + fix


@pytest.mark.parametrize("lengths", [LENGTHS, (1,), (2,), (5, 4, 3), (0, 0), (), (1024, 1)])
def test_depth_and_work(lengths):
    ptr = make_ptr(lengths)
    E = int(ptr[-1])
    max_len = max(lengths, default=0)
    nonempty = sum(length > 0 for length in lengths)
    x = torch.randn(E, 2, dtype=torch.float64, device=DEVICE)

    counter = Counting(torch.add)
    out = segment_tree_reduce(x, ptr, counter, identity=0.0)
    depth = math.ceil(math.log2(max_len)) if max_len > 1 else 0
    assert counter.calls == depth == SegmentPlan.from_ptr(ptr).depth
    assert counter.rows == E - nonempty <= E  # one combined pair per element, minus roots
    assert_close(out, segment_tree_reduce(x, ptr, "sum", backend="reference"))

    counter = Counting(torch.add)
    segment_scan(x, ptr, counter)
    up, total = _expected_scan_calls(max_len)
    assert SegmentScanPlan.from_ptr(ptr).depth == up == (int(math.log2(max_len)) if max_len else 0)
    assert counter.calls == total <= 2 * up
    assert counter.rows == SegmentScanPlan.from_ptr(ptr).num_combined <= 2 * E


def test_finished_segments_cost_nothing_further():
    """Every level only combines segments still longer than one element: with one long
    segment among many short ones, levels past the short segments' depth have one pair."""
    lengths = (2,) * 100 + (8,)
    plan = SegmentPlan.from_ptr(make_ptr(lengths))
    assert [lv.left.numel() for lv in plan.levels] == [104, 2, 1]
    assert [lv.num_finished for lv in plan.levels] == [100, 0, 1]


def test_memory_of_hub_segment_with_gru_combine():
    """One 3,276-element hub among 32,768 elements (other segments ~10), GRU combine with
    C = 128, forward + backward: the peak resident memory must stay far below 1 GB.
    (PyG's padded LCMAggregation was OOM-killed at 16 GB on this case, research/lcm.md.)"""
    script = textwrap.dedent(
        """
        import json, time, torch
        from graphseq.kernels.segment import SegmentPlan, segment_tree_reduce
        torch.manual_seed(0)
        C, E, HUB = 128, 32768, 3276
        n = 1023
        rest = [(E - HUB) // n + (i < (E - HUB) % n) for i in range(n)]
        lengths = torch.tensor(rest[:500] + [HUB] + rest[500:])
        ptr = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
        cell = torch.nn.GRUCell(C, C)
        def combine(a, b):
            p = a.shape[0]
            out = cell(torch.cat([a, b]), torch.cat([b, a]))
            return 0.5 * (out[:p] + out[p:])
        x = torch.randn(E, C, requires_grad=True)
        plan = SegmentPlan.from_ptr(ptr)
        def status_kib(field):  # VmHWM is this image's peak; ru_maxrss inherits the parent's
            with open("/proc/self/status") as fh:
                return next(float(l.split()[1]) for l in fh if l.startswith(field + ":"))
        base = status_kib("VmRSS")
        t0 = time.perf_counter()
        out = segment_tree_reduce(x, ptr, combine, plan=plan)
        out.square().sum().backward()
        seconds = time.perf_counter() - t0
        peak = status_kib("VmHWM")
        print(json.dumps({"delta_mb": (peak - base) / 1024, "seconds": seconds,
                          "depth": plan.depth, "grad_finite": bool(x.grad.isfinite().all())}))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tempfile.gettempdir(),  # not the checkout: its graphseq/ would shadow the install
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["depth"] == 12 and result["grad_finite"]
    assert result["delta_mb"] < 1024, result


# ---------------------------------------------------------------------------------------------
# plans


def test_plan_reuse_and_repr():
    ptr = make_ptr(LENGTHS)
    plan, scan_plan = SegmentPlan.from_ptr(ptr), SegmentScanPlan.from_ptr(ptr)
    x = torch.randn(int(ptr[-1]), 3, device=DEVICE)
    combine = SymMLP(3).to(DEVICE)
    ident = torch.zeros(3, device=DEVICE)
    assert torch.equal(
        segment_tree_reduce(x, ptr, combine, ident, plan=plan),
        segment_tree_reduce(x, ptr, combine, ident),
    )
    assert torch.equal(segment_scan(x, ptr, "sum", plan=scan_plan), segment_scan(x, ptr, "sum"))
    # an equal ptr (another tensor) is accepted, and so is the int32 form
    assert torch.equal(
        segment_tree_reduce(x, ptr.clone().int(), "max", plan=plan),
        segment_tree_reduce(x, ptr, "max"),
    )
    assert repr(plan) == (
        f"SegmentPlan(num_segments=9, num_elements={int(ptr[-1])}, max_length=1000, "
        f"depth=10, device={DEVICE})"
    )
    assert repr(scan_plan).startswith("SegmentScanPlan(num_segments=9,")
    moved = plan.to("cpu")
    assert moved.device.type == "cpu" and moved.num_pairs == plan.num_pairs


def test_plan_owns_its_ptr():
    # a plan must not alias the caller's ptr: editing the ptr in place afterwards is caught by
    # the plan check instead of silently running the old schedule
    ptr = torch.tensor([0, 3, 6], device=DEVICE)
    plan, scan_plan = SegmentPlan.from_ptr(ptr), SegmentScanPlan.from_ptr(ptr)
    assert plan.ptr is not ptr and scan_plan.ptr is not ptr
    x = torch.arange(1.0, 7.0, device=DEVICE).unsqueeze(1)
    ptr[1] = 1
    with pytest.raises(ValueError, match="plan was built for a different ptr"):
        segment_tree_reduce(x, ptr, "sum", plan=plan)
    with pytest.raises(ValueError, match="plan was built for a different ptr"):
        segment_scan(x, ptr, "sum", plan=scan_plan)


def test_fractional_identity_on_integer_rows_is_refused():
    # a callable combine may run on integer rows; a Python identity that the dtype cannot hold
    # must raise instead of being truncated (0.5 -> 0)
    x = torch.tensor([[3], [4]], device=DEVICE)
    ptr = torch.tensor([0, 0, 2], device=DEVICE)
    with pytest.raises(ValueError, match="identity"):
        segment_tree_reduce(x, ptr, lambda a, b: a + b, identity=0.5)
    out = segment_tree_reduce(x, ptr, lambda a, b: a + b, identity=2.0)  # integral: exact
    assert out.flatten().tolist() == [2, 7]


def test_plan_levels_by_hand():
    # lengths 3, 0, 1, 5: level 0 finishes nothing (3 -> 2, 5 -> 3); level 1 finishes the
    # 3-segment; level 2 finishes the 5-segment
    plan = SegmentPlan.from_ptr(torch.tensor([0, 3, 3, 4, 9]))
    assert plan.leaf_index.tolist() == [3]
    lv0, lv1, lv2 = plan.levels
    assert (lv0.left.tolist(), lv0.right.tolist(), lv0.carry.tolist()) == (
        [0, 4, 6],
        [1, 5, 7],
        [2, 8],
    )
    # level-1 buffer: [p(0,1), p(4,5), p(6,7), x2, x8]
    assert (lv1.num_finished, lv1.left.tolist(), lv1.right.tolist(), lv1.carry.tolist()) == (
        1,
        [0, 1],
        [3, 2],
        [4],
    )
    assert (lv2.num_finished, lv2.left.tolist(), lv2.right.tolist()) == (1, [0], [1])
    assert plan.out_index.tolist() == [2, 0, 3]


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_input():
    x = torch.randn(5, 2, device=DEVICE)
    ptr = make_ptr((2, 3))
    for fn in (segment_tree_reduce, segment_scan):
        with pytest.raises(TypeError, match=r"x must be a torch.Tensor"):
            fn([[1.0]], ptr, "sum")
        with pytest.raises(ValueError, match="x must have at least 1"):
            fn(torch.tensor(1.0), ptr, "sum")
        with pytest.raises(TypeError, match="x must be a floating-point"):
            fn(torch.ones(5, 2, dtype=torch.long, device=DEVICE), ptr, "sum")
        with pytest.raises(ValueError, match="ptr must start at 0"):
            fn(x, make_ptr((2, 3)) + 1, "sum")
        with pytest.raises(ValueError, match="ptr must end at the number of packed"):
            fn(x, make_ptr((2, 2)), "sum")
        with pytest.raises(ValueError, match="ptr must be non-decreasing"):
            fn(x, torch.tensor([0, 4, 2, 5], device=DEVICE), "sum")
        with pytest.raises(TypeError, match="ptr must be an int32 or int64"):
            fn(x, ptr.double(), "sum")
        with pytest.raises(ValueError, match="unknown combine 'mean'"):
            fn(x, ptr, "mean")
        with pytest.raises(TypeError, match="combine must be one of"):
            fn(x, ptr, 3)
        with pytest.raises(ValueError, match="combine must map two"):
            fn(x, ptr, lambda a, b: torch.cat([a, b], -1))
        with pytest.raises(TypeError, match=r"combine must return a torch.Tensor"):
            fn(x, ptr, lambda a, b: 1.0)
        with pytest.raises(ValueError, match="combine must keep the dtype"):
            fn(x, ptr, lambda a, b: (a + b).double())
        with pytest.raises(ValueError, match="backend='triton' covers the named combines"):
            fn(x, ptr, torch.add, backend="triton")
        with pytest.raises(ValueError, match="backend must be one of"):
            fn(x, ptr, "sum", backend="cuda")

    with pytest.raises(ValueError, match="identity must have shape"):
        segment_tree_reduce(x, ptr, "sum", identity=torch.zeros(3, device=DEVICE))
    with pytest.raises(ValueError, match="identity is on meta"):
        segment_tree_reduce(x, ptr, "sum", identity=torch.zeros(2, device="meta"))
    with pytest.raises(ValueError, match="identity has dtype"):
        segment_tree_reduce(x, ptr, "sum", identity=torch.zeros(2, dtype=torch.float64))
    with pytest.raises(TypeError, match="identity must be a tensor"):
        segment_tree_reduce(x, ptr, "sum", identity="zero")
    with pytest.raises(ValueError, match="some segments are empty; a callable combine needs"):
        segment_tree_reduce(x, make_ptr((2, 0, 3)), torch.add)

    plan = SegmentPlan.from_ptr(ptr)
    with pytest.raises(ValueError, match="plan was built for a different ptr"):
        segment_tree_reduce(x, make_ptr((3, 2)), "sum", plan=plan)
    with pytest.raises(ValueError, match="plan was built for a different ptr"):
        segment_tree_reduce(x, make_ptr((3, 2, 0)), "sum", plan=plan)
    with pytest.raises(TypeError, match="plan must be a SegmentScanPlan"):
        segment_scan(x, ptr, "sum", plan=plan)
    with pytest.raises(TypeError, match="plan must be a SegmentPlan"):
        segment_tree_reduce(x, ptr, "sum", plan=SegmentScanPlan.from_ptr(ptr))
    with pytest.raises(TypeError, match=r"ptr must be a torch.Tensor"):
        SegmentPlan.from_ptr([0, 2, 5])
    with pytest.raises(ValueError, match="ptr must be non-decreasing"):
        SegmentScanPlan.from_ptr(torch.tensor([0, 3, 2]))


# ---------------------------------------------------------------------------------------------
# public API and documentation


def test_public_api():
    assert seg_pkg.__all__ == [
        "NAMED_COMBINES",
        "SegmentPlan",
        "SegmentScanPlan",
        "segment_scan",
        "segment_tree_reduce",
    ]
    assert set(seg_ops.NAMED_COMBINES) == set(NAMES)


@pytest.mark.parametrize("module", [seg_ops, seg_plan])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("backend", (*FAST_BACKENDS, "reference"))
def test_empty_outputs_keep_the_autograd_link(backend):
    """No output rows: the result still hangs off x, so backward through it works on every
    backend (the reference used to return a fresh zero tensor)."""
    x = torch.zeros(0, 3, device=DEVICE, requires_grad=True)
    for out in (
        segment_tree_reduce(x, make_ptr(()), "sum", backend=backend),
        segment_scan(x, make_ptr(()), "sum", backend=backend),
        segment_scan(x, make_ptr((0, 0)), "max", backend=backend),
        segment_tree_reduce(x, make_ptr((0, 0)), "sum", backend=backend),  # identity rows only
    ):
        assert out.requires_grad
        out.sum().backward()
