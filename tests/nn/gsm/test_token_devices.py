"""A GSM model names a token attribute left on another device than x (what the tokenizers,
which store their tensors on the CPU, give for a graph moved to the GPU before tokenizing).
Checked with the model and the graph tensors on the meta device: no GPU needed."""

import pytest
import torch
from torch_geometric.data import Batch, Data

from graphseq.nn.gsm import HACTokenizer, KHopTokenizer, NodeTokenizer
from graphseq.nn.gsm.models import node_tokens, subgraph_tokens


def _batch():
    torch.manual_seed(0)
    data = []
    for n in (5, 4):
        ei = torch.randint(n, (2, 6))
        d = Data(x=torch.randn(n, 4), edge_index=torch.cat([ei, ei.flip(0)], 1))
        for t in (HACTokenizer(), KHopTokenizer(2), NodeTokenizer("degree")):
            d = t(d)
        data.append(d)
    b = Batch.from_data_list(data)
    for k in ("x", "edge_index", "batch", "ptr"):  # the graph on the device, tokens not
        b[k] = b[k].to("meta")
    return b


@pytest.mark.parametrize(
    ("tokenization", "attr"), [("degree", "degree_rank"), ("hac_dfs", "hac_rank")]
)
def test_node_tokens_on_another_device_are_named(tokenization, attr):
    b = _batch()
    with pytest.raises(ValueError, match=f"data.{attr} is on cpu but data.x is on meta"):
        node_tokens(b, tokenization, b.batch)


@pytest.mark.parametrize(
    ("tokenization", "attr"), [("khop", "khop_index"), ("hac_bfs", "hac_path")]
)
def test_subgraph_tokens_on_another_device_are_named(tokenization, attr):
    b = _batch()
    h = torch.empty(b.x.size(0), 8, device="meta")
    with pytest.raises(ValueError, match=f"data.{attr} is on cpu but data.x is on meta"):
        subgraph_tokens(b, tokenization, h)
