"""The trained digits model the package ships for ``sde-diffusion demo``, and how it is reproduced.

``sde_diffusion/assets/digits_vp/`` holds the EMA weights (``ema.safetensors``), the run's ``config.json`` and
``meta.json`` (data shape, levels, training step, the weights' SHA-256, the command that made it):
an inference-only export of a normal training run, without optimizer state. Reproduce it with
    sde-diffusion train --config configs/digits_vp.yaml --out runs/digits_vp
    python -m sde_diffusion.training.shipped runs/digits_vp
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from .checkpoint import (load_checkpoint, load_weights, model_kwargs, read_config, read_manifest, resolve,
                         sha256_file)

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "digits_vp"
COMMAND = "sde-diffusion train --config configs/digits_vp.yaml --out runs/digits_vp"


def export(run_dir: str | Path, dest: str | Path = SHIPPED, command: str = COMMAND) -> Path:
    """Copy a run's latest EMA weights and config to ``dest``, with meta.json."""
    ckpt = resolve(run_dir)
    manifest = read_manifest(ckpt)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("ema.safetensors", "config.json"):
        shutil.copyfile(ckpt / name, dest / name)
    meta = {"event_shape": manifest["event_shape"], "levels": manifest["levels"], "step": manifest["step"],
            "dataset": manifest.get("dataset"), "sha256": sha256_file(dest / "ema.safetensors"), "command": command}
    (dest / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return dest


def load_shipped(path: str | Path = SHIPPED, device: torch.device | str = "cpu"):
    """(ScoreModel in eval mode without gradients, Config, meta) of an export, its weights verified."""
    from .config import build_sde
    from ..models import build_model

    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        raise ValueError(f"{str(path)!r} is not an exported model (meta.json missing or unreadable); "
                         f"see `python -m sde_diffusion.training.shipped --help`.") from None
    if sha256_file(path / "ema.safetensors") != meta["sha256"]:
        raise ValueError(f"{str(path)!r}: ema.safetensors does not match meta.json's SHA-256.")
    cfg = read_config(path)
    model = build_model(cfg.model.kind, build_sde(cfg), **model_kwargs(cfg, meta))
    load_weights(model, path, ema=True)
    return model.to(device).eval().requires_grad_(False), cfg, meta


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` is an exported model's folder (with ``meta.json``) rather than a training run."""
    return (Path(path) / "meta.json").is_file()


def load_model(path: str | Path, device: torch.device | str = "cpu"):
    """(ScoreModel in eval mode, Config, meta with event_shape and levels) from a run directory, a
    checkpoint folder, an exported model folder (``meta.json``, e.g. ``assets/digits_vp``) or
    ``diffusers:PATH``, a diffusers model folder (``load_diffusers``)."""
    if str(path).startswith(DIFFUSERS):
        return load_diffusers(str(path)[len(DIFFUSERS):], device)
    if is_exported(path):
        return load_shipped(path, device)
    meta = read_manifest(resolve(path))
    model, cfg = load_checkpoint(path, device=device)
    return model, cfg, meta


# -- diffusers models (issue 16): the model string diffusers:PATH ------------------------------------
DIFFUSERS = "diffusers:"


def load_diffusers(path: str | Path, device: torch.device | str = "cpu"):
    """(score model, Config, meta) of a diffusers folder (``models.diffusers_adapter.from_diffusers``).
    The Config holds only defaults (sde.name ``discrete``); such a model has no data of its own, so
    commands that need data take a file (``with_data``). meta: the UNet's (C, H, W), 256 levels
    (8-bit images on [-1, 1], diffusers' convention)."""
    from ..models.diffusers_adapter import event_shape, from_diffusers
    from .config import Config

    model = from_diffusers(path).to(device).requires_grad_(False)
    cfg = Config()
    cfg.sde.name, cfg.model.kind, cfg.model.parameterization = "discrete", "diffusers", model.parameterization
    cfg.data.name, cfg.data.path = "npy", None
    return model, cfg, {"event_shape": list(event_shape(model)), "levels": 256}


def with_data(cfg, data: str | Path | None):
    """``cfg`` with its data replaced by the .npy/.npz file ``data`` if given; a model without data of
    its own (a diffusers model) needs one."""
    if data is not None:
        cfg.data.name, cfg.data.path = "npy", str(data)
    elif cfg.data.name == "npy" and cfg.data.path is None:
        raise ValueError("this model has no data of its own (a diffusers model): pass --data FILE, "
                         "a .npy/.npz of images (uint8 levels 0..255).")
    return cfg


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Export a training run's EMA weights as the demo's shipped model.")
    p.add_argument("run_dir", help="run directory (or checkpoint folder) of `sde-diffusion train`")
    p.add_argument("--dest", default=str(SHIPPED))
    a = p.parse_args(argv)
    dest = export(a.run_dir, a.dest)
    size = sum(f.stat().st_size for f in dest.iterdir())
    print(f"wrote {dest} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
