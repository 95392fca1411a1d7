"""Run directories shared by the trainers (``train`` for score models, ``classifier_training``):
opening a run (new or resumed), the output checks, stop-on-signal, the loss check before a checkpoint
and the ``metrics.csv`` log."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import shutil
import signal
import threading
from pathlib import Path

import torch

from .checkpoint import atomic_write_text, check_resumable, kind_of, latest, read_config, read_manifest
from .config import Config

METRICS = ("step", "loss", "lr")


class TrainingError(RuntimeError):
    """Training stopped on a fault (the message names the step and the last good checkpoint)."""


class TrainingDiverged(TrainingError):
    """The loss became NaN or Inf."""


class StopOnSignal:
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


def absolute_data_path(cfg: Config) -> Config:
    """``cfg`` with a relative ``data.path`` made absolute, taken from the working directory: runs
    store their data path absolute, so a run is scored or resumed from any directory. (Runs saved
    with a relative path, before this rule, find their data from the directory they were started in.)"""
    if cfg.data.path is None or Path(cfg.data.path).is_absolute():
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(Path(cfg.data.path).resolve())))


def open_run(out: Path, cfg: Config | None, resume: bool, kind: str) -> tuple[Config, Path | None]:
    """(config, checkpoint to resume or None) for a run of ``kind`` in ``out``: a resumed run's
    checkpoint must be of that kind and ``cfg`` (None: the checkpoint's own) may change only the
    resumable keys; a new run refuses a directory that already holds one. The returned config's
    ``data.path`` is absolute (``absolute_data_path``)."""
    cfg = None if cfg is None else absolute_data_path(cfg)
    prepare_out_dir(out)
    ckpt = latest(out)
    if resume:
        if ckpt is None:
            raise ValueError(f"--resume: {str(out)!r} holds no checkpoint to resume from.")
        found = kind_of(read_manifest(ckpt))
        if found != kind:
            raise ValueError(f"--resume: {str(out)!r} holds a {found} run, not a {kind} run.")
        saved = absolute_data_path(read_config(ckpt))
        cfg = saved if cfg is None else cfg
        check_resumable(saved, cfg)
    elif ckpt is not None:
        raise ValueError(f"{str(out)!r} already holds a run (checkpoint {ckpt.name}); pass --resume "
                         "to continue it or choose another --out.")
    if cfg is None:
        raise ValueError("a config is needed to start a run (only --resume can take the checkpoint's).")
    return cfg, ckpt if resume else None


def check_finite(losses: list[torch.Tensor], step: int, out: Path) -> None:
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


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Append rows to the metrics CSV, writing the header first; lines end in \n, as
    ``rewind_metrics`` writes them, so a resumed run's file keeps one line ending."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS, lineterminator="\n")  # csv's default is \r\n
        if new:
            writer.writeheader()
        writer.writerows(rows)


def rewind_metrics(path: Path, step: int, log_every: int) -> None:
    """Drop the rows a resumed run will write again: those after ``step``, and a final partial-interval
    row at ``step`` itself (its losses are still pending in the checkpoint)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f)
                if int(r["step"]) < step or (int(r["step"]) == step and step % log_every == 0)]
    atomic_write_text(path, ",".join(METRICS) + "\n" + "".join(",".join(r[k] for k in METRICS) + "\n"
                                                               for r in rows))
