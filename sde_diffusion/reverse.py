"""The reverse-time SDE and the probability-flow ODE of a forward SDE, for a given score.

Anderson (1982) / Song et al. (2021, eqs. 6 and 13), written in forward time t and run from T to 0:
    reverse SDE:       dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dw_bar
    probability flow:  dx = [f(t) x - g(t)^2 score(x, t) / 2] dt
Both come from one formula with c = 1 or 1/2: drift f - c g^2 score, diffusion g or 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import checks
from .checks import Time, bcast
from .sde import SDE, ScoreFn


@dataclass(frozen=True)
class ReverseSDE:
    """A view of ``sde`` reversed in time with ``score_fn``; holds no state of its own."""

    sde: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    @property
    def T(self) -> float:
        return self.sde.T

    @property
    def score_weight(self) -> float:
        """c in f - c g^2 score: 1 for the reverse SDE, 1/2 for the probability-flow ODE."""
        return 0.5 if self.probability_flow else 1.0

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """score_fn(x, t) with t as a (N,) tensor, checked to be shaped like x."""
        return checks.same_shape("score_fn", self.score_fn(x, t), x)

    def drift(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """f(t) x - c g(t)^2 score(x, t)."""
        t = checks.time(t, self.T, batch=x.shape[0], like=x)
        g2 = self.sde.diffusion(t).square()
        return self.sde.drift(x, t) - self.score_weight * bcast(g2, x) * self.score(x, t)

    def diffusion(self, t: Time) -> torch.Tensor:
        """g(t) for the reverse SDE, 0 for the probability-flow ODE."""
        g = self.sde.diffusion(t)
        return torch.zeros_like(g) if self.probability_flow else g

    def discretize(self, x: torch.Tensor, t: Time, dt: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from t to t - dt:  x_{t-dt} = x_t - f_i + c G_i^2 score + [G_i z].

        Returns (rev_f, rev_G) with rev_f = f_i - c G_i^2 score(x, t) (to be subtracted) and
        rev_G = G_i (0 for the probability flow), from the forward ``SDE.discretize``.
        """
        t = checks.time(t, self.T, batch=x.shape[0], like=x)
        f, G = self.sde.discretize(x, t, dt)
        rev_f = f - self.score_weight * bcast(G.square(), x) * self.score(x, t)
        return rev_f, (torch.zeros_like(G) if self.probability_flow else G)
