"""The DDPM variational bound against the exact discrete NLL of a quantized Gaussian mixture.

For a diagonal mixture the probability of a bin is closed form,
    P(k) = sum_j w_j prod_d [Phi((hi_d - mu_jd) / sd_jd) - Phi((lo_d - mu_jd) / sd_jd)],
with the first and last bins extended to -inf / +inf (as the data are clamped into them).
"""

import math

import pytest
import torch

from sde_diffusion import DDPMSchedule, GaussianMixture, VPSDE, bits_per_dim, ddpm_vlb_bits_per_dim
from sde_diffusion.dequantize import bin_width, continuous_to_levels
from sde_diffusion.vlb import _decoder_log_prob, ddpm_vlb_terms

F64 = torch.float64
LEVELS = 256
GM = GaussianMixture([[-0.4, 0.3], [0.5, -0.2]], [0.15**2, 0.1**2])


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _discrete_nll_bits(gm, k, levels=LEVELS):
    """-log2 P(k) / D for data quantized from ``gm`` on (-1, 1), shape (N,)."""
    w, kf = bin_width(levels), k.to(F64)
    lo = torch.where(k == 0, -math.inf, -1 + kf * w)
    hi = torch.where(k == levels - 1, math.inf, -1 + (kf + 1) * w)
    sd = gm.variances.sqrt()

    def cdf(edge):
        return torch.special.ndtr((edge[:, None, :] - gm.means[None]) / sd[None])

    log_p = torch.logsumexp(gm.log_weights + torch.log(cdf(hi) - cdf(lo)).sum(-1), 1)
    return -log_p / (gm.dim * math.log(2))


def _schedule(T):
    """The DDPM discretisation of the same VP-SDE (beta_min 0.1, beta_max 20) with T steps."""
    return DDPMSchedule(T=T, beta_1=0.1 / T, beta_T=20.0 / T)


def test_vlb_bounds_the_exact_nll_and_tightens_with_T():
    # With the exact eps of each discrete chain, E_data[VLB] >= E_data[-log2 P_model] >= H(P) = the
    # mean exact NLL (Gibbs), so the mean gap is > 0; the discretisation gap is O(1/T) (measured
    # 0.36, 0.18, 0.087 bits/dim at T = 50, 100, 200). N = 8000 gives a standard error of ~0.01 on
    # each gap: the asserted margins (gap > 5 SE, each doubling of T at most 0.75x, i.e. 5 SE of the
    # ratio above the measured 0.49) are ample. The decoder is the step's own sigma_1^2 = beta_1, which
    # fits the exact score's posterior spread of x_0 | x_1 (DDPM's beta_tilde_2, the 256-level default,
    # is narrower: its L_0 does not shrink with T the same way; measured gap 0.14 at T = 200).
    n = 8000
    k = continuous_to_levels(GM.sample(n, _gen(0), dtype=F64), LEVELS)
    nll = _discrete_nll_bits(GM, k)
    gaps = []
    for T in (50, 100, 200):
        vlb = ddpm_vlb_bits_per_dim(GM.score(_schedule(T).embedding()), _schedule(T), k, decoder="step",
                                    generator=_gen(T), dtype=F64)
        gap = vlb - nll
        assert gap.mean() > 5 * gap.std() / math.sqrt(n)
        gaps.append(gap.mean().item())
    assert gaps[1] < 0.75 * gaps[0] and gaps[2] < 0.75 * gaps[1], gaps


def test_ode_bits_per_dim_estimates_the_exact_nll():
    # Side by side with the ODE figure: E_u of the dequantized bpd is an upper bound on
    # -log2 P(k)/D per sample (Jensen), here tight: the Jensen gap is about w^2/24 |tr Hessian log p|
    # / (D ln 2) < 1e-3 bits/dim for sd >= 0.1. Single draws scatter around it (+-0.02 bits/dim), so
    # the mean over 32 points x 4 draws must lie within 5 standard errors plus the solver's 1e-3
    # nats/dim and that gap.
    sde = VPSDE()
    k = continuous_to_levels(GM.sample(32, _gen(1), dtype=F64), LEVELS)
    gap = bits_per_dim(GM.score(sde), sde, k, n_dequant=4, generator=_gen(2), dtype=F64) \
        - _discrete_nll_bits(GM, k)
    assert gap.mean().abs() <= 5 * gap.std() / math.sqrt(32) + 1e-3 / math.log(2) + 1e-3


@pytest.mark.parametrize("levels, mean, std", [(256, 0.3, 0.01), (256, -0.999, 0.002), (16, 0.0, 3.0),
                                               (256, 0.5, 1e-5)])
def test_decoder_is_a_distribution_over_the_levels(levels, mean, std):
    # sum over all levels of P(k | x_1) = 1 (edge bins open), to float64 rounding
    k = torch.arange(levels)[:, None]
    log_p = _decoder_log_prob(k, torch.full((levels, 1), mean, dtype=F64), torch.tensor(std, dtype=F64),
                              levels, (-1.0, 1.0))
    assert abs(log_p.exp().sum().item() - 1) < 1e-12


