"""Summaries of repeated ``compare`` runs: Student-t intervals per cell, rankings that cannot be won
by noise, escaped-sample and below-the-floor warnings, and what the intervals can resolve.

A cell (sde, method, steps) with R repeats q_1..q_R is reported as the mean q = sum_r q_r / R, its
standard error se = sqrt(sd(q_r)^2 / R + v_h) and the 95% Student-t interval

    q +- t_{0.975, R-1} se        (R - 1 degrees of freedom; ``dof``, ``*_hw`` the half-width)

where v_h is 0 when every repeat has its own held-out set. When all repeats share one, their errors
share a part that averaging cannot remove: v_h is its estimate, the mean covariance between two
different repeats' figures over the same B random halves of the shared set (``halves_*`` of the rows),

    v_h = max(0, sum_{r != s} Cov_b(q_rb, q_sb) / (R (R - 1))).

Every cell of a ranking is scored against the same held-out sets, so the shared error is common to
them and a ranking compares cells within it: ``quality_within_hw`` is quality's half-width without
v_h (equal to ``quality_hw`` with fresh sets). A cell is *informative* when that half-width is at most
INFORMATIVE of its mean. At one step count (``rank``):

  best        the informative cell of lowest mean;
  tied        informative cells whose interval overlaps the best's (the best among them);
  not resolved  cells too wide to be informative whose interval reaches down to the best's;
  behind      cells whose interval lies wholly above the best's;
  winner      the best, when no other cell is tied or not resolved.

Wall time is the median of the repeats.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch
from scipy import stats

LEVEL = 0.95
INFORMATIVE = 0.25  # the largest relative half-width of an interval that may rank a cell
# two cells of relative half-width h have disjoint intervals at a 10% difference iff 2 h < 0.10
RESOLVES_10_PERCENT = 0.05
ESCAPE_THRESHOLD = 0.01  # share of samples outside the data's range that triggers a warning
KEYS = ("sde", "method", "kind", "steps")
PM = ("quality", "floor", "ratio", "nll_gap")  # the figures given with intervals
SUMMARY_FIELDS = ["sde", "method", "kind", "steps", "repeats", "dof", "heldout", "nfe", "metric",
                  *(f"{k}{s}" for k in PM for s in ("", "_se", "_hw")), "quality_within_hw", "escaped", "max_norm", "wall_s",
                  "score_share", "ms_per_nfe"]


def t_factor(dof: int) -> float:
    """t_{(1 + LEVEL) / 2, dof}: the half-width of the LEVEL interval in standard errors (NaN for dof < 1)."""
    return float(stats.t.ppf(0.5 + LEVEL / 2, dof)) if dof >= 1 else math.nan


def shared_variance(halves: list) -> float:
    """v_h from the repeats' figures on the same random halves (R tensors of B values; module docstring);
    0 when there are none or fewer than two repeats."""
    if len(halves) < 2 or any(b is None for b in halves):
        return 0.0
    c = torch.cov(torch.stack([torch.as_tensor(b, dtype=torch.float64) for b in halves]))
    r = len(halves)
    return max(0.0, float((c.sum() - c.diagonal().sum()) / (r * (r - 1))))


def interval(values: list[float], shared_var: float = 0.0) -> tuple[float, float, float]:
    """(mean, s.e., LEVEL half-width with len(values) - 1 dof) of repeat values; ``shared_var`` (the
    variance common to every repeat) adds to the s.e.^2. Any NaN: all NaN; any inf: (inf, NaN, NaN)."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan, math.nan
    if any(math.isinf(v) for v in values):
        return math.inf, math.nan, math.nan
    r = len(values)
    mean = math.fsum(values) / r
    if r < 2:
        return mean, math.nan, math.nan
    se = math.sqrt(statistics.variance(values) / r + shared_var)
    return mean, se, t_factor(r - 1) * se


