"""Continual learning with task-conditioned hypernetworks, including an RNN hypernetwork.

* Targets with functional weights and a parameter spec: :class:`MLPTarget`,
  :class:`CNNTarget`, :class:`GNNTarget` (:mod:`~graphseq.continual.targets`).
* Hypernetworks: :class:`FullHyperNetwork`, :class:`ChunkedHyperNetwork` (von Oswald et al.,
  2020) and :class:`RNNHyperNetwork` (an LSTM generating the target layer by layer, chunk by
  chunk, with its state carried across layers; Chandra et al., 2023).
* Methods in one loop: :class:`HypernetworkMethod` (output regulariser, hidden-state
  regulariser, growth), :class:`FineTune`, :class:`EWC`, :class:`SI`,
  :class:`SeparateNetworks`; :func:`train_continual`, task-incremental and task-inferred
  evaluation, checkpoints (:func:`save_method`, :func:`load_method`).
* Metrics over the accuracy matrix: :func:`average_accuracy`, :func:`backward_transfer`,
  :func:`forgetting`, :func:`max_forgetting`.

See ``README.md`` in this folder for the method and its design choices.
"""

from graphseq.continual.hnets import (
    STEP_SIGNALS,
    ChunkedHyperNetwork,
    FullHyperNetwork,
    HyperNetwork,
    RNNHyperNetwork,
    hypernetwork_from_config,
)
from graphseq.continual.loop import (
    ContinualConfig,
    ContinualResult,
    evaluate_task_incremental,
    evaluate_task_inferred,
    load_method,
    save_method,
    train_continual,
)
from graphseq.continual.methods import (
    EWC,
    SI,
    ContinualMethod,
    FineTune,
    HypernetworkMethod,
    SeparateNetworks,
    method_from_config,
)
from graphseq.continual.metrics import (
    average_accuracy,
    backward_transfer,
    during_accuracy,
    forgetting,
    max_forgetting,
    summarize_matrix,
)
from graphseq.continual.targets import (
    CNNTarget,
    GNNTarget,
    MLPTarget,
    ParamShape,
    ParamSpec,
    TargetNetwork,
    target_from_config,
)

__all__ = [
    "EWC",
    "SI",
    "STEP_SIGNALS",
    "CNNTarget",
    "ChunkedHyperNetwork",
    "ContinualConfig",
    "ContinualMethod",
    "ContinualResult",
    "FineTune",
    "FullHyperNetwork",
    "GNNTarget",
    "HyperNetwork",
    "HypernetworkMethod",
    "MLPTarget",
    "ParamShape",
    "ParamSpec",
    "RNNHyperNetwork",
    "SeparateNetworks",
    "TargetNetwork",
    "average_accuracy",
    "backward_transfer",
    "during_accuracy",
    "evaluate_task_incremental",
    "evaluate_task_inferred",
    "forgetting",
    "hypernetwork_from_config",
    "load_method",
    "max_forgetting",
    "method_from_config",
    "save_method",
    "summarize_matrix",
    "target_from_config",
    "train_continual",
]
