"""Gated matrix-state linear recurrence (mLSTM / GLA / pLSTM-1D form), computed chunkwise.

See :func:`chunked_matrix_scan`. The maths of the chunk decomposition (segment sums, signs,
the exclusive readout) and what each backend does are in this folder's README.md.
"""

from __future__ import annotations

import torch

from .._backend import resolve_backend
from .._checks import check_boundaries, check_float, check_same, check_shape, check_tensor
from . import chunked, reference

__all__ = ["chunked_matrix_scan"]

_OP = "chunked_matrix_scan"


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
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Scalar-gated linear recurrence with a ``K x V`` matrix state per head.

    For every batch row (or packed sequence) and head, with :math:`f_t = \sigma_t e^{\ell_t}`
    (:math:`\ell_t` = ``log_f``, :math:`\sigma_t = \pm 1` = ``f_sign``):

    .. math::
        C_t = f_t\, C_{t-1} + i_t\, k_t v_t^\top, \qquad C_{-1} = h_0 \;(\text{default } 0)

    and by default the *inclusive* readout :math:`y_t = C_t^\top q_t`. When ``m`` and ``d`` are
    given the readout is *exclusive* (pLSTM-1D's mark and direct gates):

    .. math::
        y_t = m_t\, C_{t-1}^\top q_t + d_t\, (q_t \cdot k_t)\, v_t

    which equals the inclusive form for ``m = f`` and ``d = i``. The state recursion is the
    same in both forms.

    Gates may be negative (pass ``log_f = log|f|`` and ``f_sign = sign(f)``) or exactly zero
    (``log_f = -inf``: an exact reset, no NaN, forward or backward). The fast paths never
    form a decay as a difference of cumulative sums, so neither precision nor ``-inf`` suffers;
    ``|f| > 1`` is allowed and overflows only where the true product of gates does.

    Args:
        q: queries, ``[B, T, H, K]``.
        k: keys, ``[B, T, H, K]``.
        v: values, ``[B, T, H, V]``.
        log_f: ``log|f_t|``, ``[B, T, H]``; ``-inf`` means ``f_t = 0``.
        i: input gate ``i_t`` (any real value), ``[B, T, H]``; ``None`` means 1.
        f_sign: sign of ``f_t``, ``[B, T, H]``; entries ``< 0`` make ``f_t`` negative, all
            others positive (so ``torch.sign(f)`` works, including at ``f = 0``). ``None``
            means every ``f_t > 0``. Not differentiated.
        m: mark gate of the exclusive readout, ``[B, T, H]``; give ``m`` and ``d`` together.
        d: direct gate of the exclusive readout, ``[B, T, H]``.
        h0: initial state, ``[B, H, K, V]`` (``[N, H, K, V]`` with ``cu_seqlens``); default
            zeros. dtype: ``q``'s, or float32 for float16/bfloat16 inputs.
        cu_seqlens: ``[N + 1]`` int32/int64 boundaries of ``N`` sequences packed along time
            (FlashAttention / PyG ``ptr`` convention), with ``B = 1``. Each sequence starts
            from its own ``h0[n]``; nothing crosses a boundary. Empty sequences are allowed.
        chunk_size: steps per chunk of the chunked paths (``>= 1``; the result does not depend
            on it up to rounding). 64 suits both CPU and GPU; the Triton kernels use at most 64.
        backend: ``"reference"`` (loop over time), ``"torch"`` (chunked, vectorised PyTorch;
            default on CPU) or ``"triton"`` (default for CUDA tensors when Triton is
            installed); ``None`` picks by device, see :mod:`graphseq.kernels._backend`.

    Shapes and dtypes:
        All of ``q, k, v, log_f, i, f_sign, m, d`` share one floating dtype and device.
        float16/bfloat16 inputs are computed in float32; float32 in float32; float64 in
        float64. ``T`` may be anything (including 0 and values that are not a multiple of
        ``chunk_size``) and ``K != V`` is fine.

    Returns:
        ``(y, h_last)``: the outputs ``[B, T, H, V]`` in ``q``'s dtype, and the state after the
        last step of every sequence, ``[B, H, K, V]`` (``[N, H, K, V]`` with ``cu_seqlens``;
        ``h0`` or zeros for an empty sequence), in float32 for float16/bfloat16 inputs and in
        ``q``'s dtype otherwise.

    NaN or inf in a sequence's inputs reach that sequence's later outputs (as in the loop)
    and, on the chunked paths, the other outputs of the same chunk; never another batch row
    or packed sequence.

    The Triton path runs its forward pass in Triton kernels; its backward pass has no Triton
    kernel: it recomputes the forward through the chunked PyTorch path and differentiates
    that (exact gradients, PyTorch speed; see README.md).

    Both fast paths give first-order gradients only: their recurrence over chunks is a
    :func:`~graphseq.kernels.linear_scan`, whose backward records no graph, so a double
    backward (``create_graph=True`` and a derivative of a gradient that reaches ``k``, ``v``,
    ``i``, ``log_f`` or ``h0``) raises ``RuntimeError``; ``backend="reference"`` is fully
    differentiable.

    Example::

        >>> import torch
        >>> from graphseq.kernels import chunked_matrix_scan
        >>> B, T, H, K, V = 2, 100, 4, 16, 32
        >>> q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
        >>> v = torch.randn(B, T, H, V)
        >>> f = torch.empty(B, T, H).uniform_(-1, 1)  # negative gates allowed
        >>> y, h = chunked_matrix_scan(q, k, v, f.abs().log(), f_sign=f.sign())
        >>> y.shape, h.shape
        (torch.Size([2, 100, 4, 32]), torch.Size([2, 4, 16, 32]))
        >>> # streaming: carry the state into the next segment
        >>> y1, h1 = chunked_matrix_scan(q[:, :60], k[:, :60], v[:, :60], f[:, :60].abs().log(),
        ...                              f_sign=f[:, :60].sign())
        >>> y2, _ = chunked_matrix_scan(q[:, 60:], k[:, 60:], v[:, 60:], f[:, 60:].abs().log(),
        ...                             f_sign=f[:, 60:].sign(), h0=h1)
        >>> torch.allclose(torch.cat([y1, y2], 1), y, atol=1e-4)
        True
    """
    check_tensor(_OP, "q", q)
    if q.dim() != 4:
        raise ValueError(f"{_OP}: q must have shape [B, T, H, K], got {tuple(q.shape)}")
    check_float(_OP, "q", q)
    B, T, H, K = q.shape
    check_tensor(_OP, "k", k)
    check_same(_OP, "q", q, "k", k)
    check_shape(_OP, "k", k, (B, T, H, K))
    check_tensor(_OP, "v", v)
    check_same(_OP, "q", q, "v", v)
    if v.dim() != 4 or tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(
            f"{_OP}: v must have shape [B, T, H, V] = ({B}, {T}, {H}, V), got {tuple(v.shape)}"
        )
    V = v.shape[3]
    if log_f is None:  # the forget gate is required; the other gates may be None
        raise TypeError(f"{_OP}: log_f must be a tensor of shape [B, T, H], got None")
    gates = {"log_f": log_f, "i": i, "f_sign": f_sign, "m": m, "d": d}
    for name, x in gates.items():
        if x is None:
            continue
        check_tensor(_OP, name, x)
        check_same(_OP, "q", q, name, x)
        check_shape(_OP, name, x, (B, T, H))
    if (m is None) != (d is None):
        given, missing = ("m", "d") if d is None else ("d", "m")
        raise ValueError(
            f"{_OP}: the exclusive readout needs both m and d; {given} was given but {missing} "
            "is None"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"{_OP}: chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"{_OP}: chunk_size must be >= 1, got {chunk_size}")
    n_states = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(
                f"{_OP}: with cu_seqlens the sequences are packed along time and q must have "
                f"batch size B = 1, got q.shape = {tuple(q.shape)}"
            )
        cu_seqlens = check_boundaries(_OP, "cu_seqlens", cu_seqlens, T, q.device)
        n_states = cu_seqlens.numel() - 1
    if h0 is not None:
        check_tensor(_OP, "h0", h0)
        check_float(_OP, "h0", h0)
        if h0.device != q.device:
            raise ValueError(f"{_OP}: h0 is on {h0.device} but q is on {q.device}")
        state_dtype = torch.promote_types(q.dtype, torch.float32)
        if h0.dtype not in (q.dtype, state_dtype):
            raise ValueError(
                f"{_OP}: h0 must have dtype {q.dtype} or {state_dtype}, got {h0.dtype}"
            )
        check_shape(_OP, "h0", h0, (n_states, H, K, V))

    backend = resolve_backend(backend, q.device, op=_OP)
    args = (q, k, v, log_f, i)
    kwargs = dict(f_sign=f_sign, m=m, d=d, h0=h0, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    if backend == "reference":
        return reference.chunked_matrix_scan(*args, **kwargs)
    if backend == "torch":
        return chunked.chunked_matrix_scan(*args, **kwargs)
    from . import triton as triton_impl  # imported lazily: triton is optional

    return triton_impl.chunked_matrix_scan(*args, **kwargs)
