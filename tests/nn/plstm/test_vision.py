"""PLSTMVision: shapes, resolutions, corner pooling, training signal, bad input."""

import pytest
import torch

from graphseq.nn.plstm import PLSTMVision

pytestmark = pytest.mark.usefixtures("one_thread")


def test_forward_any_resolution():
    torch.manual_seed(0)
    model = PLSTMVision(32, 8, 3, dim=16, heads=2, depth=1)
    assert repr(model) == (
        "PLSTMVision(image_size=32, patch_size=8, num_classes=3, dim=16, heads=2, depth=1)"
    )
    assert [b.plstm.mode for b in model.blocks] == ["P", "D"]
    for size in [(32, 32), (48, 64), (8, 40)]:
        out = model(torch.randn(2, 3, *size))
        assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_positional_embedding_is_interpolated():
    model = PLSTMVision(32, 8, 2, dim=8, heads=2, depth=1)
    with torch.no_grad():
        model.pos_embed.copy_(torch.arange(16.0).view(1, 1, 4, 4).expand(1, 8, 4, 4))
    images = torch.zeros(1, 3, 64, 64)
    tokens = model.embed(images)
    assert tokens.shape == (1, 8, 8, 8)
    base = model.patch_embed(images).permute(0, 2, 3, 1)
    pos = tokens - base
    # bicubic upsampling keeps the ramp's orientation: increasing along both axes
    assert (pos[0, 1:, :, 0] >= pos[0, :-1, :, 0] - 1e-5).all()
    assert (pos[0, :, 1:, 0] >= pos[0, :, :-1, 0] - 1e-5).all()
    no_pos = PLSTMVision(32, 8, 2, dim=8, heads=2, depth=1, use_pos_embed=False)
    assert no_pos.pos_embed is None


def test_positional_embedding_is_bicubic():
    """The documented resampling: bicubic, half-pixel centres (align_corners=False), to the
    token grid of any resolution, square or not; none at the training resolution."""
    torch.manual_seed(4)
    model = PLSTMVision(32, 8, 2, dim=8, heads=2, depth=1)
    for size in [(32, 32), (48, 48), (64, 40), (16, 24)]:
        images = torch.randn(1, 3, *size)
        pos = model.embed(images) - model.patch_embed(images).permute(0, 2, 3, 1)
        grid = (size[0] // 8, size[1] // 8)
        expected = torch.nn.functional.interpolate(
            model.pos_embed, size=grid, mode="bicubic", align_corners=False
        )
        torch.testing.assert_close(pos, expected.permute(0, 2, 3, 1).expand_as(pos))


def _head_input_and_tokens(model, images):
    """What the model's head receives, and the normed token grid computed step by step."""
    captured = {}
    hook = model.head.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    model(images)
    hook.remove()
    x = model.embed(images)
    for block in model.blocks:
        x = block(x)
    return captured["x"], model.norm(x)


def test_corner_pooling_reads_the_four_corners():
    torch.manual_seed(1)
    model = PLSTMVision(32, 8, 2, dim=8, heads=2, depth=1)
    head_input, x = _head_input_and_tokens(model, torch.randn(1, 3, 32, 32))
    expected = torch.cat([x[:, 0, 0], x[:, 0, -1], x[:, -1, 0], x[:, -1, -1]], -1)
    torch.testing.assert_close(head_input, expected)


def test_mean_pooling_reads_every_token():
    torch.manual_seed(3)
    model = PLSTMVision(32, 8, 2, dim=8, heads=2, depth=1, pooling="mean")
    assert repr(model).endswith("depth=1, pooling='mean')")
    assert model.head.in_features == 8
    head_input, x = _head_input_and_tokens(model, torch.randn(2, 3, 32, 48))
    torch.testing.assert_close(head_input, x.mean((1, 2)))
    with pytest.raises(ValueError, match="pooling"):
        PLSTMVision(32, 8, 2, pooling="max")


def test_learns_a_toy_task():
    """Is the bright square in the top-left or the bottom-right quadrant?"""
    torch.manual_seed(2)
    n = 32
    labels = torch.randint(0, 2, (n,))
    images = torch.zeros(n, 1, 16, 16)
    for i in range(n):
        r = 2 if labels[i] == 0 else 10
        images[i, 0, r : r + 4, r : r + 4] = 1.0
    model = PLSTMVision(16, 4, 2, in_channels=1, dim=16, heads=2, depth=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (model(images).argmax(-1) == labels).float().mean() > 0.9


def test_reset_parameters():
    model = PLSTMVision(16, 4, 2, dim=8, heads=2, depth=2)
    with torch.no_grad():
        model.blocks[0].plstm.source.linear.bias.fill_(3.0)
    model.reset_parameters()
    assert torch.allclose(model.blocks[0].plstm.source.linear.bias, torch.tensor(-4.0))
    # every parameter is re-initialised: the deterministic ones (gate biases and zero weights,
    # norm scales, zero q/k/v bias: equal under two seeds) come back exactly, random ones to
    # their init's range
    torch.manual_seed(1)
    other = dict(PLSTMVision(16, 4, 2, dim=16, heads=2, depth=2).named_parameters())
    torch.manual_seed(0)
    model = PLSTMVision(16, 4, 2, dim=16, heads=2, depth=2)
    fresh = {k: v.clone() for k, v in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(3.0 + torch.rand_like(p))
    model.reset_parameters()
    for name, p in model.named_parameters():
        f = fresh[name]
        if torch.equal(f, other[name]):
            assert torch.equal(p, f), name
        else:  # the perturbation added >= 3 everywhere; these inits stay within +-1.5
            assert p.abs().max() < 1.5, name
            if p.numel() >= 64:
                assert 0.5 < p.std() / f.std() < 2.0, name


def test_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        PLSTMVision(30, 8, 2)
    with pytest.raises(TypeError, match="dim"):
        PLSTMVision(32, 8, 2, dim=8.5)
    with pytest.raises(ValueError, match=r"PLSTMVision: heads \(4\) must divide dim \(10\)"):
        PLSTMVision(32, 8, 2, dim=10, heads=4)
    with pytest.raises(TypeError, match="PLSTMVision: gate_weight_std"):
        PLSTMVision(32, 8, 2, gate_weight_std="a")
    model = PLSTMVision(32, 8, 2, dim=8, heads=2, depth=1)
    with pytest.raises(ValueError, match="images must have shape"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="multiples of patch_size"):
        model(torch.randn(2, 3, 30, 32))
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"images has dtype torch\.float64"):
        model(torch.randn(2, 3, 32, 32, dtype=torch.float64))


def test_block_is_two_pre_norm_residuals_with_their_own_norms():
    """PLSTMVisionBlock: x + PLSTM2D(norm1(x)), then x + MLP(norm2(x)); the two norms hold
    different (trained) scales."""
    from graphseq.nn.plstm.vision import PLSTMVisionBlock

    torch.manual_seed(0)
    block = PLSTMVisionBlock(8, 2, "P").double()
    with torch.no_grad():
        block.norm1.weight.uniform_(0.5, 1.5)
        block.norm2.weight.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 4, 8, dtype=torch.float64)
    y = x + block.plstm(block.norm1(x))
    torch.testing.assert_close(block(x), y + block.mlp(block.norm2(y)))
