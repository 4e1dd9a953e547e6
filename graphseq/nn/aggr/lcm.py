"""Learnable commutative monoid (LCM) aggregation on the segmented balanced tree."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import GRUCell, Linear, Parameter
from torch_geometric.nn.aggr import Aggregation

from graphseq.kernels import SegmentPlan, segment_tree_reduce
from graphseq.kernels._autograd import first_order_only

from ..seq.base import check_matches_parameters
from ._grouping import (
    check_call,
    check_generator,
    check_input,
    group,
    infer_dim_size,
    segment_ids,
    shuffle_within_groups,
)

CELLS = ("gru", "mlp")


def _mean_square(d: Tensor) -> Tensor:
    """``mean(d ** 2)`` in float32 at least, returned in ``d``'s dtype: squared in float16, one
    ``|d| > 256`` overflowed to inf although the mean itself is representable."""
    return d.to(torch.promote_types(d.dtype, torch.float32)).pow(2).mean().to(d.dtype)


IDENTITIES = ("learned", "zeros")


def _symmetric_gru_reference(
    q: Tensor, m: Tensor, na: Tensor, nb: Tensor, a: Tensor, b: Tensor
) -> Tensor:
    """``½ (GRUCell(a, b) + GRUCell(b, a))`` from the sum/difference projections (the
    readable reference of :class:`_SymmetricGRU`, same signature).

    ``q = ½(W_i + W_h)(a + b) + b_i + b_h`` and ``m = ½(W_i - W_h)(a - b)`` are ``[P, 2C]``
    (reset and update gates only), so ``q + m = W_i a + W_h b + b_i + b_h`` is the gate
    pre-activation of ``GRUCell(input=a, hidden=b)`` and ``q - m`` that of
    ``GRUCell(input=b, hidden=a)``. ``na = [W_in a + b_in, W_hn a + b_hn]`` and ``nb`` are
    the candidate's ``[P, 2C]`` projections of each operand.
    """
    c = a.size(1)
    rz1, rz2 = torch.sigmoid(q + m), torch.sigmoid(q - m)
    n1 = torch.tanh(na[:, :c] + rz1[:, :c] * nb[:, c:])  # input a, hidden b
    n2 = torch.tanh(nb[:, :c] + rz2[:, :c] * na[:, c:])  # input b, hidden a
    out1 = (1 - rz1[:, c:]) * n1 + rz1[:, c:] * b
    out2 = (1 - rz2[:, c:]) * n2 + rz2[:, c:] * a
    return 0.5 * (out1 + out2)


def _half_forward(pre_rz: Tensor, n_in: Tensor, hn: Tensor, hidden: Tensor):
    """One GRU-cell half: gate pre-activations ``[P, 2C]``, the input's ``W_in x + b_in``
    and the hidden operand's ``W_hn h + b_hn`` (``[P, C]`` each)."""
    c = hidden.size(1)
    rz = pre_rz.sigmoid_()  # [P, 2C] reset, update (pre_rz is a temporary)
    n = torch.addcmul(n_in, rz[:, :c], hn).tanh_()  # [P, C] candidate
    return torch.lerp(n, hidden, rz[:, c:]), rz, n  # n + z (h - n)


def _half_backward(g: Tensor, rz: Tensor, n: Tensor, hn: Tensor, hidden: Tensor, d_rz, d_nin, d_hn):
    """Write one half's gradients into ``d_rz`` ([P, 2C] gate pre-activations), ``d_nin``
    (the input's candidate projection) and ``d_hn`` (the hidden operand's); return
    d hidden."""
    c = n.size(1)
    r, z = rz[:, :c], rz[:, c:]
    d_sig = torch.addcmul(rz, rz, rz, value=-1)  # sigmoid' = s - s², [P, 2C]
    t = torch.addcmul(g, g, z, value=-1)  # g (1 - z)
    torch.addcmul(t, t * n, n, value=-1, out=d_nin)  # d tanh pre-activation: t (1 - n²)
    torch.mul(d_nin, hn, out=d_rz[:, :c]).mul_(d_sig[:, :c])  # d reset pre-activation
    torch.sub(hidden, n, out=d_rz[:, c:]).mul_(g).mul_(d_sig[:, c:])  # d update
    torch.mul(d_nin, r, out=d_hn)
    return g * z


