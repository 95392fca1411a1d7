"""Euler-Maruyama on the reverse-time SDE  dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dw_bar."""

from __future__ import annotations

import torch

from .base import Context, register


def euler_maruyama_step(ctx: Context):
    rsde = ctx.sde.reverse(ctx.score)

    def step(x, i, t, s):
        dt = t - s
        return x - rsde.drift(x, t) * dt + rsde.diffusion(t) * dt.sqrt() * ctx.noise(x)
    return step


@register("euler_maruyama", "sde", 1)
def euler_maruyama(ctx: Context, x: torch.Tensor) -> torch.Tensor:
    """Euler-Maruyama backwards in time, dt = t_i - t_{i+1} > 0 (Song et al. 2021, appendix):
        x_{i+1} = x_i - [f(t_i) x_i - g(t_i)^2 score(x_i, t_i)] dt + g(t_i) sqrt(dt) z."""
    return ctx.run(x, euler_maruyama_step(ctx))
