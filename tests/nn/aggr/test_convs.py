"""graphseq aggregations inside PyG convolutions, and the resolver."""

from __future__ import annotations

import pytest
import torch
from torch_geometric import EdgeIndex
from torch_geometric.nn import GINConv, GraphConv, MessagePassing, SAGEConv
from torch_geometric.nn.aggr import LCMAggregation as PyGLCMAggregation
from torch_geometric.nn.aggr import MaxAggregation, MultiAggregation, SumAggregation

from graphseq.nn.aggr import (
    AGGREGATIONS,
    LCMAggregation,
    RecurrentAggregation,
    aggregation_resolver,
)

C = 8


def make_aggr(kind: str):
    if kind == "lcm":
        return LCMAggregation(C, C)
    if kind == "lcm_mlp":
        return LCMAggregation(C, C, cell="mlp")
    return RecurrentAggregation(C, C, cell=kind)


KINDS = ("lcm", "lcm_mlp", "gru", "lstm")


class EdgeMessages(MessagePassing):
    """A custom layer: messages x_j + edge features, aggregated by ``aggr``."""

    def __init__(self, aggr) -> None:
        super().__init__(aggr=aggr)

    def forward(self, x, edge_index, edge_attr):
        return self.propagate(edge_index, x=x, edge_attr=edge_attr)

    def message(self, x_j, edge_attr):
        return x_j + edge_attr


def graph():
    torch.manual_seed(0)
    x = torch.randn(7, C)
    # unsorted by destination; node 6 has no incoming edge, node 0 has many
    edge_index = torch.tensor(
        [[1, 2, 3, 0, 4, 5, 1, 2, 3, 4, 5, 0], [0, 0, 2, 1, 0, 3, 4, 5, 0, 2, 0, 5]]
    )
    return x, edge_index


def stable_sorted(edge_index):
    order = torch.sort(edge_index[1], stable=True)[1]
    return edge_index[:, order], order


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("conv_name", ["gin", "sage", "graph", "custom"])
def test_inside_convs(kind, conv_name):
    x, edge_index = graph()
    aggr = make_aggr(kind)
    if conv_name == "gin":
        conv = GINConv(torch.nn.Linear(C, C), aggr=aggr)
    elif conv_name == "sage":
        conv = SAGEConv(C, 5, aggr=aggr)
    elif conv_name == "graph":
        conv = GraphConv(C, 5, aggr=aggr)
    else:
        conv = EdgeMessages(aggr)
    edge_attr = torch.randn(edge_index.size(1), C)
    args = (edge_attr,) if conv_name == "custom" else ()
    out = conv(x, edge_index, *args)
    assert out.shape[0] == 7 and not out.isnan().any()
    # the unsorted edge_index gives the result of a stable sort by destination
    sorted_ei, order = stable_sorted(edge_index)
    sorted_args = (edge_attr[order],) if conv_name == "custom" else ()
    assert torch.equal(out, conv(x, sorted_ei, *sorted_args))
    # a sorted EdgeIndex makes MessagePassing pass ptr instead of index: same result
    ei = EdgeIndex(sorted_ei, sparse_size=(7, 7), sort_order="col")
    torch.testing.assert_close(conv(x, ei, *sorted_args), out, atol=1e-6, rtol=0)
    out.sum().backward()
    assert all(p.grad is not None for n, p in conv.named_parameters() if "identity" not in n)


@pytest.mark.parametrize("kind", KINDS)
def test_conv_output_is_the_aggregation(kind):
    x, edge_index = graph()
    aggr = make_aggr(kind)
    conv = GINConv(torch.nn.Identity(), eps=0.0, aggr=aggr)
    src, dst = edge_index
    expected = x + aggr(x[src], dst, dim_size=7)
    assert torch.equal(conv(x, edge_index), expected)
    # isolated node 6: x + identity (learned e for LCM, zeros for the RNN)
    empty = aggr(x[:0], dst[:0], dim_size=1)[0]
    assert torch.equal(conv(x, edge_index)[6], x[6] + empty)


