"""Bad input and numerical faults across the public API and the CLI: each refused with one sentence
naming what was wrong (and where: step and time for NaN/Inf) and what is allowed.

Complements the should-fail matrices of the module tests (test_sde, test_schedule, test_config,
test_data, test_likelihood, test_vlb, test_losses, test_models, test_solvers_contract, test_cli,
test_checkpoint, test_train), which are not repeated here.
"""

import math
import re

import pytest
import torch
from _tiny import tiny_config

from sde_diffusion import ScoreModel, MLPScore, VPSDE, get_sde, ring2d
from sde_diffusion.commands.cli import main
from sde_diffusion.likelihood import bits_per_dim, log_likelihood
from solvers import METHODS, available, sample

NAN, INF = float("nan"), float("inf")
SDE = VPSDE()
RING = ring2d().score(SDE)
STEPS, EPS = 20, 1e-3
# the uniform grid t_i = 1 - i (1 - eps) / 20: t_10 = 0.5005 is the last time >= 0.5, t_11 = 0.45055
T11, T12 = 1 - 11 * (1 - EPS) / STEPS, 1 - 12 * (1 - EPS) / STEPS


def _non_finite_below(value: float, t_bad: float = 0.5):
    """The ring score, but ``value`` (NaN or Inf) wherever t < t_bad."""
    return lambda x, t: torch.where(t[:, None] < t_bad, value, RING(x, t))


def _time(prefix: str, message: str) -> float:
    """The number following ``prefix`` (a regex) in ``message``."""
    return float(re.search(prefix + r"(\d+(?:\.\d+)?(?:e-?\d+)?)", message).group(1))


SCORE_AT = "returned non-finite values at t = "


# -- NaN/Inf returned by the score: the sampler stops naming the step and time -------------------

@pytest.mark.parametrize("value", [NAN, INF], ids=["nan", "inf"])
@pytest.mark.parametrize("method", available())
def test_sampler_names_where_the_score_went_non_finite(method, value):
    """Every registered method on its default options; the score is non-finite exactly for t < 0.5.
    The time named must be one where it really was (< 0.5), and for the fixed-grid methods the first
    one on the way down: every grid here (uniform, EDM, log-SNR at 20 steps) has a time in
    (0.4, 0.5), intermediate evaluations included. (Adaptive dopri5 may first fail at its initial
    step-size probe, which torchdiffeq places far ahead, clamped to eps: truthful, not the first.)"""
    with pytest.raises(ValueError, match=r"^sampling produced NaN/Inf.*: the score function returned "
                                         r"non-finite values at t = ") as err:
        sample(_non_finite_below(value), SDE, (8, 2), method, STEPS, generator=torch.Generator().manual_seed(0))
    message = str(err.value)
    t = _time(SCORE_AT, message)
    assert t < 0.5 and (METHODS[method].order is None and method == "ode" or t > 0.4), message
    assert "\n" not in message


@pytest.mark.parametrize("method, step", [("euler_maruyama", 12), ("reverse_diffusion", 12), ("ancestral", 12),
                                          ("ddim", 12), ("pc", 11)])
def test_the_first_non_finite_state_is_named_exactly(method, step):
    """On the uniform grid the first score call with t < 0.5 is at t_11 = 0.45055. A predictor uses
    it in step 12 (x at t_12 = 0.4006 is the first NaN state); PC's corrector runs at t_{i+1}, so
    there the state at t_11 itself (step 11) is the first NaN."""
    with pytest.raises(ValueError, match=rf"^sampling produced NaN/Inf at step {step} of {STEPS} \(t = ") as err:
        sample(_non_finite_below(NAN), SDE, (8, 2), method, STEPS, eps=EPS)
    message = str(err.value)
    assert _time(r"of 20 \(t = ", message) == pytest.approx(T12 if step == 12 else T11, abs=1e-4)  # 4 digits
    assert _time(SCORE_AT, message) == pytest.approx(T11, abs=1e-4)


def test_non_finite_score_in_the_final_denoising_step():
    """Finite along the whole grid, Inf only at t = eps (the Tweedie step): no step to name."""
    with pytest.raises(ValueError, match=r"^sampling produced NaN/Inf: the score function returned non-finite "
                                         r"values at t = 0\.001\.$"):
        sample(_non_finite_below(INF, t_bad=2 * EPS), SDE, (8, 2), "euler_maruyama", STEPS, eps=EPS)


