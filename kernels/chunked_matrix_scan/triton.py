"""Triton path of :func:`~graphseq.kernels.chunked_matrix_scan`.

Forward pass: three kernels over a packed layout (a dense batch is packed as ``B`` sequences of
length ``T``; chunks never cross a sequence boundary, so no padding copy is made):

1. ``_chunk_state_kernel``, grid ``(chunks, H, K-tiles x V-tiles)``: each chunk's local state
   ``U_c = sum_j (f_{j+1} ... f_end) i_j k_j v_j^T`` (one ``tl.dot``) and its gate product
   ``F_c = f_0 ... f_end``.
2. ``_state_pass_kernel``, grid ``(H, K-tiles, V-tiles)``: walks the chunks in order,
   ``S <- F_c S + U_c``, restarting at each sequence's first chunk from its ``h0``; it stores
   the state *entering* every chunk and each sequence's final state.
3. ``_chunk_output_kernel``, grid ``(chunks, H, V-tiles)``: ``y = ((q k^T) * W) v + e * (q S_in)``
   with the segment-sum decay matrix ``W`` built in registers (``tl.cumsum`` down the columns of
   a masked ``[C, C]`` tile; signs from integer counts of negative gates, so they are exact).

Arithmetic is float64 for float64 inputs and float32 otherwise (``tl.dot`` with
``input_precision="ieee"``: no TF32). The kernel chunk is ``min(chunk_size, 64)`` rows, held in a
tile of at least 16 rows (``tl.dot``'s minimum); the result does not depend on it beyond rounding.

Backward pass: **not a Triton kernel.** The autograd function recomputes the forward pass with
the chunked PyTorch path (``chunked.py``) and differentiates that, so gradients are exact but
the backward runs at PyTorch speed and memory.

Import this module lazily (only when the Triton backend is chosen): it imports triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._autograd import first_order_only
from .._triton import autotune
from . import chunked

_MAX_CHUNK = 64

_CONFIGS = [
    triton.Config({}, num_warps=4, num_stages=1),
    triton.Config({}, num_warps=4, num_stages=2),
    triton.Config({}, num_warps=8, num_stages=1),
    triton.Config({}, num_warps=2, num_stages=1),
]


@triton.jit
def _load_negative(ptr, mask):
    """1 where the loaded sign entry is negative, else 0 (int32; masked-off rows count 0).

    The upcast before comparing matters: the interpreter compares bfloat16 as raw bits.
    """
    return (tl.load(ptr, mask=mask, other=0.0).to(tl.float32) < 0).to(tl.int32)


@autotune(configs=_CONFIGS, key=["H", "K", "V", "BC", "BK", "BV", "HAS_SIGN", "HAS_I", "FP64"])
@triton.jit
def _chunk_state_kernel(
    k_ptr,
    v_ptr,
    g_ptr,
    s_ptr,
    i_ptr,
    u_ptr,
    fc_ptr,
    start_ptr,
    len_ptr,
    H,
    K,
    V,
    BC: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_SIGN: tl.constexpr,
    HAS_I: tl.constexpr,
    FP64: tl.constexpr,
):
    ACC = tl.float64 if FP64 else tl.float32
    c = tl.program_id(0)
    h = tl.program_id(1)
    pid_kv = tl.program_id(2)
    n_vb = tl.cdiv(V, BV)
    kb = pid_kv // n_vb
    vb = pid_kv % n_vb

    start = tl.load(start_ptr + c)
    n_rows = tl.load(len_ptr + c)
    r = tl.arange(0, BC)
    rmask = r < n_rows
    tok = start + r  # int64
    after = r[:, None] > r[None, :]  # [t, j]: t after j

    g = tl.load(g_ptr + tok * H + h, mask=rmask, other=0.0).to(ACC)
    # decay from step j to the chunk end: exp(g_{j+1} + ... + g_end), a masked column sum
    w = tl.exp(tl.sum(tl.where(after, g[:, None], 0.0), axis=0))
    f_chunk = tl.exp(tl.sum(g, axis=0))
    if HAS_SIGN:
        neg = _load_negative(s_ptr + tok * H + h, rmask)
        n_neg_after = tl.sum(tl.where(after, neg[:, None], 0), axis=0)
        w = tl.where((n_neg_after & 1) == 1, -w, w)
        f_chunk = tl.where((tl.sum(neg, axis=0) & 1) == 1, -f_chunk, f_chunk)
    if HAS_I:
        w = w * tl.load(i_ptr + tok * H + h, mask=rmask, other=0.0).to(ACC)

    rk = kb * BK + tl.arange(0, BK)
    rv = vb * BV + tl.arange(0, BV)
    kmask = rk < K
    vmask = rv < V
    kk = tl.load(
        k_ptr + (tok * H + h)[:, None] * K + rk[None, :],
        mask=rmask[:, None] & kmask[None, :],
        other=0.0,
    ).to(ACC)
    vv = tl.load(
        v_ptr + (tok * H + h)[:, None] * V + rv[None, :],
        mask=rmask[:, None] & vmask[None, :],
        other=0.0,
    ).to(ACC)
    u = tl.dot(tl.trans(kk * w[:, None]), vv, input_precision="ieee")  # [BK, BV]
    base = (c * H + h).to(tl.int64) * K * V
    tl.store(
        u_ptr + base + rk[:, None] * V + rv[None, :],
        u,
        mask=kmask[:, None] & vmask[None, :],
    )
    if pid_kv == 0:
        tl.store(fc_ptr + c * H + h, f_chunk)


@triton.jit
def _state_pass_kernel(
    u_ptr,
    fc_ptr,
    h0_ptr,
    sin_ptr,
    hlast_ptr,
    seq_ptr,
    first_ptr,
    last_ptr,
    n_chunks,
    H,
    K,
    V,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_H0: tl.constexpr,
    FP64: tl.constexpr,
):
    ACC = tl.float64 if FP64 else tl.float32
    h = tl.program_id(0)
    kb = tl.program_id(1)
    vb = tl.program_id(2)
    rk = kb * BK + tl.arange(0, BK)
    rv = vb * BV + tl.arange(0, BV)
    mask = (rk < K)[:, None] & (rv < V)[None, :]
    off = rk[:, None] * V + rv[None, :]
    kv = K * V
    state = tl.zeros([BK, BV], dtype=ACC)
    for c in range(0, n_chunks):
        # scalar flags broadcast to the tile before comparing (the interpreter rejects a
        # scalar boolean inside a mask)
        is_first = (tl.zeros([BK, BV], dtype=tl.int32) + tl.load(first_ptr + c)) != 0
        is_last = (tl.zeros([BK, BV], dtype=tl.int32) + tl.load(last_ptr + c)) != 0
        n = tl.load(seq_ptr + c)
        seq_base = (n * H + h) * kv
        if HAS_H0:
            init = tl.load(h0_ptr + seq_base + off, mask=mask & is_first, other=0.0).to(ACC)
            state = tl.where(is_first, init, state)
        else:
            state = tl.where(is_first, 0.0, state)
        chunk_base = (c * H + h).to(tl.int64) * kv
        tl.store(sin_ptr + chunk_base + off, state, mask=mask)
        f_chunk = tl.load(fc_ptr + c * H + h)
        u = tl.load(u_ptr + chunk_base + off, mask=mask, other=0.0)
        state = f_chunk * state + u
        tl.store(hlast_ptr + seq_base + off, state, mask=mask & is_last)


@autotune(
    configs=_CONFIGS,
    key=["H", "K", "V", "BC", "BK", "BV", "HAS_SIGN", "HAS_I", "EXCLUSIVE", "FP64"],
)
@triton.jit
def _chunk_output_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    g_ptr,
    s_ptr,
    i_ptr,
    m_ptr,
    d_ptr,
    sin_ptr,
    y_ptr,
    start_ptr,
    len_ptr,
    H,
    K,
    V,
    BC: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_SIGN: tl.constexpr,
    HAS_I: tl.constexpr,
    EXCLUSIVE: tl.constexpr,
    FP64: tl.constexpr,
):
    ACC = tl.float64 if FP64 else tl.float32
    c = tl.program_id(0)
    h = tl.program_id(1)
    vb = tl.program_id(2)

    start = tl.load(start_ptr + c)
    n_rows = tl.load(len_ptr + c)
    r = tl.arange(0, BC)
    rmask = r < n_rows
    tok = start + r  # int64
    t_ = r[:, None]
    j_ = r[None, :]
    gate_off = tok * H + h

    # ---- decay matrix W[t, j] and the weight e[t] of the entering state ----
    if EXCLUSIVE:
        # row t reads C_{t-1}: decays over (j, t-1], i.e. segment sums of the gate shifted by
        # one step (loaded shifted, never formed as a difference)
        pmask = rmask & (r >= 1)
        gp = tl.load(g_ptr + gate_off - H, mask=pmask, other=0.0).to(ACC)
        seg = tl.cumsum(tl.where(t_ > j_ + 1, gp[:, None], 0.0), axis=0)
        W = tl.where(t_ > j_, tl.exp(seg), 0.0)
        e = tl.exp(tl.cumsum(gp, axis=0))
        if HAS_SIGN:
            neg = _load_negative(s_ptr + gate_off, rmask)
            negp = _load_negative(s_ptr + gate_off - H, pmask)
            n_neg = tl.cumsum(neg, axis=0)  # negatives among steps <= t
            n_negp = tl.cumsum(negp, axis=0)  # negatives among steps < t
            W = tl.where(((n_negp[:, None] - n_neg[None, :]) & 1) == 1, -W, W)
            e = tl.where((n_negp & 1) == 1, -e, e)
        if HAS_I:
            W = W * tl.load(i_ptr + gate_off, mask=rmask, other=0.0).to(ACC)[None, :]
        mg = tl.load(m_ptr + gate_off, mask=rmask, other=0.0).to(ACC)
        dg = tl.load(d_ptr + gate_off, mask=rmask, other=0.0).to(ACC)
        W = W * mg[:, None] + tl.where(t_ == j_, dg[:, None], 0.0)
        e = e * mg
    else:
        g = tl.load(g_ptr + gate_off, mask=rmask, other=0.0).to(ACC)
        seg = tl.cumsum(tl.where(t_ > j_, g[:, None], 0.0), axis=0)  # g_{j+1} + ... + g_t
        W = tl.where(t_ >= j_, tl.exp(seg), 0.0)
        e = tl.exp(tl.cumsum(g, axis=0))
        if HAS_SIGN:
            neg = _load_negative(s_ptr + gate_off, rmask)
            n_neg = tl.cumsum(neg, axis=0)
            W = tl.where(((n_neg[:, None] - n_neg[None, :]) & 1) == 1, -W, W)
            e = tl.where((n_neg & 1) == 1, -e, e)
        if HAS_I:
            W = W * tl.load(i_ptr + gate_off, mask=rmask, other=0.0).to(ACC)[None, :]

    # ---- q k^T and q S_in, accumulated over K tiles ----
    rv = vb * BV + tl.arange(0, BV)
    vmask = rv < V
    sin_base = (c * H + h).to(tl.int64) * K * V
    A = tl.zeros([BC, BC], dtype=ACC)
    y_inter = tl.zeros([BC, BV], dtype=ACC)
    for kb in range(0, tl.cdiv(K, BK)):
        rk = kb * BK + tl.arange(0, BK)
        kmask = rk < K
        qk_mask = rmask[:, None] & kmask[None, :]
        qq = tl.load(q_ptr + gate_off[:, None] * K + rk[None, :], mask=qk_mask, other=0.0)
        kk = tl.load(k_ptr + gate_off[:, None] * K + rk[None, :], mask=qk_mask, other=0.0)
        s_in = tl.load(
            sin_ptr + sin_base + rk[:, None] * V + rv[None, :],
            mask=kmask[:, None] & vmask[None, :],
            other=0.0,
        )
        qq = qq.to(ACC)
        A += tl.dot(qq, tl.trans(kk.to(ACC)), input_precision="ieee")
        y_inter += tl.dot(qq, s_in, input_precision="ieee")

    vv = tl.load(
        v_ptr + gate_off[:, None] * V + rv[None, :],
        mask=rmask[:, None] & vmask[None, :],
        other=0.0,
    ).to(ACC)
    y = tl.dot(A * W, vv, input_precision="ieee") + e[:, None] * y_inter
    tl.store(
        y_ptr + gate_off[:, None] * V + rv[None, :],
        y.to(y_ptr.dtype.element_ty),
        mask=rmask[:, None] & vmask[None, :],
    )


def _block(n: int, lo: int = 16, hi: int = 64) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def _forward(q, k, v, log_f, i, f_sign, m, d, h0, cu_seqlens, chunk_size):
    """Run the three kernels; returns ``(y, h_last)`` (no autograd)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    fp64 = q.dtype == torch.float64
    acc = torch.float64 if fp64 else torch.float32
    state_dtype = torch.promote_types(q.dtype, torch.float32)
    dev = q.device
    if cu_seqlens is None:
        cu_seqlens = torch.arange(B + 1, device=dev, dtype=torch.long) * T
    N = cu_seqlens.numel() - 1
    C = min(chunk_size, _MAX_CHUNK)
    table = chunked.chunk_table(cu_seqlens, C)
    NC = table.n_chunks

    y = torch.empty((B, T, H, V), dtype=q.dtype, device=dev)
    if h0 is None:
        h_last = torch.zeros((N, H, K, V), dtype=acc, device=dev)
    else:
        h_last = h0.to(acc).clone().contiguous()
    if NC == 0:
        return y, h_last.to(state_dtype)

    def flat(x):
        return None if x is None else x.contiguous()

    q_, k_, v_, g_, s_, i_, m_, d_ = (flat(x) for x in (q, k, v, log_f, f_sign, i, m, d))
    dummy = g_  # stands in for absent optional pointers (never read)
    h0_ = h_last.clone() if h0 is not None else None
    BC, BK, BV = _block(C), _block(K), _block(V)
    nk, nv = triton.cdiv(K, BK), triton.cdiv(V, BV)
    start, length = table.start.contiguous(), table.length.contiguous()

    u = torch.empty((NC, H, K, V), dtype=acc, device=dev)
    f_chunk = torch.empty((NC, H), dtype=acc, device=dev)
    _chunk_state_kernel[(NC, H, nk * nv)](
        k_,
        v_,
        g_,
        s_ if s_ is not None else dummy,
        i_ if i_ is not None else dummy,
        u,
        f_chunk,
        start,
        length,
        H,
        K,
        V,
        BC=BC,
        BK=BK,
        BV=BV,
        HAS_SIGN=s_ is not None,
        HAS_I=i_ is not None,
        FP64=fp64,
    )

    s_in = torch.empty((NC, H, K, V), dtype=acc, device=dev)
    _state_pass_kernel[(H, nk, nv)](
        u,
        f_chunk,
        h0_ if h0_ is not None else u,
        s_in,
        h_last,
        table.seq.contiguous(),
        table.first.to(torch.int32),
        table.last.to(torch.int32),
        NC,
        H,
        K,
        V,
        BK=BK,
        BV=BV,
        HAS_H0=h0_ is not None,
        FP64=fp64,
    )

    _chunk_output_kernel[(NC, H, nv)](
        q_,
        k_,
        v_,
        g_,
        s_ if s_ is not None else dummy,
        i_ if i_ is not None else dummy,
        m_ if m_ is not None else dummy,
        d_ if d_ is not None else dummy,
        s_in,
        y,
        start,
        length,
        H,
        K,
        V,
        BC=BC,
        BK=BK,
        BV=BV,
        HAS_SIGN=s_ is not None,
        HAS_I=i_ is not None,
        EXCLUSIVE=m_ is not None,
        FP64=fp64,
    )
    return y, h_last.to(state_dtype)


