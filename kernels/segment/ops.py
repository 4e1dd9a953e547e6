"""The public segment ops: argument checks, backend choice, dispatch.

The three implementations live next to this file: ``reference.py`` (loops), ``tree.py`` with
``plan.py`` (the vectorised level schedule, the CPU default and the path of every callable
``combine``) and ``triton.py`` (named combines on CUDA). The backend is chosen by
:func:`graphseq.kernels._backend.resolve_backend`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._backend import resolve_backend
from .._checks import check_boundaries, check_float, check_same, check_tensor
from . import reference as _ref
from .plan import SegmentPlan, SegmentScanPlan
from .tree import call_combine, scan, tree_reduce

#: The named combines: (elementwise op, monoid identity). The Triton path covers exactly these.
NAMED_COMBINES: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], float]] = {
    "sum": (torch.add, 0.0),
    "max": (torch.maximum, -math.inf),
    "min": (torch.minimum, math.inf),
    "prod": (torch.mul, 1.0),
}

CombineArg = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _resolve_combine(op: str, combine: object):
    """Returns ``(name or None, callable, default identity or None)``."""
    if isinstance(combine, str):
        if combine not in NAMED_COMBINES:
            raise ValueError(
                f"{op}: unknown combine {combine!r}; expected one of {tuple(NAMED_COMBINES)} "
                "or a callable combine(left, right) -> tensor"
            )
        fn, identity = NAMED_COMBINES[combine]
        return combine, fn, identity
    if not callable(combine):
        raise TypeError(
            f"{op}: combine must be one of {tuple(NAMED_COMBINES)} or a callable "
            f"combine(left, right) -> tensor, got {type(combine).__name__}"
        )
    return None, combine, None


def _check_identity(op: str, identity: object, x: torch.Tensor, default: float | None):
    """The identity as a tensor of shape ``x.shape[1:]`` (``None`` if neither given nor known)."""
    feat = x.shape[1:]
    if identity is None:
        if default is None:
            return None
        return torch.full(feat, default, dtype=x.dtype, device=x.device)
    if isinstance(identity, bool) or not isinstance(identity, int | float | torch.Tensor):
        raise TypeError(
            f"{op}: identity must be a tensor of shape x.shape[1:] = {tuple(feat)}, a tensor "
            f"that broadcasts to it, or a Python number; got {type(identity).__name__}"
        )
    if not isinstance(identity, torch.Tensor):
        exact = x.dtype.is_floating_point or x.dtype.is_complex
        if not exact and isinstance(identity, float) and not identity.is_integer():
            raise ValueError(
                f"{op}: identity={identity!r} cannot be represented in x's dtype {x.dtype}; "
                "pass an integer (or a tensor of x's dtype)"
            )
        return torch.full(feat, identity, dtype=x.dtype, device=x.device)
    check_same(op, "x", x, "identity", identity)
    try:
        shape = torch.broadcast_shapes(identity.shape, feat)
    except RuntimeError:
        shape = None
    if shape != feat:
        raise ValueError(
            f"{op}: identity must have shape x.shape[1:] = {tuple(feat)} or broadcast to it, "
            f"got shape {tuple(identity.shape)}"
        )
    return identity.expand(feat)


def _check_plan(op: str, plan: object, cls: type, ptr: torch.Tensor):
    if plan is None:
        return None
    if not isinstance(plan, cls):
        raise TypeError(
            f"{op}: plan must be a {cls.__name__} built with {cls.__name__}.from_ptr(ptr), "
            f"got {type(plan).__name__}"
        )
    if plan.ptr.device != ptr.device:
        raise ValueError(
            f"{op}: plan is on {plan.ptr.device} but ptr is on {ptr.device}; "
            "move it with plan.to(device)"
        )
    if plan.ptr is not ptr and (plan.ptr.shape != ptr.shape or not torch.equal(plan.ptr, ptr)):
        raise ValueError(
            f"{op}: plan was built for a different ptr ({plan.num_segments} segments, "
            f"{plan.num_elements} elements; this ptr has {ptr.numel() - 1} segments, "
            f"{int(ptr[-1])} elements, or different boundaries)"
        )
    return plan


def _check_common(op, x, ptr, combine, backend):
    check_tensor(op, "x", x, min_dim=1)
    name, fn, default = _resolve_combine(op, combine)
    if name is not None:
        check_float(op, "x", x)
    ptr = check_boundaries(op, "ptr", ptr, x.shape[0], x.device)
    if backend == "triton" and name is None:
        raise ValueError(
            f"{op}: backend='triton' covers the named combines {tuple(NAMED_COMBINES)} only; a "
            "callable combine runs the vectorised level schedule (backend='torch' or None) on "
            "any device"
        )
    backend = resolve_backend(backend, x.device, op=op, triton_supported=name is not None)
    return name, fn, default, ptr, backend


def _checked(op: str, fn):
    return lambda left, right: call_combine(op, fn, left, right)


def segment_tree_reduce(
    x: torch.Tensor,
    ptr: torch.Tensor,
    combine: CombineArg,
    identity: torch.Tensor | float | None = None,
    *,
    plan: SegmentPlan | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    r"""Reduce every CSR segment of ``x`` with ``combine`` by a balanced binary tree.

    For the segment :math:`x_0, \dots, x_{L-1}` (rows ``ptr[i]`` to ``ptr[i + 1] - 1``) every
    level pairs neighbours and carries an odd last element up unchanged,

    .. math::
        x^{(k+1)}_j = x^{(k)}_{2j} \oplus x^{(k)}_{2j+1}, \qquad
        x^{(k+1)}_{\lceil L_k/2 \rceil - 1} = x^{(k)}_{L_k - 1} \text{ if } L_k \text{ is odd},

    until one element is left: depth :math:`\lceil \log_2 L \rceil`. ``combine`` is called
    once per level on the pairs of *all* segments at once; a segment leaves the active set
    as soon as it is reduced, so the total number of combined pairs is
    :math:`E - N_{\text{non-empty}} \le E`. There is no padding to the largest segment, and
    the tree shape depends only on :math:`L`: a segment's result depends only on its own
    elements and their order, never on the other segments of the batch (up to the batch
    invariance of ``combine`` itself: BLAS matmuls may round differently for different
    batch sizes). For a non-associative (learned) ``combine`` the result depends on the
    order of the elements inside a segment.

    Empty segments get ``identity``; it is never combined with elements.

    Args:
        x: ``[E, *]`` elements packed segment after segment.
        ptr: ``[N + 1]`` int32/int64 boundaries (PyG's ``ptr``): starts at 0, non-decreasing,
            ends at ``E``.
        combine: ``"sum"``, ``"max"``, ``"min"``, ``"prod"``, or a callable
            ``combine(left, right)`` mapping two ``[P, *]`` tensors to one ``[P, *]`` tensor
            (for example an ``nn.Module``), applied row-wise to pairs (left element first).
        identity: the result of an empty segment: a tensor of shape ``x.shape[1:]`` (or one
            that broadcasts to it) on ``x``'s device with ``x``'s dtype, or a Python number.
            Defaults to the monoid identity for named combines (0, -inf, +inf, 1); required
            for a callable ``combine`` when some segment is empty. Gradients flow into it.
        plan: a :class:`SegmentPlan` built with ``SegmentPlan.from_ptr(ptr)``, to reuse the
            schedule across calls on the same segments. Built on the fly if ``None``.
        backend: ``"reference"``, ``"torch"``, ``"triton"`` or ``None`` (automatic; see
            :mod:`graphseq.kernels._backend`). ``"triton"`` covers the named combines only.

    Shapes:
        ``x``: ``[E, *]``; ``ptr``: ``[N + 1]``; returns ``[N, *]``.

    Dtypes:
        Named combines need floating ``x`` (float16, bfloat16, float32, float64); the Triton
        path accumulates in float32 (float64 for float64). A callable ``combine`` sees ``x``'s
        dtype and must return it. The reference upcasts named combines to float64.

    Returns:
        ``[N, *]`` tensor: row ``i`` is the reduction of segment ``i``. NaN propagates for
        every named combine. ``E = 0`` gives ``N`` identity rows; ``N = 0`` gives ``[0, *]``.

    Example:
        >>> import torch
        >>> from graphseq.kernels import segment_tree_reduce
        >>> x = torch.arange(6.0).unsqueeze(1)              # [E=6, 1]
        >>> ptr = torch.tensor([0, 3, 3, 6])                # segments of 3, 0 and 3 rows
        >>> segment_tree_reduce(x, ptr, "sum").flatten().tolist()
        [3.0, 0.0, 12.0]
        >>> cell = torch.nn.GRUCell(1, 1)
        >>> comb = lambda a, b: 0.5 * (cell(a, b) + cell(b, a))
        >>> segment_tree_reduce(x, ptr, comb, identity=torch.zeros(1)).shape
        torch.Size([3, 1])
    """
    op = "segment_tree_reduce"
    name, fn, default, ptr, backend = _check_common(op, x, ptr, combine, backend)
    plan = _check_plan(op, plan, SegmentPlan, ptr)
    given = identity is not None
    identity = _check_identity(op, identity, x, default)
    if plan is not None:
        has_empty = plan.has_empty
    else:
        has_empty = bool((ptr[1:] == ptr[:-1]).any())
    if has_empty and identity is None:
        raise ValueError(
            f"{op}: some segments are empty; a callable combine needs identity= (a tensor of "
            f"shape x.shape[1:] = {tuple(x.shape[1:])}) for them"
        )

    if backend == "reference":
        if name is not None and x.dtype != torch.float64:
            out = _ref.segment_tree_reduce_reference(x.double(), ptr, fn, identity.double())
            return out.to(x.dtype)
        return _ref.segment_tree_reduce_reference(x, ptr, _checked(op, fn), identity)
    if backend == "triton":
        from .triton import segment_reduce_triton

        out = segment_reduce_triton(x, ptr, name)
        if given and has_empty:
            empty = (ptr[1:] == ptr[:-1]).view(-1, *([1] * (x.dim() - 1)))
            out = torch.where(empty, identity, out)
        return out
    if plan is None:
        plan = SegmentPlan.from_ptr(ptr)
    return tree_reduce(op, x, plan, fn, identity)


def segment_scan(
    x: torch.Tensor,
    ptr: torch.Tensor,
    combine: CombineArg,
    *,
    plan: SegmentScanPlan | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    r"""Inclusive scan with ``combine`` inside every CSR segment of ``x``.

    .. math::
        y_j = x_{\text{start}} \oplus x_{\text{start}+1} \oplus \dots \oplus x_j

    ``combine(earlier, later)`` must be associative; it need not be commutative (matrix
    products, affine maps). The vectorised path is the recursive even/odd scheme: pair
    :math:`p_j = x_{2j} \oplus x_{2j+1}` inside every segment, scan the pairs (segment
    lengths :math:`\lfloor L/2 \rfloor`) to :math:`P`, then :math:`y_{2j+1} = P_j`,
    :math:`y_0 = x_0`, :math:`y_{2j} = P_{j-1} \oplus x_{2j}`. That is at most
    :math:`2 \lfloor \log_2 L_{\max} \rfloor` ``combine`` calls, each on all segments at once,
    and at most :math:`2E` combined rows. Segments never interact.

    Args:
        x: ``[E, *]`` elements packed segment after segment.
        ptr: ``[N + 1]`` int32/int64 boundaries (PyG's ``ptr``): starts at 0, non-decreasing,
            ends at ``E``.
        combine: ``"sum"``, ``"max"``, ``"min"``, ``"prod"``, or an associative callable
            ``combine(earlier, later)`` mapping two ``[P, *]`` tensors to one ``[P, *]``.
        plan: a :class:`SegmentScanPlan` built with ``SegmentScanPlan.from_ptr(ptr)`` to reuse
            across calls on the same segments. Built on the fly if ``None``.
        backend: ``"reference"``, ``"torch"``, ``"triton"`` or ``None`` (automatic; see
            :mod:`graphseq.kernels._backend`). ``"triton"`` covers the named combines only.

    Shapes:
        ``x``: ``[E, *]``; ``ptr``: ``[N + 1]``; returns ``[E, *]``.

    Dtypes:
        As :func:`segment_tree_reduce`: named combines need floating ``x``; the Triton path
        accumulates in float32 (float64 for float64); a callable keeps ``x``'s dtype.

    Returns:
        ``[E, *]`` tensor of inclusive prefixes, restarted at every segment. Empty segments
        contribute no rows; ``E = 0`` gives ``[0, *]``.

    Example:
        >>> import torch
        >>> from graphseq.kernels import segment_scan
        >>> x = torch.arange(1.0, 7.0).unsqueeze(1)         # [E=6, 1]
        >>> ptr = torch.tensor([0, 2, 6])
        >>> segment_scan(x, ptr, "sum").flatten().tolist()
        [1.0, 3.0, 3.0, 7.0, 12.0, 18.0]
        >>> affine = lambda p, q: torch.stack(                # (a, b): h -> a h + b
        ...     [p[:, 0] * q[:, 0], q[:, 0] * p[:, 1] + q[:, 1]], dim=1)
        >>> segment_scan(torch.rand(6, 2), ptr, affine).shape
        torch.Size([6, 2])
    """
    op = "segment_scan"
    name, fn, _, ptr, backend = _check_common(op, x, ptr, combine, backend)
    plan = _check_plan(op, plan, SegmentScanPlan, ptr)

    if backend == "reference":
        if name is not None and x.dtype != torch.float64:
            return _ref.segment_scan_reference(x.double(), ptr, fn).to(x.dtype)
        return _ref.segment_scan_reference(x, ptr, _checked(op, fn))
    if backend == "triton":
        from .triton import segment_scan_triton

        return segment_scan_triton(x, ptr, name)
    if plan is None:
        plan = SegmentScanPlan.from_ptr(ptr)
    if plan.depth == 0:  # every segment has at most one element: the scan is the identity map
        return x.clone()
    return scan(op, x, plan, fn)
