"""Compare samplers by step count on one model: NFE, sample quality and wall time.

For each SDE x method x step count, ``run_compare`` draws n samples from the same seed and scores
them against held-out data of the target:
  vector data   SW2, the sliced 2-Wasserstein distance (``metrics.sliced_w2``), with its noise floor:
                the mean SW2 of 32 fresh true sets of the same size to the held-out set (analytic
                models: what a perfect sampler scores), or SW2 of a train subset to the test set
                (data); and for analytic models the mean true-NLL gap (``metrics.nll_gap``);
  images        FD, the Frechet distance in the features of the shipped digits classifier
                (``features``; FD on raw pixels for images of another shape), with the floor FD
                between a train subset and the test set.
``ratio`` = quality / floor: 1 is as good as fresh data at this sample size.
Methods are registry names with options, ``name[:option=value[:option=value]]``, e.g. ``ode:solver=rk4``.
An adaptive ODE solver has no step count: there ``steps`` sets its tolerance (``solvers.probability_flow
.tolerance``, rtol = atol = 100 / steps^3), so a larger count still means more work.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import yaml
from tqdm.auto import tqdm

from .. import checks
from .metrics import nll_gap, sliced_w2
from ..sde import SDE, SDES, ScoreFn, get_sde

DEFAULT_METHODS = "ancestral,euler_maruyama,pc,ode:solver=rk4,ddim,heun,dpm_solver"
DEFAULT_STEPS = "10,20,50,100,200,500,1000"
FIELDS = ["sde", "method", "kind", "steps", "nfe", "metric", "quality", "floor", "ratio", "nll_gap", "wall_s"]


@dataclass(frozen=True)
class Variant:
    """A sampler as compared: its label (as typed), registry name and options."""

    label: str
    method: str
    options: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        from solvers import METHODS
        return METHODS[self.method].kind


def parse_methods(text: str) -> list[Variant]:
    """'ancestral,ode:solver=rk4,...' -> Variants; unknown method or malformed option: ValueError."""
    from solvers import METHODS

    out = []
    for label in (s.strip() for s in text.split(",")):
        if not label:
            raise ValueError(f"--methods {text!r} has an empty entry; give names separated by commas.")
        name, *opts = label.split(":")
        checks.one_of("method", name, METHODS)
        options = {}
        for opt in opts:
            key, eq, value = opt.partition("=")
            if not eq or not key:
                raise ValueError(f"method option {opt!r} in {label!r} must read option=value.")
            options[key] = yaml.safe_load(value)
        out.append(Variant(label, name, options))
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


@dataclass
class Target:
    """What the samplers are compared on: a score per SDE, the data shape, held-out data and quality.

    ``quality(x)`` -> (quality, nll_gap or NaN); ``floor`` the quality of fresh data; ``reference``
    held-out samples (for scatter plots); ``levels`` for discrete data; ``log_prob`` the true density
    of an analytic model (else None).
    """

    name: str
    sdes: dict[str, SDE]
    score: Callable[[SDE], ScoreFn]
    shape: tuple[int, ...]
    metric: str
    quality: Callable[[torch.Tensor], tuple[float, float]]
    floor: float
    reference: torch.Tensor
    levels: int | None = None
    log_prob: Callable | None = None
    notes: list[str] = field(default_factory=list)


def sde_names(sde: str) -> list[str]:
    return list(SDES) if sde == "all" else [checks.one_of("SDE", sde, (*SDES, "all"))]


def analytic_target(name: str, sde: str, n: int, device: torch.device, seed: int = 0) -> Target:
    """An analytic mixture (``analytic.preset``): exact score, SW2 and its floor, true-NLL gap."""
    from ..analytic import preset

    gm = preset(name)
    g = torch.Generator(device).manual_seed(seed + 123)
    ref = gm.sample(n, g, device=device)
    proj = lambda: torch.Generator(device).manual_seed(seed + 1)  # noqa: E731 - same directions everywhere
    floor = torch.stack([sliced_w2(gm.sample(n, g, device=device), ref, generator=proj()) for _ in range(32)]).mean()

    def quality(x: torch.Tensor) -> tuple[float, float]:
        x = x.to(ref.dtype)
        return float(sliced_w2(x, ref, generator=proj())), float(nll_gap(gm.log_prob, x, ref))
    return Target(f"analytic:{name}", {s: get_sde(s) for s in sde_names(sde)}, gm.score, (gm.dim,),
                  "SW2", quality, float(floor), ref, log_prob=gm.log_prob)


def model_target(model, cfg, device: torch.device, n: int, seed: int = 0, name: str = "model") -> Target:
    """A trained ScoreModel with its config: SW2 (vectors) or classifier FD (images) against the
    test split of the config's data, the floor from a train subset of the same size."""
    from ..training.data import load_dataset

    test = load_dataset(cfg.data.name, split="test", path=cfg.data.path)
    train = load_dataset(cfg.data.name, split="train", path=cfg.data.path)
    notes, sde_name = [], "vp" if cfg.sde.name == "ddpm" else cfg.sde.name
    if test.x.ndim == 4:
        features, metric = image_features(test.shape, device)
        ref = test.x.to(device)
        f_ref = features(ref)
        m = min(n, len(train))
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:m]
        floor = float(frechet(features(train.x[idx].to(device)), f_ref))
        quality = lambda x: (float(frechet(features(quantize(x, test.levels)), f_ref)), math.nan)  # noqa: E731
    else:
        metric, m = "SW2", min(n, len(test), len(train))
        if m < n:
            notes.append(f"vector data: n = {m} (the size of the smaller split), as SW2 pairs equal-size sets.")
        ref = test.x[:m].to(device)
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:m]
        proj = lambda: torch.Generator(device).manual_seed(seed + 1)  # noqa: E731
        floor = float(sliced_w2(train.x[idx].to(device), ref, generator=proj()))
        quality = lambda x: (float(sliced_w2(x[:m].to(ref.dtype), ref, generator=proj())), math.nan)  # noqa: E731
    return Target(name, {sde_name: model.sde}, lambda sde: model, test.shape, metric, quality, floor, ref,
                  levels=test.levels, notes=notes)


