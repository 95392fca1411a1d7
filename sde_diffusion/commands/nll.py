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

from ..likelihood import ADAPTIVE_METHODS
from .common import add_common, add_model, device, positive

HELP = ("negative log-likelihood by the probability-flow ODE: bits/dim for discrete data "
        "(uniform dequantization), nats/dim for continuous data, with standard errors, NFE and seconds")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
SOLVER = {"eps": 1e-5, "noise": "rademacher", "jacobian": "auto"}  # log_likelihood's
PILOT = 10.0  # the solver-error pilot solves the first batch again at rtol/PILOT, atol/PILOT


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p, "the model to score", required=True)
    p.add_argument("--sde", default=None, help="the SDE of an analytic model: vp (default), subvp, ve, cosine; "
                                               "for any other model a check that it was trained with it")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="FILE", help=".npy/.npz file to score (all its points; the rules of "
                                                    "data.name=npy: integer arrays are levels, floats continuous)")
    src.add_argument("--split", choices=("train", "test"), help="the run's own data split (default test)")
    p.add_argument("--levels", type=int, help="levels per value of the --data file's integer (or whole-number) "
                                              "values (default: the .npz's 'levels'; uint8 data without either: 256, "
                                              "other integer data without either is refused)")
    p.add_argument("--method", default="dopri5", metavar="NAME[:rtol=R:atol=A]",
                   help=f"the adaptive torchdiffeq solver of the probability-flow ODE, with its tolerances as "
                        f"options (one of {', '.join(ADAPTIVE_METHODS)}; default dopri5)")
    p.add_argument("--divergence", default=None, choices=("exact", "hutchinson"),
                   help="exact trace of the score's Jacobian (default), or the Hutchinson estimate")
    p.add_argument("--probes", type=int, default=None, help="Hutchinson probes per sample (default 1)")
    p.add_argument("--target-se", type=float, default=None, metavar="S",
                   help="score the data's mean to a total standard error S at the least cost: a pilot batch picks "
                        "the divergence, probes and tolerance (probe noise and solver error each <= S/3), batches "
                        "are scored until S is met; --rtol/--atol set the pilot's tolerance")
    p.add_argument("--no-solver-pilot", dest="solver_pilot", action="store_false",
                   help="skip the solver-error estimate (the first batch solved again at 10x tighter rtol/atol)")
    p.add_argument("--error-control", default=None, choices=("sample", "batch"),
                   help="the ODE's rtol/atol hold for every sample (default) or for the RMS of the whole batch "
                        "(the score-SDE reference code's control: fewer steps, for the data set's mean; the "
                        "default with --target-se)")
    p.add_argument("--num-points", type=int, help="a seeded subset of this many data points (default: all; "
                                                  "analytic: 1000 draws)")
    p.add_argument("--batch-size", type=int, default=100,
                   help="samples per ODE solve (default 100); under torchrun each rank takes whole batches")
    p.add_argument("--rtol", type=float, default=None, help="ODE relative tolerance (default 1e-5)")
    p.add_argument("--atol", type=float, default=None, help="ODE absolute tolerance (default 1e-5)")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="dtype of the solve (default float32)")
    add_common(p, seed="seed of the dequantization noise, probes and subset (default 0)",
               out="per_sample.csv and summary.json; default: printed only")


def parse_solver(args: argparse.Namespace) -> tuple[str, float, float]:
    """(solver, rtol, atol) of --method NAME[:rtol=R:atol=A] and --rtol/--atol (each set once)."""
    from solvers.base import parse_spec

    from .. import checks

    name, tol = parse_spec(args.method, "--method")
    checks.one_of("--method (ODE solver)", name, ADAPTIVE_METHODS)
    for key in tol:
        checks.one_of(f"option of --method {name}", key, ("rtol", "atol"))
    for key in ("rtol", "atol"):
        flag = getattr(args, key)
        if flag is not None and key in tol:
            raise ValueError(f"{key} is set both in --method and by --{key}; set it once.")
        tol[key] = checks.positive(f"--{key}", tol.get(key, flag if flag is not None else 1e-5))
    return name, tol["rtol"], tol["atol"]


