"""Benchmark (not a test): classifier-free and classifier guidance on digits, judged by the project's
clean digits classifier (``features.load_classifier``, the shipped CNN).

1. trains configs/digits_cfg.yaml (class-conditional U-Net, label dropout p_uncond) for ``--steps``
   steps or ``--max-seconds`` of wall time (resumed if the run exists);
2. trains the noisy classifier p_phi(y | x_t, t) of configs/digits_classifier.yaml (as
   ``sde-diffusion train-classifier`` does) on the digits noised by the same SDE;
3. for every label k draws ``--n`` samples per setting and reports the fraction the clean classifier
   assigns to k: unguided (null label; chance is 1/10), classifier-free guidance
   (1 + w) s(x|k) - w s(x|null) for each w in ``--weights``, classifier guidance
   s(x|null) + c grad log p_phi(k | x_t) for each c in ``--scales``.
Writes <out>/guidance.csv, <out>/guidance_<setting>.png and prints a markdown table.

    python benchmarks/guidance_digits.py --out runs/bench_guidance --max-seconds 600
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

import solvers
from sde_diffusion.training.checkpoint import latest
from sde_diffusion.training.config import load_config
from sde_diffusion.training.loading import load
from sde_diffusion.evaluation.features import load_classifier
from sde_diffusion.training.classifier_training import train_noisy_classifier
from sde_diffusion.guidance import classifier_guided
from sde_diffusion.training.train import train
from sde_diffusion.training.viz import save_samples

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_guidance")
    p.add_argument("--steps", type=int, default=5000, help="training steps of the conditional model")
    p.add_argument("--max-seconds", type=float, help="wall-time box for training (resumable)")
    p.add_argument("--classifier-steps", type=int, default=3000)
    p.add_argument("--n", type=int, default=50, help="samples per label and setting")
    p.add_argument("--method", default="euler_maruyama")
    p.add_argument("--sampler-steps", type=int, default=200)
    p.add_argument("--weights", default="0,1,3", help="classifier-free guidance weights w")
    p.add_argument("--scales", default="1,3,10", help="classifier guidance scales c")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out, dev = Path(args.out), torch.device(args.device)
    run = out / "run"
    cfg = load_config(ROOT / "configs" / "digits_cfg.yaml", [f"train.steps={args.steps}", "train.sample_every=0"])
    train(cfg, run, resume=latest(run) is not None, device=dev, progress=False, max_seconds=args.max_seconds)
    model = load(run, device=dev)
    step = int(latest(run).name.split("_")[-1])

    clf_cfg = load_config(ROOT / "configs" / "digits_classifier.yaml", [f"classifier.steps={args.classifier_steps}"])
    clf_run = out / "classifier"
    trained = train_noisy_classifier(clf_cfg, clf_run, resume=latest(clf_run) is not None, device=dev,
                                     progress=False)
    clf = load(clf_run, device=dev, sde=model.sde, kind="noisy classifier")
    judge = load_classifier(device=dev)

    y = torch.arange(10, device=dev).repeat_interleave(args.n)
    settings = {"unguided": model}
    settings.update({f"cfg w={w:g}": model.conditional(y, w) for w in map(float, args.weights.split(","))})
    settings.update({f"classifier c={c:g}": classifier_guided(model, clf.log_prob, y, c)
                     for c in map(float, args.scales.split(","))})
    rows = []
    for name, score_fn in settings.items():
        gen = torch.Generator(dev).manual_seed(0)
        with torch.no_grad():
            x = solvers.sample(score_fn, model.sde, (len(y), *model.event_shape), args.method,
                               args.sampler_steps, generator=gen, device=dev).x.clamp(-1, 1)
            hit = (judge(x).argmax(1) == y).double()
        rows.append({"setting": name, "accuracy": f"{float(hit.mean()):.3f}",
                     "se": f"{float(hit.std() / len(hit) ** 0.5):.3f}"})
        save_samples(x[::max(1, args.n // 8)].cpu(), out / f"guidance_{name.replace(' ', '_')}.png",
                     levels=model.levels, title=name)
    with open(out / "guidance.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    accuracy = ", ".join(f"{a:.2f} at t = {t:.2g}" for t, a in trained.accuracy.items())
    print(f"digits_cfg after {step} steps; noisy classifier {trained.step} steps (held-out accuracy "
          f"{accuracy}); {args.method}, "
          f"{args.sampler_steps} steps, {args.n} samples per label\n")
    print("| setting | fraction classified as the requested label | standard error |\n|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['accuracy']} | {r['se']} |")


if __name__ == "__main__":
    main()
