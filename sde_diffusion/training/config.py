"""Run configuration: a typed schema (dataclasses), YAML files that compose, ``key.path=value`` overrides.

A YAML file may name ``base:`` files (a path or a list, relative to itself); they are merged first,
then the file's own keys on top (mappings merge recursively). Every value is checked against the
schema when loaded: an unknown key or a wrong type raises a ValueError naming the key path, e.g.
``train.lr: expected float, got 'abc'``. OmegaConf does the loading, merging, override parsing and
type checking (``config_loading.py``); this module holds the schema, the toolkit's value checks and
what a config builds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..schedule import DDPMSchedule
from ..sde import SDE, SDES, get_sde
from .config_loading import apply_overrides, read_yaml, typed

SDE_NAMES = (*SDES, "ddpm")  # "ddpm": the discrete DDPMSchedule, its model on the chain's embedding


@dataclass
class DataConfig:
    name: str = "ring"            # a dataset of data.load_dataset (built-in name or file format)
    path: Optional[str] = None    # users' files
    n: Optional[int] = None       # number of training samples (toys) or a cap on them
    seed: int = 0                 # the data's own seed (toy sampling), independent of training
    levels: Optional[int] = None  # levels of a data file's integer values (npy; over its .npz 'levels')


@dataclass
class SDEConfig:
    name: str = "vp"                                        # vp | subvp | ve | cosine | ddpm
    params: dict = field(default_factory=dict)             # SDE (or DDPMSchedule) arguments


@dataclass
class ModelConfig:
    kind: str = "mlp"                                       # mlp | unet
    parameterization: str = "eps"                           # eps | score | x0 | v | edm | mu (ddpm chains)
    params: dict = field(default_factory=dict)             # backbone arguments
    sigma_data: Optional[float] = None                      # edm: data std; null = estimated from the training data
    learned_variance: bool = False                          # the net also outputs v (iDDPM); needs loss vlb or hybrid


@dataclass
class LossConfig:
    kind: str = "dsm"                 # dsm (continuous t) | ddpm (an objective on the discrete schedule)
    weighting: str = "sigma2"         # sigma2 | likelihood | none | edm (edm models)
    eps: float = 1e-5                 # t ~ U(eps, T)
    importance_sampling: bool = False
    objective: str = "simple"         # ddpm: simple (L_simple) | mean_mse | vlb (the true bound L) | hybrid
    vlb_weight: float = 0.001         # lambda of hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021)


@dataclass
class TrainConfig:
    steps: int = 10_000
    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 100                 # linear learning-rate warm-up over this many steps
    grad_clip: float = 1.0            # max global gradient norm; 0 disables clipping
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 100
    sample_every: int = 0             # 0: only at the end
    ckpt_every: int = 1_000
    keep: int = 2                     # checkpoints kept on disk
    bf16: bool = False                # bf16 autocast (CUDA only)
    p_uncond: float = 0.0             # label dropout of classifier-free guidance (needs model.params.num_classes)


@dataclass
class SampleConfig:
    method: str = "euler_maruyama"
    steps: int = 500
    n: int = 64
    eps: float = 1e-3


@dataclass
class ClassifierConfig:
    """The noisy classifier p_phi(y | x_t, t) of classifier guidance, trained by
    ``sde-diffusion train-classifier`` on the run's data noised by the run's SDE (Adam, fixed lr)."""
    hidden: int = 256
    layers: int = 3
    steps: int = 3000
    batch_size: int = 256
    lr: float = 2e-3
    eps: float = 1e-3                 # t ~ U(eps, T)
    seed: int = 0
    ckpt_every: int = 1000


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)


# Sections whose changes a resumed run accepts; everything else must match the checkpoint exactly.
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.sample_every", "train.ckpt_every",
                     "train.keep", "sample", "classifier.steps", "classifier.ckpt_every")


# -- checks beyond the types, and what a config builds ---------------------------------------------
def _one_of(path: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{path}: unknown value {value!r}; allowed: {', '.join(allowed)}.")


def _validate(cfg: Config) -> Config:
    """Value checks that need more than the types, each naming its key."""
    _one_of("sde.name", cfg.sde.name, SDE_NAMES)
    _check_model(cfg.model)
    _one_of("loss.kind", cfg.loss.kind, ("dsm", "ddpm"))
    _one_of("loss.weighting", cfg.loss.weighting, ("sigma2", "likelihood", "none", "edm"))
    if cfg.loss.kind == "ddpm" and cfg.sde.name != "ddpm":
        raise ValueError(f"loss.kind: 'ddpm' needs sde.name 'ddpm' (a discrete schedule), "
                         f"got sde.name {cfg.sde.name!r}.")
    _check_objective(cfg)
    at_least = {1: {"train": ("steps", "batch_size", "log_every", "ckpt_every", "keep"), "sample": ("steps", "n"),
                    "classifier": ("hidden", "layers", "steps", "batch_size", "ckpt_every")},
                0: {"train": ("warmup", "sample_every", "seed"), "classifier": ("seed",)}}
    for bound, table in at_least.items():
        for sec, keys in table.items():
            for key in keys:
                if getattr(getattr(cfg, sec), key) < bound:
                    raise ValueError(f"{sec}.{key}: must be an integer >= {bound}, "
                                     f"got {getattr(getattr(cfg, sec), key)}.")
    for sec, key in (("train", "lr"), ("loss", "eps"), ("sample", "eps"), ("classifier", "lr"),
                     ("classifier", "eps")):
        v = getattr(getattr(cfg, sec), key)
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{sec}.{key}: must be a finite number > 0, got {v}.")
    for key in ("weight_decay", "grad_clip"):
        if not (math.isfinite(getattr(cfg.train, key)) and getattr(cfg.train, key) >= 0):
            raise ValueError(f"train.{key}: must be a finite number >= 0, got {getattr(cfg.train, key)}.")
    if not 0 <= cfg.train.p_uncond <= 1:
        raise ValueError(f"train.p_uncond: must lie in [0, 1], got {cfg.train.p_uncond}.")
    if cfg.train.p_uncond > 0 and cfg.model.params.get("num_classes") is None:
        raise ValueError("train.p_uncond: label dropout needs a conditional model (set model.params.num_classes).")
    if not 0 <= cfg.train.ema_decay < 1:
        raise ValueError(f"train.ema_decay: must lie in [0, 1), got {cfg.train.ema_decay}.")
    if cfg.data.n is not None and cfg.data.n < 1:
        raise ValueError(f"data.n: must be an integer >= 1 or null, got {cfg.data.n}.")
    if cfg.data.levels is not None and cfg.data.levels < 2:
        raise ValueError(f"data.levels: must be an integer >= 2 or null, got {cfg.data.levels}.")
    build_sde(cfg)  # the SDE's own checks, reported under sde.params
    return cfg


def _check_objective(cfg: Config) -> None:
    """loss.objective, loss.vlb_weight, model.learned_variance and the mu parameterization together."""
    from ..losses import OBJECTIVES

    loss, model = cfg.loss, cfg.model
    _one_of("loss.objective", loss.objective, OBJECTIVES)
    if loss.objective != "simple" and loss.kind != "ddpm":
        raise ValueError(f"loss.objective: {loss.objective!r} is an objective of the discrete chain; it needs "
                         f"loss.kind 'ddpm' (and sde.name 'ddpm'), got loss.kind {loss.kind!r}.")
    if not (math.isfinite(loss.vlb_weight) and loss.vlb_weight > 0):
        raise ValueError(f"loss.vlb_weight: must be a finite number > 0, got {loss.vlb_weight}.")
    if model.learned_variance and loss.objective not in ("vlb", "hybrid"):
        raise ValueError(f"model.learned_variance: only the bound trains v; it needs loss.objective 'vlb' or "
                         f"'hybrid', got {loss.objective!r}.")
    if loss.objective == "hybrid" and not model.learned_variance:
        raise ValueError("loss.objective: 'hybrid' trains a learned variance; set model.learned_variance: true.")
    if model.parameterization == "mu" and cfg.sde.name != "ddpm":
        raise ValueError(f"model.parameterization: 'mu' predicts the posterior mean of a discrete chain's step; "
                         f"it needs sde.name 'ddpm', got {cfg.sde.name!r}.")


def _params(path: str, cls: type, params: dict) -> dict:
    """Check a params mapping against the init fields of dataclass ``cls``, naming unknown keys."""
    allowed = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in params:
        if key not in allowed:
            raise ValueError(f"{path}.{key}: unknown key for {cls.__name__}; allowed: {', '.join(allowed)}.")
    return params


def _check_model(model: ModelConfig) -> None:
    """model.kind and the keys of model.params against the backbone's signature."""
    import inspect

    from ..models.score_model import NETS, PARAMETERIZATIONS

    _one_of("model.kind", model.kind, NETS)
    _one_of("model.parameterization", model.parameterization, PARAMETERIZATIONS)
    derived = ("dim", "in_channels", "out_dim", "out_channels")  # from the data and model.learned_variance
    allowed = [p for p in inspect.signature(NETS[model.kind]).parameters if p not in derived]
    for key in model.params:
        if key not in allowed + ["input_scaling"]:
            raise ValueError(f"model.params.{key}: unknown key for model {model.kind!r}; allowed: "
                             f"{', '.join(allowed + ['input_scaling'])}.")


