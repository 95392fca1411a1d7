"""``sde-diffusion demo``: the toolkit's main job in one command, on built-in data only.

1. Samplers on the analytic 64-D Gaussian mixture ``gmm64`` (exact score), every SDE: SW2 to fresh
   data against NFE, over independent repeats. (The 2-D ring's SW2 floor fluctuates too much between
   sample sets for a few repeats to order samplers there: benchmarks/results/noise_floors.md.)
2. Samplers on the shipped VP model of the 8x8 digits (``shipped``): Frechet distance in the digits
   classifier's features against NFE, over repeats, and sample grids.
3. Test-set bits/dim of that model: probability-flow ODE, DDPM bound, full-covariance Gaussian baseline.
Headlines name a best sampler only when its 95% interval is clear of every other's (``summary.rank``).
Everything lands in one folder with a short report.md embedding the plots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import compare, nll_table, report
from .provenance import provenance_line
from .summary import floor_text, rank, ranking_text

ANALYTIC_METHODS = "ancestral,euler_maruyama,pc,ode:solver=rk4,ddim,heun,dpm_solver"
DIGITS_METHODS = "ancestral,euler_maruyama,ddim,heun,dpm_solver"


@dataclass(frozen=True)
class DemoSizes:
    """How much work the demo does (sample sizes, step counts, repeats; ``--quick`` shrinks each)."""

    analytic: str = "gmm64"
    analytic_n: int = 250
    analytic_steps: str = "10,20,50"
    analytic_repeats: int = 5
    digits_n: int = 200
    digits_steps: str = "10,20,50"
    digits_repeats: int = 5
    nll_n: int | None = None      # test digits for the PF-ODE bits/dim (None: all 300)
    vlb_n: int = 50               # test digits for the DDPM bound (1000 steps each)
    nll_rtol: float = 1e-5        # PF-ODE tolerance (rtol = atol) of the bits/dim
    show_steps: int = 20


def run_demo(out: Path, *, model: str = "shipped:digits_vp", sizes: DemoSizes = DemoSizes(),
             device: torch.device | str = "cpu", seed: int = 0, progress: bool = True) -> dict:
    """Run the demo into ``out`` with the digits model of source ``model`` (``load``); returns the
    report path and the headline figures."""
    from ..training.loading import load
    from ..training.shipped import COMMAND

    t_start, device = time.perf_counter(), torch.device(device)
    for steps in (sizes.analytic_steps, sizes.digits_steps):
        if sizes.show_steps not in compare.parse_steps(steps):
            raise ValueError(f"show_steps {sizes.show_steps} must be one of the step counts {steps!r}.")
    out.mkdir(parents=True, exist_ok=True)
    gm = compare.analytic_target(sizes.analytic, "all", sizes.analytic_n, device, seed)
    rows_a, shown_a = compare.run_compare(gm, compare.parse_methods(ANALYTIC_METHODS),
                                          compare.parse_steps(sizes.analytic_steps), None, device,
                                          repeats=sizes.analytic_repeats, seed=seed, show_steps=sizes.show_steps,
                                          progress=progress)
    files_a = report.write_compare(out / sizes.analytic, gm, rows_a, shown_a, sizes.show_steps, heading="Samplers")

    source = model
    model = load(source, device=device)
    source = (f"the shipped model (`{COMMAND}`, {model.info.meta['step']} steps)" if source == "shipped:digits_vp"
              else f"model `{source}`")
    digits = compare.model_target(model, device, sizes.digits_n, seed, name="digits", repeats=sizes.digits_repeats)
    rows_d, shown_d = compare.run_compare(digits, compare.parse_methods(DIGITS_METHODS),
                                          compare.parse_steps(sizes.digits_steps), None, device,
                                          repeats=sizes.digits_repeats, seed=seed, show_steps=sizes.show_steps,
                                          progress=progress)
    nll = nll_table.model_rows(model, device, n=sizes.nll_n, n_vlb=sizes.vlb_n, seed=seed,
                               rtol=sizes.nll_rtol)
    files_d = report.write_compare(out / "digits", digits, rows_d, shown_d, sizes.show_steps, nll, heading="Samplers")

    cells_d, cells_a = files_d["cells"], files_a["cells"]
    best_d = rank([c for c in cells_d if c["steps"] == sizes.show_steps])
    best_a = rank([c for c in cells_a if c["nfe"] <= 50])
    shown = best_d.best or best_d.ordered[0]
    grid = files_d["samples"].get((shown["sde"], shown["method"]))
    pf = next(r for r in nll if r["estimate"].startswith("PF-ODE"))
    gauss = next(r for r in nll if "Gaussian" in r["estimate"])
    summary = report.side_by_side([p for p in (grid, files_d["plot"]) if p], out / "summary.png")
    wall = time.perf_counter() - t_start
    headline_d = f"At {sizes.show_steps} steps, {ranking_text(best_d, label='FD')}."
    headline_a = f"At <= 50 NFE, {ranking_text(best_a)}."
    md = [
        "# sde-diffusion demo", "",
        f"{wall:.0f} s with {provenance_line(device)}. Digits: {source}. "
        "Figures are mean +- the half-width of the 95% Student-t interval over the repeats (R - 1 degrees of "
        "freedom; each repeat its own samples and floor); ratio = sample quality / noise floor (1 = as good as "
        "fresh data at this sample size); solid curves are SDE samplers, dashed ones ODE samplers. A best "
        "sampler is named only when its interval is clear of every other's; otherwise the cells tied with it "
        "(overlapping intervals, each within +-25% of its mean) are listed, then those not resolved and those "
        "behind.", "",
        f"Held-out data, digits: {digits.heldout}; {sizes.analytic}: {gm.heldout}.", "",
        f"## 8x8 digits, VP-SDE ({digits.metric}: Frechet distance in a digits classifier's features)", "",
        f"![digits sampled by {shown['method']} in {sizes.show_steps} steps; quality against NFE]({summary.name})", "",
        headline_d, "", floor_text(rows_d, cells_d), "", report.monotone_text(cells_d), "",
        "Test-set likelihood (bits/dim of the 17-level digits, uniform dequantization):", "",
        report.markdown_table(nll, ["estimate", "value", "stderr", "n", "seconds"],
                              ["estimate", "bits/dim", "s.e.", "digits", "seconds"]), "",
        f"## The analytic mixture {sizes.analytic}, exact score, every SDE", "",
        f"![{sizes.analytic}: quality against NFE]({sizes.analytic}/quality_vs_nfe.png)", "",
        *([] if sizes.analytic == "ring2d" else [
            f"{sizes.analytic} rather than the 2-D ring: the ring's SW2 floor varies by ~30% between sample sets "
            "at any n, so a few repeats cannot order samplers there; gmm64's varies by ~4%.", ""]),
        headline_a, "", floor_text(rows_a, cells_a), "", report.monotone_text(cells_a), "",
        f"Full tables, CSVs and every sample figure: [digits/report.md](digits/report.md), "
        f"[{sizes.analytic}/report.md]({sizes.analytic}/report.md).", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return {"report": path, "wall_s": wall, "bits_per_dim": pf["value"], "bits_per_dim_se": pf["stderr"],
            "gaussian_bits_per_dim": gauss["value"], "nll": nll, "digits_ranking": best_d, "analytic_ranking": best_a,
            "headlines": (headline_d, headline_a), "digits_rows": rows_d, "analytic_rows": rows_a,
            "digits_cells": cells_d, "analytic_cells": cells_a, "summary": summary}
