"""Training: AdamW with linear warm-up, gradient clipping, an EMA of the weights, atomic checkpoints.

One step: x_0 ~ data (``data.batches``, epochs of seeded permutations), loss = ``dsm_loss`` (t ~ U(eps, T),
or importance-sampled) or the DDPM ``ddpm_loss``, AdamW step with lr_k = lr min(1, k / warmup),
then EMA update  theta_ema <- decay theta_ema + (1 - decay) theta  (``torch.optim.swa_utils``).

Reproducible: the run is a function of the config's seeds. A checkpoint stores the weights, the EMA,
the optimizer, the step, the RNG states and the losses not yet logged, and the data stream is
replayed from the step, so ``--resume`` continues exactly as if never stopped. SIGINT/SIGTERM save a
checkpoint and return; a non-finite loss stops the run naming the step, keeping the last good
checkpoint (it is checked before every save).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .checkpoint import (atomic_write_text, check_resumable, latest, load_weights, model_kwargs,
                         read_config, read_manifest, read_state, save_checkpoint)
from .config import Config, build_schedule, build_sde, to_dict
from .data import batches, load_dataset
from .distributed import ddp, setup
from .losses import ddpm_loss, dsm_loss
from .models import ScoreModel, build_model
from .viz import save_samples

METRICS = ("step", "loss", "lr")


class TrainingError(RuntimeError):
    """Training stopped on a fault (the message names the step and the last good checkpoint)."""


class TrainingDiverged(TrainingError):
    """The loss became NaN or Inf."""


@dataclass
class TrainResult:
    out: Path
    step: int                 # optimizer steps completed
    interrupted: bool         # stopped by SIGINT/SIGTERM (a checkpoint was saved)
    checkpoint: Path          # the checkpoint written last
    model: ScoreModel         # the EMA model
    config: Config


class _StopOnSignal:
    """The first SIGINT/SIGTERM asks the loop to stop after the current step; a second acts as usual."""

    def __enter__(self):
        self.requested: str | None = None
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name
        signal.signal(signum, self._old[signum])

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def prepare_out_dir(out: Path, needed_bytes: int = 0) -> None:
    """Fail before any training if ``out`` cannot hold the run: not a folder, not writable, too full."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {str(out)!r} exists and is not a directory.")
    probe = out / f".write-test-{os.getpid()}"
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(bytes(1 << 16))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ValueError(f"output directory {str(out)!r} is not writable ({e.strerror or e}); "
                         "choose another --out.") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    free = shutil.disk_usage(out).free
    if free < needed_bytes:
        raise ValueError(f"output directory {str(out)!r} has {free / 2**20:.1f} MiB free; the "
                         f"checkpoints need about {needed_bytes / 2**20:.1f} MiB.")


def _check_finite(losses: list[torch.Tensor], step: int, out: Path) -> None:
    """Raise TrainingDiverged if any of the losses of steps step-len+1..step is NaN/Inf (one sync)."""
    if not losses:
        return
    stacked = torch.stack(losses)
    bad = ~torch.isfinite(stacked)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        last = latest(out)
        raise TrainingDiverged(f"non-finite loss ({float(stacked[i])}) at step {step - len(losses) + i + 1}; "
                               f"training stopped. Last good checkpoint: "
                               f"{last if last is not None else 'none (none was saved yet)'}.")


def _write_metrics(path: Path, rows: list[dict]) -> None:
    """Append rows to the metrics CSV, writing the header first."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _rewind_metrics(path: Path, step: int, log_every: int) -> None:
    """Drop the rows a resumed run will write again: those after ``step``, and a final partial-interval
    row at ``step`` itself (its losses are still pending in the checkpoint)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f)
                if int(r["step"]) < step or (int(r["step"]) == step and step % log_every == 0)]
    atomic_write_text(path, ",".join(METRICS) + "\n" + "".join(",".join(r[k] for k in METRICS) + "\n"
                                                               for r in rows))


def draw_samples(model: ScoreModel, cfg: Config, shape: tuple[int, ...], *, device, seed: int,
                 n: int | None = None, method: str | None = None, steps: int | None = None,
                 label: int | None = None, guidance: float = 0.0):
    """``solvers.sample`` from ``model`` by the config's (or the given) method, leaving the global RNG
    untouched; returns the SampleResult. With ``label`` (a conditional model), samples of that class
    under classifier-free guidance weight ``guidance`` (``ScoreModel.conditional``)."""
    import solvers

    n = n or cfg.sample.n
    score_fn = model
    if label is not None:
        classes = model.num_classes
        if classes is None or isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < classes:
            allowed = f"0..{classes - 1}" if classes else "none: the model is unconditional"
            raise ValueError(f"label must be a class index; allowed: {allowed}; got {label!r}.")
        score_fn = model.conditional(torch.full((n,), label, device=device), guidance)
    elif guidance:
        raise ValueError("guidance needs a label (classifier-free guidance towards that class).")
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        gen = torch.Generator(device).manual_seed(seed)
        return solvers.sample(score_fn, model.sde, (n, *shape),
                              method=method or cfg.sample.method, steps=steps or cfg.sample.steps,
                              eps=cfg.sample.eps, generator=gen, device=device)


