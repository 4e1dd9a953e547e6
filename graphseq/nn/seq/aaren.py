"""Aaren: softmax attention with a learned query, computed as a many-to-many RNN by a scan."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from graphseq.kernels import linear_scan
from graphseq.kernels.segment import segment_scan

from .base import SequenceLayer, check_positive_int, first_steps, last_steps, sequence_index


class AarenState(NamedTuple):
    """Carried state of :class:`Aaren` per sequence: running max ``m`` ``[B, H]``, softmax
    denominator ``u`` ``[B, H]`` and numerator ``w`` ``[B, H, D/H]``, both scaled by
    ``exp(-m)``. The empty prefix is ``m = -inf``, ``u = 0``, ``w = 0``. ``u`` and ``w`` are
    carried in float32 for float16/bfloat16 inputs (``u`` grows like the number of tokens and
    would overflow float16 past 65,504)."""

    m: Tensor
    u: Tensor
    w: Tensor


class Aaren(SequenceLayer):
    r"""Attention as a many-to-many RNN, from `"Attention as an RNN"
    <https://arxiv.org/abs/2405.13956>`_ (Feng et al., 2024).

    Every head :math:`h` has a learned query :math:`\mathbf{q}_h`; the output at step
    :math:`t` is softmax attention of that query over the prefix :math:`1..t`. With scores
    :math:`s_i = \mathbf{q}_h^\top \mathbf{k}_i / \sqrt{d}` it is kept stable by the running
    maximum :math:`m_t = \max_{i \le t} s_i`:

    .. math::
        u_t &= e^{m_{t-1} - m_t} u_{t-1} + e^{s_t - m_t}, \qquad
        \mathbf{w}_t = e^{m_{t-1} - m_t} \mathbf{w}_{t-1} + e^{s_t - m_t} \mathbf{v}_t

        \mathbf{o}_t &= \mathbf{w}_t / u_t
            = \sum_{i \le t} \operatorname{softmax}_{i \le t}(s_i)\, \mathbf{v}_i, \qquad
        \mathbf{y}_t = \mathbf{W}_o\, [\mathbf{o}_t^{(1)}, \dots, \mathbf{o}_t^{(H)}]

    :math:`m` is a cumulative max, computed first; then :math:`(u, \mathbf{w})` is one
    :func:`graphseq.kernels.linear_scan` with gates :math:`e^{m_{t-1}-m_t} \in (0, 1]`. No
    exponent is ever positive, so scores of any size stay finite, and :math:`u_t \ge 1`.
    :math:`m` is treated as a constant by autograd, which is exact because the output does not
    depend on it. :meth:`step` updates :math:`(m, u, \mathbf{w})` in O(1) time and memory.

    Args:
        channels (int): input and output size :math:`D`.
        heads (int, optional): number of heads :math:`H` (learned queries); must divide
            ``channels``. (default: :obj:`1`)
        bias (bool, optional): add biases to the key, value and output projections.
            (default: :obj:`True`)

    Shapes:
        - **input:** ``x`` :math:`(B, T, D)`, or packed :math:`(1, \sum_n T_n, D)` with
          ``cu_seqlens`` :math:`(N + 1)`; ``state`` an :class:`AarenState` for :math:`B` (or
          :math:`N`) sequences, default the empty prefix.
        - **output:** :math:`(B, T, D)`; with ``return_state=True`` also the final
          :class:`AarenState`. NaN in a sequence's input reaches that sequence's later outputs
          only.
    """

    def __init__(self, channels: int, heads: int = 1, bias: bool = True) -> None:
        super().__init__()
        cls = type(self).__name__
        check_positive_int(cls, "channels", channels)
        check_positive_int(cls, "heads", heads)
        if channels % heads != 0:
            raise ValueError(f"{cls}: heads ({heads}) must divide channels ({channels})")
        self.channels = channels
        self.in_channels = channels
        self.out_channels = channels
        self.heads = heads
        self.head_channels = channels // heads
        self.bias = bool(bias)
        self.query = torch.nn.Parameter(torch.empty(heads, self.head_channels))
        self.key = torch.nn.Linear(channels, channels, bias=bias)
        self.value = torch.nn.Linear(channels, channels, bias=bias)
        self.out_proj = torch.nn.Linear(channels, channels, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reinitialise all parameters (queries ~ N(0, 1), default ``Linear`` init)."""
        torch.nn.init.normal_(self.query)
        self.key.reset_parameters()
        self.value.reset_parameters()
        self.out_proj.reset_parameters()

    def __repr__(self) -> str:
        bias = "" if self.bias else ", bias=False"
        return f"{type(self).__name__}({self.channels}, heads={self.heads}{bias})"

    # ------------------------------------------------------------------------------------------

    def _scores_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scores ``[..., H]`` and values ``[..., H, D/H]``."""
        H, Dh = self.heads, self.head_channels
        k = self.key(x).unflatten(-1, (H, Dh))
        v = self.value(x).unflatten(-1, (H, Dh))
        s = (k * self.query).sum(-1) / math.sqrt(Dh)
        return s, v

    def init_state(self, batch_size: int) -> AarenState:
        """The empty prefix for ``batch_size`` sequences."""
        batch_size = self._check_batch_size(batch_size)
        p = self.query
        m = p.new_full((batch_size, self.heads), float("-inf"))
        acc = torch.promote_types(p.dtype, torch.float32)  # u and w: see AarenState
        return AarenState(
            m,
            p.new_zeros(batch_size, self.heads, dtype=acc),
            p.new_zeros(m.shape + p.shape[1:], dtype=acc),
        )

    def _check_state(self, state: object, n: int, x: Tensor) -> AarenState:
        cls = type(self).__name__
        if not (isinstance(state, tuple) and len(state) == 3):
            raise TypeError(
                f"{cls}: state must be an AarenState (m, u, w), got {type(state).__name__}"
            )
        m, u, w = state
        H, Dh = self.heads, self.head_channels
        # u and w in the accumulation dtype: u grows like the number of tokens (float16 tops
        # out at 65,504), so a half-precision carry would turn into inf on long streams
        acc = torch.promote_types(x.dtype, torch.float32)
        m = self._check_state_tensor(m, "state.m", (n, H), x).to(x.dtype)
        u = self._check_state_tensor(u, "state.u", (n, H), x).to(acc)
        w = self._check_state_tensor(w, "state.w", (n, H, Dh), x).to(acc)
        return AarenState(m, u, w)

    def forward(
        self,
        x: Tensor,
        state: AarenState | None = None,
        cu_seqlens: Tensor | None = None,
        return_state: bool = False,
    ) -> Tensor | tuple[Tensor, AarenState]:
        """Outputs at every position in parallel (see the class docstring for shapes)."""
        x = self._check_x(x, "x", 3)
        cu = self._check_cu_seqlens(cu_seqlens, x)
        n = self._num_states(x, cu)
        if state is not None:
            state = self._check_state(state, n, x)
        B, T, _ = x.shape
        s, v = self._scores_values(x)  # [B,T,H], [B,T,H,Dh]
        sd = s.detach()  # the output is invariant to m, so m carries no gradient
        if cu is None:
            m = torch.cummax(sd, dim=1).values if T > 0 else sd
            if state is not None:
                m = torch.maximum(m, state.m.unsqueeze(1))
            # m_{t-1}; at t = 0 the carried max (its gate multiplies h0), else m_0 (gate 1)
            m_first = state.m.unsqueeze(1) if state is not None else m[:, :1]
            m_prev = torch.cat([m_first, m[:, :-1]], dim=1)
        else:
            m = segment_scan(sd[0], cu, "max").unsqueeze(0) if T > 0 else sd
            first, nonempty = first_steps(cu)
            if state is not None:
                m = torch.maximum(m, state.m[sequence_index(cu)].unsqueeze(0))
            m_prev = torch.cat([m[:, :1], m[:, :-1]], dim=1)
            if T > 0:
                m_prev[0, first] = state.m[nonempty] if state is not None else m[0, first]
        gate = torch.exp(m_prev - m)  # (0, 1]; [B,T,H]
        p = torch.exp(s - m).unsqueeze(-1)  # [B,T,H,1], the current token's weight
        b = torch.cat([p, p * v], dim=-1)  # [B,T,H,1+Dh]: (u, w) inputs
        h0 = None if state is None else torch.cat([state.u.unsqueeze(-1), state.w], dim=-1)
        # scan and divide in the accumulation dtype (float32 for half inputs): u_t grows like
        # t and would overflow float16 (65,504) on long sequences, turning o_t into 0
        acc = torch.promote_types(b.dtype, torch.float32)
        h, h_last = linear_scan(
            gate.unsqueeze(-1).expand_as(b).to(acc),
            b.to(acc),
            h0=None if h0 is None else h0.to(acc),
            cu_seqlens=cu,
        )
        o = (h[..., 1:] / h[..., :1]).to(b.dtype)  # u_t >= 1
        y = self.out_proj(o.flatten(-2))
        if not return_state:
            return y
        # h_last stays in the accumulation dtype (see AarenState)
        if cu is None:
            m_last = (
                m[:, -1]
                if T > 0
                else (state.m if state is not None else s.new_full((B, self.heads), float("-inf")))
            )
        else:
            last, nonempty = last_steps(cu)
            base = state.m if state is not None else s.new_full((n, self.heads), float("-inf"))
            m_last = base.clone()
            if T > 0:
                m_last[nonempty] = m[0, last]
        return y, AarenState(m_last, h_last[..., 0], h_last[..., 1:])

    def step(self, x: Tensor, state: AarenState | None = None) -> tuple[Tensor, AarenState]:
        """Advance one token: ``x`` ``[B, D]``; O(1) time and memory per token.

        Returns ``(y, state)`` with ``y`` ``[B, D]``.
        """
        x = self._check_x(x, "x", 2)
        B = x.shape[0]
        state = self.init_state(B) if state is None else self._check_state(state, B, x)
        s, v = self._scores_values(x)  # [B,H], [B,H,Dh]
        m = torch.maximum(state.m, s.detach())
        acc = state.u.dtype  # float32 for half inputs (see AarenState)
        gate = torch.exp(state.m - m).to(acc)
        p = torch.exp(s - m).to(acc)
        u = gate * state.u + p
        w = gate.unsqueeze(-1) * state.w + p.unsqueeze(-1) * v.to(acc)
        y = self.out_proj((w / u.unsqueeze(-1)).to(v.dtype).flatten(-2))
        return y, AarenState(m, u, w)
