"""Transcription tests of the stochastic and discrete update rules: each writes the paper's formula
out with its own tables from the closed forms of ``_closed_forms`` and runs it on the same
non-uniform grid, from the same state and with the same noise (one generator seed, drawn in the
same order) as the package's sampler; float64, to 1e-12. (DPM-Solver and Heun: test_transcriptions_ode.py.)
Notation per step t -> s < t: abar = m^2 (VP), alpha = abar_t / abar_s, beta = 1 - alpha.
"""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from _closed_forms import F64, GRID, SDES, at, run, score, start
from sde_diffusion import DDPMSchedule
from sde_diffusion.vlb import ddpm_vlb_terms

TOL = dict(rtol=1e-12, atol=1e-12)


def chain(update, x, seed=5):
    """Apply update(x, t, s, i, gen) along GRID with a generator seeded like the package's."""
    gen = torch.Generator().manual_seed(seed)
    for i in range(len(GRID) - 1):
        x = update(x, GRID[i], GRID[i + 1], i, gen)
    return x


def z_like(x, gen):
    return torch.randn(x.shape, generator=gen, dtype=F64)


def package(method, sde_name, seed=5, **opts):
    return run(method, SDES[sde_name][0], GRID, start(), torch.Generator().manual_seed(seed), **opts)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ancestral_vp_is_ddpm_algorithm_2(variance):
    """Ho et al. 2020, Algorithm 2 on the grid: eps = -sqrt(1 - abar_t) score,
    x_s = (x - beta / sqrt(1 - abar_t) eps) / sqrt(alpha) + sigma z,
    sigma^2 = beta or beta_tilde = (1 - abar_s) / (1 - abar_t) beta."""
    cf = SDES["vp"][1]

    def update(x, t, s, i, gen):
        ab_t, ab_s = cf(t)[0] ** 2, cf(s)[0] ** 2
        alpha = ab_t / ab_s
        beta = 1 - alpha
        var = beta if variance == "beta" else (1 - ab_s) / (1 - ab_t) * beta
        eps = -torch.sqrt(1 - ab_t) * score(x, at(t, x))
        return (x - beta / torch.sqrt(1 - ab_t) * eps) / torch.sqrt(alpha) + torch.sqrt(var) * z_like(x, gen)
    torch.testing.assert_close(package("ancestral", "vp", variance=variance), chain(update, start()), **TOL)


def test_ancestral_ve_is_smld_ancestral():
    """Song et al. 2021, eq. 47, with sigma_i the noise level s(t_i) of x_t given x_0:
    x_s = x + (s_t^2 - s_s^2) score + sqrt(s_s^2 (s_t^2 - s_s^2) / s_t^2) z."""
    cf = SDES["ve"][1]

    def update(x, t, s, i, gen):
        st2, ss2 = cf(t)[1] ** 2, cf(s)[1] ** 2
        return x + (st2 - ss2) * score(x, at(t, x)) + torch.sqrt(ss2 * (st2 - ss2) / st2) * z_like(x, gen)
    torch.testing.assert_close(package("ancestral", "ve"), chain(update, start()), **TOL)


def _reverse_diffusion(sde_name):
    """Song et al. 2021, eq. 46: x_s = x - f_t(x) + G_t^2 score + G_t z with the forward discretisation
    of their appendix: VP f = (sqrt(1 - beta) - 1) x, G = sqrt(beta); VE f = 0, G^2 = s_t^2 - s_s^2."""
    cf = SDES[sde_name][1]

    def update(x, t, s, i, gen):
        if sde_name == "vp":
            beta = 1 - cf(t)[0] ** 2 / cf(s)[0] ** 2
            f, G2 = (torch.sqrt(1 - beta) - 1) * x, beta
        else:
            f, G2 = 0 * x, cf(t)[1] ** 2 - cf(s)[1] ** 2
        return x - f + G2 * score(x, at(t, x)) + torch.sqrt(G2) * z_like(x, gen)
    return update


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_reverse_diffusion_predictor(sde_name):
    ref = chain(_reverse_diffusion(sde_name), start())
    torch.testing.assert_close(package("reverse_diffusion", sde_name), ref, **TOL)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_euler_maruyama(sde_name):
    """x_s = x - [f(t) x - g(t)^2 score(x, t)] dt + g(t) sqrt(dt) z, dt = t - s."""
    cf = SDES[sde_name][1]

    def update(x, t, s, i, gen):
        _, _, f, g = cf(t)
        dt = t - s
        return x - (f * x - g**2 * score(x, at(t, x))) * dt + g * torch.sqrt(dt) * z_like(x, gen)
    torch.testing.assert_close(package("euler_maruyama", sde_name), chain(update, start()), **TOL)


