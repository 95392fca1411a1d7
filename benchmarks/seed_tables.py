"""Benchmark (not a test): the DDPM and score-SDE papers' tables reproduced in miniature on digits (issue 20).

Every row of Ho et al. 2020, Table 2 (posterior-mean vs noise prediction; the true bound L vs L_simple;
fixed isotropic vs learned diagonal Sigma), improved DDPM's hybrid objective (Nichol & Dhariwal 2021)
and Song et al. 2021, Table 2 (probability-flow NLL of VP and sub-VP models beside the DDPM bounds) is
trained by the toolkit's trainer from its config in ``configs/tables/`` (``--steps`` overrides
``train.steps`` for all rows), then measured:

- **FD**: the Frechet distance in the shipped digits classifier's features of ancestral samples
  (the full 1000-step chain for the chain-trained rows, DDPM Algorithm 2; 1000 ancestral steps on the
  SDE for the continuous rows) to the test split, mean +- standard error over ``--repeats`` sample
  sets of ``--n`` (each with its own seed), and the floor: fresh training images against the test split;
- **bound**: the DDPM variational bound in bits/dim on the test split (``vlb.ddpm_vlb_bits_per_dim``,
  all 1000 terms, the model's own variance), mean +- s.e. over the test images;
- **PF-ODE**: bits/dim by the probability-flow ODE (Hutchinson, one dequantization draw) for Song's rows;
- **respaced**: FD and the bound of the chain respaced to K steps (iDDPM sec. 4) for the fixed- and
  learned-variance models.

    python benchmarks/seed_tables.py --out benchmarks/results/seed_tables             # the configs' 5000 steps
    python benchmarks/seed_tables.py --steps 2000 --rows ho_eps_simple iddpm_hybrid   # a subset, shorter
    python benchmarks/seed_tables.py --quick                                          # a smoke run

Each row's results go to ``<out>/runs/<row>/row.json`` and are reused on a later call (``--fresh`` retrains,
``--resample`` redraws only the samples of the rows given, from their checkpoints), so rows can be run by
separate processes; every call then writes ``seed_tables.md`` and ``seed_tables.json`` from all rows
measured so far. CPU minutes are the trainer's process time.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import time
from pathlib import Path

import torch

import solvers
from sde_diffusion.dequantize import DATA_RANGE
from sde_diffusion.evaluation.compare import model_target
from sde_diffusion.evaluation.nll_table import mean_se, nll_per_sample
from sde_diffusion.training.config import build_schedule, load_config
from sde_diffusion.training.loading import load, model_dataset
from sde_diffusion.training.runs import TrainingError
from sde_diffusion.training.train import train
from sde_diffusion.vlb import ddpm_vlb_bits_per_dim

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "tables"

# (row, the paper's group, the paper's objective label, published CIFAR-10 figures: IS, FID, NLL bound)
HO = [
    ("ho_mu_vlb_learned", "mu_tilde prediction", "L, learned diagonal Sigma", "7.28 ± 0.10", "23.69", ""),
    ("ho_mu_vlb_fixed", "mu_tilde prediction", "L, fixed isotropic Sigma", "8.06 ± 0.09", "13.22", ""),
    ("ho_mu_mse", "mu_tilde prediction", "||mu_tilde - mu_theta||^2", "–", "–", ""),
    ("ho_eps_vlb_learned", "eps prediction", "L, learned diagonal Sigma", "–", "–", ""),
    ("ho_eps_vlb_fixed", "eps prediction", "L, fixed isotropic Sigma", "7.67 ± 0.13", "13.51", "≤ 3.70"),
    ("ho_eps_simple", "eps prediction", "L_simple", "9.46 ± 0.11", "3.17", "≤ 3.75"),
    ("iddpm_hybrid", "eps prediction, learned Sigma (iDDPM)", "L_hybrid = L_simple + 0.001 L_vlb", "", "", ""),
]
# (row, Song et al.'s model name, which NLL, published NLL (bits/dim), published FID)
SONG = [
    ("ho_eps_vlb_fixed", "DDPM (L)", "bound", "≤ 3.70", "13.51"),
    ("ho_eps_simple", "DDPM (L_simple)", "bound", "≤ 3.75", "3.17"),
    ("ho_eps_simple", "DDPM", "ode", "3.28", "3.37"),
    ("song_vp", "DDPM cont. (VP)", "ode", "3.21", "3.69"),
    ("song_subvp", "DDPM cont. (sub-VP)", "ode", "3.05", "3.56"),
]
ODE_ROWS = {row for row, _, kind, _, _ in SONG if kind == "ode"}
RESPACED = {"ho_eps_simple": ("beta", "beta_tilde"), "ho_eps_vlb_fixed": ("beta",),
            "ho_eps_vlb_learned": ("learned",), "iddpm_hybrid": ("learned",)}
ROWS = list(dict.fromkeys([r[0] for r in HO] + [r[0] for r in SONG]))


def train_row(row: str, steps: int | None, out: Path, device: torch.device) -> dict:
    # the trainer's closing sample PNG shrunk to one 1-step draw, so that CPU minutes are the training's
    overrides = ["train.sample_every=0", "train.ckpt_every=100000", "sample.steps=1", "sample.n=1"] + \
        ([f"train.steps={steps}"] if steps else [])
    cfg = load_config(CONFIGS / f"{row}.yaml", overrides)
    start = time.process_time()
    try:
        result = train(cfg, out, device=device, progress=False)
        status = "ok"
    except TrainingError as e:  # a non-finite loss: the paper's "–" (training unstable)
        status = f"diverged: {e}"
    return {"cpu_min": (time.process_time() - start) / 60, "steps": cfg.train.steps, "status": status,
            "checkpoint": str(result.checkpoint) if status == "ok" else None}


def fd_repeats(model, cfg, device, n: int, repeats: int, steps: int | None = None, variance: str = "auto") -> dict:
    """Ancestral samples: on the config's chain (respaced to ``steps`` when given) or, for an SDE-trained
    model, 1000 steps on the SDE. FD per repeat, its mean and s.e., and the floor."""
    target = model_target(model, device, n)
    chain = build_schedule(cfg)
    fds, floors, nfe = [], [], 0
    for r in range(repeats):
        scorer = target.scorer(r)
        opts = {"variance": variance}
        if chain is not None:
            sched = chain if steps is None or steps == chain.T else chain.respace(steps)
            opts["schedule"], k = sched, sched.T
        else:
            k = steps or 1000
        res = solvers.sample(model, model.sde, (n, *target.shape), method="ancestral", steps=k,
                             generator=torch.Generator(device).manual_seed(100 + r), device=device, **opts)
        fds.append(scorer.quality(res.x)[0])
        floors.append(scorer.floor)
        nfe = res.nfe
    mean, se = mean_se(torch.tensor(fds, dtype=torch.float64))
    return {"fd": mean, "fd_se": se, "fd_runs": fds, "floor": sum(floors) / len(floors), "nfe": nfe}


def bound(model, cfg, test_k: torch.Tensor, levels: int, device, steps: int | None = None,
          variance: str = "auto") -> dict:
    chain = build_schedule(cfg)
    sched = chain if steps is None or steps == chain.T else chain.respace(steps)
    bpd = ddpm_vlb_bits_per_dim(model, sched, test_k.to(device), levels=levels, data_range=DATA_RANGE,
                                variance=variance, generator=torch.Generator(device).manual_seed(7), max_batch=8192)
    mean, se = mean_se(bpd.double().cpu())
    return {"bound": mean, "bound_se": se}


def ode_bpd(model, test, device) -> dict:
    gen = torch.Generator(device).manual_seed(11)
    res = nll_per_sample(model, test.x.to(device), test.levels, generator=gen, batch_size=200,
                         divergence="hutchinson", rtol=1e-5, atol=1e-5)
    mean, se = mean_se(res.values.double().cpu())
    return {"ode": mean, "ode_se": se}


def measure(row: str, info: dict, args, device, only_fd: bool = False) -> dict:
    """Every figure of the row; with ``only_fd`` the sample figures alone, the rest kept from ``info``."""
    model = load(info["checkpoint"], device=device)
    cfg = model.info.config
    test = model_dataset(model, "test")
    k = test.discrete()
    t0 = time.process_time()
    out = {**info, **fd_repeats(model, cfg, device, args.n, args.repeats)}
    if build_schedule(cfg) is not None and not only_fd:
        out.update(bound(model, cfg, k, test.levels, device))
    if row in ODE_ROWS and not only_fd:
        out.update(ode_bpd(model, test, device))
    for variance in RESPACED.get(row, ()):
        for K in args.respace:
            key = f"respaced_{variance}_{K}"
            figures = {} if only_fd else bound(model, cfg, k, test.levels, device, K, variance)
            out[key] = {**info.get(key, {}), **fd_repeats(model, cfg, device, args.n, args.repeats, K, variance),
                        **figures}
    out["eval_cpu_min"] = (time.process_time() - t0) / 60
    return out


def pm(mean, se, digits=2) -> str:
    return "–" if mean is None or not math.isfinite(mean) else f"{mean:.{digits}f} ± {se:.{digits}f}"


def tables(results: dict) -> str:
    lines = ["### Ho et al. 2020, Table 2 on digits (8x8, 17 levels)", "",
             "| prediction | objective | paper IS | paper FID | paper NLL | ours FD | ours bound (bits/dim) | CPU min |",
             "|---|---|---|---|---|---|---|---|"]
    for row, group, label, is_, fid, nll in HO:
        r = results.get(row)
        if r is None:
            continue
        ok = r["status"] == "ok"
        fd = pm(r.get("fd"), r.get("fd_se")) if ok else "diverged"
        b = pm(r.get("bound"), r.get("bound_se"), 3) if ok else "–"
        lines.append(f"| {group} | {label} | {is_ or ' '} | {fid or ' '} | {nll or ' '} | {fd} | {b} | {r['cpu_min']:.1f} |")
    floors = [r["floor"] for r in results.values() if r.get("floor") is not None]
    if floors:
        lines += ["", f"FD floor (fresh training images against the test split): {sum(floors) / len(floors):.2f}."]
    lines += ["", "### Song et al. 2021, Table 2 on digits", "",
              "| model | paper NLL (bits/dim) | paper FID | ours NLL (bits/dim) | ours FD |", "|---|---|---|---|---|"]
    for row, name, kind, nll, fid in SONG:
        r = results.get(row)
        if r is None or r["status"] != "ok":
            continue
        ours = f"≤ {pm(r.get('bound'), r.get('bound_se'), 3)}" if kind == "bound" else pm(r.get("ode"), r.get("ode_se"), 3)
        lines.append(f"| {name} | {nll} | {fid} | {ours} | {pm(r.get('fd'), r.get('fd_se'))} |")
    lines += ["", "### Respaced sampling (Nichol & Dhariwal 2021, sec. 4): K of the 1000 steps", "",
              "| model | variance | K | FD | bound on the K-step chain (bits/dim) |", "|---|---|---|---|---|"]
    for row, variances in RESPACED.items():
        r = results.get(row)
        if r is None or r["status"] != "ok":
            continue
        for variance in variances:
            keys = sorted(int(m[1]) for k in r if (m := re.fullmatch(f"respaced_{variance}_([0-9]+)", k)))
            for K in keys:
                x = r[f"respaced_{variance}_{K}"]
                lines.append(f"| {row} | {variance} | {K} | {pm(x['fd'], x['fd_se'])} | {pm(x['bound'], x['bound_se'], 3)} |")
            if variance in ("beta", "learned"):  # the full chain, measured with the model's own variance
                full = f"{pm(r['fd'], r['fd_se'])} | {pm(r.get('bound'), r.get('bound_se'), 3)}"
                lines.append(f"| {row} | {variance} | 1000 | {full} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/seed_tables")
    p.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    p.add_argument("--steps", type=int, help="train.steps for every row (default: each config's)")
    p.add_argument("--n", type=int, default=500, help="samples per FD repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--respace", type=int, nargs="+", default=[25, 50, 100])
    p.add_argument("--device", default="cpu")
    p.add_argument("--fresh", action="store_true", help="retrain and remeasure rows already measured")
    p.add_argument("--resample", action="store_true",
                   help="redraw the samples (FD) of rows already measured, from their checkpoints; keep the rest")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rows, 200 steps, small sample sets")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.steps, args.n, args.repeats, args.respace = ["ho_eps_simple", "iddpm_hybrid"], 200, 64, 2, [10]
    out, device = Path(args.out), torch.device(args.device)
    for row in args.rows:
        run = out / "runs" / row
        done = run / "row.json"
        if done.exists() and args.resample and not args.fresh:
            info = json.loads(done.read_text())
            if info["status"] == "ok":
                result = measure(row, info, args, device, only_fd=True)
                done.write_text(json.dumps(result, indent=1))
                print(f"{row}: resampled, FD {pm(result['fd'], result['fd_se'])}", flush=True)
            continue
        if done.exists() and not args.fresh:
            continue
        if run.exists():
            shutil.rmtree(run)
        info = train_row(row, args.steps, run, device)
        result = measure(row, info, args, device) if info["status"] == "ok" else info
        done.write_text(json.dumps(result, indent=1))
        print(f"{row}: {info['status']}, {info['cpu_min']:.1f} CPU min training, FD {pm(result.get('fd'), result.get('fd_se'))}",
              flush=True)
    results = {row: json.loads((out / "runs" / row / "row.json").read_text())
               for row in ROWS if (out / "runs" / row / "row.json").exists()}
    (out / "seed_tables.json").write_text(json.dumps(results, indent=1))
    md = tables(results)
    (out / "seed_tables.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
