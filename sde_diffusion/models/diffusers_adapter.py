"""diffusers models as score models: ``from_diffusers(path_or_objects)`` (optional extra
``pip install "sde-diffusion[diffusers]"``; diffusers is imported only when a model is loaded).

A diffusers ``UNet2DModel`` is trained on a discrete table alphas_cumprod[k], k = 0..N-1, of its
scheduler; the SDE it approximates is that table's ``DiscreteVPSDE`` (knot k + 1 at t = (k+1)/N). At
continuous t the UNet gets the timestep N t - 1 (``DiscreteVPSDE.model_timestep``; diffusers' integer
k at the knots) and its output is read by the scheduler's ``prediction_type``: ``epsilon`` as eps,
``sample`` as x0, ``v_prediction`` as v = m eps - s x0, each converted by ``score_model.convert``.
Its ``variance_type`` is read as its authors sample with it: ``fixed_small`` (beta_tilde) and
``fixed_large`` (beta) as the ancestral sampler's and the bound's ``variance="auto"``, ``learned_range``
and ``learned`` as a learned variance (the UNet's second C channels) in diffusers' convention
(``schedule.learned_log_variance``); a scheduler that states none (DDIM's, DPM-Solver's) leaves the
samplers' defaults. Nothing is downloaded: a model is a local folder or objects in memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..sde import DiscreteVPSDE
from .score_model import ScoreModel

INSTALL = 'pip install "sde-diffusion[diffusers]"'
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
# variance_type -> (the fixed variance, or None; the learned variance's convention, or False). The _log
# spellings are the same variances (diffusers' fixed_large_log step takes the square root of log beta).
VARIANCE_TYPES = {"fixed_small": ("beta_tilde", False), "fixed_small_log": ("beta_tilde", False),
                  "fixed_large": ("beta", False), "fixed_large_log": ("beta", False),
                  "learned_range": (None, "learned_range"), "learned": (None, "learned")}
# DDPMScheduler()'s own defaults, for a UNet folder saved without a scheduler config
DEFAULT_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
                     "prediction_type": "epsilon", "variance_type": "fixed_small"}


class MissingExtra(ImportError, ValueError):
    """An optional dependency is not installed (a ValueError too, so the CLI prints it as one line)."""


def import_diffusers():
    """The diffusers module, or a one-line error saying which extra to install."""
    try:
        import diffusers
    except ImportError:
        raise MissingExtra(f"diffusers models need the diffusers package: {INSTALL}") from None
    return diffusers


def schedule_sde(config: dict, interpolation: str = "linear") -> DiscreteVPSDE:
    """The ``DiscreteVPSDE`` of a scheduler config: ``trained_betas`` if given, else ``beta_schedule``
    (linear, scaled_linear, squaredcos_cap_v2) with beta_start, beta_end and num_train_timesteps."""
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr schedules end at abar_N = 0 (m(1) = 0, log m = -inf) "
                         "and have no VP-SDE; use a scheduler config without it.")
    n = config.get("num_train_timesteps", 1000)
    if config.get("trained_betas") is not None:
        betas = config["trained_betas"]
        if len(betas) != n:
            raise ValueError(f"trained_betas has {len(betas)} values but num_train_timesteps is {n}.")
        return DiscreteVPSDE.from_betas(betas, interpolation)
    if "beta_schedule" not in config:
        raise ValueError(f"scheduler {config.get('_class_name', '?')} has no discrete beta schedule "
                         "(beta_schedule or trained_betas); use e.g. a DDPMScheduler or DDIMScheduler config.")
    return DiscreteVPSDE.from_beta_schedule(config["beta_schedule"], n, config.get("beta_start", 1e-4),
                                            config.get("beta_end", 0.02), interpolation)


class DiffusersNet(nn.Module):
    """``net(x, t[, y])`` of a diffusers UNet: unet(x, N t - 1, class_labels=y).sample."""

    def __init__(self, unet: nn.Module, sde: DiscreteVPSDE):
        super().__init__()
        self.unet, self.sde = unet, sde
        config = getattr(unet, "config", {})
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        embed_type, n_classes = get("class_embed_type"), get("num_class_embeds")
        self.num_classes = n_classes if embed_type is None else None  # an nn.Embedding of labels

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is not None and self.num_classes is not None and y.device.type == "cpu" and bool(
                ((y < 0) | (y >= self.num_classes)).any()):
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1} for this diffusers model, which has "
                             "no null label (classifier-free guidance needs one trained with label dropout).")
        out = self.unet(x, self.sde.model_timestep(t), **({} if y is None else {"class_labels": y}))
        return out.sample if hasattr(out, "sample") else out[0] if isinstance(out, tuple) else out


def _read_folder(path: Path) -> tuple[nn.Module, dict]:
    """(UNet2DModel, scheduler config) of a pipeline folder (unet/, scheduler/) or a UNet folder
    (config.json; scheduler_config.json beside it if present, else DDPMScheduler()'s defaults)."""
    diffusers = import_diffusers()
    if not path.is_dir():
        raise ValueError(f"diffusers model {str(path)!r} is not a folder (expected one written by save_pretrained).")
    unet_dir = path / "unet" if (path / "unet" / "config.json").is_file() else path
    if not (unet_dir / "config.json").is_file():
        raise ValueError(f"{str(path)!r} holds no diffusers model: expected config.json (UNet2DModel.save_pretrained) "
                         "or unet/config.json (a pipeline's save_pretrained).")
    kind = json.loads((unet_dir / "config.json").read_text()).get("_class_name")
    if kind != "UNet2DModel":
        raise ValueError(f"{str(unet_dir)!r} holds a {kind}; only UNet2DModel (unconditional or "
                         "class-conditional) is supported.")
    unet = diffusers.UNet2DModel.from_pretrained(unet_dir, local_files_only=True, low_cpu_mem_usage=False)
    for sched in (path / "scheduler" / "scheduler_config.json", unet_dir / "scheduler_config.json"):
        if sched.is_file():
            return unet, json.loads(sched.read_text())
    return unet, dict(DEFAULT_SCHEDULER)


def from_diffusers(source: Any, scheduler: Any = None, *, interpolation: str = "linear") -> ScoreModel:
    """A ``ScoreModel`` (eval mode) on the scheduler's ``DiscreteVPSDE`` from ``source``: a local folder
    (str or Path) written by ``UNet2DModel.save_pretrained`` or a pipeline's ``save_pretrained``, or a
    UNet object (any module ``unet(x, timestep[, class_labels=y])``) with ``scheduler`` a scheduler
    object or its config dict (default: DDPMScheduler()'s), or a tuple (unet, scheduler).
    ``interpolation`` of log m between the knots: ``linear`` (Lu et al.) or ``cubic`` (smooth beta(t),
    far cheaper for the probability-flow likelihood; the same chain at the knots)."""
    if isinstance(source, tuple):
        source, scheduler = source
    if isinstance(source, (str, Path)):
        if scheduler is not None:
            raise ValueError("pass scheduler= only with a UNet object; a folder holds its own scheduler config.")
        unet, config = _read_folder(Path(source))
    elif isinstance(source, nn.Module):
        unet = source
        config = dict(DEFAULT_SCHEDULER if scheduler is None else getattr(scheduler, "config", scheduler))
    else:
        raise TypeError(f"from_diffusers takes a folder, a UNet module or (unet, scheduler), got {type(source).__name__}.")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction_type {prediction!r}; allowed: {', '.join(PREDICTIONS)}.")
    variance_type = config.get("variance_type")  # absent or None: a scheduler that states none (DDIM, DPM-Solver)
    if variance_type is not None and variance_type not in VARIANCE_TYPES:
        raise ValueError(f"unknown variance_type {variance_type!r}; allowed: {', '.join(VARIANCE_TYPES)}.")
    fixed, learned = VARIANCE_TYPES.get(variance_type, (None, False))
    _check_channels(unet, variance_type, learned)
    sde = schedule_sde(config, interpolation)
    return ScoreModel(DiffusersNet(unet, sde), sde, PREDICTIONS[prediction], learned_variance=learned,
                      variance=fixed).eval()


def _check_channels(unet: nn.Module, variance_type: str, learned) -> None:
    """A learned variance needs out_channels = 2 in_channels (the prediction, then v), a fixed one
    out_channels = in_channels; a UNet without a config is taken as it is."""
    config = getattr(unet, "config", None)
    c_in, c_out = (getattr(config, k, None) if not isinstance(config, dict) else config.get(k)
                   for k in ("in_channels", "out_channels"))
    if c_in is None or c_out is None:
        return
    want = 2 * c_in if learned else c_in
    if c_out != want:
        raise ValueError(f"variance_type {variance_type!r} needs a UNet with out_channels = {want} for "
                         f"in_channels = {c_in} ({'the prediction, then v' if learned else 'the prediction'}); "
                         f"this one has {c_out}.")


def event_shape(model: ScoreModel) -> tuple[int, ...]:
    """(in_channels, H, W) of a ``from_diffusers`` model's UNet, from its config's sample_size."""
    config = model.net.unet.config
    size = config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (config.in_channels, h, w)
