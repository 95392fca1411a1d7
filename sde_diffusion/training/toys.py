"""The built-in 2-D toy distributions: ``sample(n, generator) -> (n, 2)`` float64 tensors.
``data.load_dataset`` serves each under its name in ``TOYS`` (see ``data`` for seeds and sizes)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .. import analytic


def ring(n: int, gen: torch.Generator) -> torch.Tensor:
    """analytic.ring2d(): 8 equal modes N(mu_k, 0.05^2 I), |mu_k| = 1."""
    return analytic.ring2d().sample(n, gen, dtype=torch.float64)


def moons(n: int, gen: torch.Generator) -> torch.Tensor:
    """Two interleaved half circles of radius 2/3 (theta ~ U(0, pi)), centred at the origin,
    plus N(0, 0.05^2 I) noise: upper (cos, sin) - c, lower (1 - cos, 1/2 - sin) - c, c = (1/2, 1/4)."""
    theta = torch.rand(n, generator=gen, dtype=torch.float64) * math.pi
    lower = torch.rand(n, generator=gen, dtype=torch.float64) < 0.5
    upper_xy = torch.stack([theta.cos(), theta.sin()], 1)
    lower_xy = torch.stack([1 - theta.cos(), 0.5 - theta.sin()], 1)
    xy = torch.where(lower[:, None], lower_xy, upper_xy) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    return xy / 1.5 + 0.05 * torch.randn(n, 2, generator=gen, dtype=torch.float64)


def swissroll(n: int, gen: torch.Generator) -> torch.Tensor:
    """r (cos t, sin t) with t ~ U(1.5 pi, 4.5 pi), r = t / (4.5 pi) in [1/3, 1], plus N(0, 0.02^2 I)."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=gen, dtype=torch.float64))
    xy = t[:, None] / (4.5 * math.pi) * torch.stack([t.cos(), t.sin()], 1)
    return xy + 0.02 * torch.randn(n, 2, generator=gen, dtype=torch.float64)


def checkerboard(n: int, gen: torch.Generator) -> torch.Tensor:
    """Uniform on the 8 cells (i, j) with i + j even of a 4 x 4 board of 0.5-wide cells on [-1, 1]^2."""
    cell = torch.randint(8, (n,), generator=gen)
    i, j = cell // 2, 2 * (cell % 2) + (cell // 2) % 2
    corner = torch.stack([i, j], 1).double() * 0.5 - 1
    return corner + 0.5 * torch.rand(n, 2, generator=gen, dtype=torch.float64)


TOYS: dict[str, Callable[[int, torch.Generator], torch.Tensor]] = {
    "ring": ring, "moons": moons, "swissroll": swissroll, "checkerboard": checkerboard}
