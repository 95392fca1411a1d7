"""Config schema: every shipped config loads, configs compose, overrides apply, errors name the key."""

import re
from pathlib import Path

import pytest

from sde_diffusion.training.config import (Config, build_schedule, build_sde, differences, from_dict,
                                  load_config, to_dict)
from sde_diffusion.schedule import DDPMSchedule
from sde_diffusion.sde import VESDE, VPSDE

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_round_trips(path):
    cfg = load_config(path)
    assert from_dict(to_dict(cfg)) == cfg
    build_sde(cfg)


def test_shipped_grid_is_complete():
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert {f"{d}_{s}" for d in ("toy", "digits") for s in ("vp", "subvp", "ve")} <= names
    assert {"digits_cosine", "digits_ddpm"} <= names


@pytest.mark.parametrize("data", ["toy", "digits"])
def test_vp_and_subvp_differ_only_in_the_sde_name(data):
    vp, subvp = (load_config(CONFIGS / f"{data}_{s}.yaml") for s in ("vp", "subvp"))
    assert differences(vp, subvp) == ["sde.name: 'vp' vs 'subvp'"]


def test_ddpm_config_uses_the_schedule_and_its_embedding():
    cfg = load_config(CONFIGS / "digits_ddpm.yaml")
    assert build_schedule(cfg) == DDPMSchedule(T=1000, beta_1=1e-4, beta_T=0.02)
    assert build_sde(cfg) == DDPMSchedule(T=1000, beta_1=1e-4, beta_T=0.02).embedding()
    assert build_schedule(cfg).to_sde() == VPSDE(beta_min=0.1, beta_max=20.0)  # the continuous limit
    assert cfg.loss.kind == "ddpm"


def test_overrides_set_nested_keys_with_types():
    cfg = load_config(CONFIGS / "toy_vp.yaml", ["train.lr=1e-3", "train.steps=7", "train.bf16=true",
                                               "sde.name=ve", "sde.params={sigma_max: 3.0}",
                                               "model.params.hidden=16", "data.path=null"])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 7 and cfg.train.bf16 is True
    assert build_sde(cfg) == VESDE(sigma_max=3.0)
    assert cfg.model.params["hidden"] == 16 and cfg.model.params["blocks"] == 2  # merged, not replaced


def test_numeric_text_is_read_as_a_number():
    # YAML 1.1 reads "1e-3" (no dot) as a string; the schema accepts it for numeric keys.
    assert load_config(None, ["train.lr='1e-3'", "train.steps='100'"]).train.lr == 1e-3


@pytest.mark.parametrize("override, message", [
    (["train.lr=abc"], "train.lr: expected float, got 'abc'"),
    (["train.steps=1.5"], "train.steps: expected int, got 1.5"),
    (["train.bf16=3"], "train.bf16: expected bool, got 3"),
    (["data.name=5"], "data.name: expected str, got 5"),
    (["train.lrr=1"], "train.lrr: unknown key"),
    (["optimizer.lr=1"], "optimizer: unknown key"),
    (["model=3"], "model: expected a mapping"),
    (["sde.params.bogus=1"], "sde.params.bogus: unknown key for VPSDE"),
    (["model.params.width=1"], "model.params.width: unknown key for model 'mlp'"),
    (["sde.name=foo"], "sde.name: unknown value 'foo'"),
    (["model.kind=resnet"], "model.kind: unknown value 'resnet'"),
    (["loss.weighting=snr"], "loss.weighting: unknown value 'snr'"),
    (["loss.kind=ddpm"], "loss.kind: 'ddpm' needs sde.name 'ddpm'"),
    (["sde.params.beta_min=-1"], "sde.params: beta_min must be a finite number > 0"),
    (["train.lr=0"], "train.lr: must be a finite number > 0"),
    (["train.ema_decay=1.0"], "train.ema_decay: must lie in [0, 1)"),
    (["train.batch_size=0"], "train.batch_size: must be an integer >= 1"),
    (["train.lr"], "override 'train.lr' must look like key.path=value"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        load_config(CONFIGS / "toy_vp.yaml", override)


def test_yaml_file_errors_name_the_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {CONFIGS / 'toy_vp.yaml'}\ntrain:\n  lr: fast\n")
    with pytest.raises(ValueError, match=r"^train\.lr: expected float, got 'fast'"):
        load_config(bad)
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_base_files_compose_and_cycles_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {steps: 5, lr: 0.5}\nmodel: {params: {hidden: 8}}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain: {lr: 0.25}\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.train.steps, cfg.train.lr, cfg.model.params) == (5, 0.25, {"hidden": 8})
    assert cfg.train.batch_size == Config().train.batch_size  # schema default
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ValueError, match="circular"):
        load_config(tmp_path / "b.yaml")
