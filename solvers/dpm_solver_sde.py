"""DPM-Solver++ SDE, multistep (Lu et al. 2022b, section 5; k-diffusion's ``sample_dpmpp_2m_sde`` and
``sample_dpmpp_3m_sde``; diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++") at eta = 1).

With lambda = log(m/s), h = lambda_{i+1} - lambda_i, H = (1 + eta) h and the data prediction
x0_i = (x_i + s_i^2 score(x_i, t_i)) / m_i, every step is
    x_{i+1} = (s_{i+1}/s_i) e^{-eta h} x_i + m_{i+1} (1 - e^{-H}) x0_i + m_{i+1} C_i
              + s_{i+1} sqrt(1 - e^{-2 eta h}) z_i,
(k-diffusion's rule in sigma = s/m and x/m, multiplied through by m_{i+1}), with the correction C_i:
    first step (no history):   C = 0,
    order 2, D = (x0_i - x0_{i-1}) / r, r = h_{i-1}/h_i:
        ``midpoint``:  C = (1 - e^{-H}) D / 2,
        ``heun``:      C = (1 - (1 - e^{-H})/H) D,
    order 3 (from the third step on), r0 = h_{i-1}/h_i, r1 = h_{i-2}/h_i,
        d0 = (x0_i - x0_{i-1})/r0, d1 = (x0_{i-1} - x0_{i-2})/r1,
        D1 = d0 + (d0 - d1) r0/(r0 + r1),  D2 = (d0 - d1)/(r0 + r1),
        phi2 = 1 - (1 - e^{-H})/H,  phi3 = phi2/H - 1/2,   C = phi2 D1 - phi3 D2
    (order 3's second step is the order-2 one of ``solver_type``; k-diffusion's 3M SDE is ``heun``).
eta = 0 is DPM-Solver++(2M/3M) (the ODE); eta = 1 the reverse SDE's exact-noise form.
Draws: exactly one z per step (K per run, plus the prior's), whatever eta (at eta = 0 its
coefficient is 0), so a run's draw count never depends on the options. VE works as is (m = 1).
Weak order 2 on Gaussian data for 2M and 3M alike, logsnr and edm grids (tests/test_dpm_solver_sde.py).
All coefficients are float64 tables cast once; no host sync in the loop.
"""

from __future__ import annotations

import torch

from sde_diffusion import checks
from .base import Context, Option, choice, grid_options, register


@register("dpm_solver_sde", "sde", 2, {"order": Option(2, choice(2, 3)),
                                       "solver_type": Option("midpoint", choice("midpoint", "heun")),
                                       "eta": Option(1.0, checks.nonnegative), **grid_options("logsnr")})
def dpm_solver_sde(ctx: Context, x: torch.Tensor, order: int, solver_type: str, eta: float) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (``order`` 2) or (3M) SDE (``order`` 3), one score evaluation and one
    draw per step; ``solver_type`` the second-order form, ``eta`` >= 0 the noise scale (module docstring)."""
    m, s = ctx.marginals()
    lam = m.log() - s.log()
    h = lam[1:] - lam[:-1]
    H = (1 + eta) * h
    e = -torch.expm1(-H)                                  # 1 - e^{-H}
    phi2 = 1 - e / H
    phi3 = phi2 / H - 0.5
    mb = m[1:]
    A = s[1:] / s[:-1] * torch.exp(-eta * h)
    c0 = mb * e
    c2nd = 0.5 * mb * e if solver_type == "midpoint" else mb * phi2
    cz = s[1:] * torch.sqrt(-torch.expm1(-2 * eta * h))
    one = torch.ones(1, dtype=h.dtype)
    r0 = torch.cat([one, h[:-1] / h[1:]])                 # r0[i] = h_{i-1}/h_i (i >= 1)
    r1 = torch.cat([one, one, h[:-2] / h[2:]])            # r1[i] = h_{i-2}/h_i (i >= 2)
    P, Q, A, c0, c2nd, cz, c1, c3, inv_r0, inv_r1, w, inv_r01 = (ctx.cast(t) for t in (
        1 / m, s.square() / m, A, c0, c2nd, cz, mb * phi2, mb * phi3, 1 / r0, 1 / r1, r0 / (r0 + r1), 1 / (r0 + r1)))
    hist: list[torch.Tensor] = []

    def step(x, i, t, tn):
        hist[:] = [P[i] * x + Q[i] * ctx.score_at(x, t)] + hist[:2]
        k = min(order, len(hist))
        out = A[i] * x + c0[i] * hist[0]
        if k == 2:
            out = out + c2nd[i] * (hist[0] - hist[1]) * inv_r0[i]
        elif k == 3:
            d0 = (hist[0] - hist[1]) * inv_r0[i]
            d1 = (hist[1] - hist[2]) * inv_r1[i]
            out = out + c1[i] * (d0 + (d0 - d1) * w[i]) - c3[i] * (d0 - d1) * inv_r01[i]
        return out + cz[i] * ctx.noise(x)
    return ctx.run(x, step)
