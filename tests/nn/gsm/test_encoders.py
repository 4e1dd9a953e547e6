"""Local / global encoders and the hierarchical PE: packed sequences against per-sequence loop
references, masking, gradients, bad input."""

import math
import subprocess
import sys

import pytest
import torch
from torch_geometric.data import Data

from graphseq.nn import MoTRouter
from graphseq.nn.gsm import (
    AttentionLayer,
    HierarchicalPE,
    LocalEncoder,
    ScanLayer,
    SequenceEncoder,
    global_pattern,
)
from graphseq.nn.gsm.encoders import mean_adjacency, reverse_index, uniform_length

CU = torch.tensor([0, 5, 5, 12, 13, 20])  # lengths 5, 0 (empty), 7, 1, 7


def _rnn_loop(rnn, x):
    """GatedLinearRNN's recurrence, one step at a time, on one sequence x [T, D]."""
    h = rnn.init_state(1)
    ys = []
    for t in range(x.size(0)):
        y, h = rnn.step(x[t : t + 1], h)
        ys.append(y)
    return torch.cat(ys) if ys else x[:0]


def test_reverse_index():
    rev = reverse_index(CU)
    assert rev.tolist() == [4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 5, 12, 19, 18, 17, 16, 15, 14, 13]
    assert torch.equal(rev[rev], torch.arange(20))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_scan_layer_matches_loop_per_sequence(bidirectional):
    layer = ScanLayer(6, bidirectional=bidirectional).double()
    x = torch.randn(20, 6, dtype=torch.float64)
    out = layer(x, CU)
    for a, b in zip(CU[:-1].tolist(), CU[1:].tolist(), strict=True):
        seq = layer.norm(x[a:b])
        ref = _rnn_loop(layer.forward_rnn, seq)
        if bidirectional:
            ref = ref + _rnn_loop(layer.backward_rnn, seq.flip(0)).flip(0)
        torch.testing.assert_close(out[a:b], x[a:b] + ref)


def test_attention_layer_matches_per_sequence_softmax():
    layer = AttentionLayer(8, heads=2).double()
    x = torch.randn(20, 8, dtype=torch.float64)
    out = layer(x, CU)
    for a, b in zip(CU[:-1].tolist(), CU[1:].tolist(), strict=True):
        if a == b:
            continue
        h = layer.norm(x[a:b])
        q, k, v = layer.qkv(h).view(b - a, 3, 2, 4).permute(1, 2, 0, 3)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), -1)
        ref = layer.out((w @ v).transpose(0, 1).reshape(b - a, 8))
        torch.testing.assert_close(out[a:b], x[a:b] + ref)
    # no sequence sees another: changing one leaves the rest unchanged
    x2 = x.clone()
    x2[5:12] += 1.0
    out2 = layer(x2, CU)
    torch.testing.assert_close(out2[:5], out[:5])
    torch.testing.assert_close(out2[12:], out[12:])


def test_sequence_encoder_patterns_and_gradcheck():
    assert global_pattern("hybrid", 3) == "MMT" and global_pattern("hybrid", 1) == "T"
    assert global_pattern("ssm", 2) == "MM" and global_pattern("transformer", 2) == "TT"
    with pytest.raises(ValueError, match="global_pattern: kind"):
        global_pattern("mamba", 2)
    enc = SequenceEncoder(2, "MT", heads=1).double()
    assert repr(enc) == "SequenceEncoder(2, pattern='MT', heads=1)"
    cu = torch.tensor([0, 2, 2, 5])
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: enc(t, cu), (x,))
    empty = torch.zeros(0, 2, dtype=torch.float64)
    assert enc(empty, torch.tensor([0, 0])).shape == (0, 2)
    with pytest.raises(ValueError, match="pattern"):
        SequenceEncoder(4, "MX")


