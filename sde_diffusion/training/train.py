"""Training: AdamW with linear warm-up, gradient clipping, an EMA of the weights, atomic checkpoints.

One step: x_0 ~ data (``data.batches``, epochs of seeded permutations), loss = ``dsm_loss`` (t ~ U(eps, T),
or importance-sampled) or the DDPM ``ddpm_loss`` (``loss.objective``: L_simple, the bound, hybrid, ...), AdamW step with lr_k = lr min(1, k / warmup),
then EMA update  theta_ema <- decay theta_ema + (1 - decay) theta  (``torch.optim.swa_utils``).

Reproducible: the run is a function of the config's seeds. A checkpoint stores the weights, the EMA,
the optimizer, the step, the RNG states and the losses not yet logged, and the data stream is
replayed from the step, so ``--resume`` continues exactly as if never stopped. SIGINT/SIGTERM save a
checkpoint and return; a non-finite loss stops the run naming the step, keeping the last good
checkpoint (it is checked before every save).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .checkpoint import atomic_write_text, latest, load_weights, read_state, save_checkpoint
from .config import Config, build_schedule, build_sde, to_dict
from .data import batches, check_model_data, load_dataset
from .loading import model_kwargs
from .distributed import ddp, setup
from ..guidance import NoisyClassifier, guided_score
from ..losses import ddpm_loss, dsm_loss, sample_importance_time
from ..models import ScoreModel, build_model
from .runs import (StopOnSignal, TrainingError, check_finite, open_run, prepare_out_dir, rewind_metrics,
                   write_metrics)
from . import viz

@dataclass
class TrainResult:
    out: Path
    step: int                 # optimizer steps completed
    interrupted: bool         # stopped by SIGINT/SIGTERM (a checkpoint was saved)
    checkpoint: Path          # the checkpoint written last
    model: ScoreModel         # the EMA model
    config: Config


def draw_samples(model: ScoreModel, cfg: Config, shape: tuple[int, ...], *, device, seed: int,
                 n: int | None = None, method: str | None = None, steps: int | None = None,
                 label: int | None = None, guidance: float = 0.0, classifier: NoisyClassifier | None = None,
                 classifier_scale: float = 1.0, progress: bool = False, **options):
    """``solvers.sample`` from ``model`` by the config's (or the given) method, leaving the global RNG
    untouched; returns the SampleResult. With ``label``, samples of that class under classifier-free
    guidance weight ``guidance`` (a conditional model) and/or a noisy ``classifier`` with weight
    ``classifier_scale`` (``guidance.guided_score``). ``method`` may carry options (``ode:solver=rk4``);
    ``options`` go to the method too (e.g. ancestral's ``schedule``); ``progress``: a tqdm bar."""
    import solvers

    n = n or cfg.sample.n
    if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
        raise ValueError(f"label must be an integer class index, got {label!r}.")
    y = None if label is None else torch.full((n,), label, device=device)
    score_fn = guided_score(model, y, guidance, classifier, classifier_scale)
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        gen = torch.Generator(device).manual_seed(seed)
        return solvers.sample(score_fn, model.sde, (n, *shape),
                              method=method or cfg.sample.method, steps=steps or cfg.sample.steps,
                              eps=cfg.sample.eps, generator=gen, device=device, progress=progress, **options)


def _global_draws(cfg: Config, schedule, x0: torch.Tensor, gen: torch.Generator) -> dict:
    """The noise of the whole global batch, drawn in the losses' own order from the same generator
    (so each rank's slice is what one process would have drawn for those rows): t (or the DDPM step
    i), then z."""
    n, draw = x0.shape[0], {"generator": gen, "device": x0.device}
    if cfg.loss.kind == "ddpm":
        i = torch.randint(1, schedule.T + 1, (n,), **draw)
        return {"i": i, "noise": torch.randn(x0.shape, dtype=x0.dtype, **draw)}
    sde, eps = build_sde(cfg), cfg.loss.eps
    if cfg.loss.importance_sampling:
        t = sample_importance_time(sde, n, eps, dtype=x0.dtype, **draw)[0]
    else:
        t = eps + (sde.T - eps) * torch.rand(n, dtype=x0.dtype, **draw)
    return {"t": t, "noise": torch.randn(x0.shape, dtype=x0.dtype, **draw)}


def _build(cfg: Config, meta: dict, device: torch.device, data: torch.Tensor) -> ScoreModel:
    """The run's model; an edm model's sigma_data is ``model.sigma_data`` or else the std of the
    training ``data`` over all its values (a buffer, saved with the weights)."""
    try:
        model = build_model(cfg.model.kind, build_sde(cfg), **model_kwargs(cfg, meta))
    except (TypeError, ValueError) as e:
        raise ValueError(f"model.params: {e}") from None
    if model.sigma_data is not None:
        sd = cfg.model.sigma_data if cfg.model.sigma_data is not None else float(data.double().std())
        if not (math.isfinite(sd) and sd > 0):
            raise ValueError(f"model.sigma_data: must be a finite number > 0, got {sd}.")
        model.sigma_data.fill_(sd)
    return model.to(device)


def train(cfg: Config | None, out: str | Path, *, resume: bool = False,
          device: str | torch.device = "cpu", progress: bool = True,
          max_seconds: float | None = None, init: str | None = None) -> TrainResult:
    """Train under ``cfg`` into run directory ``out`` (or continue its latest checkpoint with
    ``resume``; ``cfg`` None then means the checkpoint's own config). ``init``: a model source
    (``load``) whose weights a fresh run starts from, for fine-tuning (same architecture; the EMA
    starts there too). ``max_seconds`` ends the run early (with a checkpoint) after that much wall
    time: for time-boxed benchmarks only, since the step count then depends on the machine's speed.
    Under torchrun it trains data-parallel (``distributed``): the same run as one process with the
    same global batch, rank 0 writing. The caller's global random state is left as it was."""
    world, device = setup(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _train(cfg, Path(out), resume, world, device, progress, max_seconds, init)


def _init_weights(model: ScoreModel, source: str) -> None:
    """Copy the weights of the model at ``source`` into ``model``, naming any architecture mismatch."""
    from .loading import load

    weights = load(source, kind="score model").state_dict()
    own = model.state_dict()
    wrong = sorted(set(own) ^ set(weights)) or [k for k in own if own[k].shape != weights[k].shape]
    if wrong:
        raise ValueError(f"--model {source!r} does not fit the config's architecture (first difference: "
                         f"{wrong[0]}); start from a model trained with the same model section.")
    model.load_state_dict(weights)


def _train(cfg, out: Path, resume: bool, world, device: torch.device, progress: bool,
           max_seconds: float | None, init: str | None) -> TrainResult:
    cfg, ckpt = open_run(out, cfg, resume, "score model")
    tc = cfg.train
    if tc.batch_size % world.size:
        raise ValueError(f"train.batch_size must be a multiple of the {world.size} processes; got {tc.batch_size}.")
    ds = load_dataset(cfg.data.name, split="train", path=cfg.data.path, n=cfg.data.n, seed=cfg.data.seed,
                      levels=cfg.data.levels)
    check_model_data(ds, cfg.model.kind, cfg.model.params, what="model.kind")
    meta = {"event_shape": list(ds.shape), "levels": ds.levels, "levels_source": ds.levels_source,
            "num_classes": ds.num_classes,
            "dataset": ds.name}
    torch.manual_seed(tc.seed)
    model = _build(cfg, meta, device, ds.x).train()
    if init is not None and not resume:
        _init_weights(model, init)
        meta["init"] = init
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
    ema.module.eval()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    prepare_out_dir(out, needed_bytes=4 * weight_bytes * (tc.keep + 1))
    noise_gen = torch.Generator(device).manual_seed(tc.seed + 1)
    step, losses = 0, []
    if resume:
        state = read_state(ckpt)
        load_weights(model, ckpt, ema=False)
        load_weights(ema.module, ckpt, ema=True)
        opt.load_state_dict(state["optimizer"])
        ema.n_averaged.copy_(state["ema_n_averaged"])
        torch.set_rng_state(state["rng"]["torch"])
        noise_gen.set_state(state["rng"]["noise"])
        if device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        step, losses = state["step"], list(state["pending_losses"].to(device))
    if step < tc.steps and world.main:
        rewind_metrics(out / "metrics.csv", step, tc.log_every)
    if world.main:
        atomic_write_text(out / "config.json", json.dumps(to_dict(cfg), indent=2))
    data = batches(ds, tc.batch_size, generator=torch.Generator().manual_seed(tc.seed), device=device,
                   start=step)
    schedule, conditional = build_schedule(cfg), model.num_classes is not None
    if conditional and ds.y is None:
        raise ValueError(f"model.params.num_classes: a conditional model needs labels; dataset {ds.name!r} has none.")
    use_bf16 = tc.bf16 and device.type == "cuda"
    if tc.bf16 and not use_bf16:
        warnings.warn(f"train.bf16 applies on CUDA only; training in float32 on {device}.")

    trainee = model if world.size == 1 else model.with_net(ddp(model.net, world, device))

    def loss_of(x0, y):
        y = y if conditional else None
        if conditional and tc.p_uncond > 0:  # classifier-free guidance: y -> null with probability p_uncond
            drop = torch.rand(y.shape, generator=noise_gen, device=device) < tc.p_uncond
            y = torch.where(drop, model.num_classes, y)
        draws = {} if world.size == 1 else _global_draws(cfg, schedule, x0, noise_gen)
        x0, y, draws = world.shard(x0), world.shard(y), {k: world.shard(v) for k, v in draws.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            if cfg.loss.kind == "ddpm":
                return ddpm_loss(trainee, schedule, x0, y=y, generator=noise_gen, objective=cfg.loss.objective,
                                 vlb_weight=cfg.loss.vlb_weight, levels=ds.levels, **draws)
            return dsm_loss(trainee, x0, weighting=cfg.loss.weighting, eps=cfg.loss.eps,
                            importance_sampling=cfg.loss.importance_sampling, y=y, generator=noise_gen, **draws)

    def save() -> Path | None:
        check_finite(losses, step, out)
        if not world.main:
            return None
        rng = {"torch": torch.get_rng_state(), "noise": noise_gen.get_state(),
               "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []}
        pending = torch.stack(losses) if losses else torch.zeros(0, device=device)
        state = {"optimizer": opt.state_dict(), "ema_n_averaged": ema.n_averaged, "rng": rng,
                 "pending_losses": pending}
        try:
            return save_checkpoint(out, step=step, model=model, ema=ema.module, state=state, config=cfg,
                                   meta=meta, keep=tc.keep)
        except OSError as e:
            raise TrainingError(f"could not write the checkpoint of step {step} ({e.strerror or e}); "
                                f"training stopped. Last good checkpoint: {latest(out)}.") from e

    def sample_png() -> None:
        if not world.main:
            return
        x = draw_samples(ema.module, cfg, ds.shape, device=device, seed=tc.seed + 2).x
        viz.try_plot(viz.save_samples, x, out / "samples" / f"step_{step:08d}.png", levels=ds.levels,
                     reference=ds.x[:len(x)] if ds.x.ndim == 2 else None, title=f"step {step}",
                     what=f"sample figure of step {step}")

    saved_at = step if resume else None
    bar = tqdm(total=tc.steps, initial=step, desc="train", disable=not (progress and world.main),
               dynamic_ncols=True)
    deadline = time.monotonic() + max_seconds if max_seconds is not None else math.inf
    with StopOnSignal() as stop:
        while step < tc.steps and not world.any(stop.requested is not None or time.monotonic() >= deadline,
                                                device):  # a signal or the time box on any rank stops all
            lr = tc.lr * min(1.0, (step + 1) / tc.warmup) if tc.warmup else tc.lr
            for group in opt.param_groups:
                group["lr"] = lr
            loss = loss_of(*next(data))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            ema.update_parameters(model)
            step += 1
            losses.append(world.sum(loss.detach().float()) / world.size)
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.steps:  # the last row may cover a partial interval
                check_finite(losses, step, out)
                mean = float(torch.stack(losses).mean())
                row = {"step": step, "loss": f"{mean:.6g}", "lr": f"{lr:.6g}"}
                if world.main:
                    write_metrics(out / "metrics.csv", [row])
                bar.set_postfix(loss=f"{mean:.4f}")
                if step % tc.log_every == 0:
                    losses = []
            if step % tc.ckpt_every == 0:
                save()
                saved_at = step
            if tc.sample_every and step % tc.sample_every == 0:
                sample_png()
    bar.close()
    if saved_at != step:
        save()
    if not stop.requested and not (tc.sample_every and step % tc.sample_every == 0):
        sample_png()
    world.sum(torch.zeros((), device=device))  # a barrier: rank 0 has written the last checkpoint
    return TrainResult(out, step, stop.requested is not None, latest(out), ema.module, cfg)

