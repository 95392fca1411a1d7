"""``dpm_solver_sde``: DPM-Solver++(2M) SDE and (3M) SDE.

1. Transcription of k-diffusion's ``sample_dpmpp_2m_sde`` / ``sample_dpmpp_3m_sde``, written here in
   k-diffusion's own variables (sigma = s/m, x_hat = x/m, denoiser D = x0), with the closed-form tables of
   ``_closed_forms`` and the same injected draws, on the non-uniform GRID; float64, to 1e-12.
2. Parity with diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++") (order 2).
3. Weak order on Gaussian data (``_weak``).
"""

from __future__ import annotations

import pytest
import torch

from _closed_forms import F64, GRID, SDES, Draws, at, score, start
from solvers.base import METHODS, Context, CountingScore

TOL = dict(rtol=1e-12, atol=1e-12)


def run_ours(sde, grid, x, draws, **options):
    spec = METHODS["dpm_solver_sde"]
    opts = spec.bind(sde, len(grid) - 1, options)
    opts.pop("grid"), opts.pop("rho")
    ctx = Context(sde, CountingScore(score), grid.clone(), grid.clone(), None, draw=draws)
    return spec.fn(ctx, x.clone(), **opts)


def kdiffusion(cf, grid, x, draws, order, solver_type, eta):
    """k-diffusion's loop (2M SDE; 3M SDE, whose second step is the heun form) in x_hat = x/m."""
    m, s = cf(grid)[:2]
    sig = s / m
    y = x / m[0]
    old, old2, h_1, h_2 = None, None, None, None
    for i in range(len(grid) - 1):
        xi = m[i] * y
        den = (xi + s[i] ** 2 * score(xi, at(grid[i], xi))) / m[i]
        t, u = -sig[i].log(), -sig[i + 1].log()
        h = u - t
        eh = eta * h
        he = h + eh
        y = sig[i + 1] / sig[i] * torch.exp(-eh) * y + (-torch.expm1(-he)) * den
        if order == 3 and h_2 is not None:
            r0, r1 = h_1 / h, h_2 / h
            d1_0, d1_1 = (den - old) / r0, (old - old2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_2 = torch.expm1(-he) / he + 1
            phi_3 = phi_2 / he - 0.5
            y = y + phi_2 * d1 - phi_3 * d2
        elif old is not None:
            r = h_1 / h
            if solver_type == "heun":
                y = y + (-torch.expm1(-he) / (-he) + 1) * (1 / r) * (den - old)
            else:
                y = y + 0.5 * (-torch.expm1(-he)) * (1 / r) * (den - old)
        y = y + draws(y) * sig[i + 1] * (-torch.expm1(-2 * eh)).sqrt()
        old, old2, h_1, h_2 = den, old, h, h_1
    return m[-1] * y


CASES = [(o, st, eta) for o, st in ((2, "midpoint"), (2, "heun"), (3, "heun"), (3, "midpoint"))
         for eta in (0.5, 1.0)]


@pytest.mark.parametrize("name", ["vp", "ve"])
@pytest.mark.parametrize("order,solver_type,eta", CASES)
def test_is_kdiffusion_dpmpp_sde(name, order, solver_type, eta):
    sde, cf = SDES[name]
    x = start(scale=1.0 if name == "vp" else 50.0)
    got = run_ours(sde, GRID, x, Draws(x.shape), order=order, solver_type=solver_type, eta=eta)
    if order == 3 and solver_type == "midpoint":  # our 3M's second step follows solver_type
        pytest.skip("k-diffusion's 3M SDE has the heun second step only")
    want = kdiffusion(cf, GRID, x, Draws(x.shape), order, solver_type, eta)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_eta_zero_is_dpm_solver_pp_multistep(name):
    sde, cf = SDES[name]
    if name == "ve":
        pytest.skip("dpm_solver is vp_only")
    x = start()
    for order in (2, 3):
        for st in ("midpoint", "heun"):
            got = run_ours(sde, GRID, x, Draws(x.shape), order=order, solver_type=st, eta=0.0)
            if order == 2:
                from _closed_forms import run
                torch.testing.assert_close(got, run("dpm_solver", sde, GRID, x, order=2, solver_type=st), **TOL)


def test_one_draw_per_step():
    sde, _ = SDES["vp"]
    x = start()
    for eta in (0.0, 1.0):
        d = Draws(x.shape)
        run_ours(sde, GRID, x, d, eta=eta)
        assert d.k == len(GRID) - 1


# -- 2. diffusers parity -------------------------------------------------------------------------------
class _Float64Torch:
    """diffusers' DPMSolverMultistepScheduler.step upcasts the sample to ``torch.float32``; this stand-in
    for its module's ``torch`` reads float32 as float64 so the parity runs in float64 throughout."""

    def __init__(self, torch_module):
        self._torch = torch_module
        self.float32 = torch_module.float64

    def __getattr__(self, name):
        return getattr(self._torch, name)


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_is_diffusers_sde_dpmsolver_pp(monkeypatch, solver_type):
    """DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2) needs
    timestep_spacing="trailing" (timesteps 999, 899, .., 99 of N = 1000 = our knots t = (k+1)/N),
    final_sigmas_type="sigma_min" (its last step lands on timestep 0's sigma = our t = 1/N, not on 0),
    lower_order_final=False and euler_at_final=False (else its last step is first order), and
    use_karras_sigmas etc. off. Its draws (``randn_tensor``) are replaced by our injected sequence; its
    float32 upcast by float64 (``_Float64Torch``). diffusers is eta = 1. Order 3 is not compared:
    diffusers' third-order SDE update has D2's coefficient alpha((1 - e^{-2h} - 2h)/(2h)^2 - 1/2), which is
    O(1), against k-diffusion's and the ODE's -alpha(phi2/H - 1/2) (+1/2 there); we follow k-diffusion."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.schedulers import scheduling_dpmsolver_multistep as mod

    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        algorithm_type="sde-dpmsolver++", solver_order=2, solver_type=solver_type, timestep_spacing="trailing",
        final_sigmas_type="sigma_min", lower_order_final=False, euler_at_final=False)
    monkeypatch.setattr(mod, "torch", _Float64Torch(torch))
    assert diffusers_gap(monkeypatch, mod, sched, "dpm_solver_sde", order=2, solver_type=solver_type,
                         eta=1.0) < 1e-10


def diffusers_gap(monkeypatch, mod, sched, method, steps=10, **options):
    """Relative gap between ``sched``'s loop (scaled_linear betas, trailing spacing over N = 1000) on a tiny
    UNet and our ``method`` on the knots t = (k+1)/N plus 1/N, from the same x_T and the same draws (its
    module's ``randn_tensor`` replaced by the injected sequence), in float64 (its float32 sigmas replaced)."""
    from sde_diffusion.models.diffusers_adapter import from_diffusers
    from test_diffusers import float64_tables, relative_gap, tiny_unet

    unet = tiny_unet()
    model = from_diffusers(unet, sched)
    float64_tables(sched, model.sde)
    sched.set_timesteps(steps)
    abar = sched.alphas_cumprod[torch.cat([sched.timesteps, torch.zeros(1, dtype=torch.long)])]
    sched.sigmas = ((1 - abar) / abar).sqrt()  # set_timesteps stores them as float32
    shape = (2, 1, 8, 8)
    x_T = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    theirs = Draws(shape)
    monkeypatch.setattr(mod, "randn_tensor", lambda *a, **k: theirs(None))
    x = x_T
    with torch.no_grad():
        for k in sched.timesteps:
            x = sched.step(unet(x, k).sample, k, x).prev_sample
        grid = torch.tensor([(int(k) + 1) / 1000 for k in sched.timesteps] + [1 / 1000], dtype=F64)
        ctx = Context(model.sde, CountingScore(model), grid.clone(), grid.clone(), None, draw=Draws(shape))
        ours = METHODS[method].fn(ctx, x_T.clone(), **options)
    assert theirs.k == steps and ctx.score.nfe == steps
    return relative_gap(ours, x)


# -- 3. weak order -------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", ["logsnr", "edm"])
@pytest.mark.parametrize("order,solver_type", [(2, "midpoint"), (2, "heun"), (3, "heun")])
def test_weak_order_on_a_gaussian(grid, order, solver_type):
    """Exact output law on Gaussian data (``_weak``), VP, eta = 1, steps 40, 80, 160: the measured weak
    order is ~2 for 2M and for 3M alike (measured 1.98 / 2.05 / 2.10 on logsnr, 2.06 / 2.13 / 1.88 on edm
    for 2M midpoint / 2M heun / 3M); the third-order correction does not raise the weak order of the
    SDE, whose noise is only exact to the first order of the drift. Coarser grids (10-40 steps) are
    pre-asymptotic (slopes 1.5-2.8)."""
    from _weak import slope, weak_error
    sde, cf = SDES["vp"]
    ns = (40, 80, 160)
    errs = [weak_error("dpm_solver_sde", sde, cf, n, 1e-3, order=order, solver_type=solver_type, grid=grid)
            for n in ns]
    assert abs(slope(ns, errs) - 2.0) <= 0.3
