"""SA-Solver (Xue et al. 2023), the stochastic Adams predictor-corrector in the data-prediction form
(diffusers' ``SASolverScheduler(algorithm_type="data_prediction")`` with a constant ``tau_func``).

With lambda = log(m/s), h = lambda_(i+1) - lambda_i, a = 1 + tau^2 and the data prediction
x0_j = (x_j + s_j^2 score(x_j, t_j)) / m_j, the SA-Predictor of order p is
    x_(i+1) = (s_(i+1)/s_i) e^{-tau^2 h} x_i + sum_(k<p) b_k x0_(i-k) + s_(i+1) sqrt(1 - e^{-2 tau^2 h}) z_i,
    b_k = s_(i+1) e^{-tau^2 lambda_(i+1)} a int_(lambda_i)^(lambda_(i+1)) e^{a lambda} l_k(lambda) dlambda
        = a m_(i+1) int_0^h e^{-a (h - u)} l_k(lambda_i + u) du,
l_k the Lagrange basis on the nodes lambda_i, .., lambda_(i-p+1). The SA-Corrector of order c redoes
the step from the same x_i with the same z_i, on the nodes lambda_(i+1), .., lambda_(i+2-c), with the
evaluation x0_(i+1) at the predicted x_(i+1):
    x_(i+1)^c = (s_(i+1)/s_i) e^{-tau^2 h} x_i + sum_(k<c) b^c_k x0_(i+1-k) + s_(i+1) sqrt(1 - e^{-2 tau^2 h}) z_i.
The corrected state is the next predictor's base; x0_(i+1) stays the one at the predicted state (no
extra model call): NFE = steps. The last step has no corrector (there is no next evaluation). Orders
warm up as the history fills, p = min(predictor_order, i + 1), c = min(corrector_order, i + 2); there is
no lower-order final step. ``order2="released"`` replaces, on a step of order 2 (predictor or corrector),
int_0^h e^{-a(h-u)} u du = (a h - 1 + e^{-a h}) / a^2 by h^2/2: the released code's and diffusers' O(h^3)
change, after UniPC. It grows with h where the exact integral grows like h/a, so at few steps with a
wide log-SNR range (sub-VP down to small eps) it overshoots and the chain diverges; the default
``order2="exact"`` keeps the paper's integrals (Xue et al. 2023, sec. 4).
tau = 0 is the deterministic UniPC-like multistep ODE solver; tau = 1 the reverse SDE. VE works as is (m = 1).
Draws: exactly one z_i per step (K per run, plus the prior's), shared by the step's predictor and the
corrector of its result, drawn also at tau = 0 (coefficient 0), so the draw count never depends on the options.
Order 3 with the default 2/2 (the corrector raises the predictor's 2 by one, as UniC does), 2 with the
released weights (tests/test_solvers_weak_order.py).
All coefficients are float64 tables computed once before the loop; no host sync in the loop.
"""

from __future__ import annotations

import math

import torch

from sde_diffusion import checks
from .base import Context, Option, choice, grid_options, register


def _moments(H: float, n: int) -> list[float]:
    """I_j = int_0^1 e^{-H (1 - w)} w^j dw for j < n: the recursion I_j = (1 - j I_(j-1)) / H for H >= 1,
    else the series sum_k (-H)^k j! / (j + k + 1)! (where the recursion would cancel)."""
    if H >= 1:
        out = [-math.expm1(-H) / H]
        for j in range(1, n):
            out.append((1 - j * out[-1]) / H)
        return out
    return [sum((-H) ** k * math.factorial(j) / math.factorial(j + k + 1) for k in range(40)) for j in range(n)]


