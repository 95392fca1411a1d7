"""The exact law of a sampler's output on Gaussian data, for weak-order tests without Monte Carlo noise.

Data N(mu, diag(s0^2)) under a linear SDE has p_t = N(m_t mu, diag(v_t)), v_t = m_t^2 s0^2 + s_t^2, and
the linear score -(x - m_t mu)/v_t (m_t, s_t from ``_closed_forms``, never the package's SDE). A sampler
whose update is affine in the state and in its draws (every rule with step sizes fixed by the grid)
then returns, per coordinate, x = b + sum_j c_j z_j with the prior draw z_0 and independent
z_j ~ N(0, 1): a Gaussian of mean b and variance sum_j c_j^2. One batched run reads b and every c_j
exactly: row 0 gets all draws 0, row j + 1 gets draw j = 1 and the others 0 (``sample(noise=...)``),
and one last row all draws 1 checks that the map is affine (it must equal b + sum_j c_j).

The weak error is the largest error of the output's mean and variance against p_eps (no Tweedie
step), over coordinates; its slope in log(steps) is the weak order.
"""

from __future__ import annotations

import math

import torch

from _closed_forms import F64
from solvers import sample

MU = torch.tensor([0.5, -1.0, 0.2], dtype=F64)
S0 = torch.tensor([0.1, 0.5, 1.5], dtype=F64)


def gaussian_score(closed_form, mu=MU, s0=S0):
    """score(x, t) of N(mu, diag(s0^2)) pushed through the SDE with marginals ``closed_form(t)``."""
    def score(x, t):
        m, s = (c[:, None] for c in closed_form(t)[:2])
        return -(x - m * mu) / (m**2 * s0**2 + s**2)
    return score


def target(closed_form, t: float, mu=MU, s0=S0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) of p_t per coordinate."""
    m, s = (c.reshape(()) for c in closed_form(torch.tensor([t], dtype=F64))[:2])
    return m * mu, m**2 * s0**2 + s**2


class UnitDraws:
    """sample(noise=...): draw j is 1 in row j + 1 and in the last row, 0 elsewhere; counts the draws."""

    def __init__(self):
        self.count = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.zeros_like(x)
        if self.count + 1 < x.shape[0] - 1:
            z[self.count + 1] = 1
        z[-1] = 1
        self.count += 1
        return z


def output_law(method: str, sde, closed_form, steps: int, eps: float, mu=MU, s0=S0,
               **options) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) per coordinate of ``method``'s output at eps, exactly (module docstring);
    AssertionError if the run is not affine in its draws."""
    score, d = gaussian_score(closed_form, mu, s0), mu.shape[0]
    run = lambda n, draws: sample(score, sde, (n, d), method, steps, eps=eps, denoise=False,  # noqa: E731
                                  dtype=F64, noise=draws, **options).x
    counting = UnitDraws()
    run(2, counting)                              # counts the draws J
    draws = UnitDraws()
    x = run(counting.count + 2, draws)            # rows: none, each draw alone, all draws
    assert draws.count == counting.count, f"{method} made {draws.count} draws, then {counting.count}"
    b, c = x[0], x[1:-1] - x[0]
    gap = (x[-1] - (b + c.sum(0))).abs().max().item()
    assert gap <= 1e-9 * (1 + x.abs().max().item()), f"{method} is not affine in its draws (gap {gap:.3g})"
    return b, c.square().sum(0)


def weak_error(method: str, sde, closed_form, steps: int, eps: float, **options) -> float:
    """max over coordinates of |mean - m mu| and |variance - v| at eps."""
    mean, var = output_law(method, sde, closed_form, steps, eps, **options)
    m_ref, v_ref = target(closed_form, eps)
    return max((mean - m_ref).abs().max().item(), (var - v_ref).abs().max().item())


def slope(steps, errors) -> float:
    """Least-squares slope of -log(error) against log(steps): the observed order."""
    xs, ys = [math.log(s) for s in steps], [-math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
