"""Tests of graphseq.datasets.sets (the second-minimum generator)."""

from __future__ import annotations

import pytest
import torch

from graphseq.datasets.sets import SetBatch, second_minimum, to_bits


def test_deterministic_and_seeded():
    state = torch.get_rng_state()
    a = second_minimum(200, 2, 16, seed=5)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched
    b = second_minimum(200, 2, 16, seed=5)
    c = second_minimum(200, 2, 16, seed=6)
    for f in ("values", "ptr", "target"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert not torch.equal(a.values[:50], c.values[:50])


def test_labels_and_sizes():
    data = second_minimum(300, 2, 16, num_bits=4, seed=0)  # 4 bits: many duplicates
    sizes = data.ptr.diff()
    assert len(data) == 300 and int(sizes.min()) >= 2 and int(sizes.max()) <= 16
    assert int(data.values.min()) >= 0 and int(data.values.max()) < 16
    for i in range(len(data)):
        elems = sorted(data.values[data.ptr[i] : data.ptr[i + 1]].tolist())
        assert int(data.target[i]) == elems[1]
    fixed = second_minimum(10, 32, 32, seed=1)
    assert torch.equal(fixed.ptr.diff(), torch.full((10,), 32))


def test_select_bits_and_index():
    data = second_minimum(20, 2, 6, seed=3)
    part = data.select(torch.tensor([4, 0, 4]))
    assert isinstance(part, SetBatch) and len(part) == 3
    assert torch.equal(part.values[: part.ptr[1]], data.values[data.ptr[4] : data.ptr[5]])
    assert torch.equal(part.target, data.target[torch.tensor([4, 0, 4])])
    assert torch.equal(part.index, torch.repeat_interleave(torch.arange(3), part.ptr.diff()))
    assert torch.equal(to_bits(torch.tensor([5]), 4), torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    assert part.bits().shape == (part.values.numel(), 8)
    assert part.target_bits().shape == (3, 8)
    assert len(second_minimum(0)) == 0


def test_errors():
    with pytest.raises(ValueError, match="num_sets"):
        second_minimum(-1)
    with pytest.raises(ValueError, match="min_size"):
        second_minimum(3, 1, 4)
    with pytest.raises(ValueError, match="max_size"):
        second_minimum(3, 5, 4)
    with pytest.raises(ValueError, match="num_bits"):
        second_minimum(3, num_bits=0)
    with pytest.raises(TypeError, match="seed must be an int"):
        second_minimum(3, seed=1.5)
    with pytest.raises(ValueError, match="sets must lie"):
        second_minimum(3).select(torch.tensor([3]))


def test_select_refuses_masks_and_float_ids():
    """A boolean mask was read as the ids 0/1 (four sets back for two), a float id truncated."""
    data = second_minimum(4, 2, 5, seed=1)
    with pytest.raises(TypeError, match="sets must be integer set ids"):
        data.select(torch.tensor([True, False, True, False]))
    with pytest.raises(TypeError, match="sets must be integer set ids"):
        data.select(torch.tensor([2.9]))
    mask = torch.tensor([True, False, True, False])
    assert torch.equal(data.select(mask.nonzero().view(-1)).target, data.target[mask])
    assert len(data.select([])) == 0 and len(data.select(torch.tensor([], dtype=torch.int32))) == 0
    assert torch.equal(data.select([2, 0]).target, data.target[[2, 0]])
