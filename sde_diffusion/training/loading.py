"""``load(source)``: every kind of model source to one handle, a model that knows its data.

A source is one of
    RUN_DIR or CHECKPOINT   a training run (its latest checkpoint), its ``checkpoints`` folder or one
                            ``step_*`` folder (``checkpoint``: every file's size and SHA-256 verified);
                            a ``train-classifier`` run gives its noisy classifier
    EXPORT_DIR              an exported model (``meta.json``, ``shipped.export``)
    shipped:NAME            an export shipped with the package (``shipped_models()``: digits_vp, digits_cfg)
    diffusers:PATH          a local diffusers UNet2DModel or pipeline folder (``models.diffusers_adapter``)
    analytic:NAME           a Gaussian mixture's exact score (``analytic.preset``: ring2d, grid2d, gmm64)
The handle is the model itself (a ``ScoreModel``, or a ``NoisyClassifier``) in eval mode without parameter
gradients, with ``info`` (``models.ModelInfo``): source, data shape, levels, data range, config, meta.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import checks
from ..dequantize import DATA_RANGE
from ..guidance import NoisyClassifier
from ..models import ModelInfo, ScoreModel, build_model
from ..sde import SDE, SDES, get_sde
from .checkpoint import (kind_of, load_weights, read_config, read_manifest, resolve, sha256_file)
from .config import Config, build_schedule, build_sde
from .data import Dataset, check_model_data, load_dataset, load_file

SCHEMES = ("analytic", "shipped", "diffusers")
KINDS = ("score model", "noisy classifier")
ASSETS = Path(__file__).resolve().parent.parent / "assets"


def parse_source(source: str | Path) -> tuple[str | None, str]:
    """(scheme, rest) of ``scheme:rest`` for a scheme in ``SCHEMES``, else (None, the path)."""
    if not isinstance(source, (str, Path)):
        raise TypeError(f"a model source is a path or a string such as shipped:digits_vp, got {type(source).__name__}.")
    scheme, sep, rest = str(source).partition(":")
    if sep and scheme in SCHEMES:
        if not rest:
            raise ValueError(f"model source {str(source)!r} names no {scheme} model after the colon.")
        return scheme, rest
    return None, str(source)


def shipped_models() -> list[str]:
    """The names of the exports shipped in the package's assets (``shipped:NAME``)."""
    return sorted(p.name for p in ASSETS.iterdir() if (p / "meta.json").is_file())


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` is an exported model's folder (``meta.json``) rather than a run or checkpoint."""
    return (Path(path) / "meta.json").is_file()


def _read_export(path: Path) -> dict:
    """An export's meta.json (event_shape, levels, step, dataset, sha256, command), its weights verified."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        want = meta["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{str(path)!r} is not an exported model (meta.json unreadable or without sha256); "
                         "see `python -m sde_diffusion.training.shipped --help`.") from None
    if not (path / "ema.safetensors").is_file() or sha256_file(path / "ema.safetensors") != want:
        raise ValueError(f"{str(path)!r}: ema.safetensors is missing or does not match meta.json's SHA-256.")
    return meta


def model_kwargs(cfg: Config, meta: dict) -> dict:
    """The backbone arguments: the config's ``model.params`` plus the data's shape, the learned
    variance, and for ``mu`` the length 1/T of the chain's step."""
    shape = tuple(meta["event_shape"])
    data_arg = {"dim": shape[0]} if cfg.model.kind == "mlp" else {"in_channels": shape[0]}
    extra = {"learned_variance": True} if cfg.model.learned_variance else {}
    if cfg.model.parameterization == "mu":
        extra["mu_step"] = 1 / build_schedule(cfg).T
    return {"parameterization": cfg.model.parameterization, **data_arg, **extra, **cfg.model.params}


def _sde_name(cfg: Config) -> str:
    """The --sde name a run's SDE answers to (a DDPM chain's limit is the VP-SDE)."""
    return "vp" if cfg.sde.name == "ddpm" else cfg.sde.name


def _check_sde(source: str, sde: SDE | str | None, own: SDE, cfg: Config) -> None:
    """Refuse an ``sde`` other than the model's own, naming both."""
    if sde is None:
        return
    same = (sde in (cfg.sde.name, _sde_name(cfg))) if isinstance(sde, str) else sde == own
    if not same:
        asked = f"the {sde} SDE" if isinstance(sde, str) else str(sde)
        raise ValueError(f"{source!r} was trained with the {cfg.sde.name} SDE ({own}), not {asked}; leave the "
                         f"SDE unset (it is the model's own) or pass {_sde_name(cfg)}.")


def _finish(model: torch.nn.Module, info: ModelInfo, device, event_shape) -> torch.nn.Module:
    if event_shape is not None and tuple(event_shape) != info.event_shape:
        raise ValueError(f"{info.source!r} takes data of shape {info.event_shape}, not {tuple(event_shape)}.")
    model.info = info
    return model.to(device).eval().requires_grad_(False)


def _analytic(name: str, source: str, sde, device) -> ScoreModel:
    from ..analytic import preset

    gm = preset(name)
    if sde is None or isinstance(sde, str):
        sde = get_sde(checks.one_of("SDE of an analytic model", sde or "vp", SDES))
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an SDE or one of {', '.join(SDES)}, got {type(sde).__name__}.")
    info = ModelInfo(source, (gm.dim,), None, None, None, {"dataset": name}, mixture=gm)
    return _finish(ScoreModel(gm.score(sde), sde, "score"), info, device, None)


def _diffusers(path: str, source: str, sde, device) -> ScoreModel:
    """A diffusers folder: its Config holds only defaults (sde.name ``discrete``, no data of its own,
    so data comes from a file: ``model_dataset(model, data=FILE)``); 256 levels on [-1, 1], diffusers' convention."""
    from ..models.diffusers_adapter import event_shape, from_diffusers

    model = from_diffusers(path)
    cfg = Config()
    cfg.sde.name, cfg.model.kind, cfg.model.parameterization = "discrete", "diffusers", model.parameterization
    cfg.data.name, cfg.data.path = "npy", None
    _check_sde(source, sde, model.sde, cfg)
    info = ModelInfo(source, event_shape(model), 256, DATA_RANGE, cfg, {"path": str(Path(path).resolve())})
    return _finish(model, info, device, None)


def _classifier(folder: Path, manifest: dict, source: str, sde, device, event_shape) -> torch.nn.Module:
    from .classifier_training import build_classifier

    cfg = read_config(folder)
    own = build_sde(cfg)
    if sde is not None and (sde != own if isinstance(sde, SDE) else sde not in (cfg.sde.name, _sde_name(cfg))):
        raise ValueError(f"classifier {source!r} was trained under {own}, but the model samples under {sde}; "
                         "train the classifier with the model's SDE.")
    classifier = build_classifier(cfg, manifest)
    load_weights(classifier, folder, ema=False)
    classifier.sde = own
    info = ModelInfo(source, tuple(manifest["event_shape"]), manifest.get("levels"), DATA_RANGE, cfg,
                     {k: v for k, v in manifest.items() if k != "files"} | {"path": str(folder)})
    return _finish(classifier, info, device, event_shape)


def load(source: str | Path, *, sde: SDE | str | None = None, device: torch.device | str = "cpu",
         ema: bool = True, event_shape: tuple[int, ...] | None = None, kind: str | None = None) -> torch.nn.Module:
    """The model of ``source`` (see the module) in eval mode, without parameter gradients, on ``device``.

    ``sde``: for ``analytic:`` the SDE (an SDE or its name, default vp); for any other source a check
    that the model was trained with it (an SDE, or a name such as ``vp``), naming both when not.
    ``ema``: a run's EMA weights (default) or its raw weights (an export holds only the EMA).
    ``event_shape``: a check of the data shape (e.g. a classifier meant to guide a given model).
    ``kind``: a check of what it holds, ``score model`` or ``noisy classifier``.
    """
    if kind is not None:
        checks.one_of("model kind", kind, KINDS)
    model = _load(source, sde, device, ema, event_shape)
    found = "noisy classifier" if isinstance(model, NoisyClassifier) else "score model"
    if kind is not None and found != kind:
        hint = " (pass it to sample as --classifier)" if found == "noisy classifier" else ""
        raise ValueError(f"{str(source)!r} holds a {found}, not a {kind}{hint}.")
    return model


def _load(source, sde, device, ema, event_shape) -> torch.nn.Module:
    scheme, rest = parse_source(source)
    source = str(source)
    if scheme == "analytic":
        return _analytic(rest, source, sde, device)
    if scheme == "diffusers":
        return _diffusers(rest, source, sde, device)
    if scheme == "shipped":
        folder = ASSETS / checks.one_of("shipped model", rest, shipped_models())
    else:
        folder = Path(rest)
        if not folder.exists():
            from ..analytic import PRESETS

            guess = "analytic" if rest in PRESETS else "shipped" if rest in shipped_models() else None
            raise ValueError(f"model source {rest!r} does not exist: give a run or model folder, shipped:NAME, "
                             f"diffusers:PATH or analytic:NAME{f' (did you mean {guess}:{rest}?)' if guess else ''}.")
    if is_exported(folder):
        if not ema:
            raise ValueError(f"{source!r} is an exported model: it holds the EMA weights only (ema=True).")
        meta = _read_export(folder)
    else:
        folder = resolve(folder)
        meta = read_manifest(folder)
        if kind_of(meta) == "noisy classifier":
            return _classifier(folder, meta, source, sde, device, event_shape)
        if kind_of(meta) != "score model":
            raise ValueError(f"checkpoint {str(folder)!r} holds a {kind_of(meta)}, not a score model.")
    cfg = read_config(folder)
    own = build_sde(cfg)
    _check_sde(source, sde, own, cfg)
    model = build_model(cfg.model.kind, own, **model_kwargs(cfg, meta))
    load_weights(model, folder, ema=ema, device="cpu")
    meta = {k: v for k, v in meta.items() if k not in ("files", "sha256")} | {"path": str(folder)}
    info = ModelInfo(source, tuple(meta["event_shape"]), meta.get("levels"), DATA_RANGE, cfg, meta)
    return _finish(model, info, device, event_shape)


def model_dataset(model: torch.nn.Module, split: str = "test", *, data: str | Path | None = None,
                  levels: int | None = None, n: int | None = None, seed: int = 0) -> Dataset:
    """Data for a loaded model: the .npy/.npz file ``data`` (its shape checked against the model's;
    ``levels`` for its integer values), or else the model's own training data's ``split`` (a seeded
    subset of ``n`` if given). A diffusers or analytic model has no data of its own and needs ``data``
    (an analytic model: or its own draws, ``model.info.mixture.sample``)."""
    info = _info(model)
    if levels is not None and data is None:
        raise ValueError("levels applies to a data file; a model's own data has its own levels.")
    if data is not None:
        ds = load_file(data, levels=levels, n=n, seed=seed)
        cfg = info.config
        kind, params = (cfg.model.kind, cfg.model.params) if cfg is not None else ("analytic", {})
        check_model_data(ds, kind, params, info.event_shape, what=f"model {info.source!r}")
        return ds
    cfg = info.config
    if cfg is None or (cfg.data.name == "npy" and cfg.data.path is None):
        raise ValueError(f"{info.source!r} has no data of its own: pass a data file (--data FILE, a .npy/.npz "
                         "of vectors or of images as integer levels).")
    return load_dataset(cfg.data.name, split=split, path=cfg.data.path, n=n, seed=seed,
                        levels=getattr(cfg.data, "levels", None))


def _info(model) -> ModelInfo:
    info = getattr(model, "info", None)
    if not isinstance(info, ModelInfo):
        raise TypeError(f"expected a model from sde_diffusion.load(...), got {type(model).__name__} without info.")
    return info
