"""The noisy classifier of classifier guidance as a run: ``sde-diffusion train-classifier``.

Trains ``guidance.NoisyClassifier`` p_phi(y | x_t, t) by Adam on the cross-entropy of forward-noised
data, x_t = m(t) x_0 + s(t) z with t ~ U(eps, T) (``guidance.classifier_loss``), under the run config's
data and SDE and its ``classifier`` section. Checkpoints are the score models' (``checkpoint``:
safetensors, atomic, verified) with ``kind: noisy classifier`` in the manifest; they hold the
optimizer, the step and the RNG states, and the data stream is replayed from the step, so ``--resume``
continues exactly. A classifier guides only a model trained under the same SDE on the same data
shape (``load_noisy_classifier(..., sde=model.sde)`` checks it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import (atomic_write_text, kind_of, latest, load_weights, read_config, read_manifest,
                         read_state, resolve, save_checkpoint)
from ..checks import bcast
from .config import Config, build_sde, to_dict
from .data import batches, load_dataset
from .distributed import env_size
from ..guidance import NoisyClassifier, classifier_step
from .runs import StopOnSignal, TrainingError, check_finite, open_run, rewind_metrics, write_metrics

KIND = "noisy classifier"
LOG_EVERY = 100


@dataclass
class ClassifierRun:
    out: Path
    step: int                     # optimizer steps completed
    interrupted: bool             # stopped by SIGINT/SIGTERM (a checkpoint was saved)
    checkpoint: Path
    classifier: NoisyClassifier
    config: Config
    accuracy: dict[float, float]  # t -> held-out accuracy at t (empty if interrupted)


def _build(cfg: Config, meta: dict) -> NoisyClassifier:
    return NoisyClassifier(math.prod(meta["event_shape"]), meta["num_classes"], hidden=cfg.classifier.hidden,
                           layers=cfg.classifier.layers)


def held_out_accuracy(classifier: NoisyClassifier, cfg: Config, *, device, times=(0.0, 0.25, 0.5),
                      n: int = 2000, seed: int = 0) -> dict[float, float]:
    """t -> accuracy of argmax_y p_phi(y | x_t, t) on the test split noised to t = eps + f (T - eps),
    for each fraction f in ``times`` (at most ``n`` points, one fixed noise draw)."""
    sde, eps = build_sde(cfg), cfg.classifier.eps
    ds = load_dataset(cfg.data.name, split="test", path=cfg.data.path, seed=cfg.data.seed)
    x0, y = ds.x[:n].to(device), ds.y[:n].to(device)
    gen = torch.Generator(device).manual_seed(seed)
    z = torch.randn(x0.shape, generator=gen, device=device, dtype=x0.dtype)
    out = {}
    with torch.no_grad():
        for f in times:
            t = torch.full((len(x0),), eps + f * (sde.T - eps), device=device, dtype=x0.dtype)
            m, s = sde.marginal(t)
            xt = bcast(m, x0) * x0 + bcast(s, x0) * z
            out[float(t[0])] = float((classifier(xt, t).argmax(1) == y).double().mean())
    return out


def train_noisy_classifier(cfg: Config | None, out: str | Path, *, resume: bool = False,
                           device: str | torch.device = "cpu", progress: bool = True) -> ClassifierRun:
    """Train the run's noisy classifier into ``out`` (or continue its latest checkpoint with ``resume``;
    ``cfg`` None then means the checkpoint's config). One process (no torchrun: it is small)."""
    if env_size() > 1:
        raise ValueError("train-classifier runs in one process; launch it without torchrun.")
    out, device = Path(out), torch.device(device)
    cfg, ckpt = open_run(out, cfg, resume, KIND)
    cc, sde = cfg.classifier, build_sde(cfg)
    if not cc.eps < sde.T:
        raise ValueError(f"classifier.eps: must be below the SDE's T = {sde.T:g}, got {cc.eps}.")
    ds = load_dataset(cfg.data.name, split="train", path=cfg.data.path, n=cfg.data.n, seed=cfg.data.seed)
    if ds.y is None:
        raise ValueError(f"data.name: a classifier needs labels; dataset {ds.name!r} has none.")
    meta = {"kind": KIND, "event_shape": list(ds.shape), "levels": ds.levels, "num_classes": ds.num_classes,
            "dataset": ds.name}
    torch.manual_seed(cc.seed)
    classifier = _build(cfg, meta).to(device).train()
    opt = torch.optim.Adam(classifier.parameters(), lr=cc.lr)
    noise_gen = torch.Generator(device).manual_seed(cc.seed + 1)
    step, losses = 0, []
    if ckpt is not None:
        state = read_state(ckpt)
        load_weights(classifier, ckpt, ema=False)
        opt.load_state_dict(state["optimizer"])
        noise_gen.set_state(state["rng"]["noise"])
        step, losses = state["step"], list(state["pending_losses"].to(device))
        rewind_metrics(out / "metrics.csv", step, LOG_EVERY)
    atomic_write_text(out / "config.json", json.dumps(to_dict(cfg), indent=2))
    data = batches(ds, cc.batch_size, generator=torch.Generator().manual_seed(cc.seed), device=device, start=step)

    def save() -> Path:
        check_finite(losses, step, out)
        pending = torch.stack(losses) if losses else torch.zeros(0, device=device)
        state = {"optimizer": opt.state_dict(), "rng": {"noise": noise_gen.get_state()}, "pending_losses": pending}
        try:
            return save_checkpoint(out, step=step, model=classifier, ema=classifier, state=state, config=cfg,
                                   meta=meta)
        except OSError as e:
            raise TrainingError(f"could not write the checkpoint of step {step} ({e.strerror or e}); "
                                f"training stopped. Last good checkpoint: {latest(out)}.") from e

    saved_at = step if ckpt is not None else None
    bar = tqdm(total=cc.steps, initial=step, desc="train-classifier", disable=not progress, dynamic_ncols=True)
    with StopOnSignal() as stop:
        while step < cc.steps and stop.requested is None:
            losses.append(classifier_step(classifier, opt, sde, *next(data), eps=cc.eps, generator=noise_gen))
            step += 1
            bar.update(1)
            if step % LOG_EVERY == 0 or step == cc.steps:
                check_finite(losses, step, out)
                mean = float(torch.stack(losses).mean())
                write_metrics(out / "metrics.csv", [{"step": step, "loss": f"{mean:.6g}", "lr": f"{cc.lr:.6g}"}])
                bar.set_postfix(loss=f"{mean:.4f}")
                if step % LOG_EVERY == 0:
                    losses = []
            if step % cc.ckpt_every == 0:
                save()
                saved_at = step
    bar.close()
    if saved_at != step:
        save()
    classifier.eval()
    accuracy = {} if stop.requested else held_out_accuracy(classifier, cfg, device=device)
    return ClassifierRun(out, step, stop.requested is not None, latest(out), classifier, cfg, accuracy)


