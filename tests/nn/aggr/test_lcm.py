"""Tests of graphseq.nn.aggr.LCMAggregation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck
from torch_geometric.nn.aggr import LCMAggregation as PyGLCMAggregation

from graphseq.kernels import SegmentPlan
from graphseq.nn.aggr import LCMAggregation
from graphseq.nn.aggr.lcm import _symmetric_gru_reference, _SymmetricGRU

CELLS = ("gru", "mlp")


def make_ptr(lengths) -> torch.Tensor:
    lengths = torch.as_tensor(list(lengths), dtype=torch.long)
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])


def index_of(ptr: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr.diff())


def test_pyg_positional_signature():
    assert LCMAggregation(8, 8, False).project is False  # PyG: (in, out, project)


def test_repr():
    assert str(LCMAggregation(16, 32)) == (
        "LCMAggregation(16, 32, cell='gru', project=True, identity='learned', shuffle=False)"
    )
    assert str(LCMAggregation(8, 8, cell="mlp", project=False, identity="zeros", shuffle=True)) == (
        "LCMAggregation(8, 8, cell='mlp', hidden_channels=16, project=False, "
        "identity='zeros', shuffle=True)"
    )


@pytest.mark.parametrize("cell", CELLS)
def test_shapes_index_ptr_and_identity(cell):
    aggr = LCMAggregation(6, 5, cell=cell)
    with torch.no_grad():
        aggr.identity_element.copy_(torch.arange(5.0))
    ptr = make_ptr([2, 0, 3, 1, 0])
    x = torch.randn(6, 6)
    out = aggr(x, ptr=ptr)
    assert out.shape == (5, 5)
    assert torch.equal(out, aggr(x, index_of(ptr), dim_size=5))
    assert torch.equal(out[1], torch.arange(5.0)) and torch.equal(out[4], torch.arange(5.0))
    # a single element is returned unchanged (after the projection)
    torch.testing.assert_close(out[3], torch.relu(aggr.lin(x[5:6]))[0], atol=1e-6, rtol=0)
    zeros = LCMAggregation(6, 5, cell=cell, identity="zeros")
    assert torch.equal(zeros(x, ptr=ptr)[1], torch.zeros(5))


@pytest.mark.parametrize("cell", CELLS)
def test_batch_independence(cell):
    """A node's output does not depend on the other nodes of the batch (any degrees)."""
    aggr = LCMAggregation(12, 12, cell=cell)
    mine = torch.randn(3, 12)
    alone = aggr(mine, torch.zeros(3, dtype=torch.long))
    for others in ([8], [0, 1, 2, 5], [300, 17], [64, 3, 0, 100]):
        lengths = [*others[:1], 3, *others[1:]]
        ptr = make_ptr(lengths)
        x = torch.randn(int(ptr[-1]), 12)
        x[ptr[1] : ptr[2]] = mine
        out = aggr(x, index_of(ptr), dim_size=len(lengths))
        assert (out[1] - alone[0]).abs().max() <= 1e-6
        # padding hint: max_num_elements never changes the result
        hint = aggr(x, index_of(ptr), dim_size=len(lengths), max_num_elements=2000)
        assert (hint[1] - alone[0]).abs().max() <= 1e-6


def test_matches_pyg_on_one_set():
    """PyG's state dict loads strictly (the missing identity as PyG's zeros), and with its
    weights a set aggregated alone gives PyG's value (no padding involved)."""
    pyg = PyGLCMAggregation(8, 8)
    ours = LCMAggregation(8, 8)
    with torch.no_grad():
        ours.identity_element.fill_(1.0)
    ours.load_state_dict(pyg.state_dict())
    assert torch.equal(ours.identity_element, torch.zeros(8))
    for n in (1, 2, 3, 5, 8, 13, 17):
        x = torch.randn(n, 8)
        expected = pyg(x, torch.zeros(n, dtype=torch.long))
        torch.testing.assert_close(ours(x), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("project", [True, False])
def test_runs_under_autocast(cell, project):
    """Under autocast the operands of the cell match its lower-precision products, whether
    the layer projects float32 inputs itself or takes them as they are (a GIN layer's
    first aggregation), and the result stays close to float32's."""
    torch.manual_seed(0)
    aggr = LCMAggregation(8, 8, project, cell=cell)
    x, index = torch.randn(9, 8), torch.tensor([0, 0, 0, 1, 1, 3, 3, 3, 3])
    want = aggr(x, index, dim_size=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = aggr(x, index, dim_size=4)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.05)


def test_unfused_gru_cell_is_twice_differentiable():
    """fused=False gives the same function and first derivatives as the fused cell, and
    second derivatives (which the fused backward refuses) that pass gradgradcheck."""
    from torch.autograd import gradgradcheck

    torch.manual_seed(0)
    fused = LCMAggregation(3, 3).double()
    plain = LCMAggregation(3, 3, fused=False).double()
    plain.load_state_dict(fused.state_dict())
    assert "fused=False" in repr(plain)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 0, 0, 1, 1, 1])
    outs = [m(x, index, dim_size=2) for m in (fused, plain)]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-12, rtol=1e-12)
    grads = [torch.autograd.grad(o.sum(), x, retain_graph=True)[0] for o in outs]
    torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=1e-12)
    with pytest.raises(RuntimeError, match=r"once_differentiable.*fused=False"):
        torch.autograd.grad(outs[0].sum(), x, create_graph=True)
    assert gradgradcheck(lambda t: plain(t, index, dim_size=2), (x,))


