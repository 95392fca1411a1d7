"""Observed convergence orders of the deterministic samplers against the exact probability flow.

Reference (not the package's code): data N(mu, diag(sigma0^2)) under VP, so p_t = N(m_t mu, v_t),
v_t = m_t^2 sigma0^2 + s_t^2 per coordinate, with score -(x - m_t mu) / v_t. The PF-ODE transports p_T
to p_t by the monotone map between two Gaussians, so along every trajectory (x_t - m_t mu)/sqrt(v_t)
is constant:
    x_eps = m_eps mu + sqrt(v_eps / v_T) (x_T - m_T mu),
checked by substitution: d/dt of the right side is f x - g^2 score / 2 since dv/dt = 2 f v + g^2.
m_t, s_t come from the closed forms of ``_closed_forms`` (linear beta), to eps = 1e-2 without
denoising, float64, 3 coordinates with sigma0 = 0.1, 0.5, 1.5.

The observed order is the least-squares slope of -log(max error) against log(steps) over a doubling
range chosen, per method and grid, where the local slopes have settled (measured: they vary by
< 0.1 across it); it must lie within 0.3 of the nominal order. Two grids per method: its default and
a second one with unequal log-SNR steps (``edm``; for the methods whose default is ``edm``: uniform t),
so that multistep updates are checked where h changes from step to step. Multistep methods start
with lower orders (a first-order first step adds an O(1/steps^2) error, with a tiny constant at t = T,
where the flow is nearly linear): the ranges are where the nominal order shows. (Deterministic.)
"""

import math

import pytest
import torch

import _cases
from _closed_forms import F64, SDES, vp
from solvers import METHODS, sample

EPS, SDE = 1e-2, SDES["vp"][0]
MU = torch.tensor([0.5, -1.0, 0.2], dtype=F64)
S0 = torch.tensor([0.1, 0.5, 1.5], dtype=F64)
X_T = torch.randn((8, 3), generator=torch.Generator().manual_seed(0), dtype=F64)

DPM = "dpm_solver"
LONG, SHORT = [80, 160, 320], [40, 80, 160]
CASES = [  # (id, method, options, nominal order, {grid: steps}); None is the method's default grid
    ("ddim", "ddim", {}, 1, {None: SHORT, "edm": SHORT}),
    ("heun", "heun", {}, 2, {None: SHORT, "uniform": LONG}),
    ("rk4", "ode", {"solver": "rk4"}, 4, {None: LONG, "edm": SHORT}),
    ("dpm++1", DPM, {"order": 1}, 1, {None: SHORT, "edm": SHORT}),
    ("dpm++2M", DPM, {"order": 2}, 2, {None: SHORT, "edm": LONG}),
    ("dpm++2M-heun", DPM, {"order": 2, "solver_type": "heun"}, 2, {None: SHORT, "edm": LONG}),
    ("dpm++3M", DPM, {"order": 3}, 3, {None: LONG, "edm": LONG}),
    ("dpm++2S", DPM, {"order": 2, "multistep": False}, 2, {None: LONG, "edm": LONG}),
    ("dpm++2S-heun", DPM, {"order": 2, "multistep": False, "solver_type": "heun"}, 2, {None: SHORT, "edm": SHORT}),
    ("dpm++3S", DPM, {"order": 3, "multistep": False}, 3, {None: LONG, "edm": LONG}),
    ("dpm2M", DPM, {"order": 2, "variant": "dpm_solver"}, 2, {None: SHORT, "edm": LONG}),
    # on the uniform log-SNR grid the third-order error of 3M with noise prediction nearly cancels
    # on a Gaussian (local orders 3.8, 3.7, 3.1, 2.5 from 40 to 640 steps, until the O(h^2) error
    # of its first-order first step shows): checked on two grids with unequal steps instead
    ("dpm3M", DPM, {"order": 3, "variant": "dpm_solver"}, 3, {"edm": LONG, "edm-rho15": [160, 320, 640]}),
    ("dpm3S", DPM, {"order": 3, "multistep": False, "variant": "dpm_solver"}, 3, {None: LONG, "edm": LONG}),
    # UniPC: UniP-p alone has order p; the corrector UniC raises it to p + 1 (Zhao et al. 2023,
    # Theorem 3.3), the last step's uncorrected predictor only adding one local O(h^(p+1)) error
    ("unipc1-P", "unipc", {"order": 1, "corrector": False}, 1, {None: SHORT, "edm": SHORT}),
    ("unipc2-P", "unipc", {"order": 2, "corrector": False}, 2, {None: SHORT, "edm": LONG}),
    ("unipc3-P", "unipc", {"order": 3, "corrector": False}, 3, {None: LONG, "edm": LONG}),
    ("unipc1", "unipc", {"order": 1}, 2, {None: SHORT, "edm": SHORT}),
    ("unipc2", "unipc", {}, 3, {None: SHORT, "edm": SHORT}),
    ("unipc2-bh1", "unipc", {"order": 2, "variant": "bh1"}, 3, {None: LONG, "edm": LONG}),
    # the default grid's local orders 3.5, 3.8, 3.9, 4.0 from 40 to 640 steps settle late
    ("unipc3", "unipc", {"order": 3}, 4, {None: [160, 320, 640], "edm": SHORT}),
    ("unipc3-bh1", "unipc", {"order": 3, "variant": "bh1"}, 4, {None: [160, 320, 640], "edm": SHORT}),
]


