"""Tests of graphseq.nn.aggr.RecurrentAggregation."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.nn.aggr import GRUAggregation, LSTMAggregation

from graphseq.nn.aggr import RecurrentAggregation
from graphseq.nn.aggr._grouping import Grouped, shuffle_within_groups

CELLS = ("gru", "lstm")


def make_ptr(lengths) -> torch.Tensor:
    lengths = torch.as_tensor(list(lengths), dtype=torch.long)
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])


def index_of(ptr: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr.diff())


def run_alone(aggr: RecurrentAggregation, rows: torch.Tensor) -> torch.Tensor:
    """The RNN over one sequence, with torch.nn's own layer: last layer's final h."""
    final = aggr.rnn(rows.unsqueeze(1))[1]
    h = final if aggr.cell == "gru" else final[0]
    return h[-1, 0]


def test_repr():
    assert str(RecurrentAggregation(16, 32)) == (
        "RecurrentAggregation(16, 32, cell='gru', order='given', num_layers=1)"
    )
    assert str(RecurrentAggregation(4, 4, cell="lstm", order="score", num_layers=2)) == (
        "RecurrentAggregation(4, 4, cell='lstm', order='score', num_layers=2)"
    )


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_each_group_is_its_own_sequence(cell, num_layers):
    aggr = RecurrentAggregation(5, 6, cell=cell, num_layers=num_layers)
    lengths = [3, 0, 7, 1, 0, 12, 2]
    ptr = make_ptr(lengths)
    x = torch.randn(int(ptr[-1]), 5)
    out = aggr(x, ptr=ptr)
    assert out.shape == (7, 6)
    assert torch.equal(out, aggr(x, index_of(ptr), dim_size=7))
    for g, n in enumerate(lengths):
        if n == 0:
            assert torch.equal(out[g], torch.zeros(6))  # the RNN over no element: h_0 = 0
        else:
            expected = run_alone(aggr, x[ptr[g] : ptr[g + 1]])
            assert (out[g] - expected).abs().max() <= 1e-6


@pytest.mark.parametrize("cell", CELLS)
def test_batch_independence(cell):
    aggr = RecurrentAggregation(8, 8, cell=cell)
    mine = torch.randn(3, 8)
    alone = aggr(mine)[0]
    for others in ([8], [0, 40, 1], [300]):
        lengths = [*others, 3]
        ptr = make_ptr(lengths)
        x = torch.randn(int(ptr[-1]), 8)
        x[ptr[-2] :] = mine
        out = aggr(x, index_of(ptr), dim_size=len(lengths), max_num_elements=300)
        assert (out[-1] - alone).abs().max() <= 1e-6


@pytest.mark.parametrize(("cell", "pyg_cls"), [("gru", GRUAggregation), ("lstm", LSTMAggregation)])
def test_matches_pyg_without_padding(cell, pyg_cls):
    """With equal degrees PyG pads nothing, and both compute the same recurrence."""
    pyg = pyg_cls(4, 5)
    ours = RecurrentAggregation(4, 5, cell=cell)
    rnn = pyg.gru if cell == "gru" else pyg.lstm
    ours.rnn.load_state_dict(rnn.state_dict())
    index = torch.arange(6).repeat_interleave(4)
    x = torch.randn(24, 4)
    torch.testing.assert_close(ours(x, index), pyg(x, index), atol=1e-6, rtol=1e-5)


def test_empty_batch_and_unsorted_index():
    aggr = RecurrentAggregation(3, 4, cell="lstm")
    out = aggr(torch.randn(0, 3), torch.zeros(0, dtype=torch.long), dim_size=2)
    assert out.shape == (2, 4) and torch.equal(out, torch.zeros(2, 4))
    index = torch.tensor([1, 0, 1, 3, 0, 1])
    x = torch.randn(6, 3)
    order = torch.sort(index, stable=True)[1]
    assert torch.equal(aggr(x, index, dim_size=4), aggr(x[order], index[order], dim_size=4))


def test_shuffle_within_groups_is_a_permutation_inside_groups():
    ptr = make_ptr([4, 0, 6, 1])
    x = torch.arange(11.0).unsqueeze(1)
    shuffled = shuffle_within_groups(Grouped(x, ptr, None))
    assert torch.equal(shuffled.x, x[shuffled.order])
    for g in range(4):
        a, b = int(ptr[g]), int(ptr[g + 1])
        assert sorted(shuffled.x[a:b, 0].tolist()) == list(range(a, b))


def test_random_order():
    aggr = RecurrentAggregation(4, 4, order="random")
    x = torch.randn(9, 4)
    outs = torch.stack([aggr(x)[0] for _ in range(6)])
    assert (outs - outs[0]).abs().max() > 0
    same = torch.randn(1, 4).expand(9, 4)  # identical elements: every order gives one value
    outs = torch.stack([aggr(same)[0] for _ in range(3)])
    assert (outs - outs[0]).abs().max() <= 1e-6


def test_score_order():
    aggr = RecurrentAggregation(4, 6, order="score")
    ptr = make_ptr([5, 3])
    x = torch.randn(8, 4, requires_grad=True)
    out = aggr(x, ptr=ptr)
    s = aggr.score(x).squeeze(-1)
    for g in range(2):
        rows, sg = x[ptr[g] : ptr[g + 1]], s[ptr[g] : ptr[g + 1]]
        gated = (rows * torch.sigmoid(sg).unsqueeze(-1))[torch.argsort(sg.detach(), stable=True)]
        assert (out[g] - run_alone(aggr, gated)).abs().max() <= 1e-6
    out.sum().backward()
    assert aggr.score.weight.grad is not None and aggr.score.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cell", CELLS)
def test_permutation_loss(cell):
    aggr = RecurrentAggregation(6, 6, cell=cell, num_layers=2)
    x = torch.randn(50, 6)
    index = torch.randint(0, 5, (50,))
    gen = torch.Generator().manual_seed(0)
    loss = aggr.permutation_loss(x, index, num_samples=32, generator=gen)
    assert loss.dim() == 0 and loss > 0
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(loss, aggr.permutation_loss(x, index, num_samples=32, generator=gen))
    loss.backward()
    assert all(p.grad is not None for p in aggr.parameters())
    # the loss can be trained down (one layer, a short group set to keep it quick)
    small = RecurrentAggregation(6, 6, cell=cell)
    x, index = x[:20], index[:20] % 3
    opt = torch.optim.Adam(small.parameters(), lr=3e-2)
    first = small.permutation_loss(x, index, num_samples=64).item()
    for _ in range(15):
        opt.zero_grad()
        small.permutation_loss(x, index, num_samples=64).backward()
        opt.step()
    assert small.permutation_loss(x, index, num_samples=64).item() < 0.5 * first
    # no group with two elements: nothing to swap
    assert aggr.permutation_loss(x[:3], torch.tensor([0, 1, 2])).item() == 0.0


def test_reset_parameters():
    aggr = RecurrentAggregation(4, 4, order="score")
    with torch.no_grad():
        for p in aggr.parameters():
            p.fill_(0.25)
    aggr.reset_parameters()
    for name, p in aggr.named_parameters():
        assert not torch.all(p == 0.25), name


def test_errors():
    with pytest.raises(ValueError, match="RecurrentAggregation: in_channels"):
        RecurrentAggregation(0, 4)
    with pytest.raises(ValueError, match="RecurrentAggregation: num_layers"):
        RecurrentAggregation(4, 4, num_layers=0)
    with pytest.raises(ValueError, match="RecurrentAggregation: cell"):
        RecurrentAggregation(4, 4, cell="rnn")
    with pytest.raises(ValueError, match="RecurrentAggregation: order"):
        RecurrentAggregation(4, 4, order="sorted")
    aggr = RecurrentAggregation(4, 4)
    x = torch.randn(5, 4)
    index = torch.tensor([0, 0, 1, 1, 2])
    with pytest.raises(ValueError, match="in_channels = 4"):
        aggr(torch.randn(5, 3), index)
    with pytest.raises(ValueError, match=r"x has dtype torch\.float64 but the layer's"):
        aggr(x.double(), index)
    with pytest.raises(ValueError, match="max_num_elements"):
        aggr(x, index, max_num_elements=1)
    with pytest.raises(ValueError, match="max_num_elements must be None or a non-negative"):
        aggr(x, index, max_num_elements="4")
    with pytest.raises(ValueError, match="dim_size"):
        aggr(x, index, dim_size=1)
    with pytest.raises(ValueError, match="num_samples"):
        aggr.permutation_loss(x, index, num_samples=-1)


def test_final_states_checks_its_arguments():
    gru, lstm = RecurrentAggregation(4, 4), RecurrentAggregation(4, 4, cell="lstm", num_layers=2)
    x, ptr = torch.randn(5, 4), torch.tensor([0, 2, 5])
    h = torch.randn(1, 2, 4)
    (out,) = gru.final_states(x, ptr, h)
    assert torch.equal(out, gru.final_states(x, ptr, (h,))[0])
    # an empty group keeps the given state
    (kept,) = gru.final_states(x, torch.tensor([0, 0, 5]), h)
    assert torch.equal(kept[:, 0], h[:, 0]) and not torch.equal(kept[:, 1], h[:, 1])
    hc = (torch.randn(2, 2, 4), torch.randn(2, 2, 4))
    assert [t.shape for t in lstm.final_states(x, ptr, hc)] == [(2, 2, 4), (2, 2, 4)]
    for call, exc, match in [
        (
            lambda: gru.final_states(x, ptr, torch.zeros(1, 3, 4)),
            ValueError,
            "state must have shape",
        ),
        (lambda: gru.final_states(x, ptr, hc), ValueError, r"state must be a tensor \(h,\)"),
        (lambda: lstm.final_states(x, ptr, hc[0]), ValueError, r"state must be a pair"),
        (lambda: lstm.final_states(x, ptr, (hc[0], "c")), TypeError, "state must hold tensors"),
        (lambda: gru.final_states(x, ptr, h.double()), ValueError, "dtype and device"),
        (lambda: gru.final_states(x, torch.tensor([0, 2, 4])), ValueError, "ptr must start"),
        (lambda: gru.final_states(x, torch.tensor([0, 3, 2, 5])), ValueError, "non-decreasing"),
        (lambda: gru.final_states(x, [0, 2, 5]), TypeError, r"ptr must be a torch\.Tensor"),
        (lambda: gru.final_states(x, torch.tensor([], dtype=torch.long)), ValueError, "ptr"),
        (lambda: gru.final_states(torch.randn(5, 3), ptr), ValueError, "in_channels = 4"),
        (lambda: gru.final_states(x.long(), ptr), TypeError, "floating-point"),
    ]:
        with pytest.raises(exc, match=match):
            call()


def test_permutation_loss_names_the_bad_argument():
    aggr, x = RecurrentAggregation(4, 4), torch.randn(5, 4)
    with pytest.raises(TypeError, match=r"ptr must be a torch\.Tensor"):
        aggr.permutation_loss(x, ptr=[0, 2, 5])
    with pytest.raises(TypeError, match=r"index must be a torch\.Tensor"):
        aggr.permutation_loss(x, [0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="index must be non-negative"):
        aggr.permutation_loss(x, torch.full((5,), -2))
    with pytest.raises(ValueError, match="ptr must have at least one entry"):
        aggr.permutation_loss(x, ptr=torch.tensor([], dtype=torch.long))


def test_permutation_loss_checks_x_like_forward():
    aggr, index = RecurrentAggregation(4, 4), torch.tensor([0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="in_channels = 4 channels, got 3"):
        aggr.permutation_loss(torch.randn(5, 3), index)
    with pytest.raises(ValueError, match=r"x has dtype torch\.float64 but the layer's"):
        aggr.permutation_loss(torch.randn(5, 4, dtype=torch.float64), index)


def test_permutation_loss_generator_reproduces_random_order():
    """The generator also draws order='random''s shuffle: same seed, same loss."""
    aggr = RecurrentAggregation(4, 4, order="random")
    x, index = torch.randn(30, 4), torch.randint(0, 3, (30,))
    losses = [
        aggr.permutation_loss(x, index, num_samples=16, generator=torch.Generator().manual_seed(0))
        for _ in range(3)
    ]
    assert all(torch.equal(loss, losses[0]) for loss in losses)


