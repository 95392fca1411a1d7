"""Learned variance, the DDPM objectives, the mu_tilde parameterization and respacing (issue 20).

Transcriptions: the test's own tables from closed forms of a linear-beta chain, never the package's;
torch.distributions for the Gaussians. Nichol & Dhariwal 2021: Sigma = exp(v log beta + (1 - v) log
beta_tilde) (eq. 15), L_hybrid = L_simple + lambda L_vlb with a stop-gradient on the mean (sec. 3.1),
respacing beta'_k = 1 - abar_{tau_k} / abar_{tau_{k-1}} (sec. 4).
"""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

import solvers
from _closed_forms import CHAIN_B1 as B1, CHAIN_BT as BT, CHAIN_T as T, F64, iddpm_kept_steps, tables
from sde_diffusion import DDPMSchedule, random_mixture
from sde_diffusion.dequantize import levels_to_continuous
from sde_diffusion.losses import ddpm_loss
from sde_diffusion.models import ScoreModel, build_model
from sde_diffusion.schedule import learned_log_variance
from sde_diffusion.vlb import ddpm_vlb_bits_per_dim, ddpm_vlb_terms



class Heads(nn.Module):
    """A net with separate parameters for the prediction (``mean``) and for v: out = [mean(h), v(h)]."""

    def __init__(self, dim, eps_fn=None):
        super().__init__()
        self.mean, self.v, self.eps_fn = nn.Linear(dim + 1, dim).double(), nn.Linear(dim + 1, dim).double(), eps_fn

    def forward(self, x, t):
        h = torch.cat([x, t[:, None].to(x.dtype)], 1)
        mean = self.mean(h) if self.eps_fn is None else self.eps_fn(x, t) + 0 * self.mean(h)
        return torch.cat([mean, torch.tanh(self.v(h))], 1)


def test_learned_variance_at_v_one_and_zero_is_beta_and_beta_tilde():
    beta, _, _, _, bt = tables()
    for v, want in ((1.0, beta[1:]), (0.0, bt[1:])):
        got = learned_log_variance(torch.full_like(beta[1:], v), beta[1:], bt[1:]).exp()
        torch.testing.assert_close(got, want, rtol=4e-16, atol=0)  # exp(log b): a few ulp at most
    mid = learned_log_variance(torch.full_like(beta, 0.5), beta, bt.clamp_min(1e-300)).exp()
    torch.testing.assert_close(mid, (beta * bt.clamp_min(1e-300)).sqrt(), rtol=1e-14, atol=0)


@pytest.mark.parametrize("v", [0.0, 1.0])
def test_ancestral_with_learned_variance_of_the_exact_posterior(v):
    """The analytic mixture's exact eps with a constant v: the ancestral chain with variance
    ``learned`` equals the chain with beta (v = 1) or beta_tilde (v = 0) to float64 rounding."""
    gmm, sched = random_mixture(dim=3, components=3, seed=1), DDPMSchedule(T, B1, BT)
    sde = sched.embedding()
    eps_exact = gmm.eps(sde)

    def net(x, t):
        return torch.cat([eps_exact(x, t), torch.full_like(x, v)], 1)
    model = ScoreModel(net, sde, "eps", learned_variance=True)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    run = lambda score, variance: solvers.sample(  # noqa: E731
        score, sde, (64, 3), "ancestral", T, schedule=sched, x_T=x_T, variance=variance,
        generator=torch.Generator().manual_seed(3), dtype=F64).x
    got = run(model, "auto")
    want = run(model, "beta" if v == 1 else "beta_tilde")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, run(model, "beta_tilde" if v == 1 else "beta"), atol=1e-3)


