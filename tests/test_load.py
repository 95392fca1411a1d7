"""``sde_diffusion.load``: every kind of source gives one handle whose SDE, data shape and levels are
the source's, and whose scores are bit for bit those of the model rebuilt by hand from the files
(config.json + the backbone + the safetensors weights: what the four former loaders did)."""

import json
import shutil

import pytest
import torch
from _tiny import tiny_config
from safetensors.torch import load_file

import sde_diffusion as sd
from sde_diffusion import load
from sde_diffusion.analytic import preset
from sde_diffusion.guidance import NoisyClassifier
from sde_diffusion.models import build_model
from sde_diffusion.sde import VESDE, VPSDE, get_sde
from sde_diffusion.training.config import build_sde, from_dict
from sde_diffusion.training.loading import ASSETS, shipped_models
from sde_diffusion.training.shipped import export
from sde_diffusion.training.train import train


def _by_hand(folder, weights="ema.safetensors"):
    """The score model of a checkpoint or export folder, rebuilt from its files alone."""
    cfg = from_dict(json.loads((folder / "config.json").read_text()))
    meta = json.loads((folder / ("meta.json" if (folder / "meta.json").is_file() else "manifest.json")).read_text())
    shape = meta["event_shape"]
    width = {"dim": shape[0]} if cfg.model.kind == "mlp" else {"in_channels": shape[0]}
    model = build_model(cfg.model.kind, build_sde(cfg), parameterization=cfg.model.parameterization,
                        **width, **cfg.model.params)
    model.load_state_dict(load_file(folder / weights))
    return model.eval(), cfg, meta


def _same_scores(a, b, shape):
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(5, *shape, generator=g), torch.rand(5, generator=g) * 0.9 + 0.05
    with torch.no_grad():
        return torch.equal(a(x, t), b(x, t))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("load") / "run"
    train(tiny_config("train.steps=8"), out, progress=False)
    return out


def test_a_run_its_checkpoints_folder_and_a_step_folder(run):
    step = run / "checkpoints" / "step_00000008"
    want, cfg, manifest = _by_hand(step)
    for source in (run, run / "checkpoints", step, str(run)):
        model = load(source)
        assert model.sde == build_sde(cfg) == VPSDE(0.1, 20.0) and model.info.config == cfg
        assert model.event_shape == tuple(manifest["event_shape"]) == (2,) and model.levels is None
        assert model.info.source == str(source) and model.info.meta["step"] == 8
        assert _same_scores(model, want, (2,))
        assert not model.training and not any(p.requires_grad for p in model.parameters())
    raw, _, _ = _by_hand(step, "model.safetensors")
    assert _same_scores(load(run, ema=False), raw, (2,)) and not _same_scores(load(run), raw, (2,))


def test_an_export_and_the_shipped_models(run, tmp_path):
    dest = export(run, tmp_path / "exported", command="test")
    want, cfg, meta = _by_hand(dest)
    model = load(dest)
    assert model.event_shape == (2,) and model.info.config == cfg and _same_scores(model, want, (2,))
    assert shipped_models() == ["digits_cfg", "digits_vp"]
    for name in shipped_models():
        want, cfg, meta = _by_hand(ASSETS / name)
        model = load(f"shipped:{name}")
        assert model.sde == build_sde(cfg) and model.event_shape == tuple(meta["event_shape"]) == (1, 8, 8)
        assert model.levels == meta["levels"] == 17 and model.data_range == (-1.0, 1.0)
        if model.num_classes is None:
            assert _same_scores(model, want, (1, 8, 8))
        assert _same_scores(model, load(ASSETS / name), (1, 8, 8))  # the same as its folder
    with pytest.raises(ValueError, match="holds the EMA weights only"):
        load("shipped:digits_vp", ema=False)
    with pytest.raises(ValueError, match=r"unknown shipped model 'digits'.*digits_cfg, digits_vp"):
        load("shipped:digits")


@pytest.mark.parametrize("sde", ["vp", "ve", VESDE(), None])
def test_analytic_models(sde):
    model = load("analytic:gmm64", sde=sde)
    own = get_sde(sde or "vp") if not isinstance(sde, VESDE) else sde
    gm = preset("gmm64")
    assert model.sde == own and model.event_shape == (64,) and model.levels is None
    assert model.info.mixture is not None
    x, t = gm.sample(4, torch.Generator().manual_seed(0)), torch.full((4,), 0.3)
    assert torch.equal(model(x, t), gm.score(own)(x, t))


