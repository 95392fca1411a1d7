"""The statistics of ``evaluation.summary`` pinned by hand-computed values.

* A cell's s.e. is sd(q_r) / sqrt(R) (sd with R - 1 degrees of freedom).
* Two cells separate when |q_a - q_b| > SEPARATION sqrt(se_a^2 + se_b^2), SEPARATION = 2: the
  s.e. of a difference of independent means adds in quadrature (never se_a + se_b).
* The escaped share of a cell is the MEAN over its repeats (a share of all its samples), and a
  warning fires when it exceeds ESCAPE_THRESHOLD = 0.01.
* Two cells of relative s.e. r differ by 10% beyond noise when 0.10 > 2 sqrt(r^2 + r^2) = 2 sqrt(2) r,
  i.e. r < 0.10 / (2 sqrt 2) = 0.0353553...; R repeats at relative s.e. r need about
  R (r / 0.0354)^2 repeats (s.e. ~ 1 / sqrt(R)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sde_diffusion.evaluation import summary
from sde_diffusion.evaluation.summary import (ESCAPE_THRESHOLD, RESOLVES_10_PERCENT, SEPARATION, escape_warnings,
                                              floor_text, rank, ranking_text, rises, summarise)


def _cell(method, q, se, steps=10, **kw):
    return dict(sde="vp", method=method, kind="sde", steps=steps, nfe=steps, metric="SW2", quality=q,
                quality_se=se, ratio=q, ratio_se=se, escaped=0.0, max_norm=1.0, **kw)


def _row(repeat, quality, escaped=0.0, floor=1.0, method="heun"):
    return dict(sde="vp", method=method, kind="ode", steps=20, repeat=repeat, nfe=40, metric="SW2",
                quality=quality, floor=floor, ratio=quality / floor, nll_gap=0.0, escaped=escaped,
                max_norm=3.0 + repeat, wall_s=1.0, score_s=0.5)


def test_constants():
    """SEPARATION = 2; ESCAPE_THRESHOLD = 1%; 0.10 / (2 sqrt 2) = 0.10 / 2.8284271247 = 0.0353553390593."""
    assert SEPARATION == 2.0 and ESCAPE_THRESHOLD == 0.01
    assert RESOLVES_10_PERCENT == pytest.approx(0.0353553390593, rel=1e-11)


def test_summarise_mean_and_se_over_repeats():
    """quality 1.0, 1.2, 1.4, 1.8: mean 5.4 / 4 = 1.35; deviations -0.35, -0.15, 0.05, 0.45, squares
    0.1225 + 0.0225 + 0.0025 + 0.2025 = 0.35, sd^2 = 0.35 / 3 (R - 1 dof), se = sqrt(0.35 / 3) / 2
    = 0.1707825; numpy's std(ddof=1) / sqrt(4) agrees."""
    qs = [1.0, 1.2, 1.4, 1.8]
    (s,) = summarise([_row(r, q) for r, q in enumerate(qs)])
    assert s["repeats"] == 4 and s["quality"] == pytest.approx(1.35)
    assert s["quality_se"] == pytest.approx(math.sqrt(0.35 / 3) / 2, rel=1e-12)
    assert s["quality_se"] == pytest.approx(np.std(qs, ddof=1) / 2, rel=1e-12)
    assert s["max_norm"] == 6.0  # the largest over repeats, 3 + 3


def test_combined_se_is_quadrature_hand_values():
    """se 0.3 and 0.4 combine to sqrt(0.09 + 0.16) = 0.5, so SEPARATION x 0.5 = 1.0 is the gap to
    beat: 1.1 separates, 0.9 does not. (Summed s.e. 0.7 would need 1.4: 1.1 would tie.)"""
    a = _cell("a", 1.0, 0.3)
    ahead = rank([_cell("b", 2.1, 0.4), a])
    assert ahead.winner is a and ahead.tied == [a]
    text = ranking_text(ahead)
    assert text.startswith("best: a on vp, 10 steps (10 NFE): SW2 1 +- 0.3, ahead of b on vp") \
        and text.endswith("by more than 2 combined s.e.")
    tie = rank([_cell("b", 1.9, 0.4), a])
    assert tie.winner is None and [c["method"] for c in tie.tied] == ["a", "b"]
    assert ranking_text(tie).startswith("tied within noise (2 combined s.e.)")


