"""Snapshot of the hand-written config loader (sde_diffusion/config.py before issue #21), written once.

Run at commit 68e1786, before the loader moved to OmegaConf:

    PYTHONPATH=. python tests/data/configs/snapshot.py

It wrote, next to itself, ``<name>.json`` = ``to_dict(load_config("configs/<name>.yaml"))`` for every
shipped config, ``overrides.json`` (override combinations from the tests and the README with the loaded
result) and ``errors.json`` (bad input with the exact one-line message). tests/test_config_loading.py
compares today's loader with these files field by field. Rerunning this script now would snapshot
the new loader against itself: do not, unless a change of the loaded values is intended.
Issue 13 intended one: the new key model.sigma_data (null) everywhere, and the toy configs' edm
parameterization, data.n null and 6,000 steps (the config JSONs and overrides.json were rewritten by
this script, errors.json's loss.weighting and model.parameterization messages by hand).
Issue 27 intended another: the new key data.levels (null) everywhere (the config JSONs and
overrides.json rewritten by this script).
"""

import json
import sys
import tempfile
from pathlib import Path

from sde_diffusion.training.config import load_config, to_dict

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
TINY = ["data.n=256", "model.params={hidden: 16, blocks: 1, emb_dim: 8}", "train.batch_size=32",
        "train.warmup=2", "train.log_every=2", "train.ckpt_every=4", "train.sample_every=0",
        "sample.n=16", "sample.steps=4", "sample.method=heun"]

# (config under configs/ or None, overrides)
LOADS = [
    ("toy_vp", TINY),
    ("toy_ve", TINY),
    ("digits_vp", ["model.params={base_channels: 8, channel_mults: [1], blocks_per_level: 1, attention_resolutions: []}"]),
    ("toy_vp", ["train.lr=1e-3", "train.steps=7", "train.bf16=true", "sde.name=ve", "sde.params={sigma_max: 3.0}",
                "model.params.hidden=16", "data.path=null"]),
    (None, ["train.lr='1e-3'", "train.steps='100'"]),
    ("toy_vp", ["data.name=npy", "data.path=points.npy"]),
    ("digits_vp", ["data.name=cifar10", "data.path=/path/to/cifar-10-batches-py", "model.params.base_channels=64"]),
    ("digits_cfg", ["train.steps=1200"]),
    ("toy_vp", ["train.lr=1", "train.grad_clip=0", "loss.eps=1e-4"]),          # ints for floats
    ("toy_vp", ["train.steps=2.0", "train.seed=1e3", "sample.n=64.0"]),         # integral floats for ints
    ("toy_vp", ["train.bf16=yes", "loss.importance_sampling=on"]),               # YAML 1.1 booleans
    ("toy_vp", ["data.n=null", "data.path=~", "data.seed=3"]),                  # null for Optional
    ("toy_vp", ["data=null"]),                                                  # an empty section: defaults
    ("toy_vp", ["train.seed=7", "classifier.seed=7", "sample.method=ode"]),
    ("digits_vp", ["model.params.channel_mults=[1, 2, 2]", "model.params.attention_resolutions=[]"]),
    ("digits_ddpm", ["sde.params.T=500"]),
    ("toy_vp", ["model.parameterization=score", "loss.weighting=likelihood"]),
    ("toy_vp", ["sample.eps=0.01"]),
    (None, []),
]

# (files to write in an empty directory, the file to load or None, overrides); "{dir}" is that directory
ERRORS = [
    ({}, None, ["train.lr=abc"]), ({}, None, ["train.steps=1.5"]), ({}, None, ["train.bf16=3"]),
    ({}, None, ["data.name=5"]), ({}, None, ["train.lrr=1"]), ({}, None, ["optimizer.lr=1"]),
    ({}, None, ["model=3"]), ({}, None, ["sde.params.bogus=1"]), ({}, None, ["model.params.width=1"]),
    ({}, None, ["sde.name=foo"]), ({}, None, ["model.kind=resnet"]), ({}, None, ["loss.weighting=snr"]),
    ({}, None, ["loss.kind=ddpm"]), ({}, None, ["sde.params.beta_min=-1"]), ({}, None, ["train.lr=0"]),
    ({}, None, ["train.ema_decay=1.0"]), ({}, None, ["train.batch_size=0"]), ({}, None, ["train.lr"]),
    ({}, None, ["=1"]), ({}, None, ["train..lr=1"]), ({}, None, ["train.lr.x=1"]),
    ({}, None, ["train.bf16='true'"]), ({}, None, ["train.lr=true"]), ({}, None, ["train.steps=true"]),
    ({}, None, ["train.lr=[1]"]), ({}, None, ["train=[1]"]), ({}, None, ["sde.params=3"]),
    ({}, None, ["sde.params=null"]), ({}, None, ["data.path=5"]), ({}, None, ["data.n=0"]),
    ({}, None, ["data.n=2.5"]), ({}, None, ["train.lr=.nan"]), ({}, None, ["train.p_uncond=0.5"]),
    ({}, None, ["train.p_uncond=2"]), ({}, None, ["train.grad_clip=-1"]), ({}, None, ["model.parameterization=v"]),
    ({}, None, ["sde.name=ddpm", "sde.params.beta_max=3"]), ({}, None, ["sample.steps=0"]),
    ({}, None, ["classifier.lr=-1"]), ({}, None, ["train.warmup=-1"]), ({}, None, ["loss.kind=l2"]),
    ({"bad.yaml": "base: {root}/configs/toy_vp.yaml\ntrain:\n  lr: fast\n"}, "bad.yaml", []),
    ({"bad.yaml": "train: [1, 2\n"}, "bad.yaml", []),
    ({}, "missing.yaml", []),
    ({"list.yaml": "- 1\n- 2\n"}, "list.yaml", []),
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "b.yaml", []),
    ({"c.yaml": "base: nowhere.yaml\n"}, "c.yaml", []),
    ({"c.yaml": "base: [sub/a.yaml]\n", "sub/a.yaml": "base: missing.yaml\n"}, "c.yaml", []),
    ({"c.yaml": "train:\n  lr: 0.1\n  steps: many\n"}, "c.yaml", []),
    ({"c.yaml": "sample: {method: heun, nn: 3}\n"}, "c.yaml", []),
    ({"c.yaml": "train: {lr: 0.1}\n"}, "c.yaml", ["train.lr.x=1"]),
    ({"c.yaml": "model: {params: {hidden: 8}}\n"}, "c.yaml", ["model.params.hidden.x=1"]),
]


def error_of(files: dict, path: str | None, overrides: list) -> str:
    with tempfile.TemporaryDirectory() as d:
        for name, text in files.items():
            (Path(d) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(d) / name).write_text(text.replace("{root}", str(ROOT)))
        try:
            load_config(Path(d) / path if path else None, overrides)
        except ValueError as e:
            return str(e).replace(d, "{dir}")
    sys.exit(f"no error for {files} {path} {overrides}")


if __name__ == "__main__":
    for p in sorted((ROOT / "configs").glob("*.yaml")):
        (HERE / f"{p.stem}.json").write_text(json.dumps(to_dict(load_config(p)), indent=2) + "\n")
    loads = [{"config": c, "overrides": o,
              "result": to_dict(load_config(ROOT / "configs" / f"{c}.yaml" if c else None, o))} for c, o in LOADS]
    (HERE / "overrides.json").write_text(json.dumps(loads, indent=1) + "\n")
    errors = [{"files": f, "config": p, "overrides": o, "message": error_of(f, p, o)} for f, p, o in ERRORS]
    (HERE / "errors.json").write_text(json.dumps(errors, indent=1) + "\n")
