"""A Gaussian mixture: the analytic ground truth for every sampler, SDE and likelihood test.

p_0 = sum_k w_k N(mu_k, diag(v_k)). Through a linear SDE with marginal (m(t), s(t)),
    p_t = sum_k w_k N(m mu_k, diag(m^2 v_k + s^2)),
so with responsibilities r_k(x) and component scores s_k = -(x - m mu_k) / (m^2 v_k + s^2):
    score        grad log p_t = sum_k r_k s_k
    divergence   div score    = sum_k r_k (||s_k||^2 - sum_d 1/(m^2 v_kd + s^2)) - ||score||^2
all closed form at every t. Data of any shape (N, ...) with prod(...) = D is flattened.
"""

from __future__ import annotations

import math

import torch

from . import checks
from .checks import Time
from .sde import SDE, ScoreFn


class GaussianMixture:
    """Mixture of K Gaussians in D dimensions with isotropic (K,) or diagonal (K, D) variances."""

    def __init__(self, means, variances, weights=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}.")
        K, D = means.shape
        variances = torch.as_tensor(variances, dtype=torch.float64)
        if variances.ndim == 0:
            variances = variances.expand(K)
        if variances.shape == (K,):
            variances = variances[:, None].expand(K, D)
        if variances.shape != (K, D):
            raise ValueError(f"variances must have shape (K,) or (K, D) = ({K},) or ({K}, {D}), "
                             f"got {tuple(variances.shape)}.")
        if not bool((variances > 0).all()) or not bool(torch.isfinite(variances).all()):
            raise ValueError("variances must be finite and > 0.")
        weights = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (K,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be {K} positive numbers, got {weights.tolist()}.")
        if not bool(torch.isfinite(means).all()):
            raise ValueError("means must be finite.")
        self.means, self.variances = means, variances.contiguous()
        self.log_weights = torch.log(weights / weights.sum())
        self._cache: dict = {}

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _params(self, like: torch.Tensor):
        """(means, variances, log_weights) on ``like``'s device and dtype, converted once."""
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(p.to(device=like.device, dtype=like.dtype)
                                     for p in (self.means, self.variances, self.log_weights))
        return self._cache[key]

    def _flat(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        checks.float_tensor(name, x)
        if x[0].numel() != self.dim or x.ndim < 2:
            raise ValueError(f"{name} must have shape (N, ...) with {self.dim} values per sample, "
                             f"got {tuple(x.shape)}.")
        return x.reshape(x.shape[0], self.dim)

    # -- the data distribution p_0 ------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, *,
               device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """n samples of shape (n, D): pick k ~ w, then x = mu_k + sqrt(v_k) z."""
        checks.positive_int("n", n)
        gen_device = generator.device if generator is not None else device
        k = torch.multinomial(self.log_weights.exp().to(gen_device), n, replacement=True,
                              generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=gen_device, dtype=torch.float64)
        x = self.means.to(gen_device)[k] + self.variances.to(gen_device)[k].sqrt() * z
        return x.to(device=device if device is not None else gen_device, dtype=dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p_0(x), shape (N,)."""
        return self._components(self._flat(x), None, None)[0]

    # -- the marginals p_t under an SDE -----------------------------------------------------------
    def _components(self, x: torch.Tensor, t: torch.Tensor | None, sde: SDE | None):
        """log p_t(x), responsibilities r (N, K), component scores s_k (N, K, D), variances (N, K, D)."""
        mu, var, logw = self._params(x)
        if sde is None:
            mean, var_t = mu[None], var[None]
        else:
            m, s = sde.marginal(t)
            mean = m[:, None, None] * mu[None]
            var_t = m[:, None, None].square() * var[None] + s[:, None, None].square()
        diff = x[:, None, :] - mean
        comp = -0.5 * (diff.square() / var_t + torch.log(2 * math.pi * var_t)).sum(-1) + logw
        logp = torch.logsumexp(comp, dim=1)
        return logp, torch.softmax(comp, dim=1), -diff / var_t, var_t

    def _time(self, x: torch.Tensor, t: Time, sde: SDE) -> torch.Tensor:
        return checks.time(t, sde.T, batch=x.shape[0], like=x)

    def log_prob_t(self, x: torch.Tensor, t: Time, sde: SDE) -> torch.Tensor:
        """log p_t(x) under ``sde``, shape (N,)."""
        xf = self._flat(x)
        return self._components(xf, self._time(xf, t, sde), sde)[0]

    def score_at(self, x: torch.Tensor, t: Time, sde: SDE) -> torch.Tensor:
        """grad_x log p_t(x) = sum_k r_k s_k, shaped like x."""
        xf = self._flat(x)
        _, r, sk, _ = self._components(xf, self._time(xf, t, sde), sde)
        return torch.einsum("nk,nkd->nd", r, sk).reshape(x.shape)

    def score_divergence(self, x: torch.Tensor, t: Time, sde: SDE) -> torch.Tensor:
        """div_x grad log p_t(x) = sum_k r_k (||s_k||^2 - sum_d 1/v_kd(t)) - ||score||^2, shape (N,)."""
        xf = self._flat(x)
        _, r, sk, var_t = self._components(xf, self._time(xf, t, sde), sde)
        score = torch.einsum("nk,nkd->nd", r, sk)
        per_k = sk.square().sum(-1) - (1 / var_t).sum(-1)
        return (r * per_k).sum(1) - score.square().sum(1)

    def score(self, sde: SDE) -> ScoreFn:
        """The exact score function (x, t) -> grad log p_t(x) of this mixture under ``sde``."""
        return lambda x, t: self.score_at(x, t, sde)

    def eps(self, sde: SDE) -> ScoreFn:
        """The exact noise prediction eps(x, t) = -s(t) grad log p_t(x) (DDPM's epsilon)."""
        def eps_fn(x, t):
            t = self._time(self._flat(x), t, sde)
            return -checks.bcast(sde.marginal(t)[1], x) * self.score_at(x, t, sde)
        return eps_fn

    def at(self, t: float, sde: SDE) -> "GaussianMixture":
        """The marginal p_t itself, as a mixture: means m mu_k, variances m^2 v_k + s^2."""
        m, s = (float(c) for c in sde.marginal(torch.tensor(float(t), dtype=torch.float64)))
        return GaussianMixture(m * self.means, m * m * self.variances + s * s, self.log_weights.exp())

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.means.shape[0]}, D={self.dim})"


def ring2d(modes: int = 8, radius: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """``modes`` equal-weight isotropic modes evenly spaced on a circle of ``radius``."""
    checks.positive_int("modes", modes)
    angle = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return GaussianMixture(radius * torch.stack([angle.cos(), angle.sin()], 1), std**2)


def grid2d(side: int = 4, spacing: float = 0.5, std: float = 0.05) -> GaussianMixture:
    """side x side modes on a square grid centred at the origin."""
    checks.positive_int("side", side)
    c = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    return GaussianMixture(torch.cartesian_prod(c, c), std**2)


def random_mixture(dim: int = 64, components: int = 8, *, radius: float = 1.0,
                   min_var: float = 0.01, max_var: float = 0.05, seed: int = 0) -> GaussianMixture:
    """A reproducible random mixture in ``dim`` dimensions with diagonal covariances:
    means ~ N(0, radius^2/dim I) (so ||mu_k|| is about ``radius``), variances ~ U(min_var, max_var),
    weights ~ U(0.5, 1.5) normalised."""
    checks.positive_int("dim", dim)
    checks.positive_int("components", components)
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(components, dim, generator=g, dtype=torch.float64) * radius / math.sqrt(dim)
    var = min_var + (max_var - min_var) * torch.rand(components, dim, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
    return GaussianMixture(means, var, weights)


PRESETS = {"ring2d": ring2d, "grid2d": grid2d, "gmm64": random_mixture}


def preset(name: str) -> GaussianMixture:
    """A named preset: ``ring2d``, ``grid2d`` or ``gmm64``."""
    return PRESETS[checks.one_of("analytic model", name, PRESETS)]()
