"""Arguments every subcommand shares (--device, --seed) and their checks."""

from __future__ import annotations

import argparse

import torch


def add_common(parser: argparse.ArgumentParser, seed_help: str) -> None:
    parser.add_argument("--device", default=None,
                        help="torch device: cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    parser.add_argument("--seed", type=int, default=None, help=seed_help)


def device(name: str | None) -> torch.device:
    """The device named on the command line, checked to exist."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: CUDA is not available on this machine; use --device cpu.")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: only cpu and cuda devices are supported.")
    return dev
