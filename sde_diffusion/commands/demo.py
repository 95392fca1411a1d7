"""``sde-diffusion demo``: samplers on the analytic gmm64 and on the shipped digits model, test
bits/dim, one report folder (see ``sde_diffusion.evaluation.demo``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_common, add_model, device

HELP = ("the main job, no arguments needed: compare samplers on the analytic 64-D mixture and on the "
        "shipped digits model over repeats, compute test bits/dim, write one report folder (a few minutes "
        "on a 2-core CPU)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p, "the digits model (default shipped:digits_vp), e.g. a run of your own that "
                 "`sde-diffusion train --config configs/digits_vp.yaml` writes", default="shipped:digits_vp")
    p.add_argument("--quick", action="store_true", help="a smaller run (fewer samples and steps; about a minute)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1: the small models gain little from more, and "
                        "threads competing with other work on a busy machine slow them several-fold)")
    add_common(p, seed="seed of the samplers and of the likelihood estimates (default 0)",
               out="the report; default reports/demo")


QUICK = dict(analytic_n=200, analytic_steps="10,20", analytic_repeats=2, digits_n=100, digits_steps="10,20",
             digits_repeats=2, nll_n=100, vlb_n=10)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.demo import DemoSizes, run_demo

    if args.threads < 1:
        raise ValueError(f"--threads must be an integer >= 1, got {args.threads}.")
    torch.set_num_threads(args.threads)
    sizes = DemoSizes(**QUICK) if args.quick else DemoSizes()
    result = run_demo(Path(args.out or "reports/demo"), model=args.model, sizes=sizes, device=device(args.device),
                      seed=args.seed or 0, progress=not args.no_progress)
    print(f"digits test bits/dim (probability-flow ODE): {result['bits_per_dim']:.3f} +- "
          f"{result['bits_per_dim_se']:.3f}; full-covariance Gaussian baseline {result['gaussian_bits_per_dim']:.3f}")
    digits, analytic = result["headlines"]
    print(f"digits: {digits}\n{sizes.analytic}: {analytic}")
    print(f"finished in {result['wall_s']:.0f} s; report: {result['report']}")
    return 0
