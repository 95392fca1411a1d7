"""Summaries of repeated ``compare`` runs: mean +- standard error per cell, rankings that name a
winner only beyond noise, escaped-sample warnings, and what the floor's own spread can resolve.

A cell (sde, method, steps) with R independent repeats q_1..q_R is reported as the mean
q = sum_r q_r / R with standard error se = sd(q_r) / sqrt(R). Two cells a, b differ beyond noise when

    |q_a - q_b| > SEPARATION * sqrt(se_a^2 + se_b^2),   SEPARATION = 2

(about a 5% two-sided false alarm for normal errors; cells sharing prior noise are positively
correlated, which makes the test conservative). Wall time is the median of the repeats.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch

from .nll_table import mean_se

SEPARATION = 2.0
ESCAPE_THRESHOLD = 0.01  # share of samples outside the data's range that triggers a warning
# the relative s.e. of a cell that lets SEPARATION combined s.e. resolve a 10% difference
RESOLVES_10_PERCENT = 0.10 / (SEPARATION * math.sqrt(2))
KEYS = ("sde", "method", "kind", "steps")
SUMMARY_FIELDS = ["sde", "method", "kind", "steps", "repeats", "nfe", "metric", "quality", "quality_se", "floor",
                  "floor_se", "ratio", "ratio_se", "nll_gap", "nll_gap_se", "escaped", "max_norm", "wall_s",
                  "score_share", "ms_per_nfe"]


def _mean_se(values: list[float]) -> tuple[float, float]:
    """(mean, s.e.) over repeats; (NaN, NaN) if any is NaN (no such figure), (inf, NaN) if any is inf."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    if any(math.isinf(v) for v in values):
        return math.inf, math.nan
    return mean_se(torch.tensor(values, dtype=torch.float64))