def summarise(rows: list[dict]) -> list[dict]:
    """One row per cell (``SUMMARY_FIELDS``) from the per-repeat rows of ``run_compare``: mean, s.e.
    and half-width of quality, floor, ratio and NLL gap (with the shared held-out set's variance where
    the rows carry one, ``heldout`` = "shared", else "fresh"); the mean escaped share and the largest
    norm over repeats; the median wall time, the median share of it inside the score, ms per NFE."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault(tuple(r[k] for k in KEYS), []).append(r)
    out = []
    for key, rs in cells.items():
        shared = any(r.get("halves_quality") is not None for r in rs)
        s = dict(zip(KEYS, key), repeats=len(rs), dof=len(rs) - 1, heldout="shared" if shared else "fresh",
                 metric=rs[0]["metric"], nfe=int(statistics.median(r["nfe"] for r in rs)))
        for name in PM:
            hv = shared_variance([r.get(f"halves_{name}") for r in rs])
            s[name], s[f"{name}_se"], s[f"{name}_hw"] = interval([r[name] for r in rs], hv)
        s["quality_within_hw"] = interval([r["quality"] for r in rs])[2]
        s["escaped"] = statistics.fmean(r["escaped"] for r in rs)
        s["max_norm"] = max(r["max_norm"] for r in rs)
        wall = statistics.median(r["wall_s"] for r in rs)
        s["wall_s"] = wall
        s["score_share"] = statistics.median(r["score_s"] / r["wall_s"] for r in rs) if wall > 0 else math.nan
        s["ms_per_nfe"] = 1000 * wall / s["nfe"]
        out.append(s)
    return out


def pm(mean: float, half: float) -> str:
    """'0.0123 +- 0.0004' (4 significant digits of the mean, 2 of the half-width)."""
    if not math.isfinite(mean):
        return "inf" if math.isinf(mean) else "nan"
    return f"{mean:.4g}" if math.isnan(half) else f"{mean:.4g} +- {half:.2g}"


def _half(c: dict, key: str) -> float:
    """The half-width a ranking uses: within the held-out data where the cell has one, else the whole."""
    return c.get(f"{key}_within_hw", c[f"{key}_hw"])


def bounds(c: dict, key: str = "quality") -> tuple[float, float]:
    """The cell's LEVEL interval as rankings use it (-inf, inf without one; (inf, inf) for a failed cell)."""
    q, hw = c[key], _half(c, key)
    if math.isinf(q):
        return math.inf, math.inf
    return (-math.inf, math.inf) if math.isnan(hw) else (q - hw, q + hw)


def informative(c: dict, key: str = "quality") -> bool:
    """Finite, with an interval no wider than INFORMATIVE of the mean on either side."""
    q, hw = c[key], _half(c, key)
    return math.isfinite(q) and q != 0 and math.isfinite(hw) and hw <= INFORMATIVE * abs(q)


def _overlap(a: dict, b: dict, key: str) -> bool:
    (lo_a, hi_a), (lo_b, hi_b) = bounds(a, key), bounds(b, key)
    return lo_a <= hi_b and lo_b <= hi_a


@dataclass(frozen=True)
class Ranking:
    """The verdicts at one step count (see the module docstring); ``ordered``: every cell, by mean."""

    best: dict | None
    winner: dict | None
    tied: list[dict]
    unresolved: list[dict]
    behind: list[dict]
    ordered: list[dict]


def rank(cells: list[dict], key: str = "quality") -> Ranking:
    """Rank summary rows by ``key`` (lower is better) with their LEVEL intervals (``bounds``)."""
    if not cells:
        raise ValueError("rank needs at least one summary row.")
    ordered = sorted(cells, key=lambda c: c[key])
    best = next((c for c in ordered if informative(c, key)), None)
    if best is None:
        return Ranking(None, None, [], [c for c in ordered if math.isfinite(c[key])],
                       [c for c in ordered if not math.isfinite(c[key])], ordered)
    lo_best = bounds(best, key)[0]
    near = [c for c in ordered if _overlap(best, c, key) or (c is not best and bounds(c, key)[1] < lo_best)]
    tied = [c for c in near if informative(c, key) and _overlap(best, c, key)]
    unresolved = [c for c in near if not any(c is t for t in tied)]
    behind = [c for c in ordered if not any(c is x for x in near)]
    winner = best if len(tied) == 1 and not unresolved else None
    return Ranking(best, winner, tied, unresolved, behind, ordered)


def cell_name(c: dict) -> str:
    return f"{c['method']} on {c['sde']}, {c['steps']} steps ({c['nfe']} NFE)"


def _dof(cells: list[dict]) -> str:
    dofs = sorted({c["dof"] for c in cells})
    return f"{'/'.join(map(str, dofs))} dof"


