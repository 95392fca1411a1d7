"""``sde-diffusion demo``: the toolkit's main job in one command, on built-in data only.

1. Samplers on the analytic 8-mode ring (exact score), every SDE: SW2 to fresh data against NFE.
2. Samplers on the shipped VP model of the 8x8 digits (``shipped``): Frechet distance in the digits
   classifier's features against NFE, and sample grids.
3. Test-set bits/dim of that model: probability-flow ODE, DDPM bound, full-covariance Gaussian baseline.
Everything lands in one folder with a short report.md embedding the plots.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import compare, nll_table, report

RING_METHODS = "ancestral,euler_maruyama,pc,ode:solver=rk4,ddim,heun,dpm_solver"
DIGITS_METHODS = "ancestral,euler_maruyama,ddim,heun,dpm_solver"


@dataclass(frozen=True)
class DemoSizes:
    """How much work the demo does (the defaults fit in 10 minutes on 2 CPU cores)."""

    ring_n: int = 2000
    ring_steps: str = "10,20,50,100"
    digits_n: int = 300
    digits_steps: str = "10,20,50,100"
    nll_n: int | None = None      # test digits for the PF-ODE bits/dim (None: all 300)
    vlb_n: int = 50               # test digits for the DDPM bound (1000 steps each)
    nll_rtol: float = 1e-5        # PF-ODE tolerance (rtol = atol) of the bits/dim
    show_steps: int = 20


def _best(rows: list[dict]) -> dict:
    """The run closest to the noise floor (ratio nearest 1 on a log scale; below 1 is not better)."""
    return min(rows, key=lambda r: abs(math.log(r["ratio"])) if r["ratio"] > 0 else math.inf)


def run_demo(out: Path, *, checkpoint: str | None = None, sizes: DemoSizes = DemoSizes(),
             device: torch.device | str = "cpu", seed: int = 0, progress: bool = True) -> dict:
    """Run the demo into ``out``; returns the report path and the headline figures."""
    from ..training.shipped import COMMAND, load_shipped

    t_start, device = time.perf_counter(), torch.device(device)
    for steps in (sizes.ring_steps, sizes.digits_steps):
        if sizes.show_steps not in compare.parse_steps(steps):
            raise ValueError(f"show_steps {sizes.show_steps} must be one of the step counts {steps!r}.")
    out.mkdir(parents=True, exist_ok=True)
    ring = compare.analytic_target("ring2d", "all", sizes.ring_n, device, seed)
    ring_steps = compare.parse_steps(sizes.ring_steps)
    rows_r, shown_r = compare.run_compare(ring, compare.parse_methods(RING_METHODS), ring_steps, sizes.ring_n,
                                          device, seed=seed, show_steps=sizes.show_steps, progress=progress)
    report.write_compare(out / "ring", ring, rows_r, shown_r, sizes.show_steps, heading="Samplers")

    if checkpoint is None:
        model, cfg, meta = load_shipped(device=device)
        source = f"the shipped model (`{COMMAND}`, {meta['step']} steps)"
    else:
        from ..training.checkpoint import load_checkpoint
        model, cfg = load_checkpoint(checkpoint, device=device)
        model.requires_grad_(False)
        source = f"checkpoint `{checkpoint}`"
    digits = compare.model_target(model, cfg, device, sizes.digits_n, seed, name="digits")
    rows_d, shown_d = compare.run_compare(digits, compare.parse_methods(DIGITS_METHODS),
                                          compare.parse_steps(sizes.digits_steps), sizes.digits_n, device,
                                          seed=seed, show_steps=sizes.show_steps, progress=progress)
    nll = nll_table.model_rows(model, cfg, device, n=sizes.nll_n, n_vlb=sizes.vlb_n, seed=seed,
                               rtol=sizes.nll_rtol)
    files_d = report.write_compare(out / "digits", digits, rows_d, shown_d, sizes.show_steps, nll, heading="Samplers")

    best_d = _best([r for r in rows_d if r["steps"] == sizes.show_steps] or rows_d)
    best_r = _best([r for r in rows_r if r["nfe"] <= 50] or rows_r)
    grid = files_d["samples"][best_d["sde"], best_d["method"]]
    pf = next(r for r in nll if r["estimate"].startswith("PF-ODE"))
    gauss = next(r for r in nll if "Gaussian" in r["estimate"])
    summary = report.side_by_side([grid, files_d["plot"]], out / "summary.png")
    wall = time.perf_counter() - t_start
    md = [
        "# sde-diffusion demo", "",
        f"On {device.type}, {torch.get_num_threads()} threads, {wall:.0f} s. Digits: {source}. "
        "Ratio = sample quality / noise floor (1 = as good as fresh data at this sample size); "
        "solid curves are SDE samplers, dashed ones ODE samplers.", "",
        f"## 8x8 digits, VP-SDE ({digits.metric}: Frechet distance in a digits classifier's features)", "",
        f"![digits sampled by {best_d['method']} in {sizes.show_steps} steps; quality against NFE]({summary.name})", "",
        f"Closest to the floor at {sizes.show_steps} steps: **{best_d['method']}**, {best_d['nfe']} NFE, "
        f"FD {best_d['quality']:.3g} "
        f"(floor {best_d['floor']:.3g}, ratio {best_d['ratio']:.2f}).", "",
        "Test-set likelihood (bits/dim of the 17-level digits, uniform dequantization):", "",
        report.markdown_table(nll, ["estimate", "value", "stderr", "n", "seconds"],
                              ["estimate", "bits/dim", "s.e.", "digits", "seconds"]), "",
        "## Analytic 8-mode ring, exact score, every SDE", "",
        "![ring: quality against NFE](ring/quality_vs_nfe.png)", "",
        f"Closest to the floor at <= 50 NFE: **{best_r['method']}** on {best_r['sde']}, "
        f"{best_r['steps']} steps, "
        f"SW2 {best_r['quality']:.3g} (floor {best_r['floor']:.3g}, ratio {best_r['ratio']:.2f}).", "",
        "Full tables, CSVs and every sample figure: [digits/report.md](digits/report.md), "
        "[ring/report.md](ring/report.md).", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return {"report": path, "wall_s": wall, "bits_per_dim": pf["value"], "bits_per_dim_se": pf["stderr"],
            "gaussian_bits_per_dim": gauss["value"], "nll": nll, "digits_best": best_d, "ring_best": best_r,
            "digits_rows": rows_d, "ring_rows": rows_r, "summary": summary}
