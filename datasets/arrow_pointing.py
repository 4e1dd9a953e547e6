"""Arrow Pointing Extrapolation (APE): does the arrow point at the disk?

The long-range vision task of pLSTM (Pöppel et al., 2025, https://arxiv.org/abs/2506.11997,
§5.1; generator ``ml-jku/arrow_pointing_dataset``), re-implemented from its description: a
white image holds a black arrow and a black disk; the label is 1 when the arrow's direction
passes through the disk. Object sizes are absolute pixels, identical at every resolution, so
testing at a larger resolution than training means larger distances and a larger token grid
with the same object scale ("extrapolation").

Sampling of one image of side ``W`` (``pad`` = ``boundary_padding``, ``s = W - 2 pad``):

1. label ``pointing = u < 0.5``; arrow length ``int(U(length_min, length_max))``; arrow width
   ``int(U(width_min, width_max))`` (``width_max`` exclusive, as ``int`` truncates), or
   ``width_min`` when the two are equal;
2. arrow centre ``a ~ U[0, s)^2``; radius ``r ~ U(radius_min, radius_max)``; disk centre per
   axis ``c = a + 2r + (s - 4r) U``, minus ``s`` if it exceeds ``s`` (so the disk is at least
   ``2r`` from the arrow along each axis, modulo the wrap);
3. with ``d = |c - a|`` and the margin factor ``f = 1.2``: a pointing arrow's angle is uniform
   within ``asin((r / f) / d)`` of the direction to the disk centre; a non-pointing one is
   uniform on the rest of the circle outside ``asin(min(1, f r / d))``. The margin keeps the
   two classes apart by a visible angle;
4. drawn at pixel centres: the shaft (length ``2 (L // 2)``, centred at ``a + pad``), two head
   strokes of length ``L // 2.5`` at ±0.5 rad from the tip, each of thickness ``width``, and
   the filled disk.

Protocols: ``"paper"`` (radius 15–30, arrow length 15–30, width 2–3, padding 30; 192² train,
384² extrapolation) and ``"half"`` (every length halved: radius 8–15, arrow length 8–15,
width 2, padding 15; 96² train, 192² extrapolation with patch 8 keeps the paper's 12×12 →
24×24 token grids).

Every image ``i`` of a split is drawn from its own generator seeded by ``(seed, i)``, so the
same arguments give the same images on any machine, in any order, and a prefix of a larger
split equals the smaller split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._checks import check_seed

__all__ = ["PROTOCOLS", "ArrowPointing", "ArrowPointingConfig", "generate_arrow_pointing"]


@dataclass(frozen=True)
class ArrowPointingConfig:
    """Geometry of the arrow-pointing images (pixels)."""

    radius_min: float
    radius_max: float
    length_min: int
    length_max: int
    width_min: int
    width_max: int
    boundary_padding: int
    min_dist_factor: float = 2.0
    margin_factor: float = 1.2


#: The two protocols: the paper's geometry and the brief's halved "half" one.
PROTOCOLS: dict[str, ArrowPointingConfig] = {
    "paper": ArrowPointingConfig(15, 30, 15, 30, 2, 4, 30),  # int(U(2, 4)): width 2 or 3
    "half": ArrowPointingConfig(8, 15, 8, 15, 2, 2, 15),
}


def _segment_mask(px, py, x0, y0, x1, y1, width):
    """Pixels within ``width / 2`` of the segment (x0, y0)-(x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    norm2 = dx * dx + dy * dy
    if norm2 == 0:
        t = np.zeros_like(px)
    else:
        t = np.clip(((px - x0) * dx + (py - y0) * dy) / norm2, 0.0, 1.0)
    ex, ey = px - (x0 + t * dx), py - (y0 + t * dy)
    return ex * ex + ey * ey <= (width / 2.0) ** 2


def _sample(
    rng: np.random.Generator, size: int, cfg: ArrowPointingConfig
) -> tuple[np.ndarray, int]:
    """One image ``[size, size]`` uint8 (255 = white) and its label."""
    pointing = bool(rng.random() < 0.5)
    length = int(rng.uniform(cfg.length_min, cfg.length_max))
    if cfg.width_max > cfg.width_min:
        width = int(rng.uniform(cfg.width_min, cfg.width_max))
    else:
        width = cfg.width_min
    pad = cfg.boundary_padding
    s = size - 2 * pad
    ax, ay = s * rng.random(), s * rng.random()
    r = cfg.radius_min + (cfg.radius_max - cfg.radius_min) * rng.random()
    off = cfg.min_dist_factor * r
    cx = ax + off + (s - 2 * off) * rng.random()
    cx = cx - s if cx > s else cx
    cy = ay + off + (s - 2 * off) * rng.random()
    cy = cy - s if cy > s else cy
    dist = math.hypot(cx - ax, cy - ay)
    phi0 = math.atan2(cy - ay, cx - ax)
    f = cfg.margin_factor
    if pointing:
        half = math.asin(min(1.0, (r / f) / dist))
        phi = phi0 - half + 2 * half * rng.random()
    else:
        half = math.asin(min(1.0, f * r / dist))
        phi = phi0 + half + (2 * math.pi - 2 * half) * rng.random()

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres: row y, col x
    ax, ay, cx, cy = ax + pad, ay + pad, cx + pad, cy + pad
    h = length // 2
    tx, ty = ax + h * math.cos(phi), ay + h * math.sin(phi)  # arrow tip
    ink = _segment_mask(xs, ys, ax - h * math.cos(phi), ay - h * math.sin(phi), tx, ty, width)
    head = length // 2.5
    for side in (-0.5, 0.5):
        bx, by = tx - head * math.cos(phi + side), ty - head * math.sin(phi + side)
        ink |= _segment_mask(xs, ys, bx, by, tx, ty, width)
    ink |= (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    return np.where(ink, 0, 255).astype(np.uint8), int(pointing)


def _check(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"arrow_pointing: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"arrow_pointing: {name} must be >= {minimum}, got {value}")
    return value


def generate_arrow_pointing(
    num_samples: int, image_size: int, seed: int, protocol: str = "half"
) -> tuple[Tensor, Tensor]:
    """Generate an APE split.

    Args:
        num_samples: number of images.
        image_size: side of the square images.
        seed: split seed; image ``i`` depends only on ``(seed, i, image_size, protocol)``.
        protocol: ``"half"`` or ``"paper"`` (see the module docstring).

    Returns:
        ``(images, labels)``: ``[N, image_size, image_size]`` uint8 (255 white, 0 black) and
        ``[N]`` int64 (1 = the arrow points at the disk).
    """
    _check("num_samples", num_samples, 0)
    check_seed("arrow_pointing", seed)  # an int or a numpy integer, as every generator's
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"arrow_pointing: protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}"
        )
    cfg = PROTOCOLS[protocol]
    # the disk must fit 2r away from the arrow along each axis inside the padded window
    smallest = 2 * cfg.boundary_padding + math.ceil(2 * cfg.min_dist_factor * cfg.radius_max)
    _check("image_size", image_size, smallest)
    images = np.empty((num_samples, image_size, image_size), dtype=np.uint8)
    labels = np.empty(num_samples, dtype=np.int64)
    for i in range(num_samples):
        rng = np.random.default_rng([seed, i])
        images[i], labels[i] = _sample(rng, image_size, cfg)
    return torch.from_numpy(images), torch.from_numpy(labels)


class ArrowPointing(torch.utils.data.Dataset):
    """APE split as a torch dataset, generated once in memory.

    Items are ``(image, label)``: ``image`` float32 ``[channels, S, S]`` scaled to ``[-1, 1]``
    (black -1, white 1; the images are grey, so the channels are copies, 3 by default as in
    the RGB original), ``label`` an int64 scalar.

    Args:
        num_samples (int): number of images.
        image_size (int): side ``S``.
        seed (int): split seed (see :func:`generate_arrow_pointing`).
        protocol (str, optional): ``"half"`` or ``"paper"``. (default: :obj:`"half"`)
        channels (int, optional): channels per image. (default: :obj:`3`)
    """

    def __init__(
        self,
        num_samples: int,
        image_size: int,
        seed: int,
        protocol: str = "half",
        channels: int = 3,
    ) -> None:
        _check("channels", channels, 1)
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.protocol = protocol
        self.channels = channels
        self.images, self.labels = generate_arrow_pointing(num_samples, image_size, seed, protocol)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index].float().mul_(2.0 / 255.0).sub_(1.0)
        return image.unsqueeze(0).expand(self.channels, -1, -1), self.labels[index]

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images ``[N, channels, S, S]`` (float32, ``[-1, 1]``) and labels ``[N]``."""
        x = self.images.float().mul_(2.0 / 255.0).sub_(1.0).unsqueeze(1)
        return x.expand(-1, self.channels, -1, -1), self.labels

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.num_samples}, image_size={self.image_size}, "
            f"seed={self.seed}, protocol={self.protocol!r})"
        )
