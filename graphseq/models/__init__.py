"""Model zoo: whole models built from :mod:`graphseq.nn` and PyG layers, and their registry.

Layering: ``graphseq.train`` and ``graphseq.cli`` look models up here by name; models import
only ``torch``, ``torch_geometric`` and :mod:`graphseq.nn`. A new family plugs in with
:func:`register_model`::

    from graphseq.models import register_model, InputSpec

    @register_model("lcm-gin", description="GIN with LCM aggregation")
    def lcm_gin(spec: InputSpec, hidden: int = 300, layers: int = 5, dropout: float = 0.5):
        ...  # return a torch.nn.Module whose forward(batch) gives [num_graphs, spec.out_dim]

and is then available as ``graphseq run BENCHMARK --model lcm-gin``. A model that embeds only
dense features, or reads the GSM tokens, says so (``node_features=("dense",)``,
``tokenized=True``): ``graphseq list`` then shows it only under the benchmarks it runs on, and
``graphseq run`` refuses other pairings before it loads any data.
"""

from graphseq.models import gsm as _gsm  # noqa: F401  (registers gsm, gsm++, gps, gat, sage)
from graphseq.models import plstm as _plstm  # noqa: F401  (registers plstm)
from graphseq.models.gin import GIN, AtomEncoder, BondEncoder
from graphseq.models.registry import (
    InputSpec,
    build_model,
    get_model,
    list_models,
    register_model,
)

__all__ = [
    "GIN",
    "AtomEncoder",
    "BondEncoder",
    "InputSpec",
    "build_model",
    "get_model",
    "list_models",
    "register_model",
]