def _data(args, model, seed: int):
    """The Dataset to score: --data FILE (shape checked against the model), the run's split, or
    for an analytic model n seeded draws of the mixture."""
    from ..training.data import Dataset
    from ..training.loading import model_dataset

    gm = model.info.mixture
    if args.levels is not None and args.data is None:
        raise ValueError("--levels applies to a --data file; a run's split has its own levels.")
    if gm is not None and args.data is None:
        if args.split is not None:
            raise ValueError("--split needs a run; score an analytic model on --data FILE or on its own draws.")
        n = args.num_points or 1000
        x = gm.sample(n, torch.Generator().manual_seed(seed))
        return Dataset(x, name=args.model, source=f"{n} draws of {args.model} (seed {seed})")
    return model_dataset(model, args.split or "test", data=args.data, levels=args.levels, n=args.num_points,
                         seed=seed)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.provenance import versions
    from ..evaluation.nll_table import mean_se, nll_per_sample
    from ..training.distributed import chunk_seed, setup

    from ..training.loading import load

    positive(args, "batch_size", "probes", "num_points")
    solver, rtol, atol = parse_solver(args)
    if args.target_se is not None:
        if args.divergence is not None or args.probes is not None:
            raise ValueError("--target-se chooses the divergence and probes itself; drop --divergence/--probes.")
        if not args.target_se > 0:
            raise ValueError(f"--target-se must be > 0, got {args.target_se:g}.")
    args.divergence, args.probes = args.divergence or "exact", args.probes or 1
    args.error_control = args.error_control or ("batch" if args.target_se is not None else "sample")
    if args.probes != 1 and args.divergence != "hutchinson":
        raise ValueError(f"--probes applies to --divergence hutchinson; got --probes {args.probes} with exact.")
    (world, dev), seed, dtype = setup(device(args.device)), args.seed or 0, DTYPES[args.dtype]
    model = load(args.model, sde=args.sde, device=dev, kind="score model").to(dtype)
    gm = model.info.mixture
    ds = _data(args, model, seed)
    if args.target_se is not None:
        if world.size > 1:
            raise ValueError("--target-se scores batches in sequence in one process; run it without torchrun.")
        return _run_target(args, model, ds, dev, dtype, seed, solver, rtol)
    chunks = world.chunks(len(ds), args.batch_size)
    parts, t_start = [], time.perf_counter()
    bar = tqdm(chunks, desc="nll", unit="batch",  # on a terminal only, so errors stay one line
               disable=True if args.no_progress or not world.main else None)
    def score_batch(i, a, b, tighten=1.0):
        return nll_per_sample(model, ds.x[a:b].to(dev, dtype), ds.levels, batch_size=b - a,
                              generator=torch.Generator(dev).manual_seed(chunk_seed(seed, i)),
                              divergence=args.divergence, probes=args.probes, method=solver, rtol=rtol / tighten,
                              atol=atol / tighten, error_control=args.error_control, **SOLVER)

    for i, a, b in bar:
        parts.append(score_batch(i, a, b))
    pilot = None
    if args.solver_pilot and world.main and parts:  # the first batch again at 10x tighter tolerances
        i, a, b = chunks[0]
        tight = score_batch(i, a, b, tighten=PILOT)
        pilot = {"batch": i, "points": b - a, "rtol": rtol / PILOT, "atol": atol / PILOT, "nfe": tight.nfe[0],
                 "error": abs(float(parts[0].values.double().mean() - tight.values.double().mean()))}
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
        "model": args.model, "model_path": model.info.meta.get("path"),
        "sde": str(model.sde), "data": str(Path(args.data).resolve()) if args.data else None,
        "split": None if args.data or gm is not None else (args.split or "test"), "dataset": ds.name,
        "source": ds.source, "n": len(values), "shape": list(ds.shape), "levels": ds.levels,
        "levels_source": ds.levels_source, "unit": unit,
        "mean": mean, "stderr": se, "stderr_probes": se_probe,
        "error_budget": _budget(se, se_probe, pilot),
        "settings": {"divergence": args.divergence, "probes": args.probes, "method": solver, **SOLVER,
                     "rtol": rtol, "atol": atol, "error_control": args.error_control,
                     "dequantization": ("uniform over each level's bin [lo + k w, lo + (k + 1) w], w = (hi - lo) / "
                                        "levels, one draw per point") if ds.levels else None,
                     "batch_size": args.batch_size, "seed": seed, "batch_seeds": "seed + 1000003 * batch",
                     "dtype": args.dtype, "device": str(dev), "processes": world.size},
        "nfe_per_batch": nfe, "seconds_per_batch": secs, "seconds": time.perf_counter() - t_start,
        "versions": versions(dev),
        "command": _command(args, seed),
    }
    if gm is not None:  # the analytic value at the same points
        summary["true_mean"], summary["true_stderr"] = mean_of_truth(gm, ds.x)
    _print_table(summary, ds)
    if args.out:
        _write(Path(args.out), summary, values, probe_se, args.batch_size, unit)
    return 0


