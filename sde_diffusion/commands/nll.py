"""``sde-diffusion nll``: the likelihood of a data set under a model by the probability-flow ODE.

bits/dim for discrete data (uniform dequantization, ``likelihood.bits_per_dim``), nats/dim for
continuous data, each with its standard error over samples; NFE per batch and seconds. ``--out``
writes ``per_sample.csv`` (one row per point) and ``summary.json`` (every setting to reproduce it).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .common import add_common, add_diffusers, device, model_path

HELP = ("negative log-likelihood by the probability-flow ODE: bits/dim for discrete data "
        "(uniform dequantization), nats/dim for continuous data, with standard errors, NFE and seconds")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
SOLVER = {"method": "dopri5", "eps": 1e-5, "noise": "rademacher", "jacobian": "auto"}  # log_likelihood's


def add_arguments(p: argparse.ArgumentParser) -> None:
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", metavar="RUN_OR_MODEL",
                       help="run directory, checkpoint folder, exported model (e.g. sde_diffusion/assets/digits_vp), "
                            "an analytic mixture analytic:ring2d|grid2d|gmm64 or diffusers:PATH")
    add_diffusers(model)
    p.add_argument("--sde", default=None, help="the SDE of an analytic model: vp (default), subvp, ve, cosine")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="FILE", help=".npy/.npz file to score (all its points; the rules of "
                                                    "data.name=npy: integer arrays are levels, floats continuous)")
    src.add_argument("--split", choices=("train", "test"), help="the run's own data split (default test)")
    p.add_argument("--levels", type=int, help="levels per value of the --data file's integer (or whole-number) "
                                              "values (default: the .npz's 'levels', else 256)")
    p.add_argument("--divergence", default="exact", choices=("exact", "hutchinson"),
                   help="exact trace of the score's Jacobian, or the Hutchinson estimate")
    p.add_argument("--probes", type=int, default=1, help="Hutchinson probes per sample (default 1)")
    p.add_argument("--n", type=int, help="a seeded subset of n samples (default: all; analytic: 1000 draws)")
    p.add_argument("--batch-size", type=int, default=100,
                   help="samples per ODE solve (default 100); under torchrun each rank takes whole batches")
    p.add_argument("--rtol", type=float, default=1e-5, help="ODE relative tolerance (default 1e-5)")
    p.add_argument("--atol", type=float, default=1e-5, help="ODE absolute tolerance (default 1e-5)")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="dtype of the solve (default float32)")
    p.add_argument("--out", help="folder for per_sample.csv and summary.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common(p, "seed of the dequantization noise, probes and subset (default 0)")


def _model(args, dev):
    """(score model with .sde, Config or None, meta with event_shape/levels, analytic mixture or None)."""
    from ..training.checkpoint import load_checkpoint, read_meta, with_data

    if args.checkpoint.startswith("analytic:"):
        from ..analytic import preset
        from ..models import ScoreModel
        from ..sde import get_sde

        gm, sde = preset(args.checkpoint.split(":", 1)[1]), get_sde(args.sde or "vp")
        return ScoreModel(gm.score(sde), sde, "score"), None, {"event_shape": [gm.dim], "levels": None}, gm
    model, cfg = load_checkpoint(args.checkpoint, device=dev)
    with_data(cfg, args.data)  # a diffusers model has no data of its own: it needs --data
    trained = "vp" if cfg.sde.name == "ddpm" else cfg.sde.name
    if args.sde is not None and args.sde != trained:
        raise ValueError(f"--sde {args.sde}: {args.checkpoint!r} was trained with the {cfg.sde.name} SDE; "
                         f"drop --sde or pass --sde {trained}.")
    return model.requires_grad_(False), cfg, read_meta(args.checkpoint), None


def _data(args, cfg, meta, gm, seed: int):
    """The Dataset to score: --data FILE (shape checked against the model), the run's split, or
    for an analytic model n seeded draws of the mixture."""
    from ..training.data import Dataset, check_model_data, load_dataset, load_file

    if args.levels is not None and args.data is None:
        raise ValueError("--levels applies to a --data file; a run's split has its own levels.")
    if args.data is not None:
        ds = load_file(args.data, levels=args.levels, n=args.n, seed=seed)
        kind, params = (cfg.model.kind, cfg.model.params) if cfg is not None else ("analytic", {})
        check_model_data(ds, kind, params, tuple(meta["event_shape"]), what=f"model {args.checkpoint!r}")
        return ds
    if gm is not None:
        if args.split is not None:
            raise ValueError("--split needs a run; score an analytic model on --data FILE or on its own draws.")
        x = gm.sample(args.n or 1000, torch.Generator().manual_seed(seed))
        return Dataset(x, name=args.checkpoint, source=f"{args.n or 1000} draws of {args.checkpoint} (seed {seed})")
    return load_dataset(cfg.data.name, split=args.split or "test", path=cfg.data.path, n=args.n, seed=seed)


def run(args: argparse.Namespace) -> int:
    from .. import __version__, checks
    from ..evaluation.nll_table import mean_se, nll_per_sample
    from ..training.distributed import chunk_seed, setup

    args.checkpoint = model_path(args)  # --diffusers PATH is --checkpoint diffusers:PATH
    for name in ("batch_size", "probes") + (("n",) if args.n is not None else ()):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {getattr(args, name)}.")
    checks.positive("--rtol", args.rtol)
    checks.positive("--atol", args.atol)
    if args.probes != 1 and args.divergence != "hutchinson":
        raise ValueError(f"--probes applies to --divergence hutchinson; got --probes {args.probes} with exact.")
    (world, dev), seed, dtype = setup(device(args.device)), args.seed or 0, DTYPES[args.dtype]
    model, cfg, meta, gm = _model(args, dev)
    model = model.to(dtype)
    ds = _data(args, cfg, meta, gm, seed)
    chunks = world.chunks(len(ds), args.batch_size)
    parts, t_start = [], time.perf_counter()
    bar = tqdm(chunks, desc="nll", unit="batch",  # on a terminal only, so errors stay one line
               disable=True if args.no_progress or not world.main else None)
    for i, a, b in bar:
        parts.append(nll_per_sample(model, ds.x[a:b].to(dev, dtype), ds.levels, batch_size=b - a,
                                    generator=torch.Generator(dev).manual_seed(chunk_seed(seed, i)),
                                    divergence=args.divergence, probes=args.probes, rtol=args.rtol, atol=args.atol,
                                    **SOLVER))
    cat = (lambda f: torch.cat([f(p) for p in parts]).to(dev, torch.float64)) if parts else \
        (lambda f: torch.zeros(0, device=dev, dtype=torch.float64))
    values = world.gather(cat(lambda p: p.values))   # batches in order
    probe_se = world.gather(cat(lambda p: p.probe_se))
    nfe = world.gather(cat(lambda p: torch.tensor(p.nfe, dtype=torch.float64))).long().tolist()
    secs = world.gather(cat(lambda p: torch.tensor(p.seconds, dtype=torch.float64))).tolist()
    if not world.main:
        return 0
    unit = "bits/dim" if ds.levels else "nats/dim"
    mean, se = mean_se(values)
    # each value carries its own independent probe noise, so the s.e. over samples includes it; the
    # probe part alone is sqrt(mean_n se_n^2 / N), known with >= 2 probes
    se_probe = math.sqrt(float(probe_se.square().mean()) / len(values)) if args.divergence == "hutchinson" \
        and args.probes > 1 else (0.0 if args.divergence == "exact" else math.nan)
    summary = {
        "model": args.checkpoint, "model_path": None if gm is not None else str(Path(args.checkpoint.removeprefix("diffusers:")).resolve()),
        "sde": str(model.sde), "data": str(Path(args.data).resolve()) if args.data else None,
        "split": None if args.data or gm is not None else (args.split or "test"), "dataset": ds.name,
        "source": ds.source, "n": len(values), "shape": list(ds.shape), "levels": ds.levels, "unit": unit,
        "mean": mean, "stderr": se, "stderr_probes": se_probe,
        "settings": {"divergence": args.divergence, "probes": args.probes, **SOLVER, "rtol": args.rtol, "atol": args.atol,
                     "dequantization": "uniform, one draw per point" if ds.levels else None,
                     "batch_size": args.batch_size, "seed": seed, "batch_seeds": "seed + 1000003 * batch",
                     "dtype": args.dtype, "device": str(dev), "processes": world.size},
        "nfe_per_batch": nfe, "seconds_per_batch": secs, "seconds": time.perf_counter() - t_start,
        "versions": {"sde_diffusion": __version__, "torch": torch.__version__},
        "command": _command(args, seed),
    }
    if gm is not None:  # the analytic value at the same points
        summary["true_mean"], summary["true_stderr"] = mean_se(-gm.log_prob(ds.x.double()) / ds.dim)
    _print_table(summary, ds)
    if args.out:
        _write(Path(args.out), summary, values, probe_se, args.batch_size, unit)
    return 0


def _command(args: argparse.Namespace, seed: int) -> str:
    """The command line that reproduces this evaluation, every setting spelled out."""
    parts = ["sde-diffusion nll", f"--checkpoint {args.checkpoint}"]
    for name in ("sde", "data", "split", "levels", "n"):
        if getattr(args, name) is not None:
            parts.append(f"--{name} {getattr(args, name)}")
    parts += [f"--divergence {args.divergence}", f"--probes {args.probes}", f"--batch-size {args.batch_size}",
              f"--rtol {args.rtol:g}", f"--atol {args.atol:g}", f"--dtype {args.dtype}", f"--seed {seed}"]
    return " ".join(parts)


def _print_table(s: dict, ds) -> None:
    nfe = s["nfe_per_batch"]
    rows = [(s["unit"], f"{s['mean']:.4f}", f"{s['stderr']:.4f}")]
    if s["settings"]["divergence"] == "hutchinson":
        rows.append(("  of which probe noise", "", f"{s['stderr_probes']:.4f}"))
    if "true_mean" in s:
        rows.append(("analytic -log p_0 / D", f"{s['true_mean']:.4f}", f"{s['true_stderr']:.4f}"))
    rows += [("NFE per batch", f"{sum(nfe) / len(nfe):.0f} (min {min(nfe)}, max {max(nfe)})", ""),
             ("seconds", f"{s['seconds']:.1f} ({s['seconds'] / len(nfe):.2f} per batch)", "")]
    st = s["settings"]
    kind = f"{s['levels']} levels" if s["levels"] else "continuous"
    div = st["divergence"] + (f" ({st['probes']} probes)" if st["divergence"] == "hutchinson" else "")
    print(f"nll of {s['model']} on {ds.source or ds.name} ({s['n']} samples of shape {tuple(s['shape'])}, "
          f"{kind}): {div} divergence, dopri5 rtol={st['rtol']:g} atol={st['atol']:g}, "
          f"{len(nfe)} batches of <= {st['batch_size']}")
    width = max(len(r[0]) for r in rows)
    print(f"| {'':{width}} | value | s.e. |\n|{'-' * (width + 2)}|---|---|")
    for name, value, err in rows:
        print(f"| {name:{width}} | {value} | {err} |")


def _write(out: Path, summary: dict, values, probe_se, batch_size: int, unit: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "per_sample.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "batch", unit.replace("/", "_per_"), "probe_stderr"])
        for i, (v, e) in enumerate(zip(values.tolist(), probe_se.tolist())):
            w.writerow([i, i // batch_size, f"{v:.8g}", f"{e:.6g}"])
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out / 'per_sample.csv'} and {out / 'summary.json'}")
