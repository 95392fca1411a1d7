"""UniPC (Zhao et al. 2023): the unified predictor UniP-p and corrector UniC, data prediction (the
paper's "B(h)" multistep form, diffusers' ``UniPCMultistepScheduler(predict_x0=True)``).

With lambda = log(m/s), x0 = (x + s^2 score)/m and, for the step from t_i to t_(i+1),
h = lambda_(i+1) - lambda_i, hh = -h, the order-p predictor (UniP-p) is
    x_(i+1) = (s_(i+1)/s_i) x_i^c - m_(i+1) expm1(hh) y_i - m_(i+1) B(h) sum_(k<p) a_k D_k,
    D_k = (y_(i-k) - y_i) / r_k,   r_k = (lambda_(i-k) - lambda_i) / h,
with y_j the data prediction at the j-th evaluation, and B(h) = hh (``bh1``) or expm1(hh) (``bh2``).
The weights solve the order conditions  sum_k a_k r_k^(n-1) = g_n / B(h), n = 1..p-1, with
    g_n = n! (e^hh - sum_(j<=n) hh^j / j!) / hh^n,
except for p = 2, where a_1 = 1/2 (the paper's and diffusers' choice). The corrector UniC applied to
x_(i+1) reuses the next step's evaluation y_(i+1) = x0(x_(i+1)), with r_p = 1 and D_p = y_(i+1) - y_i:
    x_(i+1)^c = (s_(i+1)/s_i) x_i^c - m_(i+1) expm1(hh) y_i - m_(i+1) B(h) sum_(k<=p) c_k D_k,
    sum_k c_k r_k^(n-1) = g_n / B(h), n = 1..p  (p = 1: c_1 = 1/2),
p being the predictor's order on that step. The corrected state is the base of the next predictor
step; the evaluation stays the one at the uncorrected state (no extra model call), so NFE = steps.
The last step has no corrector (there is no next evaluation: the released code's ``use_corrector``
is off on the final step, and diffusers' last ``step`` call only predicts). The order warms up as
the history fills (p = min(order, i + 1)); there is no lower-order final step. All weights are
float64 tables computed once before the loop.
"""

from __future__ import annotations

import math

import torch

from .base import Context, Option, choice, grid_options, register


def _g(hh: float, n: int) -> float:
    """g_n(hh) = n! (e^hh - sum_(j<=n) hh^j/j!) / hh^n by the recursion phi <- phi/hh - 1/n!."""
    phi, fact = math.expm1(hh) / hh - 1, 1.0
    for k in range(1, n):
        fact *= k + 1
        phi = phi / hh - 1 / fact
    return phi * math.factorial(n)


def _weights(rks: list[float], hh: float, bh: float, special: float | None) -> list[float]:
    """Solve sum_k w_k r_k^(n-1) = g_n / B(h), n = 1..len(rks) (or the fixed 1/2 when ``special``)."""
    if special is not None:
        return [special]
    R = torch.tensor([[r ** n for r in rks] for n in range(len(rks))], dtype=torch.float64)
    b = torch.tensor([_g(hh, n) / bh for n in range(1, len(rks) + 1)], dtype=torch.float64)
    return torch.linalg.solve(R, b).tolist()


def _tables(lam: torch.Tensor, m: torch.Tensor, s: torch.Tensor, order: int, variant: str):
    """Per step i: A_i = s_(i+1)/s_i and the coefficients of the predictor on (y_i, y_(i-1), ..) and
    of the corrector on (y_(i+1), y_i, y_(i-1), ..), zero-padded to (steps, order + 1)."""
    K = lam.shape[0] - 1
    lam_, m_ = lam.tolist(), m.tolist()
    A = (s[1:] / s[:-1]).clone()
    P = torch.zeros((K, order + 1), dtype=torch.float64)
    C = torch.zeros((K, order + 1), dtype=torch.float64)
    for i in range(K):
        p = min(order, i + 1)
        h = lam_[i + 1] - lam_[i]
        hh = -h
        bh = hh if variant == "bh1" else math.expm1(hh)
        mb, c0 = m_[i + 1], -m_[i + 1] * math.expm1(hh)
        rks = [(lam_[i - k] - lam_[i]) / h for k in range(1, p)]
        # predictor: y_i c0 - mb bh sum_k a_k (y_(i-k) - y_i) / r_k
        a = _weights(rks, hh, bh, 0.5 if p == 2 else None) if p > 1 else []
        P[i, 0] = c0 + mb * bh * sum(ak / r for ak, r in zip(a, rks))
        for k, (ak, r) in enumerate(zip(a, rks), 1):
            P[i, k] = -mb * bh * ak / r
        # corrector: as the predictor, plus c_p (y_(i+1) - y_i)
        c = _weights(rks + [1.0], hh, bh, 0.5 if p == 1 else None)
        C[i, 0] = -mb * bh * c[-1]
        C[i, 1] = c0 + mb * bh * (sum(ck / r for ck, r in zip(c, rks)) + c[-1])
        for k, (ck, r) in enumerate(zip(c, rks), 1):
            C[i, k + 1] = -mb * bh * ck / r
    return A, P, C


@register("unipc", "ode", 3, {"order": Option(2, choice(1, 2, 3)),
                              "variant": Option("bh2", choice("bh2", "bh1")),
                              "corrector": Option(True, choice(True, False)),
                              **grid_options("logsnr")}, vp_only=True)
def unipc(ctx: Context, x: torch.Tensor, order: int, variant: str, corrector: bool) -> torch.Tensor:
    """UniPC-``order`` (1-3) multistep with data prediction (module docstring): predictor UniP with
    B(h) = ``variant`` (``bh1``: -h, ``bh2``: e^-h - 1, the default as in diffusers) and, with
    ``corrector``, UniC on every step but the last, from the next step's evaluation (1 score
    evaluation per step)."""
    m, s = ctx.marginals()
    lam = m.log() - s.log()
    A, P, C = (ctx.cast(t) for t in _tables(lam, m, s, order, variant))
    Pm, Qm = ctx.cast(1 / m), ctx.cast(s.square() / m)
    hist: list[torch.Tensor] = []
    base: list[torch.Tensor] = []  # the (corrected) state x_i^c the last predictor started from

    def step(x, i, t, tn):
        y = Pm[i] * x + Qm[i] * ctx.score_at(x, ctx.grid[i])
        if corrector and i > 0:
            p = min(order, i)
            x = A[i - 1] * base[0] + C[i - 1, 0] * y
            for k in range(p):
                x = x + C[i - 1, k + 1] * hist[k]
        hist[:] = [y] + hist[:order - 1]
        base[:] = [x]
        out = A[i] * x
        for k in range(min(order, i + 1)):
            out = out + P[i, k] * hist[k]
        return out
    return ctx.run(x, step)