def test_decoder_matches_the_direct_formula_in_the_bulk():
    k = torch.tensor([[100], [128], [140]])
    mean, std = torch.tensor([[-0.2], [0.01], [0.1]], dtype=F64), torch.tensor(0.05, dtype=F64)
    w = bin_width(LEVELS)
    lo, hi = -1 + k * w, -1 + (k + 1) * w
    direct = torch.log(torch.special.ndtr((hi - mean) / std) - torch.special.ndtr((lo - mean) / std))
    assert torch.allclose(_decoder_log_prob(k, mean, std, LEVELS, (-1.0, 1.0)), direct[:, 0], rtol=1e-10)


def test_prior_term_and_the_chains_embedding():
    sch = _schedule(100)
    k = continuous_to_levels(GM.sample(5, _gen(0), dtype=F64), LEVELS)
    prior, _, _ = ddpm_vlb_terms(GM.score(sch.embedding()), sch, k, dtype=F64, bins="exact")
    x0 = -1 + (k.to(F64) + 0.5) * bin_width(LEVELS)
    ab = sch.alphas_cumprod[-1]
    q = torch.distributions.Normal(ab.sqrt() * x0, (1 - ab).sqrt())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(prior, expected, rtol=1e-10, atol=1e-15)
    # DDPM's grid at 256 levels, the default there: x_0 = k / 127.5 - 1
    prior, _, _ = ddpm_vlb_terms(GM.score(sch.embedding()), sch, k, dtype=F64)
    q = torch.distributions.Normal(ab.sqrt() * (k.to(F64) / 127.5 - 1), (1 - ab).sqrt())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(prior, expected, rtol=1e-10, atol=1e-15)
    i = torch.tensor([1, 37, 100])
    beta = torch.linspace(0.1 / 100, 20.0 / 100, 100, dtype=F64)  # the chain's abar from its betas
    abar = torch.cumprod(1 - beta, 0)[i - 1]
    m, s = sch.embedding().marginal(i.to(F64) / 100)
    torch.testing.assert_close(m, abar.sqrt(), rtol=1e-14, atol=0)
    torch.testing.assert_close(s, (1 - abar).sqrt(), rtol=1e-13, atol=0)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(x_discrete=torch.zeros(2, 2)), TypeError, "integer"),
    (dict(x_discrete=torch.full((2, 2), 300)), ValueError, "0..255"),
    (dict(schedule=DDPMSchedule(T=1)), ValueError, "T >= 2"),
    (dict(score_fn=3), TypeError, "score_fn"),
    (dict(variance="large"), ValueError, "variance"),
])
def test_bad_arguments(kwargs, err, match):
    args = dict(score_fn=GM.score(VPSDE()), schedule=_schedule(100), x_discrete=torch.zeros(2, 2, dtype=torch.long))
    args.update(kwargs)
    with pytest.raises(err, match=match):
        ddpm_vlb_bits_per_dim(args.pop("score_fn"), args.pop("schedule"), args.pop("x_discrete"), **args)


def test_decoder_rules_at_256_levels():
    """An ideal mean (mu_1 = x_0, the bin centre) at 256 levels: L_0 is -log(2 Phi(w / (2 sigma_1)) - 1) per
    dimension, w = 2/256, with DDPM's sigma_1^2 = beta_tilde_2 under ``decoder="ddpm"`` (the default at
    256 levels) and beta_1 under ``"step"``; the papers' rule gives the smaller L_0, and ``auto`` is it at
    256 levels and ``step`` at 17."""
    from scipy.stats import norm
    from sde_diffusion.vlb import decoder_nll, decoder_rule, reverse_log_variance
    sched = DDPMSchedule(T=1000)
    k = torch.randint(1, 255, (4, 3), generator=_gen(3))   # inner bins: both edges finite
    x0 = -1 + (k.to(F64) + 0.5) * 2 / 256
    x1 = sched.alphas_cumprod[0].sqrt() * x0                # x_1 without noise: eps = 0 gives mu_1 = x_0
    one = torch.ones(4, dtype=torch.long)
    l0 = {}
    for rule, var in (("ddpm", float(sched.posterior_variance[1])), ("step", float(sched.betas[0]))):
        log_var = reverse_log_variance(sched, one, "beta", None, x0, decoder=rule)
        l0[rule] = decoder_nll(sched, x1, torch.zeros_like(x0), log_var, x0, 256)
        ref = -3 * math.log(2 * norm.cdf(1 / 256 / math.sqrt(var)) - 1)
        torch.testing.assert_close(l0[rule], torch.full((4,), ref, dtype=F64), rtol=1e-9, atol=0)
    assert torch.all(l0["ddpm"] < l0["step"])
    assert decoder_rule("auto", 256) == "ddpm" and decoder_rule("auto", 17) == "step"
