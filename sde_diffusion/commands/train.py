"""``sde-diffusion train``: train a score model from a YAML config (see configs/)."""

from __future__ import annotations

import argparse
import sys

from .common import add_common, add_run_arguments, device, run_config

HELP = "train a score model from a YAML config, with key.path=value overrides"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p, "configs/digits_vp.yaml", "train.steps=2000 model.params.hidden=64")
    add_common(p, "training seed (overrides train.seed)")


def run(args: argparse.Namespace) -> int:
    from ..distributed import is_main
    from ..train import TrainingError, train

    cfg, out = run_config(args, "train.seed")
    dev = device(args.device)
    try:
        result = train(cfg, out, resume=args.resume, device=dev, progress=not args.no_progress)
    except TrainingError as e:
        print(f"sde-diffusion train: {e}", file=sys.stderr)
        return 1
    how = f"interrupted at step {result.step}" if result.interrupted else f"finished {result.step} steps"
    if is_main():
        print(f"{how}; checkpoint: {result.checkpoint}")
    return 0
