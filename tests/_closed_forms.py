"""Closed forms the transcription and order tests build their own tables from (never the package's
SDE or schedule objects), and the one-call runner of a registered sampler on an explicit grid.

VP with beta(t) = b0 + t (b1 - b0):  B(t) = b0 t + (b1 - b0) t^2 / 2,  m = e^{-B/2},  s^2 = 1 - e^{-B},
    f = -beta/2,  g = sqrt(beta),  and the inverse of lambda = log(m/s) (Lu et al. 2022, appendix):
    B = log(1 + e^{-2 lambda}),  t = (-b0 + sqrt(b0^2 + 2 (b1 - b0) B)) / (b1 - b0).
VE with sigma(t) = a (b/a)^t:  m = 1,  s^2 = sigma^2 - a^2,  f = 0,  g = sigma sqrt(2 log(b/a)).
"""

from __future__ import annotations

import math

import torch

from sde_diffusion import VESDE, VPSDE
from solvers.base import METHODS, Context, CountingScore

B0, B1 = 0.1, 20.0          # VP beta_min, beta_max
SMIN, SMAX = 0.01, 50.0     # VE sigma_min, sigma_max
F64 = torch.float64

# a DDPM chain written from its betas (for transcription tests of the chain)
CHAIN_T, CHAIN_B1, CHAIN_BT = 6, 0.03, 0.55          # a short chain with large, unequal steps


def tables(T=CHAIN_T, b1=CHAIN_B1, bT=CHAIN_BT):
    """beta, alpha, abar, abar_prev, beta_tilde of DDPM's linear chain (Ho et al. 2020, eq. 4-7)."""
    beta = b1 + torch.arange(T, dtype=F64) / (T - 1) * (bT - b1)
    alpha = 1 - beta
    abar = torch.cumprod(alpha, 0)
    prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    return beta, alpha, abar, prev, (1 - prev) / (1 - abar) * beta


# a non-uniform grid from T = 1 down to eps: unequal steps in t and in log-SNR alike
GRID = torch.tensor([1.0, 0.83, 0.71, 0.52, 0.44, 0.27, 0.13, 0.06, 0.02], dtype=F64)


def vp(t):
    """(m, s, f, g) of the linear-beta VP-SDE at t (float64 tensor)."""
    beta, B = B0 + t * (B1 - B0), B0 * t + 0.5 * (B1 - B0) * t**2
    return torch.exp(-B / 2), torch.sqrt(1 - torch.exp(-B)), -beta / 2, torch.sqrt(beta)


def ve(t):
    """(m, s, f, g) of the VE-SDE at t."""
    sig = SMIN * (SMAX / SMIN) ** t
    g = sig * math.sqrt(2 * math.log(SMAX / SMIN))
    return torch.ones_like(t), torch.sqrt(sig**2 - SMIN**2), torch.zeros_like(t), g


def vp_lam(t):
    m, s, _, _ = vp(t)
    return torch.log(m / s)


def vp_t_of_lam(lam):
    B = torch.log1p(torch.exp(-2 * lam))
    return (-B0 + torch.sqrt(B0**2 + 2 * (B1 - B0) * B)) / (B1 - B0)


SDES = {"vp": (VPSDE(B0, B1), vp), "ve": (VESDE(SMIN, SMAX), ve)}


def score(x, t):
    """A smooth nonlinear stand-in for a score model, with t of shape (N,)."""
    t = t[:, None]
    return -x / (0.3 + t) + 0.5 * torch.sin(3 * x) * t + 0.2 * torch.cos(x[:, :1] + t)


def run(method: str, sde, grid: torch.Tensor, x: torch.Tensor, generator=None, **options) -> torch.Tensor:
    """The registered sampler ``method`` on the explicit time ``grid`` from state x (no denoising)."""
    spec = METHODS[method]
    opts = spec.bind(sde, len(grid) - 1, options)
    opts.pop("grid", None), opts.pop("rho", None)
    ctx = Context(sde, CountingScore(score), grid.clone(), grid.clone(), generator)
    return spec.fn(ctx, x.clone(), **opts)


class Draws:
    """``sample(noise=...)``: a fixed sequence of n standard-normal draws shaped ``shape``, replayed from
    the start by every user (``k`` counts the draws taken)."""

    def __init__(self, shape, n: int = 64, seed: int = 5):
        self.z = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=F64)
        self.k = 0

    def __call__(self, x):
        self.k += 1
        return self.z[self.k - 1].clone()


def start(n: int = 16, d: int = 3, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn((n, d), generator=torch.Generator().manual_seed(11), dtype=F64)


def at(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar time broadcast to the batch, as the samplers call the score."""
    return t.expand(x.shape[0])


def iddpm_kept_steps(T: int, spec: str) -> list[int]:
    """The steps improved DDPM's released ``space_timesteps(T, spec)`` keeps, 1-based (theirs count from 0):
    "ddimK": the first stride c = 1, 2, ... with exactly K multiples of c below T; otherwise section counts
    over near-equal blocks (the first T mod n one step longer), each block's picks at the rounded
    (half to even) running sum of the fractional stride (block - 1)/(count - 1), from the block's start."""
    if spec.startswith("ddim"):
        want = int(spec[4:])
        c = next(c for c in range(1, T) if -(-T // c) == want)   # ceil(T / c) multiples of c in 0..T-1
        return [1 + c * j for j in range(want)]
    counts = [int(p) for p in spec.split(",")]
    base, longer = T // len(counts), T % len(counts)
    out, first = [], 0
    for n, count in enumerate(counts):
        length = base + 1 if n < longer else base
        frac = 1 if count == 1 else (length - 1) / (count - 1)
        acc = 0.0
        for _ in range(count):
            out.append(first + round(acc) + 1)
            acc += frac
        first += length
    return sorted(set(out))
