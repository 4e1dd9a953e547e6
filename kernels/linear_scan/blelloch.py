"""Vectorised PyTorch path of :func:`graphseq.kernels.linear_scan` (the CPU default).

A recursive even/odd scan (Blelloch's up-sweep/down-sweep written as a recursion): combine
neighbouring pairs into one affine map each, scan the half-length sequence of pairs, then fill
in the other half with one fused multiply-add. Every level is a handful of whole-tensor ops, so
there is no Python loop over time: ``ceil(log2 T)`` levels, O(T) work in all.

Packed sequences (``cu_seqlens``) carry a per-step *reset* flag: a step that starts a sequence
ignores the state before it. Resets are applied with ``torch.where`` rather than by zeroing the
gate, so a NaN or inf in one sequence can never reach the next one (``0 * nan`` is ``nan``).
"""

from __future__ import annotations

import torch

# Below this length a plain loop is cheaper than another level of recursion.
_LOOP_MAX = 4


def _combine_pairs(a, b, r, reverse):
    """Fold neighbouring steps into one affine map each; returns (A, B, R, first_unpaired)."""
    T = a.shape[1]
    m = T // 2
    if reverse:
        # pair (s, s + 1) is applied as s + 1 first, then s; pairs are aligned to the end
        s = T % 2
        a1, b1 = a[:, s + 1 :: 2], b[:, s + 1 :: 2]  # applied first
        a2, b2 = a[:, s : s + 2 * m : 2], b[:, s : s + 2 * m : 2]  # applied second
        r2 = None if r is None else r[s : s + 2 * m : 2]
        r1 = None if r is None else r[s + 1 :: 2]
    else:
        a1, b1 = a[:, 0 : 2 * m : 2], b[:, 0 : 2 * m : 2]
        a2, b2 = a[:, 1 : 2 * m : 2], b[:, 1 : 2 * m : 2]
        r1 = None if r is None else r[0 : 2 * m : 2]
        r2 = None if r is None else r[1 : 2 * m : 2]
    A = a2 * a1
    B = torch.addcmul(b2, a2, b1)
    R = None
    if r is not None:
        B = torch.where(r2[None, :, None], b2, B)
        R = r1 | r2
    return A, B, R


def _apply(a, b, r, prev):
    """h = a * prev + b, or b where the step resets."""
    out = torch.addcmul(b, a, prev)
    if r is not None:
        out = torch.where(r[None, :, None], b, out)
    return out


def _loop(a, b, h0, r, reverse):
    T = a.shape[1]
    h = torch.empty_like(b)
    prev = torch.zeros_like(b[:, 0]) if h0 is None else h0
    for t in range(T - 1, -1, -1) if reverse else range(T):
        rt = None if r is None else r[t : t + 1]
        prev = _apply(a[:, t : t + 1], b[:, t : t + 1], rt, prev.unsqueeze(1)).squeeze(1)
        h[:, t] = prev
    return h


def _scan(a, b, h0, r, reverse):
    T = a.shape[1]
    if T <= _LOOP_MAX:
        return _loop(a, b, h0, r, reverse)
    A, B, R = _combine_pairs(a, b, r, reverse)
    H = _scan(A, B, h0, R, reverse)  # states at the second-applied element of every pair
    h = torch.empty_like(b)
    m = T // 2
    if reverse:
        s = T % 2
        h[:, s : s + 2 * m : 2] = H
        # first-applied steps s+1, s+3, ..., T-3 follow the state of the next pair
        idx = slice(s + 1, T - 1, 2)
        rr = None if r is None else r[idx]
        h[:, idx] = _apply(a[:, idx], b[:, idx], rr, H[:, 1:])
        # the last step follows h0 (or nothing)
        if h0 is None:
            h[:, T - 1] = b[:, T - 1]
        else:
            rl = None if r is None else r[T - 1 :]
            h[:, T - 1 :] = _apply(a[:, T - 1 :], b[:, T - 1 :], rl, h0.unsqueeze(1))
        if s == 1:  # step 0 is unpaired: it follows the state at step 1
            r0 = None if r is None else r[0:1]
            h[:, 0:1] = _apply(a[:, 0:1], b[:, 0:1], r0, H[:, 0:1])
    else:
        h[:, 1 : 2 * m : 2] = H
        r0 = None if r is None else r[0:1]
        if h0 is None:
            h[:, 0] = b[:, 0]
        else:
            h[:, 0:1] = _apply(a[:, 0:1], b[:, 0:1], r0, h0.unsqueeze(1))
        # remaining even steps 2, 4, ... follow the odd step before them
        ne = (T + 1) // 2 - 1
        idx = slice(2, None, 2)
        rr = None if r is None else r[idx]
        h[:, idx] = _apply(a[:, idx], b[:, idx], rr, H[:, :ne])
    return h


def scan(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None,
    reverse: bool,
    resets: torch.Tensor | None,
) -> torch.Tensor:
    """Dense core: ``a, b: [B, T, M]`` in the accumulation dtype, ``h0: [B, M]`` or ``None``,
    ``resets: [T]`` bool or ``None`` (a step with a reset ignores the state before it).
    Returns ``h: [B, T, M]``."""
    if a.shape[1] == 0:
        return torch.empty_like(b)
    return _scan(a, b, h0, resets, reverse)