def ranking_text(ranking: Ranking, key: str = "quality", label: str | None = None) -> str:
    """One line naming every cell's verdict: 'best: X (q +- hw), its 95% interval clear of every
    other's' or 'tied within noise (overlapping 95% intervals ...): ...', then 'not resolved (...)' and
    'behind: ...', with the degrees of freedom."""
    label = label or ranking.ordered[0]["metric"]
    fig = lambda c: f"{cell_name(c)}: {label} {pm(c[key], _half(c, key))}"  # noqa: E731
    within = any(c.get("heldout") == "shared" for c in ranking.ordered) and f"{key}_within_hw" in ranking.ordered[0]
    level = (f"{LEVEL:.0%} Student-t intervals, {_dof(ranking.ordered)}"
             + (", within the shared held-out set" if within else ""))
    parts = []
    if ranking.best is None:
        parts.append(f"no cell resolved ({level}; every interval is wider than +-{INFORMATIVE:.0%} of its mean, "
                     f"so more repeats are needed): " + "; ".join(fig(c) for c in ranking.unresolved))
    elif ranking.winner is not None:
        parts.append(f"only {fig(ranking.winner)} ({level})" if len(ranking.ordered) == 1 else
                     f"best: {fig(ranking.winner)}, its interval clear of every other cell's ({level})")
    else:
        parts.append(f"tied within noise (overlapping {level}): " + "; ".join(fig(c) for c in ranking.tied))
    if ranking.best is not None and ranking.unresolved:
        parts.append(f"not resolved (interval wider than +-{INFORMATIVE:.0%} of the mean, reaching the best's): "
                     + "; ".join(fig(c) for c in ranking.unresolved))
    if ranking.behind:
        parts.append("behind: " + "; ".join(fig(c) for c in ranking.behind))
    return ". ".join(parts)


def decided(cells: list[dict], key: str = "quality") -> bool:
    """Whether every step count's ranking has a best and no cell left "not resolved"."""
    groups = {c["steps"] for c in cells}
    return all((r := rank([c for c in cells if c["steps"] == s], key)).best is not None and not r.unresolved
               for s in groups)


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


def below_floor_warnings(cells: list[dict], pool: str) -> list[str]:
    """One line per cell whose ratio's interval lies wholly below 1 (better than fresh data beyond
    noise), with its likely causes; ``pool`` describes the held-out set (size, fresh or shared)."""
    out = []
    for c in cells:
        lo, hi = bounds(c, "ratio")
        if hi < 1:
            out.append(f"{c['method']} on {c['sde']} at {c['steps']} steps: ratio {pm(c['ratio'], c['ratio_hw'])} "
                       f"is below 1 beyond noise (closer to the held-out data than fresh data are). Likely "
                       f"causes: a held-out pool too small to tell them apart ({pool}); a floor biased at this n "
                       f"(the training data differ from the held-out data); samples over-concentrated on the "
                       f"data's modes; or a model that memorised its training points.")
    return out


def repeats_needed(values: list[float], rel: float) -> int:
    """The smallest R' whose t half-width t_{0.975, R'-1} sd / sqrt(R') is at most rel x the mean,
    at these values' sd and mean."""
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    r = 2
    while r < 10_000 and t_factor(r - 1) * sd / math.sqrt(r) > rel * abs(mean):
        r += 1
    return r


def floor_text(rows: list[dict], cells: list[dict]) -> str:
    """The floor's interval and relative half-width, and the cells' median relative half-width of
    quality (what the rankings use), each said to resolve a 10% difference or not."""
    per_repeat = {r["repeat"]: r for r in rows}
    floors = [r["floor"] for r in per_repeat.values()]
    shared = shared_variance([r.get("halves_floor") for r in per_repeat.values()])
    f, _, hw = interval(floors, shared)
    if math.isnan(hw):
        return f"Noise floor {f:.4g} (one repeat: no interval; use --repeats >= 2)."
    need = RESOLVES_10_PERCENT

    def verdict(rel: float, values: list[float] | None = None) -> str:
        if rel <= need:
            return f"enough to separate methods that differ by 10% (that needs below {need:.0%})"
        more = f", about {repeats_needed(values, need)} repeats" if values and not shared else ""
        return f"too large to separate methods that differ by 10% (that needs below {need:.0%}{more})"
    rel = hw / f
    cell_rel = statistics.median([_half(c, "quality") / c["quality"] for c in cells if math.isfinite(c["quality"])
                                  and c["quality"] > 0 and math.isfinite(_half(c, "quality"))] or [math.nan])
    return (f"Noise floor {pm(f, hw)} over {len(floors)} repeats ({LEVEL:.0%} Student-t, {len(floors) - 1} dof), "
            f"relative half-width {rel:.1%} (the ratio's interval includes it): {verdict(rel, floors)}. The cells' "
            f"quality has a median relative half-width of {cell_rel:.1%} (the rankings use it): {verdict(cell_rel)}.")


def rises(cells: list[dict], key: str = "ratio") -> list[str]:
    """Curves that rise beyond noise with more steps: for each (sde, method), consecutive step
    counts a < b whose intervals are disjoint with b above (more steps should not be worse)."""
    out = []
    for sde, method in dict.fromkeys((c["sde"], c["method"]) for c in cells):
        curve = sorted((c for c in cells if c["sde"] == sde and c["method"] == method), key=lambda c: c["steps"])
        for a, b in zip(curve, curve[1:]):
            if bounds(b, key)[0] > bounds(a, key)[1]:
                out.append(f"{method} on {sde} from {a['steps']} to {b['steps']} steps")
    return out