def build_sde(cfg: Config) -> SDE:
    """The forward SDE of the run; for ``ddpm`` its schedule's ``embedding()`` (the chain's own
    marginals at t = i / T), on which the run's model is read."""
    schedule = build_schedule(cfg)
    if schedule is not None:
        return schedule.embedding()
    params = _params("sde.params", SDES[cfg.sde.name], cfg.sde.params)
    try:
        return get_sde(cfg.sde.name, **params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"sde.params: {e}") from None


def build_schedule(cfg: Config) -> DDPMSchedule | None:
    """The discrete DDPM schedule when ``sde.name`` is ``ddpm``, else None."""
    if cfg.sde.name != "ddpm":
        return None
    params = _params("sde.params", DDPMSchedule, cfg.sde.params)
    try:
        return DDPMSchedule(**params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"sde.params: {e}") from None


# -- loading (the machinery is config_loading.py, on OmegaConf) ---------------------------------------
def from_dict(raw: dict) -> Config:
    """A validated Config from a plain mapping (e.g. a checkpoint's config.json)."""
    return _validate(typed(Config, raw))


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read ``path`` (with its bases), apply overrides, check every key and type."""
    raw = read_yaml(path) if path is not None else {}
    return from_dict(apply_overrides(raw, list(overrides)))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def differences(a: Config, b: Config) -> list[str]:
    """``"key.path: a vs b"`` for each value differing between two configs (params compared whole)."""
    da, db = to_dict(a), to_dict(b)
    out = []
    for sec in da:
        for key in da[sec]:
            if da[sec][key] != db[sec][key]:
                out.append(f"{sec}.{key}: {da[sec][key]!r} vs {db[sec][key]!r}")
    return out