def test_scan_is_order_sensitive_attention_is_not():
    x = torch.randn(6, 8)
    cu = torch.tensor([0, 6])
    perm = torch.randperm(6)
    att = AttentionLayer(8, 2)
    torch.testing.assert_close(att(x[perm], cu), att(x, cu)[perm])
    scan = ScanLayer(8)
    assert not torch.allclose(scan(x[perm], cu), scan(x, cu)[perm])


def test_hierarchical_pe():
    pe = HierarchicalPE(8, levels=3, max_children=2)
    child = torch.tensor([[0, 0, 1], [0, 1, 5]])
    size = torch.tensor([[10, 4, 2], [10, 6, 1]])
    out = pe(child, size)
    rel = torch.log1p(size.float()) / math.log(11.0)
    ref = (
        pe.child.weight[torch.tensor([0, 2, 5])].sum(0, keepdim=True).expand(1, 8),
        pe.child.weight[torch.tensor([0, 3, 5])].sum(0, keepdim=True),  # rank 5 clipped to 1
    )
    torch.testing.assert_close(out, torch.cat(ref) + pe.size(rel))
    with pytest.raises(ValueError, match="levels=3"):
        pe(child[:, :2], size[:, :2])
    assert repr(pe) == "HierarchicalPE(8, levels=3, max_children=2)"