def test_state_overflow_with_a_finite_score_is_told_apart():
    """A constant score of 3e38 (finite in float32, max 3.4e38): Euler-Maruyama's x_1 = keep x_0 + g^2 dt
    3e38 ~ 3e38 (g(1)^2 dt = 20 * 0.04995 ~ 1), then x_2 >= 1.5 x_1 overflows to Inf at step 2."""
    with pytest.raises(ValueError, match=r"^sampling produced NaN/Inf at step 2 of 20 \(t = 0\.9001\): the score "
                                         r"stayed finite but the state overflowed; use more steps"):
        sample(lambda x, t: torch.full_like(x, 3e38), SDE, (8, 2), "euler_maruyama", STEPS, eps=EPS)


def test_trajectory_is_checked_too():
    """return_trajectory keeps every state; the NaN check covers them (same first step as without)."""
    with pytest.raises(ValueError, match=r"at step 12 of 20"):
        sample(_non_finite_below(NAN), SDE, (8, 2), "euler_maruyama", STEPS, return_trajectory=True)
    # torchdiffeq's rk4 on the grid records every state too. It is the 3/8-rule variant (stages at
    # t, t - h/3, t - 2h/3, t - h): in step 11 from t_10 = 0.5005 the first evaluation below 0.5 is
    # at t_10 - h/3 = 0.4839, h = 0.04995 (a score checking nothing, so the NaN state
    # reaches the end: the ring score itself refuses NaN input on CPU)
    with pytest.raises(ValueError, match=r"^sampling produced NaN/Inf at step 11 of 20 \(t = 0\.4506\): "
                                         r"the score function returned non-finite values at t = 0\.4839\.$"):
        sample(lambda x, t: torch.where(t[:, None] < 0.5, NAN, -x), SDE, (8, 2), "ode", STEPS, solver="rk4")


def test_adaptive_ode_that_stalls_says_so():
    """A huge but finite drift: dopri5's step size underflows (torchdiffeq's AssertionError)."""
    with pytest.raises(ValueError, match=r"^the ODE solver dopri5 stalled \(underflow in dt .*loosen rtol/atol"):
        sample(lambda x, t: -1e30 * x, SDE, (8, 2), "ode", STEPS)


# -- NaN/Inf in the likelihood ----------------------------------------------------------------------

