"""Path-gated linear attention on DAGs: the "paths" form of pLSTM on graphs, graph by graph.

See :func:`dag_attention` and :class:`DagAttentionPlan`; the math, the backward and the
backends are in this folder's README.md.
"""

from __future__ import annotations

import math
import os

import torch

from .._checks import check_float, check_tensor
from . import native, reference
from .plan import DagAttentionPlan

__all__ = ["DagAttentionPlan", "dag_attention", "native_available"]

_OP = "dag_attention"
_BACKENDS = ("reference", "native")


def native_available() -> bool:
    """Whether the compiled CPU kernel can run here (it is built on the first call; see
    :mod:`graphseq.kernels.dag_attention.native` for the reason when it cannot)."""
    return native.available()


def dag_attention(
    qkv: torch.Tensor,
    source: torch.Tensor,
    transition: torch.Tensor,
    mark: torch.Tensor,
    direct: torch.Tensor,
    plan: DagAttentionPlan,
    *,
    scale: float = 1.0,
    backend: str | None = None,
) -> torch.Tensor:
    r"""Linear attention whose mask is the sum over paths of a DAG, per graph and head.

    For every graph of ``plan`` and head, with DAG edges :math:`p` (source gate :math:`S_p`,
    mark gate :math:`M_p`), transitions :math:`T_{p'p}` on the line-graph edges
    :math:`p' \to p` and node gates :math:`D_n`:

    .. math::
        P_p = S_p\, e_{src(p)} + \sum_{p' \to p} T_{p'p}\, P_{p'}, \qquad
        G_{n} = \sum_{p:\, dst(p) = n} M_p\, P_p + D_n\, e_n, \qquad
        h_n = \sum_m (\mathrm{scale}\; q_n \cdot k_m)\, G_{nm}\, v_m

    :math:`P_p[m]` sums, over the paths from node :math:`m` into edge :math:`p`, the products
    of their gates; :math:`G` is the gating matrix of pLSTM's Eq. 7 (arXiv:2506.11997) and
    ``h`` equals the edge-state recurrence
    :math:`C_p = \sum T_{p'p} C_{p'} + S_p k v^\top`, :math:`h_n = \sum M_p q_n^\top C_p +
    D_n (q_n \cdot k_n) v_n` of :class:`graphseq.nn.plstm.PLSTMGraph`. Gates may be negative
    or zero.

    Args:
        qkv: ``[N, 3, H, C]`` float, ``q``, ``k``, ``v`` of every node (``q`` unscaled).
        source, mark: ``[E, H]`` per DAG edge of the plan's ``edge_index``.
        transition: ``[L, H]`` per line-graph edge (column of its ``lg_edge_index``).
        direct: ``[N, H]`` per node.
        plan: :meth:`DagAttentionPlan.from_graph` of the batch.
        scale: multiplies every score (e.g. :math:`C^{-1/2}`).
        backend: ``"native"`` (the compiled CPU kernel, ``native.c``: sparse propagation of
            ``P`` and products over ``G``'s structural support only; float32, or float64
            when any input is float64 (mixed dtypes, e.g. bfloat16 ``qkv`` with float32
            gates under autocast, are computed in the wider working dtype, never narrowed
            below an input's); hand-written backward, once differentiable) or
            ``"reference"`` (dense per-graph solve in float64, a Python loop). ``None``:
            ``"reference"`` under ``GRAPHSEQ_BACKEND=reference``, else ``"native"`` for CPU
            tensors when :func:`native_available`, else ``"reference"`` (the variable's
            other values name paths this op does not have, so they keep that default).
            There is no GPU kernel; :class:`~graphseq.nn.plstm.PLSTMGraph`
            runs its bucketed PyTorch path form there.

    Returns:
        ``h`` ``[N, H, C]`` in the working dtype of the backend (float32 or float64; the
        reference always float64); the nodes of graphs not in ``plan`` get zeros.

    Raises:
        ValueError: for shapes that do not match each other or the plan, gates on another
            device than ``qkv``, or an unknown ``backend``; ``"native"`` on a non-CPU tensor
            or where it cannot be built.
        TypeError: for non-floating inputs.
    """
    if not isinstance(plan, DagAttentionPlan):
        raise TypeError(
            f"{_OP}: plan must be a DagAttentionPlan (DagAttentionPlan.from_graph), got "
            f"{type(plan).__name__}"
        )
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{_OP}: scale must be a finite real number, got {scale!r}")
    qkv = check_tensor(_OP, "qkv", qkv, min_dim=4)
    check_float(_OP, "qkv", qkv)
    if qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"{_OP}: qkv must have shape [N, 3, H, C], got {tuple(qkv.shape)}")
    N, _, H, _ = qkv.shape
    expected = {
        "source": (plan.num_edges, H),
        "transition": (plan.num_lg, H),
        "mark": (plan.num_edges, H),
        "direct": (plan.num_nodes, H),
    }
    if N != plan.num_nodes:
        raise ValueError(f"{_OP}: qkv has {N} nodes but the plan {plan.num_nodes}")
    for name, t in zip(expected, (source, transition, mark, direct)):
        t = check_tensor(_OP, name, t)
        check_float(_OP, name, t)
        if tuple(t.shape) != expected[name]:
            raise ValueError(
                f"{_OP}: {name} must have shape {list(expected[name])}, got {list(t.shape)}"
            )
    for name, t in zip(expected, (source, transition, mark, direct)):
        if t.device != qkv.device:
            raise ValueError(f"{_OP}: {name} is on {t.device} but qkv is on {qkv.device}")
    if plan.node_ptr.device != qkv.device:
        raise ValueError(f"{_OP}: plan is on {plan.node_ptr.device} but qkv is on {qkv.device}")
    if backend is None and os.environ.get("GRAPHSEQ_BACKEND") == "reference":
        backend = "reference"  # the process-wide preference; 'torch' / 'triton' keep the default
    if backend is None:
        use_native = qkv.device.type == "cpu" and native.available()
        backend = "native" if use_native else "reference"
    if backend not in _BACKENDS:
        raise ValueError(f"{_OP}: backend must be one of {_BACKENDS} or None, got {backend!r}")
    if backend == "reference":
        return reference.dag_attention(qkv, source, transition, mark, direct, plan, scale)
    if qkv.device.type != "cpu":
        raise ValueError(f"{_OP}: backend='native' runs on CPU tensors, got {qkv.device}")
    if not native.available():
        raise ValueError(f"{_OP}: backend='native' is unavailable: {native.unavailable_reason()}")
    return native.dag_attention(qkv, source, transition, mark, direct, plan, scale)
