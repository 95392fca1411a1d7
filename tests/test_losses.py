"""Losses: the DSM = eps-MSE identity, DSM against its definition, the closed-form minimum for
Gaussian data, unbiased importance sampling of t, and DDPM's L_simple."""

import math

import pytest
import torch
import torch.nn.functional as F

import _cases
from sde_diffusion import VESDE, VPSDE, DDPMSchedule, GaussianMixture, SubVPSDE
from sde_diffusion.losses import ddpm_loss, dsm_loss, sample_importance_time
from sde_diffusion.models import MLPScore, ScoreModel

SDES = _cases.sdes()  # every registered SDE
IDS = _cases.sde_ids(SDES)
F64 = torch.float64


def _net(dim=3, seed=0):
    """A random MLP in float64 with its zero-initialised layers made non-zero."""
    torch.manual_seed(seed)
    net = MLPScore(dim, hidden=32, blocks=2).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def _draws(sde, n=256, dim=3, t_min=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, dim, generator=g, dtype=F64)
    t = t_min + (sde.T - t_min) * torch.rand(n, generator=g, dtype=F64)
    return x0, t, torch.randn(n, dim, generator=g, dtype=F64)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_sigma2_dsm_equals_eps_mse(sde):
    """The central identity: with lambda = s^2 and the same (t, z), the DSM loss of an eps-model,
    s^2 ||s_theta(x_t) - grad log p(x_t | x_0)||^2 with grad log p(x_t | x_0) = -(x_t - m x_0)/s^2,
    equals the eps-prediction MSE ||eps_theta(x_t, t) - z||^2 (both averaged over dims and batch).
    Float64 rounding of O(1) terms: 1e-12 relative."""
    net, (x0, t, z) = _net(), _draws(sde)
    model = ScoreModel(net, sde, "eps")
    m, s = (c[:, None] for c in sde.marginal(t))
    xt = m * x0 + s * z
    mse = F.mse_loss(net(xt, t), z)
    dsm_by_definition = (s**2 * (model.score(xt, t) + (xt - m * x0) / s**2) ** 2).mean()
    loss = dsm_loss(model, x0, t=t, noise=z)
    torch.testing.assert_close(loss, mse, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss, dsm_by_definition, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["eps", "score", "x0"])
@pytest.mark.parametrize("weighting", ["sigma2", "likelihood", "none"])
def test_dsm_matches_its_definition(kind, weighting):
    """Per sample, lambda(t) mean_d (s_theta(x_t, t) + (x_t - m x_0) / s^2)^2 with lambda = s^2,
    g^2 or 1, for every parameterization (the loss goes through eps; this goes through score).
    t >= 0.01 keeps 1/s^2 below 1e3, so float64 agreement to 1e-9 relative is ample."""
    sde = SubVPSDE()
    net, (x0, t, z) = _net(), _draws(sde)
    model = ScoreModel(net, sde, kind)
    m, s = sde.marginal(t)
    lam = {"sigma2": s**2, "likelihood": sde.diffusion(t) ** 2, "none": torch.ones_like(s)}[weighting]
    xt = m[:, None] * x0 + s[:, None] * z
    expected = lam * ((model.score(xt, t) + (xt - m[:, None] * x0) / s[:, None] ** 2) ** 2).mean(1)
    loss = dsm_loss(model, x0, weighting=weighting, t=t, noise=z, reduction="none")
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=0)


# -- Gaussian data N(mu, v I): the minimum in closed form ------------------------------------------
# With x_t = m x_0 + s z, the exact eps is E[z | x_t] = s (x_t - m mu) / (m^2 v + s^2), and
#   E ||E[z | x_t] - z||^2 / D = 1 - s^2 / (m^2 v + s^2) = m^2 v / (m^2 v + s^2) =: e(t)
# (the conditional variance of z). The DSM minimum is (1/(T - eps)) int_eps^T w(t) e(t) dt with
# w = lambda / s^2: 1 (sigma2), g^2 / s^2 (likelihood). Adding delta to the score adds
# w s^2 ||delta||^2 / D in expectation (the cross term vanishes since E[eps* - z | x_t] = 0).
MU, V, EPS = torch.tensor([[0.3, -0.5, 1.0, 0.0]], dtype=F64), 0.25, 1e-3


