"""Inpainting (solvers/inpaint.py) against the analytic mixture.

Ground truth: grid2d is a product distribution (equal weights on a square grid of isotropic modes),
p_0(x1, x2) = p(x1) p(x2), and the forward noise is independent per coordinate, so
p_t(x1, x2) = p_t(x1) p_t(x2) at every t and the x2-component of the joint score is the score of the
1-D marginal p_t(x2), whatever x1 is. Holding x1 by its forward marginal therefore leaves the x2
dynamics exactly those of the same sampler run on the 1-D marginal mixture; the conditional
p(x2 | x1 = a) is that marginal. So:
  - deterministic samplers: from the same x_T, the imputed x2 equals the 1-D run to float64 rounding;
  - stochastic samplers: the imputed x2 and an independent 1-D run have the same law; their means
    and variances agree within 5 standard errors of the difference of two independent estimates;
  - in every case the returned known part is exactly the given value.
"""

import math

import pytest
import torch

import solvers
from solvers.probability_flow import ADAPTIVE
from sde_diffusion.analytic import GaussianMixture, grid2d
from sde_diffusion.schedule import DDPMSchedule
from sde_diffusion.sde import VPSDE

import _cases

SDE = VPSDE()
GRID = grid2d()
MARGINAL = GaussianMixture(GRID.means[::4, 0:1], GRID.variances[::4, 0:1])  # the 4 x-values (equal to the y-values)
MASK = torch.tensor([True, False])
A = 0.25  # the known x1


def _known(n):
    y = torch.zeros(n, 2, dtype=torch.float64)
    y[:, 0] = A
    return y


def test_marginal_is_the_grid_factor():
    assert torch.equal(MARGINAL.means[:, 0], torch.unique(GRID.means[:, 1]))


def _fixed_step(method, opts):
    """Deterministic and fixed-step (adaptive dopri5 & co. restart per interval: the test below)."""
    return not _cases.is_stochastic(method, opts) and opts.get("solver", "dopri5" if method == "ode" else None) not in ADAPTIVE


@pytest.mark.parametrize("method, opts", [pytest.param(m, o, id=_cases.case_id(m, o))
                                          for m, o in _cases.method_variants(20) if _fixed_step(m, o)])
def test_deterministic_imputation_equals_the_marginal_run(method, opts):
    """Every fixed-step deterministic method and option variant (``_cases``), 20 steps."""
    n, steps = 256, 20
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = solvers.sample(GRID.score(SDE), SDE, (n, 2), method, steps, dtype=torch.float64, x_T=x_T,
                         inpaint=(MASK, _known(n)), **opts).x
    ref = solvers.sample(MARGINAL.score(SDE), SDE, (n, 1), method, steps, dtype=torch.float64,
                         x_T=x_T[:, 1:], **opts).x
    assert torch.equal(got[:, 0], torch.full((n,), A, dtype=torch.float64))
    # same operations on the same numbers except the mixture sums over 16 vs 4 components: rounding only
    torch.testing.assert_close(got[:, 1:], ref, rtol=0, atol=1e-9)


def test_adaptive_ode_imputation_agrees_with_the_marginal_run():
    """dopri5 restarts its step control in every grid interval when inpainting, so it takes other
    steps than the 1-D run: the two solutions of the same ODE differ by their solver errors, not by
    rounding. At rtol = atol = 1e-8 the measured difference is 3e-6; we assert 1e-4."""
    n, opts = 256, {"solver": "dopri5", "rtol": 1e-8, "atol": 1e-8}
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = solvers.sample(GRID.score(SDE), SDE, (n, 2), "ode", 20, dtype=torch.float64, x_T=x_T,
                         inpaint=(MASK, _known(n)), **opts).x
    ref = solvers.sample(MARGINAL.score(SDE), SDE, (n, 1), "ode", 20, dtype=torch.float64, x_T=x_T[:, 1:], **opts).x
    assert torch.equal(got[:, 0], torch.full((n,), A, dtype=torch.float64))
    torch.testing.assert_close(got[:, 1:], ref, rtol=0, atol=1e-4)


# (not pc: its Langevin step size uses norms over all coordinates, which couples x1 into x2's steps)
STOCHASTIC_CASES = [("euler_maruyama", {}), ("reverse_diffusion", {}), ("ancestral", {}), ("sde", {}), ("sde", {"solver": "srk"}),
                    ("dpm_solver_sde", {}), ("sa_solver", {})]
# (nor adaptive_sde: its error norm also couples x1 into x2's steps, and in one or two dimensions its
# accept/reject test biases the spread, differently in the 2-D and the 1-D run: tests/test_adaptive_sde.py)
COUPLED = ("pc", "adaptive_sde")


def test_every_stochastic_method_but_the_coupled_has_a_marginal_law_case():
    assert _cases.missing_methods(STOCHASTIC_CASES) == [m for m in _cases.methods() if m not in _cases.stochastic() or m in COUPLED], \
        "a new stochastic method needs a case in test_stochastic_imputation_has_the_marginal_law"


