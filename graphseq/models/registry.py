"""Name -> model factory registry (what ``--model`` resolves against)."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["InputSpec", "ModelEntry", "build_model", "get_model", "list_models", "register_model"]


@dataclass(frozen=True)
class InputSpec:
    """What a benchmark feeds a model and expects back.

    Args:
        level: ``"graph"`` (one prediction per graph, ``batch.batch`` pools nodes) or ``"node"``.
        out_dim: outputs per graph/node (tasks, or classes for multi-class).
        node_features: ``"ogb-atom"`` (the 9 integer OGB atom features, embedded with
            :class:`~graphseq.models.AtomEncoder`) or ``"dense"`` (float ``x`` of width
            ``node_dim``).
        node_dim: width of dense ``x`` (ignored for ``"ogb-atom"``).
        edge_features: ``"ogb-bond"``, ``"dense"`` (float ``edge_attr`` of width ``edge_dim``)
            or ``None``.
        edge_dim: width of dense ``edge_attr``.
    """

    level: str
    out_dim: int
    node_features: str = "dense"
    node_dim: int = 0
    edge_features: str | None = None
    edge_dim: int = 0

    def __post_init__(self) -> None:
        if self.level not in ("graph", "node"):
            raise ValueError(f"InputSpec: level must be 'graph' or 'node', got {self.level!r}")
        if self.node_features not in ("ogb-atom", "dense"):
            raise ValueError(
                "InputSpec: node_features must be 'ogb-atom' or 'dense', "
                f"got {self.node_features!r}"
            )
        if self.edge_features not in (None, "ogb-bond", "dense"):
            raise ValueError(
                "InputSpec: edge_features must be None, 'ogb-bond' or 'dense', "
                f"got {self.edge_features!r}"
            )
        for name, minimum in (("out_dim", 1), ("node_dim", 0), ("edge_dim", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"InputSpec: {name} must be an int, got {type(value).__name__}")
            if value < minimum:
                raise ValueError(f"InputSpec: {name} must be >= {minimum}, got {value}")

    def check_inputs(self, cls: str, x: object, edge_attr: object) -> None:
        """Check a batch's ``x`` and ``edge_attr`` against this spec, naming the attribute at
        fault (a model calls this first in ``forward``, so a batch from another benchmark
        fails here rather than inside an embedding or a matrix product)."""
        from graphseq.models.gin import OGB_ATOM_FEATURE_DIMS, OGB_BOND_FEATURE_DIMS

        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{cls}: batch.x must be a torch.Tensor, got {type(x).__name__}")
        if self.node_features == "ogb-atom":
            _check_categorical(cls, "batch.x", "atom", "ogb-atom", x, OGB_ATOM_FEATURE_DIMS)
        elif x.dim() != 2 or x.shape[1] != self.node_dim:
            raise ValueError(
                f"{cls}: batch.x must have shape [N, node_dim] = [N, {self.node_dim}], got "
                f"{tuple(x.shape)}"
            )
        if self.edge_features is None:
            return
        if not isinstance(edge_attr, torch.Tensor):
            raise ValueError(
                f"{cls}: the spec has edge_features={self.edge_features!r} but batch.edge_attr "
                f"is {type(edge_attr).__name__}"
            )
        if self.edge_features == "ogb-bond":
            _check_categorical(
                cls, "batch.edge_attr", "bond", "ogb-bond", edge_attr, OGB_BOND_FEATURE_DIMS
            )
        if self.edge_features == "dense" and (
            edge_attr.dim() != 2 or edge_attr.shape[1] != self.edge_dim
        ):
            raise ValueError(
                f"{cls}: batch.edge_attr must have shape [E, edge_dim] = [E, {self.edge_dim}], "
                f"got {tuple(edge_attr.shape)}"
            )


def _check_categorical(
    cls: str, name: str, kind: str, spec_value: str, t: torch.Tensor, dims: tuple[int, ...]
) -> None:
    """``t`` must be ``[*, len(dims)]`` integers with column ``i`` in ``[0, dims[i])`` (the OGB
    vocabularies), so a wrong batch fails here, not as an embedding's index error."""
    if t.dim() != 2 or t.shape[1] != len(dims) or t.is_floating_point() or t.is_complex():
        raise ValueError(
            f"{cls}: {name} must be the integer OGB {kind} features [*, {len(dims)}] of this "
            f"model's spec ({spec_value!r}), got {t.dtype} {tuple(t.shape)}"
        )
    if t.numel() == 0:
        return
    low, high = t.amin(0), t.amax(0)
    size = torch.tensor(dims, device=t.device)
    bad = (low < 0) | (high >= size)
    if bool(bad.any()):
        col = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{cls}: {name} column {col} must lie in [0, {dims[col]}) (the OGB {kind} "
            f"vocabulary), got values in [{int(low[col])}, {int(high[col])}]"
        )