def checkpoint_target(path: str, sde: str | None, n: int, device: torch.device, seed: int = 0):
    """``model_target`` of a run directory or checkpoint; ``sde`` (if given) must be the one it was
    trained with. Returns (target, model, cfg)."""
    from ..training.checkpoint import load_checkpoint

    model, cfg = load_checkpoint(path, device=device)
    trained = "vp" if cfg.sde.name == "ddpm" else cfg.sde.name
    if sde is not None and sde != trained:
        raise ValueError(f"checkpoint {path!r} was trained with the {cfg.sde.name} SDE ({model.sde}), not "
                         f"{sde!r}; drop --sde or pass --sde {trained}.")
    return model_target(model.requires_grad_(False), cfg, device, n, seed, name=str(path)), model, cfg


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_compare(target: Target, variants: list[Variant], steps: list[int], n: int, device: torch.device, *,
                seed: int = 0, show_steps: int | None = None, explicit: bool = False,
                progress: bool = True) -> tuple[list[dict], dict[tuple[str, str], torch.Tensor]]:
    """Rows (dicts with ``FIELDS``) for every SDE x method x step count, and the samples at
    ``show_steps`` (default: the largest count) keyed by (sde, label)."""
    import solvers

    checks.positive_int("n", n)
    pairs = plan(target, variants, steps, explicit)
    show = max(steps) if show_steps is None else show_steps
    rows, shown = [], {}
    bar = tqdm(total=len(pairs) * len(steps), desc=f"compare {target.name}", disable=not progress)
    for sde_name, v in pairs:
        sde, score = target.sdes[sde_name], target.score(target.sdes[sde_name])
        for s in steps:
            bar.set_postfix_str(f"{sde_name} {v.label} {s}")
            gen = torch.Generator(device).manual_seed(seed)
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                res = solvers.sample(score, sde, (n, *target.shape), v.method, s, generator=gen, device=device,
                                     **v.options)
            _sync(device)
            wall = time.perf_counter() - t0
            finite = bool(torch.isfinite(res.x).all())
            q, gap = target.quality(res.x) if finite else (math.inf, math.inf)
            rows.append({"sde": sde_name, "method": v.label, "kind": v.kind, "steps": s, "nfe": res.nfe,
                         "metric": target.metric, "quality": q, "floor": target.floor, "ratio": q / target.floor,
                         "nll_gap": gap, "wall_s": wall})
            if s == show:
                shown[(sde_name, v.label)] = res.x.detach()
            bar.update(1)
    bar.close()
    return rows, shown
