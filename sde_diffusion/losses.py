"""Training objectives: denoising score matching in continuous time, and DDPM's L_simple, the true
variational bound L_vlb and improved DDPM's hybrid objective on a discrete chain.

Normalisation (one convention for both losses): the squared error of each sample is averaged over
its D dimensions, then over the batch (``reduction="mean"``) or returned per sample (``"none"``).
Multiply by D/2 for the sum-over-dimensions form with the 1/2 of Song et al. (2021), eq. 7.

DSM (Song et al. 2021, eq. 7): with x_t = m x_0 + s z, grad log p(x_t | x_0) = -z / s, so
    lambda(t) ||s_theta(x_t, t) + z / s||^2 = lambda(t) / s^2 ||eps_theta(x_t, t) - z||^2,
with eps_theta = -s s_theta. For lambda = s^2 ("sigma2") this is exactly the eps-prediction MSE.
Every parameterization is trained through this one eps error (``ScoreModel`` converts).

EDM's weighting ("edm", Karras et al. 2022, sec. 5) for an ``edm`` model: with sigma = s / m and
x0_theta = D = c_skip x_ve + c_out F, eps_theta - z = -(D - x0) / sigma, so EDM's
lambda_edm ||D - x0||^2 = (sigma^2 + sd^2) / (sigma sd)^2 ||D - x0||^2 = ||F - F_target||^2 (unit weight on
the net's own output, F_target = (x0 - c_skip x_ve) / c_out) is ((sigma^2 + sd^2) / sd^2) ||eps_theta - z||^2.

On the discrete chain (``ddpm_loss``, i ~ U{1..T}, one term of the bound per sample, ``vlb.py``):
    simple   (Ho et al. 2020, eq. 14)      mean_d (eps_theta - z)^2,
    mean_mse (Table 2, ||mu_tilde - mu_theta||^2)  mean_d (mu_tilde - mu_theta)^2
             = beta_i^2 / (alpha_i (1 - abar_i)) mean_d (eps_theta - z)^2,
    vlb      (eq. 5, "L")                  (L_T + T L_{i-1}) / (D ln 2), L_0 at i = 1: an unbiased estimate
                                           of the whole bound in bits/dim,
    hybrid   (Nichol & Dhariwal 2021, sec. 3.1)  simple + lambda vlb, lambda = 0.001, with the mean
             held fixed (stop-gradient on eps_theta) in the vlb term, so that the bound trains only v.
"""

from __future__ import annotations

from typing import Callable

import torch

import math

from . import checks
from .models.score_model import ScoreModel, learns_variance, variance_kind
from .schedule import DDPMSchedule
from .sde import SDE
from .vlb import (bins_rule, chain_prediction, decoder_nll, decoder_rule, prior_kl, reverse_log_variance,
                  step_kl)

WEIGHTINGS = ("sigma2", "likelihood", "none", "edm")
OBJECTIVES = ("simple", "mean_mse", "vlb", "hybrid")
_BISECTIONS = 64  # halves [eps, T] to below float64 resolution


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    checks.one_of("reduction", reduction, ("mean", "none"))
    return per_sample.mean() if reduction == "mean" else per_sample


