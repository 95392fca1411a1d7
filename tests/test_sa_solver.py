"""``sa_solver``: SA-Solver (Xue et al. 2023), stochastic Adams predictor-corrector, data prediction.

1. Transcription of the paper's SA-Predictor and SA-Corrector (sec. 4, data-prediction form with a
   constant tau) with the Lagrange-basis integrals taken by numerical quadrature of the paper's
   integrand, sigma_(i+1) (1 + tau^2) e^{-tau^2 (lambda_(i+1) - lambda)} e^{lambda} l_k(lambda), from the
   closed-form tables of ``_closed_forms`` on the non-uniform GRID, with the same injected draws;
   ``order2="released"`` adds the released code's order-2 terms as diffusers writes them; float64, 1e-12.
2. Parity with diffusers' SASolverScheduler (``order2="released"``, constant tau_func).
The weak order is in tests/test_solvers_weak_order.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import quad

from _closed_forms import GRID, SDES, at, score, start
from solvers.base import METHODS, Context, CountingScore
from test_dpm_solver_sde import Draws, diffusers_gap

TOL = dict(rtol=1e-12, atol=1e-12)


def run_ours(sde, grid, x, draws, **options):
    spec = METHODS["sa_solver"]
    opts = spec.bind(sde, len(grid) - 1, options)
    opts.pop("grid"), opts.pop("rho")
    ctx = Context(sde, CountingScore(score), grid.clone(), grid.clone(), None, draw=draws)
    return spec.fn(ctx, x.clone(), **opts), ctx.score.nfe


def lagrange(nodes, k):
    def l_k(lam):
        return math.prod((lam - nj) / (nodes[k] - nj) for j, nj in enumerate(nodes) if j != k)
    return l_k


def paper_step(x, x0s, nodes, lam, m, s, i, tau, z, released):
    """x_(i+1) from x_i: the exponential-integrator terms, sum_k b_k x0_k on ``nodes``, and the noise."""
    lo, hi, a = lam[i], lam[i + 1], 1 + tau**2
    h = hi - lo
    b = [quad(lambda u: s[i + 1] * a * math.exp(-tau**2 * (hi - u) + u) * lagrange(nodes, k)(u), lo, hi,
              epsabs=0, epsrel=1e-13, limit=200)[0] for k in range(len(nodes))]
    if released and len(nodes) == 2:   # diffusers' stochastic_adams_{bashforth,moulton}_update, order 2
        exact = (h * a - 1 + math.exp(-a * h)) / a**2
        extra = a * m[i + 1] * (h**2 / 2 - exact) / (nodes[0] - nodes[1])
        b[0], b[1] = b[0] + extra, b[1] - extra
    out = s[i + 1] / s[i] * math.exp(-tau**2 * h) * x + s[i + 1] * math.sqrt(1 - math.exp(-2 * tau**2 * h)) * z
    return out + sum(bk * x0 for bk, x0 in zip(b, x0s))


def paper(cf, grid, x, draws, p_order, c_order, tau, released):
    """Algorithm 1 with the model evaluated once per step, at the predicted state; no corrector on the
    last step; orders warm up as the history fills."""
    m, s = (v.tolist() for v in cf(grid)[:2])
    lam = [math.log(mi / si) for mi, si in zip(m, s)]
    K = len(grid) - 1

    def x0(y, j):
        return (y + s[j] ** 2 * score(y, at(grid[j], y))) / m[j]

    hist = [x0(x, 0)]
    for i in range(K):
        z = draws(x)
        p = min(p_order, i + 1)
        xp = paper_step(x, hist[:p], [lam[i - k] for k in range(p)], lam, m, s, i, tau, z, released)
        if i == K - 1:
            return xp
        hist = [x0(xp, i + 1)] + hist
        c = min(c_order, i + 2)
        x = paper_step(x, hist[:c], [lam[i + 1 - k] for k in range(c)], lam, m, s, i, tau, z, released) if c else xp


ORDERS = [(1, 0), (1, 1), (2, 0), (2, 2), (2, 3), (3, 1), (3, 3)]


@pytest.mark.parametrize("released", [False, True], ids=["exact", "released"])
@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("p_order,c_order", ORDERS)
@pytest.mark.parametrize("name", ["vp", "ve"])
def test_is_the_papers_sa_solver(name, p_order, c_order, tau, released):
    sde, cf = SDES[name]
    x = start(scale=1.0 if name == "vp" else 50.0)
    got, nfe = run_ours(sde, GRID, x, Draws(x.shape), predictor_order=p_order, corrector_order=c_order,
                        tau=tau, order2="released" if released else "exact")
    want = paper(cf, GRID, x, Draws(x.shape), p_order, c_order, tau, released)
    torch.testing.assert_close(got, want, **TOL)
    assert nfe == len(GRID) - 1


@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_one_draw_per_step(tau):
    sde, _ = SDES["vp"]
    x = start()
    d = Draws(x.shape)
    run_ours(sde, GRID, x, d, tau=tau)
    assert d.k == len(GRID) - 1


# -- 2. diffusers parity -------------------------------------------------------------------------------
@pytest.mark.parametrize("p_order,c_order,tau", [(2, 2, 1.0), (3, 3, 0.5), (1, 1, 1.0), (3, 2, 0.0)])
def test_is_diffusers_sasolver(monkeypatch, p_order, c_order, tau):
    """SASolverScheduler(algorithm_type="data_prediction") with tau_func = lambda t: tau needs
    timestep_spacing="trailing" (timesteps 999, 899, .., 99 of N = 1000 = our knots t = (k+1)/N; its last
    step lands on timestep 0's sigma = our t = 1/N) and lower_order_final=False (else its last steps
    drop order). It applies the released order-2 terms: ``order2="released"``. Its draws
    (``randn_tensor``) are replaced by our injected sequence, its float32 sigmas by float64."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.schedulers import scheduling_sasolver as mod

    sched = diffusers.SASolverScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        predictor_order=p_order, corrector_order=c_order, tau_func=lambda t: tau,
        algorithm_type="data_prediction", lower_order_final=False, timestep_spacing="trailing")
    assert diffusers_gap(monkeypatch, mod, sched, "sa_solver", predictor_order=p_order, corrector_order=c_order,
                         tau=tau, order2="released") < 1e-10
