"""The DDPM variational bound in bits per dimension (Ho et al. 2020, eq. 5), for discrete-time models.

For discrete data k with x_0 = lo + (k + 1/2) w (the bin centres of ``data.py``'s level map),
    -log p(x_0) <= L_T + sum_{i=2}^T L_{i-1} + L_0,
    L_T     = KL(q(x_T | x_0) || N(0, I)),
    L_{i-1} = E_q KL(q(x_{i-1} | x_i, x_0) || p(x_{i-1} | x_i)),   p(x_{i-1} | x_i) = N(mu_i, sigma_i^2 I),
    L_0     = -E_q log p(x_0 | x_1),
with the eps parameterisation mu_i = (x_i - beta_i / sqrt(1 - abar_i) eps(x_i, i/T)) / sqrt(alpha_i).
For x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) z the KL is, per sample,
    L_{i-1} = D/2 (log(sigma_i^2 / bt_i) + bt_i / sigma_i^2 - 1)
              + beta_i^2 / (2 sigma_i^2 alpha_i (1 - abar_i)) ||eps(x_i, i/T) - z||^2,   bt_i = beta_tilde_i.
The decoder p(x_0 | x_1) is DDPM's discretized Gaussian, generalised to ``levels`` bins: the mass of
N(mu_1, sigma_1^2) over the bin of level k, the first and last bins extended to -inf and +inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import checks
from .dequantize import bin_width, levels_to_continuous
from .schedule import DDPMSchedule
from .sde import ScoreFn


@dataclass(frozen=True)
class ScheduleMarginal:
    """The marginals of a discrete chain as an SDE-like view: ``marginal(t)`` at t = i/T returns
    (sqrt(abar_i), sqrt(1 - abar_i)), i = round(t T). With it ``GaussianMixture.eps(...)`` gives the
    exact eps of the *discrete* chain, -sqrt(1 - abar_i) grad log q_i, q_i the law of x_i."""

    schedule: DDPMSchedule
    T: float = 1.0

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = torch.cat([torch.ones(1, dtype=torch.float64), self.schedule.alphas_cumprod])
        i = torch.round(t.to(torch.float64) * self.schedule.T).long()
        ab = abar.to(t.device)[i].to(t.dtype)
        return ab.sqrt(), (1 - ab).sqrt()


def _log_bin_mass(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b, evaluated in the lower tail (a + b <= 0) for accuracy."""
    flip = (a + b) > 0
    a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return lb + torch.log(-torch.expm1(la - lb))


def _decoder_log_prob(k: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, levels: int,
                      data_range: tuple[float, float]) -> torch.Tensor:
    """log p(x_0 = level k | x_1), summed over dims: sum_d log int_{bin k_d} N(y; mean_d, std^2) dy."""
    lo, w = float(data_range[0]), bin_width(levels, data_range)
    kf = k.to(mean.dtype)
    lower = torch.where(k == 0, -math.inf, lo + kf * w)
    upper = torch.where(k == levels - 1, math.inf, lo + (kf + 1) * w)
    std = checks.bcast(std, mean)
    return _log_bin_mass((lower - mean) / std, (upper - mean) / std).flatten(1).sum(1)


