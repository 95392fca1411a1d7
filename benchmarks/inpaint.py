"""Benchmark (not a test): how far replacement inpainting (``sample(..., inpaint=...)``, Song et al.
2021) is from the exact conditional on analytic 2-D mixtures, per sampler.

Known x1 = a, impute x2 with the exact score. The exact conditional is the mixture
    p(x2 | x1 = a) = sum_k pi_k(a) N(mu_k2, v_k2),   pi_k(a) ∝ w_k N(a; mu_k1, v_k1),
with mean sum pi_k mu_k2 and variance sum pi_k (v_k2 + mu_k2^2) - mean^2. On a product distribution
(grid2d) replacement is exact; where x1 and x2 are dependent it is an approximation (the unknown part
is steered by p_t(x2 | x1(t)) with an independently noised x1(t)), and this table shows its bias.
Writes <out>/inpaint.csv and prints a markdown table.

    python benchmarks/inpaint.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

import solvers
from sde_diffusion.analytic import GaussianMixture, grid2d
from sde_diffusion.sde import VPSDE

CASES = {"grid2d (independent)": (grid2d(), 0.25),
         "2 modes on the diagonal": (GaussianMixture([[-1, -1], [1, 1]], 0.3**2), 1.0),
         "3 modes": (GaussianMixture([[-1, -1], [1, 1], [0.6, -1]], 0.3**2), 1.0)}


def exact(gm: GaussianMixture, a: float) -> tuple[float, float]:
    mu, v = gm.means, gm.variances
    pi = torch.softmax(gm.log_weights - 0.5 * (a - mu[:, 0]) ** 2 / v[:, 0] - 0.5 * v[:, 0].log(), 0)
    mean = (pi * mu[:, 1]).sum()
    return float(mean), float((pi * (v[:, 1] + mu[:, 1] ** 2)).sum() - mean**2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args()
    sde, mask, rows = VPSDE(), torch.tensor([True, False]), []
    for case, (gm, a) in CASES.items():
        known = torch.zeros(args.n, 2, dtype=torch.float64)
        known[:, 0] = a
        mean, var = exact(gm, a)
        for method in ("euler_maruyama", "reverse_diffusion", "pc", "sde", "ddim", "dpm_solver", "ode"):
            x = solvers.sample(gm.score(sde), sde, (args.n, 2), method, args.steps, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(0), inpaint=(mask, known)).x[:, 1]
            rows.append({"case": case, "x1": a, "method": method, "exact mean": f"{mean:.3f}",
                         "imputed mean": f"{float(x.mean()):.3f}", "exact var": f"{var:.3f}",
                         "imputed var": f"{float(x.var()):.3f}"})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "inpaint.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"| {' | '.join(rows[0])} |\n|{'---|' * len(rows[0])}")
    for r in rows:
        print(f"| {' | '.join(str(v) for v in r.values())} |")


if __name__ == "__main__":
    main()
