"""``sde-diffusion nll``: test-set likelihood of a checkpoint by the probability-flow ODE."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from .common import add_common, add_diffusers, device, model_path

HELP = ("negative log-likelihood by the probability-flow ODE: bits/dim for discrete data "
        "(uniform dequantization), nats/dim for continuous data, with its standard error")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint",
                     help="run directory, checkpoint folder or exported model (e.g. sde_diffusion/assets/digits_vp)")
    add_diffusers(src)
    p.add_argument("--data", help="score this .npy/.npz file, all of it, instead of the model's split (integer "
                                  "arrays are levels: bits/dim; required for a diffusers model)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="data split (default test)")
    p.add_argument("--divergence", default="exact", choices=("exact", "hutchinson"),
                   help="exact trace of the score's Jacobian, or the Hutchinson estimate")
    p.add_argument("--n", type=int, help="evaluate a seeded subset of n samples (default: the whole split)")
    p.add_argument("--batch-size", type=int, default=100,
                   help="samples per ODE solve (default 100); under torchrun each rank takes whole batches")
    p.add_argument("--rtol", type=float, default=1e-5, help="ODE relative tolerance (default 1e-5)")
    p.add_argument("--atol", type=float, default=1e-5, help="ODE absolute tolerance (default 1e-5)")
    add_common(p, "seed of the dequantization noise, probes and subset (default 0)")


def load_file(path: str, n: int | None, seed: int):
    """The whole .npy/.npz ``path`` as a Dataset (layout and levels as for data.name=npy); with n, a
    seeded subset of n samples."""
    from ..training import data, readers

    x, y, levels = readers.read_array(Path(path))
    ds = data.from_arrays(readers.image_layout(x, Path(path)), y, levels, Path(path).name, Path(path))
    return ds if n is None else data._take(ds, n, seed)


def run(args: argparse.Namespace) -> int:
    from ..training.data import load_dataset
    from ..evaluation.nll_table import nll_per_sample
    from ..training.distributed import chunk_seed, setup
    from ..training.shipped import load_model, with_data

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be an integer >= 1, got {args.batch_size}.")
    (world, dev), seed = setup(device(args.device)), args.seed or 0
    model, cfg, _ = load_model(model_path(args), device=dev)
    ds = (load_dataset(cfg.data.name, split=args.split, path=with_data(cfg, None).data.path, n=args.n, seed=seed)
          if args.data is None else load_file(args.data, args.n, seed))
    parts = [nll_per_sample(model, ds.x[a:b].to(dev), ds.levels, batch_size=args.batch_size,
                            generator=torch.Generator(dev).manual_seed(chunk_seed(seed, i)),
                            divergence=args.divergence, rtol=args.rtol, atol=args.atol)
             for i, a, b in world.chunks(len(ds), args.batch_size)]
    nll = world.gather(torch.cat(parts) if parts else torch.zeros(0, device=dev))  # batches in order
    if not world.main:
        return 0
    unit = "bits/dim" if ds.levels else "nats/dim"
    se = nll.std() / math.sqrt(len(nll)) if len(nll) > 1 else float("nan")
    print(f"{unit}: {float(nll.mean()):.4f} +- {float(se):.4f} (standard error; {len(nll)} "
          f"{args.split if args.data is None else 'all'} samples of {ds.name}, {args.divergence} divergence)")
    return 0
