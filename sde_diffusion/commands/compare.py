"""``sde-diffusion compare``: SDE and ODE samplers by step count on one model (see ``compare``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .common import add_common, add_model, device

HELP = ("compare samplers by step count on one model over independent repeats: NFE, quality against "
        "held-out data (mean +- s.e.), escaped samples and wall time; writes report.md, results.csv, "
        "summary.csv, quality_vs_nfe.png and sample figures")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..evaluation.compare import DEFAULT_METHODS, DEFAULT_STEPS

    add_model(p, "the model whose samplers to compare (default analytic:ring2d)", default="analytic:ring2d")
    p.add_argument("--data", help="a .npy/.npz file (images as uint8 levels, or float vectors) to compare against "
                                  "instead of the model's data: its fixed 10%% test split; needed for a diffusers model")
    p.add_argument("--sde", default=None, help="vp, subvp, ve, cosine or all (analytic default: all; "
                   "a trained model: the SDE it was trained with, and no other)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated samplers, name[:option=value...] (default {DEFAULT_METHODS}). A method "
                        "that needs a VP-type SDE is skipped with a note on VE, or is an error when both it "
                        "and a single --sde are given")
    p.add_argument("--steps", default=DEFAULT_STEPS, help=f"comma-separated step counts (default {DEFAULT_STEPS})")
    p.add_argument("--num-samples", type=int, default=4000, help="samples per cell and repeat (default 4000)")
    p.add_argument("--repeats", default="auto", help="repeats per cell, each with its own samples and floor; "
                   "tables give mean +- the 95%% Student-t half-width. 'auto' (default): at least 3, then one more "
                   "at a time until every step count's ranking is decided, --max-repeats, or --time-budget")
    p.add_argument("--max-repeats", type=int, default=10, help="the most repeats of --repeats auto (default 10)")
    p.add_argument("--time-budget", type=float, default=600.0,
                   help="seconds after which --repeats auto adds no more repeats (default 600)")
    p.add_argument("--show-steps", type=int, help="step count of the sample figures (default: the largest)")
    p.add_argument("--nll", action="store_true", help="also the test NLL by the probability-flow ODE "
                   "(bits/dim or nats/dim, with standard error) and the DDPM bound where it applies")
    p.add_argument("--nll-num-points", type=int, default=500, help="held-out points for --nll (default 500)")
    add_common(p, seed="sampling seed (default 0): every method starts from the same prior noise",
               out="the report; default reports/compare_<model>")


def parse_repeats(text: str, most: int, budget_s: float):
    """'auto' -> ``AutoRepeats(3, most, budget_s)``; an integer >= 2 -> that count."""
    from ..evaluation.compare import AutoRepeats

    if str(text).strip() == "auto":
        return AutoRepeats(3, most, budget_s)
    try:
        r = int(text)
    except ValueError:
        r = 0
    if r < 2:
        raise ValueError(f"--repeats must be 'auto' or an integer >= 2, got {text!r}.")
    return r


def run(args: argparse.Namespace) -> int:
    from ..evaluation import compare, nll_table, report

    variants = compare.parse_methods(args.methods or compare.DEFAULT_METHODS)
    steps = compare.parse_steps(args.steps)
    repeats = parse_repeats(args.repeats, args.max_repeats, args.time_budget)
    for name in ("num_samples", "nll_num_points"):
        if getattr(args, name) < 2:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 2, got {getattr(args, name)}.")
    if args.show_steps is not None and args.show_steps not in steps:
        raise ValueError(f"--show-steps {args.show_steps} is not one of --steps {','.join(map(str, steps))}.")
    from ..training.loading import load, parse_source

    dev, seed = device(args.device), args.seed or 0
    scheme, rest = parse_source(args.model)
    model = None
    if scheme == "analytic":  # every SDE at once, each with the mixture's exact score
        if args.data is not None:
            raise ValueError("--data applies to a trained or diffusers model; an analytic model is scored "
                             "against its own fresh draws.")
        target = compare.analytic_target(rest, args.sde or "all", args.num_samples, dev, seed)
    else:
        if args.sde == "all":
            raise ValueError("--sde all needs an analytic --model; a trained model has the one SDE it was trained with.")
        model = load(args.model, sde=args.sde, device=dev, kind="score model")
        target = compare.model_target(model, dev, args.num_samples, seed, data=args.data,
                                      repeats=repeats if isinstance(repeats, int) else repeats.most)
    default_out = f"compare_{Path(rest).resolve().name if scheme is None else rest.rstrip('/').split('/')[-1]}"
    show = args.show_steps or max(steps)
    pairs = compare.plan(target, variants, steps, explicit=args.methods is not None and args.sde is not None)
    for note in target.notes:  # before any compute: every change to what was asked
        print(f"note: {note}", flush=True)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        rows, shown = compare.run_compare(target, pairs, steps, target.n, dev, repeats=repeats, seed=seed,
                                          show_steps=show, progress=not args.no_progress)
        nll_rows = None
        if args.nll:
            nll_rows = (nll_table.model_rows(model, dev, n=args.nll_num_points, seed=seed, data=args.data)
                        if model is not None else nll_table.analytic_rows(target, args.nll_num_points, dev, seed))
    out = Path(args.out) if args.out else Path("reports") / default_out
    files = report.write_compare(out, target, rows, shown, show, nll_rows,
                                 stopped="" if isinstance(repeats, int) else repeats.stopped)
    print(report.text_table(files["cells"], report.compare_columns(files["cells"])))
    if nll_rows:
        print()
        print(report.text_table(nll_rows, report.NLL_COLUMNS))
    print()
    for line in files["lines"]:
        print(line)
    for note in target.notes:
        print(f"note: {note}")
    print(f"\nreport: {files['report']}\ntables: {files['csv']} (every repeat), {files['summary']} (means)\n"
          f"plot: {files['plot']}\nsamples: {out}/samples_*.png")
    return 0