def _quad(sde, f):
    """(1/(T - EPS)) int_EPS^T f(t) dt by the trapezoid rule in log t (f may grow like 1/t)."""
    u = torch.linspace(math.log(EPS), math.log(sde.T), 200_001, dtype=F64)
    t = u.exp()
    return float(torch.trapezoid(f(t) * t, u)) / (sde.T - EPS)


def _minimum(sde, weighting):
    def f(t):
        m, s = sde.marginal(t)
        w = torch.ones_like(s) if weighting == "sigma2" else sde.diffusion(t) ** 2 / s**2
        return w * m**2 * V / (m**2 * V + s**2)
    return _quad(sde, f)


def _mean_se(x):
    return float(x.mean()), float(x.std() / math.sqrt(x.numel()))


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("weighting,importance", [("sigma2", False), ("likelihood", False),
                                                  ("likelihood", True)], ids=["sigma2", "lik", "lik-IS"])
def test_exact_score_attains_the_closed_form_minimum(sde, weighting, importance):
    """Monte Carlo DSM of the exact score (N = 40000 draws) within 5 standard errors of the
    closed-form minimum; the plain and importance-sampled likelihood losses estimate the same
    number, so this also shows the importance-sampled estimator unbiased."""
    model = ScoreModel(GaussianMixture(MU, V).eps(sde), sde, "eps")
    g = torch.Generator().manual_seed(1)
    x0 = GaussianMixture(MU, V).sample(40_000, g, dtype=F64)
    per_sample = dsm_loss(model, x0, weighting=weighting, eps=EPS, importance_sampling=importance,
                          generator=g, reduction="none")
    mean, se = _mean_se(per_sample)
    exact = _minimum(sde, weighting)
    assert abs(mean - exact) < 5 * se, (mean, exact, se)
    assert se < 0.05 * exact  # the test has power: the SE is small against the value


def test_importance_sampled_loss_with_given_draws_equals_the_drawn_one():
    """Data-parallel training draws t ~ q(t) and z for the global batch and passes them in: the
    loss must then equal the one dsm_loss draws itself from the same generator (t first, then z)."""
    sde = VPSDE()
    model = ScoreModel(GaussianMixture(MU, V).eps(sde), sde, "eps")
    x0 = GaussianMixture(MU, V).sample(64, torch.Generator().manual_seed(4), dtype=F64)
    kw = {"weighting": "likelihood", "eps": EPS, "importance_sampling": True, "reduction": "none"}
    drawn = dsm_loss(model, x0, generator=torch.Generator().manual_seed(5), **kw)
    g = torch.Generator().manual_seed(5)
    t = sample_importance_time(sde, 64, EPS, generator=g, dtype=F64)[0]
    given = dsm_loss(model, x0, t=t, noise=torch.randn(x0.shape, generator=g, dtype=F64), **kw)
    torch.testing.assert_close(given, drawn, rtol=1e-14, atol=0)


