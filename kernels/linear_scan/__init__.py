"""First-order linear recurrence ``h_t = a_t * h_{t-1} + b_t`` (elementwise).

See :func:`linear_scan`. The maths of the parallel form and of the backward pass are in this
folder's README.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._autograd import first_order_only
from .._backend import resolve_backend
from .._checks import check_boundaries, check_float, check_same, check_shape, check_tensor
from . import blelloch, reference

__all__ = ["linear_scan"]

_OP = "linear_scan"

# core(a, b, h0, reverse, resets) -> h on [B, T, M] tensors in the accumulation dtype.
Core = Callable[..., torch.Tensor]


def _triton_core() -> Core:
    from . import triton as triton_impl  # imported lazily: triton is optional

    return triton_impl.scan


class _LinearScanFn(torch.autograd.Function):
    """Autograd for the fast paths; the backward pass is itself a reverse scan.

    With g_t = dL/dh_t (total), the adjoint recurrence runs the other way with the gates
    shifted by one step: ``g_t = dh_t + a_{t+1} g_{t+1}``. Then ``db_t = g_t``,
    ``da_t = g_t h_{t-1}`` and ``dh0 = a_0 g_0`` (mirrored for ``reverse=True``).
    """

    @staticmethod
    def forward(ctx, a, b, h0, reverse, cu_seqlens, core):
        if cu_seqlens is not None:
            if h0 is not None:
                b = _fold_h0(a, b, h0, reverse, cu_seqlens)
            elif core is _torch_core:  # its resets start a sequence from b alone (Triton's do not)
                b = _zero_carry(a, b, _first_steps(cu_seqlens, reverse)[0])
            h = core(a, b, None, reverse, cu_seqlens)
        else:
            h = core(a, b, h0, reverse, None)
        ctx.save_for_backward(a, h, h0, cu_seqlens)
        ctx.reverse = reverse
        ctx.core = core
        return h

    @staticmethod
    @first_order_only("linear_scan (torch/triton backends)", "backend='reference' records a graph")
    def backward(ctx, dh):
        a, h, h0, cu_seqlens = ctx.saved_tensors
        reverse, core = ctx.reverse, ctx.core
        T = a.shape[1]
        da = db = dh0 = None
        # gates of the adjoint scan: a_{t+1} (forward) or a_{t-1} (reverse); the value at the
        # step that starts the adjoint scan is never read
        a_adj = torch.empty_like(a)
        if reverse:
            a_adj[:, 1:] = a[:, :-1]
            a_adj[:, :1] = 0
        else:
            a_adj[:, :-1] = a[:, 1:]
            a_adj[:, -1:] = 0
        packed = cu_seqlens is not None
        if packed:
            # there the shifted gate is the neighbouring sequence's: a kernel that multiplies it
            # by a zero carry instead of selecting would turn a NaN or inf gate into a NaN
            # gradient across the boundary
            adjoint_first, _ = _first_steps(cu_seqlens, not reverse)
            a_adj[0, adjoint_first] = 0
        g = core(a_adj, dh.contiguous(), None, not reverse, cu_seqlens)
        if packed:
            first, nonempty = _first_steps(cu_seqlens, reverse)
        if ctx.needs_input_grad[1]:
            db = g
        if ctx.needs_input_grad[0]:
            # da_t = g_t * (the state before step t): h_{t-1} (forward) or h_{t+1} (reverse)
            prev = torch.empty_like(h)
            start = 0 if h0 is None or packed else h0.unsqueeze(1)
            if reverse:
                prev[:, :-1] = h[:, 1:]
                prev[:, -1:] = start
            else:
                prev[:, 1:] = h[:, :-1]
                prev[:, :1] = start
            if packed:
                # before a sequence's first step comes its own h0 (or 0), never its
                # neighbour's state
                prev[0, first] = 0 if h0 is None else h0[nonempty].to(prev.dtype)
            da = g * prev
        if h0 is not None and ctx.needs_input_grad[2]:
            if packed:
                dh0 = torch.zeros_like(h0)
                dh0[nonempty] = (a[0, first] * g[0, first]).to(h0.dtype)
            else:
                t0 = T - 1 if reverse else 0
                dh0 = a[:, t0] * g[:, t0]
        return da, db, dh0, None, None, None


def _first_steps(cu_seqlens: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of each non-empty sequence's first processed step, and which sequences those are."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    nonempty = lengths > 0
    first = (cu_seqlens[1:] - 1) if reverse else cu_seqlens[:-1]
    return first[nonempty], nonempty


def _fold_h0(a, b, h0, reverse, cu_seqlens):
    """Fold each sequence's ``h0`` into ``b`` at its first step (``b + a * h0``). The zero
    carry of :func:`_zero_carry` is for sequences without ``h0`` only: a second ``a * 0`` after
    ``a * h0`` would turn an infinite gate's ``inf`` state into NaN."""
    first, nonempty = _first_steps(cu_seqlens, reverse)
    if first.numel() > 0:
        b = b.clone()
        b[0, first] += a[0, first] * h0[nonempty]
    return b


