"""Deterministic samplers of the probability-flow ODE  dx/dt = f(t) x - g(t)^2 score(x, t) / 2."""

from __future__ import annotations

import torch
from torchdiffeq import odeint

from sde_diffusion import checks
from sde_diffusion.reverse import drift_coefs

from .base import Context, Option, choice, grid_options, register

ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4")


def tolerance(steps: int) -> float:
    """The tolerance rtol = atol = 100 / steps^3 an adaptive solver gets for a step count
    (10 -> 1e-1, 100 -> 1e-4, 1000 -> 1e-7): more steps, more work, as for every other method."""
    return 100.0 / steps**3


@register("ode", "ode", None, {"solver": Option("dopri5", choice(*ADAPTIVE, *FIXED)),
                              "rtol": Option(None, checks.positive), "atol": Option(None, checks.positive),
                              **grid_options()})
def ode(ctx: Context, x: torch.Tensor, solver: str, rtol: float | None, atol: float | None) -> torch.Tensor:
    """The PF-ODE from T to eps by ``torchdiffeq.odeint``: fixed-step ``solver`` (euler, midpoint,
    heun2, heun3, rk4) steps along the time grid; adaptive ones (dopri5, ...) choose their own steps
    to ``rtol``/``atol``, each ``tolerance(steps)`` = 100/steps^3 unless given (Song et al. 2021 use
    1e-5), with ``steps`` also the output times of ``return_trajectory``. When inpainting, one
    ``odeint`` call per grid interval (the known part is held in between; adaptive solvers then
    restart their step control each time). torchdiffeq synchronises with the host (time checks;
    adaptive step-size control every step); the drift itself does not."""
    sde = ctx.sde
    times = ctx.grid if solver in FIXED or ctx.trajectory is not None else ctx.grid[[0, -1]]
    rtol = tolerance(ctx.steps) if rtol is None else rtol
    atol = tolerance(ctx.steps) if atol is None else atol
    tol = {} if solver in FIXED else {"rtol": rtol, "atol": atol}
    lo, hi = float(ctx.grid64[-1]), float(ctx.grid64[0])  # adaptive step selection may probe beyond

    def drift(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The PF-ODE drift f(t) y - g(t)^2 score / 2 (``reverse.drift_coefs``), with the scalar
        coefficients taken at the scalar t (no per-sample time tensors per call)."""
        t = t.clamp(lo, hi)
        A, B = drift_coefs(sde, t, probability_flow=True)
        return A * y + B * ctx.score_at(y, t)

    def solve(y: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        try:
            return odeint(drift, y, times, method=solver, **tol)
        except AssertionError as e:  # torchdiffeq's "underflow in dt": the step-size control gave up
            raise ValueError(f"the ODE solver {solver} stalled ({e}) at rtol={rtol:g}, atol={atol:g}; the drift "
                             "is too stiff or too large here: loosen rtol/atol or use a fixed-step solver (rk4).") from e
    if ctx.known is not None:
        return ctx.run(x, lambda y, i, t, s: solve(y, ctx.grid[i:i + 2])[-1])
    return ctx.record_outputs(solve(x, times))


@register("heun", "ode", 2, grid_options("edm"))
def heun(ctx: Context, x: torch.Tensor) -> torch.Tensor:
    """Karras et al. (2022) Algorithm 1 in their preferred variables y = x/m(t), sigma = s(t)/m(t),
    where the PF-ODE reads  dy/dsigma = -sigma m score(m y, t) =: d(y, sigma)  for every SDE here:
        y' = y + h d(y, sigma_i),  y <- y + h (d(y, sigma_i) + d(y', sigma_{i+1})) / 2,  h = sigma_{i+1} - sigma_i,
    on the EDM grid (rho = 7) by default; 2 score evaluations per step (sigma(eps) > 0 throughout)."""
    m64, s64 = ctx.marginals()
    m, sig = ctx.cast(m64), ctx.cast(s64 / m64)
    c = ctx.cast(-s64)  # -sigma m = -s

    def d(y, i):
        return c[i] * ctx.score_at(m[i] * y, ctx.grid[i])

    def step(x, i, t, s):
        y, h = x / m[i], sig[i + 1] - sig[i]
        d0 = d(y, i)
        return m[i + 1] * (y + 0.5 * h * (d0 + d(y + h * d0, i + 1)))
    return ctx.run(x, step)
