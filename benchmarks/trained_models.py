"""Benchmark (not a test): eps against EDM-preconditioned ("edm") score models, trained here (issue 13).

For the toy configs on ``moons`` and ``ring`` and for a small digits U-Net, each parameterization is
trained from the shipped config (only ``model.parameterization`` differs), then every sampler at
``--steps`` is scored with ``compare.model_target``: quality / floor (SW2 for 2-D data, the classifier
Frechet distance for digits; 1 = as good as fresh data of the same size) and its share of escaped
samples (``metrics.escaped``: 2-D, farther than 3x the test data's radius from its centre; images, a
value outside [-2, 2]). Digits also get test bits/dim by
the probability-flow ODE (Hutchinson, one dequantization draw). Finally the peak memory (RSS) of
sampling, with ``solvers.sample`` as shipped (no_grad) and without it (its undecorated body, the old
behaviour that kept every step's graph), each in a fresh subprocess.

    python benchmarks/trained_models.py --quick          # shorter training, fewer samples
    python benchmarks/trained_models.py --out benchmarks/results   # run times: benchmarks/README.md
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import solvers
from sde_diffusion.evaluation.compare import model_target
from sde_diffusion.evaluation.nll_table import nll_per_sample
from sde_diffusion.training.config import load_config
from sde_diffusion.training.loading import load, model_dataset
from sde_diffusion.training.train import train

ROOT = Path(__file__).resolve().parents[1]
PARAMETERIZATIONS = ("eps", "edm")
TOY_METHODS = ("euler_maruyama", "ancestral", "ddim", "heun", "dpm_solver")
DIGIT_METHODS = ("euler_maruyama", "ddim", "dpm_solver")

_MEMORY = """
import json, resource, sys, torch, solvers
from sde_diffusion.models import build_model
from sde_diffusion.sde import VPSDE
torch.set_num_threads(1)
torch.manual_seed(0)
n, steps, fixed = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
model = build_model("mlp", VPSDE(), dim=2, hidden=64, blocks=2, emb_dim=64, embedding="sinusoidal")
run = solvers.sample if fixed else torch.enable_grad()(solvers.sample.__wrapped__)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run(model, model.sde, (n, 2), method="euler_maruyama", steps=steps, generator=torch.Generator().manual_seed(0))
print(json.dumps([before / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))
"""


def train_model(config: str, overrides: list[str], out: Path, device: torch.device):
    cfg = load_config(ROOT / "configs" / config, overrides + ["train.sample_every=0", "train.ckpt_every=100000"])
    start = time.process_time()
    result = train(cfg, out, device=device, progress=False)
    cpu = time.process_time() - start
    return load(result.out, device=device), cpu  # the EMA model with its info (data, levels, config)


def sampler_rows(name: str, model, methods, steps, n: int, device: torch.device) -> list[dict]:
    target = model_target(model, device, n)
    scorer = target.scorer(0)
    rows = []
    for method in methods:
        for k in steps:
            res = solvers.sample(model, model.sde, (n, *target.shape), method=method, steps=k,
                                 generator=torch.Generator(device).manual_seed(1))
            rows.append({"model": name, "method": method, "steps": k, "nfe": res.nfe, "metric": target.metric,
                         "quality/floor": scorer.quality(res.x)[0] / scorer.floor,
                         "escaped": target.escape(res.x)[0]})
    return rows


def memory_rows(cases: list[tuple[int, int, bool]]) -> list[dict]:
    rows = []
    for n, steps, fixed in cases:
        out = subprocess.run([sys.executable, "-c", _MEMORY, str(n), str(steps), str(int(fixed))],
                             capture_output=True, text=True)
        if out.returncode:
            rows.append({"n": n, "steps": steps, "no_grad": fixed, "peak MiB": f"failed ({out.returncode})"})
            continue
        before, after = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"n": n, "steps": steps, "no_grad": fixed, "peak MiB": round(after),
                     "growth MiB": round(after - before)})
    return rows


def table(rows: list[dict], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    return "\n".join(lines)


def pivot(rows: list[dict], steps) -> str:
    """One line per (model, method): quality/floor (escaped %) at each step count."""
    keys = list(dict.fromkeys((r["model"], r["method"]) for r in rows))
    lines = ["| model | sampler | " + " | ".join(f"{k} steps" for k in steps) + " |", "|---|---|" + "---|" * len(steps)]
    for model, method in keys:
        cells = {r["steps"]: r for r in rows if r["model"] == model and r["method"] == method}
        lines.append(f"| {model} | {method} | " + " | ".join(
            f"{cells[k]['quality/floor']:.2f} ({100 * cells[k]['escaped']:.3g}%)" for k in steps) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter training and fewer samples (~3 min)")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where to train and sample (the memory rows run on the CPU)")
    p.add_argument("--out", default=None, help="folder for trained_models.csv / .md (default: print only)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    quick, full = (1000, 300, 2000, 300, 50), (6000, 1500, 4000, 300, 100)
    toy_steps, digit_steps, n_toy, n_digits, n_bpd = quick if a.quick else full
    rows, bpd, trained = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for data in ("moons", "ring"):
            for par in PARAMETERIZATIONS:
                name = f"{data} {par}"
                model, cpu = train_model("toy_vp.yaml", [f"data.name={data}", f"model.parameterization={par}",
                                                         f"train.steps={toy_steps}"], Path(tmp) / name, dev)
                trained.append({"model": name, "train steps": toy_steps, "train CPU s": round(cpu)})
                rows += sampler_rows(name, model, TOY_METHODS, a.steps, n_toy, dev)
                print(f"{name}: trained in {cpu:.0f} CPU s", flush=True)
        for par in PARAMETERIZATIONS:
            name = f"digits {par}"
            model, cpu = train_model("digits_vp.yaml", [f"model.parameterization={par}",
                                                        f"train.steps={digit_steps}"], Path(tmp) / name, dev)
            trained.append({"model": name, "train steps": digit_steps, "train CPU s": round(cpu)})
            rows += sampler_rows(name, model, DIGIT_METHODS, a.steps, n_digits, dev)
            test = model_dataset(model, "test").x[:n_bpd].to(dev)
            v = nll_per_sample(model, test, model.levels, generator=torch.Generator(dev).manual_seed(0),
                               batch_size=n_bpd, divergence="hutchinson")
            bpd.append({"model": name, "test bits/dim": float(v.mean()), "s.e.": float(v.std() / len(v) ** 0.5),
                        "digits": len(v)})
            print(f"{name}: trained in {cpu:.0f} CPU s", flush=True)
    mem_cases = [(2000, 100, True), (2000, 1000, True), (1000, 100, False), (1000, 400, False)]
    if not a.quick:
        mem_cases[1:1] = [(20000, 1000, True)]
    mem = memory_rows(mem_cases)
    report = "\n\n".join([
        "### Training", table(trained, ["model", "train steps", "train CPU s"]),
        "### Sample quality / floor (share of escaped samples)", pivot(rows, a.steps),
        "### Digits test bits/dim (PF-ODE, Hutchinson)", table(bpd, ["model", "test bits/dim", "s.e.", "digits"]),
        "### Peak RSS of sampling (euler_maruyama, 2-D MLP of the toy config)",
        table(mem, ["n", "steps", "no_grad", "peak MiB", "growth MiB"] if all("growth MiB" in r for r in mem)
              else ["n", "steps", "no_grad", "peak MiB"])])
    print(report)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "trained_models.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        (out / "trained_models.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
