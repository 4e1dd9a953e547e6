"""Test utilities shared by graphseq's own tests and by users testing code built on it.

Import this module only after ``TRITON_INTERPRET`` has been decided (graphseq's
``tests/conftest.py`` sets it to 1 on machines without CUDA).
"""

from __future__ import annotations

import pytest
import torch

from graphseq.kernels._backend import HAS_TRITON, triton_usable

#: The device the test-suite runs on: CUDA when present, else CPU.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

#: Mark a test that needs a runnable Triton (CUDA, or the interpreter on CPU).
requires_triton = pytest.mark.skipif(
    not (HAS_TRITON and triton_usable(DEVICE)),
    reason="needs the triton package and CUDA or TRITON_INTERPRET=1",
)

#: The fast backends, for ``pytest.mark.parametrize("backend", FAST_BACKENDS)``: ``"torch"``
#: and ``"triton"``, the latter marked :data:`requires_triton`, so that where Triton cannot
#: run its cases are reported as skipped instead of vanishing from the run.
FAST_BACKENDS: tuple = ("torch", pytest.param("triton", marks=requires_triton))

#: (atol, rtol) of a fast path against a float64 reference, by input dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (5e-2, 5e-2),
    torch.float16: (1e-2, 1e-2),
}


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, *, dtype=None, msg: str = ""
) -> None:
    """Compare ``actual`` against a (usually float64) reference at the tolerance of ``dtype``.

    ``dtype`` defaults to ``actual.dtype``. NaNs never compare equal, so an unwritten output
    that was poisoned with NaN fails.
    """
    dtype = dtype or actual.dtype
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.to(expected.dtype),
        expected,
        atol=atol,
        rtol=rtol,
        equal_nan=False,
        msg=(lambda m: f"{msg}\n{m}") if msg else None,
    )


def assert_half_matches_float(model: torch.nn.Module, batch, rtol: float = 2e-2) -> None:
    """Run a float16 ``model`` on ``batch`` (a PyG batch; ``x`` rounded to float16) and a float32
    copy of it on the same rounded inputs, without gradients: both outputs finite, and equal
    to ``rtol`` relative and ``rtol`` of the reference's largest magnitude absolute."""
    import copy

    ref = copy.deepcopy(model).float()
    bh, bf = batch.clone(), batch.clone()
    bh.x = batch.x.half()
    bf.x = bh.x.float()
    with torch.no_grad():
        want, got = ref(bf), model(bh)
    assert torch.isfinite(want).all()
    assert torch.isfinite(got).all(), got
    torch.testing.assert_close(got.float(), want, rtol=rtol, atol=rtol * want.abs().max().item())


def tree_with_chords(n: int, chords: int, gen: torch.Generator) -> torch.Tensor:
    """``edge_index`` of a random tree on ``n`` nodes plus ``chords`` extra edges, both
    directions stored (molecule-like graphs for the DAG layers' tests)."""
    if n < 2:
        return torch.zeros(2, 0, dtype=torch.long)
    parent = torch.tensor([int(torch.randint(i, (1,), generator=gen)) for i in range(1, n)])
    src = torch.cat([parent, torch.randint(n, (chords,), generator=gen)])
    dst = torch.cat([torch.arange(1, n), torch.randint(n, (chords,), generator=gen)])
    keep = src != dst
    src, dst = src[keep], dst[keep]
    return torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])


def mixed_batch(sizes, gen: torch.Generator, chords: int = 3, device=DEVICE):
    """A PyG batch (on ``device``) of :func:`tree_with_chords` graphs of the given sizes
    (``-n``: ``n`` nodes and no edges), and the list of its graphs."""
    from torch_geometric.data import Batch, Data

    graphs = []
    for n in sizes:
        ei = tree_with_chords(n, chords, gen) if n > 0 else torch.zeros(2, 0, dtype=torch.long)
        graphs.append(Data(edge_index=ei, num_nodes=abs(n)))
    return Batch.from_data_list(graphs).to(device), graphs