def _weights(nodes: list[float], h: float, a: float, released: bool) -> list[float]:
    """int_0^h e^{-a (h - u)} l_k(u) du for the Lagrange basis l_k on ``nodes`` (lambda - lambda_i), in
    w = u/h; with two nodes and ``released``, int e^{-a (h - u)} u du is taken as h^2/2 (module docstring)."""
    w = [u / h for u in nodes]
    moments = _moments(a * h, len(w))
    if len(w) == 2 and released:
        moments[1] = 0.5
    out = []
    for k, wk in enumerate(w):
        poly, denom = [1.0], 1.0                      # l_k(w) in ascending powers of w
        for j, wj in enumerate(w):
            if j != k:
                poly = [lo - wj * hi for lo, hi in zip([0.0] + poly, poly + [0.0])]
                denom *= wk - wj
        out.append(h * sum(c * i for c, i in zip(poly, moments)) / denom)
    return out


def _tables(lam: list[float], m: list[float], s: list[float], tau: float, p_order: int, c_order: int,
            released: bool):
    """Per step i: A_i = (s_(i+1)/s_i) e^{-tau^2 h}, the noise's Z_i = s_(i+1) sqrt(1 - e^{-2 tau^2 h}), the
    predictor's b on (x0_i, x0_(i-1), ..) and the corrector's on (x0_(i+1), x0_i, ..), zero-padded to 3."""
    K, a = len(lam) - 1, 1 + tau**2
    A, Z = torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
    P, C = torch.zeros((K, 3), dtype=torch.float64), torch.zeros((K, 3), dtype=torch.float64)
    for i in range(K):
        h = lam[i + 1] - lam[i]
        A[i] = s[i + 1] / s[i] * math.exp(-tau**2 * h)
        Z[i] = s[i + 1] * math.sqrt(-math.expm1(-2 * tau**2 * h))
        p = min(p_order, i + 1)
        for k, w in enumerate(_weights([lam[i - k] - lam[i] for k in range(p)], h, a, released)):
            P[i, k] = w * a * m[i + 1]
        c = min(c_order, i + 2)
        for k, w in enumerate(_weights([lam[i + 1 - k] - lam[i] for k in range(c)], h, a, released)):
            C[i, k] = w * a * m[i + 1]
    return A, Z, P, C


@register("sa_solver", "sde", 3, {"predictor_order": Option(2, choice(1, 2, 3)),
                                  "corrector_order": Option(2, choice(0, 1, 2, 3)),
                                  "tau": Option(1.0, checks.nonnegative),
                                  "order2": Option("exact", choice("exact", "released")), **grid_options("logsnr")})
def sa_solver(ctx: Context, x: torch.Tensor, predictor_order: int, corrector_order: int, tau: float,
              order2: str) -> torch.Tensor:
    """SA-Solver: SA-Predictor of ``predictor_order`` (1-3) and SA-Corrector of ``corrector_order`` (1-3; 0:
    none), stochasticity ``tau`` >= 0 (0: the ODE), ``order2`` the order-2 weights ("exact" or the released
    code's "released"), one score evaluation and one draw per step (module docstring)."""
    m, s = ctx.marginals()
    lam = m.log() - s.log()
    A, Z, P, C = (ctx.cast(t) for t in _tables(lam.tolist(), m.tolist(), s.tolist(), tau,
                                                  predictor_order, corrector_order, order2 == "released"))
    Pm, Qm = ctx.cast(1 / m), ctx.cast(s.square() / m)
    keep = max(predictor_order, corrector_order)
    hist: list[torch.Tensor] = []   # x0 at t_i, t_(i-1), .. (evaluated at the predicted states)
    prev: list[torch.Tensor] = []   # the last predictor's base x_(i-1) and draw z_(i-1)

    def step(x, i, t, tn):
        hist[:] = [Pm[i] * x + Qm[i] * ctx.score_at(x, t)] + hist[:keep - 1]
        if corrector_order and i > 0:
            xc = A[i - 1] * prev[0] + Z[i - 1] * prev[1]
            for k in range(min(corrector_order, i + 1)):
                xc = xc + C[i - 1, k] * hist[k]
            x = xc if ctx.known is None else torch.where(ctx.known.mask, x, xc)  # inpainting: keep the held part
        z = ctx.noise(x)
        prev[:] = [x, z]
        out = A[i] * x + Z[i] * z
        for k in range(min(predictor_order, i + 1)):
            out = out + P[i, k] * hist[k]
        return out
    return ctx.run(x, step)