def test_resolver():
    assert set(AGGREGATIONS) >= {"lcm", "recurrent", "recurrent_lstm", "lcm_mlp"}
    lcm = aggregation_resolver("lcm", 4, 4)
    assert type(lcm) is LCMAggregation
    assert type(aggregation_resolver("LCMAggregation", 4, 4)) is LCMAggregation
    assert aggregation_resolver("lcm-mlp", 4, 4).cell == "mlp"
    assert aggregation_resolver("recurrent_lstm", 4, 4).cell == "lstm"
    assert aggregation_resolver("Recurrent", 4, 4, order="random").order == "random"
    assert type(aggregation_resolver("sum")) is SumAggregation
    multi = aggregation_resolver(["lcm", "max"], 4, 4)
    assert isinstance(multi, MultiAggregation)
    assert [type(a) for a in multi.aggrs] == [LCMAggregation, MaxAggregation]
    assert aggregation_resolver(lcm) is lcm
    with pytest.raises(ValueError, match="unknown aggregation 'median_of_three'"):
        aggregation_resolver("median_of_three")
    # as aggr= of a convolution
    conv = SAGEConv(4, 4, aggr=aggregation_resolver("lcm", 4, 4))
    x, edge_index = torch.randn(3, 4), torch.tensor([[0, 1, 2], [1, 2, 0]])
    assert conv(x, edge_index).shape == (3, 4)
    # a plain string given to PyG still means PyG's class
    assert (
        type(
            SAGEConv(
                4, 4, aggr="lcm", aggr_kwargs={"in_channels": 4, "out_channels": 4}
            ).aggr_module
        )
        is PyGLCMAggregation
    )


def test_resolver_keeps_pyg_constructor_errors():
    """A known PyG name with bad arguments gets PyG's error, not 'unknown aggregation'."""
    with pytest.raises(ValueError, match=r"`q` must be in the range"):
        aggregation_resolver("quantile", q=1.5)
    with pytest.raises(ValueError, match="unknown aggregation 'quantil'"):
        aggregation_resolver("quantil", q=0.5)


@pytest.mark.parametrize("kind", KINDS)
def test_non_tensor_inputs_are_named(kind):
    """PyG's __call__ used to meet these first: AttributeError / a message about dim."""
    aggr, x, index = make_aggr(kind), torch.randn(5, C), torch.tensor([0, 0, 1, 1, 2])
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor, got ndarray"):
        aggr(x.numpy(), index)
    with pytest.raises(TypeError, match=r"index must be a torch\.Tensor, got list"):
        aggr(x, index.tolist())
    with pytest.raises(ValueError, match="x must be two-dimensional"):
        aggr(torch.randn(5), index)


def test_resolver_refuses_kwargs_that_contradict_the_name():
    """'lcm_mlp' with cell='gru' (e.g. kwargs meant for another entry of a list) must not
    silently build a GRU-cell LCM; a matching value is fine."""
    for query in ("lcm_mlp", ["lcm_gru", "lcm_mlp"]):
        with pytest.raises(ValueError, match=r"means cell='mlp', but cell='gru'"):
            aggregation_resolver(query, 4, 4, cell="gru")
    with pytest.raises(ValueError, match=r"means cell='lstm'"):
        aggregation_resolver("recurrent_lstm", 4, 4, cell="gru")
    assert aggregation_resolver("lcm_mlp", 4, 4, cell="mlp").cell == "mlp"
    assert aggregation_resolver("lcm", 4, 4, cell="mlp").cell == "mlp"


def test_resolver_takes_both_class_names():
    """The class names resolve to graphseq's classes, as AGGREGATIONS' comment says."""
    assert type(aggregation_resolver("LCMAggregation", 4, 4)) is LCMAggregation
    assert type(aggregation_resolver("RecurrentAggregation", 4, 4)) is RecurrentAggregation
    assert type(aggregation_resolver("recurrent_aggregation", 4, 4)) is RecurrentAggregation
