"""The exact divergence tr(ds/dx) by torch.func against the vector-Jacobian loop and the analytic
mixture's closed form, and the fallback to the loop for scores torch.func rejects."""

import pytest
import torch

from sde_diffusion import VPSDE, build_model, log_likelihood, random_mixture, ring2d
from sde_diffusion.likelihood import _score_and_quadratic_forms, _score_and_trace_func
from sde_diffusion import load

F64 = torch.float64
SDE = VPSDE()


def _mlp():
    torch.manual_seed(0)
    return build_model("mlp", SDE, dim=2, hidden=32, blocks=2).double().eval()


def _unet():
    return load("shipped:digits_vp").double()


CASES = {
    "mlp": (_mlp, (16, 2)),
    "unet": (_unet, (3, 1, 8, 8)),
    "ring2d": (lambda: ring2d().score(SDE), (16, 2)),
    "gmm64-image": (lambda: random_mixture(64, 8).score(SDE), (4, 1, 8, 8)),
}


@pytest.mark.parametrize("name", CASES)
def test_func_trace_equals_the_loop(name):
    make, shape = CASES[name]
    score = make()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.7
    t = torch.linspace(0.05, 0.9, shape[0], dtype=F64)
    with torch.no_grad():
        s_loop, q_loop = _score_and_quadratic_forms(score, x, t, None)
        s_func, q_func = _score_and_trace_func(score, x, t)
    assert q_func.shape == q_loop.shape == (1, shape[0])
    assert (q_func - q_loop).abs().max() <= 1e-10
    assert (s_func - s_loop).abs().max() <= 1e-10
    if name in ("ring2d", "gmm64-image"):  # and both are the closed form
        gm = ring2d() if name == "ring2d" else random_mixture(64, 8)
        assert (q_func[0] - gm.score_divergence(x, t, SDE)).abs().max() <= 1e-9


def test_log_likelihood_through_func_equals_the_loop():
    gm = ring2d()
    x = gm.sample(8, torch.Generator().manual_seed(0), dtype=F64)
    func = log_likelihood(gm.score(SDE), SDE, x, jacobian="func")
    loop = log_likelihood(gm.score(SDE), SDE, x, jacobian="loop")
    assert (func.jacobian, loop.jacobian) == ("func", "loop")
    assert func.nfe == loop.nfe
    assert (func.log_prob - loop.log_prob).abs().max() <= 1e-10


def test_data_dependent_score_falls_back_to_the_loop():
    gm = ring2d()

    def branchy(x, t):  # vmap cannot trace a Python branch on values
        s = gm.score_at(x, t, SDE)
        return s if bool(x.abs().max() < 100) else 2 * s

    x = gm.sample(8, torch.Generator().manual_seed(0), dtype=F64)
    r = log_likelihood(branchy, SDE, x, jacobian="func")
    ref = log_likelihood(gm.score(SDE), SDE, x, jacobian="loop")
    assert r.jacobian == "loop"
    assert (r.log_prob - ref.log_prob).abs().max() <= 1e-12


def test_detached_score_is_refused_on_the_func_path():
    with pytest.raises(ValueError, match="without a graph to x"):
        log_likelihood(lambda x, t: -x.detach(), SDE, torch.randn(4, 2, dtype=F64), jacobian="func")


def test_auto_jacobian_takes_the_faster_measured_and_remembers(monkeypatch):
    """``fastest_jacobian`` keeps whichever of torch.func and the loop its timer reports faster (the
    timer replaced here by fixed costs: a timed assert would test the machine), once per kind of score
    and shape; a score torch.func rejects gets the loop; ``log_likelihood(jacobian="auto")`` runs it."""
    from sde_diffusion import likelihood

    x, t = torch.randn(4, 3, dtype=F64), torch.full((4,), 0.5, dtype=F64)
    for faster, costs in (("func", iter([2.0, 1.0])), ("loop", iter([1.0, 2.0]))):
        monkeypatch.setattr(likelihood, "_FASTEST", {})
        monkeypatch.setattr(likelihood, "_timed", lambda fn, device, c=costs: (fn(), next(c))[1])  # loop first
        gm_score = random_mixture(3, 2, seed=1).score(SDE)
        assert likelihood.fastest_jacobian(gm_score, x, t) == faster
        assert likelihood.fastest_jacobian(gm_score, x, t) == faster   # remembered: no third timing
        r = log_likelihood(gm_score, SDE, x, jacobian="auto")
        assert r.jacobian == faster
    monkeypatch.setattr(likelihood, "_FASTEST", {})
    monkeypatch.setattr(likelihood, "_timed", lambda fn, device: (fn(), 1.0)[1])

    def branchy(x, t):
        return -x if bool(x.sum() > -1e9) else x
    assert likelihood.fastest_jacobian(branchy, x, t) == "loop"


def test_unknown_jacobian_is_refused():
    with pytest.raises(ValueError, match="unknown jacobian 'fast'; allowed: auto, func, loop"):
        log_likelihood(lambda x, t: -x, SDE, torch.randn(4, 2), jacobian="fast")
