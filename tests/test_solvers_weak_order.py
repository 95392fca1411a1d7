"""Weak order of every stochastic sampler, from the exact output law on Gaussian data (``_weak``).

Each case: (id, method, options, sde, nominal weak order, {range name: steps}); the slope of the
weak error (mean and variance at eps) over the doubling steps must lie within TOL of the order.
Ranges were chosen where the local slopes have settled (measured first).

Euler-Maruyama on VE measures order 2, not 1: with f = 0 and a linear score the O(dt) errors of
the mean and variance cancel on this Gaussian (an observed superconvergence of this test problem,
not a property of EM in general); the case states the measured 2.

pc with the Langevin corrector at fixed snr sets its step e from batch means of the norms: one
scalar per step shared by the whole batch, so ``output_law``'s affine check passes, but the law it
reads belongs to its artificial unit-draw batch, not to a real batch; the exact method does not
apply and no Langevin case is stated here (pc's predictors are covered with corrector="none"). ``sde`` (torchsde) draws
its own Brownian path and refuses noise=: it gets a Monte Carlo check, marked slow. ``adaptive_sde``
has no step count (its tolerances set the steps) and its steps depend on the draws, so its law is not
affine in them: its Monte Carlo checks are in ``tests/test_adaptive_sde.py``.

On Gaussian data the data prediction is linear in x and the exponential integrators (DPM-Solver++ SDE,
SA-Solver) take the noise exactly, so their weak error is that of the interpolation of x0 in lambda:
SA-Solver's corrector of order 2 after a predictor of order 2 then shows order 3, as UniC does on the ODE.
"""

from __future__ import annotations

import pytest
import torch

import _cases
from _closed_forms import F64, SDES
from _weak import output_law, slope, weak_error
from solvers import METHODS

EPS, TOL = 1e-2, 0.3
LOW, HIGH = [20, 40, 80, 160], [40, 80, 160, 320]

CASES = [
    ("em-vp", "euler_maruyama", {}, "vp", 1, {"low": LOW, "high": HIGH}),
    ("em-ve", "euler_maruyama", {}, "ve", 2, {"low": LOW, "high": HIGH}),   # superconvergence, see above
    ("rd-vp", "reverse_diffusion", {}, "vp", 1, {"low": LOW, "high": HIGH}),
    ("rd-ve", "reverse_diffusion", {}, "ve", 1, {"low": LOW, "high": HIGH}),
    ("anc-vp", "ancestral", {}, "vp", 1, {"low": LOW, "high": HIGH}),
    ("anc-ve", "ancestral", {}, "ve", 1, {"low": LOW, "high": HIGH}),
    ("ddim-eta1-vp", "ddim", {"eta": 1.0}, "vp", 1, {"uniform": LOW, "high": HIGH}),
    ("ddim-eta1-edm-vp", "ddim", {"eta": 1.0, "grid": "edm"}, "vp", 1, {"edm": LOW, "high": HIGH}),
    ("ddim-eta05-vp", "ddim", {"eta": 0.5}, "vp", 1, {"uniform": HIGH}),
    ("pc-rd-vp", "pc", {"corrector": "none"}, "vp", 1, {"low": LOW, "high": HIGH}),
    ("pc-em-vp", "pc", {"predictor": "euler_maruyama", "corrector": "none"}, "vp", 1, {"low": LOW, "high": HIGH}),
    ("pc-anc-ve", "pc", {"predictor": "ancestral", "corrector": "none"}, "ve", 1, {"low": LOW, "high": HIGH}),
    # S_churn / N shrinks the churn as N grows, so Heun's order 2 shows (tests/test_heun_churn.py)
    ("heun-churn10-vp", "heun", {"S_churn": 10.0}, "vp", 2, {"edm": [16, 32, 64]}),
    ("dpmpp2m-sde-vp", "dpm_solver_sde", {}, "vp", 2, {"logsnr": [40, 80, 160]}),
    ("dpmpp2m-sde-heun-ve", "dpm_solver_sde", {"solver_type": "heun"}, "ve", 2, {"logsnr": [40, 80, 160]}),
    # predictor 2 + corrector 2: the corrector raises the order by one on this linear problem (see above)
    ("sa-solver-vp", "sa_solver", {}, "vp", 3, {"logsnr": [40, 80, 160]}),   # measured 2.96
    ("sa-solver-ve", "sa_solver", {}, "ve", 3, {"logsnr": [40, 80, 160]}),   # measured 2.96
    # the released code's h^2/2 weight is an O(h^3) local change: order 2
    ("sa-solver-released-vp", "sa_solver", {"order2": "released"}, "vp", 2, {"logsnr": [40, 80, 160]}),  # 2.25
    ("sa-solver-released-ve", "sa_solver", {"order2": "released"}, "ve", 2, {"logsnr": [40, 80, 160]}),  # 2.29
    ("dpmpp3m-sde-vp", "dpm_solver_sde", {"order": 3, "solver_type": "heun"}, "vp", 2, {"logsnr": [40, 80, 160]}),
]
PARAMS = [pytest.param(m, o, s, k, steps, id=f"{cid}-{rng}")
          for cid, m, o, s, k, ranges in CASES for rng, steps in ranges.items()]


@pytest.mark.parametrize("method,options,sde,order,steps", PARAMS)
def test_weak_order(method, options, sde, order, steps):
    errors = [weak_error(method, *SDES[sde], n, EPS, **options) for n in steps]
    measured = slope(steps, errors)
    assert abs(measured - order) <= TOL, f"{method} {options} on {sde}: slope {measured:.2f}, order {order}"


@pytest.mark.slow
def test_sde_torchsde_monte_carlo():
    """torchsde's euler on 1-D VP data by Monte Carlo (4e5 samples, seed 0 per run): weak order 1
    over 20, 40, 80 steps (measured slope about 1.2; sampling noise of the variance about 8e-4 at 80
    steps, against an error of about 5e-3)."""
    from solvers import sample
    from _weak import gaussian_score, target
    mu, s0 = torch.tensor([0.5], dtype=F64), torch.tensor([0.5], dtype=F64)
    sde, cf = SDES["vp"]
    m_ref, v_ref = target(cf, EPS, mu, s0)
    steps, errs = [20, 40, 80], []
    for n in steps:
        g = torch.Generator().manual_seed(0)
        x = sample(gaussian_score(cf, mu, s0), sde, (400_000, 1), "sde", n, eps=EPS, denoise=False,
                   dtype=F64, generator=g).x
        errs.append(max(abs(x.mean() - m_ref).item(), abs(x.var() - v_ref).item()))
    assert abs(slope(steps, errs) - 1) <= TOL, errs


def test_every_stochastic_method_has_a_case():
    covered = {c[1] for c in CASES} | {"sde", "adaptive_sde"}  # Monte Carlo: below, test_adaptive_sde.py
    need = set(_cases.stochastic()) | {n for n, m in METHODS.items() if m.noisy is not None}  # ddim eta, heun churn
    assert not sorted(need - covered), f"stochastic samplers without a weak-order case: {sorted(need - covered)}"
    assert any(c[1] == "ddim" and c[2].get("eta", 0) > 0 for c in CASES)
