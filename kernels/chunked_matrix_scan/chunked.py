"""Vectorised PyTorch path of :func:`~graphseq.kernels.chunked_matrix_scan` (the CPU default).

Time is cut into chunks of ``C = chunk_size`` steps. Inside a chunk everything is a few batched
matmuls; across chunks only the ``[K, V]`` chunk-boundary states recur, and that recurrence is
an elementwise first-order scan handed to :func:`~graphseq.kernels.linear_scan`. There is no
Python loop over time or over chunks, so autograd through these ops is the backward pass.

Decays are never formed as differences of a cumulative sum (that loses precision and turns
``log_f = -inf`` into ``-inf - -inf = NaN``). The intra-chunk decay matrix is a *segment sum*:
column ``j`` of ``where(t > j, g_t, 0)`` is cumulatively summed down ``t``, which gives
``S[t, j] = g_{j+1} + ... + g_t`` directly. Signs are a cumulative product of ``±1`` (exact), and
the sign of a product over ``(j, t]`` is ``cp_t * cp_j``. See README.md for the derivation.

Packed sequences (``cu_seqlens``) are padded to whole chunks with neutral steps (``log_f = 0``,
``k = v = 0``: the state passes through unchanged), so no chunk crosses a sequence boundary;
the chunk-state scan restarts at each sequence's first chunk from that sequence's ``h0``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..linear_scan import linear_scan


class ChunkTable(NamedTuple):
    """Where each chunk of a packed batch lives (all tensors on the data's device, int64/bool).

    ``seq[c]`` is chunk ``c``'s sequence, ``start[c]`` its first token, ``length[c]`` its number
    of real tokens (``1 .. C``), ``first[c]`` / ``last[c]`` whether it opens / closes its
    sequence; ``chunk_ptr`` ``[N + 1]`` is the boundary tensor of chunks per sequence and
    ``n_chunks`` the total (one host synchronisation).
    """

    seq: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor
    chunk_ptr: torch.Tensor
    n_chunks: int


def chunk_table(cu_seqlens: torch.Tensor, chunk_size: int) -> ChunkTable:
    """Split every sequence of ``cu_seqlens`` into chunks of ``chunk_size`` (the last one short)."""
    cu = cu_seqlens.long()
    dev = cu.device
    N = cu.numel() - 1
    lengths = cu[1:] - cu[:-1]
    n_per_seq = (lengths + chunk_size - 1) // chunk_size
    chunk_ptr = torch.zeros(N + 1, dtype=torch.long, device=dev)
    chunk_ptr[1:] = torch.cumsum(n_per_seq, 0)
    n_chunks = int(chunk_ptr[-1])
    seq = torch.repeat_interleave(torch.arange(N, device=dev), n_per_seq, output_size=n_chunks)
    local = torch.arange(n_chunks, device=dev) - chunk_ptr[seq]
    start = cu[seq] + local * chunk_size
    length = torch.clamp(cu[seq + 1] - start, max=chunk_size)
    first = local == 0
    last = local == n_per_seq[seq] - 1
    return ChunkTable(seq, start, length, first, last, chunk_ptr, n_chunks)


def _pad_dense(x: torch.Tensor, n_chunks: int, C: int) -> torch.Tensor:
    """``[B, T, ...]`` -> ``[B, n_chunks, C, ...]``, zero-padded at the end of time."""
    B, T = x.shape[:2]
    pad = n_chunks * C - T
    if pad:
        x = torch.cat([x, x.new_zeros((B, pad, *x.shape[2:]))], dim=1)
    return x.reshape(B, n_chunks, C, *x.shape[2:])


def _gather_packed(x: torch.Tensor, tok: torch.Tensor, valid: torch.Tensor, n_chunks: int, C: int):
    """``[1, T, ...]`` packed -> ``[1, n_chunks, C, ...]`` with zeros on the padding slots."""
    xp = x[0].index_select(0, tok)
    mask = valid.view(-1, *([1] * (x.dim() - 2)))
    xp = torch.where(mask, xp, torch.zeros((), dtype=x.dtype, device=x.device))
    return xp.reshape(1, n_chunks, C, *x.shape[2:])


def _to_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, NC, C, H, *]`` -> ``[B, NC, H, C, *]``, contiguous (once, for the matmuls)."""
    return x.transpose(2, 3).contiguous()


def _chunk_core(q, k, v, g, s, i, m, d, h0, h0c, first, chunk_cu):
    """Everything on chunked tensors in the accumulation dtype.

    Shapes: ``q, k: [B, NC, H, C, K]``; ``v: [B, NC, H, C, V]``; gates ``[B, NC, H, C]`` (``s``,
    ``i``, ``m``, ``d`` may be ``None``); ``h0`` ``[N, H, K, V]`` or ``None``, and ``h0c`` the
    same broadcastable to ``[B, NC, H, K, V]`` (each chunk's sequence's ``h0``); ``first`` ``[NC]``
    bool; ``chunk_cu`` the ``[N + 1]`` boundaries of sequences in chunks (packed input, ``B = 1``)
    or ``None`` (dense). Returns ``y [B, NC, H, C, V]`` and every sequence's final state
    ``[N, H, K, V]`` (``h0`` or zeros for an empty one).

    The signed decay ``D[t, j] = cp_t cp_j exp(S[t, j])`` is never materialised with its signs:
    the row factor ``cp_t`` is folded into ``q`` and the column factor ``cp_j i_j`` into ``k``
    before ``q k^T``, so only one ``[C, C]`` product with ``exp(S)`` remains.
    """
    C = q.shape[-2]
    dev = q.device
    t_idx = torch.arange(C, device=dev)
    strict = t_idx[:, None] > t_idx[None, :]  # j < t
    causal = t_idx[:, None] >= t_idx[None, :]  # j <= t
    zero = torch.zeros((), dtype=g.dtype, device=dev)

    # segment sum S[t, j] = g_{j+1} + ... + g_t (0 on the diagonal, -inf above it)
    seg = torch.cumsum(torch.where(strict, g.unsqueeze(-1), zero), dim=-2)
    E = torch.exp(seg.masked_fill(~causal, float("-inf")))  # |f_{j+1} ... f_t|, 0 for j > t
    g_cum = torch.cumsum(g, dim=-1)  # log|f_0 ... f_t|
    cp = None
    col = i  # per-key factor: cp_j i_j
    if s is not None:
        cp = torch.cumprod(torch.where(s < 0, -1.0, 1.0).to(g.dtype), dim=-1)  # exactly ±1
        col = cp if i is None else cp * i

    # chunk-local state U_c = sum_j (f_{j+1} ... f_end) i_j k_j v_j^T and chunk gate F_c
    F = torch.exp(g_cum[..., -1])  # [B, NC, H]
    w_end = E[..., -1, :]  # [B, NC, H, C]
    if cp is not None:
        F = F * cp[..., -1]
        w_end = w_end * cp[..., -1:]
    if col is not None:
        w_end = w_end * col
    U = (k * w_end.unsqueeze(-1)).transpose(-1, -2) @ v  # [B, NC, H, K, V]

    # the recurrence over chunks, S_c = F_c S_{c-1} + U_c, restarted at each sequence's first
    # chunk from its h0 (linear_scan's varlen mode, in units of chunks: NaN never crosses)
    states, h_last = linear_scan(
        F[..., None, None].expand_as(U), U, h0=h0, cu_seqlens=chunk_cu, backend="torch"
    )
    first_b = first.view(1, -1, 1, 1, 1)
    prev = torch.cat([torch.zeros_like(states[:, :1]), states[:, :-1]], dim=1)
    start_state = zero if h0c is None else h0c
    C_prev = torch.where(first_b, start_state, prev)  # the state entering each chunk

    # outputs: intra-chunk (masked, decayed attention) + inter-chunk (read the entering state)
    k_c = k if col is None else k * col.unsqueeze(-1)
    if m is None:
        # y_t = cp_t [sum_{j<=t} exp(S[t,j]) cp_j i_j (q_t.k_j) v_j + exp(g_cum_t) q_t^T C_in]
        row = cp
        decay = E
        e = torch.exp(g_cum)
    else:
        # y_t = m_t C_{t-1}^T q_t + d_t (q_t.k_t) v_t: the decay into C_{t-1} is row t-1 of
        # exp(S) (strictly below the diagonal) and the row sign is cp_{t-1}
        decay = torch.cat([torch.zeros_like(E[..., :1, :]), E[..., :-1, :]], dim=-2)
        decay = torch.where(strict, decay, zero)
        row = m
        if cp is not None:
            row = m * torch.cat([torch.ones_like(cp[..., :1]), cp[..., :-1]], dim=-1)
        e = torch.exp(torch.cat([torch.zeros_like(g_cum[..., :1]), g_cum[..., :-1]], dim=-1))
    q_r = q if row is None else q * row.unsqueeze(-1)
    y = ((q_r @ k_c.transpose(-1, -2)) * decay) @ v + e.unsqueeze(-1) * (q_r @ C_prev)
    if m is not None:
        y = y + (d * (q * k).sum(-1)).unsqueeze(-1) * v
    return y, h_last


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
    """Chunked PyTorch path; same contract as the public function (arguments validated)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = int(chunk_size)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    state_dtype = torch.promote_types(q.dtype, torch.float32)
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1

    if cu_seqlens is None:
        n_chunks = -(-T // C)
        first = torch.zeros(n_chunks, dtype=torch.bool, device=q.device)
        first[:1] = True

        def chunk(x):
            return None if x is None else _pad_dense(x.to(acc), n_chunks, C)

        h0c = None if h0 is None else h0.to(acc).unsqueeze(1)  # [B, 1, H, K, V]
    else:
        table = chunk_table(cu_seqlens, C)
        n_chunks = table.n_chunks
        first = table.first
        slot = torch.arange(n_chunks * C, device=q.device)
        c_of, r_of = slot // C, slot % C
        valid = r_of < table.length[c_of]
        tok = torch.where(valid, table.start[c_of] + r_of, torch.zeros_like(slot))

        def chunk(x):
            return None if x is None else _gather_packed(x.to(acc), tok, valid, n_chunks, C)

        h0c = None if h0 is None else h0.to(acc)[table.seq].unsqueeze(0)  # [1, NC, H, K, V]

    if n_chunks == 0:  # T == 0: nothing happens, the final state is the initial one
        y = q.new_zeros(B, T, H, V)
        h_last = q.new_zeros(N, H, K, V, dtype=state_dtype) if h0 is None else h0.to(acc)
        return y, h_last.to(state_dtype).clone()

    q_, k_, v_ = (_to_heads(chunk(x)) for x in (q, k, v))
    g_, s_, i_, m_, d_ = (
        None if x is None else _to_heads(chunk(x)) for x in (log_f, f_sign, i, m, d)
    )
    h0_ = None if h0 is None else h0.to(acc)
    chunk_cu = None if cu_seqlens is None else table.chunk_ptr
    y, h_last = _chunk_core(q_, k_, v_, g_, s_, i_, m_, d_, h0_, h0c, first, chunk_cu)
    y = y.transpose(2, 3).reshape(y.shape[0], n_chunks * C, H, V)  # [B', NC*C, H, V]

    if cu_seqlens is None:
        y = y[:, :T]
    else:
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        seq_of_tok = torch.repeat_interleave(
            torch.arange(N, device=q.device), lengths, output_size=T
        )
        pos = table.chunk_ptr[seq_of_tok] * C + torch.arange(T, device=q.device)
        pos = pos - cu_seqlens[seq_of_tok]
        y = y.index_select(1, pos)
    return y.to(q.dtype), h_last.to(state_dtype)
