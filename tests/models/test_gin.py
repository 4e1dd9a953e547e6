"""GIN and GIN-VN pinned to OGB's mol baselines (GNN_node / GNN_node_Virtualnode, JK=last),
restated here step by step with the model's own weights."""

import pytest
import torch
from torch_geometric.data import Batch, Data

from graphseq.models import InputSpec
from graphseq.models.gin import GIN, OGB_ATOM_FEATURE_DIMS, OGB_BOND_FEATURE_DIMS

SPEC = InputSpec("graph", 2, "ogb-atom", edge_features="ogb-bond")


def _molecules() -> Batch:
    gen = torch.Generator().manual_seed(0)
    graphs = []
    for n in (4, 6, 3):
        x = torch.stack([torch.randint(d, (n,), generator=gen) for d in OGB_ATOM_FEATURE_DIMS], 1)
        s = torch.arange(n - 1)
        ei = torch.stack([torch.cat([s, s + 1]), torch.cat([s + 1, s])])
        ea = torch.stack(
            [torch.randint(d, (ei.shape[1],), generator=gen) for d in OGB_BOND_FEATURE_DIMS], 1
        )
        graphs.append(Data(x=x, edge_index=ei, edge_attr=ea))
    return Batch.from_data_list(graphs)


def _ogb(model: GIN, b: Batch, pool: str) -> torch.Tensor:
    """OGB's forward: h <- BN(MLP((1 + eps) h + sum_j relu(h_j + bond(e)))), ReLU except on
    the last layer; the virtual node is added before each layer and updated after all but
    the last as MLP(sum of that layer's input + vn); last layer's h pooled, linear head."""

    def embed(encoder, feats):
        return sum(e(feats[:, i]) for i, e in enumerate(encoder.embeddings))

    G, N = b.num_graphs, b.num_nodes
    h = embed(model.node_encoder, b.x)
    vn = model.vn_embedding.weight.expand(G, -1) if model.virtual_node else None
    for layer in range(model.layers):
        if vn is not None:
            h = h + vn[b.batch]
        conv = model.convs[layer]
        msg = torch.relu(h[b.edge_index[0]] + embed(model.edge_encoders[layer], b.edge_attr))
        agg = torch.zeros(N, h.shape[1], dtype=h.dtype).index_add_(0, b.edge_index[1], msg)
        out = model.norms[layer](conv.nn((1 + conv.eps) * h + agg))
        if layer < model.layers - 1:
            out = torch.relu(out)
            if vn is not None:
                pooled = torch.zeros(G, h.shape[1], dtype=h.dtype).index_add_(0, b.batch, h)
                vn = model.vn_mlps[layer](pooled + vn)
        h = out
    summed = torch.zeros(G, h.shape[1], dtype=h.dtype).index_add_(0, b.batch, h)
    if pool == "mean":
        summed = summed / torch.bincount(b.batch, minlength=G).unsqueeze(1).to(h.dtype)
    return model.head(summed)


@pytest.mark.parametrize("virtual_node", [False, True])
@pytest.mark.parametrize("pool", ["mean", "sum"])
def test_gin_matches_ogb_baseline(virtual_node, pool):
    torch.manual_seed(0)
    model = GIN(SPEC, hidden=8, layers=3, virtual_node=virtual_node, pool=pool).double()
    # OGB's initialisation: eps = 0, a zero virtual node; then move off it to test the formula
    assert all(c.eps.detach().item() == 0.0 for c in model.convs)
    if virtual_node:
        assert torch.equal(model.vn_embedding.weight, torch.zeros_like(model.vn_embedding.weight))
    with torch.no_grad():
        for c in model.convs:
            c.eps.fill_(0.3)
        if virtual_node:
            model.vn_embedding.weight.normal_()
    batch = _molecules()
    model.train()
    model(batch)  # move the BatchNorm statistics off their initial values
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch), _ogb(model, batch, pool))