_NODE_FEATURES = ("ogb-atom", "dense")


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its factory and what data it can take.

    Attributes:
        name, factory, description: as given to :func:`register_model`.
        levels: the :attr:`InputSpec.level` values it predicts at.
        node_features: the :attr:`InputSpec.node_features` kinds it embeds.
        tokenized: it reads the GSM tokenizers' attributes (``hac_*``, ``khop_*``, node
            orders), so it runs only on data those transforms were applied to; or a function
            of the hyperparameters (defaults filled in) saying whether it does (``gsm`` with
            ``tokenization="none"`` reads none).
    """

    name: str
    factory: Callable[..., nn.Module]
    description: str
    levels: tuple[str, ...]
    node_features: tuple[str, ...] = _NODE_FEATURES
    tokenized: bool | Callable[[dict[str, Any]], bool] = False

    def reads_tokens(self, hyperparameters: dict[str, Any] | None = None) -> bool:
        """Whether the model built with ``hyperparameters`` (the factory's defaults for the
        rest) reads the GSM tokens. A ``tokenized`` function that fails (a hyperparameter
        without a default that was not given, say) is a ``ValueError`` naming this model."""
        if callable(self.tokenized):
            args = {**self.hyperparameters(), **(hyperparameters or {})}
            try:
                return bool(self.tokenized(args))
            except Exception as e:
                raise ValueError(
                    f"model {self.name!r}: its tokenized function failed on the hyperparameters "
                    f"{args} ({type(e).__name__}: {e}); give the ones it reads"
                ) from e
        return self.tokenized

    def incompatibility(
        self,
        level: str | None,
        node_features: str | None,
        tokenized: bool | None,
        hyperparameters: dict[str, Any] | None = None,
    ) -> str | None:
        """Why this model (built with ``hyperparameters``, default: the factory's defaults)
        cannot run on data predicted at ``level`` with ``node_features`` (tokenized or not);
        ``None`` when it can. Lets a benchmark runner refuse a pairing before it loads any
        data. ``None`` for ``level``, ``node_features`` or ``tokenized``: not known, not held
        against the model."""
        if level is not None and level not in self.levels:
            return f"it predicts at {'/'.join(self.levels)} level, not {level!r}"
        if node_features is not None and node_features not in self.node_features:
            return f"it takes {'/'.join(self.node_features)} node features, not {node_features!r}"
        if tokenized is False and self.reads_tokens(hyperparameters):
            return (
                "it reads the GSM tokens (graphseq.nn.gsm's HACTokenizer / KHopTokenizer / "
                "NodeTokenizer), which this data does not carry"
            )
        return None

    def hyperparameters(self) -> dict[str, Any]:
        """Keyword arguments of the factory (after ``spec``) and their defaults."""
        params = list(inspect.signature(self.factory).parameters.values())[1:]
        return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}

    def accepts(self, names) -> list[str]:
        """The names among ``names`` the factory does not take (none when it takes
        ``**kwargs``); required hyperparameters count as taken."""
        params = list(inspect.signature(self.factory).parameters.values())[1:]
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return []
        named = {
            p.name for p in params
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }  # fmt: skip
        return sorted(set(names) - named)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    description: str = "",
    levels: tuple[str, ...] = ("graph", "node"),
    node_features: tuple[str, ...] = _NODE_FEATURES,
    tokenized: bool | Callable[[dict[str, Any]], bool] = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``factory(spec: InputSpec, **hyperparameters) -> nn.Module``.

    The module's ``forward(batch)`` takes a PyG ``Batch``/``Data`` and returns
    ``[num_graphs, spec.out_dim]`` (graph level) or ``[num_nodes, spec.out_dim]`` (node level)
    raw scores (no sigmoid/softmax). ``levels``, ``node_features`` and ``tokenized`` say what
    data the model takes (see :class:`ModelEntry`); ``graphseq list`` and ``graphseq run`` use
    them to pair models with benchmarks.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_model: name must be a non-empty str, got {name!r}")
    if (
        isinstance(levels, str)
        or not isinstance(levels, (tuple, list))
        or not levels
        or any(v not in ("graph", "node") for v in levels)
    ):
        raise ValueError(
            f"register_model: levels must be a non-empty tuple of 'graph' / 'node', got {levels!r}"
        )

    if (
        isinstance(node_features, str)
        or not isinstance(node_features, (tuple, list))
        or not node_features
        or any(v not in _NODE_FEATURES for v in node_features)
    ):
        raise ValueError(
            "register_model: node_features must be a non-empty tuple of 'ogb-atom' / 'dense', "
            f"got {node_features!r}"
        )
    if not isinstance(tokenized, bool) and not callable(tokenized):
        raise TypeError(
            "register_model: tokenized must be a bool (or a function of the hyperparameters "
            f"returning one), got {tokenized!r}"
        )

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"register_model: a model named {name!r} is already registered")
        doc = description or (inspect.getdoc(factory) or "").split("\n")[0]
        _REGISTRY[name] = ModelEntry(
            name, factory, doc, tuple(levels), tuple(node_features), tokenized
        )
        return factory

    return decorate


def list_models() -> list[ModelEntry]:
    """All registered models, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_model(name: str) -> ModelEntry:
    """The registry entry for ``name``; unknown names raise ``ValueError`` listing valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid models: {', '.join(sorted(_REGISTRY))}"
        ) from None


def build_model(name: str, spec: InputSpec, **hyperparameters: Any) -> nn.Module:
    """Build model ``name`` for ``spec``; unknown hyperparameters raise ``TypeError``."""
    entry = get_model(name)
    if not isinstance(spec, InputSpec):
        raise TypeError(f"build_model: spec must be an InputSpec, got {type(spec).__name__}")
    if spec.level not in entry.levels:
        raise ValueError(
            f"model {name!r} supports {', '.join(entry.levels)}-level tasks, not {spec.level!r}"
        )
    unknown = entry.accepts(hyperparameters)
    if unknown:
        params = list(inspect.signature(entry.factory).parameters)[1:]
        raise TypeError(
            f"model {name!r} got unknown hyperparameters {unknown}; it takes {sorted(params)}"
        )
    return entry.factory(spec, **hyperparameters)
