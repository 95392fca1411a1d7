"""The one place tests take their cases from: SDEs from ``sde_diffusion.sde.SDES``, samplers from
``solvers.METHODS`` with their declared kind, order, options and ``vp_only``, and option variants
derived from each ``Method.options``.

A newly registered SDE or method is picked up by every test that parametrizes over these; an option
whose values cannot be derived (not a ``choice``) needs an entry in ``VALUES`` (or ``UNUSABLE``), and
``test_cases.py`` fails naming it until it has one.

Variants of a method: its defaults ``{}``, then each option changed alone to each other value it
allows (``choice`` options: the allowed values, read from the check's closure; other options:
``VALUES``), then the joint settings of ``COMBOS`` that reach code paths no single change does, and (when
asked) for a method that declares ``chain`` a run on a discrete chain's grid (``sample(schedule=...)``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator

import torch

from sde_diffusion import DDPMSchedule
from sde_diffusion.sde import SDES as _SDES, SDE, VPSDE
from solvers import METHODS

SDE_NAMES: tuple[str, ...] = tuple(_SDES)
DTYPES = (torch.float32, torch.float64)
DTYPE_IDS = {torch.float32: "f32", torch.float64: "f64"}


def sdes() -> list[SDE]:
    """One instance (default parameters) of every registered SDE, in registry order."""
    return [cls() for cls in _SDES.values()]


def sde_ids(sde_list=None) -> list[str]:
    return [type(s).__name__ for s in (sde_list if sde_list is not None else sdes())]


def methods() -> list[str]:
    """Every registered sampler, in registry order."""
    return list(METHODS)


def deterministic() -> list[str]:
    return [n for n, m in METHODS.items() if m.kind == "ode"]


def stochastic() -> list[str]:
    return [n for n, m in METHODS.items() if m.kind == "sde"]


def supports(name: str, sde: SDE) -> bool:
    """The declared capability: False for a ``vp_only`` method on a non-VP-type SDE."""
    from solvers.base import vp_type
    return not METHODS[name].vp_only or vp_type(sde)


# -- option values the registry cannot enumerate -----------------------------------------------
# (method, option) -> option dicts that change it (with any companion it needs to take effect).
# A value may be a callable ``steps -> value`` (a schedule has to match the step count).
VALUES: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("ddim", "eta"): [{"eta": 1.0}],
    ("ddim", "clip"): [{"clip": 1.0}],                          # diffusers' clip_sample
    ("ddim", "rho"): [{"grid": "edm", "rho": 3.0}],        # rho shapes the edm grid only
    ("dpm_solver", "rho"): [{"grid": "edm", "rho": 3.0}],
    ("dpm_solver_sde", "eta"): [{"eta": 0.5}],
    ("dpm_solver_sde", "rho"): [{"grid": "edm", "rho": 3.0}],
    ("sa_solver", "tau"): [{"tau": 0.5}],
    ("sa_solver", "rho"): [{"grid": "edm", "rho": 3.0}],
    ("unipc", "rho"): [{"grid": "edm", "rho": 3.0}],
    ("ancestral", "clip"): [{"clip": 1.0}],                    # diffusers' clip_sample
    ("adaptive_sde", "eps_abs"): [{"eps_abs": 0.02, "eps_rel": 0.05}],   # the two are given together
    ("adaptive_sde", "eps_rel"): [],
    ("adaptive_sde", "max_steps"): [{"max_steps": 5000}],
    ("heun", "rho"): [{"rho": 3.0}],                        # heun's default grid is edm
    ("heun", "S_churn"): [{"S_churn": 5.0}],                 # Algorithm 2 (stochastic)
    ("heun", "S_tmin"): [{"S_churn": 5.0, "S_tmin": 0.05}],  # the window needs churn on
    ("heun", "S_tmax"): [{"S_churn": 5.0, "S_tmax": 10.0}],
    ("heun", "S_noise"): [{"S_churn": 5.0, "S_noise": 1.007}],
    ("ode", "rho"): [{"solver": "rk4", "grid": "edm", "rho": 3.0}],
    ("ode", "rtol"): [{"solver": "bosh3", "rtol": 1e-3, "atol": 1e-3}],
    ("ode", "atol"): [],                                    # given with rtol above
    ("pc", "snr"): [{"snr": 0.3, "corrector_steps": 2}],
    ("pc", "corrector_steps"): [{"corrector_steps": 2}],
}
# (method, option, value) that no analytic score can run, with the reason
UNUSABLE: dict[tuple[str, str, Any], str] = {
    ("ancestral", "variance", "learned"): "needs a model with a learned variance (test_learned_variance*)",
}
# a method declaring ``chain`` also runs a discrete chain's grid (``sample(schedule=...)``)
CHAIN: dict[str, Any] = {"schedule": lambda steps: DDPMSchedule(T=steps)}
# joint settings reaching code paths that no single change reaches
COMBOS: dict[str, list[dict[str, Any]]] = {
    "dpm_solver": [{"order": 3, "multistep": False}, {"order": 3, "variant": "dpm_solver"},
                   {"order": 2, "multistep": False, "solver_type": "heun"}],
    "dpm_solver_sde": [{"order": 3, "solver_type": "heun"}],
    "pc": [{"corrector": "none", "predictor": "ancestral"}],
    "unipc": [{"order": 3, "variant": "bh1"}, {"order": 3, "corrector": False}],
    "ode": [{"solver": "euler", "grid": "edm"}],
}


def choices(option) -> tuple | None:
    """The allowed values of a ``choice(...)`` option (read from its check), else None."""
    if option.check is None:
        return None
    try:
        allowed = inspect.getclosurevars(option.check).nonlocals.get("allowed")
    except TypeError:
        return None
    return tuple(allowed) if isinstance(allowed, tuple) else None


def missing_values() -> list[tuple[str, str]]:
    """(method, option) pairs with neither derivable choices nor ``VALUES``: they need cases."""
    return [(n, o) for n, m in METHODS.items() for o, opt in m.options.items()
            if choices(opt) is None and (n, o) not in VALUES]


def _resolve(opts: dict, steps: int) -> dict:
    return {k: v(steps) if callable(v) else v for k, v in opts.items()}


def variants(name: str, steps: int = 10, chain: bool = False) -> list[dict[str, Any]]:
    """The method's defaults, each option changed alone to each other value, then ``COMBOS``; with
    ``chain``, also a run on a discrete chain's grid for a method declaring ``chain`` (``CHAIN``: the
    caller then samples under the chain's embedding, ``opts["schedule"].embedding()``)."""
    spec, out = METHODS[name], [{}]
    for opt_name, opt in spec.options.items():
        allowed = choices(opt)
        if allowed is None:
            out += [_resolve(o, steps) for o in VALUES.get((name, opt_name), [])]
        else:
            out += [{opt_name: v} for v in allowed
                    if v != opt.default and (name, opt_name, v) not in UNUSABLE]
    out += [_resolve(o, steps) for o in COMBOS.get(name, [])] + ([_resolve(CHAIN, steps)] if chain and spec.chain else [])
    return out