@pytest.mark.parametrize("cell", CELLS)
def test_permutation_loss_is_the_documented_swap_gap(cell):
    """One group x0, x1, x2 in the given order: a sample is the swap gap of (x0, x1) or
    (x0, x2) from the zero state, or of (x1, x2) from the state after x0, with torch.nn's own
    RNN, summed over layers, h (and c) and channels and divided by the state size; all three
    cases occur."""
    torch.manual_seed(0)
    aggr = RecurrentAggregation(3, 4, cell=cell, num_layers=2).double()
    x = torch.randn(3, 3, dtype=torch.float64)

    def state(seq, hx=None):
        out = aggr.rnn(seq.unsqueeze(1), hx)[1]
        return out if isinstance(out, tuple) else (out,)

    def gap(prefix, i, j):
        hx = None
        if prefix:
            s = state(x[:prefix])
            hx = s if cell == "lstm" else s[0]
        one, two = state(x[[i, j]], hx), state(x[[j, i]], hx)
        return sum((u - v).pow(2).sum() for u, v in zip(one, two)) / (len(one) * 2 * 4)

    allowed = [gap(0, 0, 1), gap(0, 0, 2), gap(1, 1, 2)]
    seen = set()
    for seed in range(30):
        gen = torch.Generator().manual_seed(seed)
        got = aggr.permutation_loss(x, num_samples=1, generator=gen)
        k = min(range(3), key=lambda k: float((got - allowed[k]).abs()))
        assert (got - allowed[k]).abs() <= 1e-12
        seen.add(k)
    assert seen == {0, 1, 2}


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_empty_batch_backpropagates(cell):
    """No element at all: zeros for every group, and the loss still backpropagates to x (as
    through LCMAggregation's empty batch)."""
    aggr = RecurrentAggregation(3, 4, cell=cell, num_layers=2)
    x = torch.randn(0, 3, requires_grad=True)
    out = aggr(x, torch.zeros(0, dtype=torch.long), dim_size=2)
    assert torch.equal(out, torch.zeros(2, 4))
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == (0, 3)


def test_dim_size_takes_numpy_integers_and_refuses_other_numbers():
    import numpy as np

    from graphseq.nn.aggr import LCMAggregation

    x = torch.randn(5, 4)
    index = torch.tensor([0, 0, 1, 2, 2])
    for aggr in (LCMAggregation(4, 4), RecurrentAggregation(4, 4)):
        want = aggr(x, index, dim_size=4)
        assert torch.equal(aggr(x, index, dim_size=np.int64(4)), want)
        for bad in (np.float64(4), 4.0, -1, True):
            with pytest.raises(ValueError, match="dim_size must be a non-negative int"):
                aggr(x, index, dim_size=bad)
