"""The registered GSM-family models and anchors: build from an InputSpec, forward on tokenized
batches at node and graph level, hyperparameter errors, a short fit through the trainer."""

import pytest
import torch
from torch_geometric.data import Batch, Data

import graphseq.models.gsm  # noqa: F401  (registers the models)
from graphseq.models import InputSpec, build_model, get_model
from graphseq.train.benchmarks_gsm import gsm_transform, weighted_cross_entropy

NAMES = ("gsm", "gsm++", "gps", "gat", "sage")
TRANSFORM = gsm_transform(k=2, levels=8)


def _batch(edge_dim=None):
    gen = torch.Generator().manual_seed(0)
    graphs = []
    for n in (7, 5, 9):
        ei = torch.randint(0, n, (2, 3 * n), generator=gen)
        d = Data(x=torch.randn(n, 4, generator=gen), edge_index=ei, y=torch.tensor([1.0]))
        if edge_dim:
            d.edge_attr = torch.randn(ei.size(1), edge_dim, generator=gen)
        graphs.append(TRANSFORM(d))
    return Batch.from_data_list(graphs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("level", ["node", "graph"])
def test_build_and_forward(name, level):
    spec = InputSpec(level, 3, "dense", 4)
    kwargs = {"hidden": 16}
    if name in ("gsm", "gsm++"):
        kwargs["hpe_levels"] = 8
    model = build_model(name, spec, **kwargs)
    out = model(_batch())
    assert out.shape == ((21, 3) if level == "node" else (3, 3))
    out.sum().backward()
    assert get_model(name).levels == ("graph", "node")
    assert repr(model).startswith(type(model).__name__)


def test_edge_features_and_variants():
    """Dense edge features reach the output of every variant, and attn_type selects the
    attention (3 s on one thread: not slow; it was the only test of these options, and
    checked shapes only, so ignored edge features or attn_type passed)."""
    from torch_geometric.nn.attention import PerformerAttention

    spec = InputSpec("graph", 1, "dense", 4, "dense", 2)
    batch = _batch(edge_dim=2)
    other = batch.clone()
    other.edge_attr = torch.randn(batch.edge_attr.shape, generator=torch.Generator().manual_seed(1))
    for name, kwargs in (("gsm", {"local": "gine"}), ("gps", {"local": "gine"}), ("gps", {}),
                         ("gps", {"attn_type": "performer"})):  # fmt: skip
        kwargs = dict(kwargs, hidden=16)
        if name == "gsm":
            kwargs["hpe_levels"] = 8
        model = build_model(name, spec, **kwargs).eval()
        with torch.no_grad():
            out = model(batch)
            assert out.shape == (3, 1)
            if kwargs.get("attn_type") != "performer":  # its random features: not comparable
                assert not torch.allclose(model(other), out), (name, kwargs)
        if name == "gps":
            performer = kwargs.get("attn_type") == "performer"
            for conv in model.convs:
                assert isinstance(conv.attn, PerformerAttention) == performer


def test_bad_hyperparameters():
    spec = InputSpec("graph", 1, "dense", 4)
    with pytest.raises(TypeError, match="unknown hyperparameters"):
        build_model("gsm++", spec, width=3)
    for name in ("dropout", "attn_dropout"):
        for bad in (-1.0, 1.0, True):
            with pytest.raises(ValueError, match=rf"GPS: {name} must be a number in \[0, 1\)"):
                build_model("gps", spec, hidden=8, heads=2, **{name: bad})
    with pytest.raises(ValueError, match="dense node features"):
        build_model("gsm", InputSpec("graph", 1, "ogb-atom"))
    with pytest.raises(ValueError, match="local"):
        build_model("gps", spec, local="gcn")
    with pytest.raises(ValueError, match="attn_type"):
        build_model("gps", spec, attn_type="bigbird")
    with pytest.raises(ValueError, match="divide"):
        build_model("gat", spec, hidden=10, heads=4)
    for name in ("gps", "sage"):
        with pytest.raises(ValueError, match=r"pool must be one of \('mean', 'sum'\)"):
            build_model(name, spec, pool="max")
        with pytest.raises(TypeError, match="hidden must be an int"):
            build_model(name, spec, hidden=8.5)
    with pytest.raises(ValueError, match=r"GPS: heads \(4\) must divide hidden \(10\)"):
        build_model("gps", spec, hidden=10, heads=4)
    with pytest.raises(ValueError, match="GPS: pe_dim"):
        build_model("gps", spec, pe="lap_pe")
    with pytest.raises(ValueError, match=r"GPS: pe_dim .* given without pe"):
        build_model("gps", spec, pe_dim=3)
    # --model-arg tokenizations=hac_dfs,khop gives a string; it was split into letters ('h')
    with pytest.raises(TypeError, match=r"tokenizations must be a sequence of names, got the"):
        build_model("gsm++", spec, tokenizations="hac_dfs,khop")


def test_gps_reset_parameters_resets_the_attention_output_map():
    """MultiheadAttention's own reset leaves out_proj.weight alone; GPS's reset does not."""
    model = build_model("gps", InputSpec("graph", 1, "dense", 4), hidden=16)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)
    model.reset_parameters()
    assert [n for n, p in model.named_parameters() if bool((p == 7.0).all())] == []


