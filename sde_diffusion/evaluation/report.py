"""Reports of ``sde-diffusion compare`` and ``demo``: aligned text tables, results.csv (every repeat),
summary.csv (mean, s.e. and 95% half-width per cell), report.md, quality_vs_nfe.png (log-log with 95%
Student-t error bars; SDE samplers solid, ODE samplers dashed, as the registry declares their kind) and one sample
figure per method (image grid, or a scatter over held-out data on axes from the data's quantiles)."""

from __future__ import annotations

import csv
import math
import textwrap
from pathlib import Path

import torch

from ..training.viz import try_plot
from .compare import FIELDS, Target
from .provenance import provenance_line
from .summary import (LEVEL, PM, SUMMARY_FIELDS, below_floor_warnings, escape_warnings, floor_text, pm, rank,
                      ranking_text, rises, summarise)

NLL_COLUMNS = ["sde", "estimate", "value", "stderr", "unit", "n"]


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.4g}")
    return str(v)


def _cell(r: dict, c: str) -> str:
    return pm(r[c], r[f"{c}_hw"]) if c in PM and f"{c}_hw" in r else _fmt(r[c])


def text_table(rows: list[dict], columns: list[str]) -> str:
    """Plain aligned columns (numbers right-aligned); quality, floor, ratio, nll_gap as mean +- 95% half-width."""
    cells = [[_cell(r, c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def markdown_table(rows: list[dict], columns: list[str], headers: list[str] | None = None) -> str:
    head = headers or columns
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def compare_columns(cells: list[dict]) -> list[str]:
    """The summary columns shown: no s.e. or half-width columns (the intervals sit next to their means),
    no NLL gap where no cell has one, no constant metric name, held-out kind, repeat count or dof."""
    drop = {"metric", "repeats", "dof", "heldout"} | ({"nll_gap"} if all(math.isnan(r["nll_gap"]) for r in cells) else set())
    return [c for c in SUMMARY_FIELDS if c not in drop and not c.endswith(("_se", "_hw"))]


def write_csv(rows: list[dict], path: Path, fields: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows({k: r[k] for k in fields} for r in rows)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_title(target: Target, cells: list[dict]) -> str:
    return (f"{target.name}: n = {target.n} samples, {cells[0]['repeats']} repeats (error bars: {LEVEL:.0%} "
            f"Student-t, {cells[0]['dof']} dof)")


def plot_quality(cells: list[dict], path: Path, title: str) -> Path:
    """ratio = quality / floor (mean and 95% Student-t interval) against NFE on log-log axes, one panel per SDE, one
    curve per method, one legend shared by the panels."""
    plt = _pyplot()
    from matplotlib import ticker

    sdes = list(dict.fromkeys(r["sde"] for r in cells))
    labels = list(dict.fromkeys(r["method"] for r in cells))
    colour = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}  # one colour per method
    ncol = min(len(labels), 2 * len(sdes), 4)
    fig, axes = plt.subplots(1, len(sdes), figsize=(4.4 * len(sdes), 4.2 + 0.17 * math.ceil(len(labels) / ncol)),
                             squeeze=False, layout="constrained")
    handles = {}
    for ax, sde in zip(axes[0], sdes):
        for label in labels:
            rs = sorted((r for r in cells if r["sde"] == sde and r["method"] == label and math.isfinite(r["ratio"])),
                        key=lambda r: r["nfe"])
            if rs:
                y, se = [r["ratio"] for r in rs], [0.0 if math.isnan(r["ratio_hw"]) else r["ratio_hw"] for r in rs]
                low = [min(e, 0.95 * v) for e, v in zip(se, y)]  # stay above 0 on the log axis
                handles[label] = ax.errorbar([r["nfe"] for r in rs], y, yerr=[low, se], marker=".", capsize=2,
                                             label=f"{label} ({rs[0]['kind'].upper()})", color=colour[label],
                                             linestyle="-" if rs[0]["kind"] == "sde" else "--")
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set(xscale="log", yscale="log", xlabel="NFE (score evaluations)",
               ylabel=f"{cells[0]['metric']} / noise floor", title=f"SDE: {sde}")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))  # NFE: plain decades
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.yaxis.set_major_formatter(ticker.LogFormatter())  # plain numbers, also at minor ticks in a short range
        ax.yaxis.set_minor_formatter(ticker.LogFormatter(minor_thresholds=(1, 0.5)))
    fig.suptitle(textwrap.fill(title, 50 * len(sdes)), fontsize=10)
    fig.legend(handles=list(handles.values()), loc="outside lower center", ncol=ncol, fontsize=8,
               title="solid: SDE samplers, dashed: ODE samplers\ndotted line: the noise floor", title_fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def side_by_side(paths: list[Path], path: Path, width: float = 10.0) -> Path:
    """One PNG holding the given PNGs in a row, scaled to a common height."""
    plt = _pyplot()
    images = [plt.imread(p) for p in paths]
    ratios = [im.shape[1] / im.shape[0] for im in images]
    fig, axes = plt.subplots(1, len(images), figsize=(width, width / sum(ratios)),
                             gridspec_kw={"width_ratios": ratios}, squeeze=False)
    for ax, im in zip(axes[0], images):
        ax.imshow(im)
        ax.axis("off")
    fig.subplots_adjust(left=0, right=1, top=1, bottom=0, wspace=0.02)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def scatter(x: torch.Tensor, ref: torch.Tensor, path: Path, title: str, q: float = 0.005) -> Path:
    """Samples over held-out data on axes spanning the data's q..1-q quantiles plus a 25% margin; the
    title says how many samples fall outside the axes. D = 2: one scatter; D = 1: histograms; D >= 3:
    scatters of the pairs among the leading ``viz.MAX_DIMS`` coordinates (outside: in any shown one)."""
    from ..training.viz import MAX_DIMS, pairs, vector_axes

    plt = _pyplot()
    dim = x.shape[1]
    shown = min(dim, MAX_DIMS)
    x, ref = x[:, :shown].detach().double().cpu(), ref[:, :shown].detach().double().cpu()
    lo, hi = torch.quantile(ref, q, dim=0), torch.quantile(ref, 1 - q, dim=0)
    pad = 0.25 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    outside = int((~((x >= lo) & (x <= hi)).all(dim=1)).sum())
    note = f"{outside} of {len(x)} samples outside these axes"
    if dim == 2:
        fig, ax = plt.subplots(figsize=(5, 5.3))
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c="lightgray", label="held-out data")
        ax.scatter(x[:, 0], x[:, 1], s=2, c="tab:blue", label="samples")
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), xlabel="x[0]", ylabel="x[1]", aspect="equal")
        ax.legend(loc="upper right", markerscale=4, fontsize=8)
        ax.set_title(f"{title}\n{note}", fontsize=9)
    elif dim == 1:
        fig, ax = plt.subplots(figsize=(5, 4.3))
        edges = torch.linspace(float(lo[0]), float(hi[0]), 51).numpy()
        ax.hist(ref[:, 0].numpy(), bins=edges, density=True, color="lightgray", label="held-out data")
        ax.hist(x[:, 0].numpy(), bins=edges, density=True, histtype="step",
                color="tab:blue", label="samples")
        ax.set(xlim=(lo[0], hi[0]), xlabel="x[0]", ylabel="density")
        ax.legend(loc="upper right", fontsize=8)
        ax.set_title(f"{title}\n{note}", fontsize=9)
    else:
        fig, axes = vector_axes(plt, dim)
        for ax, (i, j) in zip(axes, pairs(dim)):
            ax.scatter(ref[:, i], ref[:, j], s=2, c="lightgray", label="held-out data")
            ax.scatter(x[:, i], x[:, j], s=2, c="tab:blue", label="samples")
            ax.set(xlim=(lo[i], hi[i]), ylim=(lo[j], hi[j]), xlabel=f"x[{i}]", ylabel=f"x[{j}]")
        axes[0].legend(loc="upper right", markerscale=4, fontsize=8)
        for ax in axes[len(pairs(dim)):]:
            ax.axis("off")
        fig.suptitle(f"{title}\n{note}", fontsize=9)
        fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def sample_figure(x: torch.Tensor, target: Target, path: Path, title: str) -> Path:
    """An image grid (first 64), or samples over held-out data (``scatter``: a scatter for D = 2,
    histograms for D = 1, pairwise scatters of the leading coordinates for D >= 3)."""
    from ..training.viz import MAX_DIMS, save_samples

    if x.ndim == 4:
        return save_samples(x[:64], path, levels=target.levels, title=title)
    if x.shape[1] > 2:
        title += f" (leading {min(x.shape[1], MAX_DIMS)} of {x.shape[1]} coordinates)"
    return scatter(x, target.reference, path, title)


