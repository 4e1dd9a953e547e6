"""graphseq.continual.targets: parameter specs and functional targets against nn modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graphseq.continual import CNNTarget, GNNTarget, MLPTarget, ParamShape, ParamSpec
from graphseq.continual.targets import target_from_config


def test_param_spec_layout_and_split():
    target = MLPTarget(5, (7,), classes_per_head=3, num_heads=2)
    spec = target.param_spec
    assert [s.name for s in spec] == ["fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias"]
    assert [s.shape for s in spec] == [(7, 5), (7,), (6, 7), (6,)]
    assert spec.numel == 7 * 5 + 7 + 6 * 7 + 6
    assert spec.layer_sizes() == [42, 48]
    w = torch.arange(spec.numel, dtype=torch.float32)
    parts = spec.split(w)
    assert torch.equal(parts[1], torch.arange(35, 42, dtype=torch.float32))
    assert ParamSpec.from_config(spec.to_config()) == spec
    with pytest.raises(ValueError, match=r"shape \[90\]"):
        spec.split(torch.zeros(89))
    with pytest.raises(TypeError, match="ParamShape"):
        ParamSpec([("a", (1,), 0, 1)])
    with pytest.raises(ValueError, match="empty"):
        ParamSpec([])


@pytest.mark.parametrize(
    "layers", [[1, 1, 0, 0], [0, 0, 2, 2], [0, 1, 0, 1], [1, 1, 2, 2]], ids=str
)
def test_param_spec_rejects_layers_out_of_order(layers):
    # the hypernetworks read the flat vector layer by layer: an out-of-order spec would mix
    # the layers up without an error
    shapes = [ParamShape(f"l{i}.weight", (2, 3), ly, 3) for i, ly in enumerate(layers)]
    with pytest.raises(ValueError, match="in order"):
        ParamSpec(shapes)


def test_param_spec_rejects_a_fan_in_below_one():
    with pytest.raises(ValueError, match="fan_in"):
        ParamSpec([ParamShape("a.weight", (2, 0), 0, 0)])


def test_init_weights_match_pytorch_default_spread():
    spec = MLPTarget(400, (300,), 10).param_spec
    w = spec.init_weights(torch.Generator().manual_seed(0))
    first = spec.split(w)[0]
    bound = 1 / 400**0.5
    assert first.abs().max() <= bound and first.abs().max() > 0.95 * bound


def test_mlp_target_equals_sequential():
    torch.manual_seed(0)
    target = MLPTarget(6, (5, 4), classes_per_head=3, num_heads=2)
    ref = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 6))
    w = torch.cat([p.detach().flatten() for p in ref.parameters()])
    x = torch.randn(9, 6)
    torch.testing.assert_close(target(x, w), ref(x))
    assert target.head(target(x, w), 1).shape == (9, 3)
    with pytest.raises(ValueError, match="head"):
        target.head(target(x, w), 2)
    with pytest.raises(ValueError, match="6 features"):
        target(torch.randn(9, 5), w)
    with pytest.raises(ValueError, match="in_features"):
        MLPTarget(0)
    assert "P=" in repr(target)


def test_mlp_target_dropout_matches_sequential_in_both_modes():
    torch.manual_seed(0)
    target = MLPTarget(6, (5, 4), classes_per_head=3, num_heads=2, dropout=0.3)
    ref = nn.Sequential(
        nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.3), nn.Linear(5, 4), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(4, 6),
    )  # fmt: skip
    w = torch.cat([p.detach().flatten() for p in ref.parameters()])
    x = torch.randn(64, 6)
    # training mode: the same masks as nn.Dropout under the same generator state
    torch.manual_seed(1)
    got = target(x, w)
    torch.manual_seed(1)
    torch.testing.assert_close(got, ref(x))
    plain = MLPTarget(6, (5, 4), classes_per_head=3, num_heads=2)
    assert not torch.allclose(got, plain(x, w))
    # evaluation mode: deterministic and equal to the network without dropout
    target.eval()
    ref.eval()
    torch.testing.assert_close(target(x, w), plain(x, w))
    torch.testing.assert_close(target(x, w), ref(x))
    assert "dropout=0.3" in repr(target) and "dropout" not in repr(plain)
    assert target_from_config(target.config()).dropout == 0.3
    # checkpoints written before the option existed have no "dropout": no dropout
    old = {k: v for k, v in target.config().items() if k != "dropout"}
    assert target_from_config(old).dropout == 0.0


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, True, "0.2", None])
def test_mlp_target_rejects_bad_dropout(bad):
    with pytest.raises(ValueError, match="dropout"):
        MLPTarget(4, (3,), 2, dropout=bad)


def test_cnn_target_equals_conv_module():
    torch.manual_seed(0)
    target = CNNTarget(1, 9, channels=(3, 4), kernel_size=3, hidden=(5,), classes_per_head=2)
    ref = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 2),
    )  # fmt: skip
    w = torch.cat([p.detach().flatten() for p in ref.parameters()])
    assert w.numel() == target.param_spec.numel
    x = torch.randn(3, 1, 9, 9)
    torch.testing.assert_close(target(x, w), ref(x))
    torch.testing.assert_close(target(x.view(3, 81), w), ref(x))  # flat grey images
    with pytest.raises(ValueError, match="odd"):
        CNNTarget(1, 8, kernel_size=2)
    with pytest.raises(ValueError, match="too small"):
        CNNTarget(1, 2, channels=(2, 2))


def test_gnn_target_equals_pyg_gin():
    from torch_geometric.data import Batch, Data
    from torch_geometric.nn import GINConv, global_mean_pool

    torch.manual_seed(0)
    target = GNNTarget(3, hidden=4, num_layers=2, classes_per_head=2, num_heads=3)
    mlps = [nn.Sequential(nn.Linear(c, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU()) for c in (3, 4)]
    out = nn.Linear(4, 6)
    convs = [GINConv(m, eps=0.0) for m in mlps]
    w = torch.cat([p.detach().flatten() for m in [*mlps, out] for p in m.parameters()])
    graphs = [
        Data(x=torch.randn(4, 3), edge_index=torch.tensor([[0, 1, 2, 1], [1, 0, 1, 3]])),
        Data(x=torch.randn(3, 3), edge_index=torch.tensor([[0, 2], [2, 0]])),
        Data(x=torch.randn(1, 3), edge_index=torch.zeros(2, 0, dtype=torch.long)),
    ]
    b = Batch.from_data_list(graphs)
    h = b.x
    for conv in convs:
        h = conv(h, b.edge_index)
    ref = out(global_mean_pool(h, b.batch))
    torch.testing.assert_close(target(b, w), ref)
    with pytest.raises(ValueError, match="shape"):
        target(Batch.from_data_list([Data(x=torch.randn(2, 5), edge_index=b.edge_index[:, :0])]), w)


@pytest.mark.parametrize(
    "target",
    [MLPTarget(4, (3,), 2, 2), CNNTarget(2, 6, (3,), 3, (4,), 2, 2), GNNTarget(3, 5, 1, 2, 2)],
)
def test_target_config_round_trip(target):
    again = target_from_config(target.config())
    assert again.param_spec == target.param_spec and repr(again) == repr(target)


def test_param_shape_properties():
    s = ParamShape("fc0.bias", (7,), 0, 5)
    assert s.numel == 7 and s.is_bias


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: MLPTarget(64, hidden=100), "hidden"),
        (lambda: CNNTarget(1, 8, channels=8), "channels"),
        (lambda: CNNTarget(1, 8, hidden="64"), "hidden"),
    ],
)
def test_layer_sizes_must_be_sequences(make, name):
    with pytest.raises(TypeError, match=f"{name} must be a sequence of ints"):
        make()


@pytest.mark.parametrize("shape", [(-2, 3), (0, 3), (), (2.0, 3), (True, 3)])
def test_param_spec_refuses_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"fc\.weight has shape"):
        ParamSpec([ParamShape("fc.weight", shape, 0, 3)])


def test_mlp_target_on_an_empty_batch():
    t = MLPTarget(4, (3,), 2, num_heads=2)
    w = torch.randn(t.param_spec.numel)
    assert t(torch.zeros(0, 4), w).shape == (0, 4)
    assert t(torch.zeros(0, 2, 2), w).shape == (0, 4)  # flattened like a non-empty batch
    with pytest.raises(ValueError, match="x must have 4 features, got 5"):
        t(torch.zeros(0, 5), w)


def test_gnn_target_mean_pool_of_a_large_graph_in_float16():
    """A 3,000-node graph whose node states are ~30: the float16 sum overflowed (inf logits)
    although the mean is finite; the mean is summed in float32."""
    from torch_geometric.data import Batch, Data

    torch.manual_seed(0)
    n = 3000
    ei = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    big = Data(x=torch.rand(n, 4), edge_index=torch.cat([ei, ei.flip(0)], 1))
    small = Data(x=torch.rand(5, 4), edge_index=torch.tensor([[0, 1], [1, 0]]))
    batch = Batch.from_data_list([small, big])
    target = GNNTarget(4, hidden=8, num_layers=1)
    w = target.param_spec.init_weights(torch.Generator().manual_seed(0)).abs().mul(3).half()
    half = batch.clone()
    half.x = batch.x.half()
    full = half.clone()
    full.x = half.x.float()
    want, got = target(full, w.float()), target(half, w)
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2 * want.abs().max().item())
