"""Sample-quality metrics against a known distribution (used by tests, benchmarks and the CLI).

Sliced 2-Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015):
    SW2(P, Q)^2 = E_theta[ W2(theta^T P, theta^T Q)^2 ],  theta ~ Uniform(S^{D-1}),
and in one dimension W2^2 between two equal-size empirical measures is the mean squared difference
of the sorted samples. The *noise floor* is SW2 between two independent sample sets of the true
distribution of the same size: what a perfect sampler scores at that sample size.
"""

from __future__ import annotations

import torch

from .. import checks


def sliced_w2(x: torch.Tensor, y: torch.Tensor, projections: int = 256,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """SW2 between the empirical measures of x and y, both of shape (N, ...) with the same N.

    Uses ``projections`` random directions drawn from ``generator`` (on x's device), so the same
    generator state gives the same directions for every pair compared. Returns a 0-dim tensor.
    """
    checks.float_tensor("x", x)
    checks.float_tensor("y", y)
    checks.positive_int("projections", projections)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape (N, ...), got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}.")
    xf, yf = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1).to(x.dtype)
    theta = torch.randn(xf.shape[1], projections, generator=generator, device=x.device, dtype=x.dtype)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = torch.sort(xf @ theta, dim=0)
    py, _ = torch.sort(yf @ theta, dim=0)
    return (px - py).square().mean().sqrt()


def nll_gap(log_prob, samples: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The mean true-NLL gap  E_samples[-log p_0(x)] - E_reference[-log p_0(y)]  in nats per sample.

    ``log_prob`` is the true log-density (e.g. ``GaussianMixture.log_prob``), ``reference`` fresh
    true samples. Positive: samples sit where the true density is lower than typical (blur, stray
    mass between modes); negative: they crowd the modes (under-dispersion). 0 for a perfect sampler
    up to Monte-Carlo error. Returns a 0-dim tensor.
    """
    return -log_prob(samples).mean() + log_prob(reference).mean()


def escaped(x: torch.Tensor, *, reference: torch.Tensor | None = None, box: tuple[float, float] | None = None,
            factor: float = 3.0, margin: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(share of samples outside the data's range, largest sample norm), both 0-dim tensors.

    Vector data (``reference`` (M, D) given): with centre c = mean of the reference and radius
    R = max_j ||y_j - c||, a sample escaped when ||x_i - c|| > factor * R; the norm is ||x_i - c||.
    Images (``box`` = (lo, hi) given): a sample escaped when any value lies outside
    [lo - margin (hi - lo), hi + margin (hi - lo)]; the norm is ||x_i - (lo + hi) / 2|| (flattened).
    """
    checks.float_tensor("x", x)
    if (reference is None) == (box is None):
        raise ValueError("escaped needs exactly one of reference= (vector data) or box=(lo, hi) (images).")
    xf = x.reshape(x.shape[0], -1)
    if reference is not None:
        ref = reference.reshape(reference.shape[0], -1).to(xf)
        if ref.shape[1] != xf.shape[1]:
            raise ValueError(f"x and reference must have the same dimension, got {xf.shape[1]} and {ref.shape[1]}.")
        centre = ref.mean(0)
        norm = (xf - centre).norm(dim=1)
        out = norm > factor * (ref - centre).norm(dim=1).max()
    else:
        lo, hi = box
        pad = margin * (hi - lo)
        norm = (xf - (lo + hi) / 2).norm(dim=1)
        out = ((xf < lo - pad) | (xf > hi + pad)).any(dim=1)
    return out.to(xf.dtype).mean(), norm.max()