def test_importance_sampled_weight_is_the_likelihood_weight_over_the_density_of_t():
    """Deterministic identity, same (t, z): the importance-sampled term is the uniform-t likelihood
    term g^2/s^2 ||eps - z||^2 / D divided by (T - eps) q(t), q(t) = g^2 / (s^2 Z), with the closed
    forms of the linear-beta VP: g^2 = beta, s^2 = 1 - e^{-B} and Z = log(e^{B(T)} - 1) - log(e^{B(eps)} - 1)
    (s^2/m^2 = e^B - 1). A missing 1/(T - eps) is a relative error of eps = 1e-3: far above 1e-12."""
    sde = VPSDE()
    model = ScoreModel(GaussianMixture(MU, V).eps(sde), sde, "eps")
    x0, t, z = _draws(sde, n=64, dim=4, t_min=EPS, seed=3)
    kw = {"weighting": "likelihood", "eps": EPS, "t": t, "noise": z, "reduction": "none"}
    plain, weighted = dsm_loss(model, x0, **kw), dsm_loss(model, x0, importance_sampling=True, **kw)

    def B(u):
        return sde.beta_min * u + 0.5 * (sde.beta_max - sde.beta_min) * u**2
    beta, s2 = sde.beta_min + t * (sde.beta_max - sde.beta_min), -torch.expm1(-B(t))
    Z = math.log(math.expm1(B(1.0))) - math.log(math.expm1(B(EPS)))
    q = beta / (s2 * Z)
    torch.testing.assert_close(weighted, plain / ((sde.T - EPS) * q), rtol=1e-12, atol=0)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_perturbed_score_raises_the_loss_by_the_predicted_amount(sde):
    """Same draws, score + delta: the sigma2 loss rises by (1/(T-eps)) int s^2 dt ||delta||^2 / D
    in expectation (paired difference within 5 standard errors), so the exact score is the minimum."""
    gm, delta = GaussianMixture(MU, V), torch.tensor([0.3, -0.2, 0.1, 0.4], dtype=F64)
    exact = ScoreModel(gm.score(sde), sde, "score")
    perturbed = ScoreModel(lambda x, t: gm.score_at(x, t, sde) + delta, sde, "score")
    x0 = gm.sample(20_000, torch.Generator().manual_seed(2), dtype=F64)
    losses = [dsm_loss(mdl, x0, eps=EPS, generator=torch.Generator().manual_seed(3), reduction="none")
              for mdl in (exact, perturbed)]
    mean, se = _mean_se(losses[1] - losses[0])
    predicted = _quad(sde, lambda t: sde.marginal(t)[1] ** 2) * float(delta.square().mean())
    assert abs(mean - predicted) < 5 * se and predicted > 10 * se, (mean, predicted, se)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_importance_time_inverts_its_cdf(sde):
    """t ~ q = g^2 / (s^2 Z): the CDF (r(t) - r(eps)) / Z with r = log(s^2/m^2) maps each drawn t
    back to its uniform u (bisection to float64 resolution: 1e-9 is ample), and the normaliser Z
    equals int_eps^T g^2 / s^2 dt by quadrature (trapezoid error < 1e-7 relative)."""
    n = 1000
    t, Z = sample_importance_time(sde, n, EPS, generator=torch.Generator().manual_seed(4), dtype=F64)
    u = torch.rand(n, generator=torch.Generator().manual_seed(4), dtype=F64)
    m, s = sde.marginal(t)
    m0, s0 = sde.marginal(torch.tensor(EPS, dtype=F64))
    cdf = (torch.log(s**2 / m**2) - torch.log(s0**2 / m0**2)) / Z
    torch.testing.assert_close(cdf, u, rtol=0, atol=1e-9)
    assert bool((t >= EPS).all() and (t <= sde.T).all())
    quad = _quad(sde, lambda t: sde.diffusion(t) ** 2 / sde.marginal(t)[1] ** 2) * (sde.T - EPS)
    assert abs(float(Z) / quad - 1) < 1e-6


def test_ddpm_loss_matches_algorithm_1():
    """For given steps i and noise: mean_d (eps_theta(sqrt(abar_i) x0 + sqrt(1 - abar_i) z, i/T) - z)^2,
    for a score_fn -eps_theta / sqrt(1 - abar_i), an eps-ScoreModel, and an x0-ScoreModel on the chain's
    embedding, whose marginals at i/T are the chain's own (sqrt(abar_i), sqrt(1 - abar_i)), so
    eps = (x_i - sqrt(abar_i) x0_theta) / sqrt(1 - abar_i)."""
    sched, net = DDPMSchedule(T=100), _net()
    x0, _, z = _draws(VPSDE(), n=64)
    i = torch.randint(1, 101, (64,), generator=torch.Generator().manual_seed(5))
    ab = sched.alphas_cumprod[i - 1][:, None]
    xi, t = ab.sqrt() * x0 + (1 - ab).sqrt() * z, i.double() / 100
    expected_eps = ((net(xi, t) - z) ** 2).mean(1)
    expected_x0 = (((xi - ab.sqrt() * net(xi, t)) / (1 - ab).sqrt() - z) ** 2).mean(1)
    score_fn = lambda x, t: -net(x, t) / (1 - sched.alphas_cumprod[(t * 100).round().long() - 1][:, None]).sqrt()  # noqa: E731
    for model, expected in [(score_fn, expected_eps), (ScoreModel(net, sched.embedding(), "eps"), expected_eps),
                            (ScoreModel(net, sched.embedding(), "x0"), expected_x0)]:
        torch.testing.assert_close(ddpm_loss(model, sched, x0, i=i, noise=z, reduction="none"), expected,
                                   rtol=1e-12, atol=0)
    # the cosine chain reaches t = i/T = 1, beyond its limit CosineVPSDE's T, but not its embedding's
    cos = DDPMSchedule(T=100, kind="cosine")
    loss = ddpm_loss(ScoreModel(net, cos.embedding()), cos, x0, i=torch.full((64,), 100), noise=z)
    assert torch.isfinite(loss)


