"""``ScoreModel``: a backbone read as a score, a noise prediction, a denoiser, a velocity, a
posterior mean or an EDM-preconditioned denoiser under an SDE, optionally with a learned variance.

The one place where the four predictions convert (an ``edm`` net predicts x0). With x_t = m(t) x_0 + s(t) z,
(m, s) = ``sde.marginal(t)`` and z ~ N(0, I) (Song et al. 2021; Ho et al. 2020):
    score = -eps / s,      eps = -s score,      x0 = (x - s eps) / m = (x + s^2 score) / m,
    eps = (x - m x0) / s,
and the velocity v = m eps - s x0 (Salimans & Ho 2022, diffusers' ``v_prediction``):
    v = ((m^2 + s^2) eps - s x) / m,      eps = (m v + s x) / (m^2 + s^2)   (m^2 + s^2 = 1 for VP).
For the exact score, x0 is Tweedie's E[x_0 | x_t] and eps is E[z | x_t]. At t = 0 (s = 0) the
score of an eps-, x0- or edm-model and the eps of an x0- or edm-model are undefined (division by s = 0).

``edm`` (Karras et al. 2022, sec. 5 and Table 1, preconditioning): in the VE view sigma = s / m,
x_ve = x / m, the net F is wrapped as the denoiser
    x0 = D(x_ve; sigma) = c_skip x_ve + c_out F(c_in x_ve, c_noise),
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = t,
with sd = sigma_data, the data's standard deviation. c_noise is the SDE time t, a monotone function of
sigma as in Table 1's VP column ((M - 1) t), which the backbones' time embeddings expect; EDM's own
log(sigma) / 4 measured worse at low noise under t ~ U(eps, T) training. F's input and target have unit variance at every noise
level, and at high noise x0 -> the bounded c_out F, so the score -(x - m x0) / s^2 keeps the Gaussian
tail -x / s^2 for inputs far outside the training data (an eps-net would have to output eps = x there,
which a bounded network cannot extrapolate).

``mu`` (Ho et al. 2020, sec. 3.2, the "mu_tilde prediction" rows of Table 2): the net predicts the mean
of the reverse step from t to s = max(t - h, 0), h = ``mu_step`` (1/T for a T-step chain), i.e. the
posterior mean mu_tilde(x_t, x_0) = E[x_s | x_t, x_0] at x_0's estimate. With the exact transition
x_t = a x_s + G z from s to t (``SDE.transition``),
    mu = (x - (G^2 / s_t) eps) / a,      eps = (x - a mu) s_t / G^2,
which on DDPM's chain (its ``embedding()``, s = t - 1/T the knot before) is
mu = (x_i - beta_i / sqrt(1 - abar_i) eps) / sqrt(alpha_i); on a respaced chain s is still the base
chain's step before, tau_k - 1.

A learned variance (Nichol & Dhariwal 2021, sec. 3.1): the net returns twice the channels (dim 1),
the prediction and v; ``schedule.learned_log_variance`` reads v as Sigma = exp(v log beta + (1 - v) log
beta_tilde) of the reverse step the caller takes (``predict(..., with_v=True)``, ``score_and_v``), or by
the model's other stated convention (``variance_kind``: diffusers' learned_range, learned).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .. import checks
from ..checks import Time, bcast
from ..schedule import V_KINDS
from ..sde import SDE, ScoreFn
from .mlp import MLPScore
from .unet import UNet

PREDICTIONS = ("eps", "score", "x0", "v")     # what convert() maps between
PARAMETERIZATIONS = (*PREDICTIONS, "edm", "mu")  # what a net may be trained as (edm predicts x0)


def edm_scalings(sigma: torch.Tensor, sigma_data: float | torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) of EDM's preconditioning (Karras et al. 2022, Table 1) at the VE noise
    level sigma = s / m; sigma = 0 gives c_skip = 1, c_out = 0: D = x."""
    sd2, sig2 = sigma_data ** 2, sigma.square()
    return sd2 / (sig2 + sd2), sigma * sigma_data / (sig2 + sd2).sqrt(), 1 / (sig2 + sd2).sqrt()


def to_eps(value: torch.Tensor, kind: str, x: torch.Tensor, m: torch.Tensor,
           s: torch.Tensor) -> torch.Tensor:
    """eps from a ``kind`` in {eps, score, x0, v} prediction at x; m, s per sample (N,) or scalars."""
    checks.one_of("parameterization", kind, PREDICTIONS)
    if kind == "eps":
        return value
    if kind == "score":
        return -bcast(s, x) * value
    if kind == "v":
        return (bcast(m, x) * value + bcast(s, x) * x) / bcast(m.square() + s.square(), x)
    return (x - bcast(m, x) * value) / bcast(s, x)


