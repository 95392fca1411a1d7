"""The DDPM variational bound in bits per dimension (Ho et al. 2020, eq. 5), for discrete-time models.

For discrete data k with x_0 on the grid of the bin convention (``bins_rule``),
    -log p(x_0) <= L_T + sum_{i=2}^T L_{i-1} + L_0,
    L_T     = KL(q(x_T | x_0) || N(0, I)),
    L_{i-1} = E_q KL(q(x_{i-1} | x_i, x_0) || p(x_{i-1} | x_i)),   p(x_{i-1} | x_i) = N(mu_i, Sigma_i),
    L_0     = -E_q log p(x_0 | x_1),
with the eps parameterisation mu_i = (x_i - beta_i / sqrt(1 - abar_i) eps(x_i, t_i)) / sqrt(alpha_i),
eps = -sqrt(1 - abar_i) score: a score_fn is read as the samplers read it, and a model of the chain lives
on its ``embedding()`` (there eps is the model's own; a ``mu`` model's output is that mean). For
x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) z and a diagonal Sigma_i = diag(sigma_{i,d}^2) the KL is, per sample,
    L_{i-1} = sum_d 1/2 (log(sigma_{i,d}^2 / bt_i) + bt_i / sigma_{i,d}^2 - 1
                         + beta_i^2 / (sigma_{i,d}^2 alpha_i (1 - abar_i)) (eps_d(x_i, t_i) - z_d)^2),
bt_i = beta_tilde_i. Sigma_i is beta_i, beta_tilde_i, or a learned-variance model's
exp(v log beta_i + (1 - v) log bt_i) (Nichol & Dhariwal 2021, eq. 15; bt_1 = 0 is replaced by bt_2 in
the decoder, as DDPM's and improved DDPM's code do, and by default at 256 levels the fixed beta_1 too:
``decoder_rule``). The decoder p(x_0 | x_1) is DDPM's discretized
Gaussian, generalised to ``levels`` bins: the mass of N(mu_1, sigma_1^2) over the bin of level k, the
first and last bins extended to -inf and +inf (a Gaussian density for continuous data, ``levels`` None).
Two bin conventions (``bins``): ``exact``, x_0 = lo + (k + 1/2) w at the bin centres of width
w = (hi - lo) / L (``dequantize``'s level map) and the exact Normal CDF; ``ddpm``, DDPM's and improved
DDPM's code generalised to L levels: x_0 = lo + k (hi - lo) / (L - 1) (k / 127.5 - 1 at 256), the bin
x_0 +- (hi - lo) / (2 (L - 1)) (+-1/255), the CDF approximated as 1/2 (1 + tanh(sqrt(2 / pi) (y + 0.044715 y^3)))
and every probability clamped at 1e-12 before its log.
Any ``DiscreteSchedule`` works, a respaced one included (its model times t_i = tau_i / T).
"""

from __future__ import annotations

import math
import torch

from . import checks
from .dequantize import bin_width, continuous_to_levels, levels_to_continuous
from .models.score_model import fixed_variance, learns_variance, variance_kind
from .schedule import DiscreteSchedule, learned_log_variance
from .sde import ScoreFn

VARIANCES = ("auto", "beta", "beta_tilde", "learned")
DECODERS = ("auto", "ddpm", "step")
BINS = ("auto", "ddpm", "exact")


def bins_rule(bins: str, levels: int | None) -> str:
    """The bin convention (module docstring): ``auto`` is the papers' ``ddpm`` for their 256 levels,
    else ``exact``; continuous data (``levels`` None) have no bins."""
    checks.one_of("bins", bins, BINS)
    return ("ddpm" if levels == 256 else "exact") if bins == "auto" else bins


def levels_to_data(k: torch.Tensor, levels: int, data_range: tuple[float, float], bins: str,
                   dtype: torch.dtype) -> torch.Tensor:
    """x_0 of levels k under a bin convention: bin centres (``exact``) or DDPM's grid lo + k (hi - lo) / (L - 1)."""
    if bins == "exact":
        return levels_to_continuous(k, levels, data_range, 0.5, dtype)
    lo, hi = float(data_range[0]), float(data_range[1])
    return lo + k.to(dtype) * ((hi - lo) / (levels - 1))


