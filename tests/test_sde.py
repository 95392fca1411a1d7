"""The SDE contract: exact marginals consistent with drift and diffusion, for every SDE."""

import math

import pytest
import torch

from sde_diffusion import VESDE, VPSDE, CosineVPSDE, SubVPSDE, get_sde
from sde_diffusion.sde import SDES

ALL_SDES = [VPSDE(), SubVPSDE(), VESDE(), CosineVPSDE()]
IDS = [type(s).__name__ for s in ALL_SDES]


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_marginal_ode_consistency(sde):
    """dm/dt = f m and d(s^2)/dt = 2 f s^2 + g^2, by central differences on a grid of t.

    Central differences with step h = 1e-4 x (distance to 0 or 1) have relative error about
    (rate h)^2 / 6 < 1e-6 (rates up to 2 log(sigma_max/sigma_min) = 17 for VE); rounding adds
    ~1e-16 / h. So a relative tolerance of 1e-5 catches any inconsistent SDE.
    """
    t = torch.linspace(0.01, sde.T - 0.01, 50, dtype=torch.float64)
    h = 1e-4 * torch.minimum(t, 1 - t)  # cosine beta is singular at t = 1
    m, s = sde.marginal(t)
    mp, sp = sde.marginal(t + h)
    mm, sm = sde.marginal(t - h)
    dm = (mp - mm) / (2 * h)
    dv = (sp**2 - sm**2) / (2 * h)
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
