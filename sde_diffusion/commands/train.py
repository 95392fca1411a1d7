"""``sde-diffusion train``: train a score model from a YAML config (see configs/)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..checkpoint import latest, read_config
from ..config import apply_overrides, from_dict, load_config, to_dict
from .common import add_common, device

HELP = "train a score model from a YAML config, with key.path=value overrides"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config, e.g. configs/digits_vp.yaml (optional with --resume)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value",
                   help="config overrides, e.g. train.steps=2000 model.params.hidden=64")
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common(p, "training seed (overrides train.seed)")


def run(args: argparse.Namespace) -> int:
    from ..distributed import is_main
    from ..train import TrainingError, train

    if args.config is None and not args.resume:
        raise ValueError("--config is required (unless --resume continues a run in --out).")
    if args.out is None and args.config is None:
        raise ValueError("--resume needs --out (the run directory to continue).")
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    overrides = list(args.overrides) + ([f"train.seed={args.seed}"] if args.seed is not None else [])
    if args.config is not None:
        cfg = load_config(args.config, overrides)
    else:
        ckpt = latest(out)
        if ckpt is None:
            raise ValueError(f"--resume: {str(out)!r} holds no checkpoint to resume from.")
        cfg = from_dict(apply_overrides(to_dict(read_config(ckpt)), overrides))
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
