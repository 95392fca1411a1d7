"""The measurements of ``gpu_check.py``: sampling and likelihood throughput (training: gpu_training.py).

Each section is ``fn(plan, device, budget) -> rows``: a list of dicts, one per measurement, each
with ``status`` ("ok", "error: ..." or "skipped: ..."), wall seconds and ``peak_mib`` (the CUDA
allocator's peak over that row alone, None off CUDA). A row that fails is recorded and the section
goes on; a row whose estimated cost exceeds the section's remaining time is skipped.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import time
from pathlib import Path

import torch

import solvers
from sde_diffusion import VPSDE, load, log_likelihood, model_dataset
from sde_diffusion.models import build_model

from likelihood import scipy_reference  # benchmarks/likelihood.py: the score_sde-style RK45 reference

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ancestral", "euler_maruyama", "ddim", "heun", "dpm_solver")
EVALS_PER_STEP = {"heun": 2}  # score evaluations per step (+1 for the final denoising step)


def measure(fn, device: torch.device):
    """(fn(), wall seconds, peak MiB allocated during it on CUDA or None), synchronised around."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    return out, wall, (torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None)


def guarded(rows: list, row: dict, budget, estimate: float, fn) -> dict | None:
    """Append ``row`` updated by ``fn()`` (a dict; keys starting with _ stay out of the row), or
    marked skipped (``estimate`` seconds would pass the budget) or failed; return fn's dict or None."""
    if estimate > budget.left():
        rows.append({**row, "status": f"skipped: needs ~{estimate:.0f} s, {budget.left():.0f} s left"})
        return None
    try:
        out = fn()
    except Exception as e:  # recorded, the section goes on
        rows.append({**row, "status": f"error: {type(e).__name__}: {e}"[:300]})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # e.g. after running out of memory
        return None
    rows.append({**row, **{k: v for k, v in out.items() if not k.startswith("_")}, "status": "ok"})
    return out


def with_autocast(score_fn, device: torch.device):
    """score_fn under bf16 autocast, returned in the state's dtype."""
    def score(x, t):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return score_fn(x, t).to(x.dtype)
    return score


def large_unet(plan, device: torch.device):
    """A U-Net sized like the CIFAR-10 DDPM++ models (``plan.large``), random weights."""
    torch.manual_seed(0)
    model = build_model("unet", VPSDE(), **plan.large)
    with torch.no_grad():  # off the zero initialisation of the output layers: a non-trivial score
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.to(device).eval().requires_grad_(False)


def models(plan, device: torch.device) -> dict:
    digits = load("shipped:digits_vp", device=device)
    large = large_unet(plan, device)
    return {"digits": (digits, digits.event_shape),
            "large": (large, (plan.large["in_channels"],) + (plan.large["image_size"],) * 2)}


# -- sampling ------------------------------------------------------------------------------------
def sampling(plan, device: torch.device, budget) -> list[dict]:
    """Every model x precision x batch x method, all at the fewest steps first (the most figures
    per second of budget), then at the next step count; rows that would pass the budget are skipped."""
    rows: list[dict] = []
    blocks, per_eval = [], {}
    for name, (model, shape) in models(plan, device).items():
        params = sum(p.numel() for p in model.parameters())
        for precision in ("float32", "bf16"):
            score = model if precision == "float32" else with_autocast(model, device)
            for batch in plan.batches:
                blocks.append(({"model": name, "params": params, "precision": precision, "batch": batch},
                               score, model.sde, (batch, *shape)))
    failed: set = set()
    for steps in plan.steps:
        for base, score, sde, shape in blocks:
            key = tuple(base.values())
            if key in failed:
                continue
            if key not in per_eval:  # seconds per score evaluation, from a short first run
                warm: list[dict] = []
                out = guarded(warm, {**base, "method": "warm-up (ddim)"}, budget, 1.0,
                              lambda: {"s": _warm_up(score, sde, shape, device)})
                if out is None and warm[0]["status"].startswith("error"):
                    rows += warm  # e.g. out of memory: the block's one row
                    failed.add(key)
                    continue
                per_eval[key] = out["s"] if out else math.inf  # inf: past the budget, rows listed skipped
            for method in METHODS:
                nfe = EVALS_PER_STEP.get(method, 1) * steps + 1
                guarded(rows, {**base, "method": method, "steps": steps}, budget, nfe * per_eval[key],
                        lambda: _sample_row(score, sde, shape, method, steps, device))
    return rows


