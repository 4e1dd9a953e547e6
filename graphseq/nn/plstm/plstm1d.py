"""pLSTM on sequences: the 1D (chain) case of the Source-Transition-Mark recurrence."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from graphseq.kernels import chunked_matrix_scan

from ..seq.base import SequenceLayer, check_positive_int, check_real
from .gates import (
    DIRECT_BIAS,
    MARK_BIAS,
    SOURCE_BIAS,
    TRANSITION_BIAS,
    TRANSITION_FACTOR,
    HeadGate,
    MultiHeadRMSNorm,
    small_init_,
)

__all__ = ["PLSTM1D", "plstm1d_recurrence", "plstm1d_reference"]


def plstm1d_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    source: Tensor,
    transition: Tensor,
    mark: Tensor,
    direct: Tensor,
    h0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The pLSTM-1D recurrence as a plain loop over time, in float64 (ground truth for tests).

    .. math::
        C_t = T_t C_{t-1} + S_t k_t v_t^\top, \qquad
        h_t = M_t\, q_t^\top C_{t-1} + D_t (q_t \cdot k_t)\, v_t

    (no :math:`D_K^{-1/2}` here: scale ``q`` first). Shapes: ``q, k`` ``[B, T, H, K]``,
    ``v`` ``[B, T, H, V]``, gates ``[B, T, H]``, ``h0`` ``[B, H, K, V]``. Returns ``h``
    ``[B, T, H, V]`` and the last state ``[B, H, K, V]``, both float64.
    """
    q, k, v = q.double(), k.double(), v.double()
    S, Tr, M, D = source.double(), transition.double(), mark.double(), direct.double()
    B, T, H, K = q.shape
    C = q.new_zeros(B, H, K, v.shape[-1]) if h0 is None else h0.double()
    out = []
    for t in range(T):
        read = torch.einsum("bhk,bhkv->bhv", q[:, t], C)  # q_t^T C_{t-1}
        qk = (q[:, t] * k[:, t]).sum(-1, keepdim=True)  # [B, H, 1]
        out.append(M[:, t, :, None] * read + D[:, t, :, None] * qk * v[:, t])
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # [B, H, K, V]
        C = Tr[:, t, :, None, None] * C + S[:, t, :, None, None] * kv
    h = torch.stack(out, 1) if out else v.new_zeros(v.shape)
    return h, C