class _TritonChunkedMatrixScan(torch.autograd.Function):
    """Triton forward; backward by recomputation through the chunked PyTorch path."""

    @staticmethod
    def forward(ctx, q, k, v, log_f, i, f_sign, m, d, h0, cu_seqlens, chunk_size):
        y, h_last = _forward(q, k, v, log_f, i, f_sign, m, d, h0, cu_seqlens, chunk_size)
        ctx.save_for_backward(q, k, v, log_f, i, f_sign, m, d, h0, cu_seqlens)
        ctx.chunk_size = chunk_size
        return y, h_last

    @staticmethod
    @first_order_only("chunked_matrix_scan (triton backend)", "backend='torch' records a graph")
    def backward(ctx, dy, dh):
        q, k, v, log_f, i, f_sign, m, d, h0, cu_seqlens = ctx.saved_tensors
        # differentiable inputs, in forward-argument order; f_sign (index 5) never is
        diff_idx = (0, 1, 2, 3, 4, 6, 7, 8)
        originals = (q, k, v, log_f, i, f_sign, m, d, h0)
        want = [n for n in diff_idx if originals[n] is not None and ctx.needs_input_grad[n]]
        leaves = list(originals)
        for n in want:
            leaves[n] = originals[n].detach().requires_grad_(True)
        with torch.enable_grad():
            y, h_last = chunked.chunked_matrix_scan(
                *leaves[:5],
                f_sign=leaves[5],
                m=leaves[6],
                d=leaves[7],
                h0=leaves[8],
                cu_seqlens=cu_seqlens,
                chunk_size=ctx.chunk_size,
            )
        grads = [None] * 11
        # only the outputs that depend on a wanted input: with T = 0, y has no graph, and
        # with the exclusive readout h_last does not depend on m or d
        pairs = [(o, g) for o, g in ((y, dy), (h_last, dh)) if o.requires_grad]
        found = [None] * len(want)
        if want and pairs:
            found = torch.autograd.grad(
                [o for o, _ in pairs],
                [leaves[n] for n in want],
                [g for _, g in pairs],
                allow_unused=True,
            )
        for n, gr in zip(want, found):
            grads[n] = torch.zeros_like(originals[n]) if gr is None else gr
        return tuple(grads)


def chunked_matrix_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_f: torch.Tensor,
    i: torch.Tensor | None = None,
    *,
    f_sign: torch.Tensor | None = None,
    m: torch.Tensor | None = None,
    d: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton path; same contract as the public function (arguments validated)."""
    return _TritonChunkedMatrixScan.apply(
        q, k, v, log_f, i, f_sign, m, d, h0, cu_seqlens, int(chunk_size)
    )