@pytest.mark.parametrize("cell", CELLS)
def test_commutativity_is_exact(cell):
    aggr = LCMAggregation(32, 32, cell=cell)
    a, b = torch.randn(513, 32) * 3, torch.randn(513, 32) * 3
    assert torch.equal(aggr.combine(a, b), aggr.combine(b, a))


def test_gru_cell_is_torch_gru_cell():
    aggr = LCMAggregation(8, 8)
    a, b = torch.randn(7, 8), torch.randn(7, 8)
    expected = 0.5 * (aggr.gru_cell(a, b) + aggr.gru_cell(b, a))
    torch.testing.assert_close(aggr.combine(a, b), expected, atol=1e-6, rtol=1e-5)


def test_symmetric_gru_gradcheck():
    p, c = 5, 3
    q, m, na, nb = (
        torch.randn(p, 2 * c, dtype=torch.float64, requires_grad=True) for _ in range(4)
    )
    a = torch.randn(p, c, dtype=torch.float64, requires_grad=True)
    b = torch.randn(p, c, dtype=torch.float64, requires_grad=True)
    inputs = (q, m, na, nb, a, b)
    assert gradcheck(_SymmetricGRU.apply, inputs)
    torch.testing.assert_close(_SymmetricGRU.apply(*inputs), _symmetric_gru_reference(*inputs))
    grads = torch.autograd.grad(_SymmetricGRU.apply(*inputs).sum(), inputs)
    expected = torch.autograd.grad(_symmetric_gru_reference(*inputs).sum(), inputs)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_gru_combine_matches_two_gru_cells_float64():
    """The sum/difference form is the symmetrised GRUCell, values and gradients, to 1e-12."""
    aggr = LCMAggregation(6, 6).double()
    a = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    got = aggr.combine(a, b)
    want = 0.5 * (aggr.gru_cell(a, b) + aggr.gru_cell(b, a))
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    params = [a, b, *aggr.gru_cell.parameters()]
    g = torch.randn_like(got)
    for x, y in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_layer_gradcheck_float64(cell):
    aggr = LCMAggregation(2, 3, cell=cell).double()
    with torch.no_grad():
        aggr.identity_element.normal_()
    x = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([3, 0, 0, 3, 3, 0, 3])
    assert gradcheck(lambda t: aggr(t, index, dim_size=5), (x,))
    out = aggr(x, index, dim_size=5)
    out.sum().backward()
    assert aggr.identity_element.grad is not None  # groups 1, 2, 4 are empty


def test_empty_batch():
    aggr = LCMAggregation(4, 6)
    x = torch.randn(0, 4, requires_grad=True)
    index = torch.zeros(0, dtype=torch.long)
    out = aggr(x, index, dim_size=2)
    assert out.shape == (2, 6) and torch.equal(out, aggr.identity_element.expand(2, 6))
    out.sum().backward()
    assert aggr(x, index).shape == (0, 6)
    assert aggr(x, ptr=torch.zeros(4, dtype=torch.long)).shape == (3, 6)


