"""The discrete DDPM forward process (Ho et al. 2020), its embedding in continuous time, its
continuous-time limit, and respacing.

q(x_i | x_0) = N(sqrt(abar_i) x_0, (1 - abar_i) I),  abar_i = prod_{j<=i} (1 - beta_j),  i = 1..T.
The chain is exactly the ``DiscreteVPSDE`` of its abar observed at t = i/T (``embedding()``): the one
way a chain-trained model is read. As T grows with beta_i = beta(i/T)/T, abar_i -> exp(-integral_0^{i/T}
beta): the VP-SDE (``to_sde()``, the continuous limit; for teaching, not for reading models).

Respacing (Nichol & Dhariwal 2021, sec. 4): a subsequence tau_1 < ... < tau_K <= T of the steps is a
chain of its own with abar'_k = abar_{tau_k} and beta'_k = 1 - abar_{tau_k} / abar_{tau_{k-1}}; its
posterior variances beta_tilde'_k follow from these, and the model is still called at t = tau_k / T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from . import checks
from .checks import bcast
from .sde import VPSDE, CosineVPSDE, DiscreteVPSDE, SDE


DIFFUSERS_SPACINGS = ("leading", "trailing", "linspace")


def _diffusers_timesteps(spacing: str, T: int, K: int) -> np.ndarray:
    """diffusers' 0-based timesteps of ``set_timesteps(K)`` for a ``timestep_spacing`` (steps_offset 0)."""
    i = np.arange(K)
    if spacing == "leading":
        return i * (T // K)
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / K)).astype(np.int64) - 1
    return np.linspace(0, T - 1, K).round().astype(np.int64)


def _int(text: str, spec) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"respace({spec!r}): expected K, \"K_1,...,K_n\", \"ddimK\", \"leadingK\", \"trailingK\" or "
                         f"\"linspaceK\" with integers K.") from None