def test_exactly_two_combined_se_is_not_ahead():
    """"More than" 2 combined s.e.: se 0.75 and 1.0 combine to exactly 1.25 (3-4-5, all exact in
    binary), so a gap of exactly 2.5 ties and 2.5 + 2^-20 separates; the rises rule likewise."""
    a = _cell("a", 1.0, 0.75)
    assert rank([a, _cell("b", 3.5, 1.0)]).winner is None
    assert rank([a, _cell("b", 3.5 + 2 ** -20, 1.0)]).winner is a
    assert rises([a, _cell("a", 3.5, 1.0, steps=20)]) == []
    assert rises([a, _cell("a", 3.5 + 2 ** -20, 1.0, steps=20)]) == ["a on vp from 10 to 20 steps"]


def test_tied_set_is_every_cell_within_two_combined_se_of_the_best():
    """Best 1.0 +- 0.3; b 1.9 +- 0.4 (gap 0.9 < 2 x 0.5), c 2.2 +- 0.4 (1.2 > 1.0), d 1.7 +- 0.0
    (0.7 > 2 x 0.3 = 0.6): tied = best and b only; ordered by mean."""
    cells = [_cell("c", 2.2, 0.4), _cell("d", 1.7, 0.0), _cell("b", 1.9, 0.4), _cell("a", 1.0, 0.3)]
    r = rank(cells)
    assert r.winner is None
    assert [c["method"] for c in r.tied] == ["a", "b"]
    assert [c["method"] for c in r.ordered] == ["a", "d", "b", "c"]


def test_winner_flips_exactly_at_the_analytic_boundary_as_one_se_is_scaled():
    """a = 1.0 +- 0.3, b = 1.0 + gap +- 0.4 k. The rule names a winner iff
    gap > 2 sqrt(0.09 + 0.16 k^2), i.e. k < k* = sqrt(((gap / 2)^2 - 0.09) / 0.16). For gap = 1.0
    that is k* = sqrt((0.25 - 0.09) / 0.16) = 1; for gap = 1.6, k* = sqrt((0.64 - 0.09) / 0.16)
    = sqrt(3.4375) = 1.854. Sweep k on a grid of step 0.01 (offset from k*) and require the
    verdict to change once, between the two grid values bracketing k*. (Summed s.e. would put the
    boundary at (gap / 2 - 0.3) / 0.4 = 0.5 and 1.25.)"""
    for gap, k_star in ((1.0, 1.0), (1.6, math.sqrt(3.4375))):
        ks = np.arange(0.005, 3.0, 0.01)
        ks = ks[np.abs(ks - k_star) > 1e-3]
        a = _cell("a", 1.0, 0.3)
        wins = np.array([rank([a, _cell("b", 1.0 + gap, 0.4 * k)]).winner is a for k in ks])
        assert wins[ks < k_star].all() and not wins[ks > k_star].any(), (gap, ks[np.flatnonzero(np.diff(wins))])
        # the rises rule uses the same test on consecutive step counts (b at more steps, worse)
        flagged = np.array([bool(rises([a, _cell("a", 1.0 + gap, 0.4 * k, steps=20)])) for k in ks])
        assert (flagged == wins).all()


def test_one_repeat_never_separates():
    """NaN s.e. (one repeat): no interval, so never a winner."""
    r = rank([_cell("a", 1.0, math.nan), _cell("b", 100.0, math.nan)])
    assert r.winner is None and len(r.tied) == 2