def test_a_diffusers_folder(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(tmp_path / "m")
    model = load(f"diffusers:{tmp_path / 'm'}")
    want = sd.from_diffusers(tmp_path / "m")
    assert model.sde == want.sde and model.event_shape == (1, 8, 8) and model.levels == 256
    assert _same_scores(model, want, (1, 8, 8))
    with pytest.raises(ValueError, match="has no data of its own"):
        sd.model_dataset(model)


def test_a_noisy_classifier_run(tmp_path):
    from sde_diffusion.training.classifier_training import train_noisy_classifier
    from sde_diffusion.training.config import load_config

    cfg = load_config(ASSETS.parents[1] / "configs" / "digits_classifier.yaml",
                      ["classifier.steps=3", "classifier.batch_size=8", "classifier.ckpt_every=3"])
    result = train_noisy_classifier(cfg, tmp_path / "clf", progress=False)
    clf = load(tmp_path / "clf", sde=build_sde(cfg), event_shape=(1, 8, 8), kind="noisy classifier")
    step = tmp_path / "clf" / "checkpoints" / "step_00000003"
    manifest = json.loads((step / "manifest.json").read_text())
    want = NoisyClassifier(64, manifest["num_classes"], hidden=cfg.classifier.hidden, layers=cfg.classifier.layers)
    want.load_state_dict(load_file(step / "model.safetensors"))
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 0.2)
    with torch.no_grad():
        assert torch.equal(clf(x, t), want(x, t)) and torch.equal(clf(x, t), result.classifier(x, t))
    assert clf.info.event_shape == (1, 8, 8) and clf.sde == build_sde(cfg)
    with pytest.raises(ValueError, match="holds a noisy classifier, not a score model .pass it to sample as --classifier"):
        load(tmp_path / "clf", kind="score model")
    with pytest.raises(ValueError, match="takes data of shape \\(1, 8, 8\\), not \\(2,\\)"):
        load(tmp_path / "clf", event_shape=(2,))
    with pytest.raises(ValueError, match="trained under VPSDE.*samples under VESDE"):
        load(tmp_path / "clf", sde=VESDE())


def test_bad_sources_and_sde_checks(run, tmp_path):
    with pytest.raises(ValueError, match="trained with the vp SDE .VPSDE.*not the ve SDE; leave the SDE unset"):
        load(run, sde="ve")
    assert load(run, sde="vp").sde == VPSDE()
    with pytest.raises(ValueError, match="names no analytic model"):
        load("analytic:")
    with pytest.raises(ValueError, match="unknown analytic model 'ring3d'"):
        load("analytic:ring3d")
    with pytest.raises(TypeError, match="a model source is a path or a string"):
        load(3)
    shutil.copytree(run, tmp_path / "copy")
    (tmp_path / "copy" / "checkpoints" / "step_00000008" / "ema.safetensors").write_bytes(b"0")
    with pytest.raises(ValueError, match="ema.safetensors is truncated or altered"):
        load(tmp_path / "copy")


def test_five_lines_load_sample_and_score(run):
    """The handle carries the SDE and data shape into ``sample`` and ``log_likelihood``: the same numbers as
    the explicit calls, and no autograd graph."""
    import solvers

    model = load(run)
    a = sd.sample(model, 8, method="ode:solver=rk4", steps=3, generator=torch.Generator().manual_seed(1))
    b = solvers.sample(model, model.sde, (8, 2), method="ode", steps=3, solver="rk4",
                       generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe == 13 and a.x.grad_fn is None
    lp = sd.log_likelihood(model, a.x, rtol=1e-4, atol=1e-4).log_prob
    assert torch.equal(lp, sd.log_likelihood(model, model.sde, a.x, rtol=1e-4, atol=1e-4).log_prob)
    with pytest.raises(ValueError, match="set both in method='ode:solver=rk4' and as a keyword"):
        sd.sample(model, 8, method="ode:solver=rk4", solver="rk4")
    with pytest.raises(TypeError, match="sde is required"):
        solvers.sample(lambda x, t: -x, shape=(2, 2))
    with pytest.raises(ValueError, match="sample count, which needs a model that knows its data shape"):
        solvers.sample(lambda x, t: -x, VPSDE(), 4)


def test_train_leaves_the_callers_random_state(tmp_path):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    train(tiny_config("train.steps=2"), tmp_path / "r", progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_train_from_a_model_starts_at_its_weights(run, tmp_path):
    """``init``: a fresh run starts at the source's (EMA) weights. Adam's first step moves each weight by
    lr_1 |m / sqrt(v)| = lr_1 (m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected), lr_1 = lr / warmup, so
    after one step every weight is within lr_1 of the source's, while a run from scratch (another seed: the
    source itself began at train.seed's initial weights) is not."""
    cfg = tiny_config("train.steps=1")
    lr1 = cfg.train.lr / cfg.train.warmup
    train(cfg, tmp_path / "ft", progress=False, init=str(run))
    train(tiny_config("train.steps=1", "train.seed=5"), tmp_path / "scratch", progress=False)
    source = load_file(run / "checkpoints" / "step_00000008" / "ema.safetensors")
    for name in ("ft", "scratch"):  # float32 weights of size ~1 add rounding of ~1e-7
        after = load_file(tmp_path / name / "checkpoints" / "step_00000001" / "model.safetensors")
        gap = max(float((after[k] - source[k]).abs().max()) for k in source)
        assert gap <= lr1 + 1e-6 if name == "ft" else gap > 100 * lr1, (name, gap, lr1)
    with pytest.raises(ValueError, match="does not fit the config's architecture"):
        train(tiny_config("train.steps=1", "model.params.hidden=8"), tmp_path / "ft2", progress=False, init=str(run))