def _zero_carry(a, b, first):
    """``b + a * 0`` at every sequence's first step, as the loop computes it from a zero state.

    The torch core starts a sequence without ``h0`` (and every packed sequence, ``h0`` being
    folded into ``b``) from ``b`` alone, so a NaN or infinite gate there vanished although the
    loop's ``nan * 0`` / ``inf * 0`` makes that state NaN. Only such gates change ``b``. The
    check syncs with the device, so only the torch core pays it: the Triton kernel carries the
    zero state itself.
    """
    a_first = a[:, first]
    if bool(torch.isfinite(a_first).all()):
        return b
    b = b.clone()
    b[:, first] += a_first * 0
    return b


def _torch_core(a, b, h0, reverse, cu_seqlens):
    resets = None
    if cu_seqlens is not None:
        first, _ = _first_steps(cu_seqlens, reverse)
        resets = torch.zeros(a.shape[1], dtype=torch.bool, device=a.device)
        resets[first] = True  # b already holds a * h0 (or a * 0) there, see forward
    elif h0 is None:
        b = _zero_carry(a, b, [a.shape[1] - 1 if reverse else 0])
    return blelloch.scan(a, b, h0, reverse, resets)


def _scan_fast(a, b, h0, reverse, cu_seqlens, core):
    """Shared driver of the fast paths: dtype handling, flattening, varlen, final state."""
    shape = a.shape
    acc = torch.promote_types(a.dtype, torch.float32)
    B, T = shape[0], shape[1]
    M = shape[2:].numel()
    a3 = a.to(acc).reshape(B, T, M).contiguous()
    b3 = b.to(acc).reshape(B, T, M).contiguous()
    h03 = None if h0 is None else h0.to(acc).reshape(h0.shape[0], M).contiguous()
    if T == 0 or M == 0:
        h = b3 + 0 * a3  # empty, but still part of the autograd graph of both inputs
    else:
        h = _LinearScanFn.apply(a3, b3, h03, reverse, cu_seqlens, core)
    # final states
    if cu_seqlens is None:
        if T == 0:
            h_last = b3.new_zeros((B, M)) if h03 is None else h03.clone()
        else:
            h_last = h[:, 0] if reverse else h[:, -1]
    else:
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        nonempty = lengths > 0
        last = cu_seqlens[:-1] if reverse else cu_seqlens[1:] - 1
        N = lengths.numel()
        base = b3.new_zeros((N, M)) if h03 is None else h03
        if T == 0 or M == 0:
            h_last = base.clone()
        else:
            h_last = torch.where(nonempty[:, None], h[0, last.clamp(0, max(T - 1, 0))], base)
    h = h.reshape(shape).to(a.dtype)
    h_last = h_last.reshape((h_last.shape[0], *shape[2:]))
    return h, h_last


