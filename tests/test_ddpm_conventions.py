"""The DDPM bound at 256 levels under the papers' own conventions, against a transcription of DDPM's
and improved DDPM's released code (diffusion_utils_2.py / gaussian_diffusion.py), written here in
numpy with the test's own tables from the betas:

  x = k / 127.5 - 1;  normal_kl(m1, lv1, m2, lv2) = 1/2 (-1 + lv2 - lv1 + e^{lv1 - lv2} + (m1 - m2)^2 e^{-lv2});
  pred_x0 = sqrt(1 / abar_t) x_t - sqrt(1 / abar_t - 1) eps;  posterior mean = c1 pred_x0 + c2 x_t,
  c1 = beta_t sqrt(abar_{t-1}) / (1 - abar_t), c2 = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t);
  fixedlarge log variance = log(append(posterior_variance[1], betas[1:])),
  fixedsmall = log(append(posterior_variance[1], posterior_variance[1:])) (clipped);
  the decoder: the tanh approximation of the Normal CDF over x +- 1/255, the ends to -+inf below -0.999
  and above 0.999, every probability clamped at 1e-12.

The bound is taken without clipping pred_x0 (``clip_denoised=False``, the training loss's setting).
"""

import math

import numpy as np
import pytest
import torch

from sde_diffusion import DDPMSchedule
from sde_diffusion.vlb import bins_rule, ddpm_vlb_terms, decoder_nll, reverse_log_variance

T, N, D = 1000, 6, 5
F64 = torch.float64


def _tables():
    beta = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    alpha = 1.0 - beta
    abar = np.cumprod(alpha)
    prev = np.append(1.0, abar[:-1])
    post_var = beta * (1.0 - prev) / (1.0 - abar)
    return beta, alpha, abar, prev, post_var


def _eps(x, t):
    """A nonlinear stand-in network eps(x, t), t the step index / T."""
    return 0.3 * np.sin(2 * x + 3 * t) - 0.1 * x


def _normal_kl(m1, lv1, m2, lv2):
    return 0.5 * (-1.0 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))


def _approx_cdf(x):
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def _discretized_log_likelihood(x, means, log_scales):
    centered = x - means
    inv = np.exp(-log_scales)
    cdf_plus, cdf_min = _approx_cdf(inv * (centered + 1 / 255.0)), _approx_cdf(inv * (centered - 1 / 255.0))
    log_cdf_plus = np.log(np.maximum(cdf_plus, 1e-12))
    log_one_minus = np.log(np.maximum(1.0 - cdf_min, 1e-12))
    delta = cdf_plus - cdf_min
    return np.where(x < -0.999, log_cdf_plus, np.where(x > 0.999, log_one_minus, np.log(np.maximum(delta, 1e-12))))


