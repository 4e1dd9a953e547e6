"""GSM subgraph tokens and the hierarchical PE in float16: sums, counts and sizes in float32."""

import copy

import pytest
import torch
import torch_geometric.transforms as T
from torch_geometric.data import Batch, Data

from graphseq.nn.gsm import GSM, HACTokenizer, HierarchicalPE, KHopTokenizer
from graphseq.nn.gsm.models import subgraph_tokens
from graphseq.testing import assert_half_matches_float


def _hub_graph(n: int = 3000) -> Batch:
    """A hub joined to every node of a ring: its 1-hop ball and the HAC root hold n nodes."""
    hub = torch.stack([torch.arange(1, n), torch.zeros(n - 1, dtype=torch.long)])
    ring = torch.stack([torch.arange(1, n), torch.arange(1, n) % (n - 1) + 1])
    ei = torch.cat([hub, hub.flip(0), ring, ring.flip(0)], 1)
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    data = T.Compose([KHopTokenizer(2), HACTokenizer(levels=6)])(
        Data(x=x, edge_index=ei, num_nodes=n)
    )
    return Batch.from_data_list([data])


@pytest.mark.parametrize("tokenization", ["khop", "hac_bfs"])
def test_subgraph_token_means_do_not_overflow_float16(tokenization):
    batch = _hub_graph()
    h = (torch.rand(batch.num_nodes, 8, generator=torch.Generator().manual_seed(1)) * 100).half()
    ref, cu_ref, size_ref = subgraph_tokens(batch, tokenization, h.float())
    tokens, cu, size = subgraph_tokens(batch, tokenization, h)
    assert tokens.dtype == torch.float16 and torch.isfinite(tokens).all()
    torch.testing.assert_close(tokens.float(), ref, rtol=2e-3, atol=0.0)
    assert torch.equal(cu, cu_ref)
    torch.testing.assert_close(size.float(), size_ref)


def test_gsm_khop_float16_on_a_hub():
    batch = _hub_graph()
    batch.x = batch.x * 100
    model = GSM(4, 8, 2, tokenization="khop", layers=1, heads=2, level="node").half().eval()
    assert_half_matches_float(model, batch)


def test_hierarchical_pe_of_a_graph_above_65504_nodes_in_float16():
    pe = HierarchicalPE(8, levels=3)
    child = torch.zeros(2, 3, dtype=torch.long)
    size = torch.tensor([[70000, 40000, 1], [70000, 30000, 2]])
    want = copy.deepcopy(pe).half().float()(child, size)
    got = pe.half()(child, size)
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-3)


def _sage_on_a_hub(n: int = 3000):
    """A star of degree n - 1, float16 features in [0, 60), a float16 sage LocalEncoder and
    its float32 copy: a float16 sum over the hub's neighbours overflows, the mean does not."""
    from graphseq.nn.gsm import LocalEncoder

    torch.manual_seed(0)
    hub = torch.stack([torch.arange(1, n), torch.zeros(n - 1, dtype=torch.long)])
    ei = torch.cat([hub, hub.flip(0)], 1)
    x = (torch.rand(n, 8) * 60).half()
    enc = LocalEncoder(8, "sage", norm="layer", prenorm=False).half().eval()
    return n, ei, x, enc, copy.deepcopy(enc).float()


def test_sage_mean_over_a_hub_sums_in_float32_for_half_features():
    """A float16 neighbour sum at a hub of degree 2,999 overflowed (inf, then NaN) although the
    mean is below 60; the mean adjacency is float32 for half features and the sum runs in it."""
    from graphseq.nn.gsm import mean_adjacency

    n, ei, x, enc, ref = _sage_on_a_hub()
    with torch.no_grad():
        want = ref(x.float(), mean_adjacency(ei, n, torch.float32))
        got = enc(x, mean_adjacency(ei, n, torch.promote_types(x.dtype, torch.float32)))
    assert torch.isfinite(got).all()
    assert (got.float() - want).abs().max() < 0.1


def test_sage_mean_over_a_hub_from_edge_index_in_float16():
    """LocalEncoder('sage') given a plain edge_index (GSM(local='sage') passes it so) summed a
    hub's neighbours in float16 (inf, then NaN); it takes the float32 mean as with the CSR."""
    n, ei, x, enc, ref = _sage_on_a_hub()
    with torch.no_grad():
        want, got = ref(x.float(), ei), enc(x, ei)
    assert torch.isfinite(got).all()
    assert (got.float() - want).abs().max() < 0.1
    model = GSM(4, 8, 2, tokenization="none", local="sage", layers=1, heads=2, level="node")
    data = Batch.from_data_list([Data(x=torch.rand(n, 4) * 60, edge_index=ei, num_nodes=n)])
    half = data.clone()
    half.x = data.x.half()
    with torch.no_grad():
        assert torch.isfinite(model.half().eval()(half)).all()
