"""Reports of ``sde-diffusion compare`` and ``demo``: aligned text tables, results.csv, report.md,
quality_vs_nfe.png (log-log; SDE samplers solid, ODE samplers dashed, as the registry declares
their kind) and one sample figure per method (image grid, or scatter over held-out data)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from .compare import FIELDS, Target

NLL_COLUMNS = ["sde", "estimate", "value", "stderr", "unit", "n"]


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.4g}")
    return str(v)


def text_table(rows: list[dict], columns: list[str]) -> str:
    """Plain aligned columns (numbers right-aligned)."""
    cells = [[_fmt(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def markdown_table(rows: list[dict], columns: list[str], headers: list[str] | None = None) -> str:
    head = headers or columns
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def compare_columns(rows: list[dict]) -> list[str]:
    """FIELDS without the NLL gap where no row has one, and without the constant metric name."""
    drop = {"metric"} | ({"nll_gap"} if all(math.isnan(r["nll_gap"]) for r in rows) else set())
    return [c for c in FIELDS if c not in drop]


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


def plot_quality(rows: list[dict], path: Path, title: str) -> Path:
    """quality / floor against NFE on log-log axes, one panel per SDE, one curve per method."""
    plt = _pyplot()
    sdes = list(dict.fromkeys(r["sde"] for r in rows))
    labels = list(dict.fromkeys(r["method"] for r in rows))
    colour = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}  # one colour per method
    fig, axes = plt.subplots(1, len(sdes), figsize=(4.4 * len(sdes), 3.9), squeeze=False)
    for ax, sde in zip(axes[0], sdes):
        for label in dict.fromkeys(r["method"] for r in rows if r["sde"] == sde):
            rs = sorted((r for r in rows if r["sde"] == sde and r["method"] == label and math.isfinite(r["ratio"])),
                        key=lambda r: r["nfe"])
            if rs:
                ax.plot([r["nfe"] for r in rs], [r["ratio"] for r in rs], marker=".", label=label, color=colour[label],
                        linestyle="-" if rs[0]["kind"] == "sde" else "--")
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set(xscale="log", yscale="log", xlabel="NFE (score evaluations)",
               ylabel=f"{rows[0]['metric']} / noise floor", title=f"{title} / {sde}")
    axes[0][-1].legend(fontsize=7, title="solid: SDE, dashed: ODE", title_fontsize=7)
    fig.tight_layout()
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


def sample_figure(x: torch.Tensor, target: Target, path: Path, title: str) -> Path:
    """An image grid (first 64), or a scatter over held-out data (first two coordinates)."""
    from ..training.viz import save_samples

    if x.ndim == 4:
        return save_samples(x[:64], path, levels=target.levels, title=title)
    ref = target.reference[: len(x)]
    if x.shape[1] != 2:
        title += " (first two coordinates)"
    return save_samples(x[:, :2], path, reference=ref[:, :2], title=title)


def write_compare(out: Path, target: Target, rows: list[dict], shown: dict, show_steps: int,
                  nll_rows: list[dict] | None = None, heading: str = "Sampler comparison") -> dict:
    """results.csv, quality_vs_nfe.png, samples_<sde>_<method>.png and report.md under ``out``; returns
    their paths (``samples``: a dict keyed by (sde, method))."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": write_csv(rows, out / "results.csv", FIELDS),
             "plot": plot_quality(rows, out / "quality_vs_nfe.png", target.name)}
    files["samples"] = {}
    for (sde, label), x in shown.items():
        safe = label.replace(":", "_").replace("=", "-")
        files["samples"][sde, label] = sample_figure(x, target, out / f"samples_{sde}_{safe}.png",
                                                     f"{sde} / {label}, {show_steps} steps")
    unit = {"SW2": "sliced 2-Wasserstein distance to held-out data",
            "FD": "Frechet distance in the shipped digits classifier's features"}.get(target.metric, target.metric)
    md = [f"# {heading}: {target.name}", "",
          f"Quality: {target.metric} ({unit}); noise floor {target.floor:.4g} (fresh data at the same sample "
          "size); ratio = quality / floor: 1 is as good as fresh data (below 1 can mean over-concentrated "
          "samples). NFE counts score evaluations, wall_s is seconds.", ""]
    if not math.isnan(rows[0]["nll_gap"]):
        md += ["nll_gap: mean true NLL of the samples minus that of true samples (nats/sample; 0 is perfect).", ""]
    md += [markdown_table(rows, compare_columns(rows)), "", "![quality against NFE](quality_vs_nfe.png)", ""]
    if nll_rows:
        files["nll"] = write_csv(nll_rows, out / "nll.csv", list(nll_rows[0]))
        md += ["## Likelihood", "", markdown_table(nll_rows, NLL_COLUMNS + ["seconds"]), ""]
    md += [f"## Samples at {show_steps} steps", ""]
    md += [f"![{p.stem}]({p.name})" for p in files["samples"].values()] + [""]
    md += [f"- {note}" for note in target.notes]
    files["report"] = out / "report.md"
    files["report"].write_text("\n".join(md) + "\n")
    return files
