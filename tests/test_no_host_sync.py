"""No host synchronisation inside the sampler and likelihood loops, except the documented one.

A call of ``solvers.sample`` or ``log_likelihood`` reads device values on the host exactly once, in
its finiteness check after the loop (``checks.host_read``, which suspends CUDA's sync debug mode).
Two proofs:
- on the CPU (CI): everything runs on the ``meta`` device, whose tensors hold no data, so any other
  host read (``.item()``, ``float(t)``, ``if t:``, ``.tolist()``, ``.cpu()``, ``.numpy()``) raises;
  ``host_read`` is replaced by a counter. torchdiffeq and torchsde cannot step without values, so for
  ``ode``, ``sde`` and ``log_likelihood`` a fixed-step Euler stand-in calls our right-hand sides.
- on CUDA: each call runs under ``torch.cuda.set_sync_debug_mode("error")``, which raises at any
  synchronising operation (device-to-host reads, and host-to-device copies from pageable memory).
Exempt on CUDA, with only their right-hand sides checked strictly: ``ode`` and ``log_likelihood``
(torchdiffeq compares times on the host and its adaptive step control reads every error norm) and
``sde`` (torchsde's Brownian interval searches times on the host; the seed is drawn from the
call's generator once), and ``adaptive_sde`` (its loop reads, once per attempt, whether a row has
time left; on meta that read answers "none left" after the first attempt).
"""

import pytest
import torch
import torchsde

import solvers
from sde_diffusion import VPSDE, DDPMSchedule, checks, log_likelihood
from sde_diffusion.models import build_model

import _cases

EXEMPT = {"ode": "torchdiffeq: host time comparisons, adaptive step-size control",
          "sde": "torchsde: Brownian interval search on the host, seed drawn once per call",
          "adaptive_sde": "one read per attempt: time left, finiteness of the error estimate"}
SHAPE = (4, 1, 8, 8)
STEPS = 4


def _other_device_path(method: str, opts: dict) -> bool:
    """Whether a variant changes what runs on the device: not the time grid alone (``grid``, ``rho``:
    computed on the host in float64 before the loop), nor the solver of ``ode`` or ``sde`` (torchdiffeq
    and torchsde are stand-ins here and exempt on CUDA)."""
    if method in EXEMPT:
        return not opts
    return not opts or bool(set(opts) - {"grid", "rho"})


# every sampler with its defaults, and each option variant (``_cases``) that takes another code path
CASES = [(m, o) for m, o in _cases.method_variants(STEPS, chain=True) if _other_device_path(m, o)]
STRICT = [(m, o) for m, o in CASES if m not in EXEMPT]


def _id(case):
    name, opts = case
    return ":".join([name] + [f"{k}={v.T if isinstance(v, DDPMSchedule) else v}" for k, v in opts.items()])


def _model(device, opts=None):
    """A small U-Net on VP, or on the chain's embedding for a case with ``schedule=``."""
    torch.manual_seed(0)
    sde = opts["schedule"].embedding() if opts and "schedule" in opts else VPSDE()
    model = build_model("unet", sde, base_channels=8, channel_mults=(1, 2), blocks_per_level=1,
                        attention_resolutions=(4,), image_size=8)
    return model.to(device).eval().requires_grad_(False)


@pytest.fixture
def reads(monkeypatch):
    """Counts ``checks.host_read`` calls; on meta it answers 'all finite' without reading."""
    calls = []
    real = checks.host_read

    def spy(t):
        calls.append(tuple(t.shape))
        return [True] * t.numel() if t.device.type == "meta" else real(t)
    monkeypatch.setattr(checks, "host_read", spy)
    return calls


def euler_odeint(func, y0, t, **_):
    """Three Euler steps per output interval of t, on a tensor or a tuple of tensors: a stand-in
    for torchdiffeq.odeint that never reads a value."""
    def add(y, d, h):
        return tuple(a + h * b for a, b in zip(y, d)) if isinstance(y, tuple) else y + h * d
    out, y = [y0], y0
    for a, b in zip(t[:-1], t[1:]):
        for k in range(3):
            y = add(y, func(a + (b - a) * k / 3, y), (b - a) / 3)
        out.append(y)
    return tuple(torch.stack(c) for c in zip(*out)) if isinstance(y0, tuple) else torch.stack(out)


def euler_sdeint(sde, y0, ts, **_):
    """Euler-Maruyama over ts through the torchsde (f, g) interface, never reading a value."""
    out, y = [y0], y0
    for a, b in zip(ts[:-1], ts[1:]):
        y = y + sde.f(a, y) * (b - a) + sde.g(a, y) * (b - a).sqrt() * torch.randn_like(y)
        out.append(y)
    return torch.stack(out)


@pytest.fixture
def stand_ins(monkeypatch):
    monkeypatch.setattr(solvers.probability_flow, "odeint", euler_odeint)
    monkeypatch.setattr("sde_diffusion.likelihood.odeint", euler_odeint)
    monkeypatch.setattr(torchsde, "sdeint", euler_sdeint)
    monkeypatch.setattr(torchsde, "BrownianInterval", lambda **_: None)
    monkeypatch.setattr(solvers.adaptive_sde, "_read", lambda v: [0.0, 1.0])


