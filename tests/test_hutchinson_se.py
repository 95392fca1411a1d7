"""The Hutchinson estimate of ``log_likelihood`` and its standard error, against closed forms.

Case: a linear score s(x) = A x (constant Jacobian A, not symmetric) under the VE SDE with
sigma(t) = a (b / a)^t, f = 0 and g(t)^2 = d sigma^2 / dt. The code integrates
    d delta / dt = f D - g^2 / 2 * v^T (ds/dx) v = -g(t)^2 / 2 * v^T A v,
whose integrand does not depend on x, so each probe v gives exactly
    delta(v) = -(sigma(T)^2 - sigma(eps)^2) / 2 * v^T A v = -C v^T A v,  C = (b^2 - a^2 (b/a)^(2 eps)) / 2,
whatever the trajectory. With E[v v^T] = I, E delta = -C tr A, and per probe
    Var delta = C^2 Var(v^T A v),  Var(v^T A v) = 2 sum_{i != j} ((A_ij + A_ji) / 2)^2  (Rademacher),
                                                  2 ||(A + A^T) / 2||_F^2                (Gaussian).
The reported ``stderr`` is std over the P probes (P - 1 degrees of freedom) / sqrt(P), so
P stderr^2 is the unbiased sample variance s^2 of P independent draws of delta(v): its mean over N
samples (each with its own probes) estimates C^2 Var(v^T A v), with
    Var(s^2) = mu4 / P - sigma^4 (P - 3) / (P (P - 1))
(mu4 the fourth central moment of delta(v); for P = 3 the second term vanishes). mu4 is exact:
by enumeration of the 2^D equally likely Rademacher probes, or from the Gaussian quadratic form's
cumulants kappa_k = 2^(k-1) (k-1)! tr(S^k), mu4 = kappa_4 + 3 kappa_2^2. Tolerances are 5 s.d. of
the mean over N samples: 10% (Rademacher) and 16% (Gaussian) of the variance at P = 3, N = 3000,
while std with ddof = 0 gives (P - 1) / P = 2/3 of the variance and dividing by sqrt(P - 1) gives
P / (P - 1) = 3/2 of it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from sde_diffusion import VESDE
from sde_diffusion.likelihood import log_likelihood

A = np.array([[-0.5, 0.8, 0.1, -0.3],
              [0.2, 0.4, -0.6, 0.5],
              [0.7, -0.2, -0.3, 0.4],
              [0.1, 0.9, 0.3, 0.2]])
SYM = (A + A.T) / 2
SMIN, SMAX, EPS = 0.1, 1.0, 1e-5
C = (SMAX ** 2 - (SMIN * (SMAX / SMIN) ** EPS) ** 2) / 2  # (sigma(T)^2 - sigma(eps)^2) / 2
P, N = 3, 3000


def _moments(noise: str) -> tuple[float, float, float]:
    """(mean, variance, fourth central moment) of v^T A v, from numpy, never from the package."""
    if noise == "rademacher":
        v = np.array(list(itertools.product([-1.0, 1.0], repeat=A.shape[0])))  # all 16, equally likely
        q = np.einsum("ki,ij,kj->k", v, A, v)
        var = float(q.var())
        closed = 2 * (np.square(SYM).sum() - np.square(np.diag(SYM)).sum())  # 2 sum_{i!=j} sym_ij^2
        assert var == pytest.approx(closed, rel=1e-12)  # 4.77 for this A
        return float(q.mean()), var, float(((q - q.mean()) ** 4).mean())
    t2, t4 = np.trace(SYM @ SYM), np.trace(np.linalg.matrix_power(SYM, 4))
    return float(np.trace(A)), 2 * t2, 48 * t4 + 3 * (2 * t2) ** 2


@pytest.fixture(scope="module", params=["rademacher", "gaussian"])
def run(request):
    noise = request.param
    x = torch.randn(N, A.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = torch.tensor(A)
    res = log_likelihood(lambda x, t: x @ a.T, VESDE(sigma_min=SMIN, sigma_max=SMAX), x, divergence="hutchinson",
                         probes=P, noise=noise, eps=EPS, rtol=1e-4, atol=1e-6,
                         generator=torch.Generator().manual_seed(1))
    return noise, res


def test_trace_closed_forms():
    """tr A = -0.2; Rademacher Var(v^T A v) = 4.77 by enumeration and by 2 sum_{i!=j} sym_ij^2;
    Gaussian 2 ||sym||_F^2 adds the diagonal: 4.77 + 2 (0.25 + 0.16 + 0.09 + 0.04) = 5.85."""
    m, var, _ = _moments("rademacher")
    assert m == pytest.approx(-0.2) and var == pytest.approx(4.77)
    m, var, _ = _moments("gaussian")
    assert m == pytest.approx(-0.2) and var == pytest.approx(5.85)


def test_mean_delta_is_unbiased(run):
    """mean over N samples of the P-probe mean delta: -C tr A, s.d. C sqrt(Var / (P N)); 5 s.d."""
    noise, res = run
    m, var, _ = _moments(noise)
    got = float(res.delta_log_prob.mean())
    assert got == pytest.approx(-C * m, abs=5 * C * math.sqrt(var / (P * N)))


def test_reported_variance_matches_the_closed_form(run):
    """mean over samples of P stderr^2 = s^2 (ddof 1) against C^2 Var(v^T A v), 5 s.d. of that mean,
    s.d. = sqrt(Var(s^2) / N) with Var(s^2) = mu4 / P (P = 3) from the exact moments above."""
    noise, res = run
    _, var, mu4 = _moments(noise)
    sigma2, mu4 = C ** 2 * var, C ** 4 * mu4
    var_s2 = mu4 / P - sigma2 ** 2 * (P - 3) / (P * (P - 1))
    got = float((P * res.stderr.square()).mean())
    tol = 5 * math.sqrt(var_s2 / N)
    assert tol < 0.2 * sigma2  # far inside the factors 2/3 (ddof = 0) and 3/2 (sqrt(P - 1))
    assert got == pytest.approx(sigma2, abs=tol)


def test_actual_error_matches_the_stated_se(run):
    """The s.e. is what the error is: mean over samples of P (delta - exact)^2 estimates the same
    C^2 Var(v^T A v); Var(P (xbar - m)^2) = (mu4 + 3 (P - 1) sigma^4) / P - sigma^4. 5 s.d."""
    noise, res = run
    m, var, mu4 = _moments(noise)
    sigma2, mu4 = C ** 2 * var, C ** 4 * mu4
    err2 = P * (res.delta_log_prob - (-C * m)).square()
    sd = math.sqrt(((mu4 + 3 * (P - 1) * sigma2 ** 2) / P - sigma2 ** 2) / N)
    assert float(err2.mean()) == pytest.approx(sigma2, abs=5 * sd)