@pytest.mark.parametrize("v, fixed", [(1.0, "beta"), (0.0, "beta_tilde")])
def test_ancestral_with_a_learned_variance_on_the_sdes_own_grid(v, fixed):
    """Without a chain (any VP-type SDE's discretization), the step's extremes are its own
    G^2 = s_t^2 - a^2 s_s^2 and G^2 s_s^2 / s_t^2: v = 1 and v = 0 reproduce those fixed variances."""
    gmm, sde = random_mixture(dim=3, components=3, seed=2), DDPMSchedule().to_sde()
    exact = gmm.score(sde)
    model = ScoreModel(lambda x, t: torch.cat([-sde.marginal(t)[1][:, None] * exact(x, t),
                                               torch.full_like(x, v)], 1), sde, "eps", learned_variance=True)
    run = lambda variance: solvers.sample(model, sde, (32, 3), "ancestral", 12, variance=variance, dtype=F64,  # noqa: E731
                                          generator=torch.Generator().manual_seed(4)).x
    torch.testing.assert_close(run("auto"), run(fixed), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(run("auto"), run("beta_tilde" if fixed == "beta" else "beta"), atol=1e-3)


def _positive_v(heads, d):
    """heads with its v half mapped into (0.01, 0.05): a variance itself, diffusers' "learned"."""
    def net(x, t):
        out = heads(x, t)
        return torch.cat([out[:, :d], 0.02 * (1.5 + out[:, d:])], 1)
    return net


@pytest.mark.parametrize("kind", [True, "learned_range", "learned"])
def test_vlb_terms_with_a_learned_variance_are_the_kl_divergences(kind):
    """Each L_{i-1} with a per-dimension learned Sigma equals kl_divergence(q(x_{i-1} | x_i, x_0),
    N(mu_theta, Sigma_theta)) summed over dims, Sigma_theta = exp(w log beta + (1 - w) log beta_tilde) with
    w = v (this toolkit's convention) or w = (v + 1) / 2 (improved DDPM's code, diffusers' learned_range),
    or Sigma_theta = v (diffusers' learned); the decoder is the mass of N(mu_1, Sigma_1) over the level's
    bin (Sigma_1 with beta_tilde_2)."""
    beta, alpha, abar, prev, bt = tables()
    n, d, levels = 5, 3, 8
    k = torch.randint(levels, (n, d), generator=torch.Generator().manual_seed(2))
    x0 = -1 + (k.to(F64) + 0.5) * 2 / levels
    torch.manual_seed(0)
    heads = Heads(d)
    net = _positive_v(heads, d) if kind == "learned" else heads
    model = ScoreModel(net, DDPMSchedule(T, B1, BT).embedding(), "eps", learned_variance=kind)
    prior, kl, dec = ddpm_vlb_terms(model, DDPMSchedule(T, B1, BT), k, levels=levels,
                                    generator=torch.Generator().manual_seed(8), dtype=F64)
    z = torch.randn((T * n, d), generator=torch.Generator().manual_seed(8), dtype=F64).reshape(T, n, d)
    ref_kl = torch.zeros(n, dtype=F64)
    with torch.no_grad():
        for j in range(T):  # step j + 1
            xi = abar[j].sqrt() * x0 + (1 - abar[j]).sqrt() * z[j]
            out = net(xi, torch.full((n,), (j + 1) / T, dtype=F64))
            eps, v = out[:, :d], out[:, d:]
            bt_j = bt[j] if j > 0 else bt[1]
            w = (v + 1) / 2 if kind == "learned_range" else v
            var = v if kind == "learned" else torch.exp(w * beta[j].log() + (1 - w) * bt_j.log())
            p_mean = (xi - beta[j] / (1 - abar[j]).sqrt() * eps) / alpha[j].sqrt()
            if j == 0:
                p = Normal(p_mean, var.sqrt())
                lo = torch.where(k == 0, torch.tensor(-math.inf, dtype=F64), -1 + k.to(F64) * 2 / levels)
                hi = torch.where(k == levels - 1, torch.tensor(math.inf, dtype=F64), -1 + (k + 1).to(F64) * 2 / levels)
                ref_dec = -torch.log(p.cdf(hi) - p.cdf(lo)).sum(1)
                continue
            q_mean = (prev[j].sqrt() * beta[j] * x0 + alpha[j].sqrt() * (1 - prev[j]) * xi) / (1 - abar[j])
            ref_kl += kl_divergence(Normal(q_mean, bt[j].sqrt()), Normal(p_mean, var.sqrt())).sum(1)
    torch.testing.assert_close(kl, ref_kl, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dec, ref_dec, rtol=1e-10, atol=1e-10)
    ref_prior = kl_divergence(Normal(abar[-1].sqrt() * x0, (1 - abar[-1]).sqrt()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(prior, ref_prior, rtol=1e-12, atol=1e-12)


def test_hybrid_gradients_are_l_simple_for_the_mean_and_lambda_l_vlb_for_v():
    sched, lam = DDPMSchedule(T, B1, BT), 0.001
    torch.manual_seed(0)
    heads = Heads(4)
    model = ScoreModel(heads, sched.embedding(), "eps", learned_variance=True)
    k = torch.randint(0, 16, (32, 4), generator=torch.Generator().manual_seed(1))
    x0 = levels_to_continuous(k, 16, dtype=F64)
    i = torch.arange(32) % T + 1           # every step, the decoder's i = 1 included
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=F64)

    def grads(objective, **kw):
        heads.zero_grad()
        ddpm_loss(model, sched, x0, i=i, noise=noise, objective=objective, levels=16, **kw).backward()
        return [p.grad.clone() for p in heads.mean.parameters()], [p.grad.clone() for p in heads.v.parameters()]
    hybrid_mean, hybrid_v = grads("hybrid", vlb_weight=lam)
    simple_mean, _ = grads("simple")
    vlb_mean, vlb_v = grads("vlb")
    for g, want in zip(hybrid_mean, simple_mean):
        torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-15)
    for g, want in zip(hybrid_v, vlb_v):
        torch.testing.assert_close(g, lam * want, rtol=1e-12, atol=1e-15)
    # the stop-gradient matters: without it the bound would move the mean too
    assert max(float((g - w).abs().max()) for g, w in zip(vlb_mean, simple_mean)) > 1e-3


def test_the_objectives_per_sample_are_their_formulas():
    """simple = mean_d (eps - z)^2; mean_mse = mean_d (mu_tilde - mu_theta)^2 written with mu_tilde
    from x_0 (eq. 7); vlb = (L_T + T L_{i-1}) / (D ln 2) with the KL from torch.distributions."""
    beta, alpha, abar, prev, bt = tables()
    sched, d, n = DDPMSchedule(T, B1, BT), 3, 12
    torch.manual_seed(0)
    lin = nn.Linear(d, d).double()
    eps_fn = lambda x, t: lin(x) * t[:, None]  # noqa: E731
    # the score that reads as eps_fn on the chain: -eps / sqrt(1 - abar_i) at t = i / T
    score_fn = lambda x, t: -eps_fn(x, t) / (1 - abar[torch.round(t * T).long() - 1, None]).sqrt()  # noqa: E731
    x0 = levels_to_continuous(torch.randint(0, 8, (n, d), generator=torch.Generator().manual_seed(4)), 8, dtype=F64)
    i = torch.arange(n) % (T - 1) + 2
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    j = i - 1
    xi = abar[j, None].sqrt() * x0 + (1 - abar[j, None]).sqrt() * z
    with torch.no_grad():
        eps = eps_fn(xi, i.to(F64) / T)
        q_mean = (prev[j, None].sqrt() * beta[j, None] * x0 + alpha[j, None].sqrt() * (1 - prev[j, None]) * xi) / (1 - abar[j, None])
        p_mean = (xi - beta[j, None] / (1 - abar[j, None]).sqrt() * eps) / alpha[j, None].sqrt()
        kl = kl_divergence(Normal(q_mean, bt[j, None].sqrt()), Normal(p_mean, beta[j, None].sqrt())).sum(1)
        prior = kl_divergence(Normal(abar[-1].sqrt() * x0, (1 - abar[-1]).sqrt()), Normal(0.0, 1.0)).sum(1)
        want = {"simple": (eps - z).square().mean(1), "mean_mse": (q_mean - p_mean).square().mean(1),
                "vlb": (prior + T * kl) / (d * math.log(2))}
        for objective, value in want.items():
            got = ddpm_loss(score_fn, sched, x0, i=i, noise=z, objective=objective, reduction="none", levels=8)
            torch.testing.assert_close(got, value, rtol=1e-12, atol=1e-14)


def test_mu_model_of_the_exact_posterior_mean_is_the_exact_eps():
    """A mu-net returning the exact mu_tilde(x_i, E[x_0 | x_i]) of the analytic mixture reads as the
    exact eps on the chain: its bound equals the eps oracle's to float64 rounding, draw for draw."""
    gmm, sched = random_mixture(dim=2, components=3, seed=4), DDPMSchedule(T, B1, BT)
    beta, alpha, abar, _, _ = tables()
    eps_exact = gmm.eps(sched.embedding())

    def mu_net(x, t):  # the test's own mu = (x_i - beta_i / sqrt(1 - abar_i) eps) / sqrt(alpha_i)
        j = torch.round(t * T).long() - 1
        return (x - (beta[j] / (1 - abar[j]).sqrt())[:, None] * eps_exact(x, t)) / alpha[j].sqrt()[:, None]
    mu_model = ScoreModel(mu_net, sched.embedding(), "mu", mu_step=1 / T)
    k = torch.randint(0, 64, (40, 2), generator=torch.Generator().manual_seed(0))
    run = lambda fn: ddpm_vlb_bits_per_dim(fn, sched, k, levels=64, generator=torch.Generator().manual_seed(1),  # noqa: E731
                                           dtype=F64)
    torch.testing.assert_close(run(mu_model), run(gmm.score(sched.embedding())), rtol=1e-10, atol=1e-10)


def _train(model, sched, data, objective, steps, seed=0):
    """Adam (lr 3e-3, batch 256, gradients clipped at norm 1, as the trainer does) on ``ddpm_loss``."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x0 = data[torch.randint(len(data), (256,), generator=gen)]
        loss = ddpm_loss(model, sched, x0, objective=objective, levels=32, generator=gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval()


@pytest.mark.slow  # trains two MLPs, 800 steps each (~18 s); only in the full run
def test_a_briefly_trained_mu_model_has_the_eps_models_bound():
    """On a 2-D mixture quantized to 32 levels and a 20-step chain, an MLP predicting eps trained by
    L_simple and one predicting mu_tilde trained by ||mu_tilde - mu_theta||^2 (each its own
    unweighted MSE, 800 Adam steps) reach DDPM bounds within 0.15 bits/dim of each other, and each
    lies within [-0.06, +0.2] of the exact eps's bound on the same draws (the optimum of the
    fixed-variance bound, up to its Monte-Carlo error: s.e. about 0.02 on 400 points). Measured over
    two seeds: eps 4.18-4.19, mu 4.25, exact 4.13; the mu model trained by the bound itself instead
    was unstable (4.25 or 4.79 by seed)."""
    gmm = random_mixture(dim=2, components=4, radius=0.5, min_var=0.01, max_var=0.03, seed=2)
    sched = DDPMSchedule(20, 1e-3, 0.3)
    quantize = lambda x: ((x.clamp(-0.999, 0.999) + 1) * 16).floor().long()  # noqa: E731
    data = levels_to_continuous(quantize(gmm.sample(20000, torch.Generator().manual_seed(1))), 32)
    test_k = quantize(gmm.sample(400, torch.Generator().manual_seed(9)))
    bound = lambda fn: float(ddpm_vlb_bits_per_dim(fn, sched, test_k, levels=32,  # noqa: E731
                                                   generator=torch.Generator().manual_seed(3)).mean())
    got = {}
    for p, objective in (("eps", "simple"), ("mu", "mean_mse")):
        torch.manual_seed(0)
        model = build_model("mlp", sched.embedding(), dim=2, hidden=64, blocks=2, parameterization=p,
                            mu_step=1 / sched.T if p == "mu" else None, embedding="sinusoidal")
        got[p] = bound(_train(model, sched, data, objective, 800))
    exact = bound(gmm.score(sched.embedding()))
    assert abs(got["mu"] - got["eps"]) < 0.15, got
    for p, b in got.items():
        assert exact - 0.06 < b < exact + 0.2, (p, b, exact)


def test_respaced_with_K_equal_T_is_the_full_chain_bit_for_bit():
    sched = DDPMSchedule(50, 1e-3, 0.2)
    gmm = random_mixture(dim=2, components=3, seed=0)
    score = gmm.score(sched.embedding())
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    run = lambda s: solvers.sample(score, sched.embedding(), (32, 2), "ancestral", s.T, schedule=s, x_T=x_T,  # noqa: E731
                                   generator=torch.Generator().manual_seed(1)).x
    assert torch.equal(run(sched.respace(50)), run(sched))
    k = torch.randint(0, 16, (16, 2), generator=torch.Generator().manual_seed(2))
    bound = lambda s: ddpm_vlb_terms(score, s, k, levels=16,  # noqa: E731
                                     generator=torch.Generator().manual_seed(3))
    for a, b in zip(bound(sched.respace(50)), bound(sched)):
        assert torch.equal(a, b)


def test_respaced_steps_use_the_recomputed_variances():
    """K = 7 of T = 50: tau evenly spaced from 1 to T (improved DDPM's steps), beta'_k = 1 - abar_{tau_k} / abar_{tau_{k-1}},
    beta_tilde'_k = (1 - abar_{tau_{k-1}}) / (1 - abar_{tau_k}) beta'_k; the ancestral chain on it, written
    out here with the learned variance exp(v log beta' + (1 - v) log beta_tilde'), matches the package."""
    Tb, K = 50, 7
    beta, _, abar, _, _ = tables(Tb, 1e-3, 0.2)
    tau = iddpm_kept_steps(Tb, str(K))   # 1, 9, 17, 25, 34, 42, 50
    ab = abar[torch.tensor(tau) - 1]
    ab_prev = torch.cat([torch.ones(1, dtype=F64), ab[:-1]])
    beta_r = 1 - ab / ab_prev
    bt_r = (1 - ab_prev) / (1 - ab) * beta_r
    sched = DDPMSchedule(Tb, 1e-3, 0.2).respace(K)
    assert list(sched.keep) == tau
    torch.testing.assert_close(sched.betas, beta_r, rtol=1e-13, atol=0)
    torch.testing.assert_close(sched.posterior_variance, bt_r, rtol=1e-12, atol=0)
    torch.testing.assert_close(sched.times, torch.tensor(tau, dtype=F64) / Tb, rtol=0, atol=0)

    gmm = random_mixture(dim=2, components=3, seed=5)
    eps_exact = gmm.eps(sched.embedding())
    v_of = lambda x, t: torch.sin(3 * x + t[:, None])  # noqa: E731
    model = ScoreModel(lambda x, t: torch.cat([eps_exact(x, t), v_of(x, t)], 1), sched.embedding(), "eps",
                       learned_variance=True)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    got = solvers.sample(model, model.sde, (16, 2), "ancestral", K, schedule=sched, x_T=x_T,
                         generator=torch.Generator().manual_seed(1), dtype=F64).x
    gen, x = torch.Generator().manual_seed(1), x_T.clone()
    for k in range(K - 1, -1, -1):
        t = torch.full((16,), tau[k] / Tb, dtype=F64)
        eps, v = eps_exact(x, t), v_of(x, t)                # the model's own outputs
        mean = (x - beta_r[k] / (1 - ab[k]).sqrt() * eps) / (1 - beta_r[k]).sqrt()
        if k == 0:
            x = mean
            break
        var = torch.exp(v * beta_r[k].log() + (1 - v) * bt_r[k].log())
        x = mean + var.sqrt() * torch.randn(x.shape, generator=gen, dtype=F64)
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)


def test_learned_variance_and_mu_refuse_bad_input():
    sde = DDPMSchedule().embedding()
    with pytest.raises(ValueError, match="mu_step"):
        ScoreModel(lambda x, t: x, sde, "mu")
    lv = ScoreModel(lambda x, t: x, sde, "eps", learned_variance=True)
    with pytest.raises(ValueError, match="stacked along dim 1"):
        lv.score(torch.zeros(4, 2), torch.full((4,), 0.5))
    plain = ScoreModel(lambda x, t: x, sde, "eps")
    with pytest.raises(ValueError, match="learned-variance model"):
        plain.predict(torch.zeros(4, 2), torch.full((4,), 0.5), with_v=True)
    with pytest.raises(ValueError, match="variance 'learned'"):
        solvers.sample(plain, sde, (4, 2), "ancestral", 5, variance="learned")
    with pytest.raises(ValueError, match="hybrid"):
        ddpm_loss(plain, DDPMSchedule(), torch.zeros(4, 2), objective="hybrid")
    with pytest.raises(ValueError, match="K must lie in 1..T"):
        DDPMSchedule(10).respace(11)
    with pytest.raises(ValueError, match="keep must be increasing steps in 1..10"):
        type(DDPMSchedule(10).respace(3))(DDPMSchedule(10), (1, 5, 4, 10))
