"""Deterministic samplers of the probability-flow ODE  dx/dt = f(t) x - g(t)^2 score(x, t) / 2."""

from __future__ import annotations

import math

import torch
from torchdiffeq import odeint

from sde_diffusion import checks
from sde_diffusion.reverse import drift_coefs

from .base import Context, Option, choice, grid_options, register
from .timesteps import _invert_sigma

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


def _nonnegative(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
    return float(value)


def _churn_check(sde, steps, o):
    if o["S_tmin"] > o["S_tmax"]:
        raise ValueError(f"S_tmin must be <= S_tmax, got S_tmin={o['S_tmin']!r} > S_tmax={o['S_tmax']!r}.")


@register("heun", "ode", 2, {"S_churn": Option(0.0, _nonnegative), "S_tmin": Option(0.0, _nonnegative),
                             "S_tmax": Option(math.inf, _nonnegative), "S_noise": Option(1.0, checks.positive),
                             **grid_options("edm")}, check=_churn_check, noisy=lambda o: o["S_churn"] > 0)
def heun(ctx: Context, x: torch.Tensor, S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = math.inf,
         S_noise: float = 1.0) -> torch.Tensor:
    """Karras et al. (2022) Algorithm 1 in their preferred variables y = x/m(t), sigma = s(t)/m(t),
    where the PF-ODE reads  dy/dsigma = -sigma m score(m y, t) =: d(y, sigma)  for every SDE here:
        y' = y + h d(y, sigma_i),  y <- y + h (d(y, sigma_i) + d(y', sigma_{i+1})) / 2,  h = sigma_{i+1} - sigma_i,
    on the EDM grid (rho = 7) by default; 2 score evaluations per step (sigma(eps) > 0 throughout).

    With ``S_churn`` > 0 it is their Algorithm 2 (stochastic): per step i, with N = steps,
        gamma_i = min(S_churn/N, sqrt(2) - 1) if S_tmin <= sigma_i <= S_tmax else 0,
        sigma_hat = sigma_i (1 + gamma_i),  y_hat = y + sqrt(sigma_hat^2 - sigma_i^2) S_noise z,
    then the Heun step above from (y_hat, sigma_hat) to sigma_{i+1}, the score at t_hat = t(sigma_hat)
    (bisection, ``timesteps._invert_sigma``) with m(t_hat). One departure: the score is only defined on
    [0, T], so sigma_hat is capped at sigma(T) (gamma_i <= sigma(T)/sigma_i - 1; at step 0 gamma_0 = 0).
    Draws: one z ~ N(0, I) (``ctx.noise``) per step where gamma_i > 0 (known before the loop), none
    elsewhere; S_churn = 0 is Algorithm 1, bit for bit. The gamma/sigma_hat/t_hat/m_hat tables are float64,
    built once. Weak order measured on Gaussian data (tests/test_heun_churn.py, N = 16, 32, 64):
    S_churn = 10: 1.8-1.9 on the edm and uniform grids, VP and VE (gamma_i = 10/N falls below the cap
    sqrt(2)-1 from N = 32 on, so the churn fades as the grid refines and Heun's order 2 shows);
    S_churn = 40: 1.1-1.4 (gamma_i stays at the cap over that range: a fixed relative churn per step)."""
    m64, s64 = ctx.marginals()
    sig64 = s64 / m64
    m, sig = ctx.cast(m64), ctx.cast(sig64)
    c = ctx.cast(-s64)  # -sigma m = -s

    def d(y, i):
        return c[i] * ctx.score_at(m[i] * y, ctx.grid[i])

    if S_churn == 0:
        def step(x, i, t, s):
            y, h = x / m[i], sig[i + 1] - sig[i]
            d0 = d(y, i)
            return m[i + 1] * (y + 0.5 * h * (d0 + d(y + h * d0, i + 1)))
        return ctx.run(x, step)

    N, top = ctx.steps, sig64[0]
    lo_hi = (sig64[:-1] >= S_tmin) & (sig64[:-1] <= S_tmax)
    gamma = torch.where(lo_hi, torch.full_like(sig64[:-1], min(S_churn / N, math.sqrt(2) - 1)), 0.0)
    gamma = torch.minimum(gamma, (top / sig64[:-1] - 1).clamp(min=0))  # sigma_hat <= sigma(T)
    churn = [bool(g > 0) for g in gamma]  # host-known: which steps draw
    sig_hat64 = sig64[:-1] * (1 + gamma)
    t_hat64 = torch.where(gamma > 0, _invert_sigma(ctx.sde, sig_hat64, float(ctx.grid64[-1])), ctx.grid64[:-1])
    m_hat64, s_hat64 = ctx.sde.marginal(t_hat64)
    m_hat64 = torch.where(gamma > 0, m_hat64, m64[:-1])
    amp, sig_hat = ctx.cast(torch.sqrt(sig_hat64**2 - sig64[:-1] ** 2) * S_noise), ctx.cast(sig_hat64)
    t_hat, m_hat, c_hat = ctx.cast(t_hat64), ctx.cast(m_hat64), ctx.cast(-sig_hat64 * m_hat64)

    def churned(x, i, t, s):
        y = x / m[i]
        if churn[i]:
            y = y + amp[i] * ctx.noise(y)
            d0 = c_hat[i] * ctx.score_at(m_hat[i] * y, t_hat[i])
            h = sig[i + 1] - sig_hat[i]
        else:
            d0, h = d(y, i), sig[i + 1] - sig[i]
        return m[i + 1] * (y + 0.5 * h * (d0 + d(y + h * d0, i + 1)))
    return ctx.run(x, churned)