def test_weighted_cross_entropy():
    out = torch.randn(6, 2)
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    w = torch.tensor([2 / 6, 4 / 6])
    ref = torch.nn.functional.cross_entropy(out, y, weight=w)
    torch.testing.assert_close(weighted_cross_entropy(out, y), ref)
    # a class absent from the batch gets no weight and no NaN
    assert torch.isfinite(weighted_cross_entropy(torch.randn(3, 3), torch.tensor([0, 0, 1])))


def test_baselines_gat_sep_and_depth():
    spec = InputSpec("node", 1, "dense", 4)
    batch = _batch()
    plain = build_model("gat", spec, hidden=8, layers=2, heads=2)
    sep = build_model("gat", spec, hidden=8, layers=2, heads=2, sep=True)
    assert not plain.sep and plain.blocks[0].root is None and plain.blocks[0].conv.add_self_loops
    assert sep.sep and sep.blocks[0].root is not None and not sep.blocks[0].conv.add_self_loops
    for model in (plain, sep):
        out = model(batch)
        assert out.shape == (21, 1)
        out.sum().backward()
        assert model.blocks[1].conv.lin.weight.grad.abs().sum() > 0
    assert repr(sep).endswith("sep=True)") and "sep" not in repr(plain)
    assert not build_model("sage", spec, hidden=8, layers=2).sep
    with pytest.raises(ValueError, match="layers"):
        build_model("sage", spec, layers=0)


def test_gsm_plus_plus_recipe_options_through_the_registry():
    spec = InputSpec("node", 1, "dense", 4)
    model = build_model("gsm++", spec, hidden=8, layers=1, local="sage", local_layers=3,
                        global_hidden=4, global_dropout=0.0, dropout=0.2, attention=False,
                        hpe_levels=8)  # fmt: skip
    assert model.local_layers == 3 and model.global_hidden == 4 and model.global_dropout == 0.0
    assert model(_batch()).shape == (21, 1)
    with pytest.raises(ValueError, match="local"):
        build_model("gsm++", spec, local="gcn", hpe_levels=8)
    model = build_model("gsm++", spec, hidden=8, layers=1, hpe_levels=8, local_norm_sum=True)
    assert model.local_norm_sum and model.locals[0].norm_sum


def test_wrong_input_widths_are_named():
    """A batch whose x, edge_attr or pe width disagrees with the spec fails naming the
    attribute, not inside a matrix product."""
    ei = torch.tensor([[0, 1, 2], [1, 2, 0]])
    narrow = TRANSFORM(Data(x=torch.randn(3, 3), edge_index=ei))
    spec = InputSpec("graph", 2, "dense", node_dim=4)
    for name in ("gps", "gat", "sage", "gsm", "gsm++"):
        model = build_model(name, spec, hidden=8)
        with pytest.raises(ValueError, match=r"x must have shape"):
            model(Batch.from_data_list([narrow]))
    spec_e = InputSpec("graph", 2, "dense", node_dim=4, edge_features="dense", edge_dim=2)
    wide_e = TRANSFORM(Data(x=torch.randn(3, 4), edge_index=ei, edge_attr=torch.randn(3, 3)))
    for name in ("gps", "gsm", "gsm++"):
        model = build_model(name, spec_e, hidden=8)
        with pytest.raises(ValueError, match=r"edge_attr must have shape"):
            model(Batch.from_data_list([wide_e]))
    gps = build_model("gps", spec, hidden=8, pe="lap_pe", pe_dim=2)
    with_pe = Data(x=torch.randn(3, 4), edge_index=ei, lap_pe=torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"batch\.lap_pe must have shape \[3, pe_dim = 2\]"):
        gps(Batch.from_data_list([with_pe]))
    # a vector x still counts as one column
    one = build_model("gps", InputSpec("graph", 2, "dense", node_dim=1), hidden=8)
    assert one(Batch.from_data_list([Data(x=torch.randn(3), edge_index=ei)])).shape == (1, 2)


def test_repr_shows_every_non_default_argument():
    """dropout, attn_dropout, pool and pe_dim change a model's outputs or parameters, so they
    show in its repr when they are not the default."""
    from graphseq.models.gsm import GPS, GNNBaseline
    from graphseq.models.plstm import PLSTMGraphNet

    spec = InputSpec("graph", 1, "dense", 4)
    gps = repr(GPS(spec, hidden=8))
    for kwargs in (dict(dropout=0.1), dict(attn_dropout=0.1), dict(pool="sum")):
        assert repr(GPS(spec, hidden=8, **kwargs)) != gps, kwargs
    assert repr(GPS(spec, hidden=8, pe="lap_pe", pe_dim=2)) != repr(
        GPS(spec, hidden=8, pe="lap_pe", pe_dim=5)
    )
    assert repr(GNNBaseline(spec, pool="sum")) != repr(GNNBaseline(spec))
    assert repr(GNNBaseline(spec, conv="gat", pool="sum", sep=True)).endswith(
        "pool='sum', sep=True)"
    )
    assert repr(PLSTMGraphNet(spec, hidden=8, mlp_ratio=4)) != repr(PLSTMGraphNet(spec, hidden=8))
