"""The ``solvers.sample`` contract: exactness against DDPM Algorithm 2, reproducibility, dtypes and
shapes, NFE accounting, the Tweedie step and the should-fail matrix. Device-agnostic where marked
by the ``device``/``dtype`` fixtures (``pytest --device cuda``)."""

import pytest
import torch

from sde_diffusion import DDPMSchedule, GaussianMixture, SubVPSDE, VESDE, VPSDE, random_mixture, ring2d
from solvers import METHODS, available, sample
from solvers.probability_flow import ADAPTIVE

import _cases


def _configs(steps: int, only=None, variants=_cases.variants) -> list:
    """(method, options) for every registered method and each of its option variants (``_cases``,
    resolved for ``steps``), optionally filtered by ``only(method, options)``."""
    return [pytest.param(m, o, id=_cases.case_id(m, o)) for m in METHODS for o in variants(m, steps)
            if only is None or only(m, o)]


def _adaptive(method: str, opts: dict) -> bool:
    return METHODS[method].order is None and opts.get("solver", METHODS[method].options["solver"].default) in ADAPTIVE


def _expected_nfe(method: str, opts: dict, steps: int) -> int | None:
    """Score evaluations of the fixed-cost methods in closed form, the Tweedie step included (None:
    adaptive, or torchsde's own count). Ancestral on a DDPM chain (``schedule=``) ends at x_0 itself:
    no Tweedie step."""
    o = METHODS[method].bind(SubVPSDE(), steps, {k: v for k, v in opts.items() if k != "schedule"})
    per_step = {"ancestral": 1, "reverse_diffusion": 1, "euler_maruyama": 1, "ddim": 1, "heun": 2,
                "unipc": 1, "dpm_solver_sde": 1, "sa_solver": 1}.get(method)
    if method == "pc":
        per_step = (o["predictor"] != "none") + (o["corrector"] != "none") * o["corrector_steps"]
    elif method == "dpm_solver":
        per_step = 1 if o["multistep"] else o["order"]
    elif method == "ode":
        per_step = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}.get(o["solver"])
    tweedie = 0 if opts.get("schedule") is not None else 1
    return None if per_step is None else per_step * steps + tweedie


def test_available_lists_every_method():
    assert sorted(available()) == sorted(["ancestral", "reverse_diffusion", "euler_maruyama", "pc", "ode",
                                          "sde", "ddim", "heun", "dpm_solver", "unipc", "dpm_solver_sde", "sa_solver",
                                          "adaptive_sde"])


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ancestral_on_a_chain_is_ddpm_algorithm_2(variance, device, dtype):
    """DDPM Algorithm 2 transcribed: x_T ~ N(0, I); for i = T..1: z ~ N(0, I) if i > 1 else 0,
    x_{i-1} = 1/sqrt(alpha_i) (x_i - (1 - alpha_i)/sqrt(1 - abar_i) eps(x_i, i)) + sigma_i z, with
    eps(x, i) = -sqrt(1 - abar_i) score(x, i/T), with the test's own tables (beta_i linear from
    beta_1 to beta_T, abar_i = prod_j (1 - beta_j), beta_tilde_i = (1 - abar_{i-1}) / (1 - abar_i) beta_i),
    not DDPMSchedule's. Same noise; the package's coefficients come from the chain's embedding (its
    marginals at i/T, ``SDE.transition``), equal to these to float64 rounding (~1e-15 relative): equal
    bits once rounded to float32, and 1e-12 in float64."""
    sched, n = DDPMSchedule(T=50, beta_1=2e-3, beta_T=0.4), 64
    betas = torch.linspace(2e-3, 0.4, 50, dtype=torch.float64)
    alphas = 1 - betas
    abars = torch.cumprod(alphas, 0)
    abars_prev = torch.cat([torch.ones(1, dtype=torch.float64), abars[:-1]])
    sde, gm = sched.embedding(), ring2d()
    score = gm.score(sde)
    res = sample(score, sde, (n, 2), "ancestral", sched.T, schedule=sched, variance=variance,
                 generator=torch.Generator(device).manual_seed(0), device=device, dtype=dtype)
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn((n, 2), generator=gen, device=device, dtype=dtype)
    c = lambda v: v.to(device=device, dtype=dtype)  # noqa: E731
    sig2 = betas if variance == "beta" else (1 - abars_prev) / (1 - abars) * betas
    for i in range(sched.T, 0, -1):
        alpha, abar = alphas[i - 1], abars[i - 1]
        z = torch.randn(x.shape, generator=gen, device=device, dtype=dtype) if i > 1 else torch.zeros_like(x)
        eps = -c((1 - abar).sqrt()) * score(x, torch.full((n,), i / sched.T, device=device, dtype=dtype))
        x = c(1 / alpha.sqrt()) * (x - c((1 - alpha) / (1 - abar).sqrt()) * eps) + c(sig2[i - 1].sqrt()) * z
    assert res.nfe == sched.T
    tol = 1e-12 if dtype == torch.float64 else 0.0
    torch.testing.assert_close(res.x, x, rtol=tol, atol=tol)


