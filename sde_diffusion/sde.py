"""Forward SDEs  dx = f(t) x dt + g(t) dw  on [0, T] (Song et al. 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations").

All SDEs here are linear in x, so x_t | x_0 is Gaussian, N(m(t) x_0, s(t)^2 I), with
    dm/dt = f(t) m,        d(s^2)/dt = 2 f(t) s^2 + g(t)^2,        m(0) = 1, s(0) = 0.
A new SDE is one frozen dataclass below implementing ``_drift_coef``, ``_diffusion`` and
``_marginal`` (and ``prior_std`` when the prior is not N(0, I)); everything else is generic.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from . import checks
from .checks import Time, bcast

if TYPE_CHECKING:
    from .reverse import ReverseSDE

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SDE(ABC):
    """The contract every forward SDE satisfies; samplers and likelihoods use nothing else.

    ``t`` may be a Python float or a tensor (a (N,) tensor when paired with x of shape (N, ...)).
    """

    T: float = 1.0
    prior_std: float = 1.0  # the prior is N(0, prior_std^2 I)

    # -- what a concrete SDE implements, on tensors t already checked to lie in [0, T] -------
    @abstractmethod
    def _drift_coef(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _diffusion(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    # -- the public contract ----------------------------------------------------------------
    def drift_coef(self, t: Time) -> torch.Tensor:
        """f(t), the scalar with drift f(t) x; shaped like ``t``."""
        return self._drift_coef(checks.time(t, self.T))

    def drift(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """The forward drift f(t) x, shaped like x of shape (N, ...)."""
        checks.float_tensor("x", x)
        return bcast(self._drift_coef(checks.time(t, self.T, batch=x.shape[0], like=x)), x) * x

    def diffusion(self, t: Time) -> torch.Tensor:
        """g(t), the scalar diffusion coefficient; shaped like ``t``."""
        return self._diffusion(checks.time(t, self.T))

    def marginal(self, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """(m(t), s(t)) with x_t | x_0 ~ N(m(t) x_0, s(t)^2 I) exactly; each shaped like ``t``."""
        return self._marginal(checks.time(t, self.T))

    def prior_sample(self, shape: Sequence[int], *, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> torch.Tensor:
        """Draw x_T ~ N(0, prior_std^2 I) of the given shape (N, ...)."""
        shape = tuple(shape)
        if len(shape) < 1 or any(not isinstance(n, int) or n < 1 for n in shape):
            raise ValueError(f"shape must be a tuple of positive ints (N, ...), got {shape!r}.")
        if device is None and generator is not None:
            device = generator.device
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return self.prior_std * z

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I), summed over all non-batch dims; shape (N,)."""
        checks.float_tensor("z", z)
        d = z[0].numel()
        sq = z.flatten(1).square().sum(1) if z.ndim > 1 else z.square()
        return -0.5 * d * math.log(2 * math.pi * self.prior_std**2) - 0.5 * sq / self.prior_std**2

    def discretize(self, x: torch.Tensor, t: Time, dt: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact discrete transition from s = t - dt to t:  x_t = x_s + f_i + G_i z.

        With a = m(t)/m(s):  f_i = (a - 1) x  and  G_i = sqrt(s(t)^2 - a^2 s(s)^2)  (shape (N,)).
        For VP this is x_t = sqrt(1 - beta_i) x_s + sqrt(beta_i) z (DDPM, Ho et al. 2020); for VE it
        is the SMLD perturbation with variance sigma_i^2 - sigma_{i-1}^2 (Song & Ermon 2019).
        """
        checks.float_tensor("x", x)
        n = x.shape[0]
        t = checks.time(t, self.T, batch=n, like=x)
        s = checks.time(t - (dt if isinstance(dt, torch.Tensor) else float(dt)), self.T,
                        batch=n, like=x, name="t - dt")
        m_t, std_t = self._marginal(t)
        m_s, std_s = self._marginal(s)
        a = m_t / m_s
        G = (std_t.square() - (a * std_s).square()).clamp_min(0).sqrt()
        return bcast(a - 1, x) * x, G

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (drift f - g^2 score, diffusion g) or, with ``probability_flow``,
        the probability-flow ODE (drift f - g^2 score / 2, no noise); see ``reverse.ReverseSDE``."""
        from .reverse import ReverseSDE

        return ReverseSDE(self, score_fn, probability_flow)


def _linear_beta_integral(t: torch.Tensor, beta_min: float, beta_max: float):
    """beta(t) = beta_min + t (beta_max - beta_min) and B(t) = integral_0^t beta."""
    beta = beta_min + t * (beta_max - beta_min)
    return beta, beta_min * t + 0.5 * (beta_max - beta_min) * t.square()


def _check_betas(beta_min: float, beta_max: float) -> None:
    checks.positive("beta_min", beta_min)
    checks.positive("beta_max", beta_max)
    if beta_max <= beta_min:
        raise ValueError(f"beta_max must be > beta_min, got beta_min={beta_min}, beta_max={beta_max}.")


@dataclass(frozen=True)
class VPSDE(SDE):
    """Variance preserving: dx = -beta(t)/2 x dt + sqrt(beta(t)) dw, beta linear on [0, 1].

    m(t) = exp(-B(t)/2), s(t)^2 = 1 - exp(-B(t)), B(t) = integral_0^t beta. The DDPM with T steps
    and betas beta_1..beta_T is its discretisation with beta_min = T beta_1, beta_max = T beta_T.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self):
        _check_betas(self.beta_min, self.beta_max)

    def beta(self, t: Time) -> torch.Tensor:
        """beta(t) = beta_min + t (beta_max - beta_min)."""
        return _linear_beta_integral(checks.time(t, self.T), self.beta_min, self.beta_max)[0]

    def _drift_coef(self, t):
        return -0.5 * _linear_beta_integral(t, self.beta_min, self.beta_max)[0]

    def _diffusion(self, t):
        return _linear_beta_integral(t, self.beta_min, self.beta_max)[0].sqrt()

    def _marginal(self, t):
        B = _linear_beta_integral(t, self.beta_min, self.beta_max)[1]
        return torch.exp(-0.5 * B), (-torch.expm1(-B)).sqrt()


@dataclass(frozen=True)
class SubVPSDE(SDE):
    """Sub-VP: dx = -beta(t)/2 x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw (Song et al. 2021, eq. 34).

    m(t) = exp(-B(t)/2), s(t) = 1 - exp(-B(t)): the variance stays below the VP one.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self):
        _check_betas(self.beta_min, self.beta_max)

    def _drift_coef(self, t):
        return -0.5 * _linear_beta_integral(t, self.beta_min, self.beta_max)[0]

    def _diffusion(self, t):
        beta, B = _linear_beta_integral(t, self.beta_min, self.beta_max)
        return (beta * -torch.expm1(-2 * B)).sqrt()

    def _marginal(self, t):
        B = _linear_beta_integral(t, self.beta_min, self.beta_max)[1]
        return torch.exp(-0.5 * B), -torch.expm1(-B)


