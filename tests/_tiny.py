"""A tiny training config shared by the checkpoint, training and CLI tests (seconds on one core)."""

from pathlib import Path

from sde_diffusion.training.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["data.n=256", "model.params={hidden: 16, blocks: 1, emb_dim: 8}", "train.batch_size=32",
        "train.warmup=2", "train.log_every=2", "train.ckpt_every=4", "train.sample_every=0",
        "sample.n=16", "sample.steps=4", "sample.method=heun"]


def tiny_config(*overrides: str, base: str = "toy_vp"):
    """configs/<base>.yaml shrunk to a 16-unit MLP on 256 ring points, plus ``overrides``."""
    return load_config(CONFIGS / f"{base}.yaml", TINY + list(overrides))
