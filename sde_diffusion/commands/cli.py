"""The ``sde-diffusion`` command. Each subcommand registers itself in ``COMMANDS``."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .. import __version__
from . import compare, demo, nll, sample, train, train_classifier

# name -> (help, add_arguments(parser), run(args) -> exit code)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {
    "train": (train.HELP, train.add_arguments, train.run),
    "train-classifier": (train_classifier.HELP, train_classifier.add_arguments, train_classifier.run),
    "sample": (sample.HELP, sample.add_arguments, sample.run),
    "nll": (nll.HELP, nll.add_arguments, nll.run),
    "compare": (compare.HELP, compare.add_arguments, compare.run),
    "demo": (demo.HELP, demo.add_arguments, demo.run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sde-diffusion",
        description="Score-based generative modelling in continuous time: train, sample, "
                    "compute likelihoods and compare SDE and ODE samplers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; bad input (ValueError/TypeError) exits with code 2 and a one-line message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except (ValueError, TypeError) as e:
        message = " ".join(str(e).split())
        print(f"sde-diffusion {args.command}: error: {message}", file=sys.stderr)
        return 2

