"""Checkpoints: exact round trip, atomic writes, clear errors for damaged or mismatched checkpoints."""

import hashlib
import json
import shutil

import pytest
import torch
from _tiny import tiny_config

from sde_diffusion.training import checkpoint as ckpt_mod
from sde_diffusion import load
from sde_diffusion.training.checkpoint import latest, load_weights, read_state, resolve
from sde_diffusion.models import build_model
from sde_diffusion.sde import VESDE, VPSDE
from sde_diffusion.training.train import TrainingError, train


@pytest.fixture(scope="module")
def run(trained):
    """A finished 8-step tiny run (checkpoints at steps 4 and 8), the session's shared tiny VP model;
    ``fresh`` copies it for each test that writes."""
    result = trained("toy_vp", "train.steps=8", tiny=True)
    return result.out, result


@pytest.fixture
def fresh(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    return out, run[1]


def _probe():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 2, generator=g), torch.rand(64, generator=g) * 0.9 + 0.05


def test_round_trip_gives_identical_outputs(run):
    out, result = run
    model = load(out)
    x, t = _probe()
    with torch.no_grad():
        assert torch.equal(model(x, t), result.model(x, t))  # the EMA weights, bit for bit
    assert model.info.config == result.config and model.sde == VPSDE(0.1, 20.0)
    assert model.event_shape == (2,) and model.levels is None and model.info.meta["step"] == 8
    assert resolve(out) == resolve(out / "checkpoints") == resolve(resolve(out)) == out / "checkpoints" / "step_00000008"


def test_only_the_newest_checkpoints_are_kept(run):
    out, _ = run
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_00000004", "step_00000008"]


def test_state_file_loads_with_weights_only(run):
    state = read_state(latest(run[0]))
    assert state["step"] == 8 and set(state) >= {"optimizer", "rng", "ema_n_averaged", "pending_losses"}


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "state.pt", "config.json"])
def test_truncated_file_is_reported(fresh, name):
    path = latest(fresh[0]) / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"{name} is truncated"):
        load(fresh[0])


@pytest.mark.parametrize("name", ["ema.safetensors", "state.pt"])
def test_corrupted_byte_is_reported(fresh, name):
    path = latest(fresh[0]) / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{name} is corrupted"):
        load(fresh[0])


def _rehash(ckpt, name):
    """Forge the manifest entry of ``name`` so that only the file's own format can catch damage."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    data = (ckpt / name).read_bytes()
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def test_damaged_safetensors_header_is_a_clear_error_even_with_a_forged_manifest(fresh):
    ckpt = latest(fresh[0])
    (ckpt / "ema.safetensors").write_bytes(b"\xff" * 8 + b"garbage")
    _rehash(ckpt, "ema.safetensors")
    with pytest.raises(ValueError, match="ema.safetensors cannot be read"):
        load(fresh[0])


class Payload:
    """Any pickled object other than plain containers and tensors must be refused."""


def test_state_file_with_an_arbitrary_object_is_refused(fresh):
    ckpt = latest(fresh[0])
    torch.save({"step": 8, "payload": Payload()}, ckpt / "state.pt")
    _rehash(ckpt, "state.pt")
    with pytest.raises(ValueError, match="state.pt cannot be loaded safely"):
        read_state(ckpt)


def test_missing_and_foreign_paths(fresh, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="is not a checkpoint"):
        load(tmp_path)
    (latest(fresh[0]) / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="model.safetensors is missing"):
        load(fresh[0])
    (latest(fresh[0]) / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json is unreadable"):
        load(latest(fresh[0]))


def test_other_architecture_is_refused_naming_the_parameter(run):
    other = build_model("mlp", VPSDE(), parameterization="edm", dim=2, hidden=32, blocks=1, emb_dim=8)
    with pytest.raises(ValueError, match=r"does not fit this architecture: net\.\S+ has shape"):
        load_weights(other, latest(run[0]))
    deeper = build_model("mlp", VPSDE(), parameterization="edm", dim=2, hidden=16, blocks=2, emb_dim=8)
    with pytest.raises(ValueError, match=r"does not fit this architecture: missing \['net\.blocks\.1"):
        load_weights(deeper, latest(run[0]))


def test_other_sde_is_refused_naming_both(run):
    with pytest.raises(ValueError, match=r"trained with the vp SDE \(VPSDE\(beta_min=0.1, beta_max=20.0\)\), not VESDE"):
        load(run[0], sde=VESDE())


@pytest.mark.parametrize("override, key", [("model.params.hidden=32", "model.params"),
                                           ("sde.name=subvp", "sde.name"),
                                           ("train.seed=1", "train.seed")])
def test_resume_under_a_different_architecture_sde_or_seed_is_refused(fresh, override, key):
    with pytest.raises(ValueError, match=f"differs from the checkpoint's in {key}"):
        train(tiny_config("train.steps=12", override), fresh[0], resume=True, progress=False)


def test_a_crash_while_saving_keeps_the_previous_checkpoint(fresh, monkeypatch):
    out, result = fresh
    before = latest(out)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "save_file", fail)
    with pytest.raises(TrainingError, match="could not write the checkpoint of step 12 .No space left"):
        train(tiny_config("train.steps=12"), out, resume=True, progress=False)
    assert latest(out) == before and not list((out / "checkpoints").glob(".tmp-*"))
    model = load(out)
    x, t = _probe()
    with torch.no_grad():
        assert torch.equal(model(x, t), result.model(x, t))


def test_starting_over_an_existing_run_is_refused(fresh):
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny_config("train.steps=8"), fresh[0], progress=False)
    with pytest.raises(ValueError, match="holds no checkpoint"):
        train(tiny_config("train.steps=8"), fresh[0] / "new", resume=True, progress=False)


@pytest.mark.parametrize("parameterization", ["x0", "mu"])
def test_a_ddpm_runs_model_is_read_on_its_chain(tmp_path, parameterization):
    """A run with sde.name ddpm (a checkpoint holds its config and weights only, so one saved before the
    embedding loads the same way) lives on its schedule's ``embedding()``: at the knots t = i/T its eps
    is the chain's reading of the net's output, with abar from the betas here (Ho et al. 2020, eq. 4, 11):
    x0: eps = (x - sqrt(abar_i) x0) / sqrt(1 - abar_i);  mu: eps = (x - sqrt(alpha_i) mu) sqrt(1 - abar_i) / beta_i."""
    from sde_diffusion.schedule import DDPMSchedule

    T = 20
    cfg = tiny_config("sde.name=ddpm", f"sde.params={{T: {T}, beta_1: 0.001, beta_T: 0.3}}", "loss.kind=ddpm",
                      f"model.parameterization={parameterization}", "train.steps=4")
    train(cfg, tmp_path / "run", progress=False)
    model = load(tmp_path / "run")
    assert model.sde == DDPMSchedule(T, 1e-3, 0.3).embedding()
    model = model.double()
    beta = torch.linspace(1e-3, 0.3, T, dtype=torch.float64)
    abar = torch.cumprod(1 - beta, 0)
    i = torch.arange(1, T + 1).repeat(3)
    x = torch.randn(len(i), 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = i.double() / T
    with torch.no_grad():
        out, ab, b = model.net(x, t), abar[i - 1, None], beta[i - 1, None]
        want = (x - ab.sqrt() * out) / (1 - ab).sqrt() if parameterization == "x0" else \
            (x - (1 - b).sqrt() * out) * (1 - ab).sqrt() / b
        torch.testing.assert_close(model.eps(x, t), want, rtol=1e-10, atol=1e-10)