class DiscreteSchedule:
    """The tables every discrete chain derives from its betas (``DDPMSchedule``, ``RespacedSchedule``).
    A subclass defines ``T`` (its number of steps), ``betas`` (T,) and ``times`` (T,), the model's
    continuous time t_i of step i. Steps are 1-based; tables are float64 on the CPU."""

    T: int
    betas: torch.Tensor
    times: torch.Tensor

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

    def take(self, table: torch.Tensor, i, like: torch.Tensor) -> torch.Tensor:
        """table[i - 1] for 1-based steps i (int or (N,) tensor), on ``like``'s device/dtype. Steps on an
        accelerator stay there (the table is copied to them): no device-to-host read in a loop."""
        idx = (i if isinstance(i, torch.Tensor) else torch.as_tensor(i)).long()
        if idx.device.type == "cpu" and bool(((idx < 1) | (idx > self.T)).any()):
            raise ValueError(f"step i must lie in 1..T = 1..{self.T}, got {i!r}.")
        return table.to(idx.device)[idx - 1].to(device=like.device, dtype=like.dtype)

    def q_sample(self, x0: torch.Tensor, i, noise: torch.Tensor) -> torch.Tensor:
        """x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) noise."""
        checks.float_tensor("x0", x0)
        checks.same_shape("noise", noise, x0)
        ab = self.take(self.alphas_cumprod, torch.as_tensor(i).expand(x0.shape[0]), x0)
        return bcast(ab.sqrt(), x0) * x0 + bcast((1 - ab).sqrt(), x0) * noise

    def posterior_mean_coefs(self, i, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c0, ct) with mu_tilde(x_i, x_0) = c0 x_0 + ct x_i (DDPM eq. 7):
        c0 = sqrt(abar_{i-1}) beta_i / (1 - abar_i),  ct = sqrt(alpha_i) (1 - abar_{i-1}) / (1 - abar_i)."""
        ab, ab_prev = (self.take(a, i, like) for a in (self.alphas_cumprod, self.alphas_cumprod_prev))
        beta, alpha = self.take(self.betas, i, like), self.take(self.alphas, i, like)
        return ab_prev.sqrt() * beta / (1 - ab), alpha.sqrt() * (1 - ab_prev) / (1 - ab)

    @cached_property
    def posterior_variance_clipped(self) -> torch.Tensor:
        """beta_tilde_i with beta_tilde_1 = 0 replaced by beta_tilde_2 (beta_1 for a 1-step chain), as
        DDPM's and improved DDPM's code do wherever a log variance or a decoder needs a positive value."""
        bt = self.posterior_variance
        return torch.cat([bt[1:2] if self.T > 1 else self.betas[:1], bt[1:]])

    def sigma2(self, i, like: torch.Tensor, variance: str = "beta") -> torch.Tensor:
        """The reverse-step variance sigma_i^2 of DDPM Algorithm 2: ``beta`` (beta_i) or
        ``beta_tilde`` (beta_tilde_i; 0 at i = 1)."""
        checks.one_of("variance", variance, ("beta", "beta_tilde"))
        return self.take(self.betas if variance == "beta" else self.posterior_variance, i, like)

    def embedding(self) -> DiscreteVPSDE:
        """The SDE whose marginals at the model times are this chain's: ``DiscreteVPSDE`` of the (base)
        chain's abar, knot i at t = i / T (cubic in log m between knots, so adaptive ODE solvers see a
        smooth drift). A chain-trained model lives on it: its ``predict(x, i / T)`` uses the chain's own
        marginals, and samplers and the DDPM bound read it there."""
        raise NotImplementedError

    def to_sde(self) -> SDE:
        raise NotImplementedError


V_KINDS = ("interpolation", "learned_range", "learned")


def learned_log_variance(v: torch.Tensor, beta: torch.Tensor, beta_tilde: torch.Tensor,
                         kind: str = "interpolation") -> torch.Tensor:
    """log Sigma_theta of a learned variance's output v, elementwise (beta, beta_tilde > 0 broadcast
    against v), read by the convention ``kind``:
    - ``interpolation``: v log beta + (1 - v) log beta_tilde (Nichol & Dhariwal 2021, eq. 15; v = 1: beta,
      v = 0: beta_tilde, unconstrained): what this toolkit trains;
    - ``learned_range``: the same with the weight (v + 1) / 2, v in [-1, 1] (improved DDPM's released code,
      diffusers' ``variance_type="learned_range"``);
    - ``learned``: log v, v the variance itself (diffusers' ``variance_type="learned"``)."""
    checks.one_of("learned variance convention", kind, V_KINDS)
    if kind == "learned":
        return v.log()
    w = (v + 1) / 2 if kind == "learned_range" else v
    return w * beta.log() + (1 - w) * beta_tilde.log()


@dataclass(frozen=True)
class DDPMSchedule(DiscreteSchedule):
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
    def times(self) -> torch.Tensor:
        """t_i = i / T, the continuous time at which a model sees step i."""
        return torch.arange(1, self.T + 1, dtype=torch.float64) / self.T

    def time(self, i) -> float | torch.Tensor:
        """The continuous time t = i / T of step i."""
        return i / self.T

    def respace(self, K: int | str) -> "RespacedSchedule":
        """The chain on the steps improved DDPM's ``space_timesteps(T, K)`` keeps (Nichol & Dhariwal 2021,
        released code; its steps 0..T-1 are 1..T here):
        - K steps (an int, or "K"), or sections "K_1,...,K_n": the T steps cut into n blocks of
          floor(T/n) steps, the first T mod n one longer; in a block of S steps starting at step a, K_i
          steps a + round(c_j), c_0 = 0, c_{j+1} = c_j + (S - 1)/(K_i - 1) (one step a if K_i = 1). The
          running sum and round-half-to-even are the released code's: they decide its ties.
        - "ddimK": the smallest integer stride c with K steps 1, 1 + c, ..., 1 + (K - 1) c <= T (DDIM's
          striding; the chain then starts at step 1 + (K - 1) c, not at T).
        - "leadingK", "trailingK", "linspaceK": the K timesteps of diffusers' ``timestep_spacing`` (its
          ``set_timesteps(K)``, steps_offset 0; its timestep j is step j + 1 here): leading j = i floor(T/K),
          trailing round(T - i T/K) - 1, linspace round(i (T - 1)/(K - 1)), i = 0..K-1, numpy's rounding.
          ``ancestral`` on such a chain is ``DDPMScheduler``'s loop with those timesteps.
        K = 1 keeps step T alone (``space_timesteps`` would keep the first step)."""
        spacing = next((n for n in DIFFUSERS_SPACINGS if isinstance(K, str) and K.startswith(n)), None)
        if spacing is not None:
            count = checks.positive_int(f"{spacing}K's K", _int(K[len(spacing):], K))
            if count > self.T:
                raise ValueError(f"respace({K!r}): K must lie in 1..T = 1..{self.T}.")
            return RespacedSchedule(self, tuple(sorted(int(j) + 1 for j in _diffusers_timesteps(spacing, self.T, count))),
                                    spacing)
        if isinstance(K, str) and K.startswith("ddim"):
            count = checks.positive_int("ddimK's K", _int(K[4:], K))
            stride = next((c for c in range(1, self.T) if len(range(0, self.T, c)) == count), None)
            if stride is None:
                raise ValueError(f"respace({K!r}): no integer stride gives exactly {count} of T = {self.T} steps.")
            return RespacedSchedule(self, tuple(1 + j * stride for j in range(count)))
        sections = [_int(c, K) for c in K.split(",")] if isinstance(K, str) else [K]
        if len(sections) == 1:
            K = checks.positive_int("K", sections[0])
            if K > self.T:
                raise ValueError(f"K must lie in 1..T = 1..{self.T}, got {K}.")
            if K == 1:
                return RespacedSchedule(self, (self.T,))
        size, extra = divmod(self.T, len(sections))
        keep, start = [], 1
        for i, count in enumerate(sections):
            block = size + (i < extra)
            if not 1 <= count <= block:
                raise ValueError(f"respace({K!r}): section {i + 1} has {block} steps, cannot keep {count} "
                                 f"(each section count must lie in 1..{block}).")
            stride, c = (block - 1) / (count - 1) if count > 1 else 1, 0.0
            for _ in range(count):
                keep.append(start + round(c))
                c += stride
            start += block
        return RespacedSchedule(self, tuple(keep))

    def embedding(self) -> DiscreteVPSDE:
        return DiscreteVPSDE(self.alphas_cumprod, "cubic")

    def to_sde(self) -> SDE:
        """The SDE this chain converges to as T -> infinity with step i <-> t = i/T:
        ``VPSDE(T beta_1, T beta_T)`` for ``linear``, ``CosineVPSDE(s)`` for ``cosine``. The continuous
        limit (DDPM -> VP-SDE, notebook 01), off the chain by O(1/T); models of the chain are read on
        ``embedding()``."""
        if self.kind == "linear":
            return VPSDE(beta_min=self.T * self.beta_1, beta_max=self.T * self.beta_T)
        return CosineVPSDE(s=self.s)


@dataclass(frozen=True)
class RespacedSchedule(DiscreteSchedule):
    """The chain of a ``base`` schedule observed at its steps ``keep`` = (tau_1 < ... < tau_K <= T):
        alpha'_k = prod_{j = tau_{k-1}+1}^{tau_k} alpha_j = abar_{tau_k} / abar_{tau_{k-1}},  beta'_k = 1 - alpha'_k,
    (tau_0 = 0; a block of one step keeps that step's own beta_j and alpha_j, so ``keep`` = 1..T is the base
    chain table for table), abar'_k = abar_{tau_k}, and the model times t_k = tau_k / T. ``T`` is K.
    ``spacing``: the diffusers ``timestep_spacing`` the steps came from (``respace("leadingK")`` ...), else None."""

    base: DDPMSchedule
    keep: tuple[int, ...]
    spacing: str | None = None

    def __post_init__(self):
        if not isinstance(self.base, DDPMSchedule):
            raise TypeError(f"base must be a DDPMSchedule, got {type(self.base).__name__}.")
        keep = tuple(int(k) for k in self.keep)
        if not keep or keep[-1] > self.base.T or any(b <= a for a, b in zip(keep, keep[1:])) or keep[0] < 1:
            raise ValueError(f"keep must be increasing steps in 1..{self.base.T}, got {self.keep!r}.")
        object.__setattr__(self, "keep", keep)

    @property
    def T(self) -> int:
        return len(self.keep)

    def ddim_scheduler_mismatch(self) -> str | None:
        """Why diffusers' ``DDIMScheduler`` does not run this chain, or None. Its step from timestep j goes
        to prev = j - N // K (N = T_base; the data past 0), which is the next kept timestep only when they
        lie N // K apart; otherwise it lands between them and evaluates the model at a level it is not at."""
        if self.spacing is None:
            return None
        stride, steps = self.base.T // self.T, [k - 1 for k in reversed(self.keep)]
        for j, nxt in zip(steps, steps[1:] + [None]):
            prev = j - stride
            if (nxt is None and prev >= 0) or (nxt is not None and prev != nxt):
                where = "the data" if nxt is None else f"timestep {nxt}"
                return (f"diffusers' DDIMScheduler with timestep_spacing={self.spacing!r} and {self.T} of "
                        f"{self.base.T} steps does not chain: its step from timestep {j} goes to {j} - {self.base.T}"
                        f" // {self.T} = {prev}, not to {where}")
        return None

    @cached_property
    def betas(self) -> torch.Tensor:
        """beta'_k: the base beta_j where a block holds one step j, else 1 - alpha'_k."""
        ends = torch.tensor(self.keep)
        single = ends - torch.tensor((0, *self.keep[:-1])) == 1
        return torch.where(single, self.base.betas[ends - 1], 1 - self.alphas)

    @cached_property
    def alphas(self) -> torch.Tensor:
        """alpha'_k, the product of the block's alphas (the base alpha_j itself for a block of one)."""
        ends = self.keep
        starts = (0, *ends[:-1])
        return torch.stack([self.base.alphas[a:b].prod() for a, b in zip(starts, ends)])

    @cached_property
    def times(self) -> torch.Tensor:
        """t_k = tau_k / T_base."""
        return torch.tensor(self.keep, dtype=torch.float64) / self.base.T

    def embedding(self) -> DiscreteVPSDE:
        """The base chain's embedding: step k at t = tau_k / T_base is its knot tau_k."""
        return self.base.embedding()

    def to_sde(self) -> SDE:
        return self.base.to_sde()
