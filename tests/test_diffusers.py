"""diffusers models as score models (``models.diffusers_adapter``) and VE denoisers (``models.denoiser``).

Tiny randomly initialised ``UNet2DModel``s (8x8, block_out_channels (8, 16), one layer per block) in
float64, no network access. Agreement with diffusers' own samplers is checked with float64 tables on
both sides: diffusers builds its betas in float32 (``torch.linspace(..., dtype=float32)``), which
moves a 10-step DDIM result by ~1e-7 relative (measured 8e-8) against ~1e-15 with equal float64
tables, so only float64 tables let the tests assert the algorithms are the same to rounding. The
tables installed in the schedulers are our float64 ones, after checking they equal diffusers'
float32 tables to float32 rounding (a check of our transcription of its three beta schedules).
"""

from __future__ import annotations

import json
import math
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import solvers  # noqa: E402
from sde_diffusion import DDPMSchedule, GaussianMixture, VPSDE, bits_per_dim  # noqa: E402
from sde_diffusion.commands import cli  # noqa: E402
from sde_diffusion.dequantize import DATA_RANGE, bin_width, continuous_to_levels  # noqa: E402
from sde_diffusion.models import from_denoiser  # noqa: E402
from sde_diffusion.models.diffusers_adapter import from_diffusers  # noqa: E402
from sde_diffusion.sde import DiscreteVPSDE  # noqa: E402

F64 = torch.float64
README = Path(__file__).resolve().parent.parent / "README.md"


