"""Defaults and details pinned to the papers, round 2 ("Tests that catch wrong maths"): each test states
one property from an independent closed form or reference library (scipy) and fails when it is broken.

Tables are the test's own, from the betas in float64 (Ho et al. 2020, eq. 4-7; Nichol & Dhariwal 2021,
eq. 15 and sec. 4); the SDEs' (m, s) come from ``_closed_forms``, never from the package.
- the ancestral sampler's default variance: sigma^2 = beta = G^2 on VP-type SDEs (DDPM), the posterior
  variance beta_tilde = G^2 s_s^2 / s_t^2 on VE (SMLD's ancestral rule, Song et al. 2021 eq. 47);
- the objectives' discretized-Gaussian decoder L_0 at 17 and at 256 levels (scipy.stats.norm);
- a learned-variance U-Net's 2C output split along dim 1, and the chain with that variance on images;
- ``DiscreteVPSDE(interpolation="cubic")`` is scipy's PchipInterpolator of log m (values and f);
- a mu-model on a respaced chain references the BASE chain's step tau_k - 1;
- the learned log-variance at i = 1 uses the clipped beta_tilde_1 := beta_tilde_2 (finite).
"""

import math

import numpy as np
import pytest
import torch
from scipy.interpolate import CubicSpline, PchipInterpolator
from scipy.stats import norm

import solvers
from _closed_forms import CHAIN_B1 as B1, CHAIN_BT as BT, CHAIN_T as T, F64, tables
from _closed_forms import GRID, SDES, start
from solvers.base import METHODS, Context, CountingScore
from sde_diffusion import DDPMSchedule, SubVPSDE, random_mixture
from sde_diffusion.losses import ddpm_loss
from sde_diffusion.models import ScoreModel, build_model
from sde_diffusion.sde import DiscreteVPSDE
from sde_diffusion.vlb import ddpm_vlb_bits_per_dim, ddpm_vlb_terms



# -- 1. the ancestral sampler's default variance --------------------------------------------------
def _score_of(coefs):
    """A deterministic nonlinear score of the SDE's scale: -x / (1 + s(t)^2) (the score of N(0, 1) data
    noised) plus a smooth perturbation, t of shape (N,)."""
    def score(x, t):
        s2 = coefs(t)[1][:, None] ** 2
        return -x / (1 + s2) + 0.3 * torch.sin(3 * x / (1 + s2).sqrt()) / (1 + s2).sqrt()
    return score


def _run_ancestral(sde, score, grid, x, generator):
    """The registered ``ancestral`` with its default options on the explicit ``grid`` (no denoising)."""
    spec = METHODS["ancestral"]
    ctx = Context(sde, CountingScore(score), grid.clone(), grid.clone(), generator)
    return spec.fn(ctx, x.clone(), **spec.bind(sde, len(grid) - 1, {}))


def _ancestral_reference(coefs, score, grid, x, gen, variance):
    """x <- (x + G^2 score) / a + sigma z per step t -> s of the grid, a = m_t / m_s, G^2 = s_t^2 - a^2 s_s^2,
    sigma^2 = G^2 (``beta``) or G^2 s_s^2 / s_t^2 (``beta_tilde``); z from ``gen`` in step order."""
    for t, s in zip(grid[:-1], grid[1:]):
        (m_t, s_t), (m_s, s_s) = coefs(t)[:2], coefs(s)[:2]
        a = m_t / m_s
        G2 = s_t**2 - a**2 * s_s**2
        mean = (x + G2 * score(x, t.expand(x.shape[0]))) / a
        var = G2 if variance == "beta" else G2 * s_s**2 / s_t**2
        x = mean + var.sqrt() * torch.randn(x.shape, generator=gen, dtype=F64)
    return x


