"""Triton paths with more channels than one program's block (several programs along the
channel axis): linear_scan (BD = 16 in the interpreter), segment ops (BLOCK_C = 16) and
chunked_matrix_scan (BV <= 64). Every existing Triton test uses at most 10 / 8 / 64 channels,
so a kernel that ignored its channel-block index would pass the suite."""

import pytest
import torch

from graphseq.kernels import chunked_matrix_scan, linear_scan, segment_scan, segment_tree_reduce
from graphseq.testing import DEVICE, assert_close, requires_triton

F64 = torch.float64


@requires_triton
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_triton_many_channel_blocks(reverse):
    gen = torch.Generator().manual_seed(0)
    lengths = [5, 0, 40, 1]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=DEVICE)
    T, M = sum(lengths), 37  # 3 channel blocks of 16, the last one partial
    for packed in (False, True):
        B = 1 if packed else 2
        a = (torch.rand(B, T, M, generator=gen, dtype=F64) * 2 - 1).to(DEVICE).requires_grad_()
        b = torch.randn(B, T, M, generator=gen, dtype=F64).to(DEVICE).requires_grad_()
        n = len(lengths) if packed else B
        h0 = torch.randn(n, M, generator=gen, dtype=F64).to(DEVICE).requires_grad_()
        kw = dict(reverse=reverse, cu_seqlens=cu if packed else None)
        got = linear_scan(a, b, h0, backend="triton", **kw)
        want = linear_scan(a, b, h0, backend="reference", **kw)
        for g, w in zip(got, want):
            assert_close(g, w)
        up = [torch.randn_like(w) for w in want]
        g_got = torch.autograd.grad(got, (a, b, h0), up)
        g_want = torch.autograd.grad(want, (a, b, h0), up)
        for g, w in zip(g_got, g_want):
            assert_close(g, w)


@requires_triton
@pytest.mark.parametrize("name", ["sum", "max", "min", "prod"])
def test_segment_triton_many_channel_blocks(name):
    ptr = torch.tensor([0, 3, 3, 20, 21], device=DEVICE)
    x = torch.randn(21, 37, dtype=F64, device=DEVICE)  # 3 channel blocks of 16
    if name == "prod":
        x = 1 + 0.1 * x
    x.requires_grad_()
    for op in (segment_tree_reduce, segment_scan):
        got = op(x, ptr, name, backend="triton")
        want = op(x, ptr, name, backend="reference")
        assert_close(got, want, msg=op.__name__)
        up = torch.randn_like(want)
        (g_got,) = torch.autograd.grad(got, x, up)
        (g_want,) = torch.autograd.grad(want, x, up)
        assert_close(g_got, g_want, msg=op.__name__)


@requires_triton
@pytest.mark.parametrize("exclusive", [False, True])
def test_chunked_matrix_scan_triton_many_value_blocks(exclusive):
    gen = torch.Generator().manual_seed(1)
    B, T, H, K, V = 1, 19, 1, 3, 70  # V = 70: two value blocks of 64
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=F64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=F64)
    f = torch.rand(B, T, H, generator=gen, dtype=F64) * 2 - 1
    i, m, d = (torch.randn(B, T, H, generator=gen, dtype=F64) for _ in range(3))
    h0 = torch.randn(B, H, K, V, generator=gen, dtype=F64)
    kw = dict(f_sign=f.sign(), h0=h0, chunk_size=8)
    if exclusive:
        kw.update(m=m, d=d)
    y, h = chunked_matrix_scan(q, k, v, f.abs().log(), i, backend="triton", **kw)
    y_ref, h_ref = chunked_matrix_scan(q, k, v, f.abs().log(), i, backend="reference", **kw)
    assert_close(y, y_ref)
    assert_close(h, h_ref)
