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


def score_weight(probability_flow: bool) -> float:
    """c in f - c g^2 score: 1 for the reverse SDE, 1/2 for the probability-flow ODE."""
    return 0.5 if probability_flow else 1.0


def reverse_coefs(f: torch.Tensor, g2: torch.Tensor, probability_flow: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) = (f, -c g^2), c = ``score_weight``: the reverse drift f x - c g^2 score is A x + B score.
    The one place the formula is written; f and g^2 are the forward drift coefficient and squared
    diffusion (or a step's (a - 1) and G^2, ``SDE.discretize``)."""
    return f, -score_weight(probability_flow) * g2


def drift_coefs(sde: SDE, t: Time, probability_flow: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``reverse_coefs`` of ``sde`` at t: (f(t), -c g(t)^2), each shaped like t."""
    return reverse_coefs(sde.drift_coef(t), sde.diffusion(t).square(), probability_flow)


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
        return score_weight(self.probability_flow)

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """score_fn(x, t) with t as a (N,) tensor, checked to be shaped like x."""
        return checks.same_shape("score_fn", self.score_fn(x, t), x)

    def drift(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """f(t) x - c g(t)^2 score(x, t) (``drift_coefs``)."""
        t = checks.time(t, self.T, batch=x.shape[0], like=x)
        A, B = drift_coefs(self.sde, t, self.probability_flow)
        return bcast(A, x) * x + bcast(B, x) * self.score(x, t)

    def diffusion(self, t: Time) -> torch.Tensor:
        """g(t) for the reverse SDE, 0 for the probability-flow ODE."""
        g = self.sde.diffusion(t)
        return torch.zeros_like(g) if self.probability_flow else g

    def discretize(self, x: torch.Tensor, t: Time, dt: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from t to t - dt:  x_{t-dt} = x_t - f_i + c G_i^2 score + [G_i z].

        Returns (rev_f, rev_G) with rev_f = f_i - c G_i^2 score(x, t) (to be subtracted; ``reverse_coefs``
        of the step's (a - 1, G_i^2)) and rev_G = G_i (0 for the probability flow), from ``SDE.discretize``.
        """
        t = checks.time(t, self.T, batch=x.shape[0], like=x)
        f, G = self.sde.discretize(x, t, dt)
        _, B = reverse_coefs(f, G.square(), self.probability_flow)
        return f + bcast(B, x) * self.score(x, t), (torch.zeros_like(G) if self.probability_flow else G)