def _warm_up(score, sde, shape, device) -> float:
    """Seconds per score evaluation of a first short run (lazy CUDA initialisation happens here)."""
    gen = torch.Generator(device).manual_seed(0)
    with torch.inference_mode():
        solvers.sample(score, sde, shape, method="ddim", steps=2, generator=gen, device=device)
        r, wall, _ = measure(lambda: solvers.sample(score, sde, shape, method="ddim", steps=4, generator=gen,
                                                    device=device), device)
    return wall / r.nfe


def _sample_row(score, sde, shape, method, steps, device) -> dict:
    gen = torch.Generator(device).manual_seed(1)
    with torch.inference_mode():
        r, wall, peak = measure(lambda: solvers.sample(score, sde, shape, method=method, steps=steps,
                                                       generator=gen, device=device), device)
    return {"nfe": r.nfe, "wall_s": wall, "samples_per_s": shape[0] / wall, "nfe_per_s": r.nfe / wall,
            "peak_mib": peak}


# -- likelihood ----------------------------------------------------------------------------------
def exact_variants() -> dict[str, dict]:
    """The exact-divergence settings ``log_likelihood`` offers: the loop, and any torch.func (or other)
    variant found by asking it (one-line ValueErrors list what is allowed), so none is required."""
    variants = {"exact": {"divergence": "exact"}}
    params = inspect.signature(log_likelihood).parameters
    x = torch.zeros(1, 1)
    for value in _allowed(lambda v: log_likelihood(lambda x, t: x, VPSDE(), x, divergence=v)):
        if value not in ("exact", "hutchinson"):
            variants[value] = {"divergence": value}
    known = {"score_fn", "sde", "x", "divergence", "probes", "noise", "method", "rtol", "atol", "eps",
             "generator", "progress", "error_control"}  # error_control: the step control, not a divergence
    for name, p in params.items():
        if name not in known and isinstance(p.default, str):
            for value in _allowed(lambda v: log_likelihood(lambda x, t: x, VPSDE(), x, **{name: v})):
                variants[f"exact[{name}={value}]"] = {"divergence": "exact", name: value}
    return variants


def _allowed(call) -> list[str]:
    try:
        call("\x00not-an-option")
    except ValueError as e:
        found = re.search(r"allowed: ([^.]+)", str(e))
        return [v.strip() for v in found.group(1).split(",")] if found else []
    except Exception:
        return []
    return []


def likelihood_model(plan, device: torch.device):
    """(score model, its data): the shipped digits model on the test digits, or in quick mode a
    small random MLP on 4-D points (the exact divergence costs D backward passes per evaluation)."""
    if plan.quick:
        torch.manual_seed(0)
        model = build_model("mlp", VPSDE(), dim=4, hidden=32, blocks=1).to(device).eval().requires_grad_(False)
        return model, torch.randn(plan.points, 4, generator=torch.Generator().manual_seed(0)).to(device)
    model = load("shipped:digits_vp", device=device)
    return model, model_dataset(model, "test").x[:plan.points].to(device)