def linear_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    reverse: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""First-order linear recurrence over time, elementwise over every other dimension.

    .. math::
        h_t = a_t \odot h_{t-1} + b_t, \qquad h_{-1} = h_0 \;(\text{default } 0)

    With ``reverse=True`` the recurrence runs from the end, :math:`h_t = a_t \odot h_{t+1} +
    b_t` with :math:`h_T = h_0`. Gates may take any real value: negative (negative-eigenvalue
    linear RNNs, pLSTM's tanh transitions) and exactly zero (a reset) are exact, because the
    scan multiplies gates instead of working in log space. Gates with :math:`|a| > 1` are
    allowed too: the torch path then carries the products of gates over spans as mantissa and
    exponent, so a product that would overflow where the loop's state is still 0 (or before an
    exact reset) does not turn into ``0 * inf = NaN``. The Triton path keeps those exact zeros
    exact too, but carries no exponents: where a product of gates inside one of its tiles
    overflows (underflows) while the state it multiplies is small (large), it returns inf (0)
    where the loop may be finite; the state entering a tile is never multiplied by such a
    product. The fast paths never loop over time in Python, forward or backward; their
    backward pass is itself a reverse scan.

    Args:
        a: gates, ``[B, T, *]``.
        b: inputs, same shape, dtype and device as ``a``.
        h0: initial state, ``[B, *]`` (``[N, *]`` with ``cu_seqlens``); default zeros.
        reverse: run the recurrence from ``t = T - 1`` down to ``0``.
        cu_seqlens: ``[N + 1]`` int boundaries of ``N`` sequences packed along time, with
            ``B = 1`` (the FlashAttention / PyG ``ptr`` convention). Every sequence starts
            from its own ``h0[n]``; nothing leaks between sequences, NaN included.
        backend: ``"reference"``, ``"torch"`` or ``"triton"``; default chosen by device
            (see :mod:`graphseq.kernels._backend`).

    Returns:
        ``(h, h_last)``: all states ``[B, T, *]`` in ``a``'s dtype, and the final state of each
        sequence, ``[B, *]`` or ``[N, *]`` (the state after its last step, or at ``t = 0`` with
        ``reverse=True``; ``h0`` or zeros for an empty sequence). float16/bfloat16 inputs
        accumulate in float32 and ``h_last`` is returned in float32.

    NaN or inf in a sequence's inputs propagate to that sequence's later states (as in the
    loop), never to other sequences of the batch. The fast paths give first-order gradients
    (a double backward raises); ``backend="reference"`` is fully differentiable.

    Example::

        >>> a = torch.rand(2, 100, 8)
        >>> b = torch.randn(2, 100, 8)
        >>> h, h_last = linear_scan(a, b)
        >>> h2, _ = linear_scan(a[:, 50:], b[:, 50:], h0=h[:, 49])  # streaming
        >>> torch.allclose(h2, h[:, 50:], atol=1e-5)
        True
    """
    check_tensor(_OP, "a", a, min_dim=2)
    check_tensor(_OP, "b", b)
    check_float(_OP, "a", a)
    check_same(_OP, "a", a, "b", b)
    check_shape(_OP, "b", b, tuple(a.shape))
    if not isinstance(reverse, bool):
        raise TypeError(f"{_OP}: reverse must be a bool, got {type(reverse).__name__}")
    n_states = a.shape[0]
    if cu_seqlens is not None:
        if a.shape[0] != 1:
            raise ValueError(
                f"{_OP}: with cu_seqlens the sequences are packed along time and a must have "
                f"batch size 1, got a.shape = {tuple(a.shape)}"
            )
        cu_seqlens = check_boundaries(_OP, "cu_seqlens", cu_seqlens, a.shape[1], a.device)
        n_states = cu_seqlens.numel() - 1
    if h0 is not None:
        check_tensor(_OP, "h0", h0)
        check_float(_OP, "h0", h0)
        if h0.device != a.device:
            raise ValueError(f"{_OP}: h0 is on {h0.device} but a is on {a.device}")
        acc = torch.promote_types(a.dtype, torch.float32)
        if h0.dtype not in (a.dtype, acc):
            raise ValueError(f"{_OP}: h0 must have dtype {a.dtype} or {acc}, got {h0.dtype}")
        check_shape(_OP, "h0", h0, (n_states, *a.shape[2:]))
    backend = resolve_backend(backend, a.device, op=_OP)
    if backend == "reference":
        return reference.linear_scan(a, b, h0, reverse, cu_seqlens)
    core = _torch_core if backend == "torch" else _triton_core()
    return _scan_fast(a, b, h0, reverse, cu_seqlens, core)
