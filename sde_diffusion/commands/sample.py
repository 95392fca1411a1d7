"""``sde-diffusion sample``: draw samples from a trained checkpoint, write a PNG and an .npz."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .common import add_common, add_diffusers, device, model_path

HELP = "draw samples from a checkpoint by any sampler; writes a PNG (grid or scatter) and an .npz"


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint",
                     help="run directory, checkpoint folder or exported model (e.g. sde_diffusion/assets/digits_vp)")
    add_diffusers(src)
    p.add_argument("--method", help="sampler (see solvers.available(); default: the config's sample.method)")
    p.add_argument("--steps", type=int, help="number of steps (default: the config's sample.steps)")
    p.add_argument("--n", type=int, help="number of samples (default: the config's sample.n)")
    p.add_argument("--respace", action="store_true",
                   help="with --method ancestral on a DDPM-chain model (sde.name ddpm): run the chain's own "
                        "steps respaced to --steps, variances recomputed (Nichol & Dhariwal 2021, sec. 4)")
    p.add_argument("--batch-size", type=int,
                   help="samples per sampler call, batch i seeded by the seed and i (default: all at once); "
                        "under torchrun each rank takes whole batches")
    p.add_argument("--label", type=int, help="class to sample: a conditional model (configs/digits_cfg.yaml) or --classifier")
    p.add_argument("--guidance", type=float, default=0.0,
                   help="classifier-free guidance weight w >= 0: (1 + w) s(x|y) - w s(x|null) (default 0)")
    p.add_argument("--classifier", help="classifier guidance: a noisy classifier run of train-classifier "
                                        "(same SDE as the model), steering towards --label")
    p.add_argument("--classifier-scale", type=float,
                   help="classifier guidance weight c >= 0: score + c grad log p(y | x_t) (default 1)")
    p.add_argument("--out", help="output path without extension "
                                 "(default: <checkpoint>/samples/<method>_<steps>; runs/<name>/samples/... for an exported model)")
    add_common(p, "sampling seed (default 0): same seed, same samples")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..training.classifier_training import load_noisy_classifier
    from ..dequantize import DATA_RANGE, continuous_to_levels
    from ..training.distributed import chunk_seed, setup
    from ..training.checkpoint import is_exported, load_checkpoint, read_meta
    from ..training.config import build_schedule
    from ..training.train import draw_samples
    from ..training.viz import save_samples

    for name in ("steps", "n", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {getattr(args, name)}.")
    world, dev = setup(device(args.device))
    model, cfg = load_checkpoint(model_path(args), device=dev)
    meta = read_meta(model_path(args))
    method, steps, n = args.method or cfg.sample.method, args.steps or cfg.sample.steps, args.n or cfg.sample.n
    shape = tuple(meta["event_shape"])
    if args.classifier_scale is not None and args.classifier is None:
        raise ValueError("--classifier-scale needs --classifier (a noisy classifier run).")
    classifier = None if args.classifier is None else load_noisy_classifier(
        args.classifier, device=dev, sde=model.sde, event_shape=shape)[0]
    scale = 1.0 if args.classifier_scale is None else args.classifier_scale
    options = {}
    if args.respace:
        chain = build_schedule(cfg)
        if method != "ancestral" or chain is None:
            raise ValueError(f"--respace runs the ancestral sampler on a DDPM chain: it needs --method ancestral "
                             f"and a model trained with sde.name ddpm; got method {method!r}, sde.name {cfg.sde.name!r}.")
        if steps > chain.T:
            raise ValueError(f"--respace: --steps must lie in 1..T = 1..{chain.T}, got {steps}.")
        options["schedule"] = chain.respace(steps)
    results = [draw_samples(model, cfg, shape, device=dev, seed=chunk_seed(args.seed or 0, i), n=b - a,
                            method=method, steps=steps, label=args.label, guidance=args.guidance,
                            classifier=classifier, classifier_scale=scale, **options)
               for i, a, b in world.chunks(n, args.batch_size or n)]
    x = world.gather(torch.cat([r.x for r in results]) if results else torch.zeros(0, *shape, device=dev))
    nfe = int(world.sum(torch.tensor(sum(r.nfe for r in results), device=dev)))
    if not world.main:
        return 0
    tag = "" if args.label is None else f"_label{args.label}" + (
        f"_w{args.guidance:g}" if model.num_classes is not None else "") + (
        f"_c{scale:g}" if classifier is not None else "")
    run = Path(args.diffusers or args.checkpoint.removeprefix("diffusers:"))  # an exported model's folder (e.g. the package's assets) is not written to
    run = Path("runs") / run.resolve().name if is_exported(run) else run
    tag = ("_respaced" if args.respace else "") + tag
    out = Path(args.out) if args.out else run / "samples" / f"{method}_{steps}{tag}"
    out.parent.mkdir(parents=True, exist_ok=True)
    x, levels = x.cpu(), meta["levels"]
    arrays = {"x": x.numpy(), "nfe": np.int64(nfe)}
    if levels:
        arrays["levels"] = continuous_to_levels(x, levels, DATA_RANGE).numpy().astype(np.int64)
    np.savez(out.with_suffix(".npz"), **arrays)
    png = save_samples(x, out.with_suffix(".png"), levels=levels, title=f"{method}, {steps} steps")
    print(f"{len(x)} samples by {method} ({steps} steps, {nfe} score evaluations): "
          f"{png} and {out.with_suffix('.npz')}")
    return 0
