"""Euler-Maruyama on the reverse-time SDE  dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dw_bar."""

from __future__ import annotations

import torch
from sde_diffusion.reverse import drift_coefs

from .base import Context, register


def euler_maruyama_step(ctx: Context):
    t, dt = ctx.grid64[:-1], ctx.grid64[:-1] - ctx.grid64[1:]
    A, B = drift_coefs(ctx.sde, t)  # the reverse drift A x + B score at t_i
    keep, gain, sd = ctx.cast(1 - A * dt), ctx.cast(-B * dt), ctx.cast(ctx.sde.diffusion(t) * dt.sqrt())

    def step(x, i, t, s):
        return keep[i] * x + gain[i] * ctx.score_at(x, t) + sd[i] * ctx.noise(x)
    return step


@register("euler_maruyama", "sde", 1)
def euler_maruyama(ctx: Context, x: torch.Tensor) -> torch.Tensor:
    """Euler-Maruyama backwards in time, dt = t_i - t_{i+1} > 0 (Song et al. 2021, appendix):
        x_{i+1} = x_i - [f(t_i) x_i - g(t_i)^2 score(x_i, t_i)] dt + g(t_i) sqrt(dt) z,
    the reverse drift f - g^2 score (``reverse.drift_coefs``) tabulated once at the grid times.
    Draws: one z per step.
    Weak order 1 (tests/test_solvers_weak_order.py)."""
    return ctx.run(x, euler_maruyama_step(ctx))