@dataclass(frozen=True)
class CosineVPSDE(SDE):
    """VP with the cosine schedule of Nichol & Dhariwal (2021) in continuous time.

    alpha_bar(t) = cos^2(phi(t)) / cos^2(phi(0)), phi(t) = (t + s)/(1 + s) * pi/2;
    m(t) = sqrt(alpha_bar), s(t)^2 = 1 - alpha_bar, beta(t) = -d log alpha_bar/dt = pi/(1+s) tan(phi(t)).
    beta diverges at t = 1, so the SDE ends at T = 0.9946 by default (as in DPM-Solver), where
    m(T) is about 8e-3.
    """

    s: float = 0.008
    T: float = 0.9946

    def __post_init__(self):
        checks.positive("s", self.s)
        if not (0 < self.T < 1):
            raise ValueError(f"T must lie in (0, 1) for the cosine schedule, got {self.T}.")

    def _phi(self, t):
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def beta(self, t: Time) -> torch.Tensor:
        """beta(t) = pi/(1+s) tan(phi(t))."""
        return math.pi / (1 + self.s) * torch.tan(self._phi(checks.time(t, self.T)))

    def _drift_coef(self, t):
        return -0.5 * math.pi / (1 + self.s) * torch.tan(self._phi(t))

    def _diffusion(self, t):
        return (math.pi / (1 + self.s) * torch.tan(self._phi(t))).sqrt()

    def _marginal(self, t):
        # with a = phi(t), b = phi(0): 1 - cos^2 a / cos^2 b = sin(a - b) sin(a + b) / cos^2 b,
        # and a - b = t/(1+s) pi/2 exactly, so s(t) stays accurate near t = 0
        cb = math.cos(self.s / (1 + self.s) * (math.pi / 2))
        a_minus_b = t / (1 + self.s) * (math.pi / 2)
        a_plus_b = (t + 2 * self.s) / (1 + self.s) * (math.pi / 2)
        return torch.cos(self._phi(t)) / cb, (torch.sin(a_minus_b) * torch.sin(a_plus_b)).sqrt() / cb


@dataclass(frozen=True)
class VESDE(SDE):
    """Variance exploding: dx = sqrt(d sigma^2/dt) dw, sigma(t) = sigma_min (sigma_max/sigma_min)^t.

    ``marginal`` uses the exact added variance: s(t)^2 = sigma(t)^2 - sigma_min^2, so s(0) = 0 and
    drift, diffusion and marginal are mutually consistent (g^2 = d s^2/dt). The prior is
    N(0, sigma_max^2 I), the usual approximation of p_T for data of scale much below sigma_max.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def __post_init__(self):
        checks.positive("sigma_min", self.sigma_min)
        checks.positive("sigma_max", self.sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max must be > sigma_min, got sigma_min={self.sigma_min}, "
                             f"sigma_max={self.sigma_max}.")

    @property
    def prior_std(self) -> float:  # type: ignore[override]
        return self.sigma_max

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: Time) -> torch.Tensor:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
        return self.sigma_min * torch.exp(checks.time(t, self.T) * self._log_ratio)

    def _drift_coef(self, t):
        return torch.zeros_like(t)

    def _diffusion(self, t):
        return self.sigma_min * torch.exp(t * self._log_ratio) * math.sqrt(2 * self._log_ratio)

    def _marginal(self, t):
        return torch.ones_like(t), self.sigma_min * torch.expm1(2 * t * self._log_ratio).sqrt()


SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "cosine": CosineVPSDE}


def get_sde(name: str, **params) -> SDE:
    """Build an SDE by name: one of ``vp``, ``subvp``, ``ve``, ``cosine``."""
    cls = SDES[checks.one_of("SDE", name, SDES)]
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in params:
        checks.one_of(f"{cls.__name__} parameter", key, allowed)
    return cls(**params)
