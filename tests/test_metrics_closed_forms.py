"""Sliced W2 (``evaluation.metrics.sliced_w2``) against closed forms, never against itself.

SW2(P, Q)^2 = E_theta[ W2(theta^T P, theta^T Q)^2 ], theta uniform on the unit sphere S^{D-1}.

* Scale: for N(0, I) against N(0, c^2 I) every projection on a *unit* theta is N(0, 1) against
  N(0, c^2), whose 1-D W2 is |c - 1|, so SW2^2 = (c - 1)^2 whatever the directions. A direction of
  norm r instead gives r^2 (c - 1)^2: the scale case measures E|theta|^2, i.e. it is direction-free
  only for unit vectors (unnormalised Gaussian directions give E|theta|^2 = D; normalising by D
  gives 1 / D).
* Shift: N(0, I) against N(mu, I) gives W2^2 = (theta . mu)^2 per direction, and for theta uniform
  on the sphere (theta . mu)^2 / |mu|^2 = theta_1^2 ~ Beta(1/2, (D - 1)/2): mean 1 / D, variance
  2 (D - 1) / (D^2 (D + 2)). So SW2^2 = |mu|^2 / D, estimated from K directions with standard error
  |mu|^2 sqrt(2 (D - 1) / (D^2 (D + 2) K)).

The *coupled* cases (y = c x or y = x + mu on the same points, with x whitened so that its
uncentred second moment is exactly I) remove the sampling error of the points: sorting keeps the
coupling (c > 0), so the empirical SW2^2 equals the closed form up to rounding (scale) or up to the
Monte-Carlo error of the directions alone (shift). The *independent* cases draw x and y apart and
check the same closed forms with a tolerance from the points' sampling error.

``sliced_w2`` reports no Monte-Carlo standard error of its own, so there is no stated s.e. to check
coverage of; the tolerances below are computed from the distributions above.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sde_diffusion.evaluation.metrics import sliced_w2

F64 = torch.float64


def _whitened(n: int, d: int, seed: int) -> torch.Tensor:
    """n points in R^d with uncentred second moment X^T X / n = I exactly (numpy's eigh, float64)."""
    z = np.random.default_rng(seed).standard_normal((n, d))
    w, u = np.linalg.eigh(z.T @ z / n)
    x = z @ u @ np.diag(w ** -0.5) @ u.T
    np.testing.assert_allclose(x.T @ x / n, np.eye(d), atol=1e-12)
    return torch.from_numpy(x)


def _sw2_sq(x, y, projections, seed, calls=1):
    """SW2^2 over calls x projections directions: each call returns sqrt(mean over its directions),
    so the mean of the squares over equal-size calls is the mean over all directions."""
    g = torch.Generator().manual_seed(seed)
    return sum(float(sliced_w2(x, y, projections=projections, generator=g)) ** 2 for _ in range(calls)) / calls


@pytest.mark.parametrize("c", [2.5, 0.5, 1.0])
@pytest.mark.parametrize("d,projections,seed", [(6, 64, 0), (6, 1, 1), (17, 200, 2)])
def test_scale_change_is_exact_and_direction_free_only_for_unit_directions(c, d, projections, seed):
    """y = c x with x whitened (X^T X / n = I): per unit direction the sorted projections are
    c times each other, so W2^2 = (c - 1)^2 theta^T (X^T X / n) theta = (c - 1)^2 |theta|^2 =
    (c - 1)^2 exactly, for every seed and every number of directions (even one). Tolerance: float64
    rounding (1e-10 relative). Unnormalised directions would give (c - 1)^2 |theta|^2 with
    |theta|^2 ~ chi^2_D (mean D = 6 or 17); directions divided by D give |theta|^2 / D^2."""
    x = _whitened(256, d, seed)
    got = _sw2_sq(x, c * x, projections, seed)
    assert got == pytest.approx((c - 1) ** 2, rel=1e-10, abs=1e-12)


def test_scale_change_between_independent_samples():
    """x ~ N(0, I_4), y ~ N(0, c^2 I_4) drawn apart, N = 20000, c = 2: SW2^2 = (c - 1)^2 = 1.
    Sampling error (delta method): with sorted coupling W2^2 - (c - 1)^2 ~ (1 - c) [(m_x - 1) -
    c (m_y - 1)], m the projected sample second moments (s.d. sqrt(2 / N) each); averaged over
    directions the moments enter as tr / D, so s.d. ~ |c - 1| sqrt(2 (1 + c^2) / (N D)) = 0.011.
    Tolerance 5 s.d. = 0.056 (bias O(log log N / N) ~ 1e-4 is negligible). A factor D = 4 or
    1 / D^2 in |theta|^2 is far outside."""
    n, d, c = 20000, 4, 2.0
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = c * torch.randn(n, d, generator=g, dtype=F64)
    sd = abs(c - 1) * math.sqrt(2 * (1 + c ** 2) / (n * d))
    assert _sw2_sq(x, y, 64, 7) == pytest.approx((c - 1) ** 2, abs=5 * sd)


@pytest.mark.parametrize("d", [3, 5, 12])
def test_mean_shift_gives_norm_squared_over_d(d):
    """y = x + mu on the same points: sorting keeps the pairing, so W2^2 = (theta . mu)^2 exactly per
    direction and SW2^2 is the mean of (theta . mu)^2 over K = 4 x 50000 directions:
    |mu|^2 / D with s.e. |mu|^2 sqrt(2 (D - 1) / (D^2 (D + 2) K)) (theta_1^2 ~ Beta(1/2, (D-1)/2)).
    Tolerance 5 s.e. (about 1.2% relative at D = 5). Unnormalised Gaussian directions give
    E (theta . mu)^2 = |mu|^2, i.e. D times too much; directions / D give 1 / D^2 of it."""
    k = 4 * 50000
    mu = torch.linspace(-1.0, 2.0, d, dtype=F64)
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(d), dtype=F64)
    norm2 = float(mu.square().sum())
    se = norm2 * math.sqrt(2 * (d - 1) / (d ** 2 * (d + 2) * k))
    assert _sw2_sq(x, x + mu, 50000, d, calls=4) == pytest.approx(norm2 / d, abs=5 * se)


