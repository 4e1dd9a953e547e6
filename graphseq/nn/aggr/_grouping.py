"""Input checks and CSR grouping shared by graphseq's aggregations.

PyG hands an aggregation either ``index`` (one group id per element, often *unsorted* inside
convolutions built on a plain ``edge_index``) or ``ptr`` (CSR boundaries of elements that are
already grouped). The tree and recurrent aggregations need the CSR form, so this module turns
any valid input into ``(x grouped, ptr)``:

* ``ptr`` given: ``x`` is taken as grouped; ``index`` (if also given) is ignored, as in PyG.
* ``index`` sorted: ``ptr`` comes from a bincount, no copy of ``x``.
* ``index`` unsorted: the elements are grouped by a **stable** sort of ``index``, so inside a
  group they keep the order in which they were given. The result equals the result on an
  ``edge_index`` sorted by destination with a stable sort (``torch.sort(..., stable=True)``).

Every error is a ``ValueError``/``TypeError`` that names the aggregation and the argument.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

_INT_DTYPES = (torch.int32, torch.int64)


@dataclass(frozen=True)
class Grouped:
    """Elements in CSR order.

    Attributes:
        x: ``[E, C]`` the elements, group after group.
        ptr: ``[N + 1]`` int64 boundaries, ``N = dim_size``.
        order: ``[E]`` int64 with ``x = x_input[order]``, or ``None`` if the input was
            already grouped (then ``x`` is the input itself).
    """

    x: Tensor
    ptr: Tensor
    order: Tensor | None

    @property
    def lengths(self) -> Tensor:
        return self.ptr[1:] - self.ptr[:-1]


def check_x(name: str, x: object) -> None:
    """``x`` must be a two-dimensional floating-point tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(
            f"{name}: x must be two-dimensional [num_elements, channels], got shape "
            f"{tuple(x.shape)}"
        )


