"""The adaptive-step reverse-SDE solver of Jolicoeur-Martineau et al. 2021 ("Gotta Go Fast When
Generating Data with Score-Based Models", Algorithm 1): Euler-Maruyama paired with an improved-Euler
step on the same draw, their difference the local error estimate that sets the step size.

With the reverse drift F(x, t) = f(t) x - g(t)^2 score(x, t) (``reverse.drift_coefs``) and one z per
attempt, from x at t with step h:
    x'  = x - h F(x, t)      + sqrt(h) g(t) z           (Euler-Maruyama)
    x~  = x - h F(x', t - h) + sqrt(h) g(t - h) z
    x'' = (x' + x~) / 2                                  (improved Euler, the state kept on acceptance)
    delta = max(eps_abs, eps_rel max(|x'|, |x'_prev|)),  E = ||(x' - x'') / delta||_2 / sqrt(n)
elementwise over the n coordinates of a sample, x'_prev the x' of its last accepted step (x_T at the
start). E <= 1 accepts: x <- x'', t <- t - h. Accepted or not, h <- min(t - eps, theta h E^{-r}) with the
paper's theta = 0.9, r = 0.9 and h_init = 0.01 T; a rejected step is retried with a fresh draw.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from sde_diffusion import checks
from sde_diffusion.reverse import drift_coefs

from .base import Context, Option, register

THETA, R, H_INIT = 0.9, 0.9, 0.01


def _read(v: torch.Tensor) -> list:
    """The host read each attempt needs: [time left of the furthest-behind row, whether every error
    estimate is finite] (``tests/test_no_host_sync.py`` replaces it on the meta device)."""
    with checks.sync_allowed():
        return v.tolist()


def _attempt(ctx: Context, x, t, hp, prev, t_end, eps_abs: float, eps_rel: float):
    """One attempt of every row with step h = min(hp, t - t_end) (module docstring); a row already at
    t_end has h = 0 and stays. Returns (x, t, hp, prev, E) after the accept/reject, hp the next
    proposal theta h E^{-r}."""
    view = (-1,) + (1,) * (x.ndim - 1)
    h = torch.minimum(hp, t - t_end)
    z = ctx.noise(x)
    s = t - h
    a1, b1 = (c.view(view) for c in drift_coefs(ctx.sde, t))
    a2, b2 = (c.view(view) for c in drift_coefs(ctx.sde, s))
    hv, rh = h.view(view), h.sqrt().view(view)
    x1 = x - hv * (a1 * x + b1 * ctx.score(x, t)) + rh * ctx.sde.diffusion(t).view(view) * z
    x_tilde = x - hv * (a2 * x1 + b2 * ctx.score(x1, s)) + rh * ctx.sde.diffusion(s).view(view) * z
    x2 = (x1 + x_tilde) / 2
    delta = torch.maximum(eps_rel * torch.maximum(x1.abs(), prev.abs()), torch.full_like(x1, eps_abs))
    E = ((x1 - x2) / delta).flatten(1).square().mean(1).sqrt()
    live = h > 0
    accept = (E <= 1) & live
    t = torch.where(accept, torch.where(hp >= t - t_end, t_end, s), t)
    x = torch.where(accept.view(view), x2, x)
    prev = torch.where(accept.view(view), x1, prev)
    hp = torch.where(live, THETA * h * E.clamp_min(1e-30) ** -R, hp)
    return x, t, hp, prev, E


def _check(sde, steps, o):
    if (o["eps_abs"] is None) != (o["eps_rel"] is None):
        given = "eps_rel" if o["eps_abs"] is None else "eps_abs"
        raise ValueError(f"give both eps_abs and eps_rel or neither (both then 1/steps); got only {given}.")


@register("adaptive_sde", "sde", None, {"eps_abs": Option(None, checks.positive),
                                        "eps_rel": Option(None, checks.positive),
                                        "max_steps": Option(10_000, checks.positive_int)}, check=_check)
def adaptive_sde(ctx: Context, x: torch.Tensor, eps_abs: float | None, eps_rel: float | None,
                 max_steps: int) -> torch.Tensor:
    """The reverse SDE from T to eps with step sizes chosen per sample by the local error control of
    Jolicoeur-Martineau et al. 2021 (module docstring), to the tolerances ``eps_abs`` and ``eps_rel``,
    both 1/steps unless given (the paper uses eps_abs = 0.0078 on data in [-1, 1] and eps_rel 0.01
    to 0.05). NFE = 2 per attempt, set by the tolerances, not by ``steps``. Each row keeps its own t
    and h; the batch steps together until every row has reached eps, and a row that has arrived
    idles (h = 0). More than ``max_steps`` attempts is a ValueError. With ``return_trajectory`` or
    inpainting the control runs interval by interval of the ``steps`` grid, h carried across.
    Draws: one z per attempt, for the whole batch (a rejected attempt's draw is discarded).
    The accept/reject test depends on z, so accepted draws are not N(0, I): in few dimensions the
    output's spread is biased at every tolerance; with many (images) the norm averages the draws
    (tests/test_adaptive_sde.py). One host read per attempt (whether a row is left, finiteness)."""
    eps_abs = 1.0 / ctx.steps if eps_abs is None else eps_abs
    eps_rel = 1.0 / ctx.steps if eps_rel is None else eps_rel
    n, T = x.shape[0], float(ctx.grid64[0])
    state = {"hp": torch.full((n,), H_INIT * ctx.sde.T, device=x.device, dtype=x.dtype), "prev": x, "attempts": 0}
    bar = tqdm(total=T - float(ctx.grid64[-1]), desc=ctx.desc, disable=not ctx.progress, leave=False)

    def integrate(x, k, j):
        """Every row from grid time t_k to t_j."""
        t, t1 = ctx.grid[k].expand(n).clone(), ctx.grid[j]
        while True:
            x, t, state["hp"], state["prev"], E = _attempt(ctx, x, t, state["hp"], state["prev"], t1, eps_abs, eps_rel)
            state["attempts"] += 1
            left, finite = _read(torch.stack([(t - t1).max(), E.isfinite().all().to(t.dtype)]))
            if not finite:
                raise ValueError("adaptive_sde: the local error estimate is NaN/Inf (the score or the state "
                                 "is not finite).")
            bar.update(T - float(ctx.grid64[j]) - left - bar.n)
            if left <= 0:
                return x
            if state["attempts"] >= max_steps:
                raise ValueError(f"adaptive_sde took max_steps={max_steps} attempts without reaching t = "
                                 f"{float(ctx.grid64[-1]):g}: loosen eps_abs/eps_rel or raise max_steps.")

    try:
        if ctx.known is not None or ctx.trajectory is not None:
            return ctx.run(x, lambda y, i, t, s: integrate(y, i, i + 1))
        return ctx.record_outputs(torch.stack([x, integrate(x, 0, ctx.steps)]))
    finally:
        bar.close()
