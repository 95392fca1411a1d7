"""Arguments every subcommand shares (--device, --seed) and their checks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


def add_diffusers(group) -> None:
    """--diffusers PATH, next to --checkpoint in ``group`` (a mutually exclusive group)."""
    group.add_argument("--diffusers", metavar="PATH",
                       help="a local diffusers model folder (UNet2DModel or pipeline save_pretrained), the same as "
                            "--checkpoint diffusers:PATH; needs pip install \"sde-diffusion[diffusers]\"")


def model_path(args: argparse.Namespace) -> str | None:
    """The model string: diffusers:PATH for --diffusers, else --checkpoint."""
    return f"diffusers:{args.diffusers}" if getattr(args, "diffusers", None) else args.checkpoint


def add_run_arguments(parser: argparse.ArgumentParser, example: str, overrides: str) -> None:
    """--config, overrides, --out, --resume, --no-progress of the training subcommands."""
    parser.add_argument("--config", help=f"YAML config, e.g. {example} (optional with --resume)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help=f"config overrides, e.g. {overrides}")
    parser.add_argument("--out", help="run directory (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_config(args: argparse.Namespace, seed_key: str):
    """(Config, run directory) of a training subcommand: --config with overrides (--seed sets
    ``seed_key``), or with --resume alone the config of the run's latest checkpoint."""
    from ..training.checkpoint import latest, read_config
    from ..training.config import apply_overrides, from_dict, load_config, to_dict

    if args.config is None and not args.resume:
        raise ValueError("--config is required (unless --resume continues a run in --out).")
    if args.out is None and args.config is None:
        raise ValueError("--resume needs --out (the run directory to continue).")
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    overrides = list(args.overrides) + ([f"{seed_key}={args.seed}"] if args.seed is not None else [])
    if args.config is not None:
        return load_config(args.config, overrides), out
    ckpt = latest(out)
    if ckpt is None:
        raise ValueError(f"--resume: {str(out)!r} holds no checkpoint to resume from.")
    return from_dict(apply_overrides(to_dict(read_config(ckpt)), overrides)), out


def run_training(args: argparse.Namespace, seed_key: str, trainer, command: str):
    """``trainer(cfg, out, resume=, device=, progress=)`` under the subcommand's config; the result, or
    None after printing a TrainingError (a fault mid-run, naming the last good checkpoint) as one line."""
    from ..training.runs import TrainingError

    cfg, out = run_config(args, seed_key)
    dev = device(args.device)
    try:
        return trainer(cfg, out, resume=args.resume, device=dev, progress=not args.no_progress)
    except TrainingError as e:
        print(f"sde-diffusion {command}: {e}", file=sys.stderr)
        return None


def finished(result) -> str:
    """"finished N steps" or "interrupted at step N", and the checkpoint."""
    how = f"interrupted at step {result.step}" if result.interrupted else f"finished {result.step} steps"
    return f"{how}; checkpoint: {result.checkpoint}"