def check_groups(name: str, x: Tensor, index: object, ptr: object) -> None:
    """``index`` / ``ptr`` (either may be ``None``): one-dimensional int tensors on ``x``'s
    device, ``index`` with one entry per element of ``x``."""
    for arg, t in (("index", index), ("ptr", ptr)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _INT_DTYPES:
            raise TypeError(f"{name}: {arg} must be an int32 or int64 tensor, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{name}: {arg} must be one-dimensional, got shape {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(
                f"{name}: {arg} is on {t.device} but x is on {x.device}; move them to the "
                "same device"
            )
    if ptr is None and index is not None and index.numel() != x.size(0):
        raise ValueError(
            f"{name}: index must have one entry per element of x ({x.size(0)}), got {index.numel()}"
        )


def check_input(
    name: str,
    x: object,
    index: object,
    ptr: object,
    dim_size: object,
    dim: object,
) -> int:
    """Validate the arguments of ``Aggregation.forward`` (after PyG's ``__call__``); returns
    ``dim_size`` as a Python int (a numpy integer is taken too)."""
    check_x(name, x)
    if dim not in (0, -2):
        raise ValueError(f"{name}: dim must be 0 or -2 (the element dimension), got {dim!r}")
    if isinstance(dim_size, bool) or not isinstance(dim_size, numbers.Integral) or dim_size < 0:
        raise ValueError(f"{name}: dim_size must be a non-negative int, got {dim_size!r}")
    check_groups(name, x, index, ptr)
    return int(dim_size)


def check_call(name: str, x: object, index: object, ptr: object) -> None:
    """The checks of ``x``, ``index`` and ``ptr`` that must run before PyG's
    ``Aggregation.__call__``, which calls ``x.dim()`` and ``index.max()`` on whatever it is
    given (an ``AttributeError`` for a list or an array, a message about ``dim`` for a
    one-dimensional ``x``)."""
    check_x(name, x)
    check_groups(name, x, index, ptr)


def check_generator(name: str, generator: object, x: Tensor) -> None:
    """``generator`` must be ``None`` or a :class:`torch.Generator` of ``x``'s device type
    (torch's own errors named ``randint()``/``randperm()``, not the argument)."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{name}: generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if generator.device.type != x.device.type:
        raise ValueError(
            f"{name}: generator is on {generator.device} but x is on {x.device}; pass a "
            f"torch.Generator(device={x.device.type!r})"
        )


def infer_dim_size(name: str, x: object, index: object, ptr: object) -> int:
    """The number of groups implied by ``ptr`` (its length - 1) or ``index`` (its maximum + 1;
    ``0`` when empty), or ``1`` when both are ``None`` (one group), after checking ``x``,
    ``index`` and ``ptr``, so that a bad one is named rather than a ``dim_size`` the caller
    never passed (for the methods that, unlike ``forward``, take no ``dim_size``)."""
    check_x(name, x)
    check_groups(name, x, index, ptr)
    if ptr is not None:
        if ptr.numel() == 0:
            raise ValueError(f"{name}: ptr must have at least one entry (its leading 0), got none")
        return ptr.numel() - 1
    if index is not None:
        if index.numel() == 0:
            return 0
        if int(index.min()) < 0:
            raise ValueError(f"{name}: index must be non-negative, got {int(index.min())}")
        return int(index.max()) + 1
    return 1


def check_ptr(name: str, ptr: Tensor, num_elements: int, dim_size: int) -> Tensor:
    """``ptr`` as int64 after checking it has ``dim_size + 1`` non-decreasing entries from 0
    to ``num_elements``."""
    if ptr.numel() != dim_size + 1:
        raise ValueError(
            f"{name}: ptr must have dim_size + 1 = {dim_size + 1} entries, got {ptr.numel()}"
        )
    ptr = ptr.long()
    if int(ptr[0]) != 0 or int(ptr[-1]) != num_elements:
        raise ValueError(
            f"{name}: ptr must start at 0 and end at the number of elements of x "
            f"({num_elements}), got ptr[0] = {int(ptr[0])}, ptr[-1] = {int(ptr[-1])}"
        )
    if ptr.numel() > 1 and bool((ptr[1:] < ptr[:-1]).any()):
        raise ValueError(f"{name}: ptr must be non-decreasing")
    return ptr


def group(
    name: str,
    x: Tensor,
    index: Tensor | None,
    ptr: Tensor | None,
    dim_size: int,
    max_num_elements: int | None = None,
) -> Grouped:
    """Bring ``x`` into CSR order (see the module docstring); never drops an element.

    ``max_num_elements`` is PyG's static-shape hint; graphseq never truncates, so a group
    larger than it raises ``ValueError`` instead of being cut silently.
    """
    if max_num_elements is not None and (
        isinstance(max_num_elements, bool)
        or not isinstance(max_num_elements, int)
        or max_num_elements < 0
    ):
        raise ValueError(
            f"{name}: max_num_elements must be None or a non-negative int, got {max_num_elements!r}"
        )
    num = x.size(0)
    order = None
    if ptr is not None:
        ptr = check_ptr(name, ptr, num, dim_size)
        lengths = ptr[1:] - ptr[:-1]
    else:
        if index is None:  # PyG's __call__ fills this in; kept for direct forward() calls
            index = torch.zeros(num, dtype=torch.long, device=x.device)
        index = index.long()
        if num > 0:
            lo, hi = int(index.min()), int(index.max())
            if lo < 0:
                raise ValueError(f"{name}: index must be non-negative, got a minimum of {lo}")
            if hi >= dim_size:
                raise ValueError(
                    f"{name}: invalid dim_size {dim_size}: index holds {hi}, so dim_size must "
                    f"be at least {hi + 1}"
                )
            if num > 1 and bool((index[1:] < index[:-1]).any()):
                # group by a stable sort: inside a group the given order is kept
                index, order = torch.sort(index, stable=True)
                x = x.index_select(0, order)
        lengths = torch.bincount(index, minlength=dim_size)
        ptr = torch.zeros(dim_size + 1, dtype=torch.long, device=x.device)
        torch.cumsum(lengths, 0, out=ptr[1:])
    if max_num_elements is not None and lengths.numel() > 0:
        largest = int(lengths.max())
        if largest > max_num_elements:
            raise ValueError(
                f"{name}: a group has {largest} elements but max_num_elements = "
                f"{max_num_elements}; graphseq never truncates a group, so raise "
                "max_num_elements or leave it as None"
            )
    return Grouped(x, ptr, order)


def shuffle_within_groups(grouped: Grouped, generator: torch.Generator | None = None) -> Grouped:
    """A uniformly random order of the elements inside every group (groups stay in place)."""
    x, ptr = grouped.x, grouped.ptr
    num = x.size(0)
    if num < 2:
        return grouped
    lengths = ptr[1:] - ptr[:-1]
    segment = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=x.device), lengths, output_size=num
    )  # [E] group id of each (grouped) element
    perm = torch.randperm(num, device=x.device, generator=generator)
    perm = perm[torch.sort(segment[perm], stable=True)[1]]  # random order inside each group
    order = perm if grouped.order is None else grouped.order[perm]
    return Grouped(x.index_select(0, perm), ptr, order)


def segment_ids(ptr: Tensor) -> Tensor:
    """``[E]`` the group id of every grouped element."""
    lengths = ptr[1:] - ptr[:-1]
    return torch.repeat_interleave(
        torch.arange(lengths.numel(), device=ptr.device), lengths, output_size=int(ptr[-1])
    )
