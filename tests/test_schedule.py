"""The discrete DDPM schedule and its VP-SDE limit."""

import math

import numpy as np
import pytest
import torch

from sde_diffusion import DDPMSchedule, VPSDE, CosineVPSDE


def test_linear_schedule_tables():
    sch = DDPMSchedule()
    assert sch.betas.shape == (1000,)
    assert float(sch.betas[0]) == pytest.approx(1e-4) and float(sch.betas[-1]) == pytest.approx(0.02)
    torch.testing.assert_close(sch.alphas_cumprod, torch.cumprod(1 - sch.betas, 0))
    # the DDPM paper's abar_T for this schedule is about 4e-5
    assert 3e-5 < float(sch.alphas_cumprod[-1]) < 5e-5


def test_limit_is_vp_sde_with_order_one():
    """max_i |abar_i - m(i/T)^2| over the chain shrinks like 1/T (observed order ~ 1)."""
    gaps = []
    Ts = [100, 200, 400, 800, 1600]
    for T in Ts:
        # beta_i = beta(i/T)/T for the fixed continuous beta(t) of VPSDE(0.1, 20)
        sch = DDPMSchedule(T=T, beta_1=0.1 / T, beta_T=20.0 / T)
        sde = sch.to_sde()
        assert sde == VPSDE(0.1, 20.0)
        t = torch.arange(1, T + 1, dtype=torch.float64) / T
        gaps.append(float((sch.alphas_cumprod - sde.marginal(t)[0] ** 2).abs().max()))
    order = -np.polyfit(np.log(Ts), np.log(gaps), 1)[0]
    assert abs(order - 1) < 0.1, (gaps, order)


def test_posterior_matches_closed_form():
    """q(x_{i-1} | x_i, x_0) from Bayes' rule on two Gaussians equals DDPM eq. 7."""
    sch = DDPMSchedule(T=50)
    like = torch.zeros(1, dtype=torch.float64)
    for i in (2, 10, 50):
        ab, ab_prev, beta = (float(a[i - 1]) for a in (sch.alphas_cumprod, sch.alphas_cumprod_prev, sch.betas))
        # prior x_{i-1} | x0 ~ N(sqrt(ab_prev) x0, 1 - ab_prev); likelihood x_i | x_{i-1} ~ N(sqrt(1-beta) x_{i-1}, beta)
        prec = 1 / (1 - ab_prev) + (1 - beta) / beta
        var = 1 / prec
        c0 = var * math.sqrt(ab_prev) / (1 - ab_prev)
        ct = var * math.sqrt(1 - beta) / beta
        got_c0, got_ct = sch.posterior_mean_coefs(i, like)
        assert float(got_c0) == pytest.approx(c0, rel=1e-10)
        assert float(got_ct) == pytest.approx(ct, rel=1e-10)
        assert float(sch.sigma2(i, like, "beta_tilde")) == pytest.approx(var, rel=1e-10)
        assert float(sch.sigma2(i, like, "beta")) == pytest.approx(beta, rel=1e-12)
    assert float(sch.sigma2(1, like, "beta_tilde")) == 0.0


