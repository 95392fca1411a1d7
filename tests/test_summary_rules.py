"""The statistics of ``evaluation.summary`` pinned by hand-computed values.

* A cell's s.e. is sqrt(sd(q_r)^2 / R + v_h) (sd with R - 1 degrees of freedom; v_h the variance of a
  held-out set shared by the repeats, 0 when each repeat has its own), and its interval is
  q +- t_{0.975, R-1} se, with t_{0.975, 1} = 12.7062047, t_{0.975, 2} = 4.3026527,
  t_{0.975, 3} = 3.1824463 (tables of Student's t).
* A cell is informative when its half-width is at most 25% of its mean. The best is the informative
  cell of lowest mean; cells whose intervals overlap the best's are tied (informative) or not resolved
  (too wide), as is a wide cell wholly below the best; the rest are behind. A winner has no tied
  and no unresolved company.
* The escaped share of a cell is the MEAN over its repeats, and a warning fires above 1%.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sde_diffusion.evaluation.summary import (ESCAPE_THRESHOLD, INFORMATIVE, LEVEL, RESOLVES_10_PERCENT,
                                              below_floor_warnings, decided, escape_warnings, floor_text, rank,
                                              ranking_text, rises, summarise, t_factor)

EPS = 2 ** -20


def _cell(method, q, hw, steps=10, dof=3, **kw):
    return dict(sde="vp", method=method, kind="sde", steps=steps, nfe=steps, metric="SW2", dof=dof, quality=q,
                quality_se=hw / 3, quality_hw=hw, ratio=q, ratio_se=hw / 3, ratio_hw=hw, escaped=0.0, max_norm=1.0,
                **kw)


def _row(repeat, quality, escaped=0.0, floor=1.0, method="heun", **kw):
    return dict(sde="vp", method=method, kind="ode", steps=20, repeat=repeat, nfe=40, metric="SW2",
                quality=quality, floor=floor, ratio=quality / floor, nll_gap=0.0, escaped=escaped,
                max_norm=3.0 + repeat, wall_s=1.0, score_s=0.5, **kw)


def test_constants_and_t_factors():
    """95% intervals, 25% informative, 10% resolved by half-widths below 5%; t table values."""
    assert LEVEL == 0.95 and INFORMATIVE == 0.25 and RESOLVES_10_PERCENT == 0.05 and ESCAPE_THRESHOLD == 0.01
    for dof, t in ((1, 12.7062047), (2, 4.3026527), (3, 3.1824463), (9, 2.2621572)):
        assert t_factor(dof) == pytest.approx(t, abs=1e-7)


def test_summarise_mean_se_and_t_interval_over_repeats():
    """quality 1.0, 1.2, 1.4, 1.8: mean 1.35; squares of deviations sum to 0.35, sd^2 = 0.35 / 3,
    se = sqrt(0.35 / 3) / 2 = 0.1707825; half-width 3.1824463 x 0.1707825 = 0.5435062 (3 dof)."""
    qs = [1.0, 1.2, 1.4, 1.8]
    (s,) = summarise([_row(r, q) for r, q in enumerate(qs)])
    assert s["repeats"] == 4 and s["dof"] == 3 and s["heldout"] == "fresh" and s["quality"] == pytest.approx(1.35)
    assert s["quality_se"] == pytest.approx(math.sqrt(0.35 / 3) / 2, rel=1e-12)
    assert s["quality_se"] == pytest.approx(np.std(qs, ddof=1) / 2, rel=1e-12)
    assert s["quality_hw"] == pytest.approx(0.5435062, abs=1e-7)
    assert s["max_norm"] == 6.0  # the largest over repeats, 3 + 3


def test_a_shared_held_out_set_adds_the_repeats_covariance_to_the_se():
    """The same repeats scored on one shared held-out set, with their figures on B = 3 resamples of it:
    repeat 0 (1, 2, 3), repeat 1 (2, 4, 6), repeat 2 (3, 3, 3), repeat 3 (1, 2, 3). Covariances over
    the resamples (B - 1 = 2 dof): Cov(r0, r1) = 2, Cov(r0, r3) = 1, Cov(r1, r3) = 2, any with r2 = 0;
    the 6 pairs sum to 5 and v_h = 2 x 5 / (4 x 3) = 0.8333333; se^2 = 0.35 / 12 + 0.8333333. Without
    resamples (fresh sets), v_h = 0."""
    import torch

    boots = [torch.tensor(v, dtype=torch.float64) for v in ([1, 2, 3], [2, 4, 6], [3, 3, 3], [1, 2, 3])]
    rows = [_row(r, q, halves_quality=b, halves_ratio=b, halves_floor=b)
            for r, (q, b) in enumerate(zip([1.0, 1.2, 1.4, 1.8], boots))]
    (s,) = summarise(rows)
    assert s["heldout"] == "shared"
    assert s["quality_se"] == pytest.approx(math.sqrt(0.35 / 12 + 10 / 12), rel=1e-12)
    assert s["ratio_hw"] == pytest.approx(3.1824463 * math.sqrt(0.35 / 12 + 10 / 12), rel=1e-7)
    # rankings compare cells within the shared set (its error is common to them): 3.1824463 x 0.1707825
    assert s["quality_within_hw"] == pytest.approx(0.5435062, abs=1e-7)
    assert rank([s]).best is None  # 0.5435 / 1.35 = 40% > 25%: not informative
    assert "within the shared held-out set" in ranking_text(rank([s]))
    # negative covariance is clamped to 0: a shared set cannot make the mean more precise
    anti = [torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])]
    (s,) = summarise([_row(r, q, halves_quality=b) for r, (q, b) in enumerate(zip([1.0, 1.2], anti))])
    assert s["quality_se"] == pytest.approx(0.1, rel=1e-12)


def test_overlap_boundary_is_inclusive_and_exact():
    """a = 1 +- 0.25 (exactly 25%: informative), b = 1.5 +- 0.25: b's low end 1.25 equals a's high
    end, so they overlap and tie; b at 1.5 + 2^-20 lies behind and a wins."""
    a = _cell("a", 1.0, 0.25)
    tie = rank([_cell("b", 1.5, 0.25), a])
    assert tie.winner is None and tie.best is a and [c["method"] for c in tie.tied] == ["a", "b"]
    assert ranking_text(tie).startswith("tied within noise (overlapping 95% Student-t intervals, 3 dof): a on vp")
    ahead = rank([_cell("b", 1.5 + EPS, 0.25), a])
    assert ahead.winner is a and ahead.tied == [a] and [c["method"] for c in ahead.behind] == ["b"]
    text = ranking_text(ahead)
    assert text.startswith("best: a on vp, 10 steps (10 NFE): SW2 1 +- 0.25, its interval clear of every other")
    assert "behind: b on vp" in text


def test_informative_boundary():
    """Half-width 0.25 of a mean 1 is informative; 0.25 + 2^-20 is not: that cell, overlapping the
    best, is 'not resolved' and no winner is named."""
    best = _cell("a", 1.0, 0.1)
    r = rank([best, _cell("b", 1.0, 0.25)])
    assert [c["method"] for c in r.tied] == ["a", "b"] and not r.unresolved
    r = rank([best, _cell("b", 1.0, 0.25 + EPS)])
    assert r.winner is None and r.tied == [best] and [c["method"] for c in r.unresolved] == ["b"]
    assert "not resolved (interval wider than +-25% of the mean" in ranking_text(r)


def test_every_cell_gets_a_verdict_and_a_wide_cell_cannot_tie():
    """Best a = 1.0 +- 0.1. b = 1.15 +- 0.1 tied; c = 11.7 +- 23 (a broken cell, its interval
    reaching 0): not resolved; d = 1.5 +- 0.1 behind; e = 0.3 +- 0.2 (wide, wholly below the best):
    not resolved; f failed (inf): behind. Every cell appears exactly once."""
    cells = [_cell("c", 11.7, 23.0), _cell("d", 1.5, 0.1), _cell("b", 1.15, 0.1), _cell("a", 1.0, 0.1),
             _cell("e", 0.3, 0.2), _cell("f", math.inf, math.nan)]
    r = rank(cells)
    assert r.best["method"] == "a" and r.winner is None
    assert [c["method"] for c in r.tied] == ["a", "b"]
    assert sorted(c["method"] for c in r.unresolved) == ["c", "e"]
    assert [c["method"] for c in r.behind] == ["d", "f"]
    assert sorted(c["method"] for c in r.tied + r.unresolved + r.behind) == list("abcdef")
    assert decided(cells) is False and decided([c for c in cells if c["method"] not in "ce"]) is True


def test_no_informative_cell_names_no_best():
    """With two repeats t = 12.7: intervals of 30% and 50% half-width; nothing is resolved."""
    r = rank([_cell("a", 1.0, 0.3, dof=1), _cell("b", 2.0, 1.0, dof=1)])
    assert r.best is None and r.winner is None and len(r.unresolved) == 2
    assert ranking_text(r).startswith("no cell resolved (95% Student-t intervals, 1 dof;")


def test_one_repeat_never_separates():
    """NaN half-width (one repeat): no interval, so nothing is resolved."""
    r = rank([_cell("a", 1.0, math.nan, dof=0), _cell("b", 100.0, math.nan, dof=0)])
    assert r.winner is None and r.best is None and len(r.unresolved) == 2


def test_rises_needs_disjoint_intervals():
    a = _cell("a", 1.0, 0.25)
    assert rises([a, _cell("a", 1.5, 0.25, steps=20)]) == []
    assert rises([a, _cell("a", 1.5 + EPS, 0.25, steps=20)]) == ["a on vp from 10 to 20 steps"]


def test_below_floor_warning_needs_the_whole_interval_below_one():
    """ratio 0.8 +- 0.1 (high end 0.9) warns with the likely causes; 0.9 +- 0.1 (high end 1.0) does not."""
    (line,) = below_floor_warnings([_cell("a", 0.8, 0.1), _cell("b", 0.9, 0.1)], "n = 600, shared by every repeat")
    assert line.startswith("a on vp at 10 steps: ratio 0.8 +- 0.1 is below 1 beyond noise")
    assert "held-out pool too small" in line and "n = 600, shared" in line and "memorised" in line


def test_escaped_share_is_the_mean_over_repeats():
    """Escaped shares 0.0, 0.005, 0.022: the cell's share is 0.009, below 1% (the max would warn).
    Shares 0.0, 0.012, 0.024: mean 0.012 > 0.01 warns, printed as 1.2%."""
    (s,) = summarise([_row(r, 1.0, escaped=e) for r, e in enumerate([0.0, 0.005, 0.022])])
    assert s["escaped"] == pytest.approx(0.009, abs=1e-15)
    assert escape_warnings([s]) == []
    (s,) = summarise([_row(r, 1.0, escaped=e) for r, e in enumerate([0.0, 0.012, 0.024])])
    (line,) = escape_warnings([s])
    assert line.startswith("heun on vp at 20 steps: 1.2% of the samples escaped the data's range (largest norm 5)")


def test_escape_threshold_is_strict_and_default():
    cell = dict(_cell("heun", 1.0, 0.1), escaped=0.01)
    assert escape_warnings([cell]) == []
    assert len(escape_warnings([dict(cell, escaped=0.010001)])) == 1
    assert len(escape_warnings([cell], threshold=0.005)) == 1


def _floor_rows(floors):
    return [dict(repeat=r, floor=f) for r, f in enumerate(floors)]


def test_floor_text_hand_values():
    """Floors 1.0, 1.1, 0.9, 1.0: mean 1, sd = sqrt(0.02 / 3) = 0.0816497, se = 0.0408248, half-width
    3.1824463 x 0.0408248 = 0.129923 (13.0% > 5%): too large. Repeats for a 5% half-width at this sd:
    the least R with t_{0.975, R-1} 0.0816497 / sqrt(R) <= 0.05: R = 12 gives 2.2009852 x 0.0816497 /
    3.4641016 = 0.05188 (no), R = 13 gives 2.1788128 x 0.0816497 / 3.6055513 = 0.04934 (yes): 13.
    Cells: relative half-widths 0.03 and 0.02 / 2, median 2.0%: enough."""
    cells = [_cell("a", 1.0, 0.03), _cell("b", 2.0, 0.02), _cell("c", math.inf, math.nan)]
    text = floor_text(_floor_rows([1.0, 1.1, 0.9, 1.0]), cells)
    assert text.startswith("Noise floor 1 +- 0.13 over 4 repeats (95% Student-t, 3 dof), relative half-width 13.0% ")
    assert "too large to separate methods that differ by 10% (that needs below 5%, about 13 repeats)" in text
    assert text.endswith("median relative half-width of 2.0% (the rankings use it): enough to separate methods "
                         "that differ by 10% (that needs below 5%).")


def test_one_repeat_floor_has_no_interval():
    assert floor_text(_floor_rows([1.0]), [_cell("a", 1.0, math.nan)]).startswith(
        "Noise floor 1 (one repeat: no interval")
