"""A residual MLP backbone for vector data (N, D): net(x, t, y=None) -> (N, D)."""

from __future__ import annotations

import torch
from torch import nn

from .. import checks
from .embeddings import LabelEmbedding, check_inputs, time_embedding


class _Block(nn.Module):
    """h + W2 SiLU(W1 SiLU(LayerNorm(h)) + c), with c the projected time/label conditioning."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1, self.cond, self.fc2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), \
            nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.act(self.fc1(self.act(self.norm(h))) + self.cond(c)))


class MLPScore(nn.Module):
    """Residual MLP: x -> Linear -> ``blocks`` x residual block(time [+ label] embedding) -> Linear.

    The time embedding (``fourier`` or ``sinusoidal``, width ``emb_dim``) goes through a two-layer
    SiLU MLP; with ``num_classes`` a label embedding (with the null label ``num_classes``) is added.
    ``out_dim`` (default ``dim``) is 2 dim for a learned-variance model (prediction and v).
    """

    def __init__(self, dim: int, hidden: int = 256, blocks: int = 3, embedding: str = "fourier",
                 emb_dim: int = 64, num_classes: int | None = None, out_dim: int | None = None):
        super().__init__()
        self.dim = checks.positive_int("dim", dim)
        checks.positive_int("hidden", hidden)
        checks.positive_int("blocks", blocks)
        self.num_classes = num_classes
        self.time_embed = nn.Sequential(time_embedding(embedding, emb_dim), nn.Linear(emb_dim, hidden),
                                        nn.SiLU(), nn.Linear(hidden, hidden))
        self.label_embed = LabelEmbedding(num_classes, hidden) if num_classes is not None else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, out_dim or dim))

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        t = check_inputs(x, t, y, num_classes=self.num_classes, event_shape=f"(N, {self.dim})",
                         ok=x.ndim == 2 and x.shape[1] == self.dim)
        c = self.time_embed(t)
        if self.label_embed is not None:
            c = c + self.label_embed(y, x.shape[0], x.device)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)
