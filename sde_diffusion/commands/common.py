"""Arguments every subcommand shares (--device, --seed) and their checks."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch


SOURCES = ("a run directory, a checkpoint folder, an exported model folder, shipped:NAME (digits_vp, digits_cfg), "
           "diffusers:PATH or analytic:NAME (ring2d, grid2d, gmm64)")


def add_common(parser: argparse.ArgumentParser, *, seed: str, out: str) -> None:
    """The flags of every subcommand: --out (a folder), --no-progress, --device, --seed."""
    parser.add_argument("--out", metavar="DIR", help=f"output folder ({out})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--device", default=None,
                        help="torch device: cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    parser.add_argument("--seed", type=int, default=None, help=seed)


def add_model(parser: argparse.ArgumentParser, what: str, **kwargs) -> None:
    """--model SOURCE, the one way every subcommand names a model (``sde_diffusion.load``)."""
    parser.add_argument("--model", metavar="SOURCE", help=f"{what}: {SOURCES}", **kwargs)


def positive(args: argparse.Namespace, *names: str) -> None:
    """Each named integer flag, when given, is >= 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value}.")


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


def add_run_arguments(parser: argparse.ArgumentParser, example: str, overrides: str, seed: str) -> None:
    """--config, overrides, --resume and the common flags of the training subcommands."""
    parser.add_argument("--config", help=f"YAML config, e.g. {example} (optional with --resume)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help=f"config overrides, e.g. {overrides}")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    add_common(parser, seed=seed, out="the run directory; default runs/<config name>")


def run_config(args: argparse.Namespace, seed_key: str, model_config: bool = False):
    """(Config, run directory) of a training subcommand: --config with overrides (--seed sets
    ``seed_key``), with --resume alone the config of the run's latest checkpoint, or with
    ``model_config`` and --model alone the config the model was trained with."""
    from ..training.checkpoint import latest, read_config
    from ..training.config import apply_overrides, from_dict, load_config, to_dict

    from_model = model_config and args.config is None and args.model is not None and not args.resume
    if args.config is None and not args.resume and not from_model:
        raise ValueError("--config is required (unless --resume continues a run in --out"
                         f"{' or --model starts from a model' if model_config else ''}).")
    if args.out is None and args.config is None and not from_model:
        raise ValueError("--resume needs --out (the run directory to continue).")
    overrides = list(args.overrides) + ([f"{seed_key}={args.seed}"] if args.seed is not None else [])
    if from_model:
        from ..training.loading import load

        cfg = load(args.model, kind="score model").info.config
        if cfg is None or cfg.model.kind not in ("mlp", "unet"):
            raise ValueError(f"--model {args.model!r} was not trained by sde-diffusion; training starts only from "
                             "such a model (a run, a checkpoint or an export) or from --config.")
        name = Path(args.model.split(":", 1)[-1]).resolve().name
        return from_dict(apply_overrides(to_dict(cfg), overrides)), Path(args.out or Path("runs") / f"{name}_tuned")
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if args.config is not None:
        return load_config(args.config, overrides), out
    ckpt = latest(out)
    if ckpt is None:
        raise ValueError(f"--resume: {str(out)!r} holds no checkpoint to resume from.")
    return from_dict(apply_overrides(to_dict(read_config(ckpt)), overrides)), out


def run_training(args: argparse.Namespace, seed_key: str, trainer, command: str, model_config: bool = False,
                 **extra):
    """``trainer(cfg, out, resume=, device=, progress=, **extra)`` under the subcommand's config; the
    result, or None after printing a TrainingError (a fault mid-run, naming the last good checkpoint)
    as one line."""
    from ..training.runs import TrainingError

    cfg, out = run_config(args, seed_key, model_config)
    dev = device(args.device)
    try:
        return trainer(cfg, out, resume=args.resume, device=dev, progress=not args.no_progress, **extra)
    except TrainingError as e:
        print(f"sde-diffusion {command}: {e}", file=sys.stderr)
        return None


INTERRUPTED = 130  # the exit code of a run stopped by SIGINT/SIGTERM (128 + SIGINT, as shells report Ctrl-C)


def training_exit(result, command: str, announce: bool = True) -> int:
    """The exit code of a training subcommand: 1 after a fault (``result`` None), 0 when finished,
    ``INTERRUPTED`` after a signal, printing (with ``announce``) the command that resumes the run."""
    if result is None:
        return 1
    if not result.interrupted:
        return 0
    if announce:
        print(f"to resume: sde-diffusion {command} --resume --out {shlex.quote(str(result.out))}", flush=True)
    return INTERRUPTED


def finished(result) -> str:
    """"finished N steps" or "interrupted at step N", and the checkpoint."""
    how = f"interrupted at step {result.step}" if result.interrupted else f"finished {result.step} steps"
    return f"{how}; checkpoint: {result.checkpoint}"
