"""A data set's mean NLL to a stated standard error at the least cost (``nll --target-se S``).

The s.e. of the mean of n per-sample PF-ODE values has three parts (``nll``'s error budget):

    S_total^2 = sd_data^2 / n + v_probe / (P n) + e_solver^2,

sd_data the data's own spread, v_probe the variance of a one-probe Hutchinson estimate (0 for the exact
divergence), P probes, e_solver the solver's error of the mean at tolerance rtol. A pilot batch scored
twice (Hutchinson with PILOT_PROBES probes at rtol0, then at LOOSER x rtol0 with the same dequantization
and probes) estimates sd_data, v_probe and e_solver(rtol0) = |difference| / LOOSER (the error taken as
proportional to the tolerance). Then, for a target S and share f (default 1/3):

    n       = ceil(sd_data^2 / ((1 - 2 f^2) S^2))                 the data part gets what is left
    P       = ceil(v_probe / (n (f S)^2))                         probe part <= f S
    exact   where D <= P (the exact trace costs D vector-Jacobian products per evaluation, P probes P)
    rtol    = rtol0 (f S / e_solver) / 2, within [rtol0 / 100, 10 rtol0]   (e_solver ~ rtol; margin 2)

and batches are scored in order until n points are in and the running s.e. (over the values, which
carry the probe noise) with the solver part meets S, or the data run out. The pilot's rtol0 run counts as
the first batch where it is at least as accurate as the choice (Hutchinson with at most PILOT_PROBES
probes, rtol >= rtol0). The error control defaults to ``batch``: the tolerance then holds for the RMS of
the batch's joint state (the reference code's control, fewer steps for a data set's mean). When the data's spread alone
needs more points than there are, the target cannot be met: a ValueError says so before the main work.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .. import checks
from .nll_table import mean_se, nll_per_sample

PILOT_PROBES = 2
LOOSER = 10.0


@dataclass
class TargetResult:
    """The mean to the target: ``values`` per sample, ``mean`` and ``se`` (total: the values' s.e. and
    the solver part in quadrature), the parts (``data_se``, ``probe_se``, ``solver_error``), the
    ``choice`` made (divergence, probes, rtol, atol, points), its cost (``nfe`` per batch, ``seconds``),
    the ``pilot`` and why it ``stopped``."""

    values: torch.Tensor
    mean: float
    se: float
    data_se: float
    probe_se: float
    solver_error: float
    choice: dict
    pilot: dict
    nfe: list[int] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = ""


def _check_target(target_se: float, fraction: float) -> None:
    if not (isinstance(target_se, (int, float)) and math.isfinite(target_se) and target_se > 0):
        raise ValueError(f"target_se must be a finite number > 0, got {target_se!r}.")
    if not 0 < fraction < 1 / math.sqrt(2):
        raise ValueError(f"fraction must lie in (0, 1/sqrt 2), got {fraction!r}.")


def plan(pilot_values: torch.Tensor, pilot_probe_se: torch.Tensor, solver_error: float, target_se: float,
         available: int, dim: int, rtol: float, fraction: float = 1 / 3) -> dict:
    """The choice (module docstring) from a pilot's per-sample values and probe s.e.'s (with
    PILOT_PROBES probes), its solver error at ``rtol`` and the target; ValueError when the data's
    spread alone cannot reach the target with ``available`` points."""
    _check_target(target_se, fraction)
    v = pilot_values.double()
    v_probe = PILOT_PROBES * float(pilot_probe_se.double().square().mean())  # one probe's variance
    var_data = max(float(v.var()) - v_probe / PILOT_PROBES, 0.0)
    room = (1 - 2 * fraction**2) * target_se**2
    n = max(2, math.ceil(var_data / room))
    if n > available:
        best = math.sqrt(var_data / available)
        raise ValueError(f"target s.e. {target_se:g} cannot be met: the data's spread alone (sd {math.sqrt(var_data):.3g} "
                         f"per point) needs {n} points at {target_se:g}, the data hold {available} (their s.e. is at "
                         f"best {best:.3g}); give a larger target or more data.")
    probes = max(1, math.ceil(v_probe / (n * (fraction * target_se) ** 2)))
    exact = dim <= probes
    scale = 0.5 * fraction * target_se / solver_error if solver_error > 0 else LOOSER
    new_rtol = rtol * min(max(scale, 1 / 100), LOOSER)
    return {"divergence": "exact" if exact else "hutchinson", "probes": None if exact else probes, "rtol": new_rtol,
            "atol": new_rtol, "points": n, "fraction": fraction,
            "predicted": {"data_se": math.sqrt(var_data / n),
                          "probe_se": 0.0 if exact else math.sqrt(v_probe / (probes * n)),
                          "solver_error": solver_error * new_rtol / rtol}}


def at_target_se(model, x: torch.Tensor, levels: int | None, target_se: float, *, seed: int = 0,
                 batch_size: int = 100, fraction: float = 1 / 3, rtol: float = 1e-5, method: str = "dopri5",
                 error_control: str = "batch", **kwargs) -> TargetResult:
    """Score x (its continuous values; levels for discrete data, dequantized as ``nll_per_sample``)
    to ``target_se`` (module docstring); batch b draws its dequantization and probes from seed + b.
    ``kwargs`` go to ``log_likelihood`` (e.g. ``eps``)."""
    checks.float_tensor("x", x)
    checks.positive_int("batch_size", batch_size)
    checks.positive("rtol", rtol)
    if x.ndim < 2 or len(x) < 2:
        raise ValueError(f"x must hold at least 2 points, shape (N, D) or (N, C, H, W); got {tuple(x.shape)}.")
    _check_target(target_se, fraction)
    dim, t0 = x[0].numel(), time.perf_counter()

    def score(b: int, divergence: str, probes: int | None, tol: float):
        a = b * batch_size
        extra = {"probes": probes} if divergence == "hutchinson" else {}
        return nll_per_sample(model, x[a:a + batch_size], levels, batch_size=batch_size,
                              generator=torch.Generator(x.device).manual_seed(seed + b), divergence=divergence,
                              method=method, rtol=tol, atol=tol, error_control=error_control, **extra, **kwargs)
    first = score(0, "hutchinson", PILOT_PROBES, rtol)
    loose = score(0, "hutchinson", PILOT_PROBES, rtol * LOOSER)
    err = abs(float(first.values.double().mean() - loose.values.double().mean())) / LOOSER
    pilot = {"points": len(first.values), "probes": PILOT_PROBES, "rtol": rtol, "looser": rtol * LOOSER,
             "solver_error": err, "nfe": first.nfe + loose.nfe}
    choice = plan(first.values, first.probe_se, err, target_se, len(x), dim, rtol, fraction)
    reuse = choice["divergence"] == "hutchinson" and choice["probes"] <= PILOT_PROBES and choice["rtol"] >= rtol
    pilot["reused_as_batch_0"] = reuse
    values, probe_se, nfe, batches = [], [], [], math.ceil(len(x) / batch_size)
    stopped = f"the data ran out ({len(x)} points) before the target was met"
    for b in range(batches):
        r = first if b == 0 and reuse else score(b, choice["divergence"], choice["probes"], choice["rtol"])
        values.append(r.values.double())
        probe_se.append(r.probe_se.double())
        nfe += [] if r is first else r.nfe
        v = torch.cat(values)
        if len(v) >= choice["points"]:
            _, se = mean_se(v)
            if math.hypot(se, choice["predicted"]["solver_error"]) <= target_se:
                stopped = f"the target was met after {len(v)} of {len(x)} points"
                break
    v, pse = torch.cat(values), torch.cat(probe_se)
    mean, se = mean_se(v)
    solver = choice["predicted"]["solver_error"]
    probe = (0.0 if choice["divergence"] == "exact" else choice["predicted"]["probe_se"] if choice["probes"] < 2
             else math.sqrt(float(pse.square().mean()) / len(v)))  # one probe: its part from the pilot
    data = math.sqrt(max(se**2 - probe**2, 0.0))
    return TargetResult(v, mean, math.hypot(se, solver), data, probe, solver, choice, pilot,
                        nfe, time.perf_counter() - t0, stopped)
