"""The discrete DDPM forward process (Ho et al. 2020) and its continuous-time limit.

q(x_i | x_0) = N(sqrt(abar_i) x_0, (1 - abar_i) I),  abar_i = prod_{j<=i} (1 - beta_j),  i = 1..T.
As T grows with beta_i = beta(i/T)/T, abar_i -> exp(-integral_0^{i/T} beta): the VP-SDE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from . import checks
from .checks import bcast
from .sde import VPSDE, CosineVPSDE, SDE


@dataclass(frozen=True)
class DDPMSchedule:
    """T noise levels beta_1..beta_T, ``linear`` between beta_1 and beta_T or ``cosine``
    (Nichol & Dhariwal 2021, offset s, betas clipped at 0.999). Steps are 1-based as in the paper.
    Tables are float64 on the CPU; lookups follow the device and dtype of the tensor they serve.
    """

    T: int = 1000
    beta_1: float = 1e-4
    beta_T: float = 0.02
    kind: str = "linear"
    s: float = 0.008

    def __post_init__(self):
        checks.positive_int("T", self.T)
        checks.one_of("schedule kind", self.kind, ("linear", "cosine"))
        if self.kind == "linear":
            if not (0 < self.beta_1 < 1):
                raise ValueError(f"beta_1 must lie in (0, 1), got {self.beta_1}.")
            if not (self.beta_1 <= self.beta_T < 1):
                raise ValueError(f"beta_T must lie in [beta_1, 1) = [{self.beta_1}, 1), got {self.beta_T}.")
        else:
            checks.positive("s", self.s)

    @cached_property
    def betas(self) -> torch.Tensor:
        """beta_1..beta_T, shape (T,)."""
        if self.kind == "linear":
            return torch.linspace(self.beta_1, self.beta_T, self.T, dtype=torch.float64)
        i = torch.arange(self.T + 1, dtype=torch.float64)
        f = torch.cos((i / self.T + self.s) / (1 + self.s) * math.pi / 2).square()
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)

    @cached_property
    def alphas(self) -> torch.Tensor:
        """alpha_i = 1 - beta_i."""
        return 1 - self.betas

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        """abar_i = prod_{j<=i} alpha_j, shape (T,)."""
        return torch.cumprod(self.alphas, 0)

    @cached_property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        """abar_{i-1}, with abar_0 = 1."""
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    @cached_property
    def posterior_variance(self) -> torch.Tensor:
        """beta_tilde_i = (1 - abar_{i-1}) / (1 - abar_i) beta_i, the variance of q(x_{i-1} | x_i, x_0)."""
        return (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod) * self.betas

    def _take(self, table: torch.Tensor, i, like: torch.Tensor) -> torch.Tensor:
        """table[i - 1] for 1-based steps i (int or (N,) tensor), on ``like``'s device/dtype."""
        idx = torch.as_tensor(i, device=table.device).long()
        if idx.device.type == "cpu" and bool(((idx < 1) | (idx > self.T)).any()):
            raise ValueError(f"step i must lie in 1..T = 1..{self.T}, got {i!r}.")
        return table[idx - 1].to(device=like.device, dtype=like.dtype)

    def q_sample(self, x0: torch.Tensor, i, noise: torch.Tensor) -> torch.Tensor:
        """x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) noise."""
        checks.float_tensor("x0", x0)
        checks.same_shape("noise", noise, x0)
        ab = self._take(self.alphas_cumprod, torch.as_tensor(i).expand(x0.shape[0]), x0)
        return bcast(ab.sqrt(), x0) * x0 + bcast((1 - ab).sqrt(), x0) * noise

    def posterior_mean_coefs(self, i, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c0, ct) with mu_tilde(x_i, x_0) = c0 x_0 + ct x_i (DDPM eq. 7):
        c0 = sqrt(abar_{i-1}) beta_i / (1 - abar_i),  ct = sqrt(alpha_i) (1 - abar_{i-1}) / (1 - abar_i)."""
        ab, ab_prev = (self._take(a, i, like) for a in (self.alphas_cumprod, self.alphas_cumprod_prev))
        beta, alpha = self._take(self.betas, i, like), self._take(self.alphas, i, like)
        return ab_prev.sqrt() * beta / (1 - ab), alpha.sqrt() * (1 - ab_prev) / (1 - ab)

    def sigma2(self, i, like: torch.Tensor, variance: str = "beta") -> torch.Tensor:
        """The reverse-step variance sigma_i^2 of DDPM Algorithm 2: ``beta`` (beta_i) or
        ``beta_tilde`` (beta_tilde_i; 0 at i = 1)."""
        checks.one_of("variance", variance, ("beta", "beta_tilde"))
        return self._take(self.betas if variance == "beta" else self.posterior_variance, i, like)

    def time(self, i) -> float | torch.Tensor:
        """The continuous time t = i / T of step i."""
        return i / self.T

    def to_sde(self) -> SDE:
        """The SDE this chain converges to as T -> infinity with step i <-> t = i/T:
        ``VPSDE(T beta_1, T beta_T)`` for ``linear``, ``CosineVPSDE(s)`` for ``cosine``."""
        if self.kind == "linear":
            return VPSDE(beta_min=self.T * self.beta_1, beta_max=self.T * self.beta_T)
        return CosineVPSDE(s=self.s)