@pytest.mark.parametrize(
    "conv, edge_dim",
    [("gatedgcn", None), ("gatedgcn", 3), ("gine", None), ("gine", 3), ("none", None)],
)
def test_local_encoder(conv, edge_dim):
    enc = LocalEncoder(8, conv, edge_dim, norm="layer")
    data = Data(x=torch.randn(5, 8), edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]))
    attr = torch.randn(3, 3) if edge_dim else None
    out = enc(data.x, data.edge_index, attr)
    assert out.shape == (5, 8)
    if conv == "none":
        assert torch.equal(out, data.x)
    else:
        # node 4 has no neighbours: only its own transform changes it
        assert not torch.equal(out[:4], data.x[:4])
    if edge_dim:
        with pytest.raises(ValueError, match="edge_attr"):
            enc(data.x, data.edge_index)
    with pytest.raises(ValueError, match="conv"):
        LocalEncoder(8, "gcn")


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: ScanLayer(0), ValueError, "channels"),
        (lambda: ScanLayer(4, dropout=1.0), ValueError, "dropout"),
        (lambda: AttentionLayer(6, heads=4), ValueError, "divide"),
        (lambda: AttentionLayer(6, heads=2.0), TypeError, "heads"),
        (lambda: HierarchicalPE(4, 0), ValueError, "levels"),
        (lambda: LocalEncoder(4, norm="group"), ValueError, "norm"),
    ],
)
def test_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_reprs():
    assert repr(ScanLayer(4, bidirectional=False)) == "ScanLayer(4, bidirectional=False)"
    assert repr(AttentionLayer(4, 2)) == "AttentionLayer(4, heads=2)"
    assert repr(LocalEncoder(4)) == "LocalEncoder(4, conv='gatedgcn', edge_dim=None, norm='batch')"
    # every argument that changes the layer shows when it is not the default
    assert repr(ScanLayer(4, dropout=0.5)) == "ScanLayer(4, bidirectional=True, dropout=0.5)"
    assert repr(AttentionLayer(4, 2, dropout=0.1, attn_dropout=0.2)) == (
        "AttentionLayer(4, heads=2, dropout=0.1, attn_dropout=0.2)"
    )
    assert repr(LocalEncoder(4, dropout=0.5)).endswith("norm='batch', dropout=0.5)")
    assert repr(SequenceEncoder(4, "MT", heads=2, bidirectional=False, dropout=0.1,
                                attn_dropout=0.2)) == (
        "SequenceEncoder(4, pattern='MT', heads=2, bidirectional=False, dropout=0.1, "
        "attn_dropout=0.2)"
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# equal-length sequences: the batched path of ScanLayer / SequenceEncoder


def test_uniform_length():
    assert uniform_length(torch.tensor([0, 3, 6, 9]), 9) == 3
    assert uniform_length(CU, 20) is None  # lengths 5, 0, 7, 1, 7
    assert uniform_length(torch.tensor([0, 0, 0]), 0) is None  # only empty sequences
    assert uniform_length(torch.tensor([0]), 0) is None  # no sequences


@pytest.mark.parametrize("bidirectional", [False, True])
def test_scan_layer_batched_equals_packed(bidirectional):
    layer = ScanLayer(6, bidirectional=bidirectional).double()
    x = torch.randn(4 * 5, 6, dtype=torch.float64, requires_grad=True)
    cu = torch.arange(5) * 5
    packed = layer(x, cu)
    batched = layer(x.view(4, 5, 6))
    torch.testing.assert_close(batched.reshape(-1, 6), packed)
    (g_packed,) = torch.autograd.grad(packed.pow(2).sum(), x)
    (g_batched,) = torch.autograd.grad(batched.pow(2).sum(), x)
    torch.testing.assert_close(g_batched, g_packed)
    with pytest.raises(ValueError, match=r"\[S, T, D\]"):
        layer(x)


def test_sequence_encoder_takes_the_batched_path_only_for_equal_lengths(monkeypatch):
    enc = SequenceEncoder(6, "MT", heads=2).double().eval()
    x = torch.randn(12, 6, dtype=torch.float64)
    cu = torch.tensor([0, 4, 8, 12])
    out = enc(x, cu)
    # the same layers on the packed path (as for unequal lengths) give the same result
    monkeypatch.setattr("graphseq.nn.gsm.encoders.uniform_length", lambda cu, total: None)
    torch.testing.assert_close(enc(x, cu), out)


# --------------------------------------------------------------------------------------------
# SAGE / GAT-sep local encoders, pre-norm blocks


def _graph(n=6, gen_seed=0):
    gen = torch.Generator().manual_seed(gen_seed)
    ei = torch.randint(0, n, (2, 14), generator=gen)
    ei = ei[:, ei[0] != ei[1]]
    return torch.randn(n, 8, generator=gen, dtype=torch.float64), ei


def test_sage_local_encoder_is_the_prenorm_sage_block():
    x, ei = _graph()
    enc = LocalEncoder(8, "sage", norm="layer", prenorm=True, act="gelu").double()
    h = enc.norm(x)
    deg = torch.bincount(ei[1], minlength=6).clamp(min=1).unsqueeze(1)
    mean = torch.zeros_like(h).index_add_(0, ei[1], h[ei[0]]) / deg
    ref = x + torch.nn.functional.gelu(enc.conv.lin_l(mean) + enc.conv.lin_r(h))
    torch.testing.assert_close(enc(x, ei), ref)
    # the sparse adjacency gives the same layer (and is what the models pass)
    torch.testing.assert_close(enc(x, mean_adjacency(ei, 6, torch.float64)), ref)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: enc(t, mean_adjacency(ei, 6, torch.float64)), (x,))


def test_mean_adjacency_of_an_int32_edge_index_above_46341_nodes():
    """The row key target * num_nodes + source must not overflow int32 (a wrong row order
    under is_coalesced=True puts neighbours on other rows)."""
    from torch_geometric.utils import spmm

    n = 50_000
    ei = torch.tensor([[0, 1, 2, 3], [49_999, 49_998, 5, 49_999]])
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    want = spmm(mean_adjacency(ei, n), x, reduce="mean")
    got = spmm(mean_adjacency(ei.int(), n), x, reduce="mean")
    torch.testing.assert_close(got, want)
    assert got[[5, 49_998, 49_999], 0].tolist() == [2.0, 1.0, 1.5]


