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


@pytest.mark.parametrize("variant, order, corrector", [(v, o, True) for v in ("bh1", "bh2") for o in (2, 3)]
                         + [("bh2", 3, False), ("bh1", 2, False)])
def test_unipc_is_diffusers_unipc_multistep_scheduler(variant, order, corrector):
    """UniPCMultistepScheduler(predict_x0=True, solver_type=variant, solver_order=order,
    timestep_spacing="trailing", lower_order_final=False) with 10 timesteps 999, 899, .., 99 of N = 1000
    (scaled_linear, our float64 table installed) against ``unipc`` on the knots t = (k+1)/N = 1.0, ..,
    0.1 (``grid="uniform"``, 9 steps, no denoising): diffusers' first 9 ``step`` calls. Call k evaluates at t_k, corrects
    x_k with that evaluation (none at k = 0) and predicts x_(k+1), so after 9 calls it holds the
    uncorrected x at t = 0.1, as ours (whose last step has no corrector). lower_order_final=False keeps
    diffusers from lowering the order on its last steps (ours never does); disable_corrector=[] (the
    default) for corrector=True, every step index for corrector=False (UniP alone). set_timesteps's float32 sigmas are replaced by float64 ones (measured gap with float32
    sigmas: 1e-7). Its 10th call, to final sigma 0, is not compared: with order > 1 it extrapolates to
    lambda = inf.
    Measured gap ~7e-16 relative (orders 1-2, corrector on and off)."""
    diffusers = pytest.importorskip("diffusers")
    from test_diffusers import float64_tables, relative_gap, tiny_unet
    from sde_diffusion.models.diffusers_adapter import from_diffusers
    import solvers
    unet = tiny_unet()
    sched = diffusers.UniPCMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                              beta_schedule="scaled_linear", solver_order=order,
                                              solver_type=variant, predict_x0=True, lower_order_final=False,
                                              timestep_spacing="trailing",
                                              disable_corrector=[] if corrector else list(range(10)))
    model = from_diffusers(unet, sched)
    float64_tables(sched, model.sde)
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == list(range(999, 0, -100))
    # set_timesteps rounds its sigmas to float32: install the float64 ones, ((1 - abar)/abar)^(1/2)
    abar = sched.alphas_cumprod[sched.timesteps]
    sig = torch.cat([((1 - abar) / abar).sqrt(), sched.sigmas[-1:].double()])
    torch.testing.assert_close(sched.sigmas.double(), sig, rtol=2**-23, atol=0)
    sched.sigmas = sig
    x_T = torch.randn(2, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    x = x_T
    with torch.no_grad():
        for k in sched.timesteps[:-1]:
            x = sched.step(unet(x, k).sample, k, x).prev_sample
        ours = solvers.sample(model, model.sde, x_T.shape, "unipc", 9, eps=0.1, x_T=x_T, dtype=F64,
                              denoise=False, grid="uniform", order=order, variant=variant,
                              corrector=corrector)
    assert ours.nfe == 9
    assert relative_gap(ours.x, x) < 1e-10
