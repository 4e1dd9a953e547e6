"""Ground truth for :func:`~graphseq.kernels.chunked_matrix_scan`: a plain loop over time.

Written to be read, not to be fast. Each sequence (each batch row, or each ``cu_seqlens``
segment) is walked one step at a time, vectorised over the batch and the heads only:

    f_t = sign_t * exp(log_f_t)
    inclusive:  C_t = f_t C_{t-1} + i_t k_t v_t^T,   y_t = C_t^T q_t
    exclusive:  y_t = m_t C_{t-1}^T q_t + d_t (q_t . k_t) v_t,   then C_t as above

The arithmetic runs in float64 for float64 inputs and in float32 otherwise. Arguments are
assumed validated by the public function (``cu_seqlens`` as an int64 tensor).
"""

from __future__ import annotations

import torch


def _step_all(q, k, v, f, i, m, d, C):
    """Run the loop over dim 1 of ``[B, T, H, ...]`` tensors from state ``C`` ``[B, H, K, V]``.

    Returns the outputs ``[B, T, H, V]`` and the final state.
    """
    ys = []
    # unbind (not q[:, t]) keeps the backward pass linear in T
    steps = zip(
        q.unbind(1),
        k.unbind(1),
        v.unbind(1),
        f.unbind(1),
        i.unbind(1),
        m.unbind(1) if m is not None else [None] * q.shape[1],
        d.unbind(1) if d is not None else [None] * q.shape[1],
    )
    for q_t, k_t, v_t, f_t, i_t, m_t, d_t in steps:
        # q_t, k_t: [B, H, K]; v_t: [B, H, V]; gates: [B, H]
        kv = k_t.unsqueeze(-1) * v_t.unsqueeze(-2)  # [B, H, K, V]
        if m_t is None:
            C = f_t[..., None, None] * C + i_t[..., None, None] * kv
            y_t = torch.einsum("bhk,bhkv->bhv", q_t, C)
        else:
            y_prev = torch.einsum("bhk,bhkv->bhv", q_t, C)
            qk = (q_t * k_t).sum(-1)  # [B, H]
            y_t = m_t[..., None] * y_prev + (d_t * qk)[..., None] * v_t
            C = f_t[..., None, None] * C + i_t[..., None, None] * kv
        ys.append(y_t)
    if ys:
        y = torch.stack(ys, dim=1)
    else:
        y = v.new_zeros(v.shape)
    return y, C


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
    """Loop reference; same contract as the public function (``chunk_size`` is unused)."""
    del chunk_size  # the loop has no chunks
    B, T, H, K = q.shape
    V = v.shape[-1]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    state_dtype = torch.promote_types(q.dtype, torch.float32)

    def up(x):
        return None if x is None else x.to(acc)

    q_, k_, v_, g_ = up(q), up(k), up(v), up(log_f)
    f = torch.exp(g_)
    if f_sign is not None:
        f = torch.where(f_sign < 0, -f, f)
    i_ = torch.ones_like(g_) if i is None else up(i)
    m_, d_ = up(m), up(d)

    if cu_seqlens is None:
        C0 = q_.new_zeros(B, H, K, V) if h0 is None else up(h0)
        y, C = _step_all(q_, k_, v_, f, i_, m_, d_, C0)
        return y.to(q.dtype), C.to(state_dtype)

    bounds = cu_seqlens.tolist()
    N = len(bounds) - 1
    ys, finals = [], []
    for n in range(N):
        lo, hi = bounds[n], bounds[n + 1]
        C0 = q_.new_zeros(1, H, K, V) if h0 is None else up(h0[n : n + 1])
        sl = slice(lo, hi)
        y_n, C_n = _step_all(
            q_[:, sl],
            k_[:, sl],
            v_[:, sl],
            f[:, sl],
            i_[:, sl],
            None if m_ is None else m_[:, sl],
            None if d_ is None else d_[:, sl],
            C0,
        )
        ys.append(y_n)
        finals.append(C_n)
    y = torch.cat(ys, dim=1) if ys else q_.new_zeros(1, T, H, V)
    h_last = torch.cat(finals, dim=0) if finals else q_.new_zeros(0, H, K, V)
    return y.to(q.dtype), h_last.to(state_dtype)
