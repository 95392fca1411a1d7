"""Compare samplers by step count on one model: NFE, sample quality and wall time, over repeats.

For each SDE x method x step count and each of R independent repeats, ``run_compare`` draws n
samples (repeat r: seed ``sub_seed(seed, r, 0)``, the same prior noise for every method) and scores
them with the repeat's ``Scorer``, against held-out data of the target:
  vector data   SW2, the sliced 2-Wasserstein distance (``metrics.sliced_w2``), with its noise floor:
                SW2 of n fresh true samples to a fresh held-out set of n (analytic models: what a
                perfect sampler scores), or of n train points to n test points (data); for analytic
                models also the mean true-NLL gap (``metrics.nll_gap``);
  images        FD, the Frechet distance in the features of the shipped digits classifier
                (``features``; FD on raw pixels for images of another shape), with the floor FD
                between n train images and the test set.
``ratio`` = quality / floor: 1 is as good as fresh data at this sample size. Where the data cannot give
every repeat its own held-out set, one is shared (``Target.heldout`` says which) and each score also
carries its figures on random halves of it, from which ``summary`` counts the shared error. Every row also has the
share of escaped samples (``metrics.escaped``), the wall seconds and the seconds inside the score
(``TimedScore``); ``summary`` turns the repeats into means +- standard errors and rankings.
Methods are registry names with options, ``name[:option=value[:option=value]]``, e.g. ``ode:solver=rk4``.
An adaptive ODE solver has no step count: there ``steps`` sets its tolerance (``solvers.probability_flow
.tolerance``, rtol = atol = 100 / steps^3), so a larger count still means more work.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import checks
from .metrics import escaped, nll_gap, sliced_w2
from .timing import TimedScore, sync
from ..sde import SDE, SDES, ScoreFn, get_sde

DEFAULT_METHODS = "ancestral,euler_maruyama,pc,ode:solver=rk4,ddim,heun,dpm_solver"
DEFAULT_STEPS = "10,20,50,100,200,500,1000"
FIELDS = ["sde", "method", "kind", "steps", "repeat", "nfe", "metric", "quality", "floor", "ratio", "nll_gap",
          "escaped", "max_norm", "wall_s", "score_s"]


@dataclass(frozen=True)
class Variant:
    """A sampler as compared: its label (as typed), registry name and options."""

    label: str
    method: str
    options: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        from solvers import METHODS
        return METHODS[self.method].kind_of(self.options)


def parse_methods(text: str) -> list[Variant]:
    """'ancestral,ode:solver=rk4,...' -> Variants (``solvers.parse_method`` each); unknown method or
    malformed option: ValueError."""
    from solvers import parse_method

    out = []
    for label in (s.strip() for s in text.split(",")):
        if not label:
            raise ValueError(f"--methods {text!r} has an empty entry; give names separated by commas.")
        out.append(Variant(label, *parse_method(label)))
    if len({v.label for v in out}) != len(out):
        raise ValueError(f"--methods {text!r} names a method twice.")
    return out


def parse_steps(text: str) -> list[int]:
    """'10,20,50' -> [10, 20, 50]; each an integer >= 1, at least one."""
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not parts:
        raise ValueError("--steps is empty; give step counts such as 10,20,50.")
    try:
        steps = [int(s) for s in parts]
    except ValueError:
        raise ValueError(f"--steps must be integers separated by commas, got {text!r}.") from None
    if min(steps) < 1:
        raise ValueError(f"--steps must all be >= 1, got {text!r}.")
    return sorted(set(steps))


@dataclass(frozen=True)
class Scorer:
    """One repeat's yardstick: ``score(x)`` -> {quality, nll_gap (NaN unless analytic)} against this
    repeat's held-out set, and ``floor``, the quality of fresh data of the same size against that set.
    Where every repeat shares one held-out set, ``score`` also gives ``halves_quality`` and ``halves_ratio``
    and ``halves_floor`` holds the floor: the figures on RESAMPLES random halves of that set, the same
    halves in every repeat (their covariance across repeats is the shared error, ``summary``)."""

    score: Callable[[torch.Tensor], dict]
    floor: float
    halves_floor: torch.Tensor | None = None


RESAMPLES = 20  # random halves of a shared held-out set


def distance_scorer(distance: Callable, embed: Callable, fresh: torch.Tensor, held_out: torch.Tensor,
                    shared_seed: int | None = None) -> Scorer:
    """A ``Scorer`` from ``distance(embed(x), held_out)`` (sets of embedded points) and the floor
    ``distance(fresh, held_out)``; with ``shared_seed`` (a held-out set shared by the repeats) also the
    figures on RESAMPLES random halves of it, drawn without replacement from that seed. (Without
    replacement: a bootstrap's duplicates shift every repeat's figure together, a common error of the
    resampling itself. The spread of a statistic over random halves of a set is about its spread over
    independent sets of the full size: for a mean, s^2 / (m/2) x (1 - 1/2) = s^2 / m.) A distance that
    pairs sets of equal size gets the same half of the samples (the halves of x add no shared error)."""
    floor = float(distance(fresh, held_out))
    if shared_seed is None:
        return Scorer(lambda x: {"quality": float(distance(embed(x), held_out)), "nll_gap": math.nan}, floor)
    g = torch.Generator().manual_seed(shared_seed)
    m = len(held_out)
    halves = [torch.randperm(m, generator=g)[: m // 2].to(held_out.device) for _ in range(RESAMPLES)]

    def on_halves(e: torch.Tensor) -> torch.Tensor:
        paired = len(e) == m
        return torch.tensor([float(distance(e[i] if paired else e, held_out[i])) for i in halves], dtype=torch.float64)
    floors = on_halves(fresh)

    def score(x: torch.Tensor) -> dict:
        e = embed(x)
        qs = on_halves(e)
        return {"quality": float(distance(e, held_out)), "nll_gap": math.nan, "halves_quality": qs,
                "halves_ratio": qs / floors}
    return Scorer(score, floor, floors)


@dataclass
class Target:
    """What the samplers are compared on: a score per SDE, the data shape, and per repeat r a
    ``Scorer`` (``scorer(r)``: its held-out set and floor, from seeds independent of every other
    repeat). ``n`` is the sample size used (the one asked for, or capped: see ``notes``); ``heldout``
    says whether each repeat has its own held-out set or all share one; ``reference`` held-out
    samples (scatter plots, NLL); ``escape(x)`` -> (share escaped, largest norm) (``metrics.escaped``);
    ``levels`` for discrete data; ``log_prob`` the true density of an analytic model (else None);
    ``notes``: every change to what the user asked, said up front."""

    name: str
    sdes: dict[str, SDE]
    score: Callable[[SDE], ScoreFn]
    shape: tuple[int, ...]
    metric: str
    scorer: Callable[[int], Scorer]
    reference: torch.Tensor
    n: int
    escape: Callable[[torch.Tensor], tuple[float, float]]
    heldout: str = "a fresh held-out set for each repeat"
    levels: int | None = None
    log_prob: Callable | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def floor(self) -> float:
        """The floor of repeat 0."""
        return self.scorer(0).floor

    @property
    def shared(self) -> bool:
        return self.heldout.startswith("one held-out set")


def sub_seed(seed: int, repeat: int, stream: int) -> int:
    """A seed for (run seed, repeat, stream) from numpy's SeedSequence: no two triples share a stream,
    so repeats and runs with different seeds are independent."""
    return int(np.random.SeedSequence([seed, repeat, stream]).generate_state(1)[0])


def sde_names(sde: str) -> list[str]:
    return list(SDES) if sde == "all" else [checks.one_of("SDE", sde, (*SDES, "all"))]


def analytic_target(name: str, sde: str, n: int, device: torch.device, seed: int = 0) -> Target:
    """An analytic mixture (``analytic.preset``): exact score; per repeat a fresh held-out set of n
    true samples, SW2 to it and the true-NLL gap, and the floor SW2 of another n fresh samples."""
    from ..analytic import preset

    gm = preset(name)
    checks.positive_int("n", n)
    ref = gm.sample(n, torch.Generator(device).manual_seed(seed + 123), device=device)

    def scorer(r: int) -> Scorer:
        g = torch.Generator(device).manual_seed(sub_seed(seed, r, 1))
        held_out, fresh = gm.sample(n, g, device=device), gm.sample(n, g, device=device)
        proj = lambda: torch.Generator(device).manual_seed(sub_seed(seed, r, 2))  # noqa: E731 - same directions

        def score(x: torch.Tensor) -> dict:
            x = x.to(held_out.dtype)
            return {"quality": float(sliced_w2(x, held_out, generator=proj())),
                    "nll_gap": float(nll_gap(gm.log_prob, x, held_out))}
        return Scorer(score, float(sliced_w2(fresh, held_out, generator=proj())))
    return Target(f"analytic:{name}", {s: get_sde(s) for s in sde_names(sde)}, gm.score, (gm.dim,), "SW2",
                  functools.lru_cache(scorer), ref, n, escape_of(reference=ref),
                  heldout=f"a fresh held-out set of {n} true samples for each repeat", log_prob=gm.log_prob)


def escape_of(**where) -> Callable[[torch.Tensor], tuple[float, float]]:
    """x -> (share escaped, largest norm) as floats, by ``metrics.escaped(x, **where)``."""
    return lambda x: tuple(float(v) for v in escaped(x, **where))


def model_target(model, device: torch.device, n: int, seed: int = 0, name: str | None = None,
                 data: str | None = None, repeats: int = 10) -> Target:
    """A loaded model (``load``): SW2 (vectors) or classifier FD (images) against the test split of its
    data (or of the .npy/.npz file ``data``), with n capped so that samples and floor have the same size.
    Vectors: per repeat a fresh train subset for the floor and a disjoint test subset as the held-out
    set when the test split holds ``repeats`` of them; otherwise (and for images, scored against the
    whole test split) one held-out set shared by every repeat, its resampling variance in the s.e."""
    from ..dequantize import DATA_RANGE
    from ..training.loading import model_dataset

    test, train = (model_dataset(model, split, data=data) for split in ("test", "train"))
    notes, sde_name = [], model.info.config.sde.name
    sde_name = "vp" if sde_name == "ddpm" else sde_name
    subset = lambda data, m, r, stream: data.x[torch.randperm(  # noqa: E731
        len(data), generator=torch.Generator().manual_seed(sub_seed(seed, r, stream)))[:m]].to(device)
    if test.x.ndim == 4:
        features, metric = image_features(test.shape, device)
        ref = test.x.to(device)
        f_ref = features(ref)
        m = min(n, len(train))
        if m < n:
            notes.append(f"n = {m} instead of {n}: the floor draws n fresh images from the train split, "
                         f"which holds {m}.")
        heldout = (f"one held-out set shared by every repeat: the whole test split ({len(test)} images, "
                   f"FD's reference); the error this shares enters every s.e. ({RESAMPLES} random halves)")

        def scorer(r: int) -> Scorer:
            embed = lambda x: features(quantize(x, test.levels))  # noqa: E731
            return distance_scorer(frechet, embed, features(subset(train, m, r, 3)), f_ref, sub_seed(seed, 0, 5))
        escape = escape_of(box=DATA_RANGE)
    else:
        metric, m = "SW2", min(n, len(test), len(train))
        if m < n:
            notes.append(f"n = {m} instead of {n}: SW2 pairs equal-size sets and the smaller split holds {m}.")
        ref = test.x[:m].to(device)
        fresh = len(test) >= m * repeats
        order = torch.randperm(len(test), generator=torch.Generator().manual_seed(sub_seed(seed, 0, 4)))
        heldout = (f"a fresh held-out set of {m} test points for each repeat (disjoint, up to {repeats} repeats)"
                   if fresh else f"one held-out set shared by every repeat: {m} of the {len(test)} test points "
                   f"(fresh sets for {repeats} repeats would need {m * repeats}); the error this shares enters "
                   f"every s.e. ({RESAMPLES} random halves)")

        def scorer(r: int) -> Scorer:
            held_out = test.x[order[r * m:(r + 1) * m] if fresh else order[:m]].to(device)
            proj = lambda: torch.Generator(device).manual_seed(sub_seed(seed, r, 2))  # noqa: E731
            distance = lambda a, b: sliced_w2(a, b, generator=proj())  # noqa: E731 - the same directions
            return distance_scorer(distance, lambda x: x.to(held_out.dtype), subset(train, m, r, 3), held_out,
                                   None if fresh else sub_seed(seed, 0, 5))
        n, escape = m, escape_of(reference=test.x.to(device))
    return Target(name or model.info.source, {sde_name: model.sde}, lambda sde: model, test.shape, metric,
                  functools.lru_cache(scorer), ref, min(n, m), escape, heldout=heldout, levels=test.levels,
                  notes=notes)


def quantize(x: torch.Tensor, levels: int | None) -> torch.Tensor:
    """Discrete data: samples rounded to their level's bin centre (the images a user would see)."""
    from ..dequantize import DATA_RANGE, continuous_to_levels, levels_to_continuous

    if levels is None:
        return x
    return levels_to_continuous(continuous_to_levels(x, levels, DATA_RANGE), levels, DATA_RANGE, 0.5, x.dtype)