def one_per_option(name: str, steps: int = 10) -> list[dict[str, Any]]:
    """A smaller set: the defaults, each option changed once (its first other value), ``COMBOS``."""
    spec, out = METHODS[name], [{}]
    for opt_name, opt in spec.options.items():
        allowed = choices(opt)
        if allowed is None:
            out += [_resolve(o, steps) for o in VALUES.get((name, opt_name), [])[:1]]
        else:
            out += [{opt_name: v} for v in allowed
                    if v != opt.default and (name, opt_name, v) not in UNUSABLE][:1]
    out += [_resolve(o, steps) for o in COMBOS.get(name, [])]
    return out


def is_stochastic(name: str, opts: dict) -> bool:
    """Draws noise along the way (``Method.stochastic``: kind "sde", or options that add noise)."""
    return METHODS[name].stochastic(method_options(opts))


def option_id(opts: dict) -> str:
    def fmt(v):
        return f"DDPMSchedule(T={v.T})" if isinstance(v, DDPMSchedule) else str(v)
    return ",".join(f"{k}={fmt(v)}" for k, v in opts.items()) or "default"


def method_variants(steps: int = 10, only: Callable[[str], bool] | None = None,
                    chain: bool = False) -> Iterator[tuple[str, dict]]:
    """(method, options) for every registered method and each of its ``variants``."""
    for name in METHODS:
        if only is None or only(name):
            for opts in variants(name, steps, chain):
                yield name, opts


def case_id(name: str, opts: dict) -> str:
    return f"{name}[{option_id(opts)}]"


def method_options(opts: dict) -> dict:
    """A variant without the keywords that go to ``sample`` itself rather than to the method (``CHAIN``)."""
    return {k: v for k, v in opts.items() if k not in CHAIN}


def bindable_on_vp(name: str, opts: dict, steps: int = 10) -> bool:
    try:
        METHODS[name].bind(VPSDE(), steps, method_options(opts))
    except ValueError:
        return False
    return True


def missing_methods(covered) -> list[str]:
    """Registered methods absent from ``covered`` (names, or (name, ...) tuples): they need cases."""
    names = {c if isinstance(c, str) else c[0] for c in covered}
    return [n for n in METHODS if n not in names]
