"""Benchmark: PF-ODE log-likelihood of a 64-D Gaussian mixture against its analytic value.

For each SDE (VP, sub-VP, VE), dtype (float32, float64) and rtol = atol in {1e-3, 1e-5}: NLL error in
nats/dim (the solver's, with the prior mismatch removed through the exact p_T, and the total
against log p_eps), NFE and wall seconds for ``log_likelihood`` with the exact divergence and with
Hutchinson (1 and 10 probes), each also with ``error_control="batch"`` (``-batch``), next to a reference-style solver: scipy ``solve_ivp`` RK45 on the CPU
over the flattened batch, copying torch <-> numpy at every evaluation (the approach of
score_sde_pytorch's likelihood.py), with the same divergence. Prints a markdown table, writes CSV.

    python benchmarks/likelihood.py --device cpu --n 512 --out benchmarks/out/likelihood.csv

``--models``: instead, the cost of one NFE of the likelihood ODE on trained-model architectures, the
toy MLP of configs/base/toy.yaml (D = 2 and 64) and the shipped digits U-Net (D = 64), batch 100, in
float32 and float64: the exact trace by the vector-Jacobian loop and by torch.func (vmap of jacrev),
and Hutchinson with 1 and 10 probes; then the wall time to the bits/dim of the 300 test digits
(Hutchinson, one probe) with its standard error, and the exact divergence's time extrapolated from
its NFE and cost per NFE.

    OMP_NUM_THREADS=1 python benchmarks/likelihood.py --models --device cpu

``--target-se``: side by side, the time and NFE to the mean NLL at a target s.e. (gmm64 0.01 nats/dim,
the digits' test bits/dim 0.015) by ``precision.at_target_se`` and by the reference procedure, the split
of the budget and the speed ratio.

    OMP_NUM_THREADS=1 python benchmarks/likelihood.py --target-se --device cpu --toy runs/toy_vp
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

from sde_diffusion import SubVPSDE, VESDE, VPSDE, log_likelihood, random_mixture
from sde_diffusion.likelihood import _draw_probes, _score_and_quadratic_forms, _score_and_trace_func

EPS = 1e-5


def scipy_reference(score_fn, sde, x, *, divergence, rtol, atol, generator):
    """score_sde_pytorch-style: RK45 on numpy float64 state [x, delta], model called in x's dtype
    on x's device, copied back to the host every evaluation; batch-wide error norm."""
    n, shape, dim = x.shape[0], x.shape, x[0].numel()
    probes = None if divergence == "exact" else _draw_probes("rademacher", 1, x, generator)
    nfe = 0

    def rhs(t, y):
        nonlocal nfe
        nfe += 1
        xt = torch.from_numpy(y[:-n]).reshape(shape).to(device=x.device, dtype=x.dtype)
        tt = torch.full((n,), t, device=x.device, dtype=x.dtype)
        coef, g2 = sde.drift_coef(tt), sde.diffusion(tt).square()
        s, q = _score_and_quadratic_forms(score_fn, xt, tt, probes)
        dx = coef[:, None] * xt.flatten(1) - 0.5 * g2[:, None] * s.flatten(1)
        dd = coef * dim - 0.5 * g2 * q.sum(0)
        return np.concatenate([dx.cpu().numpy().reshape(-1), dd.cpu().numpy()]).astype(np.float64)

    y0 = np.concatenate([x.cpu().double().numpy().reshape(-1), np.zeros(n)])
    sol = solve_ivp(rhs, (EPS, sde.T), y0, rtol=rtol, atol=atol, method="RK45")
    y = torch.from_numpy(sol.y[:, -1])
    x_T = y[:-n].reshape(shape).to(torch.float64)
    delta = y[-n:]
    return delta, x_T, nfe


