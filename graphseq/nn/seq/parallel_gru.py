"""GRU trained in parallel over time by Newton iterations on linear scans (ParaRNN)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from graphseq.kernels import linear_scan
from graphseq.kernels._autograd import first_order_only

from .base import SequenceLayer, check_choice, check_positive_int, first_steps, last_steps

#: Default Newton tolerance on ``max |h_t - f(h_{t-1}, x_t)|``, by compute dtype.
DEFAULT_TOL: dict[torch.dtype, float] = {torch.float32: 1e-6, torch.float64: 1e-12}


class ParallelGRU(SequenceLayer):
    r"""A GRU whose hidden states over a whole sequence are found in parallel by Newton's
    method, each iteration one linear scan, from `"ParaRNN: Unlocking Parallel Training of
    Nonlinear RNNs for Large Language Models" <https://arxiv.org/abs/2510.21450>`_ (Danieli et
    al., 2025).

    The cell is :class:`torch.nn.GRUCell`'s (gate order :math:`r, z, n`):

    .. math::
        \mathbf{r}_t &= \sigma(\mathbf{W}_{ir}\mathbf{x}_t + \mathbf{b}_{ir}
            + \mathbf{W}_{hr}\mathbf{h}_{t-1} + \mathbf{b}_{hr}), \quad
        \mathbf{z}_t = \sigma(\mathbf{W}_{iz}\mathbf{x}_t + \mathbf{b}_{iz}
            + \mathbf{W}_{hz}\mathbf{h}_{t-1} + \mathbf{b}_{hz})

        \mathbf{n}_t &= \tanh\big(\mathbf{W}_{in}\mathbf{x}_t + \mathbf{b}_{in}
            + \mathbf{r}_t \odot (\mathbf{W}_{hn}\mathbf{h}_{t-1} + \mathbf{b}_{hn})\big), \quad
        \mathbf{h}_t = (1 - \mathbf{z}_t) \odot \mathbf{n}_t + \mathbf{z}_t \odot
            \mathbf{h}_{t-1} =: f(\mathbf{h}_{t-1}, \mathbf{x}_t)

    with the recurrent weights :math:`\mathbf{W}_{h\cdot}` either **diagonal**
    (``recurrence="diagonal"``, the ParaGRU cell: vectors, so :math:`\partial f /
    \partial \mathbf{h}_{t-1}` is diagonal) or **full** matrices (``recurrence="full"``, exactly
    ``nn.GRUCell``; ``load_state_dict(gru_cell.state_dict())`` works).

    **Parallel mode.** All states solve :math:`F_t(\mathbf{H}) = \mathbf{h}_t -
    f(\mathbf{h}_{t-1}, \mathbf{x}_t) = 0`. Starting from :math:`\mathbf{H}^{(0)} = 0`, one
    iteration linearises :math:`f` around the current iterate with :math:`\mathbf{J}_t`, the
    diagonal of :math:`\partial f / \partial \mathbf{h}_{t-1}`, and solves the linear recurrence

    .. math::
        \mathbf{h}^{(k+1)}_t = \mathbf{J}_t \odot \mathbf{h}^{(k+1)}_{t-1}
            + f(\mathbf{h}^{(k)}_{t-1}, \mathbf{x}_t) - \mathbf{J}_t \odot
            \mathbf{h}^{(k)}_{t-1}

    with one :func:`graphseq.kernels.linear_scan`. For the diagonal cell this is exact Newton
    (quadratic convergence); for the full cell it is a quasi-Newton method with the Jacobian's
    diagonal, converging linearly to the same solution. Either way iteration :math:`k` makes
    at least the first :math:`k` steps exact, so it converges in at most :math:`T` iterations.

    **Stopping rule.** Stop as soon as :math:`\max_{t, b, c} |F_t| \le` ``tol`` :math:`\cdot
    \max(1, \max |\mathbf{h}_0|)` (every state is bounded by that, each step being a convex
    combination of :math:`\tanh(\cdot)` and :math:`\mathbf{h}_{t-1}`, so rounding alone leaves
    a residual of a few ulps of it); if that has not happened after ``max_iter`` scans, raise
    :class:`RuntimeError` (with the residual reached). For a contractive cell the distance to
    the sequential solution is at most that bound over :math:`1 - ρ`, with ρ the largest
    :math:`\|\partial f / \partial \mathbf{h}\|`.

    **Gradients** do not go through the iterations: at the solution, :math:`g_t =
    \partial L / \partial \mathbf{h}_t` solves the adjoint recurrence :math:`g_t =
    \bar{g}_t + \mathbf{J}_{t+1}^{\top} g_{t+1}`, one reverse ``linear_scan`` for the diagonal
    cell, and the same quasi-Newton iteration (with vector-Jacobian products for the
    off-diagonal part, same ``tol`` relative to :math:`\max(1, \max|\bar g|)`, same
    ``max_iter``) for the full cell. Parameter and input gradients then come from one parallel
    evaluation of the cell. Double backward is not supported.

    **Sequential mode** (``mode="sequential"``) loops :meth:`step` over time: the reference and
    the inference path; the same weights give the same outputs in both modes.

    Args:
        in_channels (int): input size :math:`D`.
        hidden_channels (int): hidden (and output) size :math:`H`.
        recurrence (str, optional): ``"diagonal"`` or ``"full"``. (default: :obj:`"diagonal"`)
        bias (bool, optional): use ``bias_ih`` and ``bias_hh``. (default: :obj:`True`)
        mode (str, optional): ``"parallel"`` or ``"sequential"``; ``forward(mode=...)``
            overrides it per call. (default: :obj:`"parallel"`)
        tol (float, optional): Newton tolerance on the max-norm residual, relative to
            :math:`\max(1, \max |\mathbf{h}_0|)` (see the stopping rule); :obj:`None` picks
            ``1e-6`` for float32 (also used for float16/bfloat16, which are solved in float32)
            and ``1e-12`` for float64. (default: :obj:`None`)
        max_iter (int, optional): most linear scans in one solve. (default: :obj:`100`)

    Shapes:
        - **input:** ``x`` :math:`(B, T, D)`, or packed :math:`(1, \sum_n T_n, D)` with
          ``cu_seqlens`` :math:`(N + 1)`; ``state`` :math:`(B, H)` (:math:`(N, H)` packed),
          default zeros.
        - **output:** all hidden states :math:`(B, T, H)`; with ``return_state=True`` also the
          final state :math:`(B, H)` / :math:`(N, H)`. The parallel mode needs finite inputs
          (``ValueError`` otherwise); the sequential mode propagates NaN like ``nn.GRUCell``.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        recurrence: str = "diagonal",
        bias: bool = True,
        mode: str = "parallel",
        tol: float | None = None,
        max_iter: int = 100,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        check_positive_int(cls, "in_channels", in_channels)
        check_positive_int(cls, "hidden_channels", hidden_channels)
        check_choice(cls, "recurrence", recurrence, ("diagonal", "full"))
        check_choice(cls, "mode", mode, ("parallel", "sequential"))
        if tol is not None and (
            isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < float("inf")
        ):  # an infinite tol would stop the solve before its first scan: f(0, x_t) everywhere
            raise ValueError(f"{cls}: tol must be a positive finite float or None, got {tol!r}")
        check_positive_int(cls, "max_iter", max_iter)
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.out_channels = hidden_channels
        self.recurrence = recurrence
        self.bias = bool(bias)
        self.mode = mode
        self.tol = None if tol is None else float(tol)
        self.max_iter = max_iter
        #: number of scans the last parallel forward solve took (for monitoring)
        self.last_num_iters: int = 0

        H = hidden_channels
        hh_shape = (3 * H, H) if recurrence == "full" else (3 * H,)
        self.weight_ih = torch.nn.Parameter(torch.empty(3 * H, in_channels))
        self.weight_hh = torch.nn.Parameter(torch.empty(hh_shape))
        if bias:
            self.bias_ih = torch.nn.Parameter(torch.empty(3 * H))
            self.bias_hh = torch.nn.Parameter(torch.empty(3 * H))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reinitialise all parameters uniformly in ``±1/sqrt(hidden_channels)`` (as GRUCell)."""
        bound = 1.0 / math.sqrt(self.hidden_channels)
        for p in self.parameters():
            torch.nn.init.uniform_(p, -bound, bound)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.in_channels}, {self.hidden_channels}, "
            f"recurrence={self.recurrence!r}, mode={self.mode!r}"
            + ("" if self.bias else ", bias=False")
            + ("" if self.tol is None else f", tol={self.tol!r}")
            + ("" if self.max_iter == 100 else f", max_iter={self.max_iter}")
            + ")"
        )

    # --- the cell ------------------------------------------------------------------------------

    def _input_gates(self, x: Tensor) -> Tensor:
        """``W_ih x + b_ih`` for every step at once: ``[..., 3H]``."""
        return torch.nn.functional.linear(x, self.weight_ih, self.bias_ih)

    def _cell(
        self, gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, jacobian: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``f(h, x)`` from the input gates ``gi`` ``[..., 3H]`` and state ``h`` ``[..., H]``;
        with ``jacobian=True`` also the diagonal of ``∂f/∂h`` ``[..., H]``."""
        H = self.hidden_channels
        i_r, i_z, i_n = gi.split(H, dim=-1)
        if self.recurrence == "full":
            h_r, h_z, h_n = torch.nn.functional.linear(h, w_hh, b_hh).split(H, dim=-1)
        else:  # diagonal: three fused multiply-adds instead of a [.., 3H] product
            w_r, w_z, w_n = w_hh.split(H)
            if b_hh is None:
                h_r, h_z, h_n = h * w_r, h * w_z, h * w_n
            else:
                b_r, b_z, b_n = b_hh.split(H)
                h_r = torch.addcmul(b_r, h, w_r)
                h_z = torch.addcmul(b_z, h, w_z)
                h_n = torch.addcmul(b_n, h, w_n)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(torch.addcmul(i_n, r, h_n))
        h_minus_n = h - n
        f = torch.addcmul(n, z, h_minus_n)
        if not jacobian:
            return f, None
        if self.recurrence == "full":
            d = torch.diagonal(w_hh.view(3, H, H), dim1=-2, dim2=-1)  # [3, H]
        else:
            d = w_hh.view(3, H)
        dr = r * (1 - r) * d[0]
        dz = z * (1 - z) * d[1]
        dn = (1 - n * n) * (dr * h_n + r * d[2])
        return f, (1 - z) * dn + z + dz * h_minus_n

    # --- helpers over time ---------------------------------------------------------------------

    @staticmethod
    def _shift_prev(h: Tensor, h0: Tensor | None, cu: Tensor | None) -> Tensor:
        """``h_{t-1}`` for every step: the state before each sequence's first step is ``h0``."""
        prev = torch.cat([h[:, :1], h[:, :-1]], dim=1)
        if h.shape[1] == 0:
            return prev
        if cu is None:
            prev[:, 0] = 0 if h0 is None else h0
        else:
            first, nonempty = first_steps(cu)
            prev[0, first] = 0 if h0 is None else h0[nonempty]
        return prev

    @staticmethod
    def _shift_next(g: Tensor, cu: Tensor | None) -> Tensor:
        """``g_{t+1}`` for every step, zero after each sequence's last step."""
        nxt = torch.cat([g[:, 1:], torch.zeros_like(g[:, :1])], dim=1)
        if cu is not None and g.shape[1] > 0:
            last, _ = last_steps(cu)
            nxt[0, last] = 0
        return nxt

    def _solve(
        self, gi: Tensor, h0: Tensor | None, cu: Tensor | None, tol: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Newton/quasi-Newton solve; returns ``(h, h_prev, J)`` at the solution."""
        w_hh, b_hh = self.weight_hh.detach(), None
        if self.bias_hh is not None:
            b_hh = self.bias_hh.detach().to(gi.dtype)
        w_hh = w_hh.to(gi.dtype)
        B, T = gi.shape[:2]
        h = gi.new_zeros(B, T, self.hidden_channels)
        residual = float("inf")
        for it in range(self.max_iter + 1):
            prev = self._shift_prev(h, h0, cu)
            f, J = self._cell(gi, prev, w_hh, b_hh, jacobian=True)
            residual = (h - f).abs().max().item() if h.numel() > 0 else 0.0
            if residual <= tol:
                self.last_num_iters = it
                return h, prev, J
            if it == self.max_iter or not math.isfinite(residual):
                break
            h, _ = linear_scan(J, f - J * prev, h0=h0, cu_seqlens=cu)
        if not math.isfinite(residual):
            raise RuntimeError(
                f"{type(self).__name__}: the parallel solve diverged: max |h_t - "
                f"f(h_t-1, x_t)| = {residual} after {it} Newton iteration(s) "
                f"({self.recurrence} recurrence, T = {T}); more iterations will not help, use "
                "mode='sequential'."
            )
        raise RuntimeError(
            f"{type(self).__name__}: the parallel solve did not converge: max |h_t - "
            f"f(h_t-1, x_t)| = {residual:.3e} > tol = {tol:.1e} after {it} Newton "
            f"iterations ({self.recurrence} recurrence, T = {T}). Raise max_iter or tol, or "
            "use mode='sequential'."
        )

    # --- forward -------------------------------------------------------------------------------

    def init_state(self, batch_size: int) -> Tensor:
        """Zero state ``[batch_size, H]`` on the parameters' device and dtype."""
        batch_size = self._check_batch_size(batch_size)
        return self.weight_ih.new_zeros(batch_size, self.hidden_channels)

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        return_state: bool = False,
        mode: str | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """All hidden states (see the class docstring for shapes and modes)."""
        x = self._check_x(x, "x", 3)
        cu = self._check_cu_seqlens(cu_seqlens, x)
        mode = (
            self.mode
            if mode is None
            else check_choice(type(self).__name__, "mode", mode, ("parallel", "sequential"))
        )
        n = self._num_states(x, cu)
        if state is not None:
            state = self._check_state_tensor(state, "state", (n, self.hidden_channels), x)
            state = state.to(x.dtype)
        if mode == "sequential":
            h = self._sequential(x, state, cu)
        else:
            h = self._parallel(x, state, cu)
        if not return_state:
            return h
        if cu is None:
            # a copy, not a view of the output: an in-place op on the output (a residual
            # ``y += x``, ``relu_``) must not rewrite the state the caller carries on
            if x.shape[1] > 0:
                h_last = h[:, -1].clone()
            elif state is None:
                h_last = h.new_zeros(x.shape[0], self.hidden_channels)
            else:
                h_last = state.clone()
        else:
            # zeros in h's dtype (x's): under autocast x may be lower precision than the weights
            h_last = h.new_zeros(n, self.hidden_channels) if state is None else state.clone()
            if x.shape[1] > 0:
                last, nonempty = last_steps(cu)
                h_last = h_last.index_put((nonempty.nonzero().flatten(),), h[0, last])
        return h, h_last

    def _parallel(self, x: Tensor, h0: Tensor | None, cu: Tensor | None) -> Tensor:
        cls = type(self).__name__
        if not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"{cls}: x contains NaN or inf; the parallel mode needs finite inputs "
                "(mode='sequential' propagates them like nn.GRUCell)"
            )
        if h0 is not None and not bool(torch.isfinite(h0).all()):
            raise ValueError(f"{cls}: state contains NaN or inf")
        acc = torch.promote_types(x.dtype, torch.float32)
        tol = DEFAULT_TOL.get(acc, 1e-6) if self.tol is None else self.tol
        gi = self._input_gates(x).to(acc)  # [B, T, 3H], with autograd
        h0a = None if h0 is None else h0.to(acc)
        # |h_t| <= max(1, max|h0|): the residual's rounding floor scales with it
        scale = 1.0 if h0a is None or h0a.numel() == 0 else max(1.0, h0a.abs().max().item())
        with torch.no_grad():
            h_star, prev, J = self._solve(
                gi.detach(), None if h0a is None else h0a.detach(), cu, tol * scale
            )
        # One more cell evaluation at the solution, with autograd: it depends directly on x,
        # the weights and h0. The adjoint below turns the upstream gradient into the solution
        # of the adjoint recurrence, so backpropagating through this single step gives the
        # exact gradient of the whole recurrence.
        prev = self._shift_prev(h_star, h0a, cu)  # h0's slots keep their autograd graph
        w_hh = self.weight_hh.to(acc)
        b_hh = None if self.bias_hh is None else self.bias_hh.to(acc)
        f, _ = self._cell(gi, prev, w_hh, b_hh, jacobian=False)
        if torch.is_grad_enabled() and f.requires_grad:
            vjp = None
            if self.recurrence == "full":
                vjp = _make_vjp(self, gi.detach(), prev.detach(), w_hh.detach(), b_hh)
            f = _Adjoint.apply(f, J, vjp, cu, tol, self.max_iter, cls)
        return f.to(x.dtype)

    def _sequential(self, x: Tensor, h0: Tensor | None, cu: Tensor | None) -> Tensor:
        # states and outputs in x's dtype, as in the parallel mode: under autocast a step's
        # result may come back in the weights' dtype instead
        if x.shape[1] == 0:
            # no step to loop over; still return an (empty) result inside the autograd graph,
            # as the parallel mode does, so a loss built from it can be backpropagated
            return self._input_gates(x)[..., : self.hidden_channels].to(x.dtype)
        if cu is None:
            h = x.new_zeros(x.shape[0], self.hidden_channels) if h0 is None else h0
            out = []
            for x_t in x.unbind(1):
                h = self.step(x_t, h)[0].to(x.dtype)
                out.append(h)
            return torch.stack(out, 1)
        # packed: pad to [N, max_len], freeze finished sequences, gather back
        n = cu.numel() - 1
        lengths = cu[1:] - cu[:-1]
        max_len = int(lengths.max()) if n > 0 else 0
        h = x.new_zeros(n, self.hidden_channels) if h0 is None else h0
        out = x.new_zeros(1, x.shape[1], self.hidden_channels)
        seqs = torch.arange(n, device=x.device)
        for t in range(max_len):
            active = seqs[lengths > t]
            pos = cu[:-1][active] + t
            h_new = self.step(x[0, pos], h[active])[0].to(x.dtype)
            h = h.index_put((active,), h_new)
            out = out.index_put((torch.zeros_like(pos), pos), h_new)
        return out

    def step(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Advance one token: ``x`` ``[B, D]``, ``state`` ``[B, H]`` (default zeros).

        Returns ``(h, state)``: the output is the new hidden state, and ``state`` a copy of it
        (a separate tensor, so an in-place op on the output leaves the carried state alone).
        """
        x = self._check_x(x, "x", 2)
        if state is None:
            state = self.init_state(x.shape[0])
        state = self._check_state_tensor(state, "state", (x.shape[0], self.hidden_channels), x).to(
            x.dtype
        )
        h, _ = self._cell(self._input_gates(x), state, self.weight_hh, self.bias_hh, jacobian=False)
        return h, h.clone()


def _make_vjp(
    layer: ParallelGRU, gi: Tensor, prev: Tensor, w_hh: Tensor, b_hh: Tensor | None
) -> Callable[[Tensor], Tensor]:
    """``g -> (∂f_t/∂h_{t-1})^T g_t`` for every step, from one retained graph of the cell."""
    state: dict[str, Tensor] = {}

    def vjp(g: Tensor) -> Tensor:
        if "f" not in state:
            with torch.enable_grad():
                p = prev.detach().requires_grad_(True)
                bh = None if b_hh is None else b_hh.detach()
                state["p"] = p
                state["f"] = layer._cell(gi, p, w_hh, bh, jacobian=False)[0]
        return torch.autograd.grad(state["f"], state["p"], g, retain_graph=True)[0]

    return vjp


class _Adjoint(torch.autograd.Function):
    """Identity forward; backward solves ``g_t = dh_t + J_{t+1}^T g_{t+1}`` at the solution."""

    @staticmethod
    def forward(ctx, f, J, vjp, cu, tol, max_iter, cls):
        ctx.save_for_backward(J)
        ctx.vjp, ctx.cu, ctx.tol, ctx.max_iter, ctx.cls = vjp, cu, tol, max_iter, cls
        return f.view_as(f)

    @staticmethod
    @first_order_only("ParallelGRU (parallel mode)", "mode='sequential' records a graph")
    def backward(ctx, dh):
        (J,) = ctx.saved_tensors
        cu, vjp = ctx.cu, ctx.vjp
        dh = dh.contiguous()
        J_next = ParallelGRU._shift_next(J, cu)
        g, _ = linear_scan(J_next, dh, reverse=True, cu_seqlens=cu)
        if vjp is None or g.numel() == 0:  # diagonal cell: the scan is the exact adjoint
            return g, None, None, None, None, None, None
        # full cell: quasi-Newton on the adjoint recurrence, the diagonal solved by the scan
        tol = ctx.tol * max(1.0, dh.abs().max().item())
        residual = float("inf")
        for _ in range(ctx.max_iter):
            Jg = vjp(g)  # [B,T,H]: J_t^T g_t
            coupled = ParallelGRU._shift_next(Jg, cu)  # J_{t+1}^T g_{t+1}
            residual = (g - dh - coupled).abs().max().item()
            if residual <= tol:
                return g, None, None, None, None, None, None
            if not math.isfinite(residual):
                break
            offdiag = coupled - J_next * ParallelGRU._shift_next(g, cu)
            g, _ = linear_scan(J_next, dh + offdiag, reverse=True, cu_seqlens=cu)
        raise RuntimeError(
            f"{ctx.cls}: the adjoint (backward) solve did not converge: residual "
            f"{residual:.3e} > {tol:.1e} after {ctx.max_iter} iterations. Raise max_iter or "
            "tol, or use mode='sequential'."
        )