class _NanGradient(torch.autograd.Function):
    """Identity forward; NaN gradient: a score with finite values and a non-finite divergence."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * NAN


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_likelihood_names_a_non_finite_score(divergence):
    """The flow runs from eps up to T; the score is NaN for t >= 0.5: the first NaN along the flow is at
    the first evaluation past 0.5, within one step of it (steps here are < 0.1)."""
    score = lambda x, t: torch.where(t[:, None] >= 0.5, NAN, RING(x, t))  # noqa: E731
    g = torch.Generator().manual_seed(0)  # the points and probes fixed (the step sizes depend on them)
    with pytest.raises(ValueError, match=r"^log_likelihood produced NaN/Inf: the score function returned "
                                         r"non-finite values at t = ") as err:
        log_likelihood(score, SDE, torch.randn(4, 2, generator=g), divergence=divergence, generator=g)
    assert 0.5 <= _time(SCORE_AT, str(err.value)) < 0.6


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_likelihood_names_a_non_finite_divergence(divergence):
    score = lambda x, t: -_NanGradient.apply(x)  # noqa: E731
    with pytest.raises(ValueError, match=r"^log_likelihood produced NaN/Inf: the divergence of the score "
                                         r"\(the trace of ds/dx\) returned non-finite values at t = 1e-05\.$"):
        log_likelihood(score, SDE, torch.randn(4, 2), divergence=divergence)


def test_bits_per_dim_passes_the_likelihood_error_on():
    with pytest.raises(ValueError, match="^log_likelihood produced NaN/Inf: the score function"):
        bits_per_dim(lambda x, t: x * NAN, SDE, torch.zeros(2, 2, dtype=torch.uint8))


def test_likelihood_ode_that_stalls_says_so():
    with pytest.raises(ValueError, match=r"^the ODE solver dopri5 stalled .*loosen rtol/atol\.$"):
        log_likelihood(lambda x, t: -1e30 * x, SDE, torch.randn(4, 2))


# -- bad arguments not covered by the module tests ------------------------------------------------

def _never(x, t):
    raise AssertionError("the score must not be called for refused input")


@pytest.mark.parametrize("call, error, match", [
    # NaN/Inf given as x_T, x or data
    (lambda: sample(_never, SDE, (2, 2), "heun", 5, x_T=torch.tensor([[NAN, 0.0], [0.0, 0.0]])),
     ValueError, "^x_T contains NaN or Inf; all values must be finite"),
    (lambda: log_likelihood(_never, SDE, torch.tensor([[INF, 0.0]])), ValueError, "^x contains NaN or Inf"),
    (lambda: SDE.reverse(RING).drift(torch.tensor([[NAN, 0.0]]), 0.5), ValueError, "^x contains NaN or Inf"),
    # shapes: score of the wrong shape on every path (fixed-step loop, torchdiffeq, torchsde,
    # likelihood), t of the wrong length
    (lambda: sample(lambda x, t: x[:, :1], SDE, (4, 2), "ode", 5), ValueError,
     r"^score_fn must return a tensor shaped like x \(4, 2\), got \(4, 1\)"),
    (lambda: sample(lambda x, t: x[:, :1], SDE, (4, 2), "sde", 5), ValueError, "^score_fn must return a tensor shaped"),
    (lambda: sample(lambda x, t: x.tolist(), SDE, (4, 2), "heun", 5), ValueError, r"shaped like x \(4, 2\), got list"),
    (lambda: log_likelihood(lambda x, t: x[:, :1], SDE, torch.randn(4, 2)), ValueError,
     r"^score_fn must return a tensor shaped like x \(4, 2\), got \(4, 1\)"),
    (lambda: SDE.reverse(RING).drift(torch.randn(4, 2), torch.rand(3)), ValueError,
     r"^t must be a float or a tensor of shape \(4,\) matching the batch of x, got shape \(3,\)"),
    (lambda: ScoreModel(MLPScore(2), SDE)(torch.randn(4, 2), torch.rand(4, 1)), ValueError,
     r"^t must be a float or a tensor of shape \(4,\)"),
    (lambda: RING(torch.randn(4, 2), torch.rand(3)), ValueError, r"^t must be a float or a tensor of shape \(4,\)"),
    (lambda: sample(_never, SDE, (0, 2), "heun", 5), ValueError, r"^shape must be a tuple of positive ints"),
    # impossible solver parameters
    (lambda: sample(_never, SDE, (2, 2), "ode", 5, rtol=0.0), ValueError, r"^rtol must be a finite number > 0"),
    (lambda: sample(_never, SDE, (2, 2), "ode", 5, atol=NAN), ValueError, r"^atol must be a finite number > 0"),
    (lambda: sample(_never, SDE, (2, 2), "heun", 5, rho=0.0), ValueError, r"^rho must be a finite number > 0"),
    (lambda: sample(_never, SDE, (2, 2), "heun", 2.5), ValueError, r"^steps must be an integer >= 1, got 2\.5"),
    (lambda: sample(_never, get_sde("cosine"), (2, 2), "heun", 5, eps=0.995), ValueError,
     r"^eps must lie in \(0, T\) = \(0, 0\.9946\), got 0\.995"),
    (lambda: sample(_never, SDE, (2, 2), "pc", 5, corrector_steps=0), ValueError,
     "^corrector_steps must be an integer >= 1"),
    (lambda: log_likelihood(_never, SDE, torch.randn(2, 2), eps=NAN), ValueError, r"^eps must be a float in \(0, T\)"),
    # wrong types and names
    (lambda: sample(3, SDE, (2, 2), "heun", 5), TypeError, r"^score_fn must be callable \(x, t\) -> score, got int"),
    (lambda: sample(_never, "vp", (2, 2), "heun", 5), TypeError, "^sde must be an sde_diffusion.SDE, got str"),
    (lambda: sample(_never, SDE, (2, 2), "heun", 5, generator=0), TypeError,
     "^generator must be a torch.Generator or None, got int"),
    (lambda: log_likelihood(_never, SDE, torch.randn(2, 2), generator=0), TypeError,
     "^generator must be a torch.Generator or None, got int"),
    (lambda: log_likelihood(_never, SDE, [[0.0, 0.0]]), TypeError, "^x must be a torch.Tensor, got list"),
    (lambda: get_sde("vp", beta=3.0), ValueError, "^unknown VPSDE parameter 'beta'; allowed: beta_min, beta_max"),
    # discrete data for bits_per_dim: integer levels within 0..levels-1, named as the caller's argument
    (lambda: bits_per_dim(_never, SDE, torch.full((2, 2), 16), levels=16), ValueError,
     r"^x_discrete must hold levels 0\.\.15 \(levels=16\), got values in \[16, 16\]"),
    (lambda: bits_per_dim(_never, SDE, torch.zeros(2, 2, dtype=torch.bool)), TypeError,
     "^x_discrete must be an integer tensor of levels"),
    (lambda: bits_per_dim(_never, SDE, torch.zeros(2, 2, dtype=torch.long), data_range=(1.0, -1.0)), ValueError,
     r"^data_range must be \(lo, hi\) with hi > lo"),
    (lambda: bits_per_dim(_never, SDE, torch.zeros(2, 2, dtype=torch.long), generator=1), TypeError,
     "^generator must be a torch.Generator or None"),
], ids=lambda v: None)
def test_refused_with_one_sentence(call, error, match):
    with pytest.raises(error, match=match) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and message.endswith(".")


def test_methods_declare_what_they_refuse():
    """The should-fail matrix of test_solvers_contract is driven by these declarations."""
    assert {name for name, m in METHODS.items() if m.vp_only} == {"ddim", "dpm_solver", "unipc"}
    with pytest.raises(ValueError, match=r"^method 'ddim' needs a VP-type SDE .* got VESDE\.$"):
        sample(_never, get_sde("ve"), (2, 2), "ddim", 5)


# -- the CLI: a model that produces NaN, solver tolerances -----------------------------------------

@pytest.fixture(scope="module")
def tiny_run(trained):
    """The session's shared tiny VP run (any trained VP checkpoint serves: the tests poison its
    weights or refuse its arguments); read only."""
    return trained("toy_vp", "train.steps=8", tiny=True).out


@pytest.fixture
def nan_weights(monkeypatch):
    """``load`` as the CLI calls it (``training.loading.load``, imported when a command runs), with every
    weight of the loaded model set to NaN."""
    import sde_diffusion.training.loading as loading
    load = loading.load

    def poisoned(*args, **kwargs):
        model = load(*args, **kwargs)
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(NAN)
        return model
    monkeypatch.setattr(loading, "load", poisoned)


@pytest.mark.parametrize("argv, message", [
    (["sample", "--steps", "4", "--num-samples", "8"],
     r"sampling produced NaN/Inf: the score function returned non-finite values at t = 1\.$"),
    (["nll", "--num-points", "4"], r"log_likelihood produced NaN/Inf: the score function returned non-finite values at t = "),
])
def test_cli_model_producing_nan_exits_2_naming_where(argv, message, tiny_run, nan_weights, tmp_path, capsys):
    """The first score call (t = T = 1) is NaN. (No state is named: the tiny config samples by Heun,
    whose second evaluation in step 1 already gets NaN input, which ScoreModel refuses on CPU.)"""
    out = ["--out", str(tmp_path / "s")] if argv[0] == "sample" else []
    assert main([argv[0], "--model", str(tiny_run), *argv[1:], "--device", "cpu", *out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err.strip()), err


@pytest.mark.parametrize("argv, message", [
    (["nll", "--rtol", "0"], r"rtol must be a finite number > 0, got 0\.0\.$"),
    (["nll", "--atol", "nan"], r"atol must be a finite number > 0, got nan\.$"),
    (["sample", "--method", "ddim"], r"needs a VP-type SDE"),
])
def test_cli_impossible_solver_parameters_exit_2(argv, message, tiny_run, trained, tmp_path, capsys):
    if argv[0] == "sample":  # the tiny run is VP: ask for an SDE-restricted sampler on VE instead
        run = trained("toy_ve", "train.steps=1", tiny=True).out
    else:
        run = tiny_run
    out = ["--out", str(tmp_path / "s")] if argv[0] == "sample" else []
    count = "--num-samples" if argv[0] == "sample" else "--num-points"
    assert main([argv[0], "--model", str(run), *argv[1:], count, "4", "--device", "cpu", *out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err.strip()), err


def test_cli_data_file_in_the_wrong_format_exits_2(tmp_path, capsys):
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"this is not a numpy file")
    argv = ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    (tmp_path / "c.yaml").write_text(f"base: {tiny_config.__globals__['CONFIGS'] / 'toy_vp.yaml'}\n"
                                     f"data: {{name: npy, path: {junk}}}\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "junk.npy: expected a .npy or .npz" in err, err
    assert not list((tmp_path / "out").rglob("*.safetensors"))


def test_math_of_the_grid_constants():
    """The step times quoted above, from the grid itself."""
    from solvers.timesteps import time_grid
    g = time_grid(SDE, STEPS, EPS)
    assert math.isclose(float(g[11]), T11) and math.isclose(float(g[12]), T12) and float(g[10]) >= 0.5
