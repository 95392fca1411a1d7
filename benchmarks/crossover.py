"""The SDE/ODE crossover at equal score evaluations (not a test).

For each NFE budget B and each candidate sampler, the largest step count whose NFE is at most B in every
repeat (NFE is read from dry runs and from the repeats, never assumed; ``adaptive_sde``'s depends on the
draws); R repeats of ``compare`` (repeat r: the same prior seed for every
sampler, its own held-out set where the data allow, else one shared set whose error enters every interval,
``summary.shared_variance``); per sampler the mean ratio quality/floor with a Student-t 95% interval
(R - 1 degrees of freedom). The best SDE and the best ODE sampler are those of lowest mean ratio; the
verdict comes from the paired difference of their ratios over the repeats (same seeds, same held-out
sets): "SDE ahead" or "ODE ahead" when its t interval excludes 0, else "not resolved".
Candidates that are not registered (or not usable on the SDE) are skipped with a note.

    python benchmarks/crossover.py --target gmm64 --repeats 5 --n 2000 --out benchmarks/results
    python benchmarks/crossover.py --target shipped:digits_vp --repeats 5 --n 500 --out benchmarks/results
    sde-diffusion train --config configs/toy_vp.yaml --out runs/toy_vp      # the toy edm model (ring)
    python benchmarks/crossover.py --target runs/toy_vp --repeats 5 --n 2000 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import solvers
from sde_diffusion.evaluation import summary
from sde_diffusion.evaluation.provenance import provenance_line
from sde_diffusion.evaluation.compare import Variant, analytic_target, model_target, run_compare

BUDGETS = (10, 20, 50, 100, 200)
# label -> (method, options): first order and higher order, on both sides
CANDIDATES = {
    "euler_maruyama": ("euler_maruyama", {}), "ancestral": ("ancestral", {}),
    "reverse_diffusion": ("reverse_diffusion", {}), "pc": ("pc", {}), "ddim:eta=1": ("ddim", {"eta": 1.0}),
    "heun:S_churn=40": ("heun", {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003}),
    "dpm_solver_sde": ("dpm_solver_sde", {}), "dpm_solver_sde:order=3": ("dpm_solver_sde", {"order": 3}),
    "ddim": ("ddim", {}), "heun": ("heun", {}), "ode:solver=rk4": ("ode", {"solver": "rk4"}),
    "dpm_solver": ("dpm_solver", {}), "dpm_solver:order=3": ("dpm_solver", {"order": 3}),
    "unipc": ("unipc", {}), "unipc:order=3": ("unipc", {"order": 3}),
    "sa_solver": ("sa_solver", {}), "adaptive_sde": ("adaptive_sde", {}),
}


def usable(target, sde_name: str, label: str, notes: list[str]) -> Variant | None:
    method, opts = CANDIDATES[label]
    if method not in solvers.METHODS:
        notes.append(f"{label}: not registered in this version.")
        return None
    try:
        solvers.METHODS[method].bind(target.sdes[sde_name], 10, dict(opts))
    except ValueError as e:
        notes.append(f"{label}: skipped ({e})")
        return None
    return Variant(label, method, dict(opts))


def steps_for(target, sde_name: str, v: Variant, budget: int, n: int, seed: int) -> int | None:
    """The largest step count with NFE <= budget, from dry runs: two for a fixed-step rule (NFE = a K + b);
    for ``adaptive_sde``, whose tolerances 1/K set the NFE of the whole batch, a bisection over K with
    dry runs of the n samples (seed ``seed``); its rows report the NFE each repeat really took."""
    sde, score = target.sdes[sde_name], target.score(target.sdes[sde_name])
    batch = n if solvers.METHODS[v.method].order is None else 2

    def nfe(k):
        return solvers.sample(score, sde, (batch, *target.shape), v.method, k,
                              generator=torch.Generator().manual_seed(seed), **v.options).nfe

    if batch == n:
        lo, hi = 0, budget  # nfe(lo) <= budget < nfe(hi + 1) assumed monotone in K
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if nfe(mid) <= budget else (lo, mid - 1)
        return lo or None
    n1, n2 = nfe(2), nfe(4)
    per, base = (n2 - n1) / 2, n1 - (n2 - n1)
    k = int((budget - base) // per)
    return k if k >= 1 and nfe(k) <= budget else None


def interval(values: list[float], halves: list | None = None) -> tuple[float, float]:
    """(mean, half-width of the Student-t 95% interval, R - 1 dof): ``summary.interval``, with the
    error of a held-out set shared by the repeats (``summary.shared_variance`` of ``halves``)."""
    mean, _, hw = summary.interval(values, summary.shared_variance(halves or []))
    return mean, math.inf if math.isnan(hw) else hw


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="gmm64", help="an analytic preset (gmm64) or a model source (shipped:digits_vp, a run folder)")
    ap.add_argument("--sde", default="vp")
    ap.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    if ":" in a.target or Path(a.target).exists():
        from sde_diffusion import load
        target = model_target(load(a.target, device=dev), dev, a.n, a.seed, repeats=a.repeats)
    else:
        target = analytic_target(a.target, a.sde, a.n, dev, a.seed)
    sde_name = next(iter(target.sdes))
    notes: list[str] = list(target.notes)
    variants = [v for v in (usable(target, sde_name, lab, notes) for lab in CANDIDATES) if v is not None]
    lines = [f"# SDE/ODE crossover on {target.name} ({sde_name}), metric {target.metric}/floor",
             "", f"R = {a.repeats} repeats of n = {target.n}; Student-t 95% intervals (R - 1 dof); "
             f"{provenance_line(dev)}.", "",
             "| NFE | best SDE | ratio | best ODE | ratio | SDE - ODE | verdict |", "|---|---|---|---|---|---|---|"]
    detail = ["", "Every sampler; the last column is its wall time per NFE over euler_maruyama's (solver overhead).", "",
              "| NFE | sampler | kind | steps | nfe (largest of the repeats) | ratio | wall/NFE vs EM |", "|---|---|---|---|---|---|---|"]
    for budget in a.budgets:
        per: dict[str, tuple[str, list[float], int, int, list]] = {}
        wall: dict[str, float] = {}  # wall seconds per score evaluation, mean over repeats
        for v in variants:
            k = steps_for(target, sde_name, v, budget, target.n, a.seed)
            if k is None:
                continue
            rows, _ = run_compare(target, [(sde_name, v)], [k], a.n, dev, repeats=a.repeats, seed=a.seed,
                                  progress=False)
            while k > 1 and max(r["nfe"] for r in rows) > budget:  # adaptive_sde: a repeat's draws took more
                k -= 1
                rows, _ = run_compare(target, [(sde_name, v)], [k], a.n, dev, repeats=a.repeats, seed=a.seed,
                                      progress=False)
            if max(r["nfe"] for r in rows) > budget:
                continue
            per[v.label] = (v.kind, [r["ratio"] for r in rows], k, max(r["nfe"] for r in rows),
                            [r.get("halves_ratio") for r in rows])
            wall[v.label] = sum(r["wall_s"] / r["nfe"] for r in rows) / len(rows)
        for label, (kind, ratios, k, nfe, halves) in per.items():
            m, hw = interval(ratios, halves)
            rel = wall[label] / wall["euler_maruyama"] if "euler_maruyama" in wall else math.nan
            detail.append(f"| {budget} | {label} | {kind} | {k} | {nfe} | {m:.3f} ± {hw:.3f} | {rel:.2f} |")
        best = {}
        for side in ("sde", "ode"):
            cands = [(interval(r)[0], lab) for lab, (kind, r, *_) in per.items() if kind == side]
            best[side] = min(cands)[1] if cands else None
        if None in best.values():
            lines.append(f"| {budget} | {best['sde']} | | {best['ode']} | | | not resolved (one side missing) |")
            continue
        (_, rs, _, _, bs), (_, ro, _, _, bo) = per[best["sde"]], per[best["ode"]]
        diff_halves = None if None in bs + bo else [x - y for x, y in zip(bs, bo)]
        d, hw = interval([x - y for x, y in zip(rs, ro)], diff_halves)
        verdict = "SDE ahead" if d + hw < 0 else "ODE ahead" if d - hw > 0 else "not resolved"
        fmt = lambda r, b: "%.3f ± %.3f" % interval(r, b)  # noqa: E731
        lines.append(f"| {budget} | {best['sde']} | {fmt(rs, bs)} | {best['ode']} | {fmt(ro, bo)} | {d:+.3f} ± {hw:.3f} "
                     f"| {verdict} |")
    text = "\n".join(lines + detail + ([""] + [f"- {n}" for n in notes] if notes else [])) + "\n"
    print(text)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        name = a.target.replace(":", "_") if ":" in a.target else Path(a.target).name
        (a.out / f"crossover_{name}.md").write_text(text)


if __name__ == "__main__":
    main()