def load_noisy_classifier(path: str | Path, *, device: torch.device | str = "cpu",
                          sde=None, event_shape: tuple[int, ...] | None = None) -> tuple[NoisyClassifier, Config]:
    """(NoisyClassifier in eval mode, its run Config) from a ``train-classifier`` run or checkpoint.
    With ``sde`` / ``event_shape`` (those of the model to guide), a classifier trained under another
    SDE or on another data shape is refused, naming both."""
    ckpt = resolve(path)
    manifest = read_manifest(ckpt)
    if kind_of(manifest) != KIND:
        raise ValueError(f"checkpoint {str(ckpt)!r} holds a {kind_of(manifest)}, not a noisy classifier "
                         "(train one with sde-diffusion train-classifier).")
    cfg = read_config(ckpt)
    if sde is not None and build_sde(cfg) != sde:
        raise ValueError(f"classifier {str(ckpt)!r} was trained under {build_sde(cfg)}, but the model "
                         f"samples under {sde}; train the classifier with the model's SDE.")
    if event_shape is not None and tuple(manifest["event_shape"]) != tuple(event_shape):
        raise ValueError(f"classifier {str(ckpt)!r} takes data of shape {tuple(manifest['event_shape'])}, "
                         f"the model's is {tuple(event_shape)}.")
    classifier = _build(cfg, manifest)
    load_weights(classifier, ckpt, ema=False)
    return classifier.to(device).eval(), cfg