def _langevin(x, t, alpha, snr, gen):
    """Song et al. 2021, Algorithms 4 (VE, alpha = 1) and 5 (VP, alpha_i = 1 - beta_i):
    e = 2 alpha (snr ||z|| / ||score||)^2 with batch means of the norms; x + e score + sqrt(2 e) z."""
    g = score(x, at(t, x))
    z = z_like(x, gen)
    e = 2 * alpha * (snr * z.norm(dim=1).mean() / g.norm(dim=1).mean()) ** 2
    return x + e * g + torch.sqrt(2 * e) * z


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_pc_is_reverse_diffusion_then_two_langevin_steps(sde_name):
    cf = SDES[sde_name][1]
    predict = _reverse_diffusion(sde_name)

    def update(x, t, s, i, gen):
        x = predict(x, t, s, i, gen)
        alpha = cf(t)[0] ** 2 / cf(s)[0] ** 2  # 1 - beta_i for VP, 1 for VE
        for _ in range(2):
            x = _langevin(x, s, alpha, 0.2, gen)
        return x
    torch.testing.assert_close(package("pc", sde_name, snr=0.2, corrector_steps=2), chain(update, start()), **TOL)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_eq_12(eta):
    """Song, Meng & Ermon 2021, eq. 12 and 16 with eps = -s_t score:
    x_s = sqrt(abar_s) (x - sqrt(1 - abar_t) eps) / sqrt(abar_t) + sqrt(1 - abar_s - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)."""
    cf = SDES["vp"][1]

    def update(x, t, s, i, gen):
        ab_t, ab_s = cf(t)[0] ** 2, cf(s)[0] ** 2
        sigma = eta * torch.sqrt((1 - ab_s) / (1 - ab_t)) * torch.sqrt(1 - ab_t / ab_s)
        eps = -torch.sqrt(1 - ab_t) * score(x, at(t, x))
        x0 = (x - torch.sqrt(1 - ab_t) * eps) / torch.sqrt(ab_t)
        out = torch.sqrt(ab_s) * x0 + torch.sqrt(1 - ab_s - sigma**2) * eps
        return out + sigma * z_like(x, gen) if eta > 0 else out
    torch.testing.assert_close(package("ddim", "vp", eta=eta), chain(update, start()), **TOL)


