"""What every sampler shares: the result type, the counting score wrapper, the registry with
declared capabilities and options, and the per-call context with the loop helper.

A sampler is one function ``fn(ctx, x, **options) -> x`` registered with ``@register``; it runs
from x_T at ctx.grid[0] = T to ctx.grid[-1] and returns x there: at eps (``sample`` then denoises) or,
on a chain's grid ending at t = 0, the data itself. The grid is ``sample``'s; samplers only read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
from tqdm.auto import tqdm

from sde_diffusion import checks
from sde_diffusion.models.score_model import fixed_variance, learns_variance, variance_kind
from sde_diffusion.sde import SDE, ScoreFn


@dataclass(frozen=True)
class SampleResult:
    """Samples ``x`` (shape ``shape``), the exact number ``nfe`` of score evaluations, and the
    ``trajectory`` (K+1, *shape) of states at the grid times T..eps when asked, else None."""

    x: torch.Tensor
    nfe: int
    trajectory: torch.Tensor | None = None


def finite_probe(x: torch.Tensor) -> torch.Tensor:
    """sum(x * 0): 0 if x is finite, NaN if it holds a NaN or Inf (x * 0 is NaN exactly there; the
    sum of zeros cannot overflow). One fused reduction on x's device, no host sync: much cheaper on
    CPU than isfinite(x).all(); samplers keep one per state and per score call, checked once."""
    return (x * 0).sum()


def timed_probe(out: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the latest time t_n of a row n whose ``out`` holds NaN/Inf, else -inf; finite_probe(out)) with
    t of shape (N,) or one time: the rows of an adaptive solver may be at different times."""
    rows = (out * 0).reshape(out.shape[0], -1).sum(1)
    return torch.where(rows.isnan(), t.reshape(-1), -math.inf).max(), rows.sum()


class CountingScore:
    """score(x, t) with t of shape (N,); counts every call in ``nfe`` (a Python int, no sync), so
    adaptive solvers, correctors and the denoising step are all counted in this one place. It also
    keeps ``probes``: ``timed_probe`` per call, for ``Context.check_finite``."""

    def __init__(self, score_fn: ScoreFn):
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable (x, t) -> score, got {type(score_fn).__name__}.")
        self.score_fn, self.nfe = score_fn, 0
        self.probes: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        out = checks.same_shape("score_fn", self.score_fn(x, t), x)
        self.probes.append(timed_probe(out, t))
        return out

    @property
    def learned_variance(self) -> bool:
        """Whether the score_fn also returns a learned variance's v (``models.learns_variance``)."""
        return learns_variance(self.score_fn)

    @property
    def variance_kind(self) -> str:
        """The convention of that v (``models.variance_kind``)."""
        return variance_kind(self.score_fn)

    @property
    def fixed_variance(self) -> str | None:
        """The fixed reverse variance the model states (``models.fixed_variance``), else None."""
        return fixed_variance(self.score_fn)

    def with_v(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score, v) from one call of ``score_fn.score_and_v``, counted as one evaluation."""
        self.nfe += 1
        score, v = self.score_fn.score_and_v(x, t)
        checks.same_shape("score_fn", score, x)
        checks.same_shape("v", v, x)
        self.probes.append(timed_probe(score + v, t))
        return score, v


# -- options and capabilities -----------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """A method option: its default and a check ``(name, value) -> value`` raising ValueError."""

    default: Any
    check: Callable[[str, Any], Any] | None = None


def choice(*allowed: str) -> Callable[[str, Any], Any]:
    return lambda name, value: checks.one_of(name, value, allowed)


def unit_interval(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
    return float(value)


def grid_options(default: str = "uniform") -> dict[str, Option]:
    """The time-grid options of deterministic samplers (see ``timesteps``)."""
    from .timesteps import GRIDS
    return {"grid": Option(default, choice(*GRIDS)), "rho": Option(7.0, checks.positive)}


def vp_type(sde: SDE) -> bool:
    """True when the mean decays, m(T) < 1 (VP, sub-VP, cosine VP), so x_T carries no data mean."""
    return bool(sde.marginal(float(sde.T))[0] < 1)


@dataclass(frozen=True)
class Method:
    """A registered sampler and its declared capabilities, checked once before any compute."""

    name: str
    fn: Callable[..., torch.Tensor]
    kind: str                                  # "sde" (stochastic) or "ode" (deterministic)
    order: int | None                          # nominal order in the step size, None if adaptive
    options: Mapping[str, Option] = field(default_factory=dict)
    vp_only: bool = False                      # needs a VP-type SDE (``vp_type``)
    chain: bool | Callable = False             # runs a discrete chain's grid to t = 0 (``sample(schedule=...)``);
                                               # a callable: also checks the chain (schedule -> None or ValueError)
    check: Callable[[SDE, int, dict], None] | None = None  # cross-option checks
    own_noise: bool = False                    # draws its noise itself (a Brownian path), not by ``Context.noise``
    noisy: Callable[[dict], bool] | None = None  # for a kind "ode" method: whether these options add noise

    def stochastic(self, options: Mapping[str, Any] | None = None) -> bool:
        """Whether the method with these options (defaults filled in) draws noise along the way: kind
        "sde", or a kind "ode" method whose ``noisy`` says so (DDIM with eta > 0, Heun with churn)."""
        if self.kind == "sde":
            return True
        bound = {name: opt.default for name, opt in self.options.items()} | dict(options or {})
        return self.noisy is not None and bool(self.noisy(bound))

    def kind_of(self, options: Mapping[str, Any] | None = None) -> str:
        """"sde" or "ode" for the method with these options (``stochastic``)."""
        return "sde" if self.stochastic(options) else "ode"

    def bind(self, sde: SDE, steps: int, options: dict) -> dict:
        """Defaults filled in, each option checked; ValueError for unknown options or an SDE the
        method does not support."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            allowed = ", ".join(self.options) or "none"
            raise ValueError(f"method {self.name!r} takes no option {unknown[0]!r}; allowed: {allowed}.")
        if self.vp_only and not vp_type(sde):
            raise ValueError(f"method {self.name!r} needs a VP-type SDE (mean decaying, m(T) < 1: "
                             f"VP, sub-VP, cosine VP); got {type(sde).__name__}.")
        bound = {}
        for name, opt in self.options.items():
            value = options.get(name, opt.default)
            bound[name] = opt.check(name, value) if opt.check is not None and name in options else value
        if self.check is not None:
            self.check(sde, steps, bound)
        return bound