def _run_target(args, model, ds, dev, dtype, seed: int, solver: str, rtol: float) -> int:
    """--target-se: ``precision.at_target_se`` on the data in order; prints and writes its choice and cost."""
    from ..evaluation.precision import at_target_se
    from ..evaluation.provenance import versions

    r = at_target_se(model, ds.x.to(dev, dtype), ds.levels, args.target_se, seed=seed, batch_size=args.batch_size,
                     rtol=rtol, method=solver, error_control=args.error_control, **SOLVER)
    unit = "bits/dim" if ds.levels else "nats/dim"
    c = r.choice
    div = c["divergence"] + (f", {c['probes']} probes" if c["probes"] else "")
    summary = {"model": args.model, "dataset": ds.name, "source": ds.source, "n": len(r.values), "available": len(ds),
               "levels": ds.levels, "unit": unit, "mean": r.mean, "stderr": r.se, "target_se": args.target_se,
               "error_budget": {"data_se": r.data_se, "probe_se": r.probe_se, "solver_error": r.solver_error},
               "choice": c, "pilot": r.pilot, "stopped": r.stopped,
               "cost": {"nfe": sum(r.nfe) + sum(r.pilot["nfe"]), "nfe_per_batch": r.nfe,
                        "pilot_nfe": r.pilot["nfe"], "seconds": r.seconds},
               "settings": {"method": solver, "error_control": args.error_control, "batch_size": args.batch_size,
                            "seed": seed, "dtype": args.dtype, **SOLVER},
               "versions": versions(dev)}
    gm = model.info.mixture
    if gm is not None:
        summary["true_mean"], summary["true_stderr"] = mean_of_truth(gm, ds.x[:len(r.values)])
    print(f"nll of {args.model} on {ds.source or ds.name} to a target s.e. of {args.target_se:g} {unit}: "
          f"{r.mean:.4f} +- {r.se:.4f} from {len(r.values)} of {len(ds)} points ({r.stopped}).\n"
          f"choice: {div}, {solver} rtol = atol = {c['rtol']:.2g} (pilot: {r.pilot['points']} points, "
          f"{r.pilot['probes']} probes at rtol {r.pilot['rtol']:g} and x10); cost {summary['cost']['nfe']} NFE "
          f"(pilot {sum(r.pilot['nfe'])}), {r.seconds:.1f} s\n"
          f"budget: data {r.data_se:.2g}, probes {r.probe_se:.2g}, solver {r.solver_error:.2g} (each part <= "
          f"{args.target_se / 3:.2g} beyond the data's)")
    if "true_mean" in summary:
        print(f"analytic -log p_0 / D at the same points: {summary['true_mean']:.4f}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {out / 'summary.json'}")
    return 0


def mean_of_truth(gm, x: torch.Tensor) -> tuple[float, float]:
    """(mean, s.e.) of the analytic -log p_0(x) / D."""
    from ..evaluation.nll_table import mean_se
    return mean_se(-gm.log_prob(x.double()) / x[0].numel())


def _budget(se: float, se_probe: float, pilot: dict | None) -> dict:
    """The three parts of the mean's error: the data's own spread (the s.e. over samples less its probe
    part), the probe noise (``stderr_probes``; NaN with one probe, where it is inseparable from the data's)
    and the solver's error, estimated as the change of the first batch's mean at 10x tighter rtol/atol
    (the same dequantization and probes; the error at the tighter tolerances is taken as negligible)."""
    data = math.sqrt(max(se**2 - se_probe**2, 0.0)) if math.isfinite(se_probe) else math.nan
    return {"data_se": data, "probe_se": se_probe, "solver_error": pilot["error"] if pilot else None,
            "solver_pilot": pilot}


def _command(args: argparse.Namespace, seed: int) -> str:
    """The command line that reproduces this evaluation, every setting spelled out."""
    solver, rtol, atol = parse_solver(args)
    parts = ["sde-diffusion nll", f"--model {args.model}"]
    for name in ("sde", "data", "split", "levels", "num_points"):
        if getattr(args, name) is not None:
            parts.append(f"--{name.replace('_', '-')} {getattr(args, name)}")
    parts += [f"--method {solver}:rtol={rtol:g}:atol={atol:g}", f"--divergence {args.divergence}",
              f"--probes {args.probes}", f"--error-control {args.error_control}", f"--batch-size {args.batch_size}", f"--dtype {args.dtype}", f"--seed {seed}"]
    return " ".join(parts)


def _print_table(s: dict, ds) -> None:
    nfe = s["nfe_per_batch"]
    rows = [(s["unit"], f"{s['mean']:.4f}", f"{s['stderr']:.4f}")]
    if s["settings"]["divergence"] == "hutchinson":
        rows.append(("  of which probe noise", "", f"{s['stderr_probes']:.4f}"))
    budget = s["error_budget"]
    if budget["solver_error"] is not None:
        p = budget["solver_pilot"]
        rows.append((f"  solver error (batch {p['batch']} at rtol/{PILOT:g})", f"{budget['solver_error']:.2g}", ""))
    if "true_mean" in s:
        rows.append(("analytic -log p_0 / D", f"{s['true_mean']:.4f}", f"{s['true_stderr']:.4f}"))
    rows += [("NFE per batch", f"{sum(nfe) / len(nfe):.0f} (min {min(nfe)}, max {max(nfe)})", ""),
             ("seconds", f"{s['seconds']:.1f} ({s['seconds'] / len(nfe):.2f} per batch)", "")]
    st = s["settings"]
    kind = f"{s['levels']} levels" if s["levels"] else "continuous"
    div = st["divergence"] + (f" ({st['probes']} probes)" if st["divergence"] == "hutchinson" else "")
    print(f"nll of {s['model']} on {ds.source or ds.name} ({s['n']} samples of shape {tuple(s['shape'])}, "
          f"{kind}): {div} divergence, {st['method']} rtol={st['rtol']:g} atol={st['atol']:g}, "
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