@pytest.mark.parametrize("case", CASES, ids=map(_id, CASES))
def test_every_sampler_reads_the_device_once_per_call(case, reads, stand_ins):
    model = _model("meta", case[1])
    with torch.no_grad():
        x = solvers.sample(model, model.sde, SHAPE, method=case[0], steps=STEPS, device="meta", **case[1]).x
    assert x.device.type == "meta" and tuple(x.shape) == SHAPE
    assert len(reads) == 1 and reads[0][0] > 3  # one read, of every state's and score's probe


def test_inpainting_and_trajectories_read_the_device_once(reads):
    model = _model("meta")
    mask = torch.zeros(SHAPE, dtype=torch.bool, device="meta")
    known = torch.zeros(SHAPE, device="meta")
    with torch.no_grad():
        r = solvers.sample(model, model.sde, SHAPE, method="dpm_solver", steps=STEPS, device="meta",
                           inpaint=(mask, known), return_trajectory=True)
    assert r.trajectory.shape == (STEPS + 1, *SHAPE) and len(reads) == 1


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_log_likelihood_reads_the_device_once(divergence, reads, stand_ins):
    model = build_model("mlp", VPSDE(), dim=8, hidden=16, blocks=1).to("meta").requires_grad_(False)
    x = torch.zeros(4, 8, device="meta")  # the exact divergence: D = 8 vector-Jacobian products per call
    r = log_likelihood(model, model.sde, x, divergence=divergence)
    assert r.log_prob.device.type == "meta" and r.log_prob.shape == (4,) and len(reads) == 1


# -- on CUDA: the sync debug mode ---------------------------------------------------------------
def _strict(fn):
    """fn under sync debug mode "error" (restored to off afterwards)."""
    def wrapped(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return fn(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return wrapped


def _sample(model, name, device, **kwargs):
    with torch.no_grad():
        return solvers.sample(model, model.sde, SHAPE, method=name, steps=STEPS, device=device,
                              generator=torch.Generator(device).manual_seed(0), **kwargs)


@pytest.mark.cuda
@pytest.mark.parametrize("case", STRICT, ids=map(_id, STRICT))
def test_sampler_has_no_sync_but_the_finite_check_on_cuda(case, cuda_device, reads):
    (name, opts), model = case, _model(cuda_device, case[1])
    mask = torch.rand(SHAPE, device=cuda_device) < 0.5
    variants = [opts, {**opts, "return_trajectory": True, "inpaint": (mask, torch.zeros(SHAPE, device=cuda_device))}]
    for kwargs in variants:
        _sample(model, name, cuda_device, **kwargs)  # warm-up: lazy CUDA initialisation may sync
        torch.cuda.synchronize()
        del reads[:]
        x = _strict(_sample)(model, name, cuda_device, **kwargs).x
        assert x.device.type == "cuda" and len(reads) == 1


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(EXEMPT))
def test_exempt_samplers_right_hand_sides_have_no_sync_on_cuda(name, cuda_device, monkeypatch):
    import solvers.torchsde_adapter as adapter
    from torchdiffeq import odeint

    monkeypatch.setattr(solvers.probability_flow, "odeint", lambda f, *a, **k: odeint(_strict(f), *a, **k))
    monkeypatch.setattr(adapter._Reversed, "f", _strict(adapter._Reversed.f))
    monkeypatch.setattr(adapter._Reversed, "g", _strict(adapter._Reversed.g))
    monkeypatch.setattr(solvers.adaptive_sde, "_attempt", _strict(solvers.adaptive_sde._attempt))
    assert torch.isfinite(_sample(_model(cuda_device), name, cuda_device).x).all()


@pytest.mark.cuda
@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_log_likelihood_right_hand_side_has_no_sync_on_cuda(divergence, cuda_device, monkeypatch):
    from torchdiffeq import odeint

    monkeypatch.setattr("sde_diffusion.likelihood.odeint", lambda f, *a, **k: odeint(_strict(f), *a, **k))
    model = _model(cuda_device)
    x = torch.randn(SHAPE, device=cuda_device, generator=torch.Generator(cuda_device).manual_seed(1))
    r = log_likelihood(model, model.sde, x, divergence=divergence, rtol=1e-3, atol=1e-3,
                       generator=torch.Generator(cuda_device).manual_seed(2))
    assert torch.isfinite(r.log_prob).all() and r.nfe > 2


def test_learned_variance_on_a_respaced_chain_reads_the_device_once(reads):
    """Ancestral sampling of a learned-variance U-Net on a respaced chain (iDDPM sec. 4): the chain's
    tables go to the device, the steps' v stays there; one read per call."""
    torch.manual_seed(0)
    sched = DDPMSchedule(T=50).respace(STEPS)
    model = build_model("unet", sched.embedding(), base_channels=8, channel_mults=(1, 2), blocks_per_level=1,
                        attention_resolutions=(4,), image_size=8, learned_variance=True)
    model = model.to("meta").eval().requires_grad_(False)
    with torch.no_grad():
        x = solvers.sample(model, model.sde, SHAPE, method="ancestral", steps=STEPS, device="meta",
                           schedule=sched).x
    assert x.device.type == "meta" and tuple(x.shape) == SHAPE
    assert len(reads) == 1 and reads[0][0] > 3
