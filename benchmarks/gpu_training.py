"""Training throughput for ``gpu_check.py``: steps/s of the digits and the large configuration, one
process and under torchrun (DDP). Rows as in ``gpu_throughput``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sde_diffusion.training.config import load_config
from sde_diffusion.training.train import train

from gpu_throughput import ROOT, guarded, measure


# -- one process ------------------------------------------------------------------------------------
def training_configs(plan, tmp: Path) -> dict[str, list[str]]:
    """Overrides of configs/digits_vp.yaml: the digits config, and the large U-Net on random
    uint8 images of its size (the data's content does not change the cost of a step)."""
    images = np.random.default_rng(0).integers(0, 256, (plan.train_images, plan.large["in_channels"],
                                                         plan.large["image_size"], plan.large["image_size"]),
                                               dtype=np.uint8)
    np.savez(tmp / "images.npz", x=images)
    large = ["data.name=npy", f"data.path={tmp / 'images.npz'}", f"train.batch_size={plan.large_batch}"]
    large += [f"model.params.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in plan.large.items()
              if k != "in_channels"]
    return {"digits": [f"train.batch_size={plan.digits_batch}"], "large": large}


COMMON = ["train.sample_every=0", "sample.n=4", "sample.steps=2", "train.warmup=1", "train.keep=1"]


def _steps(steps: int) -> list[str]:
    return [f"train.steps={steps}", f"train.log_every={steps}", f"train.ckpt_every={steps}"]


def training(plan, device: torch.device, budget) -> list[dict]:
    """Steps/s from two runs of S1 < S2 steps, (S2 - S1) / (t2 - t1): start-up, the final
    checkpoint and sample cancel."""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in training_configs(plan, Path(tmp)).items():
            s1, s2 = plan.train_steps[name]
            for bf16 in (False, True) if device.type == "cuda" else (False,):
                extra = overrides + COMMON + [f"train.bf16={str(bf16).lower()}"]
                row = {"config": name, "precision": "bf16" if bf16 else "float32", "steps": s2 - s1}
                guarded(rows, row, budget, 0, lambda: _train_row(extra, s1, s2, Path(tmp), device))
    return rows


def _train_row(overrides, s1, s2, tmp: Path, device, tries: int = 3) -> dict:
    """The rate of ``_rate`` from a warm-up run and then runs of s1 and s2 steps; the pair is measured
    again (up to ``tries`` times) when a loaded machine's noise makes s2 steps look no slower than s1."""
    def wall(steps, i):
        cfg = load_config(ROOT / "configs/digits_vp.yaml", overrides + _steps(steps))
        _, w, peak = measure(lambda: train(cfg, tmp / f"run{i}", device=device, progress=False), device)
        shutil.rmtree(tmp / f"run{i}")
        return w, peak

    wall(s1, 0)  # warm-up: imports, CUDA initialisation
    for attempt in range(tries):
        walls = [wall(s1, 1)[0]]
        w, peak = wall(s2, 2)
        walls.append(w)
        if walls[1] > walls[0] or attempt == tries - 1:
            break
    cfg = load_config(ROOT / "configs/digits_vp.yaml", overrides)
    rate = _rate(walls, s1, s2)
    return {"batch": cfg.train.batch_size, "steps_per_s": rate, "images_per_s": rate * cfg.train.batch_size,
            "wall_s": walls[1], "peak_mib": peak}


def _rate(walls: list[float], s1: int, s2: int) -> float:
    """(S2 - S1) / (t2 - t1) steps per second."""
    if walls[1] <= walls[0]:
        raise RuntimeError(f"{s2} steps took no longer than {s1} ({walls[1]:.2f} s, {walls[0]:.2f} s): timing noise")
    return (s2 - s1) / (walls[1] - walls[0])


def ddp(plan, device: torch.device, budget) -> list[dict]:
    """Data-parallel training under torchrun on every GPU present (``plan.ddp`` processes; on the
    CPU with gloo when asked), the digits config with ``plan.digits_batch`` per process."""
    procs = plan.ddp
    if procs < 2:
        return [{"config": "digits", "status": f"skipped: {procs} device(s); DDP needs 2 or more"}]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        s1, s2 = plan.train_steps["digits"]
        overrides = COMMON + [f"train.batch_size={plan.digits_batch * procs}"]
        guarded(rows, {"config": "digits", "processes": procs, "batch": plan.digits_batch * procs}, budget, 0,
                lambda: _torchrun_row(overrides, s1, s2, procs, Path(tmp), device, budget.left()))
    return rows


def _torchrun_row(overrides, s1, s2, procs, tmp: Path, device, timeout: float) -> dict:
    walls = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for i, steps in enumerate((s1, s2)):  # separate processes: start-up costs cancel
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               "-m", "sde_diffusion", "train", "--config", str(ROOT / "configs/digits_vp.yaml"),
               "--out", str(tmp / f"run{i}"), "--device", device.type, "--no-progress", *overrides, *_steps(steps)]
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(timeout, 1))
        walls.append(time.perf_counter() - start)
        if done.returncode:
            raise RuntimeError(f"torchrun exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    rate = _rate(walls, s1, s2)
    batch = int(next(o for o in overrides if o.startswith("train.batch_size=")).split("=")[1])
    return {"steps_per_s": rate, "images_per_s": rate * batch, "wall_s": walls[1], "peak_mib": None}