def test_escaped_share_is_the_mean_over_repeats():
    """Escaped shares 0.0, 0.005, 0.022 over three repeats of equal size: the cell's share is
    (0 + 0.005 + 0.022) / 3 = 0.009, below the 1% threshold, so no warning (the max, 0.022, would
    warn). Shares 0.0, 0.012, 0.024: mean 0.012 > 0.01 warns, printed as 1.2%."""
    (s,) = summarise([_row(r, 1.0, escaped=e) for r, e in enumerate([0.0, 0.005, 0.022])])
    assert s["escaped"] == pytest.approx(0.009, abs=1e-15)
    assert escape_warnings([s]) == []
    (s,) = summarise([_row(r, 1.0, escaped=e) for r, e in enumerate([0.0, 0.012, 0.024])])
    assert s["escaped"] == pytest.approx(0.012, abs=1e-15)
    (line,) = escape_warnings([s])
    assert line.startswith("heun on vp at 20 steps: 1.2% of the samples escaped the data's range (largest norm 5)")


def test_escape_threshold_is_strict_and_default():
    """Exactly 1% does not warn (``> threshold``), 1.0001% does; a custom threshold replaces it."""
    cell = dict(_cell("heun", 1.0, 0.1), escaped=0.01)
    assert escape_warnings([cell]) == []
    assert len(escape_warnings([dict(cell, escaped=0.010001)])) == 1
    assert len(escape_warnings([cell], threshold=0.005)) == 1


def _floor_rows(floors):
    return [dict(repeat=r, floor=f) for r, f in enumerate(floors)]


def test_resolution_threshold_hand_values():
    """Floors 1.0, 1.1, 0.9, 1.0: mean 1, sd^2 = (0 + 0.01 + 0.01 + 0) / 3 = 0.02 / 3, se =
    sqrt(0.02 / 3) / 2 = 0.0408248, relative s.e. 4.1% > 3.54% (= 0.10 / (2 sqrt 2)): too large;
    repeats needed = ceil(4 (0.0408248 / 0.0353553)^2) = ceil(4 x 4/3) = ceil(5.333) = 6.
    The cells: relative s.e. 0.03 / 1 and 0.02 / 2 = 0.01, median 0.02 = 2.0% < 3.54%: enough."""
    cells = [_cell("a", 1.0, 0.03), _cell("b", 2.0, 0.02), _cell("c", math.inf, math.nan)]
    text = floor_text(_floor_rows([1.0, 1.1, 0.9, 1.0]), cells)
    assert text.startswith("Noise floor 1 +- 0.041 over 4 repeats, relative s.e. 4.1% ")
    assert ("too large to separate methods that differ by 10% (that needs below 3.5%, about 6 repeats)"
            in text)
    assert text.endswith("median relative s.e. of 2.0% (the rankings use it): enough to separate methods "
                         "that differ by 10% (that needs below 3.5%).")


@pytest.mark.parametrize("rel,enough", [(0.0350, True), (0.0357, False), (0.028, True), (0.045, False)])
def test_resolution_verdict_flips_at_ten_percent_over_two_root_two(rel, enough):
    """A floor with relative s.e. just below / above 0.10 / (2 sqrt 2) = 0.035355 (and at 2.8%,
    which 0.10 / 4 = 2.5% would reject, and 4.5%, which 0.10 / 2 = 5% would accept): two floor
    values 1 - h, 1 + h have mean 1 and se = sd / sqrt(2) = (h sqrt 2) / sqrt 2 = h, so h = rel."""
    text = floor_text(_floor_rows([1 - rel, 1 + rel]), [_cell("a", 1.0, rel)])
    assert text.count("enough to separate") == (2 if enough else 0)
    assert text.count("too large to separate") == (0 if enough else 2)


def test_one_repeat_floor_has_no_interval():
    assert floor_text(_floor_rows([1.0]), [_cell("a", 1.0, math.nan)]).startswith(
        "Noise floor 1 (one repeat: no interval")


def test_separation_is_the_module_constant(monkeypatch):
    """The rule reads SEPARATION at call time: 1.1 vs 2.2 +- (0.3, 0.4) separates at 2 (1.1 > 1.0),
    not at 2.5 (1.1 < 1.25)."""
    cells = [_cell("a", 1.1, 0.3), _cell("b", 2.2, 0.4)]
    assert rank(cells).winner is not None
    monkeypatch.setattr(summary, "SEPARATION", 2.5)
    assert rank(cells).winner is None
