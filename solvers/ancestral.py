"""Discrete-time reverse chains: ancestral sampling, the reverse-diffusion predictor and DDIM.

Notation per step from t = t_i to s = t_{i+1} < t: (m_t, s_t) the marginal coefficients and the exact
forward transition x_t = a x_s + G z, a = m_t/m_s, G^2 = s_t^2 - a^2 s_s^2 (``SDE.transition``).
Each ``*_step(ctx, ...)`` builds its coefficient tables once and returns ``step(x, i, t, s) -> x``,
shared by the sampler of the same name and the PC predictors.
"""

from __future__ import annotations

import torch
from sde_diffusion import checks
from sde_diffusion.models.score_model import convert
from sde_diffusion.reverse import reverse_coefs
from sde_diffusion.schedule import learned_log_variance

from .base import Context, Option, choice, grid_options, register, unit_interval, vp_type


def _ancestral_tables(ctx: Context):
    """(1/a, G^2/s_t, s_t, G^2, G^2 s_s^2/s_t^2, m_t, m_s G^2/s_t^2, a s_s^2/s_t^2) per step t -> s of the
    grid, float64 (``SDE.transition``); the step is x <- (x - (G^2/s_t) eps) / a + sigma z, eps = -s_t score,
    sigma^2 = G^2, the posterior variance G^2 s_s^2/s_t^2 or the learned mix; the last two are the posterior
    mean's weights of x0 and x_t, mu = (m_s G^2/s_t^2) x0 + (a s_s^2/s_t^2) x_t (the same mean)."""
    t, s = ctx.grid64[:-1], ctx.grid64[1:]
    a, G = ctx.sde.transition(s, t)
    (m_t, s_t), (m_s, s_s) = ctx.sde.marginal(t), ctx.sde.marginal(s)
    G2, st2 = G.square(), s_t.square()
    return 1 / a, G2 / s_t, s_t, G2, G2 * s_s.square() / st2, m_t, m_s * G2 / st2, a * s_s.square() / st2


def ancestral_step(ctx: Context, variance: str = "auto", clip: float | None = None):
    if variance == "auto":
        variance = "learned" if ctx.score.learned_variance else ctx.score.fixed_variance or (
            "beta" if vp_type(ctx.sde) else "beta_tilde")
    if variance == "learned" and not ctx.score.learned_variance:
        raise ValueError("variance 'learned' needs a score_fn with a learned variance (a ScoreModel with "
                         "learned_variance=True, called as the model itself).")
    tables = _ancestral_tables(ctx)
    c1, c2, st, beta, bt, mt, cx0, cxt = (ctx.cast(c) for c in tables)
    sigma = {"beta": ctx.cast(tables[3].sqrt()), "beta_tilde": ctx.cast(tables[4].sqrt())}.get(variance)
    last = ctx.steps - 1 if ctx.at_data else None  # Algorithm 2: z = 0 at i = 1 (its variance unused)
    kind = ctx.score.variance_kind

    def eps_v(x, i, t):
        if variance == "learned":
            score, v = ctx.score.with_v(x, t.expand(x.shape[0]))
            return -st[i] * score, v
        return -st[i] * ctx.score_at(x, t), None

    def step(x, i, t, s):
        eps, v = eps_v(x, i, t)
        if clip is None:
            mean = c1[i] * (x - c2[i] * eps)
        else:  # DDPMScheduler's clip_sample: the posterior mean at x0_hat clamped to [-clip, clip]
            mean = cx0[i] * convert(eps, "eps", "x0", x, mt[i], st[i]).clamp(-clip, clip) + cxt[i] * x
        if i == last:
            return mean
        std = (0.5 * learned_log_variance(v, beta[i], bt[i], kind)).exp() if variance == "learned" else sigma[i]
        return mean + std * ctx.noise(x)
    return step


@register("ancestral", "sde", 1, {"variance": Option("auto", choice("auto", "beta", "beta_tilde", "learned")),
                                   "clip": Option(None, checks.positive)}, chain=True)
def ancestral(ctx: Context, x: torch.Tensor, variance: str, clip: float | None) -> torch.Tensor:
    """Ancestral sampling from p(x_s | x_t) = q(x_s | x_t, x0_hat) with Tweedie's x0_hat, on the exact
    transition x_t = a x_s + G z (``SDE.transition``):
        x_s = (x_t + G^2 score) / a + sigma z = 1/sqrt(alpha) (x_t - beta/sqrt(1 - abar) eps) + sigma z,
    sigma^2 = G^2 (``beta``), the posterior variance G^2 s_s^2 / s_t^2 (``beta_tilde``) or, for a model
    with a learned variance (``learned``, Nichol & Dhariwal 2021 eq. 15), exp(v log G^2 + (1 - v) log
    (G^2 s_s^2 / s_t^2)) elementwise with the model's v at (x_t, t): the step's own two extremes, so a
    coarse grid gets the variances recomputed for its steps (iDDPM sec. 4); v is read by the model's
    convention (``learned_log_variance``: this toolkit's weight, diffusers' learned_range or learned).
    ``auto`` takes ``learned`` when the score_fn has it, else the fixed variance the model states (a
    diffusers scheduler's fixed_small / fixed_large), else ``beta`` on VP-type SDEs (DDPM's choice, as Song et al.) and
    ``beta_tilde`` otherwise (for VE this is SMLD's ancestral rule, Song et al. 2021 eq. 47); the two
    err at O(1/steps) with opposite signs.
    On a chain's grid (``sample(..., schedule=...)``, its ``embedding()`` as the SDE) this is DDPM
    Algorithm 2 (Ho et al. 2020): between knots a = sqrt(alpha'_k), G^2 = beta'_k and G^2 s_s^2 / s_t^2 =
    beta_tilde'_k, the chain's own (recomputed for a respaced chain), eps = -sqrt(1 - abar'_k) score is a
    chain-trained model's own eps, and z = 0 at the last step, which lands on the data (no Tweedie step):
    its variance, beta_tilde'_1 = 0 (which DDPM's and iDDPM's code clip to beta_tilde'_2 where a log
    variance needs it, as ``vlb`` does), is never used.
    ``clip`` c (diffusers' ``clip_sample_range`` with ``clip_sample=True``): each step's mean is the
    posterior mean q(x_s | x_t, x0) at Tweedie's x0_hat clamped to [-c, c], the last step of a chain
    included (sample's own final Tweedie step on other grids is not clamped).
    Draws: one z per step (none at a chain's last step).
    Weak order 1 (tests/test_solvers_weak_order.py)."""
    return ctx.run(x, ancestral_step(ctx, variance, clip))


