"""The reverse-time SDE through ``torchsde.sdeint``.

torchsde integrates forwards in time on (N, D) states, so with u = T - t and y = x flattened:
    dy = -[f(t) x - g(t)^2 score(x, t)] du + g(t) dW_u,   u from 0 to T - eps,
with diagonal noise g(t) 1. The noise is additive (g independent of x), so Ito and Stratonovich
agree and every method below solves the same SDE. The Brownian path is a ``BrownianInterval``
seeded from ``generator``: same generator state, same path, at any query order.
"""

from __future__ import annotations

import torch
import torchsde
from einops import rearrange

from .base import Context, Option, choice, register

# torchsde's reversible_heun is not offered: its region of absolute stability is only the segment
# [-i, i] of the imaginary axis (Kidger et al. 2021), so on the reverse SDE's dissipative drift it
# diverges (dy = -40 y: 1e11 instead of 4e-18 at dt = 1e-3; ring2d at 1000 steps: radius 0.24, not 1)
SOLVERS = {"euler": "ito", "milstein": "ito", "srk": "ito"}


class _Reversed:
    """The reverse SDE in u = T - t on flattened states, in torchsde's (f, g) interface."""

    noise_type = "diagonal"

    def __init__(self, ctx: Context, shape: torch.Size, sde_type: str):
        self.rsde, self.T, self.shape, self.sde_type = ctx.sde.reverse(ctx.score), ctx.sde.T, shape, sde_type

    def f(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = y.reshape(self.shape)
        return -rearrange(self.rsde.drift(x, self.T - u), "n ... -> n (...)")

    def g(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.rsde.diffusion(self.T - u).to(y.dtype).expand_as(y)


@register("sde", "sde", None, {"solver": Option("euler", choice(*SOLVERS))}, own_noise=True)
def sde(ctx: Context, x: torch.Tensor, solver: str) -> torch.Tensor:
    """``torchsde.sdeint`` with ``solver`` in {euler, milstein, srk} and fixed
    dt = (T - eps)/steps on the uniform grid (srk uses the space-time Levy area). When inpainting,
    one ``sdeint`` call per grid interval on the same Brownian path, the known part held in between.
    torchsde synchronises with the host (its Brownian interval searches times there), as does drawing
    the path's seed from ``generator``; the drift and diffusion themselves do not.
    Weak order 1 with euler (tests/test_solvers_weak_order.py, Monte Carlo)."""
    u = ctx.sde.T - ctx.grid  # ascending from 0 to T - eps
    times = u if ctx.trajectory is not None else u[[0, -1]]
    y0 = rearrange(x, "n ... -> n (...)")
    seed = int(torch.randint(2**62, (), generator=ctx.generator,
                             device=ctx.generator.device if ctx.generator is not None else "cpu"))
    dt = float(ctx.grid64[0] - ctx.grid64[-1]) / ctx.steps
    bm = torchsde.BrownianInterval(t0=u[0], t1=u[-1], size=y0.shape, dtype=y0.dtype, device=y0.device, dt=dt,
                                   entropy=seed, levy_area_approximation="space-time" if solver == "srk" else "none")
    reverse = _Reversed(ctx, x.shape, SOLVERS[solver])

    def solve(y: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        ys = torchsde.sdeint(reverse, y, times, bm=bm, method=solver, dt=dt,
                             options={"grad_free": True} if solver == "milstein" else None)
        return ys.reshape(ys.shape[0], *x.shape)
    if ctx.known is not None:
        return ctx.run(x, lambda x, i, t, s: solve(rearrange(x, "n ... -> n (...)"), u[i:i + 2])[-1])
    return ctx.record_outputs(solve(y0, times))