def test_ddim_eta_one_is_ancestral_with_posterior_variance():
    """Algebraically identical updates (see ``ddim``); float64 rounding over 40 steps ~1e-14."""
    sde, gm = VPSDE(), ring2d()
    kw = dict(dtype=torch.float64, denoise=False)
    a = sample(gm.score(sde), sde, (32, 2), "ddim", 40, eta=1.0, generator=torch.Generator().manual_seed(4), **kw)
    b = sample(gm.score(sde), sde, (32, 2), "ancestral", 40, variance="beta_tilde",
               generator=torch.Generator().manual_seed(4), **kw)
    torch.testing.assert_close(a.x, b.x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method, opts", _configs(6))
def test_same_seed_same_samples(method, opts, device, dtype):
    sde, gm = VPSDE(), ring2d()
    run = lambda seed: sample(gm.score(sde), sde, (16, 2), method, 6,  # noqa: E731
                              generator=torch.Generator(device).manual_seed(seed), device=device,
                              dtype=dtype, **opts).x
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # a different x_T (and noise) gives different samples


@pytest.mark.parametrize("method, opts", _configs(6, lambda m, o: not _cases.is_stochastic(m, o) and not _adaptive(m, o)))
def test_float64_and_float32_agree(method, opts):
    """Fixed-step deterministic samplers from the same x_T: float32 differs from float64 only by
    rounding, ~1e-7 relative per operation over 6 steps of an O(1) well-conditioned flow; assert
    1e-4 absolute. (Adaptive dopri5 picks different steps per dtype, so it differs by its own
    tolerance instead; it runs in float64 as the reference of test_solvers_convergence.)"""
    sde, gm = VPSDE(), ring2d()
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = {dt: sample(gm.score(sde), sde, (16, 2), method, 6, x_T=x_T, dtype=dt, **opts).x
           for dt in (torch.float32, torch.float64)}
    assert out[torch.float64].dtype == torch.float64 and out[torch.float32].dtype == torch.float32
    torch.testing.assert_close(out[torch.float32].double(), out[torch.float64], rtol=0, atol=1e-4)


@pytest.mark.parametrize("method, opts", _configs(100, lambda m, o: _cases.is_stochastic(m, o) and o.get("predictor") != "none"
                                                  and "schedule" not in o,
                                                  variants=_cases.one_per_option))
def test_float64_stochastic_samplers_reach_the_noise_floor(method, opts):
    """Stochastic samplers draw different noise in float64, so they are checked on quality instead:
    the ring2d criterion of test_solvers_quality (factor 2.35 of the noise floor, N = 2000), for each
    stochastic method's defaults and each option changed once (``_cases.one_per_option``; not annealed
    Langevin, which needs 1,000 steps: test_solvers_quality; not ``schedule=``, a DDPM chain that is
    not this VP-SDE: its exactness is test_ancestral_is_ddpm_algorithm_2_bit_for_bit)."""
    from test_solvers_quality import DATA, PAIRS, factor
    from sde_diffusion.evaluation.metrics import sliced_w2
    sde, gm, n = VPSDE(), ring2d(), 2000
    g = torch.Generator().manual_seed(1)
    ref = gm.sample(n, g, dtype=torch.float64)
    floor = torch.stack([sliced_w2(gm.sample(n, g, dtype=torch.float64), gm.sample(n, g, dtype=torch.float64))
                         for _ in range(PAIRS)]).mean()
    res = sample(gm.score(sde), sde, (n, 2), method, 100, dtype=torch.float64,
                 generator=torch.Generator().manual_seed(3), **opts)
    assert res.x.dtype == torch.float64
    assert sliced_w2(res.x, ref) / floor < factor(DATA["ring2d"][2])


@pytest.mark.parametrize("method, opts", _configs(5))
def test_image_shaped_batches(method, opts, device, dtype):
    """(N, C, H, W) = (8, 3, 2, 2) gives exactly the (8, 12) result reshaped: samplers never assume a rank."""
    sde, gm = VPSDE(), random_mixture(dim=12)
    run = lambda shape: sample(gm.score(sde), sde, shape, method, 5, device=device, dtype=dtype,  # noqa: E731
                               generator=torch.Generator(device).manual_seed(0), **opts).x
    img = run((8, 3, 2, 2))
    assert img.shape == (8, 3, 2, 2)
    torch.testing.assert_close(img.reshape(8, 12), run((8, 12)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method, opts", _configs(7))
def test_nfe_equals_an_external_count(method, opts):
    sde, gm = SubVPSDE(), ring2d()
    calls = []

    def score(x, t):
        calls.append(1)
        return gm.score_at(x, t, sde)
    steps = 7
    res = sample(score, sde, (8, 2), method, steps, generator=torch.Generator().manual_seed(0), **opts)
    assert res.nfe == len(calls)
    expected = _expected_nfe(method, opts, steps)
    if expected is not None:  # fixed-cost methods: the count is also known in closed form
        assert res.nfe == expected


def test_tweedie_denoising_is_the_posterior_mean():
    """For p_0 = N(mu, v I): E[x_0 | x_t] = (m v x_t + s^2 mu) / (m^2 v + s^2); denoise=True must give
    exactly that from the undenoised samples of the same seed (float64; only rounding differs)."""
    sde, gm = VPSDE(), GaussianMixture([[0.7, -0.3]], [0.04])
    kw = dict(dtype=torch.float64, eps=0.05)
    raw = sample(gm.score(sde), sde, (32, 2), "euler_maruyama", 20, denoise=False,
                 generator=torch.Generator().manual_seed(0), **kw)
    den = sample(gm.score(sde), sde, (32, 2), "euler_maruyama", 20, generator=torch.Generator().manual_seed(0), **kw)
    m, s = (float(c) for c in sde.marginal(torch.tensor(0.05, dtype=torch.float64)))
    mu = torch.tensor([0.7, -0.3], dtype=torch.float64)
    torch.testing.assert_close(den.x, (m * 0.04 * raw.x + s**2 * mu) / (m**2 * 0.04 + s**2), rtol=1e-12, atol=1e-12)
    assert den.nfe == raw.nfe + 1


@pytest.mark.parametrize("method, opts", _configs(5))
def test_trajectory(method, opts):
    """States at the K + 1 grid times: starts at x_T, ends at the (undenoised) result."""
    sde, gm = VPSDE(), ring2d()
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0))
    res = sample(gm.score(sde), sde, (8, 2), method, 5, x_T=x_T, denoise=False, return_trajectory=True,
                 generator=torch.Generator().manual_seed(1), **opts)
    assert res.trajectory.shape == (6, 8, 2)
    assert torch.equal(res.trajectory[0], x_T) and torch.equal(res.trajectory[-1], res.x)
    assert sample(gm.score(sde), sde, (8, 2), method, 5, **opts).trajectory is None


def test_progress_bar_changes_nothing():
    sde, gm = VPSDE(), ring2d()
    a, b = (sample(gm.score(sde), sde, (8, 2), "pc", 5, progress=p, generator=torch.Generator().manual_seed(0)).x
            for p in (False, True))
    assert torch.equal(a, b)


def _never(x, t):
    raise AssertionError("score evaluated although the call should have been refused up front")


@pytest.mark.parametrize("sde, method, opts, match", [
    (VPSDE(), "leapfrog", {}, "allowed: ancestral"),
    (VPSDE(), "euler_maruyama", {"snr": 0.1}, "allowed: none"),
    (VPSDE(), "pc", {"snrr": 0.1}, "allowed: predictor, corrector, snr, corrector_steps"),
    (VPSDE(), "pc", {"predictor": "heun"}, "allowed: reverse_diffusion, euler_maruyama, ancestral, none"),
    (VPSDE(), "pc", {"predictor": "none", "corrector": "none"}, "predictor or a corrector"),
    (VPSDE(), "pc", {"snr": -1.0}, "snr must be a finite number > 0"),
    (VPSDE(), "ode", {"solver": "rk45"}, "allowed: dopri5"),
    (VPSDE(), "sde", {"solver": "heun"}, "allowed: euler, milstein, srk"),
    (VPSDE(), "ddim", {"eta": 1.5}, r"eta must be a number in \[0, 1\]"),
    (VPSDE(), "dpm_solver", {"order": 4}, "allowed: 1, 2, 3"),
    (VPSDE(), "dpm_solver", {"solver_type": "taylor"}, "allowed: midpoint, heun"),
    (VPSDE(), "heun", {"grid": "cosine"}, "allowed: uniform, edm, logsnr"),
    (VESDE(), "ddim", {}, "needs a VP-type SDE"),
    (VESDE(), "dpm_solver", {}, "needs a VP-type SDE"),
    (VESDE(), "unipc", {}, "needs a VP-type SDE"),
    (VPSDE(), "unipc", {"variant": "bh3"}, "allowed: bh2, bh1"),
    (VPSDE(), "ancestral", {"schedule": DDPMSchedule(T=100)}, "steps must equal T = 100"),
    (VPSDE(), "ancestral", {"schedule": "linear"}, "DDPMSchedule"),
    (VESDE(), "ancestral", {"schedule": DDPMSchedule(T=10)}, "prior N\\(0, I\\)"),
])
def test_refused_before_any_compute(sde, method, opts, match):
    with pytest.raises(ValueError, match=match):
        sample(_never, sde, (4, 2), method, 10, **opts)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"steps": 0}, ValueError, "steps must be an integer >= 1"),
    ({"eps": 0.0}, ValueError, "eps must lie in"),
    ({"eps": 2.0}, ValueError, "eps must lie in"),
    ({"dtype": torch.int64}, TypeError, "floating torch.dtype"),
    ({"x_T": torch.zeros(3, 2)}, ValueError, "x_T must have shape"),
])
def test_bad_common_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        sample(_never, VPSDE(), (4, 2), "euler_maruyama", **{"steps": 10, **kwargs})