class _SymmetricGRU(torch.autograd.Function):
    """:func:`_symmetric_gru_reference` with a hand-written backward.

    It keeps each half's gate activations (``[P, 2C]``) and candidate (``[P, C]``) and the
    candidate projections ``na``, ``nb`` instead of autograd's graph of slices (which also
    allocates a zero gradient per slice), and writes the projection gradients in place.
    """

    @staticmethod
    def forward(ctx, q: Tensor, m: Tensor, na: Tensor, nb: Tensor, a: Tensor, b: Tensor):
        c = a.size(1)
        hn_a, hn_b = na[:, c:], nb[:, c:]
        o1, rz1, n1 = _half_forward(q + m, na[:, :c], hn_b, b)  # input a, hidden b
        o2, rz2, n2 = _half_forward(q - m, nb[:, :c], hn_a, a)  # input b, hidden a
        ctx.save_for_backward(a, b, rz1, n1, rz2, n2, hn_a, hn_b)
        return o1.add_(o2).mul_(0.5)

    @staticmethod
    @first_order_only("LCMAggregation fused GRU cell", "fused=False records a graph")
    def backward(ctx, grad: Tensor):
        a, b, rz1, n1, rz2, n2, hn_a, hn_b = ctx.saved_tensors
        g = 0.5 * grad
        c = a.size(1)
        d_rz1 = torch.empty(a.size(0), 2 * c, dtype=a.dtype, device=a.device)
        d_rz2 = torch.empty_like(d_rz1)
        d_na, d_nb = torch.empty_like(d_rz1), torch.empty_like(d_rz1)
        db = _half_backward(g, rz1, n1, hn_b, b, d_rz1, d_na[:, :c], d_nb[:, c:])
        da = _half_backward(g, rz2, n2, hn_a, a, d_rz2, d_nb[:, :c], d_na[:, c:])
        return d_rz1 + d_rz2, d_rz1.sub_(d_rz2), d_na, d_nb, da, db