def _global_draws(cfg: Config, schedule, x0: torch.Tensor, gen: torch.Generator) -> dict:
    """The noise of the whole global batch, drawn in the losses' own order from the same generator
    (so each rank's slice is what one process would have drawn for those rows): t (or the DDPM step
    i), then z."""
    n, draw = x0.shape[0], {"generator": gen, "device": x0.device}
    if cfg.loss.kind == "ddpm":
        i = torch.randint(1, schedule.T + 1, (n,), **draw)
        return {"i": i, "noise": torch.randn(x0.shape, dtype=x0.dtype, **draw)}
    T, eps = build_sde(cfg).T, cfg.loss.eps
    t = eps + (T - eps) * torch.rand(n, dtype=x0.dtype, **draw)
    return {"t": t, "noise": torch.randn(x0.shape, dtype=x0.dtype, **draw)}


def _build(cfg: Config, meta: dict, device: torch.device) -> ScoreModel:
    try:
        return build_model(cfg.model.kind, build_sde(cfg), **model_kwargs(cfg, meta)).to(device)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model.params: {e}") from None


def train(cfg: Config | None, out: str | Path, *, resume: bool = False,
          device: str | torch.device = "cpu", progress: bool = True,
          max_seconds: float | None = None) -> TrainResult:
    """Train under ``cfg`` into run directory ``out`` (or continue its latest checkpoint with
    ``resume``; ``cfg`` None then means the checkpoint's own config). ``max_seconds`` ends the run
    early (with a checkpoint) after that much wall time: for time-boxed benchmarks only, since the
    step count then depends on the machine's speed. Under torchrun it trains data-parallel
    (``distributed``): the same run as one process with the same global batch, rank 0 writing."""
    out = Path(out)
    world, device = setup(device)
    prepare_out_dir(out)
    ckpt = latest(out)
    if resume:
        if ckpt is None:
            raise ValueError(f"--resume: {str(out)!r} holds no checkpoint to resume from.")
        read_manifest(ckpt)
        saved = read_config(ckpt)
        cfg = saved if cfg is None else cfg
        check_resumable(saved, cfg)
    elif ckpt is not None:
        raise ValueError(f"{str(out)!r} already holds a run (checkpoint {ckpt.name}); pass --resume "
                         "to continue it or choose another --out.")
    if cfg is None:
        raise ValueError("a config is needed to start a run (only --resume can take the checkpoint's).")
    tc = cfg.train
    if tc.batch_size % world.size or (cfg.loss.importance_sampling and world.size > 1):
        raise ValueError(f"train.batch_size must be a multiple of the {world.size} processes and "
                         "loss.importance_sampling needs one process; got "
                         f"{tc.batch_size}, {cfg.loss.importance_sampling}.")
    ds = load_dataset(cfg.data.name, split="train", path=cfg.data.path, n=cfg.data.n, seed=cfg.data.seed)
    meta = {"event_shape": list(ds.shape), "levels": ds.levels, "num_classes": ds.num_classes,
            "dataset": ds.name}
    torch.manual_seed(tc.seed)
    model = _build(cfg, meta, device).train()
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
        _rewind_metrics(out / "metrics.csv", step, tc.log_every)
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

    trainee = model if world.size == 1 else ScoreModel(ddp(model.net, world, device), model.sde,
                                                       model.parameterization, input_scaling=model.input_scaling)

    def loss_of(x0, y):
        y = y if conditional else None
        if conditional and tc.p_uncond > 0:  # classifier-free guidance: y -> null with probability p_uncond
            drop = torch.rand(y.shape, generator=noise_gen, device=device) < tc.p_uncond
            y = torch.where(drop, model.num_classes, y)
        draws = {} if world.size == 1 else _global_draws(cfg, schedule, x0, noise_gen)
        x0, y, draws = world.shard(x0), world.shard(y), {k: world.shard(v) for k, v in draws.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            if cfg.loss.kind == "ddpm":
                return ddpm_loss(trainee, schedule, x0, y=y, generator=noise_gen, **draws)
            return dsm_loss(trainee, x0, weighting=cfg.loss.weighting, eps=cfg.loss.eps,
                            importance_sampling=cfg.loss.importance_sampling, y=y, generator=noise_gen, **draws)

    def save() -> Path | None:
        _check_finite(losses, step, out)
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
        save_samples(x, out / "samples" / f"step_{step:08d}.png", levels=ds.levels,
                     reference=ds.x[:len(x)] if ds.x.ndim == 2 else None, title=f"step {step}")

    saved_at = step if resume else None
    bar = tqdm(total=tc.steps, initial=step, desc="train", disable=not (progress and world.main),
               dynamic_ncols=True)
    deadline = time.monotonic() + max_seconds if max_seconds is not None else math.inf
    with _StopOnSignal() as stop:
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
                _check_finite(losses, step, out)
                mean = float(torch.stack(losses).mean())
                row = {"step": step, "loss": f"{mean:.6g}", "lr": f"{lr:.6g}"}
                if world.main:
                    _write_metrics(out / "metrics.csv", [row])
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


if __name__ == "__main__":
    from .cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