def _reference(k, z, variance):
    """(prior, sum of KL terms, decoder) in nats per sample from the transcription; z: (T, N, D)."""
    beta, alpha, abar, prev, post_var = _tables()
    x0 = k / 127.5 - 1.0
    logvar = np.log(np.append(post_var[1], beta[1:] if variance == "beta" else post_var[1:]))
    post_logvar = np.log(np.append(post_var[1], post_var[1:]))
    kl = np.zeros(N)
    decoder = None
    for t in range(T):  # their t = our step t + 1
        xt = np.sqrt(abar[t]) * x0 + np.sqrt(1 - abar[t]) * z[t]
        eps = _eps(xt, (t + 1) / T)
        pred_x0 = np.sqrt(1 / abar[t]) * xt - np.sqrt(1 / abar[t] - 1) * eps
        c1, c2 = beta[t] * np.sqrt(prev[t]) / (1 - abar[t]), (1 - prev[t]) * np.sqrt(alpha[t]) / (1 - abar[t])
        mean = c1 * pred_x0 + c2 * xt
        if t == 0:
            decoder = -_discretized_log_likelihood(x0, mean, 0.5 * logvar[0]).sum(1)
        else:
            true_mean = c1 * x0 + c2 * xt
            kl += _normal_kl(true_mean, post_logvar[t], mean, logvar[t]).sum(1)
    prior = _normal_kl(np.sqrt(abar[-1]) * x0, np.log(1 - abar[-1]), 0.0, 0.0).sum(1)
    return prior, kl, decoder


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_bound_at_256_levels_is_ddpms_code(variance):
    """Each of L_T, sum_t L_{t-1} and L_0 of ``ddpm_vlb_terms`` (defaults at 256 levels: DDPM's grid,
    bins, tanh CDF and decoder variance) equals the transcription to 1e-10, for fixedlarge ("beta") and
    fixedsmall ("beta_tilde"), with the same noise (one chunk: z rows ordered step-major)."""
    sched = DDPMSchedule(T=T)
    _, _, abar, _, _ = _tables()
    k = torch.randint(0, 256, (N, D), generator=torch.Generator().manual_seed(0))
    k[0, :2] = torch.tensor([0, 255])  # both end bins
    abar_t = torch.from_numpy(abar)

    def score_fn(x, t):
        i = torch.round(t * T).long() - 1
        eps = torch.from_numpy(_eps(x.numpy(), t.numpy()[:, None]))
        return -eps / (1 - abar_t[i, None]).sqrt()
    got = ddpm_vlb_terms(score_fn, sched, k, levels=256, variance=variance, dtype=F64,
                         generator=torch.Generator().manual_seed(5), max_batch=T * N)
    z = torch.randn((T * N, D), generator=torch.Generator().manual_seed(5), dtype=F64).reshape(T, N, D).numpy()
    want = _reference(k.numpy().astype(np.float64), z, variance)
    for name, g, w in zip(("L_T", "sum L_t", "L_0"), got, want):
        torch.testing.assert_close(g, torch.from_numpy(w), rtol=1e-10, atol=1e-10, msg=name)
    # the exact-CDF bin-centre variant is another number, by a few thousandths of a bit per dimension
    exact = ddpm_vlb_terms(score_fn, sched, k, levels=256, variance=variance, dtype=F64, bins="exact",
                           generator=torch.Generator().manual_seed(5), max_batch=T * N)
    gap = float((sum(exact) - sum(got)).abs().mean()) / (D * math.log(2))
    assert 1e-4 < gap < 0.05, gap
    assert bins_rule("auto", 256) == "ddpm" and bins_rule("auto", 17) == "exact"


def test_an_ideal_means_decoder_is_their_conventions_value():
    """mu_1 = x_0 exactly (eps = 0, x_1 = sqrt(abar_1) x_0) on inner levels, sigma_1^2 = beta_tilde_2
    (their fixedlarge and fixedsmall alike): L_0 = -D log(Phi~(h / sigma_1) - Phi~(-h / sigma_1)) with
    h = 1/255 and DDPM's tanh CDF Phi~; the exact-CDF bin-centre convention (h = 1/256) differs."""
    sched = DDPMSchedule(T=T)
    *_, post_var = _tables()
    sigma = math.sqrt(post_var[1])
    k = torch.randint(1, 255, (4, D), generator=torch.Generator().manual_seed(3))
    x0 = k.to(F64) / 127.5 - 1
    x1 = sched.alphas_cumprod[0].to(F64).sqrt() * x0
    one = torch.ones(4, dtype=torch.long)
    log_var = reverse_log_variance(sched, one, "beta", None, x0, decoder="ddpm")
    got = decoder_nll(sched, x1, torch.zeros_like(x0), log_var, x0, 256, bins="ddpm")
    h = 1 / 255
    want = -D * math.log(_approx_cdf(h / sigma) - _approx_cdf(-h / sigma))
    torch.testing.assert_close(got, torch.full((4,), want, dtype=F64), rtol=1e-10, atol=0)
    centres = -1 + (k.to(F64) + 0.5) / 128
    exact = decoder_nll(sched, sched.alphas_cumprod[0].to(F64).sqrt() * centres, torch.zeros_like(x0), log_var,
                        centres, 256, bins="exact")
    assert float((exact - got).abs().min()) > 1e-3
    # a mean 50 sigma_1 off every level: each dimension's probability is clamped at 1e-12, as in their code
    far = decoder_nll(sched, x1 + sched.alphas_cumprod[0].to(F64).sqrt() * 0.5, torch.zeros_like(x0), log_var, x0,
                      256, bins="ddpm")
    torch.testing.assert_close(far, torch.full((4,), -D * math.log(1e-12), dtype=F64), rtol=1e-12, atol=0)
