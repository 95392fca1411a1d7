"""Time grids: endpoints, monotonicity and the defining spacing of each kind, for every SDE.
Bisection runs to float64 resolution, so spacings hold to ~1e-12 relative; asserted at 1e-9."""

import pytest
import torch

import _cases
from sde_diffusion import VPSDE
from solvers import METHODS
from solvers.timesteps import GRIDS, sigma, time_grid

SDES = _cases.sdes()  # every registered SDE


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("kind", GRIDS)
def test_grid_endpoints_and_order(sde, kind):
    t = time_grid(sde, 12, 1e-3, kind)
    assert t.shape == (13,) and t.dtype == torch.float64
    assert float(t[0]) == sde.T and float(t[-1]) == 1e-3
    assert bool((t[1:] < t[:-1]).all())


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("kind, transform", [("uniform", lambda sde, t: t),
                                             ("edm", lambda sde, t: sigma(sde, t) ** (1 / 7)),
                                             ("logsnr", lambda sde, t: sigma(sde, t).log())])
def test_grid_is_uniform_in_its_variable(sde, kind, transform):
    v = transform(sde, time_grid(sde, 12, 1e-3, kind))
    d = v[1:] - v[:-1]
    torch.testing.assert_close(d, torch.full_like(d, float(d.mean())), rtol=1e-9, atol=0)


def test_edm_rho_option():
    sde = VPSDE()
    v = sigma(sde, time_grid(sde, 10, 1e-3, "edm", rho=3.0)) ** (1 / 3)
    torch.testing.assert_close(v[1:] - v[:-1], (v[1:] - v[:-1]).mean().expand(10), rtol=1e-9, atol=0)


@pytest.mark.parametrize("args, match", [
    ((0, 1e-3, "uniform"), "steps"), ((5, 0.0, "uniform"), "eps must lie"),
    ((5, 1.5, "uniform"), "eps must lie"), ((5, 1e-3, "karras"), "allowed: uniform")])
def test_bad_grids(args, match):
    with pytest.raises(ValueError, match=match):
        time_grid(VPSDE(), *args)


def test_default_grids():
    """Uniform by default; Heun uses the EDM schedule of Karras et al., DPM-Solver uniform log-SNR
    (its paper's recommendation for few steps)."""
    defaults = {n: m.options["grid"].default for n, m in METHODS.items() if "grid" in m.options}
    assert defaults == {"ddim": "uniform", "ode": "uniform", "heun": "edm", "dpm_solver": "logsnr",
                        "dpm_solver_sde": "logsnr", "unipc": "logsnr", "sa_solver": "logsnr"}