@pytest.mark.parametrize("cell", CELLS)
def test_unsorted_index(cell):
    """Unsorted index = the same elements grouped by a stable sort of the index."""
    aggr = LCMAggregation(5, 5, cell=cell)
    index = torch.tensor([2, 0, 2, 1, 0, 2, 2, 0, 4, 2])
    x = torch.randn(index.numel(), 5)
    order = torch.sort(index, stable=True)[1]
    expected = aggr(x[order], index[order], dim_size=5)
    # the same combines in the same order; the rows sit at other positions of the cell's
    # matrix products, which some BLAS kernels (MKL on AMD Zen) round differently: 1 ulp
    torch.testing.assert_close(aggr(x, index, dim_size=5), expected, atol=1e-6, rtol=0)
    # and group by group, in the given order
    for g in range(5):
        rows = x[index == g]
        if rows.numel():
            assert (aggr(rows)[0] - expected[g]).abs().max() <= 1e-6


def test_shuffle_in_training_only():
    aggr = LCMAggregation(4, 4, shuffle=True)
    x = torch.randn(12, 4)
    aggr.eval()
    assert torch.equal(aggr(x), aggr(x))
    aggr.train()
    outs = torch.stack([aggr(x)[0] for _ in range(8)])
    assert (outs - outs[0]).abs().max() > 0  # different bracketings of a non-associative op
    # a permutation of the multiset: the permuted elements give one of these values
    torch.manual_seed(3)
    shuffled = aggr(x)
    aggr.eval()
    torch.manual_seed(3)
    perm = torch.randperm(12)
    perm = perm[torch.sort(torch.zeros(12, dtype=torch.long)[perm], stable=True)[1]]
    assert (shuffled - aggr(x[perm])).abs().max() <= 1e-6


def test_plan_reuse():
    aggr = LCMAggregation(4, 4)
    ptr = make_ptr([3, 0, 5, 1])
    x = torch.randn(9, 4)
    plan = SegmentPlan.from_ptr(ptr)
    assert torch.equal(aggr(x, ptr=ptr, plan=plan), aggr(x, ptr=ptr))


def test_nan_stays_in_its_group():
    aggr = LCMAggregation(4, 4)
    ptr = make_ptr([3, 2])
    x = torch.randn(5, 4)
    x[1, 2] = math.nan
    out = aggr(x, ptr=ptr)
    assert out[0].isnan().any() and not out[1].isnan().any()


@pytest.mark.parametrize("cell", CELLS)
def test_associativity_loss(cell):
    torch.manual_seed(0)
    aggr = LCMAggregation(8, 8, cell=cell)
    x = torch.randn(64, 8)
    index = torch.randint(0, 6, (64,))
    gen = torch.Generator().manual_seed(1)
    loss = aggr.associativity_loss(x, index, num_samples=64, generator=gen)
    assert loss.dim() == 0 and loss > 0
    loss.backward()
    assert all(p.grad is not None for n, p in aggr.named_parameters() if n != "identity_element")
    # same generator seed, same samples
    gen = torch.Generator().manual_seed(1)
    assert torch.equal(loss, aggr.associativity_loss(x, index, num_samples=64, generator=gen))
    # the loss can be trained down
    opt = torch.optim.Adam(aggr.parameters(), lr=1e-2)
    first = aggr.associativity_loss(x, num_samples=128).item()
    for _ in range(30):
        opt.zero_grad()
        aggr.associativity_loss(x, num_samples=128).backward()
        opt.step()
    assert aggr.associativity_loss(x, num_samples=128).item() < 0.5 * first
    assert aggr.associativity_loss(torch.randn(0, 8)).item() == 0.0
    # operands that are themselves reductions of up to 4 elements
    deep = aggr.associativity_loss(x, index, num_samples=32, max_operand_size=4)
    assert deep.dim() == 0 and deep > 0
    with pytest.raises(ValueError, match="max_operand_size"):
        aggr.associativity_loss(x, max_operand_size=0)


def test_identity_loss_trains_identity():
    aggr = LCMAggregation(6, 6)
    x = torch.randn(40, 6)
    loss = aggr.identity_loss(x, num_samples=32)
    loss.backward()
    assert aggr.identity_element.grad is not None and aggr.identity_element.grad.abs().sum() > 0


def test_reset_parameters():
    aggr = LCMAggregation(5, 7, cell="mlp")
    with torch.no_grad():
        for p in aggr.parameters():
            p.fill_(0.25)
    aggr.reset_parameters()
    for name, p in aggr.named_parameters():
        if name == "identity_element":
            assert torch.equal(p, torch.zeros(7))
        else:
            assert not torch.all(p == 0.25), name