@pytest.mark.parametrize("name, want, other", [("vp", "beta", "beta_tilde"), ("ve", "beta_tilde", "beta")])
def test_ancestral_default_variance_is_the_papers(name, want, other):
    """variance='auto' (no learned variance) on the non-uniform GRID: DDPM's sigma^2 = beta = G^2 on VP,
    the posterior variance beta_tilde = G^2 s_s^2 / s_t^2 on VE (the sampler's docstring, SMLD)."""
    sde, coefs = SDES[name]
    score = _score_of(coefs)
    x = start(16, 3, scale=1.0 if name == "vp" else 50.0)
    got = _run_ancestral(sde, score, GRID, x, torch.Generator().manual_seed(5))
    ref = _ancestral_reference(coefs, score, GRID, x, torch.Generator().manual_seed(5), want)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    wrong = _ancestral_reference(coefs, score, GRID, x, torch.Generator().manual_seed(5), other)
    assert float((got - wrong).abs().max()) > 1e-2  # the two rules differ here: the test can tell


def test_ancestral_default_on_sub_vp_through_sample_is_beta():
    """sample(..., 'ancestral') with x_T and a seeded generator on sub-VP (VP-type: m(T) < 1), its own
    uniform grid to eps: the default is sigma^2 = G^2, from the closed form m = e^{-B/2}, s = 1 - e^{-B}."""
    b0, b1, steps, eps = 0.1, 20.0, 7, 1e-3

    def subvp(t):
        B = b0 * t + 0.5 * (b1 - b0) * t**2
        return torch.exp(-B / 2), -torch.expm1(-B)
    score = _score_of(subvp)
    x_T = start(8, 2)
    got = solvers.sample(score, SubVPSDE(b0, b1), (8, 2), "ancestral", steps, eps=eps, denoise=False, x_T=x_T,
                         generator=torch.Generator().manual_seed(2), dtype=F64).x
    grid = torch.linspace(1.0, eps, steps + 1, dtype=F64)
    ref = _ancestral_reference(subvp, score, grid, x_T, torch.Generator().manual_seed(2), "beta")
    torch.testing.assert_close(got, ref, rtol=1e-11, atol=1e-11)
    wrong = _ancestral_reference(subvp, score, grid, x_T, torch.Generator().manual_seed(2), "beta_tilde")
    assert float((got - wrong).abs().max()) > 1e-3


# -- 2. the objectives' decoder levels ---------------------------------------------------------------
def _decoder_nll_scipy(x0, mean, std, levels):
    """-sum_d log of the N(mean, std^2) mass over x0's bin among ``levels`` equal bins of [-1, 1] (bin
    k = floor((x0 + 1) / w)), the first and last extended to -inf and +inf (DDPM's decoder), scipy."""
    x0, mean, std = (np.asarray(a, dtype=np.float64) for a in (x0, mean, std))
    w = 2 / levels
    k = np.clip(np.floor((x0 + 1) / w), 0, levels - 1)
    lo = np.where(k == 0, -np.inf, -1 + k * w)
    hi = np.where(k == levels - 1, np.inf, -1 + (k + 1) * w)
    a, b = (lo - mean) / std, (hi - mean) / std
    upper = (a + b) > 0                              # in the upper tail, via the survival function
    mass = np.where(upper, norm.sf(a) - norm.sf(b), norm.cdf(b) - norm.cdf(a))
    return -np.log(mass).sum(1)


def _prior_kl(x0, abar_T):
    """KL(N(sqrt(abar_T) x0, (1 - abar_T) I) || N(0, I)) per sample."""
    return 0.5 * (abar_T * x0.square() + (1 - abar_T) - 1 - torch.log(1 - abar_T)).sum(1)


def _eps_fn(x, t):
    return 0.4 * torch.sin(2 * x + t[:, None]) - 0.2 * x


