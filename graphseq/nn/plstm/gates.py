"""Gate parametrisation shared by the pLSTM layers (1D, 2D and graph).

pLSTM (`Pöppel et al., 2025 <https://arxiv.org/abs/2506.11997>`_) has four scalar gates per
head and node, all functions of the layer input only (never of the hidden state), so the
recurrence stays linear:

* **source** :math:`S = \\sigma(W_S x + b_S)`: how much of :math:`k v^\\top` a node writes
  into each outgoing edge state;
* **transition** :math:`T = \\tanh(\\kappa (W_T x + b_T))`: how an incoming edge state is
  carried into an outgoing one; negative values are allowed;
* **mark** :math:`M = \\sigma(W_M x + b_M)`: how much of each incoming edge state a node reads;
* **direct** :math:`D = \\sigma(W_D x + b_D)`: the node's own :math:`(q \\cdot k) v` term.

The initialisation is the one the paper reports (its Table 4; the released configs): biases
``S = M = -4`` (so :math:`\\sigma \\approx 0.018`), ``D = -6``, ``T = 1`` with
:math:`\\kappa = 5` (:math:`T \\approx \\tanh 5 \\approx 0.9999`: critical at init), gate
weights zero, and query/key/value projections with "small init"
(std :math:`\\sqrt{2 / (5 \\cdot \\text{fan\\_in})}`). A per-head RMS norm and a bias-free
output projection follow the recurrence.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..seq.base import check_real

__all__ = [
    "DIRECT_BIAS",
    "MARK_BIAS",
    "SOURCE_BIAS",
    "TRANSITION_BIAS",
    "TRANSITION_FACTOR",
    "HeadGate",
    "MultiHeadRMSNorm",
    "small_init_",
]

#: Bias initialisation of the source gate (paper Table 4).
SOURCE_BIAS = -4.0
#: Bias initialisation of the mark gate (paper Table 4).
MARK_BIAS = -4.0
#: Bias initialisation of the direct gate (paper Table 4).
DIRECT_BIAS = -6.0
#: Bias initialisation of the transition gate's pre-activation (paper Table 4).
TRANSITION_BIAS = 1.0
#: Factor inside the transition's ``tanh`` (the released configs' ``eigenvalue_factor``).
TRANSITION_FACTOR = 5.0

_ACTIVATIONS = ("sigmoid", "tanh", "identity")


def small_init_(weight: Tensor) -> Tensor:
    """Fill ``weight`` (``[out, in]``) with N(0, 2 / (5 in)), the paper's "small init"."""
    fan_in = weight.shape[-1]
    with torch.no_grad():
        return weight.normal_(0.0, math.sqrt(2.0 / (5.0 * fan_in)))


