"""Gated linear RNN with input-dependent diagonal gates whose range may include negative values."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from graphseq.kernels import linear_scan

from .base import SequenceLayer, check_positive_int


class GatedLinearRNN(SequenceLayer):
    r"""Gated linear RNN with diagonal, input-dependent gates in a chosen eigenvalue range, from
    `"Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues"
    <https://arxiv.org/abs/2411.12537>`_ (Grazzi et al., ICLR 2025).

    Each of the ``heads`` heads has one scalar gate per step, shared by its ``channels / heads``
    state channels (``heads = channels`` gives one gate per channel):

    .. math::
        a_t &= \lambda_{\min} + (\lambda_{\max} - \lambda_{\min})\,
               \sigma(\mathbf{W}_a \mathbf{x}_t + \mathbf{b}_a) \in [\lambda_{\min},
               \lambda_{\max}]^{H}

        \mathbf{h}_t &= a_t \odot \mathbf{h}_{t-1} + \mathbf{W}_v \mathbf{x}_t

        \mathbf{y}_t &= \mathbf{W}_o \big(\mathbf{h}_t \odot
               \operatorname{SiLU}(\mathbf{W}_g \mathbf{x}_t)\big)

    With ``eigenvalue_range=(0, 1)`` this is the usual gated linear RNN (Mamba/GLA-style
    decays), which provably cannot track parity at arbitrary lengths; ``(-1, 1)`` lets a gate
    flip the sign of the state, which is what parity needs. The recurrence runs on
    :func:`graphseq.kernels.linear_scan` (exact for negative and zero gates), so training is
    parallel over time; :meth:`step` advances one token with an explicit carried state.

    Args:
        channels (int): input and output size :math:`D`.
        heads (int, optional): number of gates :math:`H` per step; must divide ``channels``.
            (default: :obj:`1`)
        eigenvalue_range (tuple[float, float], optional): :math:`(\lambda_{\min},
            \lambda_{\max})` with :math:`-1 \le \lambda_{\min} < \lambda_{\max} \le 1`; the
            two settings compared by Grazzi et al. are ``(-1.0, 1.0)`` and ``(0.0, 1.0)``.
            (default: :obj:`(-1.0, 1.0)`)
        bias (bool, optional): add biases to the projections. (default: :obj:`True`)

    Shapes:
        - **input:** ``x`` :math:`(B, T, D)`, or packed :math:`(1, \sum_n T_n, D)` with
          ``cu_seqlens`` :math:`(N + 1)`; ``state`` :math:`(B, H, D/H)` (:math:`(N, H, D/H)`
          packed), default zeros.
        - **output:** :math:`(B, T, D)`; with ``return_state=True`` also the final state, same
          shape as ``state``. NaN in one sequence never reaches another sequence of the batch.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 1,
        eigenvalue_range: tuple[float, float] = (-1.0, 1.0),
        bias: bool = True,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        check_positive_int(cls, "channels", channels)
        check_positive_int(cls, "heads", heads)
        if channels % heads != 0:
            raise ValueError(f"{cls}: heads ({heads}) must divide channels ({channels})")
        try:
            lo, hi = (float(v) for v in eigenvalue_range)
        except (TypeError, ValueError):
            raise TypeError(
                f"{cls}: eigenvalue_range must be a pair of floats (low, high), "
                f"got {eigenvalue_range!r}"
            ) from None
        if not (-1.0 <= lo < hi <= 1.0):
            raise ValueError(
                f"{cls}: eigenvalue_range must satisfy -1 <= low < high <= 1, got ({lo}, {hi})"
            )
        self.channels = channels
        self.in_channels = channels
        self.out_channels = channels
        self.heads = heads
        self.head_channels = channels // heads
        self.eigenvalue_range = (lo, hi)
        self.bias = bool(bias)

        # one projection for [value (D), output gate (D), decay gate (H)]
        self.in_proj = torch.nn.Linear(channels, 2 * channels + heads, bias=bias)
        self.out_proj = torch.nn.Linear(channels, channels, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reinitialise all parameters (PyTorch's default ``Linear`` init)."""
        self.in_proj.reset_parameters()
        self.out_proj.reset_parameters()

    def __repr__(self) -> str:
        lo, hi = self.eigenvalue_range
        return (
            f"{type(self).__name__}({self.channels}, heads={self.heads}, "
            f"eigenvalue_range=({lo}, {hi})" + ("" if self.bias else ", bias=False") + ")"
        )

    # ------------------------------------------------------------------------------------------

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Gates ``a`` ``[..., H]``, values ``v`` ``[..., H, D/H]`` and output gate ``[..., D]``."""
        D, H = self.channels, self.heads
        v, g, z = self.in_proj(x).split([D, D, H], dim=-1)
        lo, hi = self.eigenvalue_range
        # the gate in float32 at least: float16/bfloat16 round a decay just below 1 to a coarse
        # grid or to 1 itself (bfloat16 above ~0.998), and the scan raises it to the power of
        # the sequence length, so a long-memory gate lost its decay altogether
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        a = lo + (hi - lo) * torch.sigmoid(z)
        return a, v.unflatten(-1, (H, self.head_channels)), g

    def init_state(self, batch_size: int) -> Tensor:
        """Zero state ``[batch_size, H, D/H]`` on the parameters' device and dtype."""
        batch_size = self._check_batch_size(batch_size)
        p = self.in_proj.weight
        return p.new_zeros(batch_size, self.heads, self.head_channels)

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
        if state is not None:
            state = self._check_state_tensor(state, "state", (n, self.heads, self.head_channels), x)
            state = state.to(x.dtype)
        a, v, g = self._project(x)  # [B,T,H] (float32 for half inputs), [B,T,H,Dh], [B,T,D]
        # the scan accumulates in float32 for half inputs anyway: give it the float32 gates
        h0 = None if state is None else state.to(a.dtype)
        h, h_last = linear_scan(a.unsqueeze(-1).expand_as(v), v.to(a.dtype), h0=h0, cu_seqlens=cu)
        y = self.out_proj(h.to(v.dtype).flatten(-2) * F.silu(g))  # [B, T, D]
        if return_state:
            return y, h_last.to(x.dtype)
        return y

    def step(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Advance one token: ``x`` ``[B, D]``, ``state`` ``[B, H, D/H]`` (default zeros).

        Returns ``(y, state)`` with ``y`` ``[B, D]``; O(1) time and memory per token.
        """
        x = self._check_x(x, "x", 2)
        if state is None:
            state = self.init_state(x.shape[0])
        state = self._check_state_tensor(
            state, "state", (x.shape[0], self.heads, self.head_channels), x
        ).to(x.dtype)  # as forward does: the state is carried in x's dtype
        a, v, g = self._project(x)  # a in float32 for half inputs, see _project
        h = (a.unsqueeze(-1) * state.to(a.dtype) + v.to(a.dtype)).to(state.dtype)  # [B, H, Dh]
        return self.out_proj(h.to(v.dtype).flatten(-2) * F.silu(g)), h
