"""``sde-diffusion train``: train a score model from a YAML config (see configs/)."""

from __future__ import annotations

import argparse

from .common import add_model, add_run_arguments, finished, run_training, training_exit

HELP = "train a score model from a YAML config, with key.path=value overrides"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p, "configs/digits_vp.yaml", "train.steps=2000 model.params.hidden=64",
                      seed="training seed (overrides train.seed)")
    add_model(p, "start from this model's weights (fine-tuning; without --config, also its config)")


def run(args: argparse.Namespace) -> int:
    from ..training.distributed import is_main
    from ..training.train import train

    result = run_training(args, "train.seed", train, "train", model_config=True, init=args.model)
    if result is not None and is_main():
        print(finished(result))
    return training_exit(result, "train", announce=is_main())
