"""``sde-diffusion train-classifier``: the noisy classifier of classifier guidance, from a YAML config."""

from __future__ import annotations

import argparse
import sys

from .common import add_common, add_run_arguments, device, run_config

HELP = ("train a noisy classifier p(y | x_t, t) on the config's data and SDE (its classifier section), "
        "for sample --classifier")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p, "configs/digits_classifier.yaml", "classifier.steps=1000 classifier.hidden=128")
    add_common(p, "training seed (overrides classifier.seed)")


def run(args: argparse.Namespace) -> int:
    from ..classifier_training import train_noisy_classifier
    from ..runs import TrainingError

    cfg, out = run_config(args, "classifier.seed")
    dev = device(args.device)
    try:
        result = train_noisy_classifier(cfg, out, resume=args.resume, device=dev, progress=not args.no_progress)
    except TrainingError as e:
        print(f"sde-diffusion train-classifier: {e}", file=sys.stderr)
        return 1
    how = f"interrupted at step {result.step}" if result.interrupted else f"finished {result.step} steps"
    print(f"{how}; checkpoint: {result.checkpoint}")
    if result.accuracy:
        print("held-out accuracy on noised data: " +
              ", ".join(f"{acc:.3f} at t = {t:.3g}" for t, acc in result.accuracy.items()))
    return 0