def test_mean_shift_between_independent_samples():
    """x ~ N(0, I_4), y ~ N(mu, I_4) drawn apart, N = 1000, |mu|^2 = 4: SW2^2 = |mu|^2 / D = 1.
    Both samples are shifted to their exact means (0 and mu), which removes the 2 mu . (xbar - ybar)
    / D term (s.d. 2 |mu| sqrt(2 / N) / D = 0.045 here) and leaves: the directions' Monte-Carlo
    s.e. sqrt(2 (D-1) / (D^2 (D+2) K)) |mu|^2 = 0.016 at K = 4096, and a positive bias, the
    empirical 1-D floor between two size-N samples of N(0, 1), O(log log N / N) ~ 4e-3.
    Tolerance 0.09 = 5 s.e. + 2 x that bias; unsorted projections give about 2 + 1 = 3 and
    unnormalised directions 4 (= D)."""
    n, d = 1000, 4
    g = torch.Generator().manual_seed(3)
    mu = torch.tensor([2.0, 0.0, 0.0, 0.0], dtype=F64)
    x, y = (torch.randn(n, d, generator=g, dtype=F64) for _ in range(2))
    x, y = x - x.mean(0), y - y.mean(0) + mu
    assert _sw2_sq(x, y, 1024, 3, calls=4) == pytest.approx(1.0, abs=0.09)


def test_returns_the_root_of_the_mean_squared_sorted_difference():
    """One dimension, where every unit direction is +-1: SW2 is the W2 of the two sorted samples,
    sqrt(mean((sort x - sort y)^2)). x = (0, 1, 2, 3) against y = (4, 0, 1, 2) in shuffled order:
    sorted y = (0, 1, 2, 4), differences (0, 0, 0, 1), W2 = sqrt(1/4) = 0.5 (scipy's W1 between them
    is 0.25, the mean |difference|, as a cross-check of the pairing)."""
    from scipy.stats import wasserstein_distance

    x = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=F64)
    y = torch.tensor([[4.0], [0.0], [1.0], [2.0]], dtype=F64)
    assert wasserstein_distance(x[:, 0].numpy(), y[:, 0].numpy()) == pytest.approx(0.25)
    assert float(sliced_w2(x, y, projections=5, generator=torch.Generator().manual_seed(0))) == pytest.approx(0.5)