def from_eps(eps: torch.Tensor, kind: str, x: torch.Tensor, m: torch.Tensor,
             s: torch.Tensor) -> torch.Tensor:
    """The ``kind`` in {eps, score, x0, v} prediction from eps at x: eps, -eps / s, (x - s eps) / m
    or ((m^2 + s^2) eps - s x) / m."""
    checks.one_of("parameterization", kind, PREDICTIONS)
    if kind == "eps":
        return eps
    if kind == "score":
        return -eps / bcast(s, x)
    if kind == "v":
        return (bcast(m.square() + s.square(), x) * eps - bcast(s, x) * x) / bcast(m, x)
    return (x - bcast(s, x) * eps) / bcast(m, x)


def convert(value: torch.Tensor, source: str, target: str, x: torch.Tensor, m: torch.Tensor,
            s: torch.Tensor) -> torch.Tensor:
    """Convert a ``source`` prediction at x into a ``target`` one (each of eps, score, x0, v).

    score <-> x0 goes directly: score = -(x - m x0) / s^2, x0 = (x + s^2 score) / m.
    """
    checks.one_of("parameterization", source, PREDICTIONS)
    checks.one_of("parameterization", target, PREDICTIONS)
    if (source, target) == ("score", "x0"):
        return (x + bcast(s.square(), x) * value) / bcast(m, x)
    if (source, target) == ("x0", "score"):
        return -(x - bcast(m, x) * value) / bcast(s.square(), x)
    return value if source == target else from_eps(to_eps(value, source, x, m, s), target, x, m, s)


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model knows beyond its SDE (``sde_diffusion.load``): the ``source`` it was loaded
    from, the data's ``event_shape`` (per sample), its ``levels`` (None: continuous) and ``data_range``
    (the interval the levels map onto), the run ``config``, ``meta`` (step, dataset, path, ...) and,
    for an analytic model, the Gaussian ``mixture`` itself."""

    source: str
    event_shape: tuple[int, ...]
    levels: int | None
    data_range: tuple[float, float] | None
    config: Any = None
    meta: dict = field(default_factory=dict)
    mixture: Any = None


class ScoreModel(nn.Module):
    """A backbone ``net(x, t[, y])`` predicting ``parameterization`` under ``sde``.

    ``forward`` is the score, so a ScoreModel is a score_fn for every sampler and the likelihood.
    ``net`` is an nn.Module (or any callable of that signature, e.g. an analytic oracle).
    With ``input_scaling`` the net sees x / sqrt(m^2 + s^2) (unit-variance data then gives a
    unit-variance input at every t: the identity for VP, essential for VE with large sigma_max).
    ``edm`` (see the module) calls net(c_in x / m, t) and reads its output through c_skip, c_out;
    ``sigma_data`` is kept as a buffer, so it travels with the weights (training sets it from the
    data unless the config names it; 0.5 is EDM's value for images in [-1, 1]).
    ``mu`` needs ``mu_step`` h in (0, T), the step whose posterior mean the net predicts. With
    ``learned_variance`` the net's output holds the prediction and v stacked along dim 1; True reads v
    as the weight of log beta (``interpolation``), or name the convention: ``"learned_range"`` (v in
    [-1, 1], improved DDPM's code and diffusers), ``"learned"`` (v the variance itself, diffusers).
    ``variance`` (``beta`` or ``beta_tilde``) is the fixed reverse variance the model's authors sample
    with (a diffusers scheduler's fixed_large / fixed_small), which ``variance="auto"`` then uses.
    """

    def __init__(self, net: Callable, sde: SDE, parameterization: str = "eps", *,
                 input_scaling: bool = False, sigma_data: float | torch.Tensor = 0.5,
                 learned_variance: bool | str = False, mu_step: float | None = None,
                 variance: str | None = None):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be an nn.Module or a callable net(x, t[, y]), "
                            f"got {type(net).__name__}.")
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be an SDE (e.g. VPSDE()), got {type(sde).__name__}.")
        self.net, self.sde = net, sde
        self.parameterization = checks.one_of("parameterization", parameterization, PARAMETERIZATIONS)
        self.input_scaling = bool(input_scaling)
        if self.parameterization == "edm":
            if input_scaling:
                raise ValueError("input_scaling is part of the edm parameterization (c_in); leave it off.")
            sd = torch.as_tensor(sigma_data, dtype=torch.float64)  # exact unless the model is cast
            if sd.numel() != 1 or not bool(torch.isfinite(sd) & (sd > 0)):
                raise ValueError(f"sigma_data must be a finite number > 0, got {sigma_data!r}.")
            self.register_buffer("sigma_data", sd.reshape(()).clone())
        else:
            self.sigma_data = None
        if self.parameterization == "mu":
            if isinstance(mu_step, bool) or not isinstance(mu_step, (int, float)) or not 0 < mu_step < sde.T:
                raise ValueError(f"parameterization 'mu' needs mu_step, the reverse step's length, in "
                                 f"(0, T) = (0, {sde.T:g}) (1/T for a T-step chain), got {mu_step!r}.")
            mu_step = float(mu_step)
        self.mu_step = mu_step if self.parameterization == "mu" else None
        if isinstance(learned_variance, str):
            self.variance_kind = checks.one_of("learned_variance", learned_variance, V_KINDS)
        elif isinstance(learned_variance, bool):
            self.variance_kind = "interpolation"
        else:
            raise ValueError(f"learned_variance must be True, False or one of {', '.join(V_KINDS)}; "
                             f"got {learned_variance!r}.")
        self.learned_variance = learned_variance is not False
        if variance is not None and (self.learned_variance or variance not in ("beta", "beta_tilde")):
            raise ValueError(f"variance (the fixed reverse variance of a model without a learned one) must be "
                             f"beta or beta_tilde, for a model without learned_variance; got {variance!r}.")
        self.variance = variance
        self.info: ModelInfo | None = None

    @property
    def event_shape(self) -> tuple[int, ...] | None:
        """The shape of one sample, known for a loaded model (``info``), else None."""
        return None if self.info is None else self.info.event_shape

    @property
    def levels(self) -> int | None:
        """The data's levels per value for a loaded model of discrete data, else None."""
        return None if self.info is None else self.info.levels

    @property
    def data_range(self) -> tuple[float, float] | None:
        """The interval (lo, hi) that a loaded model's levels map onto, else None."""
        return None if self.info is None else self.info.data_range

    def with_net(self, net: Callable) -> "ScoreModel":
        """The same parameterization, SDE and scalings around another net (e.g. a DDP wrapper of it)."""
        other = ScoreModel(net, self.sde, self.parameterization, input_scaling=self.input_scaling,
                           sigma_data=0.5 if self.sigma_data is None else self.sigma_data,
                           learned_variance=self.learned_variance and self.variance_kind, mu_step=self.mu_step,
                           variance=self.variance)
        other.info = self.info
        return other

    @property
    def num_classes(self) -> int | None:
        """The number of classes of a conditional net (the null label is this index), else None."""
        return getattr(self.net, "num_classes", None)

    def predict(self, x: torch.Tensor, t: Time, y: torch.Tensor | None = None, *,
                kind: str | None = None, with_v: bool = False):
        """The ``kind`` prediction (default: the net's own parameterization; x0 for edm, eps for mu)
        at (x, t), read with ``sde.marginal(t)``; with ``with_v`` the pair (prediction, v) of a
        learned-variance model. A model of a DDPM chain lives on the chain's ``embedding()``, so at
        t = i / T this uses the chain's own marginals."""
        checks.float_tensor("x", x)
        if with_v and not self.learned_variance:
            raise ValueError("with_v needs a learned-variance model (learned_variance=True).")
        t = checks.time(t, self.sde.T, batch=x.shape[0], like=x)
        m, s = self.sde.marginal(t)
        if self.parameterization == "edm":
            sigma, x_ve = s / m, x / bcast(m, x)
            c_skip, c_out, c_in = edm_scalings(sigma, self.sigma_data.to(x.dtype))
            raw, v = self._net(bcast(c_in, x) * x_ve, t, y, x)
            out, source = bcast(c_skip, x) * x_ve + bcast(c_out, x) * raw, "x0"
        else:
            inp = x / bcast((m.square() + s.square()).sqrt(), x) if self.input_scaling else x
            (out, v), source = self._net(inp, t, y, x), self.parameterization
        if source == "mu":
            a, G = self.sde.transition((t - self.mu_step).clamp_min(0), t)
            out, source = (x - bcast(a, x) * out) * bcast(s / G.square(), x), "eps"
        out = convert(out, source, kind or source, x, m, s)
        return (out, v) if with_v else out

    def _net(self, inp: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
             x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the net's prediction, its v or None), each shaped like x."""
        out = self.net(inp, t) if y is None else self.net(inp, t, y)
        if not self.learned_variance:
            return checks.same_shape("net", out, x), None
        want = (x.shape[0], 2 * x.shape[1], *x.shape[2:])
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            raise ValueError(f"a learned-variance net must return the prediction and v stacked along dim 1, "
                             f"shape {want}; got {tuple(getattr(out, 'shape', ()))}.")
        return out.chunk(2, dim=1)

    def score(self, x: torch.Tensor, t: Time, y: torch.Tensor | None = None) -> torch.Tensor:
        """grad_x log p_t(x [| y]) = -eps / s(t)."""
        return self.predict(x, t, y, kind="score")

    def eps(self, x: torch.Tensor, t: Time, y: torch.Tensor | None = None) -> torch.Tensor:
        """The noise prediction eps = -s(t) score."""
        return self.predict(x, t, y, kind="eps")

    def x0(self, x: torch.Tensor, t: Time, y: torch.Tensor | None = None) -> torch.Tensor:
        """The denoised estimate E[x_0 | x_t = x] = (x + s^2 score) / m."""
        return self.predict(x, t, y, kind="x0")

    def score_and_v(self, x: torch.Tensor, t: Time, y: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(score, v) of a learned-variance model in one net call (the ancestral sampler's input)."""
        return self.predict(x, t, y, kind="score", with_v=True)

    def forward(self, x: torch.Tensor, t: Time, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(x, t, y)

    def conditional(self, y: torch.Tensor, guidance: float = 0.0) -> ScoreFn:
        """The score_fn (x, t) -> (1 + w) score(x, t, y) - w score(x, t, null) of classifier-free
        guidance (Ho & Salimans 2022) with w = ``guidance``; w = 0 is the plain conditional score."""
        if self.num_classes is None:
            raise ValueError("conditional() needs a net built with num_classes.")
        if not isinstance(guidance, (int, float)) or guidance < 0:
            raise ValueError(f"guidance must be a number >= 0, got {guidance!r}.")
        if guidance == 0:
            return lambda x, t: self.score(x, t, y)

        def guided(x, t):
            null = torch.full_like(y, self.num_classes)
            return (1 + guidance) * self.score(x, t, y) - guidance * self.score(x, t, null)
        return guided


def learns_variance(score_fn) -> bool:
    """Whether a score_fn also gives a learned variance's v: ``learned_variance`` True and a
    ``score_and_v(x, t[, y])`` method (a ScoreModel with learned_variance=True). The one protocol by which
    samplers and the DDPM bound ask for v."""
    return bool(getattr(score_fn, "learned_variance", False)) and hasattr(score_fn, "score_and_v")


def variance_kind(score_fn) -> str:
    """The convention of a learned-variance score_fn's v (``schedule.learned_log_variance``)."""
    return getattr(score_fn, "variance_kind", "interpolation")


def fixed_variance(score_fn) -> str | None:
    """The fixed reverse variance a model states it is sampled with (``beta``, ``beta_tilde``), else None."""
    value = getattr(score_fn, "variance", None)
    return value if isinstance(value, str) and value in ("beta", "beta_tilde") else None


NETS = {"mlp": MLPScore, "unet": UNet}


_WIDTH = {"mlp": ("dim", "out_dim"), "unet": ("in_channels", "out_channels")}


def build_model(kind: str, sde: SDE, *, parameterization: str = "eps", input_scaling: bool = False,
                sigma_data: float = 0.5, learned_variance: bool = False, mu_step: float | None = None,
                **net_kwargs) -> ScoreModel:
    """``ScoreModel(NETS[kind](**net_kwargs), sde, parameterization, ...)`` with ``kind`` in {mlp, unet};
    a learned-variance net gets twice the output width. An unknown keyword fails naming it and the
    allowed ones."""
    cls = NETS[checks.one_of("model kind", kind, NETS)]
    allowed = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(net_kwargs) - set(allowed))
    if unknown:
        own = ['parameterization', 'input_scaling', 'sigma_data', 'learned_variance', 'mu_step']
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for model {kind!r}; allowed: "
                         f"{', '.join(allowed + own)}.")
    if learned_variance:
        width, out = _WIDTH[kind]
        net_kwargs[out] = 2 * net_kwargs.get(width, 1)
    return ScoreModel(cls(**net_kwargs), sde, parameterization, input_scaling=input_scaling,
                      sigma_data=sigma_data, learned_variance=learned_variance, mu_step=mu_step)