def score(x, t):
    m, s = (c[:, None] for c in vp(t)[:2])
    return -(x - m * MU) / (m**2 * S0**2 + s**2)


def exact() -> torch.Tensor:
    (mT, sT), (me, se) = vp(torch.tensor(1.0, dtype=F64))[:2], vp(torch.tensor(EPS, dtype=F64))[:2]
    vT, ve = mT**2 * S0**2 + sT**2, me**2 * S0**2 + se**2
    return me * MU + (ve / vT).sqrt() * (X_T - mT * MU)


def observed_order(steps, errors) -> float:
    x = torch.tensor([math.log(s) for s in steps], dtype=F64)
    y = torch.tensor([math.log(e) for e in errors], dtype=F64)
    x, y = x - x.mean(), y - y.mean()
    return float(-(x * y).sum() / x.square().sum())


def errors(method, opts, steps):
    ref = exact()
    return [float((sample(score, SDE, X_T.shape, method, k, x_T=X_T, dtype=F64, denoise=False, eps=EPS,
                          **opts).x - ref).abs().max()) for k in steps]


PARAMS = [pytest.param(method, opts, grid, steps, order, id=f"{name}-{grid or 'default'}")
          for name, method, opts, order, grids in CASES for grid, steps in grids.items()]


@pytest.mark.parametrize("method, opts, grid, steps, order", PARAMS)
def test_observed_order(method, opts, grid, steps, order):
    grid_opts = {} if grid is None else {"grid": "edm", "rho": 15.0} if grid == "edm-rho15" else {"grid": grid}
    errs = errors(method, {**opts, **grid_opts}, steps)
    assert abs(observed_order(steps, errs) - order) < 0.3, errs


def test_every_deterministic_method_has_an_order_case():
    """From the registry: every deterministic method has a case here (``ode`` through a fixed-step
    solver), and a case with the method's default options checks its declared order."""
    covered = {method for _, method, _, _, _ in CASES}
    assert not [m for m in _cases.deterministic() if m not in covered], "these methods need order cases here"
    for _, method, opts, order, _ in CASES:
        if not opts:
            assert order == METHODS[method].order, method


def test_the_reference_solves_the_probability_flow():
    """The closed form against dopri5 at rtol = atol = 1e-12 (independent of every method above)."""
    x = sample(score, SDE, X_T.shape, "ode", 1, solver="dopri5", rtol=1e-12, atol=1e-12, x_T=X_T, dtype=F64,
               denoise=False, eps=EPS).x
    torch.testing.assert_close(x, exact(), rtol=0, atol=1e-9)


def test_ddim_approaches_probability_flow():
    """DDIM (eta = 0) is a first-order PF-ODE solver: its error at 160 steps above is C/160 with
    C ~ 3 measured; at 1000 steps assert below 2 C/1000 = 6e-3."""
    assert errors("ddim", {}, [1000])[0] < 6e-3