def reverse_diffusion_step(ctx: Context):
    # the reverse drift A x + B score of the step's (a - 1, G^2), for all K steps at once
    a, G = ctx.sde.transition(ctx.grid64[1:], ctx.grid64[:-1])
    A, B = reverse_coefs(a - 1, G.square())
    keep, gain, G = ctx.cast(1 - A), ctx.cast(-B), ctx.cast(G)

    def step(x, i, t, s):
        return keep[i] * x + gain[i] * ctx.score_at(x, t) + G[i] * ctx.noise(x)
    return step


@register("reverse_diffusion", "sde", 1)
def reverse_diffusion(ctx: Context, x: torch.Tensor) -> torch.Tensor:
    """The reverse-diffusion predictor (Song et al. 2021, eq. 46), ``ReverseSDE.discretize`` tabulated:
        x_s = x_t - f_i + G_i^2 score(x_t, t) + G_i z,   f_i = (a - 1) x_t,
    with the transition's (a, G) from t_{i+1} to t_i, once for all steps. Draws: one z per step.
    Weak order 1 (tests/test_solvers_weak_order.py)."""
    return ctx.run(x, reverse_diffusion_step(ctx))


def _ddim_chain_check(schedule) -> None:
    """A chain from diffusers' spacings must be one DDIMScheduler runs (``ddim_scheduler_mismatch``)."""
    why = getattr(schedule, "ddim_scheduler_mismatch", lambda: None)()
    if why is not None:
        raise ValueError(f"ddim on this chain would not reproduce DDIMScheduler: {why}. Use 'leadingK' (its "
                         f"default), 'trailingK' with K dividing the steps, or respace(K) for a consistent chain.")


@register("ddim", "ode", 1, {"eta": Option(0.0, unit_interval), "clip": Option(None, checks.positive),
                             **grid_options()}, vp_only=True, noisy=lambda o: o["eta"] > 0, chain=_ddim_chain_check)
def ddim(ctx: Context, x: torch.Tensor, eta: float, clip: float | None) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) with x0_hat = (x_t + s_t^2 score)/m_t, eps_hat = -s_t score:
        x_s = m_s x0_hat + sqrt(s_s^2 - sigma^2) eps_hat + sigma z,  sigma = eta sqrt(G^2 s_s^2 / s_t^2),
    i.e. x_s = A x_t + B score + sigma z. eta = 0 is deterministic; eta = 1 is ancestral (beta_tilde).
    ``clip`` c (diffusers' clip_sample): x0_hat clamped to [-c, c] in the first term, eps_hat unclamped
    (DDIMScheduler's use_clipped_model_output=False). On a chain's grid (``sample(..., schedule=...)``)
    the last step lands on the data, s = 0: x0_hat itself (DDIMScheduler's final alpha_cumprod 1);
    a chain of diffusers' spacings that DDIMScheduler cannot run is refused (``_ddim_chain_check``).
    Draws: one z per step when eta > 0, none at eta = 0.
    Weak order 1 (tests/test_solvers_weak_order.py) when eta > 0."""
    m, s = ctx.marginals()
    a, G = ctx.sde.transition(ctx.grid64[1:], ctx.grid64[:-1])
    sigma = eta * G * s[1:] / s[:-1]
    direction = (s[1:].square() - sigma.square()).clamp_min(0).sqrt()
    A = 1 / a
    B = A * s[:-1].square() - direction * s[:-1]
    A, B, sigma = ctx.cast(A), ctx.cast(B), ctx.cast(sigma)
    m_t, s_t, m_s, direction = (ctx.cast(c) for c in (m[:-1], s[:-1], m[1:], direction))

    def step(x, i, t, s):
        if clip is None:
            x = A[i] * x + B[i] * ctx.score_at(x, t)
        else:
            score = ctx.score_at(x, t)
            x0 = convert(score, "score", "x0", x, m_t[i], s_t[i]).clamp(-clip, clip)
            x = m_s[i] * x0 - direction[i] * s_t[i] * score
        return x + sigma[i] * ctx.noise(x) if eta > 0 else x
    return ctx.run(x, step)
