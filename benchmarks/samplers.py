"""Sampler benchmark against the analytic ground truth (not a test).

For each data set x SDE x sampler x step count: NFE, sliced W2 to fresh true samples and the noise
floor (mean SW2 between independent true sets of the same size), the mean true-NLL gap
E_samples[-log p_0] - E_true[-log p_0] (nats per sample; see ``sde_diffusion.evaluation.metrics.nll_gap``),
wall seconds, and the solver's own overhead: wall time minus time inside the score function.
Writes samplers.md, samplers.csv and samplers.png (SW2/floor against NFE, log-log; SDE samplers
solid, ODE samplers dashed) under --out.

    python benchmarks/samplers.py --device cpu --steps 10 20 50 100 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch

from sde_diffusion import get_sde
from sde_diffusion.analytic import preset
from sde_diffusion.evaluation.metrics import nll_gap, sliced_w2
from solvers import METHODS, sample

# label -> (method, options); dopri5 is swept over tolerances instead of steps
VARIANTS = {
    "ancestral": ("ancestral", {}), "reverse_diffusion": ("reverse_diffusion", {}),
    "euler_maruyama": ("euler_maruyama", {}), "pc": ("pc", {}), "sde-euler": ("sde", {}),
    "ode-rk4": ("ode", {"solver": "rk4"}), "ode-dopri5": ("ode", {"solver": "dopri5"}), "ddim": ("ddim", {}),
    "heun": ("heun", {}), "dpm_solver-2M": ("dpm_solver", {"order": 2}),
    "dpm_solver-3S": ("dpm_solver", {"order": 3, "multistep": False}),
    "heun-churn40": ("heun", {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003}),
    "dpm_solver_sde-2M": ("dpm_solver_sde", {}), "dpm_solver_sde-3M": ("dpm_solver_sde", {"order": 3}),
    "unipc-bh2": ("unipc", {}), "unipc-bh1-3": ("unipc", {"order": 3, "variant": "bh1"}),
    "sa_solver": ("sa_solver", {}), "adaptive_sde": ("adaptive_sde", {}),  # adaptive: steps sets the tolerance 1/steps
}
DOPRI_TOL = {10: 1e-1, 20: 1e-2, 50: 1e-3, 100: 1e-4, 200: 1e-5, 500: 1e-6, 1000: 1e-7}
FIELDS = ["data", "sde", "sampler", "kind", "steps", "nfe", "sw2", "floor", "ratio", "nll_gap", "wall_s",
          "score_s", "overhead"]


class TimedScore:
    """The score with the time spent inside it accumulated (synchronising CUDA around each call)."""

    def __init__(self, fn, device: torch.device):
        self.fn, self.sync, self.seconds = fn, device.type == "cuda", 0.0

    def __call__(self, x, t):
        if self.sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = self.fn(x, t)
        if self.sync:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        return out


def run_one(gm, sde, label: str, steps: int, n: int, device, ref, floor) -> dict | None:
    method, opts = VARIANTS[label]
    if METHODS[method].vp_only and not bool(sde.marginal(float(sde.T))[0] < 1):
        return None
    if label == "ode-dopri5":
        opts = {**opts, "rtol": DOPRI_TOL.get(steps, 1e-5), "atol": DOPRI_TOL.get(steps, 1e-5)}
    score = TimedScore(gm.score(sde), device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = sample(score, sde, (n, gm.dim), method, steps, generator=torch.Generator(device).manual_seed(0),
                 device=device, **opts)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    x = res.x.to(ref.dtype)
    ok = bool(torch.isfinite(x).all())
    sw = float(sliced_w2(x, ref, generator=torch.Generator(device).manual_seed(1))) if ok else math.inf
    return {"sampler": label, "kind": METHODS[method].kind_of(opts), "steps": steps, "nfe": res.nfe, "sw2": sw,
            "floor": floor, "ratio": sw / floor, "nll_gap": float(nll_gap(gm.log_prob, x, ref)) if ok else math.inf,
            "wall_s": wall, "score_s": score.seconds, "overhead": 1 - score.seconds / wall}


def truth(gm, n: int, device):
    g = torch.Generator(device).manual_seed(123)
    ref = gm.sample(n, g, device=device)
    floor = torch.stack([sliced_w2(gm.sample(n, g, device=device), gm.sample(n, g, device=device),
                                   generator=torch.Generator(device).manual_seed(1)) for _ in range(4)]).mean()
    return ref, float(floor)


def fmt(r: dict) -> str:
    return (f"| {r['data']} | {r['sde']} | {r['sampler']} | {r['steps']} | {r['nfe']} | {r['sw2']:.4f} | "
            f"{r['floor']:.4f} | {r['ratio']:.2f} | {r['nll_gap']:+.3f} | {r['wall_s']:.2f} | "
            f"{100 * r['overhead']:.1f}% |")


def summary(rows: list[dict]) -> list[str]:
    """The two targets: per data x SDE the best sampler at <= 50 NFE (want ratio <= 1.1), and the
    overhead at 100 steps on ring2d (want <= 10%)."""
    out = ["### Targets", "", "Best sampler at <= 50 NFE (target: SW2 within 10% of the noise floor):", "",
           "| data | sde | sampler | steps | NFE | SW2/floor | met |", "|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["data"], r["sde"]) for r in rows):
        cands = [r for r in rows if (r["data"], r["sde"]) == key and r["nfe"] <= 50]
        if cands:
            b = min(cands, key=lambda r: r["ratio"])
            out.append(f"| {key[0]} | {key[1]} | {b['sampler']} | {b['steps']} | {b['nfe']} | {b['ratio']:.3f} | "
                       f"{'yes' if b['ratio'] <= 1.1 else 'no'} |")
    out += ["", "Solver overhead at 100 steps on ring2d (target <= 10% of wall time):", "",
            "| sde | sampler | N | wall s | overhead |", "|---|---|---|---|---|"]
    out += [f"| {r['sde']} | {r['sampler']} | {r['n']} | {r['wall_s']:.2f} | {100 * r['overhead']:.1f}% |"
            for r in rows if r["data"] == "ring2d" and r["steps"] == 100]
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r["data"], r["sde"]) for r in rows))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), squeeze=False)
    colors, handles = plt.get_cmap("tab20").colors, {}
    for ax, key in zip(axes[0], keys):
        for k, label in enumerate(VARIANTS):
            rs = sorted((r for r in rows if (r["data"], r["sde"]) == key and r["sampler"] == label and
                         math.isfinite(r["ratio"])), key=lambda r: r["nfe"])
            if rs:
                style = {"color": colors[(2 * k) % 20 + (2 * k) // 20], "ls": "-" if rs[0]["kind"] == "sde" else "--"}
                handles[label], = ax.plot([r["nfe"] for r in rs], [r["ratio"] for r in rs], marker=".", **style)
        ax.axhline(1.1, color="grey", lw=0.8, ls=":")
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="SW2 / noise floor", title=f"{key[0]} / {key[1]}")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=10_000, help="samples on ring2d")
    p.add_argument("--n64", type=int, default=2000, help="samples on the 64-D mixture (gmm64)")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100, 200, 500, 1000])
    p.add_argument("--steps64", type=int, nargs="+", default=None, help="steps on gmm64 (default: --steps)")
    p.add_argument("--sdes", nargs="+", default=["vp", "subvp", "ve"])
    p.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--data", nargs="+", default=["ring2d", "gmm64"], choices=["ring2d", "gmm64"])
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args(argv)
    device, out = torch.device(a.device), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    print("| data | sde | sampler | steps | NFE | SW2 | floor | ratio | NLL gap | wall s | overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for data in a.data:
        gm, n = preset(data), (a.n if data == "ring2d" else a.n64)
        ref, floor = truth(gm, n, device)
        for sde_name in a.sdes:
            sde = get_sde(sde_name)
            sample(gm.score(sde), sde, (8, gm.dim), "heun", 2, device=device)  # warm-up
            for label in a.methods:
                for steps in (a.steps if data == "ring2d" or a.steps64 is None else a.steps64):
                    r = run_one(gm, sde, label, steps, n, device, ref, floor)
                    if r is not None:
                        rows.append({"data": data, "sde": sde_name, "n": n, **r})
                        print(fmt(rows[-1]), flush=True)
    with open(out / "samplers.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["n", *FIELDS])
        w.writeheader()
        w.writerows({k: r[k] for k in ["n", *FIELDS]} for r in rows)
    head = ["| data | sde | sampler | steps | NFE | SW2 | floor | SW2/floor | NLL gap | wall s | overhead |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    md = [f"# Samplers on {device} (ring2d N={a.n}, gmm64 N={a.n64})", "", *summary(rows), "", "### All runs",
          "", *head, *map(fmt, rows), ""]
    (out / "samplers.md").write_text("\n".join(md))
    plot(rows, out / "samplers.png")
    print("\n".join(summary(rows)))
    print(f"wrote {out / 'samplers.md'}, {out / 'samplers.csv'}, {out / 'samplers.png'}")


if __name__ == "__main__":
    main()