def run(args):
    device = torch.device(args.device)
    gm = random_mixture(64, 8)
    sdes = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
    x64 = gm.sample(args.n, torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = []
    for name, sde in sdes.items():
        exact_eps = gm.log_prob_t(x64, EPS, sde)
        for dtype in (torch.float32, torch.float64):
            x = x64.to(device=device, dtype=dtype)
            for tol in args.tols:
                for method in args.methods:
                    base, control = (method[:-6], "batch") if method.endswith("-batch") else (method, "sample")
                    divergence, probes = ("exact", 1) if base.endswith("exact") else ("hutchinson", int(base.split("-")[-1]))
                    gen = torch.Generator(device).manual_seed(1)
                    _sync(device)
                    start = time.perf_counter()
                    if method.startswith("scipy"):
                        delta, x_T, nfe = scipy_reference(gm.score(sde), sde, x, divergence=divergence,
                                                          rtol=tol, atol=tol, generator=gen)
                    else:
                        r = log_likelihood(gm.score(sde), sde, x, divergence=divergence, probes=probes,
                                           rtol=tol, atol=tol, eps=EPS, generator=gen, error_control=control)
                        _sync(device)
                        delta, x_T, nfe = r.delta_log_prob, r.x_T, r.nfe
                    wall = time.perf_counter() - start
                    delta, x_T = delta.double().cpu(), x_T.double().cpu()
                    solver = (delta + gm.log_prob_t(x_T, sde.T, sde) - exact_eps).abs() / gm.dim
                    total = (delta + sde.prior_log_prob(x_T) - exact_eps).abs() / gm.dim
                    rows.append(dict(sde=name, dtype=str(dtype).replace("torch.", ""), tol=tol, method=method,
                                     solver_err_mean=solver.mean().item(), solver_err_max=solver.max().item(),
                                     total_err_mean=total.mean().item(), nfe=nfe, wall_s=wall))
                    print(_fmt(rows[-1]), flush=True)
    return rows


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


HEADER = "| SDE | dtype | rtol=atol | method | solver err/dim mean | max | total err/dim | NFE | wall s |"


def _fmt(r):
    return (f"| {r['sde']} | {r['dtype']} | {r['tol']:.0e} | {r['method']} | {r['solver_err_mean']:.1e} | "
            f"{r['solver_err_max']:.1e} | {r['total_err_mean']:.1e} | {r['nfe']} | {r['wall_s']:.2f} |")


def summary(rows) -> str:
    """Wall-time ratio scipy reference / log_likelihood, in total and per NFE, same divergence."""
    lines = ["\nspeed-up of log_likelihood over the scipy reference (wall; wall per NFE):\n",
             "| SDE | dtype | rtol=atol | exact | exact per NFE | hutchinson-1 | hutchinson-1 per NFE |",
             "|---|---|---|---|---|---|---|"]
    index = {(r["sde"], r["dtype"], float(r["tol"]), r["method"]): (float(r["wall_s"]), float(r["nfe"]))
             for r in rows}
    for sde, dtype, tol in dict.fromkeys((r["sde"], r["dtype"], float(r["tol"])) for r in rows):
        cells = []
        for m in ("exact", "hutchinson-1"):
            (w0, n0), (w1, n1) = (index.get((sde, dtype, tol, k), (math.nan, 1.0)) for k in (m, f"scipy-{m}"))
            cells += [f"{w1 / w0:.2f}x", f"{(w1 / n1) / (w0 / n0):.2f}x"]
        lines.append(f"| {sde} | {dtype} | {tol:.0e} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _per_nfe(fn, reps: int, device) -> float:
    """Seconds per call of fn() (one warm-up call, then the mean of ``reps``)."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / reps


def model_costs(device, batch: int = 100) -> list[dict]:
    """Seconds per NFE (one right-hand side: the score and its divergence) by divergence method."""
    from sde_diffusion import build_model, load

    def mlp(dim):
        torch.manual_seed(0)
        return build_model("mlp", VPSDE(), dim=dim, hidden=64, blocks=2, embedding="sinusoidal", emb_dim=64)

    models = [("toy MLP", (2,), mlp(2)), ("toy MLP", (64,), mlp(64)),
              ("digits U-Net (shipped)", (1, 8, 8), load("shipped:digits_vp"))]
    rows = []
    for name, shape, model in models:
        for dtype in (torch.float32, torch.float64):
            model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
            gen = torch.Generator(device).manual_seed(0)
            x = torch.randn((batch, *shape), generator=gen, device=device, dtype=dtype)
            t = torch.full((batch,), 0.3, device=device, dtype=dtype)
            reps = 2 if "U-Net" in name else 5
            with torch.no_grad():
                cost = {"exact loop": _per_nfe(lambda: _score_and_quadratic_forms(model, x, t, None), reps, device),
                        "exact torch.func": _per_nfe(lambda: _score_and_trace_func(model, x, t), reps, device)}
                for p in (1, 10):
                    v = _draw_probes("rademacher", p, x, gen)
                    cost[f"hutchinson-{p}"] = _per_nfe(lambda: _score_and_quadratic_forms(model, x, t, v), reps, device)
            rows.append({"model": name, "D": math.prod(shape), "dtype": str(dtype).replace("torch.", ""), **cost})
            print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in rows[-1].values())
                  + " |", flush=True)
    return rows


def digits_bpd(device, costs: list[dict], probes: int) -> None:
    """Wall time to the bits/dim of the 300 test digits by the shipped model (Hutchinson with
    ``probes`` probes), and the exact divergence's extrapolated from that NFE and its cost per NFE.
    The s.e. over samples includes the probe noise; without it (the exact divergence's s.e.) it would
    be sqrt((var_n(value) - mean_n se_n^2) / N), se_n the s.e. of point n over its probes (P >= 2)."""
    from sde_diffusion.evaluation.nll_table import mean_se, nll_per_sample
    from sde_diffusion import load, model_dataset

    model = load("shipped:digits_vp", device=device)
    test = model_dataset(model, "test")
    start = time.perf_counter()
    r = nll_per_sample(model, test.x.to(device), test.levels, generator=torch.Generator(device).manual_seed(0),
                       batch_size=100, divergence="hutchinson", probes=probes, rtol=1e-5, atol=1e-5)
    wall = time.perf_counter() - start
    mean, se = mean_se(r.values)
    nfe = sum(r.nfe)
    print(f"\n300 test digits, Hutchinson ({probes} probes), dopri5 rtol=atol=1e-5, batch 100, float32: "
          f"{mean:.3f} +- {se:.3f} bits/dim, NFE per batch {r.nfe}, wall {wall:.1f} s")
    if probes > 1:
        v = r.values.double()
        exact_se = math.sqrt(max(float(v.var() - r.probe_se.double().square().mean()), 0.0) / len(v))
        print(f"  s.e. without the probe noise (the exact divergence's): about {exact_se:.4f}")
    unet = {r["dtype"]: r for r in costs if "U-Net" in r["model"]}["float32"]
    for method in ("exact loop", "exact torch.func", "hutchinson-10"):
        print(f"  {method}: about {nfe * unet[method]:.0f} s at the same NFE (extrapolated: NFE x cost per NFE)")


def reference_to_target(model, x: torch.Tensor, levels: int | None, target: float, batch: int = 100) -> dict:
    """The reference procedure to a target s.e.: ``scipy_reference`` (RK45 on the host, 1 Rademacher
    probe, rtol = atol = 1e-5) on batches in order (dequantized as ``nll_per_sample`` for discrete data)
    until the s.e. over the values, sd / sqrt(n), is at most ``target`` (its solver error taken as 0)."""
    from sde_diffusion.dequantize import DATA_RANGE, continuous_to_levels
    from sde_diffusion.likelihood import bits_from_log_prob, dequantize
    from sde_diffusion.evaluation.nll_table import mean_se

    start, values, nfe, dim = time.perf_counter(), [], 0, x[0].numel()
    for b, chunk in enumerate(x.split(batch)):
        gen = torch.Generator(x.device).manual_seed(b)
        if levels:
            chunk = dequantize(continuous_to_levels(chunk, levels, DATA_RANGE), levels=levels, data_range=DATA_RANGE,
                               generator=gen, dtype=x.dtype)
        delta, x_T, k = scipy_reference(model, model.sde, chunk, divergence="hutchinson", rtol=1e-5, atol=1e-5,
                                        generator=gen)
        log_p = delta + model.sde.prior_log_prob(x_T).double()
        values.append(bits_from_log_prob(log_p, dim, levels, DATA_RANGE) if levels else -log_p / dim)
        nfe += k
        v = torch.cat(values).double()
        if len(v) >= 2 * batch and mean_se(v)[1] <= target:
            break
    mean, se = mean_se(v)
    return {"points": len(v), "nfe": nfe, "seconds": time.perf_counter() - start, "mean": mean, "se": se}


def target_table(device, gmm_target: float = 0.01, digits_target: float = 0.015, toy: str | None = None) -> str:
    """Side by side to a target s.e.: ``precision.at_target_se`` against ``reference_to_target`` on the
    analytic 64-D mixture (exact score, VP, 3000 draws; truth known), the toy MLP of the run ``toy`` (its
    test split of the ring, nats/dim, target ``gmm_target``) where given, and the shipped digits U-Net
    (its 300 test digits, bits/dim)."""
    from sde_diffusion import load, model_dataset
    from sde_diffusion.evaluation.precision import at_target_se

    cases = []
    gmm = load("analytic:gmm64", device=device)
    cases.append(("gmm64 (exact score)", gmm, gmm.info.mixture.sample(3000, torch.Generator().manual_seed(0)).to(device),
                  None, gmm_target))
    if toy is not None:
        mlp = load(toy, device=device)
        points = model_dataset(mlp, "test").x.to(device)
        cases.append((f"toy MLP ({toy}, {len(points)} test points)", mlp, points, None, gmm_target))
    digits = load("shipped:digits_vp", device=device)
    test = model_dataset(digits, "test")
    cases.append(("digits U-Net (300 test digits)", digits, test.x.to(device), test.levels, digits_target))
    lines = ["| case | target | procedure | points | NFE | seconds | mean +- s.e. | data / probe / solver | speed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, model, x, levels, target in cases:
        ref = reference_to_target(model, x, levels, target)
        try:
            r = at_target_se(model, x, levels, target)
        except ValueError as e:
            lines.append(f"| {name} | {target:g} | at_target_se | refused: {e} | | | | | |")
            continue
        c = r.choice
        choice = c["divergence"] + (f" {c['probes']} probes" if c["probes"] else "") + f", rtol {c['rtol']:.1g}"
        nfe = sum(r.nfe) + sum(r.pilot["nfe"])
        lines.append(f"| {name} | {target:g} | at_target_se ({choice}) | {len(r.values)} | {nfe} | {r.seconds:.1f} | "
                     f"{r.mean:.4f} +- {r.se:.4f} | {r.data_se:.4f} / {r.probe_se:.4f} / {r.solver_error:.1g} | "
                     f"{ref['seconds'] / r.seconds:.2f}x |")
        lines.append(f"| {name} | {target:g} | reference (scipy RK45, 1 probe, 1e-5) | {ref['points']} | {ref['nfe']} | "
                     f"{ref['seconds']:.1f} | {ref['mean']:.4f} +- {ref['se']:.4f} | (not separated) | 1 |")
        print(lines[-2] + "\n" + lines[-1], flush=True)
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=512, help="number of points")
    p.add_argument("--out", default="benchmarks/out/likelihood.csv")
    p.add_argument("--tols", nargs="+", type=float, default=[1e-3, 1e-5], help="rtol = atol values")
    p.add_argument("--methods", nargs="+", default=["exact", "hutchinson-1", "hutchinson-10", "exact-batch",
                                                    "hutchinson-1-batch", "scipy-exact", "scipy-hutchinson-1"],
                   help="'-batch': log_likelihood(error_control='batch'), the reference's step control")
    p.add_argument("--models", action="store_true", help="seconds per NFE on the toy MLP and digits U-Net, "
                                                         "and the time to the test digits' bits/dim")
    p.add_argument("--digits-probes", type=int, default=1, help="Hutchinson probes for the test digits (--models)")
    p.add_argument("--target-se", action="store_true", help="time and NFE to a target s.e. (gmm64 0.01, digits "
                                                            "0.015 bits/dim) against the reference procedure")
    p.add_argument("--toy", default=None, help="with --target-se: a trained toy run (sde-diffusion train --config "
                                               "configs/toy_vp.yaml --out runs/toy_vp) to add as a case")
    args = p.parse_args()
    if args.target_se:
        device = torch.device(args.device)
        print(f"device={device}, threads={torch.get_num_threads()}\n")
        print(target_table(device, toy=args.toy))
        return
    if args.models:
        device = torch.device(args.device)
        print(f"device={device}, threads={torch.get_num_threads()}, batch 100: seconds per NFE\n")
        print("| model | D | dtype | exact loop | exact torch.func | Hutchinson-1 | Hutchinson-10 |\n" + "|---" * 7 + "|")
        digits_bpd(device, model_costs(device), args.digits_probes)
        return
    print(f"device={args.device}, n={args.n}, 64-D mixture (8 components), eps={EPS}\n")
    print(HEADER + "\n" + "|---" * 9 + "|")
    rows = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(summary(rows))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
