"""Time grids t_0 = T > t_1 > ... > t_K = eps for the samplers, as float64 CPU tensors of shape (K+1,).

- ``uniform``: t_i = T - i (T - eps) / K.
- ``edm``: uniform in sigma^(1/rho) for the noise-to-signal level sigma(t) = s(t)/m(t)
  (Karras et al. 2022, eq. 5):  sigma_i = (sigma_max^(1/rho) + i/K (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.
- ``logsnr``: uniform in lambda(t) = log(m(t)/s(t)) = -log sigma(t) (Lu et al. 2022), the rho -> inf
  limit of ``edm``.
sigma(t) is increasing for every SDE here, so t(sigma) is found by bisection on ``sde.marginal``
(generic; no SDE needs an inverse of its own).
- ``chain_grid``: a discrete chain's own model times t = tau_K/T, ..., tau_1/T, then t = 0 (the data).
Grids are built once, by ``sample``, before any sampling (and before anything built from them).
"""

from __future__ import annotations

import torch
from sde_diffusion import checks
from sde_diffusion.schedule import DiscreteSchedule
from sde_diffusion.sde import SDE

GRIDS = ("uniform", "edm", "logsnr")


def sigma(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """The noise-to-signal level sigma(t) = s(t) / m(t)."""
    m, s = sde.marginal(t)
    return s / m


def _invert_sigma(sde: SDE, target: torch.Tensor, eps: float) -> torch.Tensor:
    """t in [eps, T] with sigma(t) = target, by 64 bisection steps (to float64 resolution)."""
    lo, hi = torch.full_like(target, eps), torch.full_like(target, sde.T)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        below = sigma(sde, mid) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def time_grid(sde: SDE, steps: int, eps: float, kind: str = "uniform", rho: float = 7.0) -> torch.Tensor:
    """The descending grid of ``steps`` + 1 times from T to ``eps`` of the given ``kind``."""
    checks.positive_int("steps", steps)
    checks.one_of("grid", kind, GRIDS)
    checks.positive("rho", rho)
    if not (isinstance(eps, (int, float)) and 0 < eps < sde.T):
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T:g}), got {eps!r}.")
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        t = sde.T + u * (eps - sde.T)
        t[0], t[-1] = sde.T, eps  # exact ends, free of rounding
        return t
    ends = sigma(sde, torch.tensor([sde.T, eps], dtype=torch.float64))
    if kind == "edm":
        hi, lo = ends ** (1 / rho)
        target = (hi + u * (lo - hi)) ** rho
    else:
        hi, lo = ends.log()
        target = (hi + u * (lo - hi)).exp()
    t = _invert_sigma(sde, target, eps)
    t[0], t[-1] = sde.T, eps
    return t


def chain_grid(sde: SDE, steps: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """The grid of a chain's K steps, (tau_K/T, ..., tau_1/T, 0) (``schedule.times`` reversed, then the
    data), after checking that ``steps`` is K and that ``sde`` has the chain's marginals there,
    m(tau_k/T) = sqrt(abar_{tau_k}) (the chain's ``embedding()``, to float64 rounding)."""
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(f"schedule must be a DDPMSchedule (or its .respace(K)) or None, got {type(schedule).__name__}.")
    if steps != schedule.T:
        raise ValueError(f"with schedule= (a chain of T = {schedule.T} steps) steps must equal T = {schedule.T}, "
                         f"got {steps}.")
    if sde.prior_std != 1:
        raise ValueError(f"schedule= needs an SDE with prior N(0, I) (prior_std 1), got {sde.prior_std:g}.")
    if sde.T != 1:
        raise ValueError(f"schedule= runs step k at t = tau_k / T on [0, 1] and needs an SDE with T = 1, got T = {sde.T:g}.")
    m = sde.marginal(schedule.times)[0]
    gap = float((m / schedule.alphas_cumprod.sqrt() - 1).abs().max())
    if gap > 1e-10:
        raise ValueError(f"schedule= reads the model on the chain's own marginals: sde must be the chain's embedding "
                         f"(schedule.embedding(), a chain-trained model's model.sde); {sde} differs from them by "
                         f"{gap:.2g} (relative, in m) at the chain's times.")
    return torch.cat([schedule.times.flip(0), torch.zeros(1, dtype=torch.float64)])
