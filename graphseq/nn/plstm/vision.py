"""A small pLSTM image classifier (pLSTM-Vis): patch embedding, P/D blocks, corner pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..seq.base import check_choice, check_matches_parameters, check_positive_int, check_real
from .plstm2d import PLSTM2D

__all__ = ["PLSTMVision", "PLSTMVisionBlock"]


class PLSTMVisionBlock(torch.nn.Module):
    r"""Pre-norm residual block: ``x + PLSTM2D(RMSNorm(x))`` then ``x + MLP(RMSNorm(x))``.

    Args:
        channels (int): token size :math:`D`.
        heads (int): pLSTM heads.
        mode (str): ``"P"`` or ``"D"``.
        mlp_ratio (int, optional): MLP hidden size over :math:`D` (GELU). (default: :obj:`4`)
        gate_weight_std (float, optional): see :class:`PLSTM2D`. (default: :obj:`0.0`)

    Shapes:
        - **input:** :math:`(B, X, Y, D)`
        - **output:** :math:`(B, X, Y, D)`
    """

    def __init__(
        self, channels: int, heads: int, mode: str, mlp_ratio: int = 4, gate_weight_std=0.0
    ) -> None:
        super().__init__()
        self.norm1 = torch.nn.RMSNorm(channels, eps=1e-5)
        self.plstm = PLSTM2D(channels, heads, mode=mode, gate_weight_std=gate_weight_std)
        self.norm2 = torch.nn.RMSNorm(channels, eps=1e-5)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(channels, mlp_ratio * channels),
            torch.nn.GELU(),
            torch.nn.Linear(mlp_ratio * channels, channels),
        )

    def reset_parameters(self) -> None:
        self.norm1.reset_parameters()
        self.plstm.reset_parameters()
        self.norm2.reset_parameters()
        for layer in (self.mlp[0], self.mlp[2]):
            layer.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.plstm(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PLSTMVision(torch.nn.Module):
    r"""pLSTM vision classifier (pLSTM-Vis), from `"pLSTM: parallelizable Linear Source
    Transition Mark networks" <https://arxiv.org/abs/2506.11997>`_ (Pöppel et al., 2025).

    A ViT backbone whose attention is replaced by :class:`PLSTM2D`: non-overlapping patch
    embedding plus a learnable positional embedding, ``depth`` pairs of
    :class:`PLSTMVisionBlock` (the first in P-mode, the second in D-mode: the paper's "PD"
    block), a final RMS norm, and **corner pooling**: the tokens of the four grid corners are
    concatenated (:math:`4D`) and mapped to the classes by a linear head (each corner token has
    seen the whole image through the orientation that ends there); ``pooling="mean"`` averages
    all tokens instead (:math:`D`).

    The positional embedding is learnt on the ``image_size / patch_size`` grid and bicubically
    interpolated for other resolutions, so the model runs on any image size divisible by
    ``patch_size`` (``use_pos_embed=False`` drops it).

    Args:
        image_size (int): training resolution (square), divisible by ``patch_size``.
        patch_size (int): patch side.
        num_classes (int): outputs of the head.
        in_channels (int, optional): image channels. (default: :obj:`3`)
        dim (int, optional): token size :math:`D`. (default: :obj:`64`)
        heads (int, optional): pLSTM heads. (default: :obj:`4`)
        depth (int, optional): number of PD block pairs (``2 * depth`` pLSTM layers).
            (default: :obj:`2`)
        mlp_ratio (int, optional): MLP expansion. (default: :obj:`4`)
        use_pos_embed (bool, optional): learnable positional embedding. (default: :obj:`True`)
        gate_weight_std (float, optional): see :class:`PLSTM2D`. (default: :obj:`0.0`)
        pooling (str, optional): ``"corners"`` (the paper's) or ``"mean"``.
            (default: :obj:`"corners"`)

    Shapes:
        - **input:** :math:`(B, C_{in}, H_{img}, W_{img})`, both sides divisible by
          ``patch_size``.
        - **output:** :math:`(B, \text{num\_classes})` logits.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        num_classes: int,
        in_channels: int = 3,
        dim: int = 64,
        heads: int = 4,
        depth: int = 2,
        mlp_ratio: int = 4,
        use_pos_embed: bool = True,
        gate_weight_std: float = 0.0,
        pooling: str = "corners",
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        check_choice(cls, "pooling", pooling, ("corners", "mean"))
        for name, value in (
            ("image_size", image_size), ("patch_size", patch_size),
            ("num_classes", num_classes), ("in_channels", in_channels), ("dim", dim),
            ("heads", heads), ("depth", depth), ("mlp_ratio", mlp_ratio),
        ):  # fmt: skip
            check_positive_int(cls, name, value)
        gate_weight_std = check_real(cls, "gate_weight_std", gate_weight_std, minimum=0.0)
        if dim % heads != 0:
            raise ValueError(f"{cls}: heads ({heads}) must divide dim ({dim})")
        if image_size % patch_size != 0:
            raise ValueError(
                f"{cls}: image_size ({image_size}) must be divisible by patch_size ({patch_size})"
            )
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.dim = dim
        self.heads = heads
        self.depth = depth
        self.mlp_ratio = mlp_ratio
        self.use_pos_embed = bool(use_pos_embed)
        self.gate_weight_std = gate_weight_std
        self.pooling = pooling
        self.grid = image_size // patch_size

        self.patch_embed = torch.nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        if self.use_pos_embed:
            self.pos_embed = torch.nn.Parameter(torch.zeros(1, dim, self.grid, self.grid))
        else:
            self.register_parameter("pos_embed", None)
        self.blocks = torch.nn.ModuleList(
            PLSTMVisionBlock(dim, heads, mode, mlp_ratio, gate_weight_std)
            for _ in range(depth)
            for mode in ("P", "D")
        )
        self.norm = torch.nn.RMSNorm(dim, eps=1e-5)
        self.head = torch.nn.Linear((4 if pooling == "corners" else 1) * dim, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default conv/linear init, N(0, 0.02²) positional embedding, block inits."""
        self.patch_embed.reset_parameters()
        if self.pos_embed is not None:
            with torch.no_grad():
                torch.nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for block in self.blocks:
            block.reset_parameters()
        self.norm.reset_parameters()
        self.head.reset_parameters()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, patch_size={self.patch_size}, "
            f"num_classes={self.num_classes}, dim={self.dim}, heads={self.heads}, "
            f"depth={self.depth}"
            + ("" if self.pooling == "corners" else f", pooling={self.pooling!r}")
            + ("" if self.in_channels == 3 else f", in_channels={self.in_channels}")
            + ("" if self.mlp_ratio == 4 else f", mlp_ratio={self.mlp_ratio}")
            + ("" if self.use_pos_embed else ", use_pos_embed=False")
            + ("" if not self.gate_weight_std else f", gate_weight_std={self.gate_weight_std!r}")
            + ")"
        )

    def embed(self, images: Tensor) -> Tensor:
        """Patch tokens plus (interpolated) positional embedding, ``[B, X, Y, D]``."""
        cls = type(self).__name__
        if not isinstance(images, Tensor):
            raise TypeError(f"{cls}: images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"{cls}: images must have shape [B, {self.in_channels}, H, W], "
                f"got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise TypeError(
                f"{cls}: images must be a floating-point tensor (scale integer pixels first, "
                f"e.g. images.float() / 255), got dtype {images.dtype}"
            )
        check_matches_parameters(cls, "images", images, self.patch_embed.weight)
        H, W = images.shape[-2:]
        p = self.patch_size
        if H % p or W % p or H == 0 or W == 0:
            raise ValueError(
                f"{cls}: image height and width must be positive multiples of patch_size = {p}, "
                f"got {H} x {W}"
            )
        tokens = self.patch_embed(images)  # [B, D, X, Y]
        if self.pos_embed is not None:
            pos = self.pos_embed
            if tuple(tokens.shape[-2:]) != tuple(pos.shape[-2:]):
                pos = F.interpolate(
                    pos, size=tokens.shape[-2:], mode="bicubic", align_corners=False
                )
            tokens = tokens + pos
        return tokens.permute(0, 2, 3, 1)

    def forward(self, images: Tensor) -> Tensor:
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if self.pooling == "mean":
            return self.head(x.mean((1, 2)))
        corners = torch.cat([x[:, 0, 0], x[:, 0, -1], x[:, -1, 0], x[:, -1, -1]], -1)
        return self.head(corners)