def _first_step_batch(n=10, d=3):
    x0 = torch.linspace(-0.97, 0.95, n * d, dtype=F64).reshape(n, d)[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    z = torch.randn((n, d), generator=torch.Generator().manual_seed(1), dtype=F64)
    return x0, z


# L_vlb at i = 1 of the batch above, (L_T + T L_0) / (D ln 2) per sample, from ``_decoder_nll_scipy``
VLB_AT_17 = [13.7137663763, 11.8299878145, 13.6864424899, 12.0860573793, 15.0619197253,
             6.7508441748, 11.0714351026, 13.3467857711, 25.9948478886, 15.8962890219]
VLB_AT_256 = [35.7640860552, 34.0966708188, 36.5829689510, 34.3100529014, 37.5393655900,
              35.0156805993, 44.8718240644, 35.6539729354, 50.0782892748, 39.6632952714]  # sigma_1^2 = beta_tilde_2


@pytest.mark.parametrize("levels", [17, 256])
def test_vlb_objective_decoder_at_17_and_256_levels(levels):
    """ddpm_loss(objective='vlb', levels=L, bins='exact') at i = 1: (L_T + T L_0) / (D ln 2) with L_0 the
    discretized Gaussian N(mu_1, sigma_1^2) over the L bins (scipy's exact CDF; DDPM's own bins and tanh CDF,
    the default at 256 levels, are tests/test_ddpm_conventions.py's), sigma_1^2 = beta_1 at 17 levels and
    DDPM's beta_tilde_2 at 256 (its code's log(append(posterior_variance[1], betas[1:]))), for the same
    batch; the values are also written out (VLB_AT_17, VLB_AT_256)."""
    beta, alpha, abar, _, bt = tables()
    sched = DDPMSchedule(T, B1, BT)
    x0, z = _first_step_batch()
    n, d = x0.shape
    score_fn = lambda x, t: -_eps_fn(x, t) / (1 - abar[torch.round(t * T).long() - 1, None]).sqrt()  # noqa: E731
    got = ddpm_loss(score_fn, sched, x0, i=torch.ones(n, dtype=torch.long), noise=z, objective="vlb",
                    reduction="none", levels=levels, bins="exact")
    x1 = abar[0].sqrt() * x0 + (1 - abar[0]).sqrt() * z
    mean = (x1 - beta[0] / (1 - abar[0]).sqrt() * _eps_fn(x1, torch.full((n,), 1 / T, dtype=F64))) / alpha[0].sqrt()
    sigma1 = (beta[0] if levels == 17 else bt[1]).sqrt()
    dec = torch.from_numpy(_decoder_nll_scipy(x0, mean, sigma1.expand_as(mean), levels))
    want = (_prior_kl(x0, abar[-1]) + T * dec) / (d * math.log(2))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    written = torch.tensor(VLB_AT_17 if levels == 17 else VLB_AT_256, dtype=F64)
    torch.testing.assert_close(got, written, rtol=0, atol=1e-9)


class _LearnedNet(torch.nn.Module):
    """A fake learned-variance net: out = [eps(x, t), v(x, t)] along dim 1, v per channel."""

    def forward(self, x, t):
        tt = t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        v = torch.sigmoid(1.5 * x + tt) + 0.3 * torch.arange(x.shape[1], dtype=x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
        return torch.cat([0.4 * torch.sin(2 * x + tt) - 0.2 * x, v - 0.4], 1)


@pytest.mark.parametrize("levels", [17, 256])
def test_hybrid_objective_first_step_has_the_clipped_learned_decoder(levels):
    """ddpm_loss(objective='hybrid') at i = 1 with a learned variance: simple + 0.001 (L_T + T L_0) / (D ln 2),
    L_0 the discretized N(mu_1, Sigma_1), log Sigma_1 = v log beta_1 + (1 - v) log beta_tilde_2 (beta_tilde_1 = 0
    clipped to beta_tilde_2, as DDPM's and iDDPM's code do): finite, and at L levels (scipy)."""
    beta, alpha, abar, _, bt = tables()
    sched = DDPMSchedule(T, B1, BT)
    net = _LearnedNet()
    model = ScoreModel(net, sched.embedding(), "eps", learned_variance=True)
    x0, z = _first_step_batch()
    n, d = x0.shape
    got = ddpm_loss(model, sched, x0, i=torch.ones(n, dtype=torch.long), noise=z, objective="hybrid",
                    reduction="none", levels=levels, bins="exact")
    assert bool(got.isfinite().all())
    x1 = abar[0].sqrt() * x0 + (1 - abar[0]).sqrt() * z
    out = net(x1, torch.full((n,), 1 / T, dtype=F64))
    eps, v = out[:, :d], out[:, d:]
    var = torch.exp(v * beta[0].log() + (1 - v) * bt[1].log())
    mean = (x1 - beta[0] / (1 - abar[0]).sqrt() * eps) / alpha[0].sqrt()
    dec = torch.from_numpy(_decoder_nll_scipy(x0, mean, var.sqrt(), levels))
    want = (eps - z).square().mean(1) + 0.001 * (_prior_kl(x0, abar[-1]) + T * dec) / (d * math.log(2))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_training_passes_the_datasets_levels_to_the_objective(monkeypatch, tmp_path):
    """train() on digits (17 levels) with the DDPM bound calls ddpm_loss with levels=17, the data's own."""
    from sde_diffusion.training import train as train_module
    from sde_diffusion.training.config import load_config
    from _tiny import CONFIGS

    seen = []
    real = train_module.ddpm_loss

    def spy(*args, **kwargs):
        seen.append(kwargs.get("levels"))
        return real(*args, **kwargs)
    monkeypatch.setattr(train_module, "ddpm_loss", spy)
    cfg = load_config(CONFIGS / "digits_ddpm.yaml", [
        "sde.params={T: 20, beta_1: 1.0e-3, beta_T: 0.2, kind: linear}", "loss.objective=vlb",
        "model.params={base_channels: 8, channel_mults: [1], blocks_per_level: 1, attention_resolutions: []}",
        "train.steps=2", "train.batch_size=8", "train.warmup=1", "train.log_every=1", "train.ckpt_every=2",
        "sample.n=2", "sample.steps=2"])
    train_module.train(cfg, tmp_path / "run", progress=False)
    assert seen and set(seen) == {17}, seen


# -- 3. learned variance on a U-Net --------------------------------------------------------------------
def _unet(sched, C=2, H=4):
    torch.manual_seed(0)
    model = build_model("unet", sched.embedding(), learned_variance=True, in_channels=C, base_channels=8,
                        channel_mults=(1,), blocks_per_level=1, attention_resolutions=(), image_size=H).double()
    with torch.no_grad():  # the U-Net zero-initialises its output layers; give every weight a value
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def test_unet_learned_variance_splits_its_2C_channels_along_dim_1():
    """A learned-variance U-Net returns (N, 2C, H, W): the prediction is out[:, :C], v is out[:, C:]."""
    sched, C = DDPMSchedule(T, B1, BT), 2
    model = _unet(sched, C)
    x = torch.randn((3, C, 4, 4), generator=torch.Generator().manual_seed(1), dtype=F64)
    t = torch.full((3,), 0.5, dtype=F64)
    with torch.no_grad():
        out = model.net(x, t)
        assert out.shape == (3, 2 * C, 4, 4)
        eps, v = model.predict(x, t, kind="eps", with_v=True)
    assert torch.equal(eps, out[:, :C]) and torch.equal(v, out[:, C:])
    assert not torch.allclose(out[:, :C], out[:, 0::2])  # a different split would be seen


def test_ancestral_chain_with_a_learned_variance_unet_on_images():
    """DDPM's chain (Algorithm 2) with iDDPM's learned variance, a U-Net on (N, C, H, W) = (3, 2, 4, 4):
    x <- (x - beta_i / sqrt(1 - abar_i) eps) / sqrt(alpha_i) + exp(v log beta_i + (1 - v) log beta_tilde_i)^(1/2) z,
    eps = out[:, :C], v = out[:, C:], and z = 0 at i = 1 (the data)."""
    beta, alpha, abar, _, bt = tables()
    sched, C, N = DDPMSchedule(T, B1, BT), 2, 3
    model = _unet(sched, C)
    x_T = torch.randn((N, C, 4, 4), generator=torch.Generator().manual_seed(2), dtype=F64)
    got = solvers.sample(model, model.sde, (N, C, 4, 4), "ancestral", T, schedule=sched, x_T=x_T,
                         generator=torch.Generator().manual_seed(3), dtype=F64).x
    gen, x = torch.Generator().manual_seed(3), x_T.clone()
    with torch.no_grad():
        for j in range(T - 1, -1, -1):  # step i = j + 1
            out = model.net(x, torch.full((N,), (j + 1) / T, dtype=F64))
            eps, v = out[:, :C], out[:, C:]
            mean = (x - beta[j] / (1 - abar[j]).sqrt() * eps) / alpha[j].sqrt()
            if j == 0:
                x = mean
                break
            var = torch.exp(v * beta[j].log() + (1 - v) * bt[j].log())
            x = mean + var.sqrt() * torch.randn(x.shape, generator=gen, dtype=F64)
    assert bool(got.isfinite().all())
    torch.testing.assert_close(got, x, rtol=1e-10, atol=1e-10)


# -- 4. the cubic interpolation is scipy's PCHIP of log m -----------------------------------------------
UNEVEN_BETAS = [0.002, 0.25, 0.004, 0.6, 0.03, 0.001, 0.35, 0.08, 0.5, 0.005, 0.2, 0.9]


def test_cubic_interpolation_is_scipys_pchip_of_log_m():
    """On an uneven table (betas jumping by 1000x), DiscreteVPSDE(interpolation='cubic') has
    log m(t) = PchipInterpolator(t_i = i/N, log m_i)(t) and f(t) = d log m/dt its derivative, to 1e-12."""
    betas = np.array(UNEVEN_BETAS)
    N = len(betas)
    knots = np.arange(N + 1) / N
    log_m = 0.5 * np.log(np.concatenate([[1.0], np.cumprod(1 - betas)]))
    pchip = PchipInterpolator(knots, log_m)
    sde = DiscreteVPSDE.from_betas(torch.tensor(betas), "cubic")
    t = np.unique(np.concatenate([np.linspace(0, 1, 2401), knots, knots[:-1] + 0.37 / N]))
    tt = torch.tensor(t, dtype=F64)
    got_log_m = sde.marginal(tt)[0].log().numpy()
    got_f = sde.drift_coef(tt).numpy()
    np.testing.assert_allclose(got_log_m, pchip(t), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_f, pchip.derivative()(t), rtol=1e-12, atol=1e-12)


def test_cubic_interpolation_is_monotone_on_an_uneven_table():
    """log m decreases and f <= 0 everywhere on the same table, where an unconstrained cubic spline
    through the same knots overshoots (so the table does test the monotonicity)."""
    betas = np.array(UNEVEN_BETAS)
    N = len(betas)
    knots = np.arange(N + 1) / N
    log_m = 0.5 * np.log(np.concatenate([[1.0], np.cumprod(1 - betas)]))
    t = np.linspace(0, 1, 4801)
    assert (np.diff(CubicSpline(knots, log_m)(t)) > 0).any()  # a plain spline is not monotone here
    sde = DiscreteVPSDE.from_betas(torch.tensor(betas), "cubic")
    tt = torch.tensor(t, dtype=F64)
    assert bool((sde.marginal(tt)[0].log().diff() <= 0).all())
    assert bool((sde.drift_coef(tt) <= 0).all())
    np.testing.assert_allclose(sde.marginal(torch.tensor(knots))[0].log().numpy(), log_m, rtol=0, atol=1e-14)


# -- 5. mu-models on respaced chains ---------------------------------------------------------------------
def test_mu_model_on_a_respaced_chain_references_the_base_chains_previous_step():
    """DDPMSchedule(50).respace(7): a mu-net returning the exact posterior mean of the BASE step
    tau_k -> tau_k - 1, mu = (x - beta_{tau_k} / sqrt(1 - abar_{tau_k}) eps) / sqrt(alpha_{tau_k}) (mu_step =
    1/T), has the eps oracle's bound draw for draw, and the same ancestral samples; the respaced step's
    posterior mean (reference tau_{k-1}) read that way does not."""
    Tb, K = 50, 7
    beta, alpha, abar, _, _ = tables(Tb, 1e-3, 0.2)
    base = DDPMSchedule(Tb, 1e-3, 0.2)
    sched = base.respace(K)
    tau = torch.tensor(sched.keep)
    ab_r = abar[tau - 1]
    beta_r = 1 - ab_r / torch.cat([torch.ones(1, dtype=F64), ab_r[:-1]])
    gmm = random_mixture(dim=2, components=3, seed=4)
    eps_exact = gmm.eps(base.embedding())

    def mu_base(x, t):  # the base chain's step tau_k -> tau_k - 1
        j = torch.round(t * Tb).long() - 1
        return (x - (beta[j] / (1 - abar[j]).sqrt())[:, None] * eps_exact(x, t)) / alpha[j].sqrt()[:, None]

    def mu_respaced(x, t):  # the respaced chain's step tau_k -> tau_{k-1}
        k = torch.searchsorted(tau, torch.round(t * Tb).long())
        return (x - (beta_r[k] / (1 - ab_r[k]).sqrt())[:, None] * eps_exact(x, t)) / (1 - beta_r[k]).sqrt()[:, None]
    model = ScoreModel(mu_base, base.embedding(), "mu", mu_step=1 / Tb)
    oracle = gmm.score(base.embedding())
    k = torch.randint(0, 64, (40, 2), generator=torch.Generator().manual_seed(0))
    bound = lambda fn: ddpm_vlb_bits_per_dim(fn, sched, k, levels=64, generator=torch.Generator().manual_seed(1),  # noqa: E731
                                             dtype=F64)
    torch.testing.assert_close(bound(model), bound(oracle), rtol=1e-10, atol=1e-10)
    wrong = ScoreModel(mu_respaced, base.embedding(), "mu", mu_step=1 / Tb)
    assert float((bound(wrong) - bound(oracle)).abs().max()) > 1e-2
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    draw = lambda fn: solvers.sample(fn, base.embedding(), (16, 2), "ancestral", K, schedule=sched, x_T=x_T,  # noqa: E731
                                     generator=torch.Generator().manual_seed(3), dtype=F64).x
    torch.testing.assert_close(draw(model), draw(oracle), rtol=1e-10, atol=1e-10)


# -- 6. the last step's clipped posterior variance -----------------------------------------------------
def test_posterior_variance_clipped_is_beta_tilde_with_step_1_from_step_2():
    _, _, _, _, bt = tables()
    sched = DDPMSchedule(T, B1, BT)
    assert float(bt[0]) == 0.0
    want = torch.cat([bt[1:2], bt[1:]])
    torch.testing.assert_close(sched.posterior_variance_clipped, want, rtol=1e-14, atol=0)
    resp = DDPMSchedule(50, 1e-3, 0.2).respace(7)
    torch.testing.assert_close(resp.posterior_variance_clipped[0], resp.posterior_variance[1], rtol=0, atol=0)


@pytest.mark.parametrize("levels", [17, 256])
def test_vlb_decoder_with_a_learned_variance_uses_the_clipped_beta_tilde(levels):
    """ddpm_vlb_terms' L_0 for a learned-variance model on images (N, C, H, W): the discretized
    N(mu_1, exp(v log beta_1 + (1 - v) log beta_tilde_2)) over the L bins (scipy, the bin-centre convention),
    finite for v < 1."""
    beta, alpha, abar, _, bt = tables()
    sched = DDPMSchedule(T, B1, BT)
    net = _LearnedNet()
    model = ScoreModel(net, sched.embedding(), "eps", learned_variance=True)
    n, shape = 4, (2, 3, 3)
    kdat = torch.randint(levels, (n, *shape), generator=torch.Generator().manual_seed(6))
    x0 = -1 + (kdat.to(F64) + 0.5) * 2 / levels
    _, _, dec = ddpm_vlb_terms(model, sched, kdat, levels=levels, generator=torch.Generator().manual_seed(7),
                               dtype=F64, bins="exact")
    assert bool(dec.isfinite().all())
    z1 = torch.randn((T * n, *shape), generator=torch.Generator().manual_seed(7), dtype=F64)[:n]  # step 1 first
    x1 = abar[0].sqrt() * x0 + (1 - abar[0]).sqrt() * z1
    out = net(x1, torch.full((n,), 1 / T, dtype=F64))
    eps, v = out[:, :2], out[:, 2:]
    assert bool((v < 1).any())  # where beta_tilde_1 = 0 would give a zero variance
    var = torch.exp(v * beta[0].log() + (1 - v) * bt[1].log())
    mean = (x1 - beta[0] / (1 - abar[0]).sqrt() * eps) / alpha[0].sqrt()
    want = _decoder_nll_scipy(x0.reshape(n, -1), mean.reshape(n, -1), var.sqrt().reshape(n, -1), levels)
    torch.testing.assert_close(dec, torch.from_numpy(want), rtol=1e-10, atol=1e-10)
