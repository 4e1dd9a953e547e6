"""Arrow pointing generator: determinism, prefix property, geometry, labels, bad input."""

import numpy as np
import pytest
import torch

from graphseq.datasets.arrow_pointing import (
    PROTOCOLS,
    ArrowPointing,
    _sample,
    generate_arrow_pointing,
)


def test_deterministic_and_prefix_stable():
    x1, y1 = generate_arrow_pointing(20, 96, seed=5)
    x2, y2 = generate_arrow_pointing(20, 96, seed=5)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, y3 = generate_arrow_pointing(8, 96, seed=5)
    assert torch.equal(x3, x1[:8]) and torch.equal(y3, y1[:8])
    x4, _ = generate_arrow_pointing(20, 96, seed=6)
    assert not torch.equal(x4, x1)
    assert x1.shape == (20, 96, 96) and x1.dtype == torch.uint8 and y1.dtype == torch.int64


def test_labels_balanced_and_images_drawn():
    x, y = generate_arrow_pointing(400, 96, seed=0)
    assert 0.4 < y.float().mean() < 0.6
    ink = (x == 0).flatten(1).sum(1)
    # the disk alone (radius >= 8) covers > 150 pixels; the whole image is never black
    assert (ink > 150).all() and (ink < 96 * 96 // 2).all()
    assert set(np.unique(x.numpy())) <= {0, 255}


def test_larger_resolution_keeps_object_sizes():
    small, _ = generate_arrow_pointing(200, 96, seed=1)
    large, _ = generate_arrow_pointing(200, 192, seed=1)
    ink_small = (small == 0).flatten(1).sum(1).float().mean()
    ink_large = (large == 0).flatten(1).sum(1).float().mean()
    assert abs(ink_small - ink_large) / ink_small < 0.15  # same absolute sizes


def _draw(seed, i, size, protocol="half"):
    """Sample ``i`` of a split, as the generator draws it."""
    return _sample(np.random.default_rng([seed, i]), size, PROTOCOLS[protocol])


def test_label_matches_what_is_drawn():
    """A ray from the arrow's tail through its tip hits the disk exactly when label = 1:
    trace the drawn image (disk = the largest black blob's pixels far from the arrow)."""
    import math

    hits = []
    for i in range(60):
        image, label = _draw(3, i, 96)
        black = np.argwhere(image == 0).astype(float) + 0.5  # (row, col)
        # the disk is the densest black region: its centre is the median of pixels whose
        # 3x3 neighbourhood is all black, the arrow being only 2 pixels wide
        full = [
            (r, c) for r, c in black.astype(int)
            if (image[max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3] == 0).all()
        ]  # fmt: skip
        centre = np.median(np.array(full) + 0.5, axis=0)
        radius = math.sqrt(len(full) / math.pi) + 2
        arrow = black[np.linalg.norm(black - centre, axis=1) > radius + 2]
        if len(arrow) < 5:
            continue
        # direction of the arrow: principal axis, oriented from tail to tip (the head end
        # has more pixels)
        mean = arrow.mean(0)
        _, _, vt = np.linalg.svd(arrow - mean)
        axis = vt[0]
        proj = (arrow - mean) @ axis
        if (proj > 0).sum() < (proj < 0).sum():
            axis = -axis
        to_disk = centre - mean
        along = to_disk @ axis
        miss = np.linalg.norm(to_disk - along * axis)
        hits.append((label, along > 0 and miss < radius))
    agree = np.mean([int(a) == int(b) for a, b in hits])
    assert len(hits) > 40 and agree > 0.85


def test_dataset_items():
    ds = ArrowPointing(10, 96, seed=0)
    image, label = ds[3]
    assert image.shape == (3, 96, 96) and image.dtype == torch.float32
    assert image.min() == -1 and image.max() == 1
    assert label in (0, 1)
    x, y = ds.tensors()
    assert x.shape == (10, 3, 96, 96) and torch.equal(x[3], image) and len(ds) == 10
    assert torch.equal(y, ds.labels) and int(y[3]) == int(label)
    assert repr(ds) == "ArrowPointing(10, image_size=96, seed=0, protocol='half')"
    assert ArrowPointing(2, 192, seed=0, protocol="paper", channels=1)[0][0].shape == (
        1, 192, 192
    )  # fmt: skip


def test_bad_input():
    with pytest.raises(ValueError, match="protocol"):
        generate_arrow_pointing(2, 96, 0, protocol="third")
    with pytest.raises(ValueError, match="image_size"):
        generate_arrow_pointing(2, 64, 0)
    with pytest.raises(TypeError, match="num_samples"):
        generate_arrow_pointing(2.0, 96, 0)
    with pytest.raises(ValueError, match="seed"):
        generate_arrow_pointing(2, 96, -1)
    assert generate_arrow_pointing(0, 96, 0)[0].shape == (0, 96, 96)


@pytest.mark.parametrize("protocol, widths", [("paper", {2, 3}), ("half", {2})])
def test_arrow_widths_of_each_protocol(protocol, widths, monkeypatch):
    """The paper's generator draws ``int(U(2, 4))``: widths 2 and 3 both occur."""
    import graphseq.datasets.arrow_pointing as ap

    seen = set()
    segment = ap._segment_mask

    def spy(px, py, x0, y0, x1, y1, width):
        seen.add(width)
        return segment(px, py, x0, y0, x1, y1, width)

    monkeypatch.setattr(ap, "_segment_mask", spy)
    size = 192 if protocol == "paper" else 96
    ArrowPointing(40, size, seed=0, protocol=protocol, channels=1).tensors()
    assert seen == widths


def test_numpy_integer_seed():
    """A seed from numpy (np.arange, an array of seeds) was refused here but taken by every
    other generator (sbm, graph_tasks, continual); it gives the int seed's images."""
    x, y = generate_arrow_pointing(3, 96, np.arange(5)[2])
    x2, y2 = generate_arrow_pointing(3, 96, 2)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(TypeError, match="seed"):
        generate_arrow_pointing(2, 96, 1.0)


def test_images_of_neighbouring_seeds_are_not_shifted_copies():
    """Image i of seed s comes from default_rng([s, i]); a generator seeded with s + i would
    make image i + 1 of seed 0 image i of seed 1."""
    x0, _ = generate_arrow_pointing(3, 96, seed=0)
    x1, _ = generate_arrow_pointing(3, 96, seed=1)
    for i in range(2):
        assert not torch.equal(x0[i + 1], x1[i])
    assert torch.equal(x0[1], torch.from_numpy(_draw(0, 1, 96)[0]))
