"""DPM-Solver (Lu et al. 2022a, noise prediction) and DPM-Solver++ (Lu et al. 2022b, data prediction).

With lambda = log(m/s) the PF-ODE has the exact solution from (x_a, lambda_a) to lambda_b, h = lambda_b - lambda_a:
    data:   x_b = (s_b/s_a) x_a + m_b  int_0^h e^{-(h-u)} x0(lambda_a + u) du
    noise:  x_b = (m_b/m_a) x_a - s_b  int_0^h e^{+(h-u)} eps(lambda_a + u) du
Taylor-expanding the prediction y = x0 or eps in lambda gives x_b = A x_a + sum_k c_k y^(k)(lambda_a) with
    c_k = B h^(k+1) phi_(k+1)(z),  (A, B, z) = (s_b/s_a, m_b, -h) or (m_b/m_a, -s_b, h),
    phi_1(z) = (e^z - 1)/z,  phi_(k+1)(z) = (phi_k(z) - 1/k!)/z.
Derivatives come from earlier steps (multistep) or from intermediate evaluations (singlestep,
r = 1/2 for order 2; r = 1/3, 2/3 for order 3 as DPM-Solver-3). All coefficients are float64 tables.

Second-order updates come in two forms, both of order 2, with y' the divided difference of y in lambda
(from the previous step, or from the intermediate point at r = 1/2):
    ``midpoint``: x_b = A x_a + c_0 (y + h y' / 2)    (DPM-Solver++ Algorithm 2, k-diffusion's
                  sample_dpmpp_2m, the reference implementation's default "dpmsolver" type),
    ``heun``:     x_b = A x_a + c_0 y + c_1 y'         (the Taylor form, "taylor" in the reference).
The names are those of diffusers' ``solver_type``. They govern every second-order step (2M, 2S and
the second step of 3M); the third-order updates (3M after its warm-up, 3S) are the Taylor ones.
"""

from __future__ import annotations

import torch

from .base import Context, Option, choice, grid_options, register
from .timesteps import _invert_sigma


def _coefs(lam_a, m_a, s_a, lam_b, m_b, s_b, data: bool):
    """(A, c0, c1, c2) for steps from lambda_a to lambda_b (float64 tensors of equal shape)."""
    h = lam_b - lam_a
    z = -h if data else h
    phi1 = torch.expm1(z) / z
    phi2 = (phi1 - 1) / z
    phi3 = (phi2 - 0.5) / z
    A, B = (s_b / s_a, m_b) if data else (m_b / m_a, -s_b)
    return A, B * h * phi1, B * h**2 * phi2, B * h**3 * phi3


def _at(ctx: Context, lam: torch.Tensor):
    """(t, m, s) at log-SNR values lam (float64), through t(sigma) with sigma = e^-lambda."""
    t = _invert_sigma(ctx.sde, torch.exp(-lam), float(ctx.grid64[-1]))
    return (t, *ctx.sde.marginal(t))


@register("dpm_solver", "ode", 2, {"order": Option(2, choice(1, 2, 3)),
                                  "multistep": Option(True, choice(True, False)),
                                  "variant": Option("dpm_solver++", choice("dpm_solver++", "dpm_solver")),
                                  "solver_type": Option("midpoint", choice("midpoint", "heun")),
                                  **grid_options("logsnr")}, vp_only=True)
def dpm_solver(ctx: Context, x: torch.Tensor, order: int, multistep: bool, variant: str,
               solver_type: str) -> torch.Tensor:
    """DPM-Solver(++) of ``order`` 1-3: multistep (1 score evaluation per step, lower orders while the
    history fills) or singlestep (``order`` evaluations per step). ``dpm_solver++`` predicts data
    x0 = (x + s^2 score)/m, ``dpm_solver`` noise eps = -s score. Order 1 of either is DDIM (eta = 0).
    ``solver_type`` picks the second-order form (module docstring): ``midpoint`` (the paper's, default)
    or ``heun`` (Taylor)."""
    data = variant == "dpm_solver++"
    m, s = ctx.marginals()
    lam = m.log() - s.log()
    cast = lambda *ts: [ctx.cast(t) for t in ts]  # noqa: E731

    def predictor(mm, ss):  # y = P x + Q score
        return cast(1 / mm, ss.square() / mm) if data else cast(torch.zeros_like(mm), -ss)

    P, Q = predictor(m, s)
    h = lam[1:] - lam[:-1]
    coefs = _coefs(lam[:-1], m[:-1], s[:-1], lam[1:], m[1:], s[1:], data)
    second = coefs[2] if solver_type == "heun" else 0.5 * h * coefs[1]  # the coefficient of y' at order 2
    A, c0, c1, c2, c1_second = cast(*coefs, second)

    def y_at(x, i):
        return P[i] * x + Q[i] * ctx.score_at(x, ctx.grid[i])

    if multistep:
        inv_h, inv_h2 = cast(1 / h, 1 / (h[1:] + h[:-1]))  # 1/h_j and 1/(h_j + h_(j+1))
        hist: list[torch.Tensor] = []

        def step(x, i, t, tn):
            hist[:] = [y_at(x, i)] + hist[:2]
            k = min(order, len(hist))
            x = A[i] * x + c0[i] * hist[0]
            if k == 1:
                return x
            d01 = (hist[0] - hist[1]) * inv_h[i - 1]
            if k == 2:
                return x + c1_second[i] * d01
            d012 = (d01 - (hist[1] - hist[2]) * inv_h[i - 2]) * inv_h2[i - 2]
            return x + c1[i] * (d01 + d012 / inv_h[i - 1]) + c2[i] * 2 * d012
        return ctx.run(x, step)

    rs = {1: (), 2: (0.5,), 3: (1 / 3, 2 / 3)}[order]
    mids = []  # per intermediate r: (t, P, Q, A, c0, c1) from lambda_i to lambda_i + r h
    for r in rs:
        t_r, m_r, s_r = _at(ctx, lam[:-1] + r * h)
        mids.append(cast(t_r, *predictor(m_r, s_r), *_coefs(lam[:-1], m[:-1], s[:-1], lam[:-1] + r * h,
                                                             m_r, s_r, data)[:3], 1 / (r * h)))

    c1_last = c1_second if order == 2 else c1

    def single(x, i, t, tn):
        y0, dy = y_at(x, i), None
        for t_r, P_r, Q_r, A_r, c0_r, c1_r, inv_rh in mids:
            u = A_r[i] * x + c0_r[i] * y0 + (c1_r[i] * dy if dy is not None else 0)
            dy = (P_r[i] * u + Q_r[i] * ctx.score_at(u, t_r[i]) - y0) * inv_rh[i]
        return A[i] * x + c0[i] * y0 + (c1_last[i] * dy if dy is not None else 0)
    return ctx.run(x, single)