def test_score_of_wrong_shape_is_reported():
    with pytest.raises(ValueError, match="score_fn must return a tensor shaped like x"):
        sample(lambda x, t: x[:, :1], VPSDE(), (4, 2), "ancestral", 3)


def test_registry_declares_capabilities():
    assert {m.kind for m in METHODS.values()} == {"sde", "ode"}
    assert {n for n, m in METHODS.items() if m.vp_only} == {"ddim", "dpm_solver", "unipc"}


def test_adaptive_ode_steps_set_the_tolerance():
    """One rule for the Python API and ``compare``: an adaptive solver without rtol/atol runs at
    rtol = atol = solvers.probability_flow.tolerance(steps) = 100/steps^3, so more steps mean more
    score evaluations and a smaller error; explicit tolerances override it."""
    from solvers.probability_flow import tolerance

    sde, gm = VPSDE(), ring2d(std=0.2)
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(x_T=x_T, dtype=torch.float64, denoise=False)
    run = lambda steps, **o: sample(gm.score(sde), sde, (16, 2), "ode", steps, **kw, **o)  # noqa: E731
    assert tolerance(10) == pytest.approx(0.1) and tolerance(100) == pytest.approx(1e-4)
    ref = run(1, rtol=1e-10, atol=1e-10).x
    coarse, fine = run(10), run(100)
    assert torch.equal(coarse.x, run(10, rtol=tolerance(10), atol=tolerance(10)).x)
    assert torch.equal(fine.x, run(7, rtol=1e-4, atol=1e-4).x)
    assert coarse.nfe < fine.nfe
    assert (fine.x - ref).abs().max() < (coarse.x - ref).abs().max()
