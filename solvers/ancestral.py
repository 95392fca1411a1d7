"""Discrete-time reverse chains: ancestral sampling, the reverse-diffusion predictor and DDIM.

Notation per step from t = t_i to s = t_{i+1} < t: (m_t, s_t) the marginal coefficients, a = m_t/m_s,
G^2 = s_t^2 - a^2 s_s^2 the variance of the exact forward transition x_t = a x_s + G z (``discretize``).
Each ``*_step(ctx, ...)`` builds its coefficient tables once and returns ``step(x, i, t, s) -> x``,
shared by the sampler of the same name and the PC predictors.
"""

from __future__ import annotations

import torch
from sde_diffusion.models.score_model import ScoreModel
from sde_diffusion.schedule import DiscreteSchedule, learned_log_variance
from sde_diffusion.sde import SDE

from .base import Context, Option, choice, grid_options, register, unit_interval, vp_type


def _schedule(name: str, value):
    if value is not None and not isinstance(value, DiscreteSchedule):
        raise ValueError(f"{name} must be a DDPMSchedule (or its .respace(K)) or None, got {type(value).__name__}.")
    return value


def _check_schedule(sde: SDE, steps: int, opts: dict) -> None:
    sched = opts["schedule"]
    if sched is not None and steps != sched.T:
        raise ValueError(f"with schedule= (a chain of T = {sched.T} steps) steps must equal T = {sched.T}, got {steps}.")
    if sched is not None and sde.prior_std != 1:
        raise ValueError(f"schedule= needs an SDE with prior N(0, I) (prior_std 1), got {sde.prior_std:g}.")
    if sched is not None and sde.T != 1:
        raise ValueError(f"schedule= runs DDPM step i at t_i (i/T) on [0, 1] and needs an SDE with T = 1, "
                         f"got T = {sde.T:g}.")


def _ancestral_tables(ctx: Context, variance: str, schedule: DiscreteSchedule | None):
    """(c1, c2, s_t, beta, beta_tilde) per step, float64; the step is
    x <- c1 (x - c2 eps) + sigma z, eps = -s_t score, sigma^2 = beta, beta_tilde or the learned mix."""
    if schedule is not None:  # DDPM Algorithm 2: steps i = T..1 at t_i, ending at x_0
        ctx.grid64 = torch.cat([schedule.times.flip(0), torch.zeros(1, dtype=torch.float64)])
        ctx.grid, ctx.at_data = ctx.cast(ctx.grid64), True
        alpha, abar = schedule.alphas.flip(0), schedule.alphas_cumprod.flip(0)
        beta, bt = schedule.betas.flip(0), schedule.posterior_variance_clipped.flip(0)
        return 1 / alpha.sqrt(), (1 - alpha) / (1 - abar).sqrt(), (1 - abar).sqrt(), beta, bt
    m, s = ctx.marginals()
    a = m[:-1] / m[1:]
    G2 = s[:-1].square() - (a * s[1:]).square()
    return 1 / a, G2 / s[:-1], s[:-1], G2, G2 * s[1:].square() / s[:-1].square()


def ancestral_step(ctx: Context, variance: str = "auto", schedule: DiscreteSchedule | None = None):
    if variance == "auto":
        variance = "learned" if ctx.score.learned_variance else "beta" if vp_type(ctx.sde) else "beta_tilde"
    if variance == "learned" and not ctx.score.learned_variance:
        raise ValueError("variance 'learned' needs a score_fn with a learned variance (a ScoreModel with "
                         "learned_variance=True, called as the model itself).")
    tables = _ancestral_tables(ctx, variance, schedule)
    c1, c2, st, beta, bt = (ctx.cast(c) for c in tables)
    sigma = {"beta": ctx.cast(tables[3].sqrt()), "beta_tilde": ctx.cast(tables[4].sqrt())}.get(variance)
    last = ctx.steps - 1 if schedule is not None else None  # Algorithm 2: z = 0 at i = 1
    on_chain = schedule is not None and isinstance(ctx.score.score_fn, ScoreModel)

    def eps_v(x, i, t):
        if on_chain:
            return ctx.score.on_chain(x, schedule, schedule.T - i)
        if variance == "learned":
            score, v = ctx.score.with_v(x, t.expand(x.shape[0]))
            return -st[i] * score, v
        return -st[i] * ctx.score_at(x, t), None

    def step(x, i, t, s):
        eps, v = eps_v(x, i, t)
        std = (0.5 * learned_log_variance(v, beta[i], bt[i])).exp() if variance == "learned" else sigma[i]
        mean = c1[i] * (x - c2[i] * eps)
        return mean if i == last else mean + std * ctx.noise(x)
    return step


