"""GRU / LSTM aggregation over each neighbourhood's own elements (packed, no padding)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import GRU, LSTM, Linear
from torch_geometric.nn.aggr import Aggregation

from graphseq.kernels._index import exclusive_cumsum as _exclusive_cumsum
from graphseq.kernels._index import ranges as _ranges

from ..seq.base import check_matches_parameters
from ._grouping import (
    Grouped,
    check_call,
    check_generator,
    check_groups,
    check_input,
    check_ptr,
    check_x,
    group,
    infer_dim_size,
    segment_ids,
    shuffle_within_groups,
)

CELLS = ("gru", "lstm")
ORDERS = ("given", "random", "score")


class RecurrentAggregation(Aggregation):
    r"""A recurrent (GRU or LSTM) aggregation that reads every neighbourhood as a sequence of
    its *own* elements, as in GraphSAGE-LSTM (`"Inductive Representation Learning on Large
    Graphs" <https://arxiv.org/abs/1706.02216>`_), with the permutation-invariance
    regulariser of `"Regularizing Towards Permutation Invariance in Recurrent Models"
    <https://arxiv.org/abs/2010.13055>`_ (Cohen-Karlik et al., NeurIPS 2020) as an opt-in
    loss.

    For group :math:`\mathcal{N}(i) = \{j_1, \dots, j_d\}` read in the order :math:`\pi`

    .. math::
        \mathbf{s}_t = \mathrm{Cell}\left(\mathbf{x}_{\pi(t)}, \mathbf{s}_{t-1}\right),
        \quad \mathbf{s}_0 = \mathbf{0}, \qquad
        \mathbf{x}^{\prime}_i = \mathbf{h}_d ,

    where :math:`\mathbf{h}_d` is the last layer's hidden state after the group's *own last
    element* (for an LSTM :math:`\mathbf{s} = (\mathbf{h}, \mathbf{c})`). An empty group
    returns the initial hidden state :math:`\mathbf{0}`, the RNN run over no element.

    **No padding, no batch dependence.** PyG's ``GRUAggregation`` / ``LSTMAggregation``
    pad every group to the batch's largest degree and read the state after the padding, so a
    node's output changes with the batch it is in. Here the groups are packed time-major
    straight from the CSR layout (the layout of a
    :class:`~torch.nn.utils.rnn.PackedSequence`; groups ordered by length so the active ones
    form a prefix): step :math:`t` runs the cell on the :math:`t`-th element of every group
    longer than :math:`t`. That is exactly :math:`E` cell evaluations and :math:`O(E)`
    memory. The input projections of all elements are one matrix product per layer; the
    :math:`\max \deg` sequential steps are a Python loop, each one hidden-state matrix
    product and a few elementwise ops on the active prefix (so a hub of degree 3,000 costs
    3,000 small steps; a tree, :class:`LCMAggregation`, needs only
    :math:`\lceil \log_2 \deg \rceil`). The
    output for a node equals that of the node alone to float rounding (about 1e-7).

    **Order** (``order``): ``"given"`` keeps the elements' order (for an unsorted
    ``index``: the order in which they were given, grouped by a stable sort); ``"random"``
    draws a fresh uniform permutation of every group on each call (training and
    evaluation); ``"score"`` sorts every group by a learned score
    :math:`\sigma_j = \mathbf{w}^{\top}\mathbf{x}_j + b` (ascending, ties in the given
    order) and feeds :math:`\mathrm{sigmoid}(\sigma_j)\,\mathbf{x}_j`, so that the score
    receives a gradient (as the gate of :class:`~torch_geometric.nn.pool.TopKPooling`).

    Nothing is truncated: a group larger than ``max_num_elements`` raises ``ValueError``.

    Args:
        in_channels (int): Size of each input element.
        out_channels (int): Size of the hidden state and of the output.
        cell (str, optional): ``"gru"`` or ``"lstm"``. (default: ``"gru"``)
        order (str, optional): ``"given"``, ``"random"`` or ``"score"``.
            (default: ``"given"``)
        num_layers (int, optional): Number of stacked recurrent layers. (default: ``1``)
        bias (bool, optional): Whether the cells use biases. (default: ``True``)

    Shapes:
        - **input:** ``x`` :math:`(E, F_{in})`, ``index`` :math:`(E)` (any order) or ``ptr``
          :math:`(N + 1)`, ``dim_size`` :math:`N`.
        - **output:** :math:`(N, F_{out})`.

    Example:
        >>> import torch
        >>> from graphseq.nn.aggr import RecurrentAggregation
        >>> aggr = RecurrentAggregation(16, 32, cell="lstm")
        >>> x, index = torch.randn(6, 16), torch.tensor([2, 0, 0, 2, 2, 0])
        >>> aggr(x, index, dim_size=4).shape
        torch.Size([4, 32])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cell: str = "gru",
        order: str = "given",
        num_layers: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("num_layers", num_layers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: {arg} must be a positive int, got {value!r}")
        if cell not in CELLS:
            raise ValueError(f"{name}: cell must be one of {CELLS}, got {cell!r}")
        if order not in ORDERS:
            raise ValueError(f"{name}: order must be one of {ORDERS}, got {order!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.cell = cell
        self.order = order
        self.num_layers = num_layers
        self.bias = bool(bias)

        rnn_cls = GRU if cell == "gru" else LSTM
        self.rnn = rnn_cls(in_channels, out_channels, num_layers=num_layers, bias=self.bias)
        self.score = Linear(in_channels, 1) if order == "score" else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.rnn.reset_parameters()
        if self.score is not None:
            self.score.reset_parameters()

    # -- the packed recurrence -------------------------------------------------------------

    def _prepare(self, grouped: Grouped, generator: torch.Generator | None = None) -> Grouped:
        """Apply the element order (and the score gate); ``generator`` draws the random
        order."""
        if self.order == "random":
            return shuffle_within_groups(grouped, generator)
        if self.order == "score":
            x, ptr = grouped.x, grouped.ptr
            s = self.score(x).squeeze(-1)  # [E]
            perm = torch.sort(s.detach(), stable=True)[1]
            perm = perm[torch.sort(segment_ids(ptr)[perm], stable=True)[1]]  # by score in group
            gated = (x * torch.sigmoid(s).unsqueeze(-1)).index_select(0, perm)
            order = perm if grouped.order is None else grouped.order[perm]
            return Grouped(gated, ptr, order)
        return grouped

    def final_states(self, x: Tensor, ptr: Tensor, state=None) -> tuple[Tensor, ...]:
        """Run the RNN over every group of grouped ``x`` without padding.

        Args:
            x: ``[E, in_channels]`` grouped elements (already ordered).
            ptr: ``[N + 1]`` int64 boundaries.
            state: optional initial state, ``[num_layers, N, out_channels]`` (a pair of them
                for the LSTM); zeros if ``None``.

        Returns:
            The final state of every group after its own last element: ``(h,)`` for the GRU,
            ``(h, c)`` for the LSTM, each ``[num_layers, N, out_channels]``; an empty group
            keeps its initial state.

        Raises:
            TypeError / ValueError: ``x``, ``ptr`` (int, one-dimensional, non-decreasing from 0
                to ``E``) or ``state`` (the shape above, ``x``'s dtype and device) is malformed.
        """
        name = f"{type(self).__name__}.final_states"
        check_x(name, x)
        if x.size(1) != self.in_channels:
            raise ValueError(
                f"{name}: x must have in_channels = {self.in_channels} columns, got {x.size(1)}"
            )
        check_groups(name, x, None, ptr)
        if ptr.numel() == 0:
            raise ValueError(f"{name}: ptr must have at least one entry (its leading 0), got none")
        ptr = check_ptr(name, ptr, x.size(0), ptr.numel() - 1)
        if state is not None:
            state = self._check_state(name, x, state, ptr.numel() - 1)
        return self._final_states(x, ptr, state)

    def _check_state(self, name: str, x: Tensor, state, num_groups: int) -> tuple[Tensor, ...]:
        count = 1 if self.cell == "gru" else 2
        what = "a tensor (h,)" if self.cell == "gru" else "a pair (h, c)"
        init = (state,) if isinstance(state, Tensor) else state
        if not isinstance(init, (tuple, list)) or len(init) != count:
            raise ValueError(f"{name}: state must be {what} for cell={self.cell!r}")
        shape = (self.num_layers, num_groups, self.out_channels)
        for t in init:
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}: state must hold tensors, got {type(t).__name__}")
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"{name}: state must have shape [num_layers, N, out_channels] = "
                    f"{list(shape)}, got {list(t.shape)}"
                )
            if t.dtype != x.dtype or t.device != x.device:
                raise ValueError(
                    f"{name}: state must have x's dtype and device ({x.dtype}, {x.device}), "
                    f"got ({t.dtype}, {t.device})"
                )
        return tuple(init)

    def _final_states(
        self, x: Tensor, ptr: Tensor, state: tuple[Tensor, ...] | None = None
    ) -> tuple[Tensor, ...]:
        """:meth:`final_states` on checked arguments (the forward pass's, no host sync)."""
        num_groups = ptr.numel() - 1
        shape = (self.num_layers, num_groups, self.out_channels)
        if state is None:
            zeros = x.new_zeros(shape)
            init = (zeros,) if self.cell == "gru" else (zeros, zeros)
        else:
            init = state
        lengths = ptr[1:] - ptr[:-1]  # [N]
        nonempty = torch.nonzero(lengths > 0).flatten()
        if nonempty.numel() == 0:
            # no element at all: the initial states, still attached to x so that an empty
            # batch backpropagates (as the tree aggregations' identity rows do)
            link = x.sum() * 0
            return tuple(s + link for s in init)
        lens = lengths[nonempty]
        by_length = torch.sort(lens, descending=True, stable=True)[1]
        groups = nonempty[by_length]  # group ids, longest first: active groups form a prefix
        rank = torch.full((num_groups,), -1, dtype=torch.long, device=x.device)
        rank[groups] = torch.arange(groups.numel(), device=x.device)
        longest = int(lens.max())
        # batch_sizes[t] = number of groups longer than t
        counts = torch.bincount(lens, minlength=longest + 1)
        batch_sizes = counts.flip(0).cumsum(0).flip(0)[1:]  # [longest]
        offsets = _exclusive_cumsum(batch_sizes)
        seg = segment_ids(ptr)  # [E]
        pos = torch.arange(x.size(0), device=x.device) - ptr[seg]  # position inside its group
        packed_pos = offsets[pos] + rank[seg]  # [E] row of each element in the packed data
        inverse = torch.empty_like(packed_pos)
        inverse[packed_pos] = torch.arange(packed_pos.numel(), device=x.device)
        data = x.index_select(0, inverse)  # [E, C_in] time-major, longest group first
        hx = tuple(s.index_select(1, groups) for s in init)
        final = self._run_packed(data, batch_sizes.tolist(), hx)
        return tuple(s.index_copy(1, groups, f) for s, f in zip(init, final))

    def _run_packed(
        self, data: Tensor, batch_sizes: list[int], init: tuple[Tensor, ...]
    ) -> tuple[Tensor, ...]:
        """The recurrence over packed ``data`` (step ``t`` holds ``batch_sizes[t]`` rows, the
        groups still active, longest first). Returns the final states in that group order.

        The input projection of every element is one matrix product per layer; the loop
        runs one hidden-state product and a few elementwise ops per step, on the active
        prefix only. Steps are cut with ``split`` (one autograd node, linear backward);
        PyTorch's own packed RNN slices its input per step, and on CPU the backward of each
        slice allocates a zero gradient of the whole input, quadratic in the largest degree.
        """
        rnn, finals = self.rnn, []
        layer_input = data
        for layer in range(self.num_layers):
            w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
            b_ih = getattr(rnn, f"bias_ih_l{layer}") if self.bias else None
            b_hh = getattr(rnn, f"bias_hh_l{layer}") if self.bias else None
            steps = F.linear(layer_input, w_ih, b_ih).split(batch_sizes)  # [bs_t, G * C] each
            state = tuple(s[layer] for s in init)  # [n, C] each
            done, outputs, active = [], [], state[0].size(0)
            for size, g_i in zip(batch_sizes, steps):
                if size < active:  # the last `active - size` groups ended at the previous step
                    parts = [s.split([size, active - size]) for s in state]
                    state, active = tuple(p[0] for p in parts), size
                    done.append(tuple(p[1] for p in parts))
                g_h = F.linear(state[0], w_hh, b_hh)  # [size, G * C]
                if self.cell == "gru":
                    i_r, i_z, i_n = g_i.chunk(3, 1)
                    h_r, h_z, h_n = g_h.chunk(3, 1)
                    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
                    n = torch.tanh(i_n + r * h_n)
                    state = (n + z * (state[0] - n),)
                else:
                    gates = (g_i + g_h).chunk(4, 1)  # input, forget, cell, output
                    i, f, g, o = (
                        torch.sigmoid(gates[0]),
                        torch.sigmoid(gates[1]),
                        torch.tanh(gates[2]),
                        torch.sigmoid(gates[3]),
                    )
                    cell = f * state[1] + i * g
                    state = (o * torch.tanh(cell), cell)
                if layer + 1 < self.num_layers:
                    outputs.append(state[0])
            done.append(state)
            finals.append(
                tuple(torch.cat([d[k] for d in reversed(done)]) for k in range(len(state)))
            )
            if layer + 1 < self.num_layers:
                layer_input = torch.cat(outputs)  # packed outputs = next layer's packed inputs
        return tuple(torch.stack([f[k] for f in finals]) for k in range(len(init)))

    # -- forward ---------------------------------------------------------------------------

    def __call__(self, x, index=None, ptr=None, dim_size=None, dim=-2, **kwargs):
        check_call(type(self).__name__, x, index, ptr)  # before PyG's __call__ touches them
        return super().__call__(x, index, ptr, dim_size, dim, **kwargs)

    def forward(
        self,
        x: Tensor,
        index: Tensor | None = None,
        ptr: Tensor | None = None,
        dim_size: int | None = None,
        dim: int = -2,
        max_num_elements: int | None = None,
    ) -> Tensor:
        r"""Aggregate every group of ``x``.

        Args:
            x (torch.Tensor): ``[E, in_channels]`` elements.
            index (torch.Tensor, optional): ``[E]`` group of every element, in any order.
            ptr (torch.Tensor, optional): ``[N + 1]`` boundaries of already grouped
                elements (takes precedence over ``index``).
            dim_size (int, optional): ``N`` (filled in by PyG's ``Aggregation.__call__``).
            dim (int, optional): Must be ``0`` or ``-2``. (default: ``-2``)
            max_num_elements (int, optional): Accepted for PyG compatibility; a larger
                group raises ``ValueError`` (never truncated). (default: ``None``)
        """
        name = type(self).__name__
        dim_size = check_input(name, x, index, ptr, dim_size, dim)
        self._check_matches_layer(name, x)
        grouped = self._prepare(group(name, x, index, ptr, dim_size, max_num_elements))
        return self._final_states(grouped.x, grouped.ptr)[0][-1]  # last layer's h, [N, C]

    def _check_matches_layer(self, name: str, x: Tensor) -> None:
        """``x`` (already a 2-D float tensor) has the layer's dtype, device and channels."""
        check_matches_parameters(name, "x", x, next(self.parameters()))
        if x.size(1) != self.in_channels:
            raise ValueError(
                f"{name}: x must have in_channels = {self.in_channels} channels, got {x.size(1)}"
            )

    # -- regulariser -----------------------------------------------------------------------

    def permutation_loss(
        self,
        x: Tensor,
        index: Tensor | None = None,
        ptr: Tensor | None = None,
        num_samples: int = 128,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""The permutation-invariance regulariser of Cohen-Karlik et al. (2020): swapping two
        consecutive inputs should not change the state,

        .. math::
            \mathcal{L}_{\text{perm}} = \frac{1}{S}\sum_{s=1}^{S} \frac{1}{D}
            \left\| \mathrm{Cell}(\mathrm{Cell}(\mathbf{s}, \mathbf{x}_1), \mathbf{x}_2)
            - \mathrm{Cell}(\mathrm{Cell}(\mathbf{s}, \mathbf{x}_2), \mathbf{x}_1)
            \right\|_2^2 .

        Adjacent transpositions generate all permutations, so a cell with zero loss on every
        reachable state is permutation invariant. Each sample draws a group with at least
        two elements uniformly, a prefix length :math:`t \sim U\{0, \dots, d - 2\}`, and
        sets :math:`\mathbf{s}` to the state after the first :math:`t` elements (in the
        order the aggregation uses), :math:`\mathbf{x}_1` to element :math:`t` and
        :math:`\mathbf{x}_2` to a uniformly random later element of the same group.
        :math:`D` is the size of the full state (all layers; :math:`\mathbf{h}` and
        :math:`\mathbf{c}` for the LSTM). Add ``weight * aggr.permutation_loss(x, index)``
        to the training loss.

        Args:
            x (torch.Tensor): ``[E, in_channels]`` elements, as passed to ``forward``.
            index (torch.Tensor, optional): ``[E]`` groups, in any order; ``None`` with
                ``ptr=None`` means one group. (default: ``None``)
            ptr (torch.Tensor, optional): ``[N + 1]`` boundaries of grouped ``x``.
            num_samples (int, optional): Number of samples :math:`S`. (default: ``128``)
            generator (torch.Generator, optional): For reproducible sampling (it also
                draws the element order of ``order="random"``).

        Returns:
            A scalar tensor (zero if no group has two elements).
        """
        name = type(self).__name__
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
            raise ValueError(f"{name}: num_samples must be a positive int, got {num_samples!r}")
        dim_size = infer_dim_size(name, x, index, ptr)  # checks x, index and ptr
        self._check_matches_layer(name, x)
        check_generator(name, generator, x)
        grouped = self._prepare(group(name, x, index, ptr, dim_size), generator)
        xs, gptr = grouped.x, grouped.ptr
        lengths = gptr[1:] - gptr[:-1]
        eligible = torch.nonzero(lengths >= 2).flatten()
        if eligible.numel() == 0:
            return xs.new_zeros(()) + 0.0 * sum(p.sum() for p in self.parameters())
        dev = xs.device
        pick = eligible[
            torch.randint(eligible.numel(), (num_samples,), device=dev, generator=generator)
        ]
        length, start = lengths[pick], gptr[pick]
        u = torch.rand(num_samples, device=dev, generator=generator)
        t = (u * (length - 1)).long().clamp_max(length - 2)  # prefix length in [0, d - 2]
        v = torch.rand(num_samples, device=dev, generator=generator)
        later = t + 1 + (v * (length - 1 - t)).long().clamp_max(length - 2 - t)  # in (t, d)
        prefix_ptr = torch.zeros(num_samples + 1, dtype=torch.long, device=dev)
        torch.cumsum(t, 0, out=prefix_ptr[1:])
        states = self._final_states(xs.index_select(0, _ranges(start, t)), prefix_ptr)
        x1, x2 = xs.index_select(0, start + t), xs.index_select(0, start + later)
        # both orders as 2S packed sequences of length 2: step 0 rows, then step 1 rows
        data = torch.cat([x1, x2, x2, x1])  # [4S, in]
        hx = tuple(torch.cat([s, s], 1) for s in states)
        final = self._run_packed(data, [2 * num_samples, 2 * num_samples], hx)
        sq = sum((f[:, :num_samples] - f[:, num_samples:]).pow(2).sum((0, 2)) for f in final)
        return sq.mean() / (len(final) * self.num_layers * self.out_channels)  # sq: [S]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
            f"cell={self.cell!r}, order={self.order!r}, num_layers={self.num_layers}"
            + ("" if self.bias else ", bias=False")
            + ")"
        )
