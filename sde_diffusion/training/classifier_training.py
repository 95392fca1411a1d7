"""The noisy classifier of classifier guidance as a run: ``sde-diffusion train-classifier``.

Trains ``guidance.NoisyClassifier`` p_phi(y | x_t, t) by Adam on the cross-entropy of forward-noised
data, x_t = m(t) x_0 + s(t) z with t ~ U(eps, T) (``guidance.classifier_loss``), under the run config's
data and SDE and its ``classifier`` section. Checkpoints are the score models' (``checkpoint``:
safetensors, atomic, verified) with ``kind: noisy classifier`` in the manifest; they hold the
optimizer, the step and the RNG states, and the data stream is replayed from the step, so ``--resume``
continues exactly. A classifier guides only a model trained under the same SDE on the same data
shape (``load(run, sde=model.sde, event_shape=model.event_shape)`` checks it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import atomic_write_text, latest, load_weights, read_state, save_checkpoint
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


def build_classifier(cfg: Config, meta: dict) -> NoisyClassifier:
    """The run's NoisyClassifier for data of ``meta``'s event_shape and num_classes."""
    return NoisyClassifier(math.prod(meta["event_shape"]), meta["num_classes"], hidden=cfg.classifier.hidden,
                           layers=cfg.classifier.layers)


def _check_guides(source: str, sde, shape: tuple[int, ...]) -> None:
    from .loading import load

    model = load(source, kind="score model")
    if model.sde != sde:
        raise ValueError(f"the classifier would train under {sde}, but --model {source!r} samples under "
                         f"{model.sde}; set the config's sde section to the model's.")
    if model.event_shape != tuple(shape):
        raise ValueError(f"the classifier's data has shape {tuple(shape)}, --model {source!r} takes "
                         f"{model.event_shape}; train on the model's data.")


def held_out_accuracy(classifier: NoisyClassifier, cfg: Config, *, device, times=(0.0, 0.25, 0.5),
                      n: int = 2000, seed: int = 0) -> dict[float, float]:
    """t -> accuracy of argmax_y p_phi(y | x_t, t) on the test split noised to t = eps + f (T - eps),
    for each fraction f in ``times`` (at most ``n`` points, one fixed noise draw)."""
    sde, eps = build_sde(cfg), cfg.classifier.eps
    ds = load_dataset(cfg.data.name, split="test", path=cfg.data.path, seed=cfg.data.seed,
                      levels=cfg.data.levels)
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
                           device: str | torch.device = "cpu", progress: bool = True,
                           guides: str | None = None) -> ClassifierRun:
    """Train the run's noisy classifier into ``out`` (or continue its latest checkpoint with ``resume``;
    ``cfg`` None then means the checkpoint's config). ``guides``: the source of the score model it is
    meant for (``load``), whose SDE and data shape must be the run's (checked before training). One
    process (no torchrun: it is small)."""
    if env_size() > 1:
        raise ValueError("train-classifier runs in one process; launch it without torchrun.")
    out, device = Path(out), torch.device(device)
    cfg, ckpt = open_run(out, cfg, resume, KIND)
    cc, sde = cfg.classifier, build_sde(cfg)
    if not cc.eps < sde.T:
        raise ValueError(f"classifier.eps: must be below the SDE's T = {sde.T:g}, got {cc.eps}.")
    ds = load_dataset(cfg.data.name, split="train", path=cfg.data.path, n=cfg.data.n, seed=cfg.data.seed,
                      levels=cfg.data.levels)
    if ds.y is None:
        raise ValueError(f"data.name: a classifier needs labels; dataset {ds.name!r} has none.")
    if guides is not None:
        _check_guides(guides, sde, ds.shape)
    meta = {"kind": KIND, "event_shape": list(ds.shape), "levels": ds.levels, "levels_source": ds.levels_source,
            "num_classes": ds.num_classes,
            "dataset": ds.name}
    with torch.random.fork_rng():  # the initial weights from the run's seed; the caller's RNG untouched
        torch.manual_seed(cc.seed)
        classifier = build_classifier(cfg, meta).to(device).train()
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
