"""``sample(noise=callable)``: injected draws replace the generator's, one call per fresh draw.

A callable that draws from a generator seeded like ``generator=`` must give the generator's run bit
for bit (the prior sample being its first draw), for every registered method and variant; a counting
callable shows how many draws each run makes, and a wrong-shaped draw is refused in one line.
"""

from __future__ import annotations

import pytest
import torch

import solvers
from sde_diffusion.analytic import grid2d
from sde_diffusion.sde import VPSDE, VESDE

from _cases import case_id, method_options, method_variants, supports

SDE_LIST = (VPSDE(), VESDE())


def _score(sde):
    return grid2d().score(sde)


CASES = [(n, o) for n, o in method_variants(steps=6) if not solvers.METHODS[n].own_noise]


@pytest.mark.parametrize("sde", SDE_LIST, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("name,opts", CASES, ids=[case_id(n, o) for n, o in CASES])
def test_injected_generator_draws_reproduce_the_generator_run(name, opts, sde):
    if not supports(name, sde):
        pytest.skip(f"{name} is vp_only")
    opts = method_options(opts)
    score = _score(sde)
    kw = dict(steps=6, dtype=torch.float64, **opts)
    ref = solvers.sample(score, sde, (5, 2), name, generator=torch.Generator().manual_seed(3), **kw)
    g, calls = torch.Generator().manual_seed(3), []

    def noise(x):
        calls.append(tuple(x.shape))
        return torch.randn(x.shape, generator=g, dtype=x.dtype)
    out = solvers.sample(score, sde, (5, 2), name, noise=noise, **kw)
    assert torch.equal(out.x, ref.x)
    assert calls and all(c == (5, 2) for c in calls)  # at least the prior draw


def test_a_given_x_T_leaves_only_the_step_draws():
    """Euler-Maruyama makes one draw per step: K calls when x_T is given, K + 1 with the prior."""
    sde, calls = VPSDE(), []

    def noise(x):
        calls.append(1)
        return torch.zeros_like(x)
    score = _score(sde)
    solvers.sample(score, sde, (4, 2), "euler_maruyama", steps=7, noise=noise, x_T=torch.zeros(4, 2))
    assert len(calls) == 7
    solvers.sample(score, sde, (4, 2), "euler_maruyama", steps=7, noise=noise)
    assert len(calls) == 7 + 8


def test_bad_noise_is_refused_in_one_line():
    sde = VPSDE()
    score = _score(sde)
    with pytest.raises(ValueError, match=r"noise must return a tensor shaped like x, \(4, 2\); got \(4,\)"):
        solvers.sample(score, sde, (4, 2), "euler_maruyama", steps=3, noise=lambda x: torch.zeros(4))
    with pytest.raises(TypeError, match="noise must be a callable"):
        solvers.sample(score, sde, (4, 2), "euler_maruyama", steps=3, noise=3)
    with pytest.raises(ValueError, match="draws its own Brownian path"):
        solvers.sample(score, sde, (4, 2), "sde", steps=3, noise=torch.randn_like)
    with pytest.raises(ValueError, match="give noise= or generator=, not both"):
        solvers.sample(score, sde, (4, 2), "euler_maruyama", steps=3, noise=torch.randn_like,
                       generator=torch.Generator().manual_seed(0))
