"""Predictor-corrector sampling (Song et al. 2021, Algorithms 4 and 5)."""

from __future__ import annotations

import torch
from sde_diffusion import checks

from .ancestral import ancestral_step, reverse_diffusion_step
from .base import Context, Option, choice, register
from .stochastic import euler_maruyama_step

PREDICTORS = {"reverse_diffusion": reverse_diffusion_step, "euler_maruyama": euler_maruyama_step,
              "ancestral": ancestral_step, "none": None}
CORRECTORS = ("langevin", "none")


def langevin(ctx: Context, x: torch.Tensor, t: torch.Tensor, snr: float, alpha: torch.Tensor) -> torch.Tensor:
    """One Langevin corrector step at time t:  x <- x + e score + sqrt(2 e) z,
    e = 2 alpha (snr mean||z|| / mean||score||)^2 with batch means of the per-sample norms, as Song
    et al. (per-sample ratios explode in low dimension where a score vanishes at a mode centre)."""
    g, z = ctx.score_at(x, t), ctx.noise(x)
    ratio = z.flatten(1).norm(dim=1).mean() / g.flatten(1).norm(dim=1).mean()
    e = 2 * alpha * (snr * ratio).square()
    return x + e * g + (2 * e).sqrt() * z


def _check(sde, steps: int, opts: dict) -> None:
    if opts["predictor"] == "none" and opts["corrector"] == "none":
        raise ValueError("pc needs a predictor or a corrector; allowed: any pair except none + none.")


@register("pc", "sde", 1, {"predictor": Option("reverse_diffusion", choice(*PREDICTORS)),
                          "corrector": Option("langevin", choice(*CORRECTORS)),
                          "snr": Option(0.16, checks.positive),
                          "corrector_steps": Option(1, checks.positive_int)}, check=_check)
def pc(ctx: Context, x: torch.Tensor, predictor: str, corrector: str, snr: float,
       corrector_steps: int) -> torch.Tensor:
    """Each step: the predictor moves x from t_i to t_{i+1}, then ``corrector_steps`` Langevin steps
    at t_{i+1} with alpha = a_i^2 = (m(t_i)/m(t_{i+1}))^2 (1 - beta_i for VP, 1 for VE). Predictor
    ``none`` + ``langevin`` is annealed Langevin dynamics (NCSN, Song & Ermon 2019) on levels t_1..t_K.
    Draws per step: the predictor's one z, then one z per corrector step.
    Weak order 1 with corrector none (tests/test_solvers_weak_order.py); none stated with langevin."""
    predict = PREDICTORS[predictor](ctx) if predictor != "none" else None
    alpha = ctx.cast(ctx.sde.transition(ctx.grid64[1:], ctx.grid64[:-1])[0].square())

    def step(x, i, t, s):
        x = predict(x, i, t, s) if predict is not None else x
        for _ in range(corrector_steps if corrector == "langevin" else 0):
            x = langevin(ctx, x, s, snr, alpha[i])
        return x
    return ctx.run(x, step)