def test_sage_local_encoder_takes_a_sparse_adjacency_after_a_module_aggregation(tmp_path):
    """PyG 2.8 renders SAGEConv's propagate once per process with the first instance's fuse
    flag; after a SAGEConv with graphseq's LCM aggregation (not fusable) PyG's own SAGEConv
    refuses a sparse adjacency. The encoder must not: a fresh process, that order."""
    code = """
import torch
from torch_geometric.nn import SAGEConv
from graphseq.nn.aggr import LCMAggregation
from graphseq.nn.gsm.encoders import LocalEncoder, mean_adjacency
x, ei = torch.randn(5, 4), torch.tensor([[0, 1, 2, 3, 4, 0], [1, 2, 3, 4, 0, 2]])
SAGEConv(4, 4, aggr=LCMAggregation(4, 4))(x, ei)  # renders the template unfused
enc = LocalEncoder(4, "sage")
torch.testing.assert_close(enc(x, mean_adjacency(ei, 5)), enc(x, ei))
try:
    SAGEConv(4, 4)(x, mean_adjacency(ei, 5))
    print("pyg-fixed")
except NotImplementedError:
    print("pyg-refuses")
"""
    # run outside the repository: its graphseq/ folder would shadow the installed package
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() in ("pyg-refuses", "pyg-fixed")


@pytest.mark.parametrize("sep", [True, False])
def test_gat_local_encoder(sep):
    x, ei = _graph()
    enc = LocalEncoder(8, "gat", heads=2, sep=sep, norm="none").double()
    out = enc(x, ei)
    conv = enc.conv(x, ei)
    ref = x + torch.relu(conv + enc.root(x) if sep else conv)
    torch.testing.assert_close(out, ref)
    assert enc.conv.add_self_loops is (not sep)
    isolated = torch.ones(6, dtype=torch.bool)
    isolated[ei[1]] = False
    if sep and isolated.any():  # GAT-sep: a node without neighbours keeps only its root map
        torch.testing.assert_close(out[isolated], x[isolated] + torch.relu(enc.root(x[isolated])))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: enc(t, ei), (x,))
    for p in enc.parameters():
        p.data.add_(1.0)
    perturbed = [p.detach().clone() for p in enc.parameters()]
    enc.reset_parameters()  # every parameter (the root map included) is re-initialised
    assert all(not torch.equal(a, b) for a, b in zip(perturbed, enc.parameters(), strict=True))
    assert (
        repr(enc) == f"LocalEncoder(8, conv='gat', edge_dim=None, norm='none', heads=2, sep={sep})"
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"conv": "sage", "edge_dim": 3}, "edge features"),
        ({"conv": "gat", "heads": 3}, "divide"),
        ({"act": "tanh"}, "act"),
        ({"heads": 0}, "heads"),
    ],
)
def test_local_encoder_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocalEncoder(8, **kwargs)


# --------------------------------------------------------------------------------------------
# norm_sum: GPSConv's local branch


@pytest.mark.parametrize("conv", ["gatedgcn", "gine"])
def test_norm_sum_local_encoder_is_gpsconv_local_branch(conv):
    """BN(x + Dropout(Conv(x))) with PyG's convolution and torch's BatchNorm1d: the same layer,
    in training mode (batch statistics) and in evaluation mode (running statistics)."""
    torch.manual_seed(0)
    x, ei = _graph()
    enc = LocalEncoder(8, conv, norm="batch", norm_sum=True).double()
    bn = torch.nn.BatchNorm1d(8).double()
    with torch.no_grad():
        for p in (enc.norm.weight, enc.norm.bias):
            p.uniform_(0.5, 1.5)
        bn.weight.copy_(enc.norm.weight)
        bn.bias.copy_(enc.norm.bias)
    enc.train(), bn.train()
    ref = bn(x + enc.conv(x, ei))
    out = enc(x, ei)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(enc.norm.running_mean, bn.running_mean)
    enc.eval(), bn.eval()
    torch.testing.assert_close(enc(x, ei), bn(x + enc.conv(x, ei)))
    xg = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: enc(t, ei), (xg,))
    assert "norm_sum=True" in repr(enc)