def plstm1d_recurrence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    source: Tensor,
    transition: Tensor,
    mark: Tensor,
    direct: Tensor,
    h0: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`plstm1d_reference`'s recurrence on :func:`~graphseq.kernels.chunked_matrix_scan`.

    Its exclusive readout (``m``, ``d``) is exactly pLSTM-1D's mark and direct gates, and a
    transition of any sign is passed as ``log|T|`` plus ``f_sign`` (``T = 0`` is an exact reset).
    Same shapes as :func:`plstm1d_reference`, plus packed ``cu_seqlens`` (``B = 1``).

    Gradients equal the loop's everywhere except at a transition that is exactly zero, where
    the log-space kernel cannot see the derivative and returns 0 for that entry (finite, never
    NaN); every other entry is exact.
    """
    # log|T| with an exact -inf at T = 0; the inner where keeps its gradient finite there
    zero = transition == 0
    safe = torch.where(zero, torch.ones_like(transition), transition)
    log_t = torch.where(zero, torch.full_like(transition, float("-inf")), safe.abs().log())
    y, h_last = chunked_matrix_scan(
        q,
        k,
        v,
        log_t,
        source,
        f_sign=torch.sign(transition).detach(),
        m=mark,
        d=direct,
        h0=h0,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size,
        backend=backend,
    )
    return y, h_last


class PLSTM1D(SequenceLayer):
    r"""pLSTM on a sequence, from `"pLSTM: parallelizable Linear Source Transition Mark
    networks" <https://arxiv.org/abs/2506.11997>`_ (Pöppel et al., 2025).

    On a chain every node has one incoming and one outgoing edge, and the pLSTM recurrence per
    head (state :math:`C_t \in \mathbb{R}^{K \times V}`, :math:`K = V = D / H`) is

    .. math::
        C_t &= T_t\, C_{t-1} + S_t\, k_t v_t^\top

        h_t &= K^{-1/2} \big( M_t\, q_t^\top C_{t-1} + D_t\, (q_t \cdot k_t)\, v_t \big)

        y_t &= W_o\, \mathrm{RMSNorm}_{\text{head}}(h_t)

    with input-dependent scalar gates :math:`S, M, D = \sigma(\cdot)` and
    :math:`T = \tanh(5\,\cdot)` (which may be negative). It separates the gate on the carried
    state (:math:`T`), the read of it (:math:`M`), the write (:math:`S`) and the current token
    (:math:`D`); with :math:`M = T` and :math:`S = D` it is exactly mLSTM/GLA's
    :math:`h_t = q_t^\top C_t` (without mLSTM's normaliser). Gates and initialisation follow
    the paper (:mod:`graphseq.nn.plstm.gates`). Computed chunkwise on
    :func:`graphseq.kernels.chunked_matrix_scan` (parallel over time, exact for negative or
    zero transitions); :meth:`step` advances one token.

    Args:
        channels (int): input and output size :math:`D`.
        heads (int, optional): number of heads :math:`H`; must divide ``channels``.
            (default: :obj:`4`)
        gate_weight_std (float, optional): std of the gates' weight init (``0``: zero weights,
            the gates start input-independent). (default: :obj:`0.0`)
        chunk_size (int, optional): chunk length of the scan. (default: :obj:`64`)

    Shapes:
        - **input:** ``x`` :math:`(B, T, D)`, or packed :math:`(1, \sum_n T_n, D)` with
          ``cu_seqlens`` :math:`(N + 1)`; ``state`` :math:`(B, H, K, V)`
          (:math:`(N, H, K, V)` packed), default zeros.
        - **output:** :math:`(B, T, D)`; with ``return_state=True`` also the final state.
          NaN or inf in a sequence's input at step :math:`t` never reaches another sequence of
          the batch; in :meth:`forward` it reaches that sequence's outputs from the start of
          :math:`t`'s chunk of ``chunk_size`` steps on (so also a few steps *before*
          :math:`t`, unlike :meth:`step`, which is causal: steps :math:`\ge t` only).
    """

    def __init__(
        self,
        channels: int,
        heads: int = 4,
        gate_weight_std: float = 0.0,
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        check_positive_int(cls, "channels", channels)
        check_positive_int(cls, "heads", heads)
        check_positive_int(cls, "chunk_size", chunk_size)
        if channels % heads != 0:
            raise ValueError(f"{cls}: heads ({heads}) must divide channels ({channels})")
        self.channels = channels
        self.in_channels = channels
        self.out_channels = channels
        self.heads = heads
        self.head_channels = channels // heads
        self.gate_weight_std = check_real(cls, "gate_weight_std", gate_weight_std, 0.0)
        self.chunk_size = chunk_size

        self.qkv = torch.nn.Linear(channels, 3 * channels)
        std = self.gate_weight_std
        self.source = HeadGate(channels, heads, "sigmoid", SOURCE_BIAS, std)
        self.transition = HeadGate(
            channels, heads, "tanh", TRANSITION_BIAS, std, factor=TRANSITION_FACTOR
        )
        self.mark = HeadGate(channels, heads, "sigmoid", MARK_BIAS, std)
        self.direct = HeadGate(channels, heads, "sigmoid", DIRECT_BIAS, std)
        self.norm = MultiHeadRMSNorm(heads, self.head_channels)
        self.out_proj = torch.nn.Linear(channels, channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small init for q/k/v, the paper's gate biases, unit norm scale, default out init."""
        small_init_(self.qkv.weight)
        torch.nn.init.zeros_(self.qkv.bias)
        for gate in (self.source, self.transition, self.mark, self.direct):
            gate.reset_parameters()
        self.norm.reset_parameters()
        self.out_proj.reset_parameters()

    def __repr__(self) -> str:
        extra = f", gate_weight_std={self.gate_weight_std!r}" if self.gate_weight_std else ""
        extra += f", chunk_size={self.chunk_size}" if self.chunk_size != 64 else ""
        return f"{type(self).__name__}({self.channels}, heads={self.heads}{extra})"

    # ------------------------------------------------------------------------------------------

    def project(self, x: Tensor) -> tuple[Tensor, ...]:
        """Queries (scaled by :math:`K^{-1/2}`), keys, values ``[..., H, K]`` and the gates
        ``S, T, M, D`` ``[..., H]`` of input ``x`` ``[..., D]``."""
        H, C = self.heads, self.head_channels
        q, k, v = self.qkv(x).unflatten(-1, (3, H, C)).unbind(-3)
        q = q * (1.0 / math.sqrt(C))
        return q, k, v, self.source(x), self.transition(x), self.mark(x), self.direct(x)

    def output(self, h: Tensor) -> Tensor:
        """Per-head RMS norm and output projection of ``h`` ``[..., H, V]`` (``h`` may be
        wider than the layer's dtype: it is normalised before it is cast to it)."""
        return self.out_proj(self.norm(h).to(self.out_proj.weight.dtype).flatten(-2))

    def init_state(self, batch_size: int) -> Tensor:
        """Zero state ``[batch_size, H, K, V]`` on the parameters' device and dtype."""
        batch_size = self._check_batch_size(batch_size)
        C = self.head_channels
        return self.qkv.weight.new_zeros(batch_size, self.heads, C, C)

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        return_state: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Run the layer over whole sequences (see the class docstring for shapes)."""
        x = self._check_x(x, "x", 3)
        cu = self._check_cu_seqlens(cu_seqlens, x)
        n = self._num_states(x, cu)
        C = self.head_channels
        if state is not None:
            state = self._check_state_tensor(state, "state", (n, self.heads, C, C), x)
            state = state.to(x.dtype)
        # The scan runs in one working dtype, float32 or wider, with autocast off: under
        # autocast the projections come out in lower precision while log|T| is float32, and
        # a lower-precision scan would lose the decays' products over long sequences.
        acc = torch.promote_types(x.dtype, torch.float32)
        inputs = tuple(t.to(acc) for t in self.project(x))
        with torch.autocast(x.device.type, enabled=False):
            h, h_last = plstm1d_recurrence(
                *inputs,
                h0=None if state is None else state.to(acc),
                cu_seqlens=cu,
                chunk_size=self.chunk_size,
            )
        # normalised before the cast: h itself may exceed float16's range (the norm does not)
        y = self.output(h)
        if return_state:
            return y, h_last.to(x.dtype)
        return y

    def step(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Advance one token: ``x`` ``[B, D]``, ``state`` ``[B, H, K, V]`` (default zeros).

        Returns ``(y, state)`` with ``y`` ``[B, D]``; O(1) time and memory per token.
        """
        x = self._check_x(x, "x", 2)
        C = self.head_channels
        if state is None:
            state = self.init_state(x.shape[0])
        state = self._check_state_tensor(state, "state", (x.shape[0], self.heads, C, C), x)
        state = state.to(x.dtype)  # as forward does: the state is carried in x's dtype
        q, k, v, S, T, M, D = self.project(x)  # [B, H, C], gates [B, H]
        read = torch.einsum("bhk,bhkv->bhv", q, state)
        h = M[..., None] * read + (D * (q * k).sum(-1))[..., None] * v
        new = T[..., None, None] * state + S[..., None, None] * (k[..., :, None] * v[..., None, :])
        return self.output(h), new
