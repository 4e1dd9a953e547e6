"""Target networks that own no weights: ``forward(x, weights)`` with a parameter-shape spec.

A hypernetwork (:mod:`graphseq.continual.hnets`) produces one flat vector of ``P`` numbers per
task; :class:`ParamSpec` says how that vector is cut into the target's tensors (names, shapes,
which layer each belongs to, fan-in). Every target here is a :class:`TargetNetwork`:

* :class:`MLPTarget`: ``in -> hidden... -> heads * classes`` with ReLU.
* :class:`CNNTarget`: small conv net (conv 3x3 + ReLU + 2x2 max-pool blocks, then an MLP).
* :class:`GNNTarget`: GIN layers (`Xu et al., 2019 <https://arxiv.org/abs/1810.00826>`_) with
  functional weights, PyG's scatter for neighbourhood sums and mean pooling per graph.

The output layer holds ``num_heads`` heads of ``classes_per_head`` logits each (multi-head, as in
von Oswald et al.'s CL1 setting); :meth:`TargetNetwork.head` slices one head's logits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CNNTarget",
    "GNNTarget",
    "MLPTarget",
    "ParamShape",
    "ParamSpec",
    "TargetNetwork",
]


@dataclass(frozen=True)
class ParamShape:
    """One tensor of a target network.

    Attributes:
        name: ``"<layer name>.weight"`` or ``"<layer name>.bias"``.
        shape: the tensor's shape.
        layer: index of the layer the tensor belongs to (weight and bias share it).
        fan_in: inputs per output unit of that layer (sets the initial scale).
    """

    name: str
    shape: tuple[int, ...]
    layer: int
    fan_in: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_bias(self) -> bool:
        return self.name.endswith(".bias")


class ParamSpec(Sequence):
    """The ordered tensors of a target network and how a flat weight vector maps onto them.

    The flat layout is the concatenation of the tensors in order, each flattened row-major.
    The tensors must list the layers in order (0, 1, 2, ...), each layer's tensors together.

    Raises:
        ValueError: ``shapes`` is empty, a ``fan_in`` is below 1, a shape is not a tuple of
            positive ints, or the layers are out of order or split.
    """

    def __init__(self, shapes: Sequence[ParamShape]) -> None:
        shapes = tuple(shapes)
        if not shapes:
            raise ValueError("ParamSpec: shapes must not be empty")
        for s in shapes:
            if not isinstance(s, ParamShape):
                raise TypeError(f"ParamSpec: expected ParamShape, got {type(s).__name__}")
            if isinstance(s.fan_in, bool) or not isinstance(s.fan_in, int) or s.fan_in < 1:
                raise ValueError(f"ParamSpec: {s.name} has fan_in {s.fan_in!r}; it must be >= 1")
            if (
                not isinstance(s.shape, tuple)
                or not s.shape
                or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in s.shape)
            ):
                raise ValueError(
                    f"ParamSpec: {s.name} has shape {s.shape!r}; it must be a non-empty tuple of "
                    "positive ints"
                )
        # layers must be contiguous and in order (0, 1, 2, ...): the hypernetworks read the
        # flat vector layer by layer, so an out-of-order spec would mix layers up
        layers = [s.layer for s in shapes]
        if layers[0] != 0 or any(b not in (a, a + 1) for a, b in itertools.pairwise(layers)):
            raise ValueError(
                f"ParamSpec: shapes must list layers 0, 1, 2, ... in order, each contiguous; got "
                f"layers {layers}"
            )
        self._shapes = shapes
        self.offsets = [0]
        for s in shapes:
            self.offsets.append(self.offsets[-1] + s.numel)

    def __getitem__(self, i):
        return self._shapes[i]

    def __len__(self) -> int:
        return len(self._shapes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParamSpec) and self._shapes == other._shapes

    def __hash__(self) -> int:
        return hash(self._shapes)

    @property
    def numel(self) -> int:
        """``P``: the length of the flat weight vector."""
        return self.offsets[-1]

    @property
    def num_layers(self) -> int:
        return max(s.layer for s in self._shapes) + 1

    def layer_sizes(self) -> list[int]:
        """Numbers per layer (weight + bias), in flat order; layers are contiguous."""
        sizes = [0] * self.num_layers
        for s in self._shapes:
            sizes[s.layer] += s.numel
        return sizes

    def init_scale(self) -> Tensor:
        """``[P]``: ``1 / sqrt(fan_in)`` for every number (LeCun's std; the bound of PyTorch's
        default uniform init)."""
        return torch.cat([torch.full((s.numel,), 1.0 / math.sqrt(s.fan_in)) for s in self._shapes])

    def init_weights(self, generator: torch.Generator | None = None) -> Tensor:
        """``[P]`` drawn as PyTorch's ``nn.Linear`` default, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
        (for the methods that train the target's weights directly)."""
        bound = self.init_scale()
        u = torch.rand(self.numel, generator=generator)
        return (2 * u - 1) * bound

    def split(self, weights: Tensor) -> list[Tensor]:
        """``[P]`` flat vector -> the tensors, as views in spec order."""
        if not isinstance(weights, Tensor):
            raise TypeError(f"weights must be a Tensor, got {type(weights).__name__}")
        if weights.dim() != 1 or weights.numel() != self.numel:
            raise ValueError(
                f"weights must have shape [{self.numel}] (the target's parameter count), "
                f"got {list(weights.shape)}"
            )
        return [
            weights[a:b].view(s.shape)
            for s, a, b in zip(self._shapes, self.offsets[:-1], self.offsets[1:], strict=True)
        ]

    def to_config(self) -> list[list]:
        """Plain lists, safe in a ``weights_only`` checkpoint."""
        return [[s.name, list(s.shape), s.layer, s.fan_in] for s in self._shapes]

    @classmethod
    def from_config(cls, config: Sequence[Sequence]) -> ParamSpec:
        return cls(
            [ParamShape(n, tuple(int(d) for d in sh), int(ly), int(f)) for n, sh, ly, f in config]
        )

    def __repr__(self) -> str:
        return f"ParamSpec(tensors={len(self)}, layers={self.num_layers}, numel={self.numel})"


def _linear_shapes(name: str, layer: int, fan_in: int, fan_out: int) -> list[ParamShape]:
    return [
        ParamShape(f"{name}.weight", (fan_out, fan_in), layer, fan_in),
        ParamShape(f"{name}.bias", (fan_out,), layer, fan_in),
    ]


def _positive_int(cls: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{cls}: {name} must be a positive int, got {value!r}")
    return value


def int_sequence(cls: str, name: str, value: object, check=None) -> tuple[int, ...]:
    """``value`` as a tuple of positive ints (``check(cls, name, v)`` per entry), refusing a
    bare int or a string with an error that names the argument."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"{cls}: {name} must be a sequence of ints (one per layer), got "
            f"{type(value).__name__} {value!r}; write ({value!r},) for one"
        )
    return tuple((check or _positive_int)(cls, name, v) for v in value)


class TargetNetwork(nn.Module):
    """Base class: a network whose weights are an argument.

    Subclasses set :attr:`param_spec`, :attr:`num_heads`, :attr:`classes_per_head` and write
    :meth:`_forward` on the split tensors. The module has no parameters.
    """

    param_spec: ParamSpec
    num_heads: int
    classes_per_head: int

    def forward(self, x, weights: Tensor) -> Tensor:
        """Logits ``[B, num_heads * classes_per_head]`` for inputs ``x`` under flat ``weights``."""
        return self._forward(x, self.param_spec.split(weights))

    def _forward(self, x, tensors: list[Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def head(self, logits: Tensor, head: int) -> Tensor:
        """``[B, classes_per_head]``: the logits of one output head."""
        if not 0 <= head < self.num_heads:
            raise ValueError(f"head must be in [0, {self.num_heads}), got {head}")
        c = self.classes_per_head
        return logits[:, head * c : (head + 1) * c]

    def used_by_head(self, head: int) -> Tensor:
        """``[P]`` bool: the numbers that ``head``'s logits depend on.

        Everything except the other heads' rows of the output layer (the last weight and bias
        of :attr:`param_spec`, rows ``head * classes_per_head ...``). With one head, all ``True``.
        The output regulariser of a multi-head hypernetwork compares only these numbers for an
        old task (hypnettorch's ``inds_of_out_heads``): the other heads' rows generated for that
        task are never read.
        """
        if isinstance(head, bool) or not isinstance(head, int):
            raise TypeError(f"head must be an int, got {type(head).__name__}")
        if not 0 <= head < self.num_heads:
            raise ValueError(f"head must be in [0, {self.num_heads}), got {head}")
        spec = self.param_spec
        mask = torch.ones(spec.numel, dtype=torch.bool)
        if self.num_heads == 1:
            return mask
        c = self.classes_per_head
        rows = torch.zeros(self.num_heads * c, dtype=torch.bool)
        rows[head * c : (head + 1) * c] = True
        weight, bias = spec[len(spec) - 2], spec[len(spec) - 1]
        if weight.shape[0] != rows.numel() or bias.shape != (rows.numel(),):
            raise RuntimeError(  # pragma: no cover - a subclass broke the layout contract
                f"{type(self).__name__}: the last two tensors of param_spec must be the output "
                f"layer's weight [{rows.numel()}, fan_in] and bias [{rows.numel()}]"
            )
        w0, b0 = spec.offsets[len(spec) - 2], spec.offsets[len(spec) - 1]
        mask[w0:b0] = rows.unsqueeze(1).expand(weight.shape).reshape(-1)
        mask[b0:] = rows
        return mask

    def config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


class MLPTarget(TargetNetwork):
    r"""Multi-layer perceptron with functional weights.

    .. math::
        h_0 = x,\quad h_{l} = \mathrm{Dropout}_p(\mathrm{ReLU}(W_l h_{l-1} + b_l)),\quad
        y = W_{L} h_{L-1} + b_L

    Args:
        in_features: input size (inputs are flattened from dim 1).
        hidden: hidden widths, e.g. ``(100, 100)``.
        classes_per_head: logits per head.
        num_heads: output heads (``1`` for a single shared head).
        dropout: probability :math:`p` of zeroing a hidden unit in training mode (inverted
            dropout, as :func:`torch.nn.functional.dropout`); ``0`` (default) turns it off. In
            evaluation mode the network is deterministic.

    Shapes:
        x ``[B, *]`` with ``in_features`` numbers per row; weights ``[P]``;
        output ``[B, num_heads * classes_per_head]``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (100, 100),
        classes_per_head: int = 10,
        num_heads: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
            raise ValueError(f"MLPTarget: dropout must be a number in [0, 1), got {dropout!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLPTarget: dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.in_features = _positive_int("MLPTarget", "in_features", in_features)
        self.hidden = int_sequence("MLPTarget", "hidden", hidden)
        self.classes_per_head = _positive_int("MLPTarget", "classes_per_head", classes_per_head)
        self.num_heads = _positive_int("MLPTarget", "num_heads", num_heads)
        sizes = [self.in_features, *self.hidden, self.num_heads * self.classes_per_head]
        shapes: list[ParamShape] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            shapes += _linear_shapes(f"fc{i}", i, a, b)
        self.param_spec = ParamSpec(shapes)

    def _forward(self, x: Tensor, tensors: list[Tensor]) -> Tensor:
        h = x.flatten(1) if x.dim() > 1 else x.reshape(x.shape[0], -1)  # [0, ...] too
        if h.shape[1] != self.in_features:
            raise ValueError(
                f"MLPTarget: x must have {self.in_features} features, got {h.shape[1]}"
            )
        n = len(tensors) // 2
        for i in range(n):
            h = F.linear(h, tensors[2 * i], tensors[2 * i + 1])
            if i < n - 1:
                h = F.relu(h)
                if self.dropout > 0:
                    h = F.dropout(h, self.dropout, training=self.training)
        return h

    def config(self) -> dict:
        return {
            "kind": "mlp",
            "in_features": self.in_features,
            "hidden": list(self.hidden),
            "classes_per_head": self.classes_per_head,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
        }

    def extra_repr(self) -> str:
        drop = f", dropout={self.dropout:g}" if self.dropout > 0 else ""
        return (
            f"{self.in_features}, hidden={self.hidden}, heads={self.num_heads}x"
            f"{self.classes_per_head}{drop}, P={self.param_spec.numel}"
        )


class CNNTarget(TargetNetwork):
    r"""Small convolutional net with functional weights.

    Each block is ``conv kxk (padding k//2) -> ReLU -> 2x2 max-pool``; the flattened map goes
    through ReLU hidden layers to the heads.

    Args:
        in_channels: input channels.
        image_size: input height = width.
        channels: output channels of each conv block, e.g. ``(8, 16)``.
        kernel_size: odd conv kernel size.
        hidden: widths of the fully connected hidden layers.
        classes_per_head, num_heads: as in :class:`MLPTarget`.

    Shapes:
        x ``[B, in_channels, image_size, image_size]`` (or ``[B, image_size**2]`` when
        ``in_channels == 1``); output ``[B, num_heads * classes_per_head]``.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        channels: Sequence[int] = (8, 16),
        kernel_size: int = 3,
        hidden: Sequence[int] = (64,),
        classes_per_head: int = 10,
        num_heads: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = _positive_int("CNNTarget", "in_channels", in_channels)
        self.image_size = _positive_int("CNNTarget", "image_size", image_size)
        self.channels = int_sequence("CNNTarget", "channels", channels)
        self.kernel_size = _positive_int("CNNTarget", "kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"CNNTarget: kernel_size must be odd, got {kernel_size}")
        self.hidden = int_sequence("CNNTarget", "hidden", hidden)
        self.classes_per_head = _positive_int("CNNTarget", "classes_per_head", classes_per_head)
        self.num_heads = _positive_int("CNNTarget", "num_heads", num_heads)
        size = self.image_size
        for _ in self.channels:
            size //= 2
        if size < 1:
            raise ValueError(
                f"CNNTarget: image_size {image_size} is too small for {len(self.channels)} "
                "pooling blocks"
            )
        shapes: list[ParamShape] = []
        c_in, k = self.in_channels, self.kernel_size
        for i, c in enumerate(self.channels):
            fan = c_in * k * k
            shapes += [
                ParamShape(f"conv{i}.weight", (c, c_in, k, k), i, fan),
                ParamShape(f"conv{i}.bias", (c,), i, fan),
            ]
            c_in = c
        sizes = [c_in * size * size, *self.hidden, self.num_heads * self.classes_per_head]
        base = len(self.channels)
        for j, (a, b) in enumerate(itertools.pairwise(sizes)):
            shapes += _linear_shapes(f"fc{j}", base + j, a, b)
        self.param_spec = ParamSpec(shapes)

    def _forward(self, x: Tensor, tensors: list[Tensor]) -> Tensor:
        s = self.image_size
        if x.dim() == 2 and self.in_channels == 1 and x.shape[1] == s * s:
            x = x.view(-1, 1, s, s)
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, s, s):
            raise ValueError(
                f"CNNTarget: x must have shape [B, {self.in_channels}, {s}, {s}], "
                f"got {list(x.shape)}"
            )
        nc = len(self.channels)
        for i in range(nc):
            x = F.conv2d(x, tensors[2 * i], tensors[2 * i + 1], padding=self.kernel_size // 2)
            x = F.max_pool2d(F.relu(x), 2)
        h = x.flatten(1)
        fcs = tensors[2 * nc :]
        n = len(fcs) // 2
        for i in range(n):
            h = F.linear(h, fcs[2 * i], fcs[2 * i + 1])
            if i < n - 1:
                h = F.relu(h)
        return h

    def config(self) -> dict:
        return {
            "kind": "cnn",
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "channels": list(self.channels),
            "kernel_size": self.kernel_size,
            "hidden": list(self.hidden),
            "classes_per_head": self.classes_per_head,
            "num_heads": self.num_heads,
        }

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}x{self.image_size}x{self.image_size}, channels={self.channels}, "
            f"hidden={self.hidden}, heads={self.num_heads}x{self.classes_per_head}, "
            f"P={self.param_spec.numel}"
        )


class GNNTarget(TargetNetwork):
    r"""Graph classifier of GIN layers with functional weights.

    .. math::
        h_v^{(l)} = \mathrm{MLP}^{(l)}\Big(h_v^{(l-1)} + \sum_{u \in \mathcal{N}(v)}
        h_u^{(l-1)}\Big),\qquad y_g = W_o \,\tfrac{1}{|g|}\sum_{v \in g} h_v^{(L)} + b_o

    Each :math:`\mathrm{MLP}^{(l)}` is ``Linear -> ReLU -> Linear -> ReLU``; messages flow along
    ``edge_index[0] -> edge_index[1]`` and are summed with :func:`torch_geometric.utils.scatter`.

    Args:
        in_channels: node feature size.
        hidden: width of every GIN layer.
        num_layers: number of GIN layers.
        classes_per_head, num_heads: as in :class:`MLPTarget`.

    Shapes:
        x: a PyG ``Batch`` (``x [N, in_channels]``, ``edge_index [2, E]``, ``batch [N]``,
        ``num_graphs``); output ``[num_graphs, num_heads * classes_per_head]``.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int = 32,
        num_layers: int = 2,
        classes_per_head: int = 2,
        num_heads: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = _positive_int("GNNTarget", "in_channels", in_channels)
        self.hidden = _positive_int("GNNTarget", "hidden", hidden)
        self.num_layers = _positive_int("GNNTarget", "num_layers", num_layers)
        self.classes_per_head = _positive_int("GNNTarget", "classes_per_head", classes_per_head)
        self.num_heads = _positive_int("GNNTarget", "num_heads", num_heads)
        shapes: list[ParamShape] = []
        c = self.in_channels
        for i in range(self.num_layers):
            shapes += [
                ParamShape(f"gin{i}.lin0.weight", (hidden, c), 2 * i, c),
                ParamShape(f"gin{i}.lin0.bias", (hidden,), 2 * i, c),
                ParamShape(f"gin{i}.lin1.weight", (hidden, hidden), 2 * i + 1, hidden),
                ParamShape(f"gin{i}.lin1.bias", (hidden,), 2 * i + 1, hidden),
            ]
            c = hidden
        shapes += _linear_shapes("out", 2 * self.num_layers, c, self.num_heads * classes_per_head)
        self.param_spec = ParamSpec(shapes)

    def _forward(self, data, tensors: list[Tensor]) -> Tensor:
        from torch_geometric.utils import scatter

        for attr in ("x", "edge_index", "batch"):
            if getattr(data, attr, None) is None:
                raise ValueError(f"GNNTarget: the input batch has no '{attr}'")
        x, edge_index, batch = data.x, data.edge_index, data.batch
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"GNNTarget: x must have shape [N, {self.in_channels}], got {list(x.shape)}"
            )
        h = x
        for i in range(self.num_layers):
            w0, b0, w1, b1 = tensors[4 * i : 4 * i + 4]
            agg = scatter(h[edge_index[0]], edge_index[1], 0, dim_size=h.shape[0], reduce="sum")
            h = F.relu(F.linear(F.relu(F.linear(h + agg, w0, b0)), w1, b1))
        # the mean summed in float32 at least: a float16 sum over a large graph overflows
        acc = torch.promote_types(h.dtype, torch.float32)
        pooled = scatter(h.to(acc), batch, 0, dim_size=int(data.num_graphs), reduce="mean")
        pooled = pooled.to(h.dtype)
        return F.linear(pooled, tensors[-2], tensors[-1])

    def config(self) -> dict:
        return {
            "kind": "gnn",
            "in_channels": self.in_channels,
            "hidden": self.hidden,
            "num_layers": self.num_layers,
            "classes_per_head": self.classes_per_head,
            "num_heads": self.num_heads,
        }

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, hidden={self.hidden}, layers={self.num_layers}, "
            f"heads={self.num_heads}x{self.classes_per_head}, P={self.param_spec.numel}"
        )


def target_from_config(config: dict) -> TargetNetwork:
    """Rebuild a target from :meth:`TargetNetwork.config` (used when loading checkpoints)."""
    config = dict(config)
    kind = config.pop("kind", None)
    classes = {"mlp": MLPTarget, "cnn": CNNTarget, "gnn": GNNTarget}
    if kind not in classes:
        raise ValueError(f"target config kind must be one of {sorted(classes)}, got {kind!r}")
    return classes[kind](**config)
