"""Benchmark (not a test): train configs/digits_vp.yaml on CPU, then report test-set bits/dim.

Training is time-boxed in CPU time of this process (``--minutes`` x 60 s, by default 10 minutes of
one core): it runs in chunks of
``--chunk`` steps, each resumed exactly from the last checkpoint, until the config's steps or the
budget is reached. CPU time rather than wall time keeps the budget fair on a shared machine.

Rows (all in the dequantized bits/dim of the 17-level digits, bin width w = 2/17 on [-1, 1]):
  * probability-flow ODE: ``likelihood.bits_per_dim`` (uniform dequantization, one draw per digit,
    Hutchinson divergence, dopri5), mean +- standard error over the test digits;
  * DDPM bound (Ho et al. 2020, eq. 5) on the DDPM chain whose limit is the run's VP-SDE
    (T = 1000, beta_i = beta(i/T)/T), on the first ``--n-vlb`` test digits (VP and DDPM configs);
  * a full-covariance Gaussian fitted to the training digits dequantized: mean mu = E[x], covariance
    Cov(x) + w^2/12 I (x plus independent U(0, w) noise), evaluated on the same dequantized test
    points: bpd = -(log N(x; mu, Sigma) + D log w) / (D ln 2). The model must beat it clearly.
Writes <out>/benchmark.csv, <out>/benchmark_samples.png and prints a markdown table.

    python benchmarks/train_digits.py --threads 2 --out runs/bench_digits
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from sde_diffusion.evaluation.nll_table import nll_per_sample
from sde_diffusion.training.config import load_config
from sde_diffusion.dequantize import DATA_RANGE
from sde_diffusion.training.data import load_dataset
from sde_diffusion.evaluation.nll_table import ddpm_chain, gaussian_bpd, mean_se
from sde_diffusion.training.train import draw_samples, train
from sde_diffusion.training.viz import save_samples
from sde_diffusion.vlb import ddpm_vlb_bits_per_dim

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "digits_vp.yaml"))
    p.add_argument("overrides", nargs="*", help="config overrides key.path=value")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_digits"))
    p.add_argument("--resume", action="store_true", help="continue (or only evaluate) the run in --out")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--minutes", type=float, default=10.0, help="training budget in CPU minutes")
    p.add_argument("--chunk", type=int, default=250, help="steps per resumed training chunk")
    p.add_argument("--n-test", type=int, default=None, help="evaluate the first n test digits (default all)")
    p.add_argument("--n-vlb", type=int, default=50, help="test digits for the DDPM bound (1000 steps each)")
    p.add_argument("--rtol", type=float, default=1e-5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out, cfg = Path(args.out), load_config(args.config, args.overrides)

    t0, cpu0, resume, step = time.perf_counter(), time.process_time(), args.resume, 0
    while True:  # exact resumes: the chunks give the weights of one straight run
        target = min(step + args.chunk, cfg.train.steps)
        part = load_config(args.config, args.overrides + [f"train.steps={target}", "sample.n=4",
                                                          "sample.steps=2"])
        result = train(part, out, resume=resume, device="cpu", progress=False)
        step, resume = result.step, True
        cpu_s = time.process_time() - cpu0
        wall_min = (time.perf_counter() - t0) / 60
        print(f"step {step}: {cpu_s / 60:.1f} CPU min, {wall_min:.1f} wall min", flush=True)
        if result.interrupted or step >= cfg.train.steps or cpu_s >= 60 * args.minutes:
            break
    train_s = time.perf_counter() - t0
    if result.interrupted:
        print(f"interrupted at step {result.step}; rerun with --resume to continue.")
        return
    model, sde = result.model.requires_grad_(False), result.model.sde
    ds_train, ds_test = (load_dataset(cfg.data.name, split=s, path=cfg.data.path) for s in ("train", "test"))
    if args.n_test is not None:
        ds_test = load_dataset(cfg.data.name, split="test", path=cfg.data.path, n=args.n_test)
    k, levels = ds_test.discrete(), ds_test.levels
    rows = []

    t0 = time.perf_counter()
    bpd = nll_per_sample(model, ds_test.x, levels, generator=torch.Generator().manual_seed(0), batch_size=100,
                         divergence="hutchinson", rtol=args.rtol, atol=args.rtol).values
    rows.append(("probability-flow ODE (Hutchinson, dopri5, rtol=atol=%g)" % args.rtol, *mean_se(bpd),
                 len(bpd), time.perf_counter() - t0))
    schedule = ddpm_chain(cfg, sde)
    if schedule is not None:
        t0 = time.perf_counter()
        vlb = ddpm_vlb_bits_per_dim(model, schedule, k[:args.n_vlb], levels=levels, data_range=DATA_RANGE,
                                    generator=torch.Generator().manual_seed(0), max_batch=4096)
        rows.append((f"DDPM bound (T={schedule.T}, {schedule.kind} betas)", *mean_se(vlb), len(vlb),
                     time.perf_counter() - t0))
    gauss = gaussian_bpd(ds_train.x, k, levels, torch.Generator().manual_seed(0))
    rows.append(("full-covariance Gaussian fit (baseline)", *mean_se(gauss), len(gauss), 0.0))

    x = draw_samples(model, cfg, ds_test.shape, device="cpu", seed=0, n=64).x
    png = save_samples(x, out / "benchmark_samples.png", levels=levels,
                       title=f"{cfg.sample.method}, {cfg.sample.steps} steps")
    with open(out / "benchmark.csv", "w", newline="") as f:
        csv.writer(f).writerows([("estimate", "bits_per_dim", "stderr", "n", "seconds"), *rows])

    params = sum(q.numel() for q in model.parameters())
    print(f"\nTrained {result.step} of {cfg.train.steps} steps of {Path(args.config).name}: "
          f"{cpu_s / 60:.1f} CPU minutes, {train_s / 60:.1f} wall minutes, {args.threads} thread(s), "
          f"{params:,} parameters.\n")
    print("| test-set estimate | bits/dim | +- s.e. | digits | seconds |\n|---|---|---|---|---|")
    for name, m, se, n, sec in rows:
        print(f"| {name} | {m:.3f} | {se:.3f} | {n} | {sec:.0f} |")
    print(f"\nSamples: {png}")


if __name__ == "__main__":
    main()
