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


def is_override(arg: str) -> bool:
    """A ``key.path=value`` config override (not an option, a key before the '=')."""
    return not arg.startswith("-") and "=" in arg and arg.index("=") > 0


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that the training subcommands take their ``key.path=value``
    overrides anywhere on the command line (before, between and after options, in the order given):
    argparse fills the positional from one run of arguments only and leaves later ones unrecognized.
    (``parse_intermixed_args`` would do it but refuses parsers with subcommands.)"""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides"):
        late = [a for a in extra if is_override(a)]
        args.overrides = list(args.overrides or []) + late
        extra = [a for a in extra if not is_override(a)]
    elif extra and any(map(is_override, extra)) and getattr(args, "command", None):
        parser.error(f"{args.command} takes no key.path=value overrides (got {next(filter(is_override, extra))}); "
                     "config overrides go to train and train-classifier, anywhere after the subcommand.")
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; bad input (ValueError/TypeError) exits with code 2 and a one-line message."""
    parser = build_parser()
    args = parse(parser, argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except (ValueError, TypeError) as e:
        message = " ".join(str(e).split())
        print(f"sde-diffusion {args.command}: error: {message}", file=sys.stderr)
        return 2