def test_ddpm_loss_minimum_for_gaussian_data():
    """With the chain's exact eps for N(mu, v I),
    E[z | x_i] = sqrt(1 - abar) (x - sqrt(abar) mu) / (abar v + 1 - abar), the loss with i ~ U{1..T}
    has mean (1/T) sum_i abar_i v / (abar_i v + 1 - abar_i): within 5 SE (the score_fn given is
    -E[z | x_i] / sqrt(1 - abar_i), the chain's exact score)."""
    sched = DDPMSchedule(T=1000)

    def exact_score(x, t):  # -E[z | x_i] / sqrt(1 - abar_i)
        ab = sched.alphas_cumprod[(t * sched.T).round().long() - 1][:, None]
        return -(x - ab.sqrt() * MU) / (ab * V + 1 - ab)

    g = torch.Generator().manual_seed(6)
    x0 = GaussianMixture(MU, V).sample(40_000, g, dtype=F64)
    mean, se = _mean_se(ddpm_loss(exact_score, sched, x0, generator=g, reduction="none"))
    ab = sched.alphas_cumprod
    exact = float((ab * V / (ab * V + 1 - ab)).mean())
    assert abs(mean - exact) < 5 * se and se < 0.05 * exact, (mean, exact, se)


def test_float32_loss_backpropagates():
    """The default-dtype path trains: a finite scalar with a gradient for every net parameter."""
    model = ScoreModel(MLPScore(2, hidden=16, blocks=1), VESDE(), input_scaling=True)
    loss = dsm_loss(model, torch.randn(32, 2), weighting="likelihood", importance_sampling=True)
    loss.backward()
    assert loss.dtype == torch.float32 and all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("weighting,importance", [("sigma2", False), ("likelihood", True)])
def test_losses_on_the_selected_device_match_cpu(device, dtype, weighting, importance):
    """With --device/--dtype: the same t and noise give the CPU float64 value (dtype rounding:
    1e-5 relative in float32); randomly drawn draws stay on the device."""
    sde, net = VPSDE(), _net(dim=2)
    x0, t, z = _draws(sde, n=32, dim=2)
    ref = dsm_loss(ScoreModel(net, sde), x0, t=t, noise=z)
    model = ScoreModel(net.to(device=device, dtype=dtype), sde)
    got = dsm_loss(model, x0.to(device, dtype), t=t.to(device, dtype), noise=z.to(device, dtype))
    torch.testing.assert_close(got.to("cpu", F64), ref, rtol=1e-5, atol=0)
    drawn = dsm_loss(model, x0.to(device, dtype), weighting=weighting, importance_sampling=importance)
    drawn_ddpm = ddpm_loss(model, DDPMSchedule(T=50), x0.to(device, dtype))
    assert drawn.device.type == drawn_ddpm.device.type == device.type and drawn.dtype == dtype


@pytest.mark.parametrize("call,match", [
    (lambda m, x: dsm_loss(m, x, weighting="snr"), "unknown weighting 'snr'; allowed: sigma2, likelihood"),
    (lambda m, x: dsm_loss(m, x, importance_sampling=True), "importance_sampling needs weighting="),
    (lambda m, x: dsm_loss(m, x, eps=0.0), r"eps must lie in \(0, T\)"),
    (lambda m, x: dsm_loss(m, x, noise=torch.randn(4, 3)), "noise must return a tensor shaped like x"),
    (lambda m, x: dsm_loss(m, x, t=torch.rand(3)), r"t must be a float or a tensor of shape \(4,\)"),
    (lambda m, x: dsm_loss(m, x, reduction="sum"), "unknown reduction 'sum'; allowed: mean, none"),
    (lambda m, x: dsm_loss(m.net, x), "model must be a ScoreModel"),
    (lambda m, x: ddpm_loss(m, VPSDE(), x), "schedule must be a DDPMSchedule"),
    (lambda m, x: ddpm_loss(m, DDPMSchedule(T=10), x, i=torch.full((4,), 11)), r"step i must lie in 1..T"),
    (lambda m, x: ddpm_loss(m, DDPMSchedule(T=10), x, i=torch.rand(4)), "i must be an integer tensor"),
])
def test_bad_input(call, match):
    model = ScoreModel(MLPScore(2, hidden=8, blocks=1), VPSDE())
    with pytest.raises((ValueError, TypeError), match=match):
        call(model, torch.randn(4, 2))