def test_constructor_errors():
    with pytest.raises(ValueError, match="LCMAggregation: in_channels"):
        LCMAggregation(0, 4)
    with pytest.raises(ValueError, match="LCMAggregation: out_channels"):
        LCMAggregation(4, 2.5)
    with pytest.raises(ValueError, match="LCMAggregation: cell"):
        LCMAggregation(4, 4, cell="lstm")
    with pytest.raises(ValueError, match="must be projected"):
        LCMAggregation(4, 8, project=False)
    with pytest.raises(ValueError, match="hidden_channels applies"):
        LCMAggregation(4, 4, hidden_channels=8)
    with pytest.raises(ValueError, match="hidden_channels must"):
        LCMAggregation(4, 4, cell="mlp", hidden_channels=0)
    with pytest.raises(ValueError, match="LCMAggregation: identity"):
        LCMAggregation(4, 4, identity="one")


def test_forward_errors():
    aggr = LCMAggregation(4, 4)
    x = torch.randn(5, 4)
    index = torch.tensor([0, 0, 1, 1, 2])
    with pytest.raises(ValueError, match="x must be two-dimensional"):
        aggr(torch.randn(2, 5, 4), torch.tensor([0, 0, 1, 1, 2]), dim=1)
    with pytest.raises(ValueError, match="index must have one entry"):
        aggr(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="dim_size"):
        aggr(x, index, dim_size=2)
    with pytest.raises(ValueError, match="index must be non-negative"):
        aggr(x, torch.tensor([0, -1, 1, 1, 2]), dim_size=3)
    with pytest.raises(ValueError, match="ptr must start at 0 and end"):
        aggr(x, ptr=torch.tensor([0, 2, 4]))
    with pytest.raises(ValueError, match="ptr must be non-decreasing"):
        aggr(x, ptr=torch.tensor([0, 3, 2, 5]))
    with pytest.raises(ValueError, match="max_num_elements"):
        aggr(x, index, max_num_elements=1)
    with pytest.raises(ValueError, match="dim must be 0 or -2"):
        aggr.forward(x, index, dim_size=3, dim=1)
    with pytest.raises(TypeError, match="index must be an int32 or int64"):
        aggr(x, index.float(), dim_size=3)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        aggr(x.long(), index)
    with pytest.raises(ValueError, match="in_channels = 4 channels, got 3"):
        LCMAggregation(4, 4, project=False)(torch.randn(5, 3), index)
    with pytest.raises(ValueError, match="in_channels = 4 channels, got 3"):
        aggr(torch.randn(5, 3), index)  # projected: named before the matrix product
    with pytest.raises(ValueError, match=r"x has dtype torch\.float64 but the layer's"):
        aggr(x.double(), index)
    for bad in ("4", -1, 2.0, True):
        with pytest.raises(ValueError, match="max_num_elements must be None or a non-neg"):
            aggr(x, index, max_num_elements=bad)
    with pytest.raises(ValueError, match="num_samples"):
        aggr.associativity_loss(x, num_samples=0)


def test_associativity_loss_names_the_bad_argument():
    aggr, x = LCMAggregation(4, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="ptr must have at least one entry"):
        aggr.associativity_loss(x, ptr=torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="index must be non-negative"):
        aggr.associativity_loss(x, torch.full((5,), -2))
    with pytest.raises(TypeError, match=r"index must be a torch\.Tensor"):
        aggr.associativity_loss(x, [0, 0, 1, 1, 1])


def test_partial_non_strict_load_keeps_a_trained_identity():
    """PyG's state dict (no identity key) loads strictly with the identity at zero; any other
    dict without the key leaves a trained identity as it is and reports it missing."""
    model = torch.nn.ModuleDict({"enc": torch.nn.Linear(4, 4), "aggr": LCMAggregation(4, 4)})
    with torch.no_grad():
        model["aggr"].identity_element.fill_(1.0)
    res = model.load_state_dict({"enc.weight": torch.zeros(4, 4), "enc.bias": torch.zeros(4)},
                                strict=False)  # fmt: skip
    assert torch.equal(model["aggr"].identity_element, torch.ones(4))
    assert "aggr.identity_element" in res.missing_keys
    model["aggr"].load_state_dict(PyGLCMAggregation(4, 4).state_dict())  # strict
    assert torch.equal(model["aggr"].identity_element, torch.zeros(4))