def summarise(rows: list[dict]) -> list[dict]:
    """One row per cell (``SUMMARY_FIELDS``) from the per-repeat rows of ``run_compare``: mean and
    s.e. of quality, floor, ratio and NLL gap; the mean escaped share and the largest norm over repeats; the
    median wall time, the median share of it spent inside the score, and the milliseconds per NFE."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault(tuple(r[k] for k in KEYS), []).append(r)
    out = []
    for key, rs in cells.items():
        s = dict(zip(KEYS, key), repeats=len(rs), metric=rs[0]["metric"],
                 nfe=int(statistics.median(r["nfe"] for r in rs)))
        for name in ("quality", "floor", "ratio", "nll_gap"):
            s[name], s[f"{name}_se"] = _mean_se([r[name] for r in rs])
        s["escaped"] = statistics.fmean(r["escaped"] for r in rs)
        s["max_norm"] = max(r["max_norm"] for r in rs)
        wall = statistics.median(r["wall_s"] for r in rs)
        s["wall_s"] = wall
        s["score_share"] = statistics.median(r["score_s"] / r["wall_s"] for r in rs) if wall > 0 else math.nan
        s["ms_per_nfe"] = 1000 * wall / s["nfe"]
        out.append(s)
    return out


def pm(mean: float, se: float) -> str:
    """'0.0123 +- 0.0004' (4 significant digits of the mean, 2 of the s.e.)."""
    if not math.isfinite(mean):
        return "inf" if math.isinf(mean) else "nan"
    return f"{mean:.4g}" if math.isnan(se) else f"{mean:.4g} +- {se:.2g}"


@dataclass(frozen=True)
class Ranking:
    """``winner``: the best cell when it separates from the runner-up (else None); ``tied``: the
    cells within noise of the best (the winner alone when there is one); ``ordered``: all, best first."""

    winner: dict | None
    tied: list[dict]
    ordered: list[dict]


def _close(a: dict, b: dict, key: str) -> bool:
    se = math.hypot(a[f"{key}_se"], b[f"{key}_se"])
    return not abs(b[key] - a[key]) > SEPARATION * se  # NaN s.e. (one repeat): never separated


def rank(cells: list[dict], key: str = "quality") -> Ranking:
    """Rank summary rows by ``key`` (lower is better) with its ``key_se``: a winner only when its
    mean is below the runner-up's by more than SEPARATION combined s.e.; otherwise the tied set is
    every cell within SEPARATION combined s.e. of the best."""
    if not cells:
        raise ValueError("rank needs at least one summary row.")
    ordered = sorted(cells, key=lambda c: c[key])
    best = ordered[0]
    tied = [c for c in ordered if _close(best, c, key)]
    return Ranking(best if len(tied) == 1 else None, tied, ordered)


def cell_name(c: dict) -> str:
    return f"{c['method']} on {c['sde']}, {c['steps']} steps ({c['nfe']} NFE)"


def ranking_text(ranking: Ranking, key: str = "quality", label: str | None = None) -> str:
    """One line: 'best: X (q +- se), ahead of Y (q +- se) by more than 2 combined s.e.' or
    'tied within noise (2 combined s.e.): X (...), Y (...)'."""
    label = label or ranking.ordered[0]["metric"]
    fig = lambda c: f"{cell_name(c)}: {label} {pm(c[key], c[key + '_se'])}"  # noqa: E731
    if ranking.winner is not None:
        if len(ranking.ordered) == 1:
            return f"only {fig(ranking.winner)}"
        return (f"best: {fig(ranking.winner)}, ahead of {fig(ranking.ordered[1])} by more than "
                f"{SEPARATION:g} combined s.e.")
    return f"tied within noise ({SEPARATION:g} combined s.e.): " + "; ".join(fig(c) for c in ranking.tied)


def escape_warnings(cells: list[dict], threshold: float = ESCAPE_THRESHOLD) -> list[str]:
    """One line per cell whose escaped share exceeds ``threshold``, naming method, SDE and steps
    with the likely causes."""
    out = []
    for c in cells:
        if c["escaped"] > threshold:
            cause = ("the probability-flow ODE carries prior-tail points outward where the score is wrong "
                     "off the data (an under-trained model); judge ODE samplers on a well-trained model"
                     if c["kind"] == "ode" else "too few steps for this SDE, or a score that is wrong far "
                     "from the data")
            out.append(f"{c['method']} on {c['sde']} at {c['steps']} steps: {c['escaped']:.1%} of the samples "
                       f"escaped the data's range (largest norm {c['max_norm']:.3g}); likely cause: {cause}.")
    return out


def floor_text(rows: list[dict], cells: list[dict]) -> str:
    """The floor with its s.e. over repeats and its relative s.e., and the cells' median relative
    s.e. of quality (what the rankings use), each said to resolve a 10% difference or not."""
    floors = list({r["repeat"]: r["floor"] for r in rows}.values())
    f, se = _mean_se(floors)
    if math.isnan(se):
        return f"Noise floor {f:.4g} (one repeat: no interval; use --repeats >= 2)."
    need = RESOLVES_10_PERCENT
    verdict = lambda rel: (f"enough to separate methods that differ by 10% (that needs below {need:.1%})"  # noqa: E731
                           if rel <= need else f"too large to separate methods that differ by 10% (that needs "
                           f"below {need:.1%}, about {math.ceil(len(floors) * (rel / need) ** 2)} repeats)")
    rel = se / f
    cell_rel = statistics.median([c["quality_se"] / c["quality"] for c in cells if math.isfinite(c["quality"])
                                  and c["quality"] > 0 and math.isfinite(c["quality_se"])] or [math.nan])
    return (f"Noise floor {pm(f, se)} over {len(floors)} repeats, relative s.e. {rel:.1%} (the ratio's s.e. "
            f"includes it): {verdict(rel)}. The cells' quality has a median relative s.e. of {cell_rel:.1%} "
            f"(the rankings use it): {verdict(cell_rel)}.")


def rises(cells: list[dict], key: str = "ratio") -> list[str]:
    """Curves that rise beyond noise with more steps: for each (sde, method), consecutive step
    counts a < b with mean(b) - mean(a) > SEPARATION combined s.e. (more steps should not be worse)."""
    out = []
    for sde, method in dict.fromkeys((c["sde"], c["method"]) for c in cells):
        curve = sorted((c for c in cells if c["sde"] == sde and c["method"] == method), key=lambda c: c["steps"])
        for a, b in zip(curve, curve[1:]):
            if not _close(a, b, key) and b[key] > a[key]:
                out.append(f"{method} on {sde} from {a['steps']} to {b['steps']} steps")
    return out
