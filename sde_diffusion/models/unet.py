"""A small U-Net backbone for images (N, C, H, W): net(x, t, y=None) -> (N, C, H, W).

DDPM-style (Ho et al. 2020): residual blocks with GroupNorm and an added time [+ label]
embedding, self-attention at the spatial sizes listed in ``attention_resolutions`` and in the
middle, stride-2 convolutions down and nearest-neighbour upsampling to the size of the matching
skip connection, so odd sizes work (28 -> 14 -> 7 -> 14 -> 28; 7 -> 4 -> 7).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .. import checks
from .embeddings import LabelEmbedding, check_inputs, time_embedding


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer so that a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """h + conv(dropout(SiLU(GN(conv(SiLU(GN(h))) + W c)))), with a 1x1 skip when channels change."""

    def __init__(self, c_in: int, c_out: int, emb: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Sequential(_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb, c_out))
        self.conv2 = nn.Sequential(_norm(c_out), nn.SiLU(), nn.Dropout(dropout),
                                   _zero(nn.Conv2d(c_out, c_out, 3, padding=1)))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = self.conv1(h) + rearrange(self.emb(c), "n c -> n c 1 1")
        return self.skip(h) + self.conv2(out)


class Attention(nn.Module):
    """h + proj(softmax(q k^T / sqrt(d)) v) over the H*W positions, ``heads`` heads."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention_heads ({heads}) must divide every level's channels, "
                             f"got {channels} channels.")
        self.heads = heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(self.norm(h)), "n (three g d) x y -> three n g (x y) d",
                            three=3, g=self.heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return h + self.proj(rearrange(out, "n g (x y) d -> n (g d) x y", x=h.shape[2]))


class _Level(nn.Module):
    """The residual blocks, each followed by attention if ``attn``, at one resolution."""

    def __init__(self, c_ins: list[int], c_out: int, emb: int, dropout: float, attn: bool, heads: int):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(c, c_out, emb, dropout) for c in c_ins)
        self.attn = nn.ModuleList(Attention(c_out, heads) if attn else nn.Identity() for _ in c_ins)

    def forward(self, h: torch.Tensor, c: torch.Tensor, skips: list | None = None,
                store: list | None = None) -> torch.Tensor:
        """Run the blocks; concatenate a popped skip before each block if ``skips``, push to ``store``."""
        for res, attn in zip(self.res, self.attn):
            h = attn(res(torch.cat([h, skips.pop()], 1) if skips is not None else h, c))
            if store is not None:
                store.append(h)
        return h


class UNet(nn.Module):
    """U-Net for square ``image_size`` images with levels of ``base_channels * channel_mults[l]``
    channels, the size halving (rounding up) between levels, ``blocks_per_level`` residual blocks
    per level on each side, attention at the levels whose size is in ``attention_resolutions`` and
    in the middle, and class conditioning through a label embedding with a null label when
    ``num_classes`` is given. ``out_channels`` (default ``in_channels``) is 2 in_channels for a
    learned-variance model (prediction and v)."""

    def __init__(self, in_channels: int = 1, base_channels: int = 32, channel_mults: tuple = (1, 2),
                 blocks_per_level: int = 2, attention_resolutions: tuple = (4,), dropout: float = 0.0,
                 num_classes: int | None = None, image_size: int = 8, embedding: str = "sinusoidal",
                 attention_heads: int = 4, out_channels: int | None = None):
        super().__init__()
        self.in_channels = checks.positive_int("in_channels", in_channels)
        self.image_size = checks.positive_int("image_size", image_size)
        checks.positive_int("base_channels", base_channels)
        checks.positive_int("blocks_per_level", blocks_per_level)
        checks.positive_int("attention_heads", attention_heads)
        if not channel_mults or any(isinstance(m, bool) or not isinstance(m, int) or m < 1
                                    for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty tuple of ints >= 1, got {channel_mults!r}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}.")
        self.num_classes = num_classes
        emb, n = 4 * base_channels, blocks_per_level
        self.time_embed = nn.Sequential(time_embedding(embedding, emb), nn.Linear(emb, emb), nn.SiLU(),
                                        nn.Linear(emb, emb))
        self.label_embed = LabelEmbedding(num_classes, emb) if num_classes is not None else None
        chans = [base_channels * m for m in channel_mults]
        attn = [math.ceil(image_size / 2**i) in tuple(attention_resolutions) for i in range(len(chans))]
        self.inp = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList(_Level([c_prev] + [c] * (n - 1), c, emb, dropout, a, attention_heads)
                                  for c_prev, c, a in zip([base_channels] + chans, chans, attn))
        self.downsample = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in chans[:-1])
        self.mid = _Level([chans[-1]] * 2, chans[-1], emb, dropout, True, attention_heads)
        self.up = nn.ModuleList(_Level([c_prev + c] + [2 * c] * (n - 1), c, emb, dropout, a, attention_heads)
                                for c_prev, c, a in zip(chans[-1:] + chans[::-1], chans[::-1], attn[::-1]))
        self.upsample = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for c in chans[:0:-1])
        self.out = nn.Sequential(_norm(chans[0]), nn.SiLU(),
                                 _zero(nn.Conv2d(chans[0], out_channels or in_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        size = self.image_size
        t = check_inputs(x, t, y, num_classes=self.num_classes,
                         event_shape=f"(N, {self.in_channels}, {size}, {size})",
                         ok=x.ndim == 4 and tuple(x.shape[1:]) == (self.in_channels, size, size))
        c = self.time_embed(t)
        if self.label_embed is not None:
            c = c + self.label_embed(y, x.shape[0], x.device)
        h, skips = self.inp(x), []
        for i, level in enumerate(self.down):
            h = level(h, c, store=skips)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, c)
        for i, level in enumerate(self.up):
            h = level(h, c, skips=skips)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        return self.out(h)