def tiny_unet(seed: int = 0, channels: int = 1, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=8, in_channels=channels, out_channels=channels,
                                 block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), **kwargs).to(F64).eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def float64_tables(scheduler, sde: DiscreteVPSDE):
    """Install the SDE's float64 table in a diffusers scheduler, after checking that its betas equal
    the scheduler's own float32 betas to float32 rounding (a few ulp, 2^-24 each, from linspace or
    the cast; a wrong schedule formula errs by far more)."""
    abar = torch.tensor(sde.alphas_cumprod, dtype=F64)
    alphas = abar / torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    torch.testing.assert_close(scheduler.betas.double(), 1 - alphas, rtol=4 * 2**-24, atol=0)
    scheduler.alphas_cumprod, scheduler.alphas, scheduler.betas = abar, alphas, 1 - alphas
    scheduler.final_alpha_cumprod = scheduler.one = torch.tensor(1.0, dtype=F64)
    return scheduler


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# -- exact agreement with diffusers' samplers ---------------------------------------------------------
def ddpm_scheduler_run(net, model, sched, n: int):
    """DDPMScheduler's full chain of n steps on ``net`` (a UNet, or a module returning the output
    tensor) with float64 tables: (x_T, its x_0), x_T and the per-step noise from seeds 1 and 2."""
    float64_tables(sched, model.sde)
    sched.set_timesteps(n)
    x_T = torch.randn(2, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    x, gen = x_T, torch.Generator().manual_seed(2)
    with torch.no_grad():
        for k in sched.timesteps:
            out = net(x, k)
            x = sched.step(out.sample if hasattr(out, "sample") else out, k, x, generator=gen).prev_sample
    return x_T, x



@pytest.mark.parametrize("variance_type, variance", [("fixed_small", "beta_tilde"), ("fixed_large", "beta")])
def test_ancestral_is_the_ddpm_scheduler_loop(unet, variance_type, variance):
    """DDPMScheduler's full chain (N = 100 steps, squaredcos_cap_v2, clip_sample off) and our
    ``ancestral`` on the table's DiscreteVPSDE, uniform grid of the knots t = 1 .. 1/N (N - 1 steps)
    plus the Tweedie step at t = 1/N (diffusers' last step, k = 0, returns x0_hat with no noise):
    same x_T and per-step noise from one generator seed. fixed_small = posterior variance
    (beta_tilde), fixed_large = beta. Measured gap 5e-16 relative; the two variances swapped give
    2e-5 (the random UNet's large outputs dominate x_0)."""
    n = 100
    sched = diffusers.DDPMScheduler(num_train_timesteps=n, beta_schedule="squaredcos_cap_v2",
                                    clip_sample=False, variance_type=variance_type)
    model = from_diffusers(unet, sched)
    x_T, x = ddpm_scheduler_run(unet, model, sched, n)
    with torch.no_grad():
        ours = solvers.sample(model, model.sde, x_T.shape, "ancestral", n - 1, eps=1 / n, x_T=x_T, dtype=F64,
                              generator=torch.Generator().manual_seed(2), variance=variance)
        auto = solvers.sample(model, model.sde, x_T.shape, "ancestral", n - 1, eps=1 / n, x_T=x_T, dtype=F64,
                              generator=torch.Generator().manual_seed(2))
    assert ours.nfe == n
    assert relative_gap(ours.x, x) < 1e-11
    assert torch.equal(auto.x, ours.x)   # variance "auto" is the scheduler's variance_type


class PositiveV(torch.nn.Module):
    """A 2C-channel UNet with its v half mapped into (0.01, 0.05): a variance itself (diffusers' "learned")."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, k):
        out = self.unet(x, k).sample
        c = x.shape[1]
        return torch.cat([out[:, :c], 0.03 + 0.02 * torch.tanh(out[:, c:])], 1)


@pytest.mark.parametrize("variance_type", ["learned_range", "learned"])
def test_ancestral_is_the_ddpm_scheduler_loop_with_a_learned_variance(variance_type):
    """A UNet with out_channels = 2C read by the scheduler's variance_type: DDPMScheduler's chain and our
    ``ancestral`` (variance "auto": the learned one, in diffusers' convention) with the same x_T and
    noise, as in the test above, to 1e-10. learned_range: log Sigma = frac log beta + (1 - frac) log
    beta_tilde, frac = (v + 1) / 2; learned: Sigma = v. Read as this toolkit's weight (v), learned_range
    misses by far more."""
    n = 50
    unet = tiny_unet(seed=3)
    unet = diffusers.UNet2DModel.from_config({**unet.config, "out_channels": 2}).to(F64).eval()
    net = unet if variance_type == "learned_range" else PositiveV(unet)
    sched = diffusers.DDPMScheduler(num_train_timesteps=n, beta_schedule="squaredcos_cap_v2",
                                    clip_sample=False, variance_type=variance_type)
    model = from_diffusers(unet, sched) if variance_type == "learned_range" else from_diffusers(net, sched)
    assert model.learned_variance and model.variance_kind == variance_type
    x_T, x = ddpm_scheduler_run(net, model, sched, n)
    with torch.no_grad():
        ours = solvers.sample(model, model.sde, x_T.shape, "ancestral", n - 1, eps=1 / n, x_T=x_T, dtype=F64,
                              generator=torch.Generator().manual_seed(2))
    assert relative_gap(ours.x, x) < 1e-10
    if variance_type == "learned_range":
        plain = from_diffusers(unet, sched)
        plain.variance_kind = "interpolation"
        with torch.no_grad():
            wrong = solvers.sample(plain, plain.sde, x_T.shape, "ancestral", n - 1, eps=1 / n, x_T=x_T, dtype=F64,
                                   generator=torch.Generator().manual_seed(2))
        assert relative_gap(wrong.x, x) > 1e-6   # measured 4.5e-5 (the large x_0 of a random UNet dominates)


@pytest.mark.parametrize("variance_type, out_channels, match", [
    ("fixed_medium", 1, r"unknown variance_type 'fixed_medium'; allowed: fixed_small, "),
    ("learned_range", 1, r"variance_type 'learned_range' needs a UNet with out_channels = 2 for in_channels = 1"),
    ("fixed_small", 2, r"variance_type 'fixed_small' needs a UNet with out_channels = 1 .* has 2"),
])
def test_variance_type_and_channels_are_checked_on_load(variance_type, out_channels, match):
    unet = tiny_unet()
    unet = diffusers.UNet2DModel.from_config({**unet.config, "out_channels": out_channels}).to(F64).eval()
    config = {**dict(diffusers.DDPMScheduler().config), "variance_type": variance_type}
    with pytest.raises(ValueError, match=match):
        from_diffusers(unet, config)


def _scheduler_loop(unet, scheduler, spacing: str, clip: bool, k: int, **step):
    """(model, chain, x_T, x): diffusers' ``scheduler`` (N = 100 steps, linear table 1e-3..0.2) with
    ``timestep_spacing`` and ``clip_sample``, its loop of k steps from x_T with noise seed 2, the model on
    its float64 table and DDPMSchedule(N).respace(spacing + k), checked to keep the scheduler's timesteps."""
    n = 100
    sched = scheduler(num_train_timesteps=n, beta_start=1e-3, beta_end=0.2, clip_sample=clip, timestep_spacing=spacing)
    model = from_diffusers(unet, sched)
    float64_tables(sched, model.sde)
    sched.set_timesteps(k)
    chain = DDPMSchedule(T=n, beta_1=1e-3, beta_T=0.2).respace(f"{spacing}{k}")
    assert [j + 1 for j in sched.timesteps.tolist()] == list(chain.keep)[::-1]
    x_T = torch.randn(2, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    x, gen = x_T, torch.Generator().manual_seed(2)
    with torch.no_grad():
        for j in sched.timesteps:
            x = sched.step(unet(x, j).sample, j, x, generator=gen, **step).prev_sample
    return model, chain, x_T, x


@pytest.mark.parametrize("spacing, clip", [("leading", True), ("leading", False), ("trailing", False),
                                           ("linspace", False), ("linspace", True)])
def test_ancestral_on_a_respaced_chain_is_the_ddpm_scheduler_with_its_timestep_spacing(unet, spacing, clip):
    """DDPMScheduler(timestep_spacing=...) with 10 of N = 100 steps (linear table, fixed_small; with
    clip_sample, its default, x0_hat clamped to [-1, 1]) and our ``ancestral`` on
    DDPMSchedule(N).respace(spacing + "10"), the chain of the same timesteps (its variances recomputed, as
    diffusers' previous_timestep does), with ``clip=1`` for clip_sample, same x_T and noise: 1e-10.
    ("leading" with clip is DDPMScheduler at its defaults. The trailing run's last diffusers step adds
    noise of std 1e-10, its clamped zero variance.)"""
    k = 10
    model, chain, x_T, x = _scheduler_loop(unet, diffusers.DDPMScheduler, spacing, clip, k)
    with torch.no_grad():
        ours = solvers.sample(model, model.sde, x_T.shape, "ancestral", k, schedule=chain, x_T=x_T, dtype=F64,
                              generator=torch.Generator().manual_seed(2), **({"clip": 1.0} if clip else {}))
    assert ours.nfe == k
    assert not clip or x.abs().max() <= 1 + 1e-12   # the clamp acted: the random UNet's x0_hat is far larger
    assert relative_gap(ours.x, x) < 1e-10


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_is_the_ddim_scheduler(unet, eta):
    """DDIMScheduler with 10 "trailing" timesteps 999, 899, .., 99 of N = 1000 (scaled_linear table)
    and our ``ddim`` on the knots t = (k+1)/N = 1.0, 0.9, .., 0.1 (9 steps, eps = 0.1) plus the
    Tweedie step: diffusers' last step goes to abar_prev = 1, i.e. returns x0_hat. Same x_T and noise
    (eta = 1 draws one z per step on both sides). Measured ~1e-15 relative (8e-8 with diffusers'
    float32 tables)."""
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                    beta_schedule="scaled_linear", clip_sample=False, timestep_spacing="trailing")
    model = from_diffusers(unet, sched)
    float64_tables(sched, model.sde)
    sched.set_timesteps(10)
    x_T = torch.randn(2, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    x, gen = x_T, torch.Generator().manual_seed(2)
    with torch.no_grad():
        for k in sched.timesteps:
            x = sched.step(unet(x, k).sample, k, x, eta=eta, generator=gen).prev_sample
        ours = solvers.sample(model, model.sde, x_T.shape, "ddim", 9, eps=0.1, x_T=x_T, dtype=F64,
                              generator=torch.Generator().manual_seed(2), eta=eta)
    assert ours.nfe == 10
    assert relative_gap(ours.x, x) < 1e-11


@pytest.mark.parametrize("spacing, clip, eta", [("leading", True, 0.0), ("leading", True, 1.0), ("leading", False, 0.0),
                                                ("trailing", False, 0.0), ("trailing", True, 1.0)])
def test_ddim_on_a_respaced_chain_is_the_ddim_scheduler_with_its_timestep_spacing(unet, spacing, clip, eta):
    """DDIMScheduler(timestep_spacing=...) with 10 of N = 100 steps (linear table; clip_sample, its default,
    clamps x0_hat to [-1, 1]; set_alpha_to_one, its default, makes the last step return x0_hat) and our
    ``ddim`` on DDPMSchedule(N).respace(spacing + "10") with ``clip=1`` for clip_sample, same x_T and noise:
    1e-10. ("leading" with clip is DDIMScheduler at its defaults: timesteps 90, 80, .., 0, so the chain
    starts at step 91, not at N.)"""
    k = 10
    model, chain, x_T, x = _scheduler_loop(unet, diffusers.DDIMScheduler, spacing, clip, k, eta=eta)
    with torch.no_grad():
        ours = solvers.sample(model, model.sde, x_T.shape, "ddim", k, schedule=chain, x_T=x_T, dtype=F64, eta=eta,
                              generator=torch.Generator().manual_seed(2), **({"clip": 1.0} if clip else {}))
    assert ours.nfe == k
    assert relative_gap(ours.x, x) < 1e-10
    if clip:  # the clamp acted: without it the random UNet's samples differ
        with torch.no_grad():
            free = solvers.sample(model, model.sde, x_T.shape, "ddim", k, schedule=chain, x_T=x_T, dtype=F64,
                                  eta=eta, generator=torch.Generator().manual_seed(2))
        assert relative_gap(free.x, x) > 1e-3


@pytest.mark.parametrize("spec, message", [
    ("linspace10", "its step from timestep 99 goes to 99 - 100 // 10 = 89, not to timestep 88"),
    ("trailing7", "its step from timestep 85 goes to 85 - 100 // 7 = 71, not to timestep 70"),
])
def test_ddim_refuses_a_spacing_ddim_scheduler_does_not_chain(unet, spec, message):
    """DDIMScheduler steps from timestep j to j - N // K: with "linspace" (99, 88, ..) or "trailing" for
    K not dividing N (99, 85, 70, ..) the next timestep is elsewhere, so its loop is not a DDIM chain and ddim says so
    before any compute (ancestral runs these chains: DDPMScheduler steps to the previous timestep)."""
    model = from_diffusers(unet, diffusers.DDIMScheduler(num_train_timesteps=100, beta_start=1e-3, beta_end=0.2))
    chain = DDPMSchedule(T=100, beta_1=1e-3, beta_T=0.2).respace(spec)
    with pytest.raises(ValueError, match=re.escape(message)):
        solvers.sample(model, model.sde, (1, 1, 8, 8), "ddim", chain.T, schedule=chain)


# -- loading, timesteps, predictions, labels ----------------------------------------------------------
def test_folders_and_objects_give_the_same_model(unet, tmp_path):
    """A pipeline folder (unet/ + scheduler/), a bare UNet folder (DDPMScheduler()'s defaults) and
    the objects give the same scores; the scheduler's table, num_train_timesteps, trained_betas and
    prediction_type are honoured."""
    sched = diffusers.DDPMScheduler(num_train_timesteps=500, beta_schedule="scaled_linear",
                                    prediction_type="v_prediction")
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "pipe")
    unet.save_pretrained(tmp_path / "bare")
    x = torch.randn(3, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    pipe, objects = from_diffusers(tmp_path / "pipe").to(F64), from_diffusers((unet, sched))
    assert pipe.sde == DiscreteVPSDE.from_beta_schedule("scaled_linear", 500, 1e-4, 0.02)
    assert pipe.parameterization == "v" and pipe.sde.N == 500
    with torch.no_grad():
        torch.testing.assert_close(pipe(x, t), objects(x, t), rtol=1e-12, atol=0)
        bare = from_diffusers(str(tmp_path / "bare")).to(F64)
        assert bare.sde == DiscreteVPSDE.from_beta_schedule("linear") and bare.parameterization == "eps"
        torch.testing.assert_close(bare(x, t), from_diffusers(unet)(x, t), rtol=1e-12, atol=0)
    betas = torch.linspace(1e-3, 0.03, 50, dtype=F64)
    trained = from_diffusers(unet, {"num_train_timesteps": 50, "trained_betas": betas.tolist()})
    torch.testing.assert_close(torch.tensor(trained.sde.alphas_cumprod, dtype=F64), torch.cumprod(1 - betas, 0))


class Recorder(torch.nn.Module):
    """A stand-in UNet returning zeros and recording the timesteps it is given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, timestep, class_labels=None):
        self.seen.append(timestep)
        return (torch.zeros_like(x),)


def test_continuous_time_maps_to_the_timestep_input(unet):
    """At the knots t = (k+1)/N the UNet receives diffusers' integer k (N t - 1, linear in between),
    and the eps there is the UNet's own output at k."""
    rec = Recorder()
    model = from_diffusers(rec, {"num_train_timesteps": 200, "beta_schedule": "linear"})
    model(torch.zeros(3, 1, 8, 8, dtype=F64), torch.tensor([1.0, 0.5, 0.0025], dtype=F64))
    torch.testing.assert_close(rec.seen[0], torch.tensor([199.0, 99.0, -0.5], dtype=F64))
    x = torch.randn(2, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps = from_diffusers(unet).eps(x, torch.full((2,), 0.25, dtype=F64))
        torch.testing.assert_close(eps, unet(x, 249).sample, rtol=1e-12, atol=0)


class Reparameterized(torch.nn.Module):
    """One eps network read as ``sample`` or ``v_prediction`` through diffusers' own table at the
    integer timestep k: x0 = (x - sqrt(1 - abar_k) eps) / sqrt(abar_k), v = sqrt(abar_k) eps - sqrt(1 - abar_k) x0."""

    def __init__(self, net, abar: torch.Tensor, kind: str):
        super().__init__()
        self.net, self.abar, self.kind = net, abar, kind

    def forward(self, x, timestep):
        eps = self.net(x, timestep).sample
        a = self.abar[torch.as_tensor(timestep).round().long()].reshape(-1, 1, 1, 1)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return (x0 if self.kind == "sample" else a.sqrt() * eps - (1 - a).sqrt() * x0,)


def test_prediction_types_give_the_same_score(unet):
    """One network wrapped as epsilon, sample and v_prediction by the linear relations at each knot
    gives the same score at the knots, to rounding (a v read as eps misses by O(1))."""
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=F64), 0)
    x = torch.randn(4, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 250, 600, 1000], dtype=F64) / 1000
    with torch.no_grad():
        ref = from_diffusers(unet, sched)(x, t)
        for kind in ("sample", "v_prediction"):
            config = {**sched.config, "prediction_type": kind}
            score = from_diffusers(Reparameterized(unet, abar, kind), config)(x, t)
            torch.testing.assert_close(score, ref, rtol=1e-9, atol=1e-9)


def test_class_labels_pass_through():
    """A class-conditional UNet (num_class_embeds = 3): the label reaches class_labels, num_classes
    is 3, and labels without an embedding are refused in one line."""
    net = tiny_unet(num_class_embeds=3)
    model = from_diffusers(net)
    x = torch.randn(3, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2])
    assert model.num_classes == 3
    with torch.no_grad():
        torch.testing.assert_close(model.eps(x, 0.5, y), net(x, 499, class_labels=y).sample, rtol=1e-12, atol=0)
        assert float((model.eps(x, 0.5, y) - model.eps(x, 0.5, y.flip(0))).abs().max()) > 1e-3
        with pytest.raises(ValueError, match="labels must lie in 0..2 for this diffusers model"):
            model.eps(x, 0.5, torch.tensor([0, 1, 3]))