@pytest.mark.parametrize("method, opts", [
    # srk: ~40 s of the 2-core budget; only in the full run
    pytest.param(m, o, marks=pytest.mark.slow) if o.get("solver") == "srk" else (m, o) for m, o in STOCHASTIC_CASES])
def test_stochastic_imputation_has_the_marginal_law(method, opts):
    n, steps = 8000, 100
    got = solvers.sample(GRID.score(SDE), SDE, (n, 2), method, steps, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(2), inpaint=(MASK.float(), _known(n)), **opts).x
    ref = solvers.sample(MARGINAL.score(SDE), SDE, (n, 1), method, steps, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(3), **opts).x[:, 0]
    assert torch.equal(got[:, 0], torch.full((n,), A, dtype=torch.float64))
    x2 = got[:, 1]
    se_mean = math.sqrt((x2.var() + ref.var()) / n)
    assert abs(x2.mean() - ref.mean()) < 5 * se_mean
    # SE of a sample variance: sqrt(Var[(x - mean)^2] / n), estimated from each sample
    se_var = math.sqrt((((x2 - x2.mean()) ** 2).var() + ((ref - ref.mean()) ** 2).var()) / n)
    assert abs(x2.var() - ref.var()) < 5 * se_var


def test_known_part_is_held_on_the_forward_marginal_along_the_path():
    """With the zero score and EM, the known coordinate at each grid time t_k is m(t_k) y + s(t_k) z:
    its empirical mean and std over 4000 paths match m y and s within 5 standard errors."""
    n, steps = 4000, 10
    out = solvers.sample(lambda x, t: torch.zeros_like(x), SDE, (n, 2), "euler_maruyama", steps,
                         dtype=torch.float64, generator=torch.Generator().manual_seed(4), denoise=False,
                         return_trajectory=True, inpaint=(MASK, _known(n) * 4))
    grid = torch.linspace(SDE.T, 1e-3, steps + 1, dtype=torch.float64)
    m, s = SDE.marginal(grid)
    x1 = out.trajectory[:, :, 0]
    assert torch.all((x1.mean(1) - 4 * A * m).abs() < 5 * s / math.sqrt(n))
    assert torch.all((x1.std(1) / s - 1).abs() < 5 / math.sqrt(2 * n))


@pytest.mark.parametrize("inpaint, match", [
    ((MASK, torch.zeros(3, 2)), "x_known must have the samples' shape"),
    ((torch.ones(3), torch.zeros(4, 2)), "does not broadcast"),
    ((torch.tensor([0.5, 1.0]), torch.zeros(4, 2)), "booleans or 0/1"),
])
def test_bad_inpaint_input(inpaint, match):
    with pytest.raises(ValueError, match=match):
        solvers.sample(GRID.score(SDE), SDE, (4, 2), "euler_maruyama", 5, inpaint=inpaint)


def test_inpaint_needs_a_pair():
    with pytest.raises(TypeError, match="pair"):
        solvers.sample(GRID.score(SDE), SDE, (4, 2), "ddim", 5, inpaint=MASK)


def test_a_chains_known_part_is_held_on_the_chains_own_marginals():
    """ancestral on a respaced DDPM chain (``schedule=``) with inpainting: after the step to the chain's
    time tau_k / T the known coordinate is sqrt(abar_{tau_k}) y + sqrt(1 - abar_{tau_k}) z, with abar from
    the betas here (not the package's tables) and z the noise drawn for it (the package draws, per call,
    the hold at x_T, then per step the step's noise, except at the last, and the hold's); at t = 0 and in
    the result it is y. Any grid other than the chain's (e.g. the uniform grid of the SDE) fails this."""
    T, n, y0 = 50, 64, 0.7
    sched = DDPMSchedule(T, 1e-3, 0.2).respace(7)
    tau = torch.tensor(sched.keep)
    abar = torch.cumprod(1 - torch.linspace(1e-3, 0.2, T, dtype=torch.float64), 0)[tau - 1].flip(0)
    m = torch.cat([abar.sqrt(), torch.ones(1, dtype=torch.float64)])       # at tau_K/T, ..., tau_1/T, 0
    s = torch.cat([(1 - abar).sqrt(), torch.zeros(1, dtype=torch.float64)])
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.full((n, 2), y0, dtype=torch.float64)
    out = solvers.sample(GRID.score(sched.embedding()), sched.embedding(), (n, 2), "ancestral", 7, schedule=sched,
                         x_T=x_T, dtype=torch.float64, generator=torch.Generator().manual_seed(2),
                         return_trajectory=True, inpaint=(MASK, y))
    gen, z = torch.Generator().manual_seed(2), []
    for k in range(8):  # hold k, after step k (which drew its own noise first, except the last)
        if 0 < k < 7:
            torch.randn((n, 2), generator=gen, dtype=torch.float64)
        z.append(torch.randn((n, 2), generator=gen, dtype=torch.float64)[:, 0])
    want = m[:, None] * y0 + s[:, None] * torch.stack(z)
    torch.testing.assert_close(out.trajectory[:, :, 0], want, rtol=1e-12, atol=1e-12)
    assert torch.equal(out.x[:, 0], y[:, 0])
