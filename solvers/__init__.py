"""Interchangeable samplers for score-based diffusion: ``sample(score_fn, sde, shape, method=...)``.

Every method starts from x_T ~ prior (or a given ``x_T``), runs on the time grid ``sample`` builds for
it, from T down to ``eps`` (or, with ``schedule=``, a discrete chain's own times down to t = 0, where it
lands on the data) and, with ``denoise``, ends with one Tweedie step at t = eps:
    x_0 = E[x_0 | x_t] = (x_t + s(t)^2 score(x_t, t)) / m(t),
the posterior mean of x_0 under x_t = m x_0 + s z. (x + s^2 score alone is E[m x_0 | x_t]; dividing
by m(t) is what makes it an estimate of x_0 when m != 1, as for VP at t = eps.) It is counted in nfe.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from sde_diffusion import checks
from sde_diffusion.models.score_model import convert
from sde_diffusion.schedule import DiscreteSchedule
from sde_diffusion.sde import SDE, ScoreFn

# importing each family module registers its samplers
from . import ancestral, dpm_solver, dpm_solver_sde, predictor_corrector, probability_flow, sa_solver, stochastic, torchsde_adapter, unipc  # noqa: F401
from . import adaptive_sde  # noqa: F401  (registered last: listings start with the fixed-step methods)
from .base import METHODS, Context, CountingScore, SampleResult, get, parse_method
from .inpaint import known
from .timesteps import chain_grid, time_grid

__all__ = ["sample", "available", "parse_method", "SampleResult", "METHODS"]


def available() -> list[str]:
    """The names of all registered sampling methods."""
    return list(METHODS)


@torch.no_grad()  # inference records no graph; a score_fn may still enable grad for x (guidance)
def sample(score_fn: ScoreFn, sde: SDE | None = None, shape: Sequence[int] | int | None = None,
           method: str = "euler_maruyama",
           steps: int = 1000, *, eps: float = 1e-3, denoise: bool = True,
           generator: torch.Generator | None = None, device: torch.device | str | None = None,
           dtype: torch.dtype = torch.float32, progress: bool = False, return_trajectory: bool = False,
           x_T: torch.Tensor | None = None, inpaint: tuple | None = None,
           schedule: DiscreteSchedule | None = None, noise: Callable | None = None, **options) -> SampleResult:
    """Draw samples of ``shape`` (N, ...) by ``method`` (see ``available()``) with ``steps`` steps.

    ``sample(model, shape)`` takes the model's own SDE (a ScoreModel's ``.sde``), and an int ``shape``
    n means (n, *event_shape) for a loaded model (``sde_diffusion.load``), which knows its data shape.
    ``method`` may carry options, ``name:option=value[:...]`` (``ode:solver=rk4``), as on the CLI;
    ``options`` are the method's own too (each method's docstring lists them; anything else is a
    ValueError listing what is allowed). ``x_T`` starts from a given prior sample instead of drawing
    one. Noise comes from ``generator`` on its device; same generator state, same samples.
    ``noise``, a callable x -> z, injects the draws instead: it is called once per fresh standard-normal
    draw, in step order, with the current state x, and returns z shaped like x (each stochastic method's
    docstring says which draws it makes per step). The prior sample is its first draw, x_T =
    prior_std z, unless ``x_T`` is given (``generator`` is then refused: nothing would draw from it); inpainting adds one draw per grid time, after the step's own, for
    the known part. The same sequence of draws reproduces a peer's run exactly.
    ``inpaint = (mask, x_known)`` holds the known part (mask True or 1) by its forward marginal at
    every step and returns it exactly (``solvers.inpaint``; every method: ``ode`` and ``sde`` then
    integrate one grid interval per call).
    ``schedule``, a ``DDPMSchedule`` or its ``.respace(K)`` (methods that declare ``chain``: ancestral, ddim),
    runs the discrete chain itself: ``steps`` = its T (K), the grid its model times t = tau_K/T, ...,
    tau_1/T and then 0, and ``sde`` the chain's ``embedding()`` (a chain-trained model's ``model.sde``;
    its marginals at those times are checked to be the chain's). The last step lands on the data:
    no Tweedie step (DDPM Algorithm 2).
    Runs under ``torch.no_grad()``: the samples carry no autograd graph (grad_fn None).
    """
    if shape is None and sde is not None and not isinstance(sde, SDE):  # sample(model, shape)
        sde, shape = None, sde
    sde = checks.own_sde(score_fn, sde)
    shape = _shape(score_fn, shape)
    name, parsed = parse_method(method)
    twice = sorted(set(parsed) & set(options))
    if twice:
        raise ValueError(f"option {twice[0]!r} is set both in method={method!r} and as a keyword; set it once.")
    spec, options = get(name), {**parsed, **options}
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sde_diffusion.SDE, got {type(sde).__name__}.")
    checks.positive_int("steps", steps)
    checks.generator("generator", generator)
    if noise is not None and not callable(noise):
        raise TypeError(f"noise must be a callable x -> z (the next N(0, I) draw shaped like x) or None, "
                        f"got {type(noise).__name__}.")
    if noise is not None and generator is not None:
        raise ValueError("give noise= or generator=, not both: noise= makes every draw the generator would.")
    if noise is not None and spec.own_noise:
        raise ValueError(f"method {name!r} draws its own Brownian path and cannot take noise=; "
                         f"methods that can: {', '.join(n for n, m in METHODS.items() if not m.own_noise)}.")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype (float32 or float64), got {dtype!r}.")
    opts = spec.bind(sde, steps, options)
    grid_kind, rho = opts.pop("grid", "uniform"), opts.pop("rho", 7.0)
    if schedule is None:
        grid64 = time_grid(sde, steps, eps, grid_kind, rho)
    elif {"grid", "rho"} & set(options):
        raise ValueError("grid= and rho= shape the time grid of a continuous run; with schedule= the grid is the "
                         "chain's own times. Give one or the other.")
    elif not spec.chain:
        raise ValueError(f"schedule= runs a discrete chain; method {method!r} does not (methods that do: "
                         f"{', '.join(n for n, m in METHODS.items() if m.chain)}).")
    else:
        grid64 = chain_grid(sde, steps, schedule)
        if callable(spec.chain):
            spec.chain(schedule)
    counter = CountingScore(score_fn)
    if device is None:
        device = generator.device if generator is not None else (x_T.device if x_T is not None else "cpu")
    ctx = Context(sde, counter, grid64, checks.upload(grid64, device, dtype), generator, progress,
                  [] if return_trajectory else None, desc=name, draw=noise)
    if x_T is None and noise is not None:
        x = sde.prior_std * ctx.noise(torch.zeros(shape, device=device, dtype=dtype))
    elif x_T is None:
        x = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)
    else:
        x = checks.float_tensor("x_T", x_T)
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"x_T must have shape {tuple(shape)}, got {tuple(x.shape)}.")
        x = x.to(device=device, dtype=dtype)
    if inpaint is not None:
        ctx.known = known(inpaint, shape, sde.marginal(grid64), device, dtype)
    x = ctx.record(ctx.hold(x, 0))
    try:
        x = spec.fn(ctx, x, **opts)
    except Exception:  # e.g. torchdiffeq's step-size control on NaN: name the NaN if there was one
        ctx.check_finite(x)
        raise
    if denoise and not ctx.at_data:
        x = tweedie(ctx, x)
    if inpaint is not None and (denoise or ctx.at_data):
        x = ctx.known.final(x)
    ctx.check_finite(x)
    traj = torch.stack(ctx.trajectory) if return_trajectory else None
    return SampleResult(x, counter.nfe, traj)


def _shape(score_fn, shape) -> tuple[int, ...]:
    """``shape``, with an int n read as (n, *event_shape) of a model that knows its data shape."""
    if shape is None:
        raise TypeError("shape is required: (N, ...) or, for a loaded model, the number of samples N.")
    if isinstance(shape, int) and not isinstance(shape, bool):
        event = getattr(score_fn, "event_shape", None)
        if event is None:
            raise ValueError(f"shape {shape} is a sample count, which needs a model that knows its data shape "
                             "(sde_diffusion.load); pass the full shape (N, ...) instead.")
        return (checks.positive_int("shape", shape), *event)
    return tuple(shape)


def tweedie(ctx: Context, x: torch.Tensor) -> torch.Tensor:
    """x_0 = (x + s(t)^2 score(x, t)) / m(t) at t = eps, the last grid time."""
    m, s = (ctx.cast(c[-1]) for c in ctx.marginals())
    return convert(ctx.score_at(x, ctx.grid[-1]), "score", "x0", x, m, s)