def likelihood(plan, device: torch.device, budget) -> list[dict]:
    """log_likelihood at ``plan.tol`` per divergence (Hutchinson with one probe, the exact loop and
    any variant ``exact_variants`` finds); then per family the scipy RK45 reference at tightening
    tolerances until its worst-case error over the points is no larger than ours, errors taken
    against a float64 solve at ``plan.ref_tol`` (the same fixed probes for Hutchinson)."""
    model, x = likelihood_model(plan, device)
    dim, tol = x[0].numel(), plan.tol
    exact = exact_variants()  # the loop last: the variants are the rows most likely to be new
    variants = {"hutchinson-1": {"divergence": "hutchinson", "probes": 1},
                **{k: v for k, v in exact.items() if k != "exact"}, "exact": exact["exact"]}
    rows: list[dict] = []
    done: dict[str, dict] = {}
    for kwargs in variants.values():  # warm-up: lazy CUDA initialisation, first-call overheads
        guarded([], {}, budget, 0, lambda: _ours(model, x[:2], 1e-1, kwargs, device))
    for label, kwargs in variants.items():  # an exact divergence costs up to ~D Hutchinson probes
        first = done.get("hutchinson-1", {"wall_s": 0.0})
        out = guarded(rows, {"approach": "log_likelihood", "divergence": label, "tol": tol}, budget,
                      first["wall_s"] * (1 if label.startswith("hutchinson") else dim),
                      lambda: _ours(model, x, tol, kwargs, device))
        if out:
            done[label] = out
    model64, x64 = copy.deepcopy(model).double(), x.double()
    for family in ("hutchinson-1", "exact"):
        mine = done.get(family)
        if mine is None:
            continue
        fastest = min((k for k in done if k.startswith(family)), key=lambda k: done[k]["wall_s"])
        row = {"approach": "reference (float64)", "divergence": fastest, "tol": plan.ref_tol}
        ref = guarded(rows, row, budget, 3 * done[fastest]["wall_s"] * (tol / plan.ref_tol) ** 0.2,
                      lambda: _ours(model64, x64, plan.ref_tol, variants[fastest], device))
        if ref is None:
            continue
        err = _worst(mine["_log_prob"], ref["_log_prob"], dim)
        rows.append({"approach": "log_likelihood (error)", "divergence": family, "tol": tol, "status": "ok",
                     "worst_err_per_dim": err, "wall_s": mine["wall_s"], "nfe": mine["nfe"], "peak_mib": None})
        for stol in plan.scipy_tols:
            out = guarded(rows, {"approach": "scipy RK45", "divergence": family, "tol": stol}, budget,
                          2 * mine["wall_s"] * (tol / stol) ** 0.2,
                          lambda: _scipy(model, x, stol, family, ref["_log_prob"], dim, device))
            if out is None or out["worst_err_per_dim"] <= err:
                break
        if out is not None:
            reached = out["worst_err_per_dim"] <= err
            rows.append({"approach": "equal worst-case error", "divergence": family, "tol": tol,
                         "scipy_tol": stol, "worst_err_per_dim": out["worst_err_per_dim"],
                         "speedup": out["wall_s"] / mine["wall_s"],
                         "status": "ok" if reached else f"ok: scipy's error stayed above ours down to tol {stol:g}"})
    return rows


def _ours(model, x, tol, kwargs, device) -> dict:
    gen = torch.Generator(device).manual_seed(1)
    r, wall, peak = measure(lambda: log_likelihood(model, model.sde, x, rtol=tol, atol=tol, generator=gen,
                                                   **kwargs), device)
    return {"nfe": r.nfe, "wall_s": wall, "s_per_nfe": wall / r.nfe, "points_per_s": x.shape[0] / wall,
            "peak_mib": peak, "_log_prob": r.log_prob}


def _scipy(model, x, tol, family, ref_lp, dim, device) -> dict:
    gen = torch.Generator(device).manual_seed(1)
    divergence = "exact" if family == "exact" else "hutchinson"
    (delta, x_T, nfe), wall, peak = measure(lambda: scipy_reference(model, model.sde, x, divergence=divergence,
                                                                    rtol=tol, atol=tol, generator=gen), device)
    log_prob = delta + model.sde.prior_log_prob(x_T)
    return {"nfe": nfe, "wall_s": wall, "s_per_nfe": wall / nfe, "points_per_s": x.shape[0] / wall,
            "peak_mib": peak, "worst_err_per_dim": _worst(log_prob, ref_lp, dim)}


def _worst(log_prob: torch.Tensor, ref: torch.Tensor, dim: int) -> float:
    return float((log_prob.double().cpu() - ref.double().cpu()).abs().max()) / dim