def test_ancestral_with_a_schedule_is_ddpm_algorithm_2_on_its_own_tables():
    """Algorithm 2 with beta_i linear from beta_1 to beta_T (closed form, not DDPMSchedule's
    tables), at t = i/T, z = 0 at i = 1 and no extra denoising step: the package's ancestral on the
    chain's grid (i/T, then 0) of the chain's embedding, whose transitions are the chain's steps."""
    T, b1, bT = 7, 0.02, 0.5
    i = torch.arange(1, T + 1, dtype=F64)
    beta = b1 + (i - 1) / (T - 1) * (bT - b1)
    abar = torch.cumprod(1 - beta, 0)
    sde = DDPMSchedule(T, b1, bT).embedding()
    x = start()
    gen = torch.Generator().manual_seed(5)
    grid = torch.cat([i.flip(0) / T, torch.zeros(1, dtype=F64)])
    got = run("ancestral", sde, grid, x, gen, variance="beta")
    gen = torch.Generator().manual_seed(5)
    for k in range(T, 0, -1):
        eps = -torch.sqrt(1 - abar[k - 1]) * score(x, torch.full((x.shape[0],), k / T, dtype=F64))
        x = (x - beta[k - 1] / torch.sqrt(1 - abar[k - 1]) * eps) / torch.sqrt(1 - beta[k - 1])
        x = x + torch.sqrt(beta[k - 1]) * z_like(x, gen) if k > 1 else x
    torch.testing.assert_close(got, x, **TOL)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_vlb_terms_are_the_kl_divergences_of_the_two_gaussians(variance):
    """Each L_{i-1} = KL(q(x_{i-1} | x_i, x_0) || p(x_{i-1} | x_i)) by torch.distributions, with
    q's mean sqrt(abar_{i-1}) beta_i / (1 - abar_i) x_0 + sqrt(alpha_i) (1 - abar_{i-1}) / (1 - abar_i) x_i
    and variance beta_tilde_i (Ho et al. 2020, eq. 6-7), p's mean (x_i - beta_i / sqrt(1 - abar_i) eps)
    / sqrt(alpha_i) and variance beta_i or beta_tilde_i. Each term in turn gets a model eps that is
    wrong at that step only, so the sum pins every L_{i-1} on its own (the others then hold only
    their variance part, computed here too)."""
    T, b1, bT, n, d, levels = 5, 0.05, 0.6, 4, 3, 16
    i = torch.arange(1, T + 1, dtype=F64)
    beta = b1 + (i - 1) / (T - 1) * (bT - b1)
    alpha, abar = 1 - beta, torch.cumprod(1 - beta, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    bt = (1 - abar_prev) / (1 - abar) * beta
    sig2 = beta if variance == "beta" else torch.cat([bt[1:2], bt[1:]])
    k = torch.randint(levels, (n, d), generator=torch.Generator().manual_seed(2))
    x0 = -1 + (k.to(F64) + 0.5) * 2 / levels
    for wrong in range(2, T + 1):
        def eps_fn(x, t):  # true noise z = (x_i - sqrt(abar_i) x0) / sqrt(1 - abar_i), off at step `wrong`
            j = torch.round(t * T).long() - 1
            z = (x - abar[j, None].sqrt() * x0.repeat(len(x) // n, 1)) / (1 - abar[j, None]).sqrt()
            return torch.where((j + 1 == wrong)[:, None], z + 0.3 * torch.sin(x + 2 * t[:, None]), z)
        def score_fn(x, t):  # read by the bound as eps = -sqrt(1 - abar_i) score = eps_fn
            return -eps_fn(x, t) / (1 - abar[torch.round(t * T).long() - 1, None]).sqrt()
        _, kl, _ = ddpm_vlb_terms(score_fn, DDPMSchedule(T, b1, bT), k, levels=levels, variance=variance,
                                  generator=torch.Generator().manual_seed(8), dtype=F64)
        z_all = torch.randn((T * n, d), generator=torch.Generator().manual_seed(8), dtype=F64).reshape(T, n, d)
        ref = torch.zeros(n, dtype=F64)
        for step in range(2, T + 1):
            j = step - 1
            xi = abar[j].sqrt() * x0 + (1 - abar[j]).sqrt() * z_all[j]
            eps = eps_fn(xi, torch.full((n,), step / T, dtype=F64))
            q_mean = (abar_prev[j].sqrt() * beta[j] * x0 + alpha[j].sqrt() * (1 - abar_prev[j]) * xi) / (1 - abar[j])
            p_mean = (xi - beta[j] / (1 - abar[j]).sqrt() * eps) / alpha[j].sqrt()
            ref += kl_divergence(Normal(q_mean, bt[j].sqrt()), Normal(p_mean, sig2[j].sqrt())).sum(1)
        torch.testing.assert_close(kl, ref, **TOL)