def test_q_sample_moments():
    sch = DDPMSchedule()
    x0 = torch.full((200_000, 1), 2.0, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xi = sch.q_sample(x0, 300, noise)
    ab = float(sch.alphas_cumprod[299])
    # mean within 5 standard errors of sqrt(ab) x0
    assert abs(float(xi.mean()) - 2 * math.sqrt(ab)) < 5 * math.sqrt((1 - ab) / x0.shape[0])
    assert float(xi.var()) == pytest.approx(1 - ab, rel=0.02)


def test_ddpm_step_equals_vp_reverse_diffusion_to_second_order():
    """One DDPM ancestral step (Algorithm 2) and the VP reverse-diffusion step (from
    ``discretize``) with the same score and noise differ by O(beta_i^2): their means are
    x/sqrt(1-b) + b s/sqrt(1-b) and (2 - sqrt(1-b)) x + b s, equal to first order in b."""
    sde = VPSDE()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    z = torch.randn(8, 3, generator=g, dtype=torch.float64)
    score = lambda x, t: -x / 1.3
    for dt in (1e-2, 1e-3):
        t = torch.full((8,), 0.5, dtype=torch.float64)
        rev_f, rev_G = sde.reverse(score).discretize(x, t, dt)
        x_rd = x - rev_f + rev_G[:, None] * z
        beta_i = rev_G[:, None] ** 2
        x_ddpm = (x + beta_i * score(x, t)) / (1 - beta_i).sqrt() + beta_i.sqrt() * z
        b = float(beta_i[0])
        assert float((x_rd - x_ddpm).abs().max()) < b**2 * float(x.abs().max()) * 2


def test_cosine_schedule_and_limit():
    sch = DDPMSchedule(T=1000, kind="cosine")
    assert float(sch.betas.max()) <= 0.999
    sde = sch.to_sde()
    assert isinstance(sde, CosineVPSDE)
    i = torch.arange(1, 991)
    t = i.double() / 1000
    torch.testing.assert_close(sch.alphas_cumprod[:990], sde.marginal(t)[0] ** 2, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kwargs, match", [
    (dict(T=0), "T must be an integer >= 1"),
    (dict(beta_1=0.0), r"beta_1 must lie in \(0, 1\)"),
    (dict(beta_1=0.1, beta_T=0.01), r"beta_T must lie in \[beta_1, 1\)"),
    (dict(kind="quadratic"), "unknown schedule kind 'quadratic'; allowed: linear, cosine"),
])
def test_bad_schedule(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDPMSchedule(**kwargs)


def test_bad_step():
    with pytest.raises(ValueError, match=r"step i must lie in 1..T = 1..1000"):
        DDPMSchedule().sigma2(0, torch.zeros(1))


# -- respacing: improved DDPM's space_timesteps ----------------------------------------------------
def test_respace_keeps_iddpms_steps_for_every_K():
    """For T = 1000 and every K in 2..1000, the kept steps are those of the released space_timesteps
    (written out in ``_closed_forms.iddpm_kept_steps``): its running sum decides the ties that a
    closed-form round(1 + k (T - 1)/(K - 1)) breaks otherwise (K = 25 among them)."""
    from _closed_forms import iddpm_kept_steps
    base = DDPMSchedule()
    off = [K for K in range(2, 1001) if list(base.respace(K).keep) != iddpm_kept_steps(1000, str(K))]
    assert off == []
    closed_form = [round(1 + k * 999 / 24) for k in range(25)]
    assert list(base.respace(25).keep) != closed_form      # the case the issue measured


@pytest.mark.parametrize("spec", ["ddim10", "ddim50", "ddim100", "10,15,20", "1,3", "250", "7,1,4"])
def test_respace_strings_keep_iddpms_steps(spec):
    from _closed_forms import iddpm_kept_steps
    for T in (1000, 999):
        sched = DDPMSchedule(T).respace(spec)
        assert list(sched.keep) == iddpm_kept_steps(T, spec)
        assert sched.T == len(sched.keep)


def test_respace_ddim_striding_starts_below_T_and_its_tables_follow():
    """ddim50 of T = 1000: stride 20, steps 1, 21, ..., 981; abar'_k = abar_{tau_k}, and the chain's
    times tau_k / T stop at 0.981 (its prior is put at step 981, as in the released code)."""
    base = DDPMSchedule()
    sched = base.respace("ddim50")
    assert sched.keep == tuple(range(1, 1000, 20))
    torch.testing.assert_close(sched.alphas_cumprod, base.alphas_cumprod[torch.tensor(sched.keep) - 1],
                               rtol=1e-13, atol=0)
    assert float(sched.times[-1]) == 0.981


def test_respace_with_K_equal_T_is_the_base_chain_bit_for_bit():
    base = DDPMSchedule(T=200)
    for spec in (200, "200", "100,100"):
        sched = base.respace(spec)
        assert torch.equal(sched.betas, base.betas) and torch.equal(sched.alphas_cumprod, base.alphas_cumprod)


@pytest.mark.parametrize("spec, match", [
    (1001, r"K must lie in 1..T = 1..1000"),
    ("ddim37", r"no integer stride gives exactly 37 of T = 1000"),
    ("ten", r"expected K, \"K_1,...,K_n\", \"ddimK\""),
    ("10,600", r"section 2 has 500 steps, cannot keep 600"),
    ("10,0", r"section 2 has 500 steps, cannot keep 0"),
    ("leading2000", r"respace\('leading2000'\): K must lie in 1..T = 1..1000"),
    ("trailing0", r"trailingK's K must be an integer >= 1"),
])
def test_respace_refuses_what_it_cannot_keep(spec, match):
    with pytest.raises(ValueError, match=match):
        DDPMSchedule().respace(spec)
