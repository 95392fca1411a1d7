"""Numerical robustness grid: every SDE x every sampler (and its options) x float32/float64 x batch
{1, 7} x data (N, 2) / (N, 1, 8, 8), on the exact mixture score: no NaN/Inf in the samples or the
trajectory, from x_T at T (sigma_max for VE) down to eps = 1e-5, where std(t) is tiny (sub-VP:
s(eps) = 1 - exp(-B(eps)) ~ 1e-6; VP: ~1e-3), and samples within the prior's range. Also the PF-ODE
log-likelihood on every SDE x dtype against the exact log p_eps.

Which (SDE, method) pairs run comes from the registry: a pair is skipped only when
``Method.bind`` refuses it on that SDE although it binds on VP (a declared capability). A chain
(``schedule=``, methods declaring ``chain``) runs on its own SDE, the chain's embedding, once (as "vp").
"""

import math

import pytest
import torch

from sde_diffusion import DDPMSchedule, VPSDE, get_sde, random_mixture, ring2d
from sde_diffusion.likelihood import log_likelihood
from solvers import METHODS, available, sample

SDES = ("vp", "subvp", "ve", "cosine")
STEPS, EPS = 10, 1e-5
MIXTURES = {(2,): ring2d(), (1, 8, 8): random_mixture(dim=64, seed=0)}

# each method with its default options and each option value that changes the numerics
VARIANTS = {
    "ancestral": [{}, {"variance": "beta"}, {"variance": "beta_tilde"}, {"schedule": DDPMSchedule().respace(STEPS)}],
    "reverse_diffusion": [{}],
    "euler_maruyama": [{}],
    "pc": [{}, {"predictor": "euler_maruyama"}, {"predictor": "ancestral"}, {"predictor": "none"},
           {"corrector": "none", "predictor": "reverse_diffusion"}, {"corrector_steps": 2, "snr": 0.3}],
    "ddim": [{}, {"eta": 1.0}, {"grid": "logsnr"}],
    "ode": [{}, {"solver": "rk4"}, {"solver": "euler", "grid": "edm"}, {"solver": "bosh3", "rtol": 1e-3, "atol": 1e-3}],
    "heun": [{}, {"grid": "uniform"}, {"grid": "logsnr"}],
    "dpm_solver": [{}, {"order": 1}, {"order": 3}, {"order": 2, "multistep": False},
                   {"order": 3, "multistep": False}, {"variant": "dpm_solver"}],
    "sde": [{}, {"solver": "milstein"}, {"solver": "srk"}],
}
CASES = [(m, opts) for m in VARIANTS for opts in VARIANTS[m]]


def test_every_registered_method_is_in_the_grid():
    assert set(VARIANTS) == set(available())


def _supported(method: str, sde, opts: dict) -> bool:
    """The registry's verdict: False when ``bind`` refuses this SDE (a declared capability such as
    vp_only); an option the method rejects even on VP fails."""
    spec = METHODS[method]
    opts = {k: v for k, v in opts.items() if k != "schedule"}
    try:
        spec.bind(sde, STEPS, dict(opts))
    except ValueError:
        spec.bind(VPSDE(), STEPS, dict(opts))  # raises if the option itself is wrong
        return False
    return True


@pytest.mark.parametrize("event", list(MIXTURES), ids=["2d", "1x8x8"])
@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("method, opts", CASES, ids=[f"{m}{opts or ''}" for m, opts in CASES])
def test_no_nan_or_inf_anywhere(method, opts, sde_name, dtype, n, event):
    """Finite samples and trajectory (K + 1 states from x_T to x at eps), and samples within the
    prior's 6-sigma range plus the data's extent (radius 1 + 6 * 0.05 < 2): whatever its accuracy at
    10 steps, no sampler may leave samples beyond where x_T itself lies. (Intermediate states are only
    required to be finite: explicit Euler-type steps amplify them by 1 - f(t) dt = 1 + beta(t) dt / 2,
    about 20 in the first of 10 steps on cosine VP, where beta(T = 0.9946) ~ 370.)"""
    sde = get_sde(sde_name)
    if "schedule" in opts:
        if sde_name != "vp":
            pytest.skip("a chain runs on its own SDE, its embedding (once, as vp)")
        sde = opts["schedule"].embedding()
    if not _supported(method, sde, opts):
        pytest.skip(f"the registry declares {method} {opts} unsupported on {type(sde).__name__}")
    gm = MIXTURES[event]
    g = torch.Generator().manual_seed(0)
    r = sample(gm.score(sde), sde, (n, *event), method, STEPS, eps=EPS, dtype=dtype, generator=g,
               return_trajectory=True, **opts)
    assert r.x.shape == (n, *event) and r.x.dtype == dtype
    assert r.trajectory.shape == (STEPS + 1, n, *event) and r.trajectory.dtype == dtype
    assert torch.isfinite(r.x).all() and torch.isfinite(r.trajectory).all()
    assert r.x.abs().max() <= 6 * sde.prior_std + 2.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("sde_name", SDES)
def test_log_likelihood_is_finite_and_exact_on_every_sde(sde_name, dtype):
    """log p_eps(x) by the PF-ODE vs the mixture's exact log p_eps at 3 ring points, eps = 1e-5.
    Tolerance: the solver's rtol = atol = 1e-5 over ~100 steps gives ~1e-3 nats (test_likelihood),
    float32 rounding of |log p| ~ 5 over the same steps another ~1e-4 x 100 = 1e-2 at worst; plus the
    prior mismatch |log p_T(x_T) - log pi(x_T)| (exact, per sample: the prior is only approximately p_T).
    In float64 the solver's error alone remains: the 1e-3 nats target."""
    sde, gm = get_sde(sde_name), ring2d()
    x = gm.sample(3, torch.Generator().manual_seed(1)).to(dtype)
    r = log_likelihood(gm.score(sde), sde, x)
    assert r.log_prob.dtype == dtype and torch.isfinite(r.log_prob).all() and torch.isfinite(r.x_T).all()
    exact = gm.log_prob_t(x.double(), 1e-5, sde)
    mismatch = (gm.log_prob_t(r.x_T.double(), sde.T, sde) - r.prior_log_prob.double()).abs()
    tol = 1e-3 if dtype == torch.float64 else 1e-2
    assert ((r.log_prob.double() - exact).abs() <= tol + mismatch).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_log_likelihood_with_a_zero_drift(dtype):
    """Data N(0, I) under VP is stationary: the exact score is -x, the PF drift f x - g^2 s / 2 =
    -beta/2 x + beta/2 x = 0 and its divergence 0, so log p_eps(x) = log N(x; 0, I) up to rounding.
    (torchdiffeq's first-step heuristic then probes t ~ 1e5 >> T; it used to crash with 't must lie
    in [0, T]'.) Tolerance: a few ulps of |log p| ~ 3 in the dtype."""
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(2), dtype=dtype)
    r = log_likelihood(lambda y, t: -y, VPSDE(), x)
    exact = -0.5 * x.square().sum(1) - math.log(2 * math.pi)
    assert (r.log_prob - exact).abs().max() <= 64 * torch.finfo(dtype).eps * 3
