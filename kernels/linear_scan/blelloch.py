"""Vectorised PyTorch path of :func:`graphseq.kernels.linear_scan` (the CPU default).

A recursive even/odd scan (Blelloch's up-sweep/down-sweep written as a recursion): combine
neighbouring pairs into one affine map each, scan the half-length sequence of pairs, then fill
in the other half with one fused multiply-add. Every level is a handful of whole-tensor ops, so
there is no Python loop over time: ``ceil(log2 T)`` levels, O(T) work in all.

Packed sequences (``cu_seqlens``) carry a per-step *reset* flag: a step that starts a sequence
ignores the state before it. Resets are applied with ``torch.where`` rather than by zeroing the
gate, so a NaN or inf in one sequence can never reach the next one (``0 * nan`` is ``nan``).

Gate products over long spans. The combined gate of a span is the product of its gates, which
overflows when gates with ``|a| > 1`` multiply up, although the loop, which never forms it,
stays finite where the state it multiplies is 0 (no input yet; an exactly-zero gate after the
span, whose ``0 * inf`` would be NaN). When some ``|a| > 1`` (or a gate is not finite) the
combined gates are therefore carried as a mantissa and a power-of-two exponent
(``torch.frexp``) and applied as ``ldexp(m * h, e)``: scaling by a power of two is exact, so
the values are bitwise those of plain products wherever these do not overflow or underflow,
and a product overflows only where the loop's state does. Gates with ``|a| <= 1`` everywhere
(sigmoid or tanh gates) cannot overflow and keep the plain products.
"""

from __future__ import annotations

import math

import torch

# Below this length a plain loop is cheaper than another level of recursion.
_LOOP_MAX = 4


def _ldexp(x, e):
    """``x * 2**e`` for an int tensor ``e``, exact where the result is a normal number.

    ``torch.ldexp`` forms ``2**e`` first, which overflows (or flushes to 0) for exponents the
    product itself does not need. ``e`` is clamped to the range beyond which the result is
    0 or inf anyway and applied in three same-signed steps that each stay representable.
    """
    fi = torch.finfo(x.dtype)
    lim = math.ceil(math.log2(fi.max) - math.log2(fi.tiny) - math.log2(fi.eps)) + 2
    e = e.clamp(-lim, lim)
    e1 = e // 3  # floor: the three pieces share the sign of e
    e2 = (e - e1) // 2
    e3 = e - e1 - e2
    for piece in (e1, e2, e3):
        x = x * torch.exp2(piece.to(x.dtype))
    return x


def _affine(a, e, prev, b):
    """``a * prev + b``, with ``a`` a mantissa and ``e`` its exponent when ``e`` is given."""
    if e is None:
        return torch.addcmul(b, a, prev)
    return b + _ldexp(a * prev, e)


def _slice(e, idx):
    return None if e is None else e[:, idx]


def _combine_pairs(a, e, b, r, reverse, split):
    """Fold neighbouring steps into one affine map each; returns (A, E, B, R).

    With ``split`` the combined gates come back as a mantissa ``A`` and exponent ``E``
    (``e is None`` on entry: ``a`` holds the plain gates)."""
    T = a.shape[1]
    m = T // 2
    if reverse:
        # pair (s, s + 1) is applied as s + 1 first, then s; pairs are aligned to the end
        s = T % 2
        i1, i2 = slice(s + 1, None, 2), slice(s, s + 2 * m, 2)  # applied first, second
    else:
        i1, i2 = slice(0, 2 * m, 2), slice(1, 2 * m, 2)
    a1, b1, e1 = a[:, i1], b[:, i1], _slice(e, i1)
    a2, b2, e2 = a[:, i2], b[:, i2], _slice(e, i2)
    r1 = None if r is None else r[i1]
    r2 = None if r is None else r[i2]
    if not split:
        A, E = a2 * a1, None
    else:
        m1, x1 = torch.frexp(a1) if e1 is None else (a1, e1)
        m2, x2 = torch.frexp(a2) if e2 is None else (a2, e2)
        A, dx = torch.frexp(m2 * m1)
        E = x1 + x2 + dx
    B = _affine(a2, e2, b1, b2)
    R = None
    if r is not None:
        B = torch.where(r2[None, :, None], b2, B)
        R = r1 | r2
    return A, E, B, R


def _apply(a, e, b, r, prev):
    """h = a * prev + b, or b where the step resets."""
    out = _affine(a, e, prev, b)
    if r is not None:
        out = torch.where(r[None, :, None], b, out)
    return out


def _loop(a, e, b, h0, r, reverse):
    T = a.shape[1]
    h = torch.empty_like(b)
    prev = torch.zeros_like(b[:, 0]) if h0 is None else h0
    for t in range(T - 1, -1, -1) if reverse else range(T):
        rt = None if r is None else r[t : t + 1]
        step = slice(t, t + 1)
        prev = _apply(a[:, step], _slice(e, step), b[:, step], rt, prev.unsqueeze(1)).squeeze(1)
        h[:, t] = prev
    return h


def _scan(a, e, b, h0, r, reverse, split):
    T = a.shape[1]
    if T <= _LOOP_MAX:
        return _loop(a, e, b, h0, r, reverse)
    A, E, B, R = _combine_pairs(a, e, b, r, reverse, split)
    H = _scan(A, E, B, h0, R, reverse, split)  # states at the second-applied element of pairs
    h = torch.empty_like(b)
    m = T // 2
    if reverse:
        s = T % 2
        h[:, s : s + 2 * m : 2] = H
        # first-applied steps s+1, s+3, ..., T-3 follow the state of the next pair
        idx = slice(s + 1, T - 1, 2)
        rr = None if r is None else r[idx]
        h[:, idx] = _apply(a[:, idx], _slice(e, idx), b[:, idx], rr, H[:, 1:])
        # the last step follows h0 (or nothing)
        if h0 is None:
            h[:, T - 1] = b[:, T - 1]
        else:
            rl = None if r is None else r[T - 1 :]
            last = slice(T - 1, None)
            h[:, last] = _apply(a[:, last], _slice(e, last), b[:, last], rl, h0.unsqueeze(1))
        if s == 1:  # step 0 is unpaired: it follows the state at step 1
            r0 = None if r is None else r[0:1]
            first = slice(0, 1)
            h[:, first] = _apply(a[:, first], _slice(e, first), b[:, first], r0, H[:, first])
    else:
        h[:, 1 : 2 * m : 2] = H
        r0 = None if r is None else r[0:1]
        if h0 is None:
            h[:, 0] = b[:, 0]
        else:
            first = slice(0, 1)
            h[:, first] = _apply(a[:, first], _slice(e, first), b[:, first], r0, h0.unsqueeze(1))
        # remaining even steps 2, 4, ... follow the odd step before them
        ne = (T + 1) // 2 - 1
        idx = slice(2, None, 2)
        rr = None if r is None else r[idx]
        h[:, idx] = _apply(a[:, idx], _slice(e, idx), b[:, idx], rr, H[:, :ne])
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
    # products of gates with |a| <= 1 cannot overflow; otherwise carry them as mantissa and
    # exponent (see the module docstring). NaN gates fail the test and take the split path.
    split = False
    if a.shape[1] > _LOOP_MAX and a.numel():
        lo, hi = torch.aminmax(a)  # one pass, no temporary; NaN makes both comparisons false
        split = not bool((lo >= -1) & (hi <= 1))
    return _scan(a, None, b, h0, resets, reverse, split)