def _log_snr_inv(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """r(t) = log(s(t)^2 / m(t)^2). Since d(s^2/m^2)/dt = g^2 / m^2, r'(t) = g(t)^2 / s(t)^2 > 0."""
    m, s = sde.marginal(t)
    return 2 * (s.log() - m.log())


def _log_snr_ends(sde: SDE, eps: float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r(eps), r(T)) on like's device and dtype."""
    return _log_snr_inv(sde, torch.tensor([eps, sde.T], device=like.device, dtype=like.dtype)).unbind()


def sample_importance_time(sde: SDE, n: int, eps: float, *, generator=None, device=None,
                           dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ q(t) = g(t)^2 / (s(t)^2 Z) on [eps, T], and Z = r(T) - r(eps).

    q's CDF is (r(t) - r(eps)) / Z exactly (r as in ``_log_snr_inv``, for every linear SDE), so
    t = r^{-1}(r(eps) + u Z), u ~ U(0, 1), inverted by bisection (r is increasing).
    """
    u = torch.rand(n, generator=generator, device=device, dtype=dtype)
    r_eps, r_T = _log_snr_ends(sde, eps, u)
    target = r_eps + u * (r_T - r_eps)
    lo, hi = torch.full_like(u, eps), torch.full_like(u, sde.T)
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        below = _log_snr_inv(sde, mid) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2, r_T - r_eps


def dsm_loss(model: ScoreModel, x0: torch.Tensor, *, weighting: str = "sigma2", eps: float = 1e-5,
             importance_sampling: bool = False, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None, y: torch.Tensor | None = None,
             generator: torch.Generator | None = None, reduction: str = "mean") -> torch.Tensor:
    """E_{t ~ U(eps, T)} E_z [lambda(t) mean_d (s_theta(x_t, t) + z / s(t))^2]  (see module doc).

    ``weighting``: ``sigma2`` (lambda = s^2, the eps-MSE), ``likelihood`` (lambda = g^2, Song et al.
    2021a "Maximum likelihood training"), ``none`` (lambda = 1) or, for an edm model, ``edm``
    (lambda = s^2 (sigma^2 + sd^2) / sd^2: the MSE of the net's output F, see the module). With
    ``importance_sampling`` (likelihood only) t ~ q(t) = g^2 / (s^2 Z) and each term is divided by (T - eps) q(t), which
    leaves the expectation unchanged and gives Z / (T - eps) ||eps_theta - z||^2 / D per sample.
    ``t`` (N,) and ``noise`` (shaped like x0) may be given to fix the draws (with importance_sampling,
    t must come from q(t), ``sample_importance_time``); ``generator`` draws the rest.
    """
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a ScoreModel, got {type(model).__name__}.")
    checks.float_tensor("x0", x0)
    checks.one_of("weighting", weighting, WEIGHTINGS)
    sde, n = model.sde, x0.shape[0]
    if not (isinstance(eps, (int, float)) and 0 < eps < sde.T):
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T:g}), got {eps!r}.")
    if weighting == "edm" and model.sigma_data is None:
        raise ValueError(f"weighting 'edm' needs an edm model (parameterization='edm'), got "
                         f"{model.parameterization!r}.")
    if importance_sampling and weighting != "likelihood":
        raise ValueError(f"importance_sampling needs weighting='likelihood', got {weighting!r}.")
    draw = {"generator": generator, "device": x0.device, "dtype": x0.dtype}
    if importance_sampling:
        if t is None:
            t, Z = sample_importance_time(sde, n, eps, **draw)
        else:  # drawn by the caller from q(t), e.g. for a global batch split across processes
            t = checks.time(t, sde.T, batch=n, like=x0)
            r_eps, r_T = _log_snr_ends(sde, eps, x0)
            Z = r_T - r_eps
        weight = Z / (sde.T - eps)
    else:
        t = eps + (sde.T - eps) * torch.rand(n, **draw) if t is None \
            else checks.time(t, sde.T, batch=n, like=x0)
        m, s = sde.marginal(t)
        if weighting == "edm":
            weight = 1 + (s / m).square() / model.sigma_data.to(s.dtype).square()
        else:
            weight = {"sigma2": torch.ones_like(s), "likelihood": sde.diffusion(t).square() / s.square(),
                      "none": 1 / s.square()}[weighting]
    z = torch.randn(x0.shape, **draw) if noise is None else checks.same_shape("noise", noise, x0)
    m, s = sde.marginal(t)
    xt = checks.bcast(m, x0) * x0 + checks.bcast(s, x0) * z
    err = (model.eps(xt, t, y) - z).square().reshape(n, -1).mean(1)
    return _reduce(weight * err, reduction)


def ddpm_loss(model: ScoreModel | Callable, schedule: DDPMSchedule, x0: torch.Tensor, *,
              i: torch.Tensor | None = None, noise: torch.Tensor | None = None,
              y: torch.Tensor | None = None, generator: torch.Generator | None = None,
              reduction: str = "mean", objective: str = "simple", vlb_weight: float = 0.001,
              levels: int | None = None, data_range: tuple[float, float] = (-1.0, 1.0),
              decoder: str = "auto", bins: str = "auto") -> torch.Tensor:
    """A DDPM objective (see the module) at i ~ U{1..T}, z ~ N(0, I), x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) z.

    ``objective``: ``simple`` (L_simple of DDPM Algorithm 1), ``mean_mse``, ``vlb`` or ``hybrid``
    (L_simple + ``vlb_weight`` L_vlb, the mean stopped in L_vlb; needs a learned-variance model). The
    bound's terms use the model's learned variance when it has one, else sigma_i^2 = beta_i (the fixed
    isotropic Sigma); its decoder is discretized to ``levels`` bins of ``data_range`` (x_0 at their
    centres) or, with ``levels`` None, a Gaussian density, its sigma_1^2 by ``decoder``
    (``vlb.decoder_rule``: DDPM's beta_tilde_2 at 256 levels by default) and its bins by ``bins``
    (``vlb.bins_rule``: DDPM's x_0 +- 1/255 with the tanh CDF at 256 levels by default). ``model`` is a score_fn(x, t[, y]), read as
    eps = -sqrt(1 - abar_i) score (``vlb.chain_prediction``): for a ScoreModel on the chain's
    ``embedding()`` that is its own eps.
    """
    if not isinstance(schedule, DDPMSchedule):
        raise TypeError(f"schedule must be a DDPMSchedule, got {type(schedule).__name__}.")
    if not callable(model):
        raise TypeError(f"model must be a ScoreModel or a score_fn(x, t[, y]), got {type(model).__name__}.")
    checks.float_tensor("x0", x0)
    checks.one_of("objective", objective, OBJECTIVES)
    learned = learns_variance(model)
    if objective == "hybrid" and not learned:
        raise ValueError("objective 'hybrid' trains a learned variance through L_vlb; it needs a ScoreModel "
                         "with learned_variance=True (model.learned_variance: true).")
    if not (isinstance(vlb_weight, (int, float)) and math.isfinite(vlb_weight) and vlb_weight > 0):
        raise ValueError(f"vlb_weight must be a finite number > 0, got {vlb_weight!r}.")
    n = x0.shape[0]
    if i is None:
        i = torch.randint(1, schedule.T + 1, (n,), generator=generator, device=x0.device)
    elif not isinstance(i, torch.Tensor) or i.shape != (n,) or i.is_floating_point():
        raise ValueError(f"i must be an integer tensor of shape ({n},) with steps in 1..{schedule.T}.")
    i = i.to(x0.device)
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) if noise is None \
        else checks.same_shape("noise", noise, x0)
    xi = schedule.q_sample(x0, i, z)
    eps, v = chain_prediction(model, schedule, xi, i, y)
    simple = (eps - z).square().reshape(n, -1).mean(1)
    if objective == "simple":
        return _reduce(simple, reduction)
    if objective == "mean_mse":
        b, ab = (schedule.take(t, i, x0) for t in (schedule.betas, schedule.alphas_cumprod))
        return _reduce(b.square() / ((1 - b) * (1 - ab)) * simple, reduction)
    mean = eps.detach() if objective == "hybrid" else eps
    log_var = reverse_log_variance(schedule, i, "learned" if learned else "beta", v, xi, variance_kind(model),
                                   decoder_rule(decoder, levels))
    first = i == 1
    term = torch.where(first, decoder_nll(schedule, xi, mean, log_var, x0, levels, data_range,
                                          bins_rule(bins, levels)),
                       step_kl(schedule, i.clamp_min(2), mean, z, log_var))
    vlb = (prior_kl(schedule, x0) + schedule.T * term) / (x0[0].numel() * math.log(2))
    return _reduce(vlb if objective == "vlb" else simple + vlb_weight * vlb, reduction)