def monotone_text(cells: list[dict]) -> str:
    """Whether every curve falls or stays level within noise as the steps grow (``summary.rises``)."""
    up = rises(cells)
    return (f"Every curve falls or stays level within noise ({LEVEL:.0%} intervals overlap) as the steps grow."
            if not up else "Rising beyond noise (disjoint 95% intervals) with more steps: " + "; ".join(up) + ".")


def summary_lines(target: Target, rows: list[dict], cells: list[dict], stopped: str = "") -> list[str]:
    """How the repeats stopped (``stopped``), the held-out sets, the floor's spread, the ranking at each
    step count (``summary.rank``), escape and below-the-floor warnings."""
    lines = [stopped] if stopped else []
    shared = (" Rankings compare cells within it (its error is common to every cell scored against it): their "
              "intervals leave it out, the tables' include it.") if target.shared else ""
    lines += [f"Held-out data: {target.heldout}.{shared}", floor_text(rows, cells)]
    for s in sorted({c["steps"] for c in cells}):
        lines.append(f"At {s} steps, {ranking_text(rank([c for c in cells if c['steps'] == s]))}.")
    pool = f"n = {target.n}, {'shared by' if target.shared else 'fresh for'} every repeat"
    return (lines + [monotone_text(cells)] + [f"warning: {w}" for w in escape_warnings(cells)]
            + [f"warning: {w}" for w in below_floor_warnings(cells, pool)])