def image_features(shape: tuple[int, ...], device: torch.device):
    """(features(x) -> (N, F), metric name): the digits classifier for (1, 8, 8), raw pixels otherwise."""
    from .features import load_classifier

    if tuple(shape) == (1, 8, 8):
        net = load_classifier(device=device)
        return (lambda x: net.features(x.float())), "FD"
    return (lambda x: x.flatten(1)), "FD (pixels)"


def frechet(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    from .features import frechet_distance
    return frechet_distance(f1, f2)


def plan(target: Target, variants: list[Variant], steps: list[int], explicit: bool) -> list[tuple[str, Variant]]:
    """The (sde, variant) pairs to run, every option checked before any compute. A VP-only method on
    a VE-type SDE is skipped with a note, or is an error when the user named one SDE and the method."""
    from solvers import METHODS
    from solvers.base import vp_type

    pairs = []
    for sde_name, sde in target.sdes.items():
        for v in variants:
            spec = METHODS[v.method]
            if spec.vp_only and not vp_type(sde):
                if explicit and len(target.sdes) == 1:
                    raise ValueError(f"method {v.method!r} needs a VP-type SDE (vp, subvp, cosine), not "
                                     f"{sde_name!r}; choose other --methods or --sde.")
                target.notes.append(f"{v.label} skipped on {sde_name}: it needs a VP-type SDE.")
                continue
            for s in steps:
                spec.bind(sde, s, v.options)
            pairs.append((sde_name, v))
    return pairs


@dataclass
class AutoRepeats:
    """``--repeats auto``: ``least`` repeats, then one more at a time until every step count's ranking
    is decided (``summary.decided``: a best and no cell "not resolved"), ``most`` repeats are done, or
    another repeat would pass ``budget_s`` seconds; ``run_compare`` writes which into ``stopped``."""

    least: int = 3
    most: int = 10
    budget_s: float = 600.0
    stopped: str = ""

    def __post_init__(self):
        checks.positive_int("least repeats", self.least)
        if self.least < 2 or self.most < self.least:
            raise ValueError(f"--repeats auto needs 2 <= least ({self.least}) <= most ({self.most}).")
        if not self.budget_s > 0:
            raise ValueError(f"--time-budget must be > 0 seconds, got {self.budget_s}.")

    def done(self, rows: list[dict], repeats: int, elapsed: float) -> bool:
        """Whether to stop after ``repeats`` repeats that took ``elapsed`` seconds (and why, in ``stopped``)."""
        from .summary import INFORMATIVE, decided, summarise

        if repeats < self.least:
            return False
        if decided(summarise(rows)):
            self.stopped = (f"--repeats auto stopped at {repeats} repeats: every step count has a best cell and "
                            f"each other cell is tied with it within +-{INFORMATIVE:.0%} or lies behind it.")
        elif repeats >= self.most:
            self.stopped = (f"--repeats auto stopped at its cap of {self.most} repeats (--max-repeats) with cells "
                            f"still not resolved.")
        elif elapsed * (repeats + 1) / repeats > self.budget_s:
            self.stopped = (f"--repeats auto stopped at {repeats} repeats: another ({elapsed / repeats:.0f} s each) "
                            f"would pass the time budget of {self.budget_s:g} s (--time-budget), with cells still "
                            f"not resolved.")
        return bool(self.stopped)


def run_compare(target: Target, variants: list[Variant] | list[tuple[str, Variant]], steps: list[int],
                n: int | None, device: torch.device, *, repeats: int | AutoRepeats = 1, seed: int = 0,
                show_steps: int | None = None, explicit: bool = False,
                progress: bool = True) -> tuple[list[dict], dict[tuple[str, str], torch.Tensor]]:
    """Rows (dicts with ``FIELDS``), one per SDE x method x step count x repeat, and the samples of
    repeat 0 at ``show_steps`` (default: the largest count) keyed by (sde, label). ``variants`` may
    be the (sde, variant) pairs of ``plan`` (so its notes can be shown before the work starts).
    Repeat r draws its samples from seed ``sub_seed(seed, r, 0)`` (shared by every method) and is
    scored by ``target.scorer(r)``; n defaults to ``target.n``. ``repeats``: a count, or
    ``AutoRepeats`` (its ``stopped`` then says why it stopped)."""
    import solvers

    n = target.n if n is None else min(n, target.n)
    checks.positive_int("n", n)
    auto = repeats if isinstance(repeats, AutoRepeats) else None
    most = auto.most if auto else checks.positive_int("repeats", repeats)
    pairs = variants if variants and isinstance(variants[0], tuple) else plan(target, variants, steps, explicit)
    show = max(steps) if show_steps is None else show_steps
    rows, shown = [], {}
    bar = tqdm(total=len(pairs) * len(steps) * most, desc=f"compare {target.name}", disable=not progress)
    t_start = time.perf_counter()
    for r in range(most):
        scorer = target.scorer(r)
        for sde_name, v in pairs:
            sde = target.sdes[sde_name]
            for s in steps:
                bar.set_postfix_str(f"repeat {r} {sde_name} {v.label} {s}")
                score = TimedScore(target.score(sde), device)
                gen = torch.Generator(device).manual_seed(sub_seed(seed, r, 0))
                sync(device)
                t0 = time.perf_counter()
                with torch.no_grad():
                    res = solvers.sample(score, sde, (n, *target.shape), v.method, s, generator=gen, device=device,
                                         **v.options)
                sync(device)
                wall = time.perf_counter() - t0
                finite = bool(torch.isfinite(res.x).all())
                scored = scorer.score(res.x) if finite else {"quality": math.inf, "nll_gap": math.inf}
                share, largest = target.escape(res.x) if finite else (1.0, math.inf)
                rows.append({"sde": sde_name, "method": v.label, "kind": v.kind, "steps": s, "repeat": r,
                             "nfe": res.nfe, "metric": target.metric, **scored, "floor": scorer.floor,
                             "ratio": scored["quality"] / scorer.floor, "halves_floor": scorer.halves_floor,
                             "escaped": share, "max_norm": largest, "wall_s": wall, "score_s": score.seconds()})
                if s == show and r == 0:
                    shown[(sde_name, v.label)] = res.x.detach()
                bar.update(1)
        if auto and auto.done(rows, r + 1, time.perf_counter() - t_start):
            break
    bar.close()
    return rows, shown
