"""The analytic Gaussian mixture: closed-form score and divergence against autograd."""

import math

import pytest
import torch

import _cases
from sde_diffusion import VPSDE, GaussianMixture, grid2d, random_mixture, ring2d
from sde_diffusion.analytic import preset

SDES = _cases.sdes()  # every registered SDE
IDS = _cases.sde_ids(SDES)
MIXTURES = {"ring2d": ring2d(), "grid2d": grid2d(), "gmm16": random_mixture(dim=16, components=5)}


def _autograd_score_and_div(gm, x, t, sde):
    x = x.clone().requires_grad_(True)
    logp = gm.log_prob_t(x, t, sde)
    (score,) = torch.autograd.grad(logp.sum(), x, create_graph=True)
    div = sum(torch.autograd.grad(score[:, d].sum(), x, retain_graph=True)[0][:, d]
              for d in range(x.shape[1]))
    return score.detach(), div.detach()


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("name", list(MIXTURES))
def test_score_and_divergence_match_autograd(sde, name):
    """float64 closed forms agree with autograd of log p_t to rounding (1e-8 relative)."""
    gm = MIXTURES[name]
    g = torch.Generator().manual_seed(0)
    x = gm.sample(64, g, dtype=torch.float64) * 1.3
    t = torch.rand(64, generator=g, dtype=torch.float64) * sde.T * 0.98 + 0.01
    score, div = _autograd_score_and_div(gm, x, t, sde)
    torch.testing.assert_close(gm.score_at(x, t, sde), score, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(gm.score_divergence(x, t, sde), div, rtol=1e-8, atol=1e-6)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_marginal_mixture_matches_forward_samples(sde):
    """Pushing p_0 samples through x_t = m x_0 + s z gives samples whose mean log p_t (by
    ``log_prob_t``) equals -entropy; checked against the same average from ``at(t)`` samples,
    within 5 standard errors of the difference."""
    gm = ring2d()
    t = 0.3 * sde.T
    g = torch.Generator().manual_seed(3)
    n = 20_000
    m, s = (float(c) for c in sde.marginal(t))
    xt = m * gm.sample(n, g, dtype=torch.float64) + s * torch.randn(n, 2, generator=g, dtype=torch.float64)
    xt2 = gm.at(t, sde).sample(n, g, dtype=torch.float64)
    a, b = gm.log_prob_t(xt, t, sde), gm.log_prob_t(xt2, t, sde)
    se = math.sqrt(float(a.var()) / n + float(b.var()) / n)
    assert abs(float(a.mean() - b.mean())) < 5 * se
    torch.testing.assert_close(gm.at(t, sde).log_prob(xt), a)


def test_log_prob_normalised():
    """A 2-D mixture integrates to 1 on a fine grid (Riemann error well under 1e-3)."""
    gm = ring2d()
    c = torch.linspace(-2, 2, 801, dtype=torch.float64)
    xx = torch.cartesian_prod(c, c)
    mass = float(gm.log_prob(xx).exp().sum()) * float(c[1] - c[0]) ** 2
    assert mass == pytest.approx(1.0, abs=1e-3)


def test_eps_is_minus_std_times_score():
    sde, gm = VPSDE(), ring2d()
    x = torch.randn(10, 2, dtype=torch.float64)
    t = torch.full((10,), 0.5, dtype=torch.float64)
    s = sde.marginal(t)[1][:, None]
    torch.testing.assert_close(gm.eps(sde)(x, t), -s * gm.score(sde)(x, t))


def test_image_shaped_input_and_float32():
    gm = random_mixture(dim=16, components=3)
    x = gm.sample(5).reshape(5, 1, 4, 4)
    out = gm.score(VPSDE())(x, torch.full((5,), 0.5))
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.reshape(5, 16), gm.score_at(x.reshape(5, 16), 0.5, VPSDE()))


def test_presets():
    assert preset("ring2d").dim == 2 and preset("gmm64").dim == 64
    with pytest.raises(ValueError, match="unknown analytic model 'ring3d'; allowed: ring2d, grid2d, gmm64"):
        preset("ring3d")


@pytest.mark.parametrize("build, match", [
    (lambda: GaussianMixture(torch.zeros(3), 1.0), r"means must have shape \(K, D\)"),
    (lambda: GaussianMixture(torch.zeros(3, 2), torch.ones(2)), r"variances must have shape \(K,\) or \(K, D\)"),
    (lambda: GaussianMixture(torch.zeros(3, 2), -1.0), "variances must be finite and > 0"),
    (lambda: GaussianMixture(torch.zeros(3, 2), 1.0, [1.0, 0.0, 1.0]), "weights must be 3 positive numbers"),
])
def test_bad_mixture(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"x must have shape \(N, ...\) with 2 values per sample"):
        ring2d().log_prob(torch.zeros(4, 3))