@pytest.mark.parametrize("config, match", [
    ({"beta_schedule": "sigmoid"}, "unknown beta schedule 'sigmoid'"),
    ({"beta_schedule": "linear", "prediction_type": "flow"}, "unknown prediction_type 'flow'"),
    ({"beta_schedule": "linear", "rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ({"_class_name": "ScoreSdeVeScheduler", "num_train_timesteps": 2000}, "has no discrete beta schedule"),
    ({"num_train_timesteps": 10, "trained_betas": [0.1] * 5}, "trained_betas has 5 values"),
])
def test_bad_scheduler_configs(unet, config, match):
    with pytest.raises(ValueError, match=match):
        from_diffusers(unet, config)


def test_without_diffusers_one_line_names_the_extra(monkeypatch, tmp_path, capsys):
    """With diffusers not importable, from_diffusers and the CLI's --model diffusers:PATH fail with one
    line naming the extra to install (exit code 2)."""
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    with pytest.raises(ImportError, match=re.escape('pip install "sde-diffusion[diffusers]"')):
        from_diffusers(tmp_path)
    assert cli.main(["nll", "--model", f"diffusers:{tmp_path}", "--data", "x.npz"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "sde-diffusion[diffusers]"' in err


# -- a VE denoiser ------------------------------------------------------------------------------------
def test_ve_denoiser_gives_the_exact_score():
    """A mixture's exact VE denoiser D(x, sigma) = E[y | y + sigma n = x], written out here per
    component (responsibility r_k times the Gaussian posterior mean mu_k + v_k/(v_k + sigma^2)(x - mu_k)),
    through x_ve = x/m, sigma = s/m gives the mixture's exact score under the VP-SDE, to rounding."""
    g = torch.Generator().manual_seed(0)
    mu, var, w = torch.randn(3, 2, generator=g, dtype=F64), torch.tensor([0.1, 0.3, 0.05], dtype=F64), \
        torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    gm = GaussianMixture(mu, var, w)

    def denoiser(x, sigma):
        v_t = var[None] + sigma[:, None] ** 2                                       # (N, K)
        d2 = (x[:, None, :] - mu[None]).square().sum(-1)                            # (N, K)
        r = torch.softmax(w.log()[None] - d2 / (2 * v_t) - v_t.log(), dim=1)         # D = 2: log v_t^(D/2)
        post = mu[None] + (var[None] / v_t)[..., None] * (x[:, None, :] - mu[None])  # (N, K, D)
        return (r[..., None] * post).sum(1)

    sde = VPSDE()
    x = torch.randn(50, 2, generator=g, dtype=F64)
    t = torch.rand(50, generator=g, dtype=F64) * 0.99 + 0.01
    torch.testing.assert_close(from_denoiser(denoiser, sde)(x, t), gm.score(sde)(x, t), rtol=1e-10, atol=1e-10)


# -- likelihoods --------------------------------------------------------------------------------------
class MixtureUNet(torch.nn.Module):
    """An analytic mixture dressed up as a diffusers model: given (x, timestep k) of shape (N, 1, 2, 2)
    it returns the exact eps at t = (k + 1) / N under the table's SDE."""

    def __init__(self, gm: GaussianMixture, sde: DiscreteVPSDE):
        super().__init__()
        self.gm, self.sde = gm, sde

    def forward(self, x, timestep):
        t = ((timestep + 1) / self.sde.N).clamp(0, 1)
        return self.gm.eps(self.sde)(x.flatten(1), t).reshape(x.shape)


@pytest.mark.parametrize("interpolation, tol", [("linear", 0.015), ("cubic", 0.002)])
def test_bits_per_dim_of_a_dressed_mixture_is_the_analytic_value(interpolation, tol):
    """bits/dim of the wrapped 'model' equals that of the mixture's exact score under the same SDE to
    1e-8 (the same ODE, its right-hand side equal to rounding: a timestep off by one knot moves it by
    ~1e-2), and both are within ``tol`` of the analytic -(log p_eps(x) + D log w) / (D ln 2) at the same
    dequantized points, rtol = atol = 1e-5. Measured: 0.0077 bits/dim with ``linear`` log m (beta(t) a
    staircase of N = 1000 steps, on which dopri5's error control degrades; ~500 NFE) and 6e-4 with
    ``cubic`` (~70 NFE), as under the smooth VPSDE (5e-4, 62 NFE)."""
    sde = DiscreteVPSDE.from_beta_schedule("linear", interpolation=interpolation)
    g = torch.Generator().manual_seed(0)
    gm = GaussianMixture(0.5 * torch.rand(3, 4, generator=g, dtype=F64) - 0.25, 0.02)
    model = from_diffusers(MixtureUNet(gm, sde), {"num_train_timesteps": 1000, "beta_schedule": "linear"},
                           interpolation=interpolation)
    assert model.sde == sde
    k = continuous_to_levels(gm.sample(6, g, dtype=F64).clamp(-0.99, 0.99).reshape(6, 1, 2, 2), 256, DATA_RANGE)
    bpd = {}
    for name, score in (("wrapped", model), ("exact", lambda x, t: gm.score(sde)(x.flatten(1), t).reshape(x.shape))):
        bpd[name] = bits_per_dim(score, sde, k, levels=256, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(bpd["wrapped"], bpd["exact"], rtol=0, atol=1e-8)
    u = torch.rand(k.shape, generator=torch.Generator().manual_seed(1), dtype=F64)  # bits_per_dim's draw
    x = DATA_RANGE[0] + (k.double() + u) * bin_width(256, DATA_RANGE)
    log_p = gm.log_prob_t(x.flatten(1), 1e-5, sde)
    analytic = -(log_p + 4 * math.log(bin_width(256, DATA_RANGE))) / (4 * math.log(2))
    torch.testing.assert_close(bpd["wrapped"], analytic, rtol=0, atol=tol)


def test_bits_per_dim_of_the_tiny_unet_in_float32_and_float64():
    """The PF-ODE bits/dim of the wrapped random UNet runs end to end in float32 and float64 (same
    weights, dequantization and probe) and is finite in both; they agree to the ODE's accuracy on a
    random network's rough field: measured 18.80 (float32) and 18.47 (float64) at rtol = atol = 1e-2."""
    k = torch.randint(0, 256, (1, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    out = {}
    for dtype in (torch.float32, F64):
        model = from_diffusers(tiny_unet().to(dtype))
        with torch.no_grad():
            out[dtype] = bits_per_dim(model, model.sde, k, levels=256, generator=torch.Generator().manual_seed(1),
                                      dtype=dtype, divergence="hutchinson", rtol=1e-2, atol=1e-2)
        assert out[dtype].dtype == dtype and bool(torch.isfinite(out[dtype]).all())
    torch.testing.assert_close(out[torch.float32].double(), out[F64], rtol=0, atol=1.0)


# -- the README's example: compare and nll on a saved tiny model --------------------------------------
def readme_example() -> tuple[str, list[str]]:
    """(the Python block, the sde-diffusion commands) of README's "Your own model" section."""
    text = README.read_text()
    section = text[text.index("## Your own model"):]
    section = section[:section.index("\n## ", 3)]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    python = "".join(code for lang, code in blocks if lang == "python")
    commands = [line for lang, code in blocks if lang == "bash" for line in code.splitlines()
                if line.startswith("sde-diffusion ")]
    return python, commands


@pytest.mark.slow  # the README example end to end, compare and nll (~10 s); only in the full run
def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    """The README example builds a tiny UNet and 8-bit digits, then `compare --model diffusers:PATH` writes
    its report and table, and `nll --model diffusers:PATH --data --out` prints bits/dim and writes one CSV row per image and the JSON summary (finite, above the 7 bits/dim the
    bin width alone contributes minus the continuous density's log, i.e. any finite number > 0)."""
    python, commands = readme_example()
    assert len(commands) == 2 and "--model diffusers:" in commands[0] and commands[1].startswith("sde-diffusion nll")
    monkeypatch.chdir(tmp_path)
    exec(compile(python, "README.md", "exec"), {})
    assert cli.main(shlex.split(commands[0])[1:] + ["--no-progress"]) == 0
    out = capsys.readouterr().out
    report = Path(re.search(r"report: (\S+)", out).group(1))
    assert report.is_file() and (report.parent / "results.csv").is_file()
    assert cli.main(shlex.split(commands[1])[1:] + ["--out", "nll_out"]) == 0
    bpd = float(re.search(r"\| bits/dim\s*\| ([-\d.]+)", capsys.readouterr().out).group(1))
    assert math.isfinite(bpd) and bpd > 0
    summary = json.loads(Path("nll_out/summary.json").read_text())
    rows = Path("nll_out/per_sample.csv").read_text().splitlines()
    assert summary["unit"] == "bits/dim" and summary["levels"] == 256 and abs(summary["mean"] - bpd) < 1e-4
    assert summary["levels_source"] == "uint8 default"  # the README's uint8 file: 256 with a notice
    assert len(rows) == 1 + summary["n"] and summary["model"].startswith("diffusers:")


def test_sample_takes_a_diffusers_model_string(tmp_path):
    """`sample --model diffusers:PATH` draws from the folder's model: samples.npz holds the UNet's shape and 8-bit levels, and the samples equal those of
    ``solvers.sample`` on ``from_diffusers(PATH)`` with the same seed (to float32 rounding)."""
    tiny_unet().to(torch.float32).save_pretrained(tmp_path / "m")
    out = tmp_path / "s"
    assert cli.main(["sample", "--model", f"diffusers:{tmp_path / 'm'}", "--method", "ddim", "--steps", "3",
                     "--num-samples", "2", "--out", str(out), "--device", "cpu"]) == 0
    saved = np.load(out / "samples.npz")
    assert saved["x"].shape == (2, 1, 8, 8) and saved["levels"].max() <= 255 and int(saved["nfe"]) == 4
    model = from_diffusers(tmp_path / "m")
    with torch.no_grad():
        ref = solvers.sample(model, model.sde, (2, 1, 8, 8), "ddim", 3, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(saved["x"], ref.x.numpy(), rtol=1e-5, atol=1e-5 * float(ref.x.abs().max()))