def write_compare(out: Path, target: Target, rows: list[dict], shown: dict, show_steps: int,
                  nll_rows: list[dict] | None = None, heading: str = "Sampler comparison", stopped: str = "") -> dict:
    """results.csv (every repeat), summary.csv, quality_vs_nfe.png, samples_<sde>_<method>.png,
    nll.csv (with ``nll_rows``) and report.md under ``out``; returns their paths (``samples``: a dict
    keyed by (sde, method)), the summary rows (``cells``) and the summary lines (``lines``)."""
    out.mkdir(parents=True, exist_ok=True)
    cells = summarise(rows)
    title = plot_title(target, cells)
    files = {"csv": write_csv(rows, out / "results.csv", FIELDS),
             "summary": write_csv(cells, out / "summary.csv", SUMMARY_FIELDS),
             "plot": plot_quality(cells, out / "quality_vs_nfe.png", title), "samples": {}, "cells": cells}
    for (sde, label), x in shown.items():
        safe = label.replace(":", "_").replace("=", "-")
        png = try_plot(sample_figure, x, target, out / f"samples_{sde}_{safe}.png",
                       f"{target.name} / {sde} / {label}, {show_steps} steps", what=f"samples_{sde}_{safe}.png")
        if png is not None:
            files["samples"][sde, label] = png
    files["lines"] = summary_lines(target, rows, cells, stopped)
    unit = {"SW2": "sliced 2-Wasserstein distance to held-out data",
            "FD": "Frechet distance in the shipped digits classifier's features"}.get(target.metric, target.metric)
    md = [f"# {heading}: {target.name}", ""]
    if target.notes:
        md += ["Changes to what was asked:", ""] + [f"- {note}" for note in target.notes] + [""]
    md += [f"n = {target.n} samples per cell, {cells[0]['repeats']} repeats (each its own samples and floor; "
           f"held-out data: {target.heldout}); figures are mean +- the half-width of the {LEVEL:.0%} Student-t "
           f"interval over the repeats ({cells[0]['dof']} degrees of freedom). Quality: {target.metric} "
           f"({unit}); the noise floor is the quality of fresh data at the same sample size; ratio = quality / "
           "floor: 1 is as good as fresh data (below 1 can mean over-concentrated samples). NFE counts score "
           "evaluations; wall_s is the median seconds per cell, score_share the part of it inside the score, "
           "ms_per_nfe = wall / NFE. escaped: share of samples outside the data's range (vectors: beyond 3x the "
           "data's radius from its centre; images: a value outside the pixel range by more than half of it), "
           "max_norm their largest distance from the centre. Every repeat is in results.csv, the means in "
           "summary.csv.", ""]
    if not math.isnan(cells[0]["nll_gap"]):
        md += ["nll_gap: mean true NLL of the samples minus that of true samples (nats/sample; 0 is perfect).", ""]
    md += [f"- {line}" for line in files["lines"]] + [""]
    md += [f"Produced by {provenance_line(target.reference.device)}.", ""]
    md += [markdown_table(cells, compare_columns(cells)), "", "![quality against NFE](quality_vs_nfe.png)", ""]
    if nll_rows:
        fields = list(nll_rows[0])
        files["nll"] = write_csv(nll_rows, out / "nll.csv", fields)
        md += ["## Likelihood", "", "The rows of nll.csv (value +- stderr over the n held-out samples):", "",
               markdown_table(nll_rows, fields), ""]
    md += [f"## Samples at {show_steps} steps (repeat 0)", ""]
    md += [f"![{p.stem}]({p.name})" for p in files["samples"].values()] + [""]
    files["report"] = out / "report.md"
    files["report"].write_text("\n".join(md) + "\n")
    return files