def _approx_cdf(y: torch.Tensor) -> torch.Tensor:
    """DDPM's approximation of the standard Normal CDF: 1/2 (1 + tanh(sqrt(2 / pi) (y + 0.044715 y^3)))."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * y.pow(3))))


def _ddpm_decoder_log_prob(x0: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, levels: int,
                           data_range: tuple[float, float]) -> torch.Tensor:
    """DDPM's discretized_gaussian_log_likelihood at L levels, summed over dims: log of the approximate
    CDF mass over x_0 +- h, h = (hi - lo) / (2 (L - 1)), the first bin from -inf and the last to +inf
    (x_0 below lo + h / 2 or above hi - h / 2: DDPM's -0.999 and 0.999 at 256 levels)."""
    lo, hi = float(data_range[0]), float(data_range[1])
    h = (hi - lo) / (2 * (levels - 1))
    std = checks.bcast(std, mean)
    plus, minus = _approx_cdf((x0 - mean + h) / std), _approx_cdf((x0 - mean - h) / std)
    tiny = 1e-12
    log_p = torch.where(x0 < lo + h / 2, plus.clamp_min(tiny).log(),
                        torch.where(x0 > hi - h / 2, (1 - minus).clamp_min(tiny).log(),
                                    (plus - minus).clamp_min(tiny).log()))
    return log_p.flatten(1).sum(1)


def decoder_rule(decoder: str, levels: int | None) -> str:
    """The decoder variance rule: ``ddpm`` (sigma_1^2 = beta_tilde_2 for both fixed variances, DDPM's and
    improved DDPM's code: log(append(posterior_variance[1], betas[1:]))) or ``step`` (the step's own:
    beta_1 for ``beta``, beta_tilde_2 for ``beta_tilde``, beta_tilde_1 being 0); ``auto``: the papers'
    ``ddpm`` for their 256 levels, else ``step``. With the exact score the posterior spread of x_0 given x_1
    is about beta_1, so ``step`` gives the tighter bound there; ``ddpm`` wins with a near-ideal mean."""
    checks.one_of("decoder", decoder, DECODERS)
    return ("ddpm" if levels == 256 else "step") if decoder == "auto" else decoder


def _log_bin_mass(a: torch.Tensor, b: torch.Tensor, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b, with a = -inf where ``first`` and b = +inf where ``last``:
    log Phi(b) and log Phi(-a) there. Inner bins are evaluated in the lower tail (a + b <= 0) for
    accuracy. Every branch sees finite inputs, so gradients stay finite (``torch.where``)."""
    flip = (a + b) > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    la, lb = torch.special.log_ndtr(lo), torch.special.log_ndtr(hi)
    inner = lb + torch.log(-torch.expm1(la - lb))
    return torch.where(first, torch.special.log_ndtr(b), torch.where(last, torch.special.log_ndtr(-a), inner))


def _decoder_log_prob(k: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, levels: int,
                      data_range: tuple[float, float]) -> torch.Tensor:
    """log p(x_0 = level k | x_1), summed over dims: sum_d log int_{bin k_d} N(y; mean_d, std^2) dy,
    the first and last bins extended to -inf and +inf."""
    lo, w = float(data_range[0]), bin_width(levels, data_range)
    kf = k.to(mean.dtype)
    std = checks.bcast(std, mean)
    a, b = (lo + kf * w - mean) / std, (lo + (kf + 1) * w - mean) / std
    return _log_bin_mass(a, b, k == 0, k == levels - 1).flatten(1).sum(1)


def chain_prediction(score_fn: ScoreFn, schedule: DiscreteSchedule, x: torch.Tensor, i: torch.Tensor,
                     y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(eps, v) at x = x_i, step i (M,) of the chain: eps = -sqrt(1 - abar_i) score_fn(x, t_i[, y]) at
    t_i = ``schedule.times``, as the samplers read a score. A model of the chain lives on its
    ``embedding()``, whose s(t_i) is sqrt(1 - abar_i), so this is the model's own eps. v is that of a
    learned-variance score_fn (``score_and_v``, ``models.learns_variance``), else None."""
    t = schedule.take(schedule.times, i, x)
    ab = checks.bcast(schedule.take(schedule.alphas_cumprod, i, x), x)
    args = (x, t) if y is None else (x, t, y)
    score, v = score_fn.score_and_v(*args) if learns_variance(score_fn) else (score_fn(*args), None)
    return -(1 - ab).sqrt() * checks.same_shape("score_fn", score, x), v


def reverse_log_variance(schedule: DiscreteSchedule, i: torch.Tensor, variance: str, v: torch.Tensor | None,
                         like: torch.Tensor, kind: str = "interpolation", decoder: str = "step") -> torch.Tensor:
    """log sigma_i^2 of p(x_{i-1} | x_i) at steps i (M,): log beta_i (beta_tilde_2 at i = 1 for the
    ``ddpm`` decoder rule, ``decoder_rule``), log beta_tilde_i (clipped at i = 1) or, for ``learned``, v
    read by its convention ``kind`` with the clipped beta_tilde_i (``learned_log_variance``; shaped like
    v); else shaped (M, 1, ...)."""
    checks.one_of("variance", variance, VARIANCES[1:])
    beta, bt = (checks.bcast(schedule.take(a, i, like), like)
                for a in (schedule.betas, schedule.posterior_variance_clipped))
    if variance == "learned":
        if v is None:
            raise ValueError("variance 'learned' needs a learned-variance model (its v).")
        return learned_log_variance(v, beta, bt, kind)
    if variance == "beta" and decoder == "ddpm":
        beta = torch.where(checks.bcast(i.to(like.device), like) == 1, bt, beta)
    return (beta if variance == "beta" else bt).log()


def step_kl(schedule: DiscreteSchedule, i: torch.Tensor, eps: torch.Tensor, z: torch.Tensor,
            log_var: torch.Tensor) -> torch.Tensor:
    """L_{i-1} per sample (M,) in nats, for steps i >= 2 (see the module); log_var broadcasts against eps."""
    b, a, bt = (checks.bcast(schedule.take(t, i, eps), eps)
                for t in (schedule.betas, schedule.alphas_cumprod, schedule.posterior_variance))
    inv = torch.exp(-log_var)
    per = log_var - bt.log() + bt * inv - 1 + b.square() / ((1 - b) * (1 - a)) * (eps - z).square() * inv
    return 0.5 * per.flatten(1).sum(1)


def decoder_nll(schedule: DiscreteSchedule, x1: torch.Tensor, eps: torch.Tensor, log_var: torch.Tensor,
                x0: torch.Tensor, levels: int | None, data_range: tuple[float, float] = (-1.0, 1.0),
                bins: str = "exact") -> torch.Tensor:
    """L_0 = -log p(x_0 | x_1) per sample in nats, p = N(mu_1, sigma_1^2) discretized to ``levels`` bins
    of the convention ``bins`` (``exact``: x_0 in the bin of its level, exact CDF; ``ddpm``: DDPM's
    x_0 +- h with the tanh CDF) or, with ``levels`` None, its density at x_0."""
    one = torch.ones(x1.shape[0], dtype=torch.long, device=x1.device)
    b, a = (checks.bcast(schedule.take(t, one, x1), x1) for t in (schedule.betas, schedule.alphas_cumprod))
    mean = (x1 - b / (1 - a).sqrt() * eps) / (1 - b).sqrt()
    log_var = log_var.expand_as(mean)
    if levels is None:
        return 0.5 * (log_var + math.log(2 * math.pi) + (x0 - mean).square() * torch.exp(-log_var)).flatten(1).sum(1)
    if bins == "ddpm":
        return -_ddpm_decoder_log_prob(x0, mean, torch.exp(0.5 * log_var), levels, data_range)
    k = continuous_to_levels(x0, levels, data_range)
    return -_decoder_log_prob(k, mean, torch.exp(0.5 * log_var), levels, data_range)


def prior_kl(schedule: DiscreteSchedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(N(sqrt(abar_T) x_0, (1 - abar_T) I) || N(0, I)) per sample, in nats."""
    ab = schedule.alphas_cumprod[-1].to(device=x0.device, dtype=x0.dtype)
    return 0.5 * (ab * x0.flatten(1).square().sum(1) - x0[0].numel() * (ab + torch.log1p(-ab)))


def _variance(score_fn, variance: str) -> str:
    learned = learns_variance(score_fn)
    if variance == "auto":
        return "learned" if learned else fixed_variance(score_fn) or "beta"
    if variance == "learned" and not learned:
        raise ValueError("variance 'learned' needs a ScoreModel with learned_variance=True.")
    return variance


@torch.no_grad()  # inference: the model (e.g. a ScoreModel with trainable weights) records no graph
def ddpm_vlb_terms(score_fn: ScoreFn, schedule: DiscreteSchedule, x_discrete: torch.Tensor, *,
                   levels: int = 256, data_range: tuple[float, float] = (-1.0, 1.0),
                   variance: str = "auto", decoder: str = "auto", bins: str = "auto",
                   generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32,
                   max_batch: int = 8192) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_T, sum_{i=2}^T L_{i-1}, L_0) in nats per sample, each of shape (N,); see the module.

    ``score_fn``: a score (x, t) -> score, e.g. a ScoreModel on the chain's ``embedding()``, called with
    x = x_i of shape (M, ...) and t = t_i as an (M,) tensor and read as eps = -sqrt(1 - abar_i) score
    (``chain_prediction``).
    ``variance``: sigma_i^2 = beta_i (``beta``), beta_tilde_i (``beta_tilde``) or the model's
    learned one (``learned``); ``auto`` is ``learned`` for a learned-variance model, else the fixed variance
    the model states (a diffusers scheduler's ``variance_type``), else ``beta``.
    ``decoder``: the decoder's sigma_1^2 for fixed variances (``decoder_rule``): the papers' beta_tilde_2
    (``ddpm``, the default at 256 levels) or the step's own, beta_1 for ``beta`` (``step``, the default
    otherwise); beta_tilde_2 for ``beta_tilde`` either way (beta_tilde_1 = 0).
    ``bins``: where the levels sit and how the decoder integrates (``bins_rule``): DDPM's grid, bins and
    tanh CDF (``ddpm``, the default at 256 levels) or bin centres with the exact CDF (``exact``, the
    default otherwise). The sum over steps is exact (all T steps, evaluated in chunks of at most
    ``max_batch`` rows); each term uses one draw x_i ~ q(x_i | x_0) per sample, so the result is an
    unbiased single-draw estimate of each sample's bound.
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be a callable (x, t) -> score (e.g. a ScoreModel), got "
                        f"{type(score_fn).__name__}.")
    if not isinstance(schedule, DiscreteSchedule) or schedule.T < 2:
        raise ValueError(f"schedule must be a DDPMSchedule (or a respaced one) with T >= 2, got {schedule!r}.")
    if not isinstance(x_discrete, torch.Tensor) or x_discrete.is_floating_point() or x_discrete.ndim < 2:
        raise TypeError("x_discrete must be an integer tensor (N, ...) of levels 0..levels-1, got "
                        f"{getattr(x_discrete, 'dtype', type(x_discrete).__name__)}.")
    checks.one_of("variance", variance, VARIANCES)
    variance = _variance(score_fn, variance)
    rule = decoder_rule(decoder, levels)
    checks.positive_int("max_batch", max_batch)
    if levels < 2:
        raise ValueError(f"levels must be >= 2 for the discretized decoder, got {levels}.")
    grid = bins_rule(bins, levels)
    levels_to_continuous(x_discrete, levels, data_range, 0.5, dtype)  # the levels' checks
    x0 = levels_to_data(x_discrete, levels, data_range, grid, dtype)
    n, steps = x0.shape[0], schedule.T
    prior = prior_kl(schedule, x0)
    kl, decoder = torch.zeros_like(prior), torch.zeros_like(prior)
    chunk = max(1, max_batch // n)
    for start in range(0, steps, chunk):
        i = torch.arange(start + 1, min(start + chunk, steps) + 1, device=x0.device)  # 1-based steps
        idx = i.repeat_interleave(n)
        xr = x0.repeat((len(i),) + (1,) * (x0.ndim - 1))
        z = torch.randn(xr.shape, generator=generator, device=x0.device, dtype=dtype)
        xi = schedule.q_sample(xr, idx, z)
        eps, v = chain_prediction(score_fn, schedule, xi, idx)
        log_var = reverse_log_variance(schedule, idx, variance, v, xi, variance_kind(score_fn), rule)
        later = idx > 1
        kl = kl + torch.where(later, step_kl(schedule, idx.clamp_min(2), eps, z, log_var), 0).reshape(len(i), n).sum(0)
        if start == 0:
            decoder = decoder_nll(schedule, xi[:n], eps[:n], log_var[:n], x0, levels, data_range, grid)
    return prior, kl, decoder


def ddpm_vlb_bits_per_dim(score_fn: ScoreFn, schedule: DiscreteSchedule, x_discrete: torch.Tensor,
                          **kwargs) -> torch.Tensor:
    """The DDPM bound (L_T + sum_{i=2}^T L_{i-1} + L_0) / (D ln 2) in bits per dimension, shape (N,);
    an upper bound on -log2 p(k) / D of the discrete model. Keywords as ``ddpm_vlb_terms``."""
    prior, kl, decoder = ddpm_vlb_terms(score_fn, schedule, x_discrete, **kwargs)
    return (prior + kl + decoder) / (x_discrete[0].numel() * math.log(2))
