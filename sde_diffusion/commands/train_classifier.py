"""``sde-diffusion train-classifier``: the noisy classifier of classifier guidance, from a YAML config."""

from __future__ import annotations

import argparse

from .common import add_model, add_run_arguments, finished, run_training, training_exit

HELP = ("train a noisy classifier p(y | x_t, t) on the config's data and SDE (its classifier section), "
        "for sample --classifier")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p, "configs/digits_classifier.yaml", "classifier.steps=1000 classifier.hidden=128",
                      seed="training seed (overrides classifier.seed)")
    add_model(p, "the score model the classifier will guide: its SDE and data shape are checked against the "
                 "config's before training")


def run(args: argparse.Namespace) -> int:
    from ..training.classifier_training import train_noisy_classifier

    result = run_training(args, "classifier.seed", train_noisy_classifier, "train-classifier", guides=args.model)
    if result is None:
        return 1
    print(finished(result))
    if result.interrupted:
        return training_exit(result, "train-classifier")
    if result.accuracy:
        print("held-out accuracy on noised data: " +
              ", ".join(f"{acc:.3f} at t = {t:.3g}" for t, acc in result.accuracy.items()))
    return 0
