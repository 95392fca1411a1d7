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
from dataclasses import dataclass, field
from functools import cached_property
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

    def transition(self, s: Time, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact forward transition from s to t >= s:  x_t = a x_s + G z,  z ~ N(0, I), with
            a = m(t) / m(s),   G^2 = s(t)^2 - a^2 s(s)^2   (clamped at 0 against rounding at t = s);
        (a, G) shaped like ``s`` and ``t`` broadcast. For VP between DDPM's steps it is
        x_i = sqrt(alpha_i) x_{i-1} + sqrt(beta_i) z (Ho et al. 2020); for VE the SMLD perturbation with
        variance sigma(t)^2 - sigma(s)^2 (Song & Ermon 2019). Every reverse step's coefficients derive from it.
        """
        m_t, std_t = self.marginal(t)
        m_s, std_s = self.marginal(s)
        a = m_t / m_s
        return a, (std_t.square() - (a * std_s).square()).clamp_min(0).sqrt()

    def discretize(self, x: torch.Tensor, t: Time, dt: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact discrete transition from s = t - dt to t as an increment:  x_t = x_s + f_i + G_i z,
        f_i = (a - 1) x and G_i (shape (N,)) from ``transition(s, t)``."""
        checks.float_tensor("x", x)
        n = x.shape[0]
        t = checks.time(t, self.T, batch=n, like=x)
        s = checks.time(t - (dt if isinstance(dt, torch.Tensor) else float(dt)), self.T,
                        batch=n, like=x, name="t - dt")
        a, G = self.transition(s, t)
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


def _pchip_end(m0: torch.Tensor, m1: torch.Tensor) -> torch.Tensor:
    """The end slope of a monotone cubic (PCHIP) from the end secant m0 and its neighbour m1 on equal
    steps: the one-sided three-point estimate (3 m0 - m1) / 2, set to 0 where its sign differs from m0's
    and to 3 m0 where m0, m1 differ in sign and it exceeds 3 |m0| (Moler, "Numerical Computing with
    MATLAB", sec. 3.6; scipy's ``PchipInterpolator``), as a (1,) tensor."""
    d = (3 * m0 - m1) / 2
    d = torch.where(torch.sign(d) != torch.sign(m0), torch.zeros_like(d), d)
    d = torch.where((torch.sign(m0) != torch.sign(m1)) & (d.abs() > 3 * m0.abs()), 3 * m0, d)
    return d.reshape(1)


@dataclass(frozen=True)
class DiscreteVPSDE(SDE):
    """The VP-type SDE of a discrete-time model with table abar_1..abar_N (``alphas_cumprod``), after
    Lu et al. (2022, "DPM-Solver", sec. 3.4): log m(t) is piecewise linear in t between the knots
        t_i = i / N,   log m(t_i) = log(abar_i) / 2,   i = 0..N  (abar_0 = 1, the data),
    s(t)^2 = 1 - m(t)^2. On each interval ((i-1)/N, i/N] (f is taken left-continuous there):
        f(t) = d log m/dt = (N/2) log alpha_i,   g(t)^2 = d s^2/dt - 2 f s^2 = -2 f = -N log alpha_i,
    alpha_i = abar_i / abar_{i-1}: a piecewise-constant beta(t), and the exact transition between
    neighbouring knots is DDPM's step x_i = sqrt(alpha_i) x_{i-1} + sqrt(1 - alpha_i) z, so the
    discrete chain is this SDE observed at its knots. diffusers' 0-based timestep k (its
    ``alphas_cumprod[k]``) is knot k + 1, t = (k + 1) / N (DPM-Solver's t_n = (n + 1) / N); a model's
    timestep input at continuous t is ``model_timestep(t)`` = N t - 1, linear between knots (in
    (-1, 0) below the first knot t = 1/N, where the model was never trained).
    ``interpolation="cubic"`` takes instead the monotone cubic Hermite interpolant of log m (PCHIP: interior
    slopes the harmonic means of neighbouring secants, Fritsch & Carlson 1980, end slopes the shape-preserving
    three-point estimate, as scipy's ``PchipInterpolator``): the same knots (so the same
    chain), f continuous and <= 0; adaptive ODE solvers take far fewer steps on it than on the
    staircase beta(t) of ``linear``. ``DDPMSchedule.embedding()`` is this SDE of a DDPM chain.
    """

    alphas_cumprod: tuple[float, ...] = field(repr=False)
    interpolation: str = "linear"

    def __post_init__(self):
        abar = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64).detach().cpu()
        if abar.ndim != 1 or len(abar) < 1:
            raise ValueError(f"alphas_cumprod must be a 1-D table of N >= 1 values, got shape {tuple(abar.shape)}.")
        if not bool(((abar > 0) & (abar < 1)).all()) or not bool((abar[1:] < abar[:-1]).all()):
            raise ValueError("alphas_cumprod must decrease strictly and lie in (0, 1) (each beta_i in (0, 1)); "
                             f"got values in [{float(abar.min()):g}, {float(abar.max()):g}].")
        object.__setattr__(self, "alphas_cumprod", tuple(abar.tolist()))
        checks.one_of("interpolation", self.interpolation, ("linear", "cubic"))

    @classmethod
    def from_betas(cls, betas, interpolation: str = "linear") -> "DiscreteVPSDE":
        """From beta_1..beta_N: abar_i = prod_{j<=i} (1 - beta_j), in float64."""
        return cls(torch.cumprod(1 - torch.as_tensor(betas, dtype=torch.float64), 0), interpolation)

    @classmethod
    def from_beta_schedule(cls, name: str, num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                           beta_end: float = 0.02, interpolation: str = "linear") -> "DiscreteVPSDE":
        """diffusers' named schedules, in float64: ``linear`` (betas linspace(beta_start, beta_end, N)),
        ``scaled_linear`` (linspace(sqrt(beta_start), sqrt(beta_end), N)^2) and ``squaredcos_cap_v2``
        (Nichol & Dhariwal's cosine, beta_i = min(1 - abar(i/N)/abar((i-1)/N), 0.999), s = 0.008)."""
        from .schedule import DDPMSchedule

        checks.one_of("beta schedule", name, ("linear", "scaled_linear", "squaredcos_cap_v2"))
        n = checks.positive_int("num_train_timesteps", num_train_timesteps)
        if name == "squaredcos_cap_v2":
            return cls.from_betas(DDPMSchedule(T=n, kind="cosine").betas, interpolation)
        if name == "linear":
            return cls.from_betas(DDPMSchedule(T=n, beta_1=beta_start, beta_T=beta_end).betas, interpolation)
        checks.positive("beta_start", beta_start)
        checks.positive("beta_end", beta_end)
        return cls.from_betas(torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64).square(),
                              interpolation)

    def __repr__(self) -> str:
        return f"DiscreteVPSDE(N={self.N}, abar_N={self.alphas_cumprod[-1]:.4g}, {self.interpolation})"

    @property
    def N(self) -> int:
        """The number of discrete steps."""
        return len(self.alphas_cumprod)

    @cached_property
    def _knots(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t_i = i/N, log m(t_i), the cubic's slopes d_i per knot interval) for i = 0..N, float64."""
        log_m = 0.5 * torch.tensor((1.0,) + self.alphas_cumprod, dtype=torch.float64).log()
        sec = log_m[1:] - log_m[:-1]  # all < 0
        if self.N == 1:  # two knots: the line (as scipy's PchipInterpolator)
            d = torch.cat([sec, sec])
        else:
            d = torch.cat([_pchip_end(sec[0], sec[1]), 2 * sec[:-1] * sec[1:] / (sec[:-1] + sec[1:]),
                           _pchip_end(sec[-1], sec[-2])])
        return torch.arange(self.N + 1, dtype=torch.float64) / self.N, log_m, d

    def _log_m(self, t):
        """(log m(t), f(t) = d log m/dt) on the interval ((i-1)/N, i/N] holding t, u = N t - (i-1) in (0, 1]:
        linear y0 + u D, or cubic y0 + d0 u + (3D - 2 d0 - d1) u^2 + (d0 + d1 - 2D) u^3, D = y1 - y0."""
        knots, log_m, d = (v.to(device=t.device, dtype=t.dtype) for v in self._knots)
        i = (torch.searchsorted(knots, t.contiguous()) - 1).clamp(0, self.N - 1)
        u, y0, D = (t - knots[i]) * self.N, log_m[i], log_m[i + 1] - log_m[i]
        if self.interpolation == "linear":
            return y0 + u * D, D * self.N
        d0, d1 = d[i], d[i + 1]
        b, c = 3 * D - 2 * d0 - d1, d0 + d1 - 2 * D
        return y0 + u * (d0 + u * (b + u * c)), (d0 + u * (2 * b + 3 * u * c)) * self.N

    def model_timestep(self, t: Time) -> torch.Tensor:
        """A discrete model's timestep input at t: N t - 1, diffusers' integer k at knot t = (k+1)/N."""
        return self.N * checks.time(t, self.T) - 1

    def _drift_coef(self, t):
        return self._log_m(t)[1]

    def _diffusion(self, t):
        return (-2 * self._log_m(t)[1]).clamp_min(0).sqrt()

    def _marginal(self, t):
        log_m = self._log_m(t)[0]
        return log_m.exp(), (-torch.expm1(2 * log_m)).sqrt()


SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "cosine": CosineVPSDE}


def get_sde(name: str, **params) -> SDE:
    """Build an SDE by name: one of ``vp``, ``subvp``, ``ve``, ``cosine``."""
    cls = SDES[checks.one_of("SDE", name, SDES)]
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in params:
        checks.one_of(f"{cls.__name__} parameter", key, allowed)
    return cls(**params)
