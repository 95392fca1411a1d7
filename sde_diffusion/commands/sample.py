"""``sde-diffusion sample``: draw samples from a model, write samples.png and samples.npz into a folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .common import add_common, add_model, device, positive

HELP = "draw samples from a model by any sampler; writes samples.png (grid or scatter) and samples.npz"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p, "the model to sample", required=True)
    p.add_argument("--method", metavar="NAME[:OPTION=VALUE...]",
                   help="sampler and its options, e.g. dpm_solver or ode:solver=rk4 (solvers.available(); "
                        "default: the config's sample.method)")
    p.add_argument("--steps", type=int, help="number of steps (default: the config's sample.steps)")
    p.add_argument("--num-samples", type=int, help="number of samples (default: the config's sample.n)")
    p.add_argument("--respace", action="store_true",
                   help="with --method ancestral on a DDPM-chain model (sde.name ddpm): run the chain's own "
                        "steps respaced to --steps, variances recomputed (Nichol & Dhariwal 2021, sec. 4)")
    p.add_argument("--batch-size", type=int,
                   help="samples per sampler call, batch i seeded by the seed and i (default: all at once); "
                        "under torchrun each rank takes whole batches")
    p.add_argument("--label", type=int, help="class to sample: a conditional model (configs/digits_cfg.yaml) or --classifier")
    p.add_argument("--guidance", type=float, default=0.0,
                   help="classifier-free guidance weight w >= 0: (1 + w) s(x|y) - w s(x|null) (default 0)")
    p.add_argument("--classifier", metavar="SOURCE",
                   help="classifier guidance: a noisy classifier run of train-classifier (same SDE as the model), "
                        "steering towards --label")
    p.add_argument("--classifier-scale", type=float,
                   help="classifier guidance weight c >= 0: score + c grad log p(y | x_t) (default 1)")
    add_common(p, seed="sampling seed (default 0): same seed, same samples",
               out="default: <run>/samples/<method>_<steps>, or runs/<name>/samples/... for a model that is "
                   "not a run")


def run(args: argparse.Namespace) -> int:
    import solvers
    import torch

    from ..dequantize import continuous_to_levels
    from ..training.config import Config, build_schedule
    from ..training.distributed import chunk_seed, setup
    from ..training.loading import is_exported, load, parse_source
    from ..training.train import draw_samples
    from ..training import viz

    positive(args, "steps", "num_samples", "batch_size")
    if args.method is not None:
        solvers.parse_method(args.method)  # an unknown name or option fails before anything loads
    world, dev = setup(device(args.device))
    model = load(args.model, device=dev, kind="score model")
    cfg = model.info.config or Config()  # an analytic model: the sampling defaults
    method = args.method or cfg.sample.method
    steps, n = args.steps or cfg.sample.steps, args.num_samples or cfg.sample.n
    if args.classifier_scale is not None and args.classifier is None:
        raise ValueError("--classifier-scale needs --classifier (a noisy classifier run).")
    classifier = None if args.classifier is None else load(
        args.classifier, device=dev, sde=model.sde, event_shape=model.event_shape, kind="noisy classifier")
    scale = 1.0 if args.classifier_scale is None else args.classifier_scale
    options = {}
    if args.respace:
        chain = build_schedule(cfg)
        if solvers.parse_method(method)[0] != "ancestral" or chain is None:
            raise ValueError(f"--respace runs the ancestral sampler on a DDPM chain: it needs --method ancestral "
                             f"and a model trained with sde.name ddpm; got method {method!r}, sde.name {cfg.sde.name!r}.")
        if steps > chain.T:
            raise ValueError(f"--respace: --steps must lie in 1..T = 1..{chain.T}, got {steps}.")
        options["schedule"] = chain.respace(steps)
    results = [draw_samples(model, cfg, model.event_shape, device=dev, seed=chunk_seed(args.seed or 0, i), n=b - a,
                            method=method, steps=steps, label=args.label, guidance=args.guidance,
                            classifier=classifier, classifier_scale=scale,
                            progress=not args.no_progress and sys.stderr.isatty(),  # errors stay one line
                            **options)
               for i, a, b in world.chunks(n, args.batch_size or n)]
    x = world.gather(torch.cat([r.x for r in results]) if results else torch.zeros(0, *model.event_shape, device=dev))
    nfe = int(world.sum(torch.tensor(sum(r.nfe for r in results), device=dev)))
    if not world.main:
        return 0
    tag = "" if args.label is None else f"_label{args.label}" + (
        f"_w{args.guidance:g}" if model.num_classes is not None else "") + (
        f"_c{scale:g}" if classifier is not None else "")
    tag = ("_respaced" if args.respace else "") + tag
    scheme, rest = parse_source(args.model)  # a run is written into; any other model's samples go to runs/<name>
    run = Path(rest) if scheme is None and not is_exported(rest) else Path("runs") / Path(rest).resolve().name
    out = Path(args.out) if args.out else run / "samples" / f"{method.replace(':', '_')}_{steps}{tag}"
    out.mkdir(parents=True, exist_ok=True)
    x, levels = x.cpu(), model.levels
    arrays = {"x": x.numpy(), "nfe": np.int64(nfe)}
    if levels:
        arrays["levels"] = continuous_to_levels(x, levels, model.data_range).numpy().astype(np.int64)
    np.savez(out / "samples.npz", **arrays)
    png = viz.try_plot(viz.save_samples, x, out / "samples.png", levels=levels, title=f"{method}, {steps} steps",
                       what="sample figure")
    files = f"{png} and {out / 'samples.npz'}" if png is not None else f"{out / 'samples.npz'}"
    print(f"{len(x)} samples by {method} ({steps} steps, {nfe} score evaluations): {files}")
    return 0
