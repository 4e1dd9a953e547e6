"""Readable reference for :func:`graphseq.kernels.linear_scan`: a loop over time.

This is the ground truth in the tests and the baseline in the benchmarks. It upcasts
half-precision inputs to float32, keeps float32/float64 as they are, and walks every sequence
one step at a time. Steps are taken with ``unbind`` rather than by indexing, so that autograd
through the loop stays O(T) (indexing ``a[:, t]`` makes every step's backward materialise a
full-size gradient).
"""

from __future__ import annotations

import torch


def _run(a: torch.Tensor, b: torch.Tensor, state: torch.Tensor, reverse: bool):
    """Scan time-leading ``a, b: [T, ...]`` from ``state``; returns (states [T, ...], last)."""
    steps = list(zip(a.unbind(0), b.unbind(0), strict=True))
    if reverse:
        steps.reverse()
    states = []
    for a_t, b_t in steps:
        state = a_t * state + b_t
        states.append(state)
    if reverse:
        states.reverse()
    h = torch.stack(states) if states else b.new_zeros((0, *b.shape[1:]), dtype=state.dtype)
    return h, state


def linear_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    reverse: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = a_t * h_{t-1} + b_t, one step at a time (see :func:`graphseq.kernels.linear_scan`)."""
    dtype = a.dtype
    acc = torch.promote_types(dtype, torch.float32)
    a, b = a.to(acc), b.to(acc)
    if cu_seqlens is None:
        state = a.new_zeros((a.shape[0], *a.shape[2:])) if h0 is None else h0.to(acc)
        h, h_last = _run(a.movedim(1, 0), b.movedim(1, 0), state, reverse)
        return h.movedim(0, 1).to(dtype), h_last
    # packed sequences: each one on its own, from its own initial state
    bounds = cu_seqlens.tolist()
    pieces, finals = [], []
    for n in range(len(bounds) - 1):
        start, end = bounds[n], bounds[n + 1]
        state = a.new_zeros(a.shape[2:]) if h0 is None else h0[n].to(acc)
        h_n, last = _run(a[0, start:end], b[0, start:end], state, reverse)
        pieces.append(h_n)
        finals.append(last)
    h = torch.cat(pieces) if pieces else b[0]
    h_last = torch.stack(finals) if finals else a.new_zeros((0, *a.shape[2:]))
    return h.unsqueeze(0).to(dtype), h_last