def test_norm_sum_without_norm_is_the_plain_residual_sum():
    x, ei = _graph()
    enc = LocalEncoder(8, norm="none", norm_sum=True, dropout=0.5).double().eval()
    torch.testing.assert_close(enc(x, ei), x + enc.conv(x, ei))
    # its update is signed; the default form's, ReLU(...), never falls below the input
    assert (enc(x, ei) < x).any()
    default = LocalEncoder(8, norm="none").double().eval()
    default.load_state_dict(enc.state_dict())
    assert (default(x, ei) >= x).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"prenorm": True}, "prenorm"), ({"act": "gelu"}, "act='gelu'")],
)
def test_norm_sum_refuses_options_it_would_ignore(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocalEncoder(8, norm_sum=True, **kwargs)


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_local_encoder_none_has_no_unused_parameters(norm):
    # an unused norm stops DistributedDataParallel at its second step
    enc = LocalEncoder(8, "none", norm=norm)
    assert list(enc.parameters()) == []
    x = torch.randn(4, 8)
    assert torch.equal(enc(x, torch.zeros(2, 0, dtype=torch.long)), x)
    # a state dict that still holds the unused norm loads strictly
    old = {"norm.weight": torch.ones(8), "norm.bias": torch.zeros(8)}
    enc.load_state_dict(old)


@pytest.mark.parametrize(
    "name, call",
    [
        ("ScanLayer", lambda: ScanLayer(8).double()(torch.randn(5, 8), torch.tensor([0, 2, 5]))),
        ("AttentionLayer",
         lambda: AttentionLayer(8, 2).double()(torch.randn(5, 8), torch.tensor([0, 2, 5]))),
        ("LocalEncoder",
         lambda: LocalEncoder(8).double()(torch.randn(3, 8), torch.tensor([[0, 1], [1, 2]]))),
        ("MoTRouter",
         lambda: MoTRouter(8, 2, 1).double()(torch.randn(3, 8).double(), [torch.randn(3, 8)] * 2)),
    ],
)  # fmt: skip
def test_dtype_mismatch_is_named(name, call):
    with pytest.raises(ValueError, match=rf"{name}: .* has dtype torch.float32 but the layer"):
        call()


@pytest.mark.parametrize(
    "make",
    [
        lambda: AttentionLayer(4, 2),
        lambda: ScanLayer(4),
        lambda: SequenceEncoder(4, "T", heads=2),
        lambda: SequenceEncoder(4, "MT", heads=2),
    ],
)
@pytest.mark.parametrize(
    "cu",
    [torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5]), torch.tensor([0, 3, 2, 5])],
)
def test_packed_mixers_name_a_cu_seqlens_that_does_not_describe_x(make, cu):
    layer = make()
    with pytest.raises(ValueError, match=rf"{type(layer).__name__}: cu_seqlens .* x.size\(0\) = 5"):
        layer(torch.randn(5, 4), cu)
    with pytest.raises(TypeError, match="cu_seqlens must be an int32/int64"):
        layer(torch.randn(5, 4), cu.float())


@pytest.mark.parametrize("conv", ["gatedgcn", "gine", "gat"])
def test_local_encoder_refuses_edge_attr_with_a_sparse_adjacency(conv):
    """edge_attr rows follow edge_index's columns; the sparse adjacency (mean_adjacency) stores
    the edges sorted by target, so the features went to other edges silently."""
    torch.manual_seed(0)
    ei = torch.tensor([[0, 1, 2, 3, 1], [3, 2, 1, 0, 0]])  # not sorted by target
    x, ea = torch.randn(4, 8), torch.randn(5, 2)
    enc = LocalEncoder(8, conv, edge_dim=2, norm="none", heads=2).eval()
    with pytest.raises(ValueError, match="edge_attr needs a dense edge_index"):
        enc(x, mean_adjacency(ei, 4), ea)
    # without edge features the sparse adjacency still gives the edge_index result
    plain = LocalEncoder(8, conv, norm="none", heads=2).eval()
    torch.testing.assert_close(plain(x, mean_adjacency(ei, 4)), plain(x, ei))