@register("ancestral", "sde", 1, {"variance": Option("auto", choice("auto", "beta", "beta_tilde", "learned")),
                                 "schedule": Option(None, _schedule)}, check=_check_schedule)
def ancestral(ctx: Context, x: torch.Tensor, variance: str, schedule: DiscreteSchedule | None) -> torch.Tensor:
    """Ancestral sampling from p(x_s | x_t) = q(x_s | x_t, x0_hat) with Tweedie's x0_hat:
        x_s = (x_t + G^2 score) / a + sigma z = 1/sqrt(alpha) (x_t - beta/sqrt(1 - abar) eps) + sigma z,
    sigma^2 = G^2 (``beta``), the posterior variance G^2 s_s^2 / s_t^2 (``beta_tilde``) or, for a model
    with a learned variance (``learned``, Nichol & Dhariwal 2021 eq. 15), exp(v log G^2 + (1 - v) log
    (G^2 s_s^2 / s_t^2)) elementwise with the model's v at (x_t, t): the step's own two extremes, so a
    coarse grid gets the variances recomputed for its steps (iDDPM sec. 4). ``auto`` takes ``learned``
    when the score_fn has it, else ``beta`` on VP-type SDEs (DDPM's choice, as Song et al.) and
    ``beta_tilde`` otherwise (for VE this is SMLD's ancestral rule, Song et al. 2021 eq. 47). Both err at O(1/steps) with opposite signs: on VP and
    ring2d at 1000 uniform steps the NLL gap is +0.04 nats with ``beta``, -0.12 with ``beta_tilde``.
    With ``schedule`` it is DDPM Algorithm 2
    (Ho et al. 2020): steps = T, eps = -sqrt(1 - abar_i) score at t = t_i (a ScoreModel's own eps read
    with the chain's marginals, ``vlb.chain_prediction``: exact for a chain-trained model), z = 0 at i = 1, and no
    extra denoising step (the chain ends at x_0); a respaced ``DDPMSchedule.respace(K)`` runs its K
    steps with their recomputed beta'_k and beta_tilde'_k (beta_tilde'_1 clipped to beta_tilde'_2)."""
    return ctx.run(x, ancestral_step(ctx, variance, schedule))


def reverse_diffusion_step(ctx: Context):
    # ``discretize`` once for all K steps: x = 1 of shape (K, 1) gives f_i / x = a_i - 1 and G_i
    t, s = ctx.grid64[:-1], ctx.grid64[1:]
    f, G = ctx.sde.discretize(torch.ones_like(t)[:, None], t, t - s)
    keep, G2, G = ctx.cast(1 - f[:, 0]), ctx.cast(G.square()), ctx.cast(G)

    def step(x, i, t, s):
        return keep[i] * x + G2[i] * ctx.score_at(x, t) + G[i] * ctx.noise(x)
    return step


@register("reverse_diffusion", "sde", 1)
def reverse_diffusion(ctx: Context, x: torch.Tensor) -> torch.Tensor:
    """The reverse-diffusion predictor (Song et al. 2021, eq. 46) from the forward ``discretize``:
        x_s = x_t - f_i + G_i^2 score(x_t, t) + G_i z,   f_i = (a - 1) x_t,
    with (a_i - 1, G_i) tabulated once, so a step costs five tensor operations besides the score."""
    return ctx.run(x, reverse_diffusion_step(ctx))


@register("ddim", "ode", 1, {"eta": Option(0.0, unit_interval), **grid_options()}, vp_only=True)
def ddim(ctx: Context, x: torch.Tensor, eta: float) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) with x0_hat = (x_t + s_t^2 score)/m_t, eps_hat = -s_t score:
        x_s = m_s x0_hat + sqrt(s_s^2 - sigma^2) eps_hat + sigma z,  sigma = eta sqrt(G^2 s_s^2 / s_t^2),
    i.e. x_s = A x_t + B score + sigma z. eta = 0 is deterministic; eta = 1 is ancestral (beta_tilde)."""
    m, s = ctx.marginals()
    a = m[:-1] / m[1:]
    sigma = eta * ((s[:-1].square() - (a * s[1:]).square()) * s[1:].square() / s[:-1].square()).sqrt()
    A = m[1:] / m[:-1]
    B = A * s[:-1].square() - (s[1:].square() - sigma.square()).clamp_min(0).sqrt() * s[:-1]
    A, B, sigma = ctx.cast(A), ctx.cast(B), ctx.cast(sigma)

    def step(x, i, t, s):
        x = A[i] * x + B[i] * ctx.score_at(x, t)
        return x + sigma[i] * ctx.noise(x) if eta > 0 else x
    return ctx.run(x, step)