def test_associativity_loss_is_the_documented_gap():
    """With one sample the loss is (a ⊕ b) ⊕ c - a ⊕ (b ⊕ c), squared and averaged over the
    channels, for elements a, b, c of one group (never of two groups)."""
    torch.manual_seed(0)
    aggr = LCMAggregation(4, 4).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    index = torch.tensor([0, 0, 1, 1, 1])
    h = torch.relu(aggr.lin(x)).detach()

    def gap(i, j, k):
        a, b, c = h[i : i + 1], h[j : j + 1], h[k : k + 1]
        op = aggr.combine
        return (op(op(a, b), c) - op(a, op(b, c))).pow(2).mean()

    groups = ([0, 1], [2, 3, 4])
    allowed = [gap(i, j, k) for rows in groups for i in rows for j in rows for k in rows]
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        got = aggr.associativity_loss(x, index, num_samples=1, generator=gen)
        assert min((got - v).abs() for v in allowed) <= 1e-12
    # groups of identical elements: a = b = c, so the gap is 0 (commutativity) unless the
    # triples mixed groups
    same = torch.cat([x[:1].expand(3, 4), x[1:2].expand(2, 4)])
    assert aggr.associativity_loss(same, torch.tensor([0, 0, 0, 1, 1]), num_samples=64) <= 1e-20


def test_identity_loss_is_the_documented_gap():
    aggr = LCMAggregation(4, 4).double()
    with torch.no_grad():
        aggr.identity_element.normal_()
    x = torch.randn(1, 4, dtype=torch.float64)  # every sample is this row
    h = torch.relu(aggr.lin(x))
    want = (aggr.combine(h, aggr.identity_element[None]) - h).pow(2).mean()
    torch.testing.assert_close(aggr.identity_loss(x, num_samples=3), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cell", ["gru", "mlp"])
def test_learned_identity_takes_part_without_empty_groups(cell):
    # a None gradient in a batch without isolated nodes stops DistributedDataParallel
    torch.manual_seed(0)
    agg = LCMAggregation(4, 4, cell=cell)
    x, index = torch.randn(5, 4), torch.tensor([0, 0, 1, 1, 1])
    out = agg(x, index, dim_size=2)
    out.sum().backward()
    assert agg.identity_element.grad is not None
    assert torch.equal(agg.identity_element.grad, torch.zeros(4))
    with torch.no_grad():
        agg.identity_element.fill_(3.0)  # e does not change a non-empty group
    torch.testing.assert_close(agg(x, index, dim_size=2), out, rtol=0, atol=0)
    empty = agg(x, index, dim_size=3)  # group 2 is empty: e
    assert torch.equal(empty[2], torch.full((4,), 3.0))


def test_mlp_cell_is_the_documented_symmetrised_perceptron():
    """cell="mlp": a ⊕ b = ½ (f(a, b) + f(b, a)) with f(a, b) = W2 ReLU(W1 [a ‖ b] + b1) + b2
    (the class docstring), not merely some commutative function of a and b."""
    torch.manual_seed(0)
    aggr = LCMAggregation(4, 4, cell="mlp").double()
    a, b = (torch.randn(5, 4, dtype=torch.float64) for _ in range(2))

    def f(u, w):
        return aggr.mlp_out(torch.relu(aggr.mlp_in(torch.cat([u, w], -1))))

    torch.testing.assert_close(aggr.combine(a, b), 0.5 * (f(a, b) + f(b, a)), atol=1e-12, rtol=0)


def test_deep_associativity_operands_mix_elements_of_the_group():
    """max_operand_size > 1: each operand reduces k random elements of a's group. With the
    idempotent a ⊕ b = (a + b) / 2, an operand made of copies of one element is that element,
    so only operands that really mix the group's elements give a non-zero gap."""
    aggr = LCMAggregation(2, 2, project=False, cell="mlp").double()  # hidden 4
    with torch.no_grad():
        for p in aggr.parameters():
            p.zero_()
        aggr.mlp_in.weight[:2, :2] = torch.eye(2)  # f(a, b) = a for a >= 0
        aggr.mlp_out.weight[:, :2] = torch.eye(2)
    x = torch.tensor([[1.0, 2.0], [3.0, 0.5], [0.0, 4.0], [2.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(aggr.combine(x[:1], x[1:2]), (x[:1] + x[1:2]) / 2)
    gen = torch.Generator().manual_seed(0)
    index = torch.zeros(4, dtype=torch.long)
    loss = aggr.associativity_loss(x, index, num_samples=64, generator=gen, max_operand_size=3)
    assert loss > 1e-3
