"""A denoiser of the variance-exploding view as a score model under any SDE.

k-diffusion and EDM (Karras et al. 2022) train D(x, sigma) ~ E[y | x] for x = y + sigma n,
n ~ N(0, I). Under an SDE with x_t = m(t) y + s(t) z the same data seen as x_t / m = y + (s/m) z is
that VE view, so (Karras et al. 2022, eq. 10 with s(t) = m, sigma(t) = s/m)
    x_ve = x_t / m,      sigma = s / m,      x0(x_t, t) = D(x_t / m(t), s(t) / m(t)),
and ``ScoreModel(..., "x0")`` turns x0 into score = -(x_t - m x0) / s^2.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..checks import bcast
from ..sde import SDE
from .score_model import ScoreModel


class VEDenoiser(nn.Module):
    """``net(x_t, t[, y]) = D(x_t / m(t), s(t) / m(t)[, y])``: the x0 prediction of a VE denoiser."""

    def __init__(self, denoiser: Callable, sde: SDE):
        super().__init__()
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable D(x, sigma[, y]), got {type(denoiser).__name__}.")
        self.denoiser, self.sde = denoiser, sde

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        m, s = self.sde.marginal(t)
        x_ve, sigma = x / bcast(m, x), s / m
        return self.denoiser(x_ve, sigma) if y is None else self.denoiser(x_ve, sigma, y)


def from_denoiser(denoiser: Callable, sde: SDE) -> ScoreModel:
    """A ``ScoreModel`` under ``sde`` from a VE denoiser D(x, sigma[, y]) (k-diffusion / EDM convention)."""
    return ScoreModel(VEDenoiser(denoiser, sde), sde, "x0")