class HeadGate(torch.nn.Module):
    r"""One scalar gate per head (and per ``groups`` copy), computed from the layer input.

    .. math::
        g = \phi\big(\kappa\,(W x + b)\big) \in \mathbb{R}^{G \times H}

    with :math:`\phi` one of ``sigmoid``, ``tanh`` or ``identity``. ``groups`` stacks several
    independent gates of the same kind (for example one per corner orientation of a 2D layer).

    Args:
        in_channels (int): input size.
        heads (int): gates per group.
        activation (str): ``"sigmoid"``, ``"tanh"`` or ``"identity"``.
        bias_init (float or Tensor): initial bias, a scalar or a ``[groups, heads]`` tensor.
        weight_std (float, optional): std of the normal weight init; ``0`` gives zero weights
            (the paper's choice for small data). (default: :obj:`0.0`)
        factor (float, optional): :math:`\kappa`. (default: :obj:`1.0`)
        groups (int, optional): number of stacked gate sets :math:`G`. (default: :obj:`1`)

    Shapes:
        - **input:** :math:`(*, \text{in\_channels})`
        - **output:** :math:`(*, H)` for ``groups = 1``, else :math:`(*, G, H)`.
    """

    def __init__(
        self,
        in_channels: int,
        heads: int,
        activation: str,
        bias_init: float | Tensor,
        weight_std: float = 0.0,
        factor: float = 1.0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        for name, value in (("in_channels", in_channels), ("heads", heads), ("groups", groups)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{cls}: {name} must be an int, got {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{cls}: {name} must be positive, got {value}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"{cls}: activation must be one of {_ACTIVATIONS}, got {activation!r}")
        weight_std = check_real(cls, "weight_std", weight_std, minimum=0.0)
        factor = check_real(cls, "factor", factor)
        # on the CPU whatever the default device: under deferred initialisation (modules made
        # on the meta device, then ``to_empty()`` and ``reset_parameters()``) a meta tensor
        # would hold no values to reset to
        bias = torch.as_tensor(bias_init, dtype=torch.get_default_dtype(), device="cpu")
        if bias.dim() != 0 and tuple(bias.shape) != (groups, heads):
            raise ValueError(
                f"{cls}: bias_init must be a scalar or have shape ({groups}, {heads}), "
                f"got {tuple(bias.shape)}"
            )
        self.in_channels = in_channels
        self.heads = heads
        self.groups = groups
        self.activation = activation
        self.weight_std = float(weight_std)
        self.factor = float(factor)
        # a plain attribute, not a buffer: ``to_empty()`` would replace a buffer by
        # uninitialised memory, which ``reset_parameters()`` would then copy into the bias
        self.bias_init = bias.expand(groups, heads).clone()
        self.linear = torch.nn.Linear(in_channels, groups * heads)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights N(0, ``weight_std``²) (zeros for 0), biases ``bias_init``."""
        with torch.no_grad():
            if self.weight_std > 0:
                self.linear.weight.normal_(0.0, self.weight_std)
            else:
                self.linear.weight.zero_()
            self.linear.bias.copy_(self.bias_init.flatten())

    def preactivation(self, x: Tensor) -> Tensor:
        """:math:`\\kappa (W x + b)`, shaped like the output."""
        z = self.factor * self.linear(x)
        if self.groups > 1:
            z = z.unflatten(-1, (self.groups, self.heads))
        return z

    def forward(self, x: Tensor) -> Tensor:
        z = self.preactivation(x)
        if self.activation == "sigmoid":
            return torch.sigmoid(z)
        if self.activation == "tanh":
            return torch.tanh(z)
        return z

    def __repr__(self) -> str:
        groups = f", groups={self.groups}" if self.groups > 1 else ""
        factor = f", factor={self.factor:g}" if self.factor != 1.0 else ""
        return (
            f"{type(self).__name__}({self.in_channels}, heads={self.heads}, "
            f"activation={self.activation!r}{factor}{groups})"
        )


class MultiHeadRMSNorm(torch.nn.Module):
    r"""RMS norm over each head's channels, with a learnable scale per channel.

    .. math::
        y_{h,c} = \gamma_{h,c}\, \frac{x_{h,c}}{\sqrt{\tfrac{1}{C}\sum_{c'} x_{h,c'}^2 + \epsilon}}

    computed in float32 for float16/bfloat16 inputs (the output keeps the input's dtype).

    Args:
        heads (int): number of heads :math:`H`.
        head_channels (int): channels per head :math:`C`.
        eps (float, optional): :math:`\epsilon`. (default: :obj:`1e-5`)

    Shapes:
        - **input:** :math:`(*, H, C)`
        - **output:** :math:`(*, H, C)`
    """

    def __init__(self, heads: int, head_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.heads = heads
        self.head_channels = head_channels
        self.eps = float(eps)
        self.weight = torch.nn.Parameter(torch.ones(heads, head_channels))

    def reset_parameters(self) -> None:
        """Scale back to ones."""
        with torch.no_grad():
            self.weight.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        # the mean square in float32 at least: in float16 it overflows once |x| > 256, and
        # rsqrt(inf) = 0 would silently zero the head (and inf * 0 give NaN)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight

    def __repr__(self) -> str:
        eps = f", eps={self.eps!r}" if self.eps != 1e-5 else ""
        return f"{type(self).__name__}(heads={self.heads}, head_channels={self.head_channels}{eps})"