class LCMAggregation(Aggregation):
    r"""The learnable commutative monoid aggregation of `"Learnable Commutative Monoids for
    Graph Neural Networks" <https://arxiv.org/abs/2212.08541>`_ (Ong and Veličković, LoG
    2022), reduced by a balanced binary tree *per neighbourhood*: depth
    :math:`\lceil \log_2 \deg \rceil`, :math:`O(E)` work and memory, no padding to the
    batch's largest degree.

    Every element is (optionally) projected, :math:`\mathbf{h}_j = \mathrm{ReLU}(\mathbf{W}
    \mathbf{x}_j + \mathbf{b})`, and each group is reduced with the learned binary operator

    .. math::
        \mathbf{a} \oplus \mathbf{b} = \tfrac{1}{2}\left( f(\mathbf{a}, \mathbf{b}) +
        f(\mathbf{b}, \mathbf{a}) \right),

    where :math:`f` is a GRU cell :math:`f(\mathbf{a}, \mathbf{b}) =
    \mathrm{GRUCell}(\text{input}=\mathbf{a}, \text{hidden}=\mathbf{b})` (``cell="gru"``, as
    in the paper and in PyG) or a two-layer perceptron on the concatenation,
    :math:`f(\mathbf{a}, \mathbf{b}) = \mathbf{W}_2\, \mathrm{ReLU}(\mathbf{W}_1
    [\mathbf{a} \,\|\, \mathbf{b}] + \mathbf{b}_1) + \mathbf{b}_2` (``cell="mlp"``). The
    tree pairs neighbours :math:`(0, 1), (2, 3), \dots` level by level and carries an odd
    last element up unchanged, so for group :math:`\mathcal{N}(i)`

    .. math::
        \mathbf{x}^{\prime}_i = \bigoplus_{j \in \mathcal{N}(i)} \mathbf{h}_j
        \quad\text{(balanced bracketing)}, \qquad
        \mathbf{x}^{\prime}_i = \mathbf{e} \ \text{ if } \mathcal{N}(i) = \emptyset.

    **Commutativity is exact by construction**: both operands are projected by the same
    matrix product of the same shape and :math:`f(\mathbf{a},\mathbf{b}) +
    f(\mathbf{b},\mathbf{a})` is an exactly commutative float sum, so ``a ⊕ b`` and
    ``b ⊕ a`` are bitwise equal. The GRU cell's reset and update gates of both orders are
    computed from :math:`\mathbf{a} + \mathbf{b}` and :math:`\mathbf{a} - \mathbf{b}`
    (:math:`\mathbf{W}_i\mathbf{a} + \mathbf{W}_h\mathbf{b} = \tfrac12(\mathbf{W}_i +
    \mathbf{W}_h)(\mathbf{a} + \mathbf{b}) + \tfrac12(\mathbf{W}_i - \mathbf{W}_h)
    (\mathbf{a} - \mathbf{b})`, and the other order flips the sign of the second term,
    which IEEE arithmetic does exactly): 8 instead of 12 :math:`C^2` multiply-adds per
    combined pair, the same function as two ``GRUCell`` calls to float rounding.

    **Associativity is learned**: add :meth:`associativity_loss` to the training loss;
    without it the result depends on the bracketing, i.e. on the order of the elements
    inside a group (``shuffle=True`` is the paper's augmentation against that).

    **Batch independence.** A group's tree depends only on its own size, never on the
    other groups, and groups of one element are returned unchanged. The output for a node is
    the same whether it is aggregated alone or in any batch (to float rounding of the matrix
    products, about 1e-7).

    **Identity element.** A learned :math:`\oplus` has no exact identity in general, and
    none is needed to reduce a non-empty group: unpaired elements pass through, the identity
    is never combined with an element, so :math:`\mathbf{e}` cannot change the output of a
    non-empty group. It is the value of the empty reduction, and for the monoid law
    :math:`\bigoplus(A \cup \emptyset) = \bigoplus A \oplus \mathbf{e} = \bigoplus A` it
    should be an identity of :math:`\oplus`. With ``identity="learned"`` (default)
    :math:`\mathbf{e}` is a parameter (initialised to zeros) that the task trains through
    isolated nodes (its gradient is zero, not ``None``, in a batch without them, so
    ``DistributedDataParallel`` needs no ``find_unused_parameters``) and that
    :meth:`identity_loss`, :math:`\|\mathbf{a} \oplus \mathbf{e} - \mathbf{a}\|^2`, pulls
    towards a true identity. ``identity="zeros"`` returns zeros for an
    empty group (the convention of :class:`~torch_geometric.nn.aggr.SumAggregation`).

    **Grouping.** ``index`` need not be sorted: unsorted elements are grouped by a stable
    sort of ``index``, so inside a group they keep the order in which they were given (the
    result equals that on an ``edge_index`` sorted by destination with a stable sort). With
    ``ptr`` the elements must already be grouped. Nothing is truncated: a group larger than
    ``max_num_elements`` raises ``ValueError``.

    NaN in an element propagates to its group's output only.

    The parameters of ``cell="gru", project=True`` use the names of PyG's
    :class:`~torch_geometric.nn.aggr.LCMAggregation` (``lin``, ``gru_cell``), so its state
    dict loads unchanged, also strictly: a state dict without ``identity_element`` (PyG has
    none) loads it as zeros, its initial value.

    **Gradients.** The default GRU cell has a hand-written backward that is
    once-differentiable; for second derivatives (gradient penalties, Hessian-vector
    products, MAML) build the layer with ``fused=False``, which composes the same function
    from autograd ops (more memory and time per combined pair). The ``"mlp"`` cell is always
    differentiable twice.

    Args:
        in_channels (int): Size of each input element.
        out_channels (int): Size of each output (the monoid's dimension).
        project (bool, optional): Apply :math:`\mathrm{ReLU}(\mathbf{W}\mathbf{x} +
            \mathbf{b})` before the reduction. Must be ``True`` when ``in_channels !=
            out_channels``. Third, as in PyG's signature. (default: ``True``)
        cell (str, optional): The learnable function :math:`f` that is symmetrised:
            ``"gru"`` or ``"mlp"``. (default: ``"gru"``)
        hidden_channels (int, optional): Hidden size of the ``"mlp"`` cell; ``None`` means
            ``2 * out_channels``. Not allowed for ``"gru"``. (default: ``None``)
        identity (str, optional): ``"learned"`` or ``"zeros"``, the result of an empty
            group (see above). (default: ``"learned"``)
        shuffle (bool, optional): In training mode, randomly permute the elements inside
            every group on each call (the paper's augmentation). Evaluation keeps the given
            order. (default: ``False``)
        fused (bool, optional): Use the GRU cell's hand-written, once-differentiable
            backward; ``False`` gives the autograd composition, which supports double
            backward. Ignored by the ``"mlp"`` cell. (default: ``True``)

    Shapes:
        - **input:** ``x`` :math:`(E, F_{in})`, ``index`` :math:`(E)` (any order) or ``ptr``
          :math:`(N + 1)`, ``dim_size`` :math:`N`.
        - **output:** :math:`(N, F_{out})`.

    Example:
        >>> import torch
        >>> from graphseq.nn.aggr import LCMAggregation
        >>> aggr = LCMAggregation(16, 32)
        >>> x, index = torch.randn(6, 16), torch.tensor([2, 0, 0, 2, 2, 0])
        >>> aggr(x, index, dim_size=4).shape    # node 1 and node 3 get the identity
        torch.Size([4, 32])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        project: bool = True,
        cell: str = "gru",
        hidden_channels: int | None = None,
        identity: str = "learned",
        shuffle: bool = False,
        fused: bool = True,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: {arg} must be a positive int, got {value!r}")
        if cell not in CELLS:
            raise ValueError(f"{name}: cell must be one of {CELLS}, got {cell!r}")
        if not project and in_channels != out_channels:
            raise ValueError(
                f"{name}: inputs must be projected (project=True) when in_channels "
                f"({in_channels}) != out_channels ({out_channels})"
            )
        if hidden_channels is not None:
            if cell != "mlp":
                raise ValueError(f"{name}: hidden_channels applies to cell='mlp' only")
            if (
                isinstance(hidden_channels, bool)
                or not isinstance(hidden_channels, int)
                or hidden_channels <= 0
            ):
                raise ValueError(
                    f"{name}: hidden_channels must be a positive int, got {hidden_channels!r}"
                )
        if identity not in IDENTITIES:
            raise ValueError(f"{name}: identity must be one of {IDENTITIES}, got {identity!r}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.cell = cell
        self.project = bool(project)
        self.hidden_channels = (hidden_channels or 2 * out_channels) if cell == "mlp" else None
        self.identity = identity
        self.shuffle = bool(shuffle)
        self.fused = bool(fused)

        self.lin = Linear(in_channels, out_channels) if self.project else None
        if cell == "gru":
            self.gru_cell = GRUCell(out_channels, out_channels)
        else:
            self.mlp_in = Linear(2 * out_channels, self.hidden_channels)
            self.mlp_out = Linear(self.hidden_channels, out_channels)
        if identity == "learned":
            self.identity_element = Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("identity_element", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.lin is not None:
            self.lin.reset_parameters()
        if self.cell == "gru":
            self.gru_cell.reset_parameters()
        else:
            self.mlp_in.reset_parameters()
            self.mlp_out.reset_parameters()
        if self.identity_element is not None:
            torch.nn.init.zeros_(self.identity_element)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # PyG's LCMAggregation has no identity parameter: load its state dict strictly, with
        # the identity at its initial value. Only a dict holding this module's GRU cell is
        # taken for PyG's; from any other (a partial, non-strict load) the key stays missing,
        # so a trained identity is kept and reported in missing_keys like any parameter
        key = prefix + "identity_element"
        if (
            self.identity_element is not None
            and key not in state_dict
            and prefix + "gru_cell.weight_ih" in state_dict
        ):
            state_dict[key] = torch.zeros_like(self.identity_element)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- the monoid ------------------------------------------------------------------------

    def combine_fn(self):
        """The binary operator :math:`\\oplus` as a callable ``combine(a, b)`` on ``[P, C]``.

        Weight concatenations are done once here, so build it once per forward pass.
        """
        c = self.out_channels
        if self.cell == "gru":
            # The gate pre-activations of the two orders, W_i a + W_h b and W_i b + W_h a,
            # are q + m and q - m with q = ½(W_i + W_h)(a + b) and m = ½(W_i - W_h)(a - b):
            # two [2C, C] products instead of four. The candidate needs W_in and W_hn of
            # each operand separately (r multiplies only the hidden part): 8C² per pair
            # instead of the 12C² of two GRUCell calls.
            cell = self.gru_cell
            w_i, w_h = cell.weight_ih, cell.weight_hh  # [3C, C], gate blocks r, z, n
            b_i, b_h = cell.bias_ih, cell.bias_hh
            w_sum = 0.5 * (w_i[: 2 * c] + w_h[: 2 * c])  # [2C, C]
            w_diff = 0.5 * (w_i[: 2 * c] - w_h[: 2 * c])
            b_sum = b_i[: 2 * c] + b_h[: 2 * c]
            w_n = torch.cat([w_i[2 * c :], w_h[2 * c :]], 0)  # [2C, C]
            b_n = torch.cat([b_i[2 * c :], b_h[2 * c :]], 0)

            def combine(a: Tensor, b: Tensor) -> Tensor:
                q = F.linear(a + b, w_sum, b_sum)  # symmetric in (a, b), bitwise
                m = F.linear(a - b, w_diff)  # antisymmetric: b - a = -(a - b) exactly
                na = F.linear(a, w_n, b_n)  # same op and shape for both operands
                nb = F.linear(b, w_n, b_n)
                return cell_fn(q, m, na, nb, a, b)

            cell_fn = _SymmetricGRU.apply if self.fused else _symmetric_gru_reference

            return combine

        w1 = self.mlp_in.weight  # [H, 2C]: columns :C act on the left slot, C: on the right
        weight = torch.cat([w1[:, :c], w1[:, c:]], 0)  # [2H, C]
        b1, h = self.mlp_in.bias, self.hidden_channels

        def combine(a: Tensor, b: Tensor) -> Tensor:
            pa = F.linear(a, weight)  # [P, 2H]
            pb = F.linear(b, weight)
            ab = torch.relu(pa[:, :h] + pb[:, h:] + b1)  # f(a, b)'s hidden layer
            ba = torch.relu(pb[:, :h] + pa[:, h:] + b1)  # f(b, a)'s hidden layer
            return self.mlp_out(0.5 * (ab + ba))  # W2 is linear: average before it

        return combine

    def combine(self, a: Tensor, b: Tensor) -> Tensor:
        """:math:`\\mathbf{a} \\oplus \\mathbf{b}` for ``[P, out_channels]`` operands."""
        return self.combine_fn()(a, b)

    def identity_value(self, dtype: torch.dtype | None = None, device=None) -> Tensor:
        """The identity :math:`\\mathbf{e}`, ``[out_channels]``."""
        if self.identity_element is not None:
            return self.identity_element.to(dtype=dtype, device=device)
        ref = self.lin.weight if self.lin is not None else next(self.parameters())
        return torch.zeros(self.out_channels, dtype=dtype or ref.dtype, device=device or ref.device)

    def _project(self, x: Tensor) -> Tensor:
        name = type(self).__name__
        check_matches_parameters(name, "x", x, next(self.parameters()))
        if x.size(1) != self.in_channels:
            raise ValueError(
                f"{name}: x must have in_channels = {self.in_channels} channels, got {x.size(1)}"
            )
        if self.lin is not None:
            return torch.relu(self.lin(x))
        device = x.device.type
        if torch.is_autocast_enabled(device) and x.dtype == torch.float32:
            # the cell's products come out in autocast's dtype; its operands must match
            return x.to(torch.get_autocast_dtype(device))
        return x

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
        plan: SegmentPlan | None = None,
    ) -> Tensor:
        r"""Reduce every group of ``x``.

        Args:
            x (torch.Tensor): ``[E, in_channels]`` elements.
            index (torch.Tensor, optional): ``[E]`` group of every element, in any order.
            ptr (torch.Tensor, optional): ``[N + 1]`` boundaries of already grouped
                elements (takes precedence over ``index``).
            dim_size (int, optional): ``N``, the number of groups (filled in by PyG's
                ``Aggregation.__call__``).
            dim (int, optional): Must be ``0`` or ``-2``. (default: ``-2``)
            max_num_elements (int, optional): Accepted for PyG compatibility; a larger
                group raises ``ValueError`` (never truncated). (default: ``None``)
            plan (SegmentPlan, optional): A reusable tree schedule,
                ``SegmentPlan.from_ptr(ptr)`` for the ``ptr`` of the *grouped* elements.
                (default: ``None``, built on the fly)
        """
        name = type(self).__name__
        dim_size = check_input(name, x, index, ptr, dim_size, dim)
        h = self._project(x)  # [E, C]
        grouped = group(name, h, index, ptr, dim_size, max_num_elements)
        if self.shuffle and self.training:
            grouped = shuffle_within_groups(grouped)
        identity = self.identity_value(dtype=h.dtype, device=h.device)
        out = segment_tree_reduce(grouped.x, grouped.ptr, self.combine_fn(), identity, plan=plan)
        if self.identity_element is not None and identity.requires_grad:
            # the same values, but e takes part in every call (a zero gradient when no group
            # is empty), so DDP does not find it unused in batches without isolated nodes
            empty = (grouped.ptr[1:] == grouped.ptr[:-1]).unsqueeze(1)
            out = torch.where(empty, identity, out)
        return out

    # -- regularisers ----------------------------------------------------------------------

    def _sample(
        self,
        x: Tensor,
        index: Tensor | None,
        ptr: Tensor | None,
        num: int,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Project and group ``x``; return it, its ``ptr`` and ``num`` random rows (``None``
        if ``x`` is empty)."""
        name = type(self).__name__
        if isinstance(num, bool) or not isinstance(num, int) or num <= 0:
            raise ValueError(f"{name}: num_samples must be a positive int, got {num!r}")
        dim_size = infer_dim_size(name, x, index, ptr)  # checks x, index and ptr
        check_generator(name, generator, x)
        h = self._project(x)
        grouped = group(name, h, index, ptr, dim_size)
        if h.size(0) == 0:
            return grouped.x, grouped.ptr, None
        rows = torch.randint(h.size(0), (num,), device=h.device, generator=generator)
        return grouped.x, grouped.ptr, rows

    def _partners(self, ptr: Tensor, rows: Tensor, generator: torch.Generator | None) -> Tensor:
        """A uniformly random element of the same group as each of ``rows``."""
        seg = segment_ids(ptr)[rows]
        start, length = ptr[seg], ptr[seg + 1] - ptr[seg]
        u = torch.rand(rows.shape, device=rows.device, generator=generator)
        return start + (u * length).long().clamp_max(length - 1)

    def associativity_loss(
        self,
        x: Tensor,
        index: Tensor | None = None,
        ptr: Tensor | None = None,
        num_samples: int = 256,
        generator: torch.Generator | None = None,
        max_operand_size: int = 1,
    ) -> Tensor:
        r"""The associativity gap on sampled triples, to add (weighted) to the training loss:

        .. math::
            \mathcal{L}_{\text{assoc}} = \frac{1}{S\,C}\sum_{s=1}^{S}
            \left\| (\mathbf{a}_s \oplus \mathbf{b}_s) \oplus \mathbf{c}_s -
            \mathbf{a}_s \oplus (\mathbf{b}_s \oplus \mathbf{c}_s) \right\|_2^2 .

        :math:`\mathbf{a}_s` is a uniformly random element of ``x`` after the input
        projection; with ``index``/``ptr``, :math:`\mathbf{b}_s, \mathbf{c}_s` are uniformly
        random elements of *the same group* (the combinations the tree actually forms),
        otherwise of all of ``x``. Pass the messages or node features the aggregation sees
        (in a ``GINConv``, the node features ``x``). Gradients reach the operator and the
        projection; two batched :math:`\oplus` calls on :math:`2S` rows each.

        With ``max_operand_size = m > 1`` each operand is instead the tree reduction of
        :math:`k \sim U\{1, \dots, m\}` random elements (of the same group, with
        replacement), so the loss also sees the partial reductions that the inner levels of
        a deeper tree combine: the values a longer neighbourhood than any seen in training
        would produce.

        Args:
            x (torch.Tensor): ``[E, in_channels]`` elements to sample from.
            index (torch.Tensor, optional): ``[E]`` groups, in any order. (default: ``None``)
            ptr (torch.Tensor, optional): ``[N + 1]`` boundaries of grouped ``x``.
                (default: ``None``)
            num_samples (int, optional): Number of triples :math:`S`. (default: ``256``)
            generator (torch.Generator, optional): For reproducible sampling.
            max_operand_size (int, optional): Largest number of elements reduced into one
                operand. (default: ``1``, single elements)

        Returns:
            A scalar tensor (zero if ``x`` is empty).
        """
        name = type(self).__name__
        m = max_operand_size
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"{name}: max_operand_size must be an int >= 1, got {m!r}")
        h, ptr_g, a = self._sample(x, index, ptr, num_samples, generator)
        if a is None:
            return h.new_zeros(())
        op = self.combine_fn()
        s = a.numel()
        # without index/ptr, ptr_g is one group holding every element
        if m == 1:
            b, c = self._partners(ptr_g, a, generator), self._partners(ptr_g, a, generator)
            ha, hb, hc = h[a], h[b], h[c]
        else:  # operands: reductions of k ~ U{1..m} elements of a's group
            sizes = torch.randint(1, m + 1, (3 * s,), device=h.device, generator=generator)
            owner = torch.repeat_interleave(a.repeat(3), sizes)  # [K] a's row, per element
            rows = self._partners(ptr_g, owner, generator)
            ptr_o = torch.zeros(3 * s + 1, dtype=torch.long, device=h.device)
            torch.cumsum(sizes, 0, out=ptr_o[1:])
            operands = segment_tree_reduce(h[rows], ptr_o, op)  # [3S, C]
            ha, hb, hc = operands.split(s)
        first = op(torch.cat([ha, hb]), torch.cat([hb, hc]))  # [a ⊕ b; b ⊕ c]
        second = op(torch.cat([first[:s], ha]), torch.cat([hc, first[s:]]))
        return _mean_square(second[:s] - second[s:])

    def identity_loss(
        self,
        x: Tensor,
        num_samples: int = 256,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""How far :math:`\mathbf{e}` is from an identity of :math:`\oplus`:

        .. math::
            \mathcal{L}_{\text{id}} = \frac{1}{S\,C}\sum_{s=1}^{S}
            \left\| \mathbf{a}_s \oplus \mathbf{e} - \mathbf{a}_s \right\|_2^2,

        with :math:`\mathbf{a}_s` uniformly random rows of ``x`` after the projection. Only
        meaningful (and only non-constant in :math:`\mathbf{e}`) with ``identity="learned"``.

        Args:
            x (torch.Tensor): ``[E, in_channels]`` elements to sample from.
            num_samples (int, optional): Number of samples :math:`S`. (default: ``256``)
            generator (torch.Generator, optional): For reproducible sampling.

        Returns:
            A scalar tensor (zero if ``x`` is empty).
        """
        h, _, a = self._sample(x, None, None, num_samples, generator)
        if a is None:
            return h.new_zeros(())
        ha = h[a]
        e = self.identity_value(dtype=h.dtype, device=h.device).expand_as(ha)
        return _mean_square(self.combine(ha, e) - ha)

    def __repr__(self) -> str:
        extra = f", hidden_channels={self.hidden_channels}" if self.cell == "mlp" else ""
        return (
            f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
            f"cell={self.cell!r}{extra}, project={self.project}, identity={self.identity!r}, "
            f"shuffle={self.shuffle}" + ("" if self.fused else ", fused=False") + ")"
        )