METHODS: dict[str, Method] = {}


def register(name: str, kind: str, order: int | None, options: Mapping[str, Option] | None = None,
             vp_only: bool = False, chain: bool | Callable = False,
             check: Callable[[SDE, int, dict], None] | None = None,
             own_noise: bool = False, noisy: Callable[[dict], bool] | None = None):
    """Decorator registering ``fn(ctx, x, **options) -> x`` as sampler ``name``; ``noisy(options)``
    tells for a kind "ode" method which options make it stochastic."""
    checks.one_of("kind", kind, ("sde", "ode"))

    def wrap(fn):
        METHODS[name] = Method(name, fn, kind, order, dict(options or {}), vp_only, chain, check, own_noise, noisy)
        return fn
    return wrap


def get(name: str) -> Method:
    return METHODS[checks.one_of("sampling method", name, METHODS)]


def parse_spec(spec: str, what: str = "method") -> tuple[str, dict]:
    """'name[:option=value[:option=value]]' -> (name, options), each value read as a number when it is
    one, else as a YAML scalar (true, null, text). A malformed or repeated option is a ValueError."""
    if not isinstance(spec, str):
        raise TypeError(f"{what} must be a string name[:option=value...], got {type(spec).__name__}.")
    import yaml

    name, *opts = spec.strip().split(":")
    options = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if not eq or not key:
            raise ValueError(f"{what} option {opt!r} in {spec!r} must read option=value.")
        if key in options:
            raise ValueError(f"{what} {spec!r} sets option {key!r} twice.")
        try:
            options[key] = int(value)
        except ValueError:
            try:
                options[key] = float(value)
            except ValueError:
                options[key] = yaml.safe_load(value)
    return name, options


def parse_method(spec: str) -> tuple[str, dict]:
    """(name, options) of a sampler spec ``name[:option=value...]`` (``ode:solver=rk4``, ``ddim:eta=0.5``):
    the spelling of ``sample(method=...)`` and of the CLI; an unknown name is a ValueError listing the
    methods (the options are checked by the method's ``bind``)."""
    name, options = parse_spec(spec)
    get(name)
    return name, options