@torch.no_grad()  # inference: the eps_fn (e.g. a ScoreModel with trainable weights) records no graph
def ddpm_vlb_terms(eps_fn: ScoreFn, schedule: DDPMSchedule, x_discrete: torch.Tensor, *,
                   levels: int = 256, data_range: tuple[float, float] = (-1.0, 1.0),
                   variance: str = "beta", generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32,
                   max_batch: int = 8192) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_T, sum_{i=2}^T L_{i-1}, L_0) in nats per sample, each of shape (N,); see the module.

    ``eps_fn(x, t)``: the model's noise prediction at step i, called with x = x_i of shape (M, ...)
    and t = i/T as an (M,) tensor (the continuous time, as ``ScoreModel`` nets are called).
    ``variance``: sigma_i^2 = beta_i (``beta``) or beta_tilde_i (``beta_tilde``); the decoder uses
    sigma_1^2 = beta_1, or beta_tilde_2 for ``beta_tilde`` (beta_tilde_1 = 0), as DDPM's code does.
    The sum over steps is exact (all T steps, evaluated in chunks of at most ``max_batch`` rows);
    each term uses one draw x_i ~ q(x_i | x_0) per sample, so the result is an unbiased
    single-draw estimate of each sample's bound.
    """
    if not callable(eps_fn):
        raise TypeError(f"eps_fn must be a callable (x, t) -> eps, got {type(eps_fn).__name__}.")
    if not isinstance(schedule, DDPMSchedule) or schedule.T < 2:
        raise ValueError(f"schedule must be a DDPMSchedule with T >= 2, got {schedule!r}.")
    if not isinstance(x_discrete, torch.Tensor) or x_discrete.is_floating_point() or x_discrete.ndim < 2:
        raise TypeError("x_discrete must be an integer tensor (N, ...) of levels 0..levels-1, got "
                        f"{getattr(x_discrete, 'dtype', type(x_discrete).__name__)}.")
    checks.one_of("variance", variance, ("beta", "beta_tilde"))
    checks.positive_int("max_batch", max_batch)
    if levels < 2:
        raise ValueError(f"levels must be >= 2 for the discretized decoder, got {levels}.")
    x0 = levels_to_continuous(x_discrete, levels, data_range, 0.5, dtype)
    n, dim, steps = x0.shape[0], x0[0].numel(), schedule.T
    tables = (schedule.betas, schedule.alphas_cumprod, schedule.posterior_variance)
    beta, abar, btilde = (a.to(device=x0.device, dtype=dtype) for a in tables)
    sigma2 = beta if variance == "beta" else torch.cat([btilde[1:2], btilde[1:]])

    prior = 0.5 * (abar[-1] * x0.flatten(1).square().sum(1) - dim * (abar[-1] + torch.log1p(-abar[-1])))
    kl, decoder = torch.zeros_like(prior), torch.zeros_like(prior)
    chunk = max(1, max_batch // n)
    for start in range(0, steps, chunk):
        i = torch.arange(start, min(start + chunk, steps), device=x0.device)  # 0-based: step i + 1
        idx = i.repeat_interleave(n)
        xr = x0.repeat((len(i),) + (1,) * (x0.ndim - 1))
        z = torch.randn(xr.shape, generator=generator, device=x0.device, dtype=dtype)
        ab = checks.bcast(abar[idx], xr)
        xi = ab.sqrt() * xr + (1 - ab).sqrt() * z
        eps = checks.same_shape("eps_fn", eps_fn(xi, (idx + 1).to(dtype) / steps), xi)
        sq = (eps - z).flatten(1).square().sum(1).reshape(len(i), n)
        b, a, s2, bt = beta[i, None], abar[i, None], sigma2[i, None], btilde[i, None]
        terms = b.square() / (2 * s2 * (1 - b) * (1 - a)) * sq
        terms = terms + 0.5 * dim * (torch.log(s2 / bt) + bt / s2 - 1)
        kl = kl + terms[i > 0].sum(0)
        if start == 0:
            mean = (xi[:n] - (beta[0] / (1 - abar[0]).sqrt()) * eps[:n]) / (1 - beta[0]).sqrt()
            decoder = -_decoder_log_prob(x_discrete, mean, sigma2[0].sqrt(), levels, data_range)
    return prior, kl, decoder


def ddpm_vlb_bits_per_dim(eps_fn: ScoreFn, schedule: DDPMSchedule, x_discrete: torch.Tensor,
                          **kwargs) -> torch.Tensor:
    """The DDPM bound (L_T + sum_{i=2}^T L_{i-1} + L_0) / (D ln 2) in bits per dimension, shape (N,);
    an upper bound on -log2 p(k) / D of the discrete model. Keywords as ``ddpm_vlb_terms``."""
    prior, kl, decoder = ddpm_vlb_terms(eps_fn, schedule, x_discrete, **kwargs)
    return (prior + kl + decoder) / (x_discrete[0].numel() * math.log(2))
