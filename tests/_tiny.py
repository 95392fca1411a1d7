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


def ctrl_c_after_first_checkpoint(patch, module) -> None:
    """Simulate Ctrl-C in a trainer ``module`` (``training.train`` or ``training.classifier_training``):
    with ``patch`` (a pytest monkeypatch or its context), StopOnSignal's request is set to SIGINT right
    after the first checkpoint is saved, as the signal handler would set it."""
    stops, real_save = [], module.save_checkpoint

    class Stop(module.StopOnSignal):
        def __enter__(self):
            stops.append(super().__enter__())
            return stops[-1]

    def save_then_ctrl_c(*args, **kwargs):
        path = real_save(*args, **kwargs)
        stops[-1].requested = "SIGINT"
        return path

    patch.setattr(module, "StopOnSignal", Stop)
    patch.setattr(module, "save_checkpoint", save_then_ctrl_c)