# -- the per-call context and loop helper -------------------------------------------------------
@dataclass
class Context:
    """What a sampler needs for one call: the SDE, the counted score, the time grid ``sample`` built
    (float64 on the CPU for coefficient tables, and in the sample dtype on the device; read, never
    rewritten), noise and the loop helper."""

    sde: SDE
    score: CountingScore
    grid64: torch.Tensor
    grid: torch.Tensor
    generator: torch.Generator | None
    progress: bool = False
    trajectory: list | None = None
    desc: str = "sampling"
    stepped: bool = False  # states are recorded at every grid time (set by ``loop``, ``record_outputs``)
    probes: list = field(default_factory=list)  # (grid index k, finite_probe(x at t_k)) per state
    known: Any = None  # an ``inpaint.Known`` when inpainting: its part is held after every step
    draw: Callable[[torch.Tensor], torch.Tensor] | None = None  # ``sample(noise=...)``: the injected draws

    @property
    def steps(self) -> int:
        return self.grid.shape[0] - 1

    @property
    def at_data(self) -> bool:
        """Whether the grid ends at t = 0 (a chain's grid): the last step lands on x_0 itself, with no
        noise and no Tweedie step after it."""
        return bool(self.grid64[-1] == 0)

    def cast(self, table: torch.Tensor) -> torch.Tensor:
        """A float64 coefficient table moved to the grid's device and dtype (once, before the loop;
        queued on CUDA without a host sync, ``checks.upload``)."""
        return checks.upload(table, self.grid.device, self.grid.dtype)

    def marginals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(m(t_i), s(t_i)) on the grid, float64 on the CPU."""
        return self.sde.marginal(self.grid64)

    def score_at(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The counted score at a scalar time t (0-dim tensor), broadcast to the batch."""
        return self.score(x, t.expand(x.shape[0]))

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """z ~ N(0, I) shaped like x: the next injected draw ``draw(x)`` (``sample(noise=...)``), else
        drawn on x's device from the call's generator. Every fresh draw of every sampler is this call."""
        if self.draw is None:
            return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        z = self.draw(x)
        if not isinstance(z, torch.Tensor) or z.shape != x.shape:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"noise must return a tensor shaped like x, {tuple(x.shape)}; got {got}.")
        return z.to(device=x.device, dtype=x.dtype)

    def loop(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield (i, t_i, t_{i+1}) for i = 0..K-1 (0-dim device tensors; no host sync), with tqdm."""
        self.stepped = True
        for i in tqdm(range(self.steps), desc=self.desc, disable=not self.progress, leave=False):
            yield i, self.grid[i], self.grid[i + 1]

    def run(self, x: torch.Tensor, step: Callable[..., torch.Tensor]) -> torch.Tensor:
        """The shared loop: x <- step(x, i, t_i, t_{i+1}) for every grid step, recording each state
        (when inpainting, after holding the known part at t_{i+1})."""
        for i, t, s in self.loop():
            x = self.record(self.hold(step(x, i, t, s), i + 1))
        return x

    def hold(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """When inpainting, x with its known part y replaced by m(t_k) y + s(t_k) z; else x."""
        return x if self.known is None else self.known.hold(x, k, self.noise(x))

    def record(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Called with the state at grid time t_k (default: the next one) after each step: keeps
        the trajectory when asked and a finiteness probe of x (no host sync)."""
        self.probes.append((len(self.probes) if k is None else k, finite_probe(x)))
        if self.trajectory is not None:
            self.trajectory.append(x)
        return x

    def record_outputs(self, xs: torch.Tensor) -> torch.Tensor:
        """For an integrator's states xs at its output times (every grid time, or only T and eps):
        record them and return the last."""
        self.stepped = len(xs) == self.steps + 1
        ks = range(1, self.steps + 1) if self.stepped else [self.steps]
        for k, x in zip(ks, xs[1:]):
            self.record(x, k)
        return xs[-1]

    def check_finite(self, x: torch.Tensor) -> None:
        """The call's one host sync (``checks.host_read``), after sampling: a ValueError naming the
        step and time where NaN/Inf first appeared in the state or the score, or in the final ``x``."""
        probes = [p for _, p in self.probes] + [p for _, p in self.score.probes] + [finite_probe(x)]
        ok = checks.host_read(torch.stack(probes).isfinite())
        if all(ok):
            return
        n = len(self.probes)
        state = next((k for (k, _), good in zip(self.probes, ok) if not good), None)
        # the earliest non-finite score along the run from T down: the largest such t (an adaptive
        # solver's first-step probe may evaluate out of order, at eps)
        bad = [t for (t, _), good in zip(self.score.probes, ok[n:]) if not good]
        score = checks.host_read(torch.stack(bad).max()) if bad else None
        if state is not None:
            where = f"step {state} of {self.steps}" if self.stepped else "the solver's output"
            where = f" at {where} (t = {self.grid64[state]:.4g})"
        else:
            where = "" if score is not None else f" in the final denoising step (t = {self.grid64[-1]:.4g})"
        cause = (f"the score function returned non-finite values at t = {score:.4g}" if score is not None
                 else "the score stayed finite but the state overflowed; use more steps or a smaller step size")
        raise ValueError(f"sampling produced NaN/Inf{where}: {cause}.")
