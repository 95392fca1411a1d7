"""Compare samplers by step count on one model: NFE, sample quality and wall time, over repeats.

For each SDE x method x step count and each of R independent repeats, ``run_compare`` draws n
samples (repeat r: seed ``sub_seed(seed, r, 0)``, the same prior noise for every method) and scores
them with the repeat's ``Scorer``, against held-out data of the target:
  vector data   SW2, the sliced 2-Wasserstein distance (``metrics.sliced_w2``), with its noise floor:
                SW2 of n fresh true samples to a fresh held-out set of n (analytic models: what a
                perfect sampler scores), or of a train subset to a test subset (data); for analytic
                models also the mean true-NLL gap (``metrics.nll_gap``);
  images        FD, the Frechet distance in the features of the shipped digits classifier
                (``features``; FD on raw pixels for images of another shape), with the floor FD
                between a train subset and the test set.
``ratio`` = quality / floor: 1 is as good as fresh data at this sample size. Every row also has the
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
    """One repeat's yardstick: ``quality(x)`` -> (quality, nll_gap or NaN) against this repeat's
    held-out set, and ``floor``, the quality of fresh data of the same size against that set."""

    quality: Callable[[torch.Tensor], tuple[float, float]]
    floor: float


@dataclass
class Target:
    """What the samplers are compared on: a score per SDE, the data shape, and per repeat r a
    ``Scorer`` (``scorer(r)``: its own held-out set and floor, from seeds independent of every
    other repeat). ``n`` is the sample size used (the one asked for, or capped: see ``notes``);
    ``reference`` held-out samples (scatter plots, NLL); ``escape(x)`` -> (share escaped, largest
    norm) (``metrics.escaped``); ``levels`` for discrete data; ``log_prob`` the true density of an
    analytic model (else None); ``notes``: every change to what the user asked, said up front."""

    name: str
    sdes: dict[str, SDE]
    score: Callable[[SDE], ScoreFn]
    shape: tuple[int, ...]
    metric: str
    scorer: Callable[[int], Scorer]
    reference: torch.Tensor
    n: int
    escape: Callable[[torch.Tensor], tuple[float, float]]
    levels: int | None = None
    log_prob: Callable | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def floor(self) -> float:
        """The floor of repeat 0."""
        return self.scorer(0).floor


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

        def quality(x: torch.Tensor) -> tuple[float, float]:
            x = x.to(held_out.dtype)
            return float(sliced_w2(x, held_out, generator=proj())), float(nll_gap(gm.log_prob, x, held_out))
        return Scorer(quality, float(sliced_w2(fresh, held_out, generator=proj())))
    return Target(f"analytic:{name}", {s: get_sde(s) for s in sde_names(sde)}, gm.score, (gm.dim,), "SW2",
                  functools.lru_cache(scorer), ref, n, escape_of(reference=ref), log_prob=gm.log_prob)


def escape_of(**where) -> Callable[[torch.Tensor], tuple[float, float]]:
    """x -> (share escaped, largest norm) as floats, by ``metrics.escaped(x, **where)``."""
    return lambda x: tuple(float(v) for v in escaped(x, **where))


def model_target(model, device: torch.device, n: int, seed: int = 0, name: str | None = None,
                 data: str | None = None) -> Target:
    """A loaded model (``load``): SW2 (vectors) or classifier FD (images) against the test split of its
    data (or of the .npy/.npz file ``data``); per repeat the floor from a fresh train subset of the same
    size (and, for vectors smaller than the test split, a fresh test subset)."""
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

        def scorer(r: int) -> Scorer:
            return Scorer(lambda x: (float(frechet(features(quantize(x, test.levels)), f_ref)), math.nan),
                          float(frechet(features(subset(train, m, r, 3)), f_ref)))
        escape = escape_of(box=DATA_RANGE)
    else:
        metric, m = "SW2", min(n, len(test), len(train))
        if m < n:
            notes.append(f"n = {m} instead of {n}: SW2 pairs equal-size sets and the smaller split holds {m}.")
        ref = test.x[:m].to(device)

        def scorer(r: int) -> Scorer:
            held_out = subset(test, m, r, 4)
            proj = lambda: torch.Generator(device).manual_seed(sub_seed(seed, r, 2))  # noqa: E731
            return Scorer(lambda x: (float(sliced_w2(x.to(held_out.dtype), held_out, generator=proj())), math.nan),
                          float(sliced_w2(subset(train, m, r, 3), held_out, generator=proj())))
        n, escape = m, escape_of(reference=test.x.to(device))
    return Target(name or model.info.source, {sde_name: model.sde}, lambda sde: model, test.shape, metric,
                  functools.lru_cache(scorer), ref, n, escape, levels=test.levels, notes=notes)


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


def run_compare(target: Target, variants: list[Variant] | list[tuple[str, Variant]], steps: list[int],
                n: int | None, device: torch.device, *, repeats: int = 1, seed: int = 0,
                show_steps: int | None = None, explicit: bool = False,
                progress: bool = True) -> tuple[list[dict], dict[tuple[str, str], torch.Tensor]]:
    """Rows (dicts with ``FIELDS``), one per SDE x method x step count x repeat, and the samples of
    repeat 0 at ``show_steps`` (default: the largest count) keyed by (sde, label). ``variants`` may
    be the (sde, variant) pairs of ``plan`` (so its notes can be shown before the work starts).
    Repeat r draws its samples from seed ``sub_seed(seed, r, 0)`` (shared by every method) and is
    scored by ``target.scorer(r)``; n defaults to ``target.n``."""
    import solvers

    n = target.n if n is None else min(n, target.n)
    checks.positive_int("n", n)
    checks.positive_int("repeats", repeats)
    pairs = variants if variants and isinstance(variants[0], tuple) else plan(target, variants, steps, explicit)
    show = max(steps) if show_steps is None else show_steps
    rows, shown = [], {}
    bar = tqdm(total=len(pairs) * len(steps) * repeats, desc=f"compare {target.name}", disable=not progress)
    for r in range(repeats):
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
                q, gap = scorer.quality(res.x) if finite else (math.inf, math.inf)
                share, largest = target.escape(res.x) if finite else (1.0, math.inf)
                rows.append({"sde": sde_name, "method": v.label, "kind": v.kind, "steps": s, "repeat": r,
                             "nfe": res.nfe, "metric": target.metric, "quality": q, "floor": scorer.floor,
                             "ratio": q / scorer.floor, "nll_gap": gap, "escaped": share, "max_norm": largest,
                             "wall_s": wall, "score_s": score.seconds()})
                if s == show and r == 0:
                    shown[(sde_name, v.label)] = res.x.detach()
                bar.update(1)
    bar.close()
    return rows, shown
