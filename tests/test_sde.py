"""The SDE contract: exact marginals consistent with drift and diffusion, for every SDE."""

import math

import pytest
import torch

from sde_diffusion import VESDE, VPSDE, CosineVPSDE, DDPMSchedule, SubVPSDE, get_sde
from sde_diffusion.sde import SDES, DiscreteVPSDE

import _cases

# every registered SDE, and the discrete chains' SDEs (built from a schedule, not registered by name)
ALL_SDES = _cases.sdes() + [DiscreteVPSDE.from_beta_schedule("linear"),
                            DiscreteVPSDE.from_beta_schedule("squaredcos_cap_v2"),
                            DiscreteVPSDE.from_beta_schedule("squaredcos_cap_v2", interpolation="cubic")]
IDS = _cases.sde_ids(ALL_SDES[:-2]) + ["DiscreteVPSDE-cos", "DiscreteVPSDE-cos-cubic"]


def left_derivatives(sde, t, h):
    """(dm/dt, d(s^2)/dt) at t by the second-order backward difference (3 F(t) - 4 F(t-h) + F(t-2h)) / 2h.

    One-sided from the left because f of ``DiscreteVPSDE`` is piecewise constant and left-continuous
    (f at a knot is that of the interval ending there). It errs by about h^2 |F'''| / 3, relative
    (rate h)^2 / 3 for a rate |f| (or 2 |f|); rounding adds ~1e-16 / h.
    """
    (m0, s0), (m1, s1), (m2, s2) = (sde.marginal(t - k * h) for k in range(3))
    d = lambda a, b, c: (3 * a - 4 * b + c) / (2 * h)  # noqa: E731
    return d(m0, m1, m2), d(s0**2, s1**2, s2**2)


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_marginal_ode_consistency(sde):
    """dm/dt = f m and d(s^2)/dt = 2 f s^2 + g^2 on t = k/50 T, k = 1..49 (for the discrete SDEs of
    N = 1000 these are knots, each the same double as the table's own i/N). With h = 1e-5 and rates
    up to 2 log(sigma_max/sigma_min) = 17 (VE) or 2|f| < 250 (the cosine table at t <= 0.98) the
    difference errs by < 3e-6 relative, so rtol 1e-5 catches an inconsistent SDE.
    """
    t = torch.arange(1, 50, dtype=torch.float64) / 50 * sde.T
    dm, dv = left_derivatives(sde, t, 1e-5)
    m, s = sde.marginal(t)
    f, g = sde.drift_coef(t), sde.diffusion(t)
    torch.testing.assert_close(dm, f * m, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(dv, 2 * f * s**2 + g**2, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_marginal_starts_at_data(sde):
    m, s = sde.marginal(0.0)
    assert float(m) == 1.0 and float(s) == 0.0


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_prior_matches_marginal_at_T(sde):
    """For zero-mean unit-scale data the marginal at T is within a few % of the prior."""
    m, s = sde.marginal(sde.T)
    total_std = math.sqrt(float(m) ** 2 + float(s) ** 2)
    assert abs(total_std / sde.prior_std - 1) < 0.01
    assert float(m) < 0.01 or isinstance(sde, VESDE)


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_discretize_is_exact_transition(sde):
    """Composing the transition s -> t with x_s | x_0 reproduces the marginal at t exactly."""
    x = torch.ones(4, 3, dtype=torch.float64)
    t, dt = torch.tensor(0.6 * sde.T, dtype=torch.float64), 0.05
    f, G = sde.discretize(x, t, dt)
    a = 1 + f / x  # x_t = a x_s + G z
    m_s, s_s = sde.marginal(t - dt)
    m_t, s_t = sde.marginal(t)
    torch.testing.assert_close(a[:, 0] * m_s, m_t.expand(4))
    torch.testing.assert_close(a[:, 0] ** 2 * s_s**2 + G**2, (s_t**2).expand(4))


def test_vp_discretize_is_ddpm_step():
    """For VP the transition is x_t = sqrt(1 - beta_i) x_s + sqrt(beta_i) z with G^2 = beta_i."""
    sde = VPSDE()
    x = torch.randn(5, 2, dtype=torch.float64)
    f, G = sde.discretize(x, 0.5, 1e-3)
    beta_i = G**2
    torch.testing.assert_close(x + f, (1 - beta_i).sqrt()[:, None] * x)
    # beta_i = 1 - exp(-integral of beta over [t - dt, t]) with beta linear: the midpoint rule is exact
    integral = float(sde.beta(0.5 - 0.5e-3)) * 1e-3
    torch.testing.assert_close(beta_i, torch.full((5,), -math.expm1(-integral), dtype=torch.float64))


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
@pytest.mark.parametrize("shape", [(6, 2), (6, 1, 4, 4)])
def test_shapes_and_time_forms(sde, shape):
    x = torch.randn(shape)
    d_float = sde.drift(x, 0.3)
    d_tensor = sde.drift(x, torch.full((shape[0],), 0.3))
    assert d_float.shape == x.shape
    torch.testing.assert_close(d_float, d_tensor)
    z = sde.prior_sample(shape, generator=torch.Generator().manual_seed(0))
    lp = sde.prior_log_prob(z)
    assert lp.shape == (shape[0],)
    d = math.prod(shape[1:])
    expected = (-0.5 * d * math.log(2 * math.pi * sde.prior_std**2)
                - 0.5 * z.flatten(1).square().sum(1) / sde.prior_std**2)
    torch.testing.assert_close(lp, expected)


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_reverse_drifts(sde):
    """Reverse SDE drift f - g^2 s; probability flow f - g^2 s / 2 and no noise."""
    x = torch.randn(3, 2, dtype=torch.float64)
    score = lambda x, t: -x
    t = torch.full((3,), 0.4 * sde.T, dtype=torch.float64)
    g2 = sde.diffusion(t)[:, None] ** 2
    torch.testing.assert_close(sde.reverse(score).drift(x, t), sde.drift(x, t) + g2 * x)
    pf = sde.reverse(score, probability_flow=True)
    torch.testing.assert_close(pf.drift(x, t), sde.drift(x, t) + 0.5 * g2 * x)
    assert bool((pf.diffusion(t) == 0).all())


def test_get_sde_names():
    assert isinstance(get_sde("vp"), VPSDE)
    assert set(SDES) == {"vp", "subvp", "ve", "cosine"}
    with pytest.raises(ValueError, match="unknown SDE 'vpp'; allowed: vp, subvp, ve, cosine"):
        get_sde("vpp")


@pytest.mark.parametrize("build, match", [
    (lambda: VPSDE(beta_min=0.0), "beta_min must be a finite number > 0"),
    (lambda: VPSDE(beta_min=-1.0), "beta_min must be a finite number > 0"),
    (lambda: VPSDE(beta_min=5.0, beta_max=1.0), "beta_max must be > beta_min"),
    (lambda: SubVPSDE(beta_max=float("nan")), "beta_max must be a finite number > 0"),
    (lambda: VESDE(sigma_min=50.0, sigma_max=1.0), "sigma_max must be > sigma_min"),
    (lambda: VESDE(sigma_min=0.0), "sigma_min must be a finite number > 0"),
    (lambda: CosineVPSDE(T=1.0), r"T must lie in \(0, 1\)"),
])
def test_bad_parameters(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_inputs():
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\] = \[0, 1\], got 1.5"):
        sde.marginal(1.5)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
        sde.drift(torch.zeros(2, 2), torch.tensor([0.5, -0.1]))
    with pytest.raises(ValueError, match=r"t must be a float or a tensor of shape \(2,\)"):
        sde.drift(torch.zeros(2, 2), torch.tensor([0.5, 0.1, 0.2]))
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        sde.drift(torch.tensor([[float("nan"), 0.0]]), 0.5)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        sde.drift(torch.zeros(2, 2, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="shape must be a tuple of positive ints"):
        sde.prior_sample((0, 2))


def test_ve_sigma_is_its_closed_form_and_sets_the_marginal():
    """sigma(t) = sigma_min (sigma_max/sigma_min)^t; the marginal's added variance is
    s(t)^2 = sigma(t)^2 - sigma_min^2 and g(t)^2 = d sigma^2/dt = 2 sigma(t)^2 log(sigma_max/sigma_min)."""
    sde = VESDE(sigma_min=0.02, sigma_max=30.0)
    t = torch.tensor([0.0, 0.1, 0.37, 0.8, 1.0], dtype=torch.float64)
    sigma = 0.02 * (30.0 / 0.02) ** t
    torch.testing.assert_close(sde.sigma(t), sigma, rtol=1e-14, atol=0)
    m, s = sde.marginal(t)
    torch.testing.assert_close(s.square(), sde.sigma(t).square() - 0.02**2, rtol=1e-12, atol=1e-16)
    torch.testing.assert_close(m, torch.ones_like(t), rtol=0, atol=0)
    torch.testing.assert_close(sde.diffusion(t).square(), 2 * sigma.square() * math.log(30.0 / 0.02),
                               rtol=1e-13, atol=0)
    assert float(sde.sigma(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(sde.prior_std, rel=1e-14)


# -- the SDE of a discrete table (Lu et al. 2022) --------------------------------------------------
TABLES = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012), "squaredcos_cap_v2": (1e-4, 0.02)}


def closed_form_betas(name: str, n: int) -> torch.Tensor:
    """beta_1..beta_n of diffusers' named schedules, written out here from their definitions."""
    i = torch.arange(1, n + 1, dtype=torch.float64)
    lo, hi = TABLES[name]
    if name == "linear":
        return lo + (i - 1) / (n - 1) * (hi - lo)
    if name == "scaled_linear":
        return (lo**0.5 + (i - 1) / (n - 1) * (hi**0.5 - lo**0.5)) ** 2
    abar = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return (1 - abar(i / n) / abar((i - 1) / n)).clamp(max=0.999)


@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
@pytest.mark.parametrize("name", TABLES)
def test_discrete_sde_at_every_knot(name, interpolation):
    """At every knot t_i = i/N (N = 1000): m(t_i)^2 = abar_i to float64 rounding (abar_i from the betas'
    closed form); f = (N/2) log(1 - beta_i) on the interval ending at t_i (linear) or f continuous
    across the knots and < 0 (cubic: monotone); and the consistency ODEs at every knot and midpoint.
    With h = 1e-3 / (N max(1, |f|)) the difference stays on one interval and errs by (2 |f| h)^2 / 3
    < 1e-11 relative for linear log m, and by about (N h)^2 < 1e-6 times the cubic's relative curvature
    for cubic; rounding adds ~8e-16 / 2h < 1e-9 (1 + |f|) (s^2 near 1 while d(s^2)/dt = -2 f m^2 is
    small: the two terms of 2 f s^2 + g^2 nearly cancel)."""
    n = 1000
    sde = DiscreteVPSDE.from_beta_schedule(name, n, *TABLES[name], interpolation=interpolation)
    betas = closed_form_betas(name, n)
    abar = torch.cumprod(1 - betas, 0)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    m, s = sde.marginal(i / n)
    torch.testing.assert_close(m.square(), abar, rtol=1e-13, atol=0)
    torch.testing.assert_close(s.square(), 1 - abar, rtol=1e-12, atol=0)
    t = torch.cat([i / n, (i - 0.5) / n])
    f, g = sde.drift_coef(t), sde.diffusion(t)
    if interpolation == "linear":
        torch.testing.assert_close(f, 0.5 * n * torch.log(1 - betas).repeat(2), rtol=1e-9, atol=0)
    else:
        torch.testing.assert_close(sde.drift_coef(i[:-1] / n + 1e-12), f[: n - 1], rtol=1e-6, atol=0)
        assert float(sde.drift_coef(torch.linspace(0, 1, 100001, dtype=torch.float64)).max()) < 0
    dm, dv = left_derivatives(sde, t, 1e-3 / (n * f.abs().clamp_min(1)))
    m, s = sde.marginal(t)
    for lhs, rhs in ((dm, f * m), (dv, 2 * f * s**2 + g**2)):
        assert bool(((lhs - rhs).abs() <= 1e-5 * rhs.abs() + 1e-9 * (1 + f.abs())).all())


def test_discrete_sde_transition_between_knots_is_the_ddpm_step():
    """``discretize`` from knot i-1 to knot i: a = sqrt(alpha_i) and G^2 = beta_i, DDPM's forward step."""
    sched = DDPMSchedule(T=200, beta_1=1e-3, beta_T=0.05)
    sde = DiscreteVPSDE(sched.alphas_cumprod)
    i = torch.arange(1, 201, dtype=torch.float64)
    f, G = sde.discretize(torch.ones(200, 1, dtype=torch.float64), i / 200, 1 / 200)
    torch.testing.assert_close(1 + f[:, 0], sched.alphas.sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(G.square(), sched.betas, rtol=1e-9, atol=0)


def test_discrete_sde_against_the_linear_vp_limit():
    """DDPMSchedule.to_sde() (the analytic linear VP-SDE) and the table's own SDE differ at O(1/T):
    measured max_t |m_discrete(t) - m_VP(t)| = 1.0e-3 at T = 1000 (at t = 0.60), halving with each
    doubling of T (log(1 - beta) = -beta - beta^2/2 and linspace's grid offset both err at O(1/T))."""
    t = torch.linspace(0, 1, 20001, dtype=torch.float64)
    gaps = []
    for T in (1000, 2000):
        sched = DDPMSchedule(T=T, beta_1=0.1 / T, beta_T=20.0 / T)
        m_discrete = DiscreteVPSDE(sched.alphas_cumprod).marginal(t)[0]
        gaps.append(float((m_discrete - sched.to_sde().marginal(t)[0]).abs().max()))
    assert 5e-4 < gaps[0] < 2e-3
    assert gaps[0] / gaps[1] == pytest.approx(2, rel=0.1)


@pytest.mark.parametrize("build, match", [
    (lambda: DiscreteVPSDE((0.9, 0.95)), "alphas_cumprod must decrease strictly"),
    (lambda: DiscreteVPSDE((1.0, 0.5)), r"lie in \(0, 1\)"),
    (lambda: DiscreteVPSDE([[0.9]]), "1-D table"),
    (lambda: DiscreteVPSDE.from_beta_schedule("cosine"), "unknown beta schedule 'cosine'"),
    (lambda: DiscreteVPSDE((0.9, 0.5), "spline"), "unknown interpolation 'spline'; allowed: linear, cubic"),
])
def test_discrete_sde_bad_tables(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_every_sampler_runs_on_the_discrete_sde():
    """Samplers use only the SDE contract: every registered method (the VP-only ddim and dpm_solver
    included) samples ring2d under the linear table's SDE with its exact score. Measured SW2/floor at
    50 steps, n = 2000: 0.77 (pc) to 1.31 (ddim). The bound 1.5 is a contract check (finite, sane
    samples), not a sharp one: the score of VPSDE(0.1, 10) instead gives 1.60 (ddim), 1.52 (dpm_solver),
    while ancestral forgives it (0.95)."""
    import solvers
    from sde_diffusion import ring2d
    from sde_diffusion.evaluation.metrics import sliced_w2

    sde, gm = DiscreteVPSDE.from_beta_schedule("linear"), ring2d()
    ref = gm.sample(2000, torch.Generator().manual_seed(1))
    w2 = lambda x: float(sliced_w2(x, ref, generator=torch.Generator().manual_seed(5)))  # noqa: E731
    floor = w2(gm.sample(2000, torch.Generator().manual_seed(2)))
    for method in solvers.available():
        res = solvers.sample(gm.score(sde), sde, (2000, 2), method, 50, generator=torch.Generator().manual_seed(0))
        assert w2(res.x) / floor < 1.5, method


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_transition_composes(sde):
    """Chapman-Kolmogorov for x_t = a x_s + G z (``SDE.transition``): from r to s to t,
    a_rt = a_st a_rs and G_rt^2 = a_st^2 G_rs^2 + G_st^2; from 0 it is the marginal (m, s)."""
    r, s, t = (torch.tensor(v, dtype=torch.float64) * sde.T for v in ([0.0, 0.1, 0.3], [0.2, 0.45, 0.6], [0.5, 0.7, 1.0]))
    (a_rs, G_rs), (a_st, G_st), (a_rt, G_rt) = sde.transition(r, s), sde.transition(s, t), sde.transition(r, t)
    torch.testing.assert_close(a_rt, a_st * a_rs, rtol=1e-12, atol=0)
    torch.testing.assert_close(G_rt.square(), a_st.square() * G_rs.square() + G_st.square(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(torch.stack(sde.transition(torch.zeros(3, dtype=torch.float64), t)),
                               torch.stack(sde.marginal(t)), rtol=1e-14, atol=0)


def test_a_chains_embedding_transition_is_the_respaced_step():
    """``DDPMSchedule.embedding()`` from knot tau_{k-1} to knot tau_k (Nichol & Dhariwal 2021, sec. 4):
    a = sqrt(abar_{tau_k} / abar_{tau_{k-1}}) and G^2 = 1 - abar_{tau_k} / abar_{tau_{k-1}} = beta'_k,
    with abar from the betas here."""
    T, tau = 100, torch.tensor([0, 1, 7, 30, 31, 64, 100])
    abar = torch.cat([torch.ones(1, dtype=torch.float64),
                      torch.cumprod(1 - torch.linspace(1e-3, 0.05, T, dtype=torch.float64), 0)])[tau]
    a, G = DDPMSchedule(T, 1e-3, 0.05).embedding().transition(tau[:-1].double() / T, tau[1:].double() / T)
    torch.testing.assert_close(a, (abar[1:] / abar[:-1]).sqrt(), rtol=1e-13, atol=0)
    torch.testing.assert_close(G.square(), 1 - abar[1:] / abar[:-1], rtol=1e-11, atol=0)
