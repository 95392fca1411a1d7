"""Time and label embeddings shared by the backbones, and their input checks.

A backbone sees the continuous time t in [0, T] (a (N,) tensor) and knows nothing of the SDE.
- ``sinusoidal``: [sin(w_k t'), cos(w_k t')] with t' = 1000 t and w_k = 10000^(-k/(d/2))
  (Vaswani et al. 2017; t' = 1000 t makes t = i/1000 the DDPM step index i, as in Ho et al. 2020).
- ``fourier``: [sin(2 pi W t), cos(2 pi W t)] with fixed random W ~ N(0, scale^2), kept as a
  buffer so it is saved with the weights (Tancik et al. 2020; Song et al. 2021 use scale 16).
Labels: ``num_classes`` embeddings plus one null label (index ``num_classes``) for
classifier-free guidance (Ho & Salimans 2022); y = None means the null label.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import checks

EMBEDDINGS = ("fourier", "sinusoidal")


class SinusoidalEmbedding(nn.Module):
    """t -> [sin(1000 t w), cos(1000 t w)], w_k = 10000^(-k/(dim/2)); shape (N, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        if checks.positive_int("emb_dim", dim) % 2:
            raise ValueError(f"emb_dim must be even, got {dim}.")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        w = torch.exp(-math.log(10000.0) / half * torch.arange(half, device=t.device, dtype=t.dtype))
        arg = 1000.0 * t[:, None] * w
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class FourierEmbedding(nn.Module):
    """t -> [sin(2 pi W t), cos(2 pi W t)] with fixed W ~ N(0, scale^2) (a buffer); shape (N, dim)."""

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        if checks.positive_int("emb_dim", dim) % 2:
            raise ValueError(f"emb_dim must be even, got {dim}.")
        self.dim = dim
        self.register_buffer("W", torch.randn(dim // 2) * checks.positive("scale", scale))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = 2 * math.pi * t[:, None] * self.W.to(t.dtype)
        return torch.cat([arg.sin(), arg.cos()], dim=1)


def time_embedding(kind: str, dim: int) -> nn.Module:
    """The time embedding named ``kind`` (``fourier`` or ``sinusoidal``) of even width ``dim``."""
    checks.one_of("embedding", kind, EMBEDDINGS)
    return FourierEmbedding(dim) if kind == "fourier" else SinusoidalEmbedding(dim)


class LabelEmbedding(nn.Module):
    """Class labels 0..num_classes-1 plus the null label ``num_classes`` -> vectors of width dim."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = checks.positive_int("num_classes", num_classes)
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        if y is None:
            y = torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        return self.table(y)


def check_inputs(x: torch.Tensor, t, y, *, num_classes: int | None, event_shape: str,
                 ok: bool) -> torch.Tensor:
    """Check a backbone's (x, t, y) and return t as a (N,) tensor on x's device and dtype.

    ``ok`` says whether x has the shape the backbone expects, described by ``event_shape``.
    """
    checks.float_tensor("x", x, finite=False)
    if not ok:
        raise ValueError(f"x must have shape {event_shape}, got {tuple(x.shape)}.")
    n = x.shape[0]
    t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"t must be a float or a tensor of shape ({n},), got shape {tuple(t.shape)}.")
    if y is not None:
        if num_classes is None:
            raise ValueError("labels y were given to an unconditional network; build it with "
                             "num_classes to use labels.")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.long or y.shape != (n,):
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"y must be a LongTensor of shape ({n},), got {got}.")
        if y.device.type == "cpu" and bool(((y < 0) | (y > num_classes)).any()):
            raise ValueError(f"labels y must lie in 0..{num_classes} ({num_classes} = the null "
                             f"label), got values in [{int(y.min())}, {int(y.max())}].")
    return t
