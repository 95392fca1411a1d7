"""Classifier guidance on digits, end to end through the command line:
``sde-diffusion train-classifier --config configs/digits_classifier.yaml`` trains a noisy classifier
p_phi(y | x_t, t) under the VP-SDE of the shipped unconditional digits model (``assets/digits_vp``),
and ``sde-diffusion sample --classifier`` steers that model towards a label. Samples are judged by the
project's clean digits classifier (``features.load_classifier``, > 95 % accurate on held-out digits).

Unguided, every label is requested equally often and the samples do not depend on it, so the fraction
judged as the requested label is sum_k p(class k) / 10 = 0.1 exactly; with N = 200 its standard error
is sqrt(0.1 * 0.9 / 200) = 0.021 and we assert <= 0.1 + 5 SE. Guided with scale c = 3 (DPM-Solver++(2M),
20 steps) we assert >= 0.8 and at least 0.5 above unguided. Measured with the config's classifier:
unguided 0.09, c = 1 0.74, c = 3 0.95, c = 10 0.96; at p = 0.95 the SE is 0.016, so 0.8 lies 9 SE below.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import solvers
from _tiny import ctrl_c_after_first_checkpoint
from sde_diffusion import load
from sde_diffusion.training.classifier_training import held_out_accuracy
from sde_diffusion.commands.cli import main
from sde_diffusion.evaluation.features import load_classifier
from sde_diffusion.guidance import guided_score
from sde_diffusion.training.shipped import SHIPPED

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "digits_classifier.yaml")
N_PER_LABEL, CHANCE = 20, 0.1
SE = (CHANCE * (1 - CHANCE) / (10 * N_PER_LABEL)) ** 0.5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The config's noisy classifier (3000 Adam steps on 64-D digits, about 15 s on one core)."""
    out = tmp_path_factory.mktemp("clf") / "digits_classifier"
    assert main(["train-classifier", "--config", CONFIG, "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def model():
    return load("shipped:digits_vp")


def _judged(score_fn, sde, y, method="dpm_solver", steps=20):
    with torch.no_grad():
        x = solvers.sample(score_fn, sde, (len(y), 1, 8, 8), method, steps,
                           generator=torch.Generator().manual_seed(0)).x
    return (load_classifier()(x.clamp(-1, 1)).argmax(1) == y).double().mean().item()


@pytest.mark.slow  # trains the config's classifier (3000 steps, ~40 s); only in the full run
def test_classifier_guided_samples_are_the_requested_digit(run, model):
    classifier = load(run, sde=model.sde, event_shape=(1, 8, 8))
    y = torch.arange(10).repeat_interleave(N_PER_LABEL)
    unguided = _judged(model, model.sde, y)
    guided = _judged(guided_score(model, y, classifier=classifier, scale=3.0), model.sde, y)
    assert unguided <= CHANCE + 5 * SE, unguided
    assert guided >= 0.8 and guided >= unguided + 0.5, (unguided, guided)


@pytest.mark.slow  # trains the config's classifier (3000 steps, ~40 s); only in the full run
def test_noisy_classifier_accuracy_falls_with_the_noise_level(run):
    """On held-out digits: nearly clean data (t = eps) is classified like clean data (measured 0.98 on
    the 300 test digits, SE 0.008; we assert >= 0.9), and forward noise destroys the label
    information, so accuracy decreases with t (measured 0.79 at t = T/4, 0.29 at T/2)."""
    classifier = load(run, kind="noisy classifier")
    acc = list(held_out_accuracy(classifier, classifier.info.config, device="cpu").values())
    assert acc[0] >= 0.9 and acc[0] > acc[1] > acc[2], acc


@pytest.mark.slow  # trains the config's classifier (3000 steps, ~40 s); only in the full run
def test_cli_sample_with_a_classifier(run, tmp_path):
    """40 samples of label 7 from the shipped model: >= 0.7 judged a 7 (at p = 0.95, SE = 0.034:
    7 SE of margin); an exported model's folder is read but not written to."""
    out = tmp_path / "sevens"
    args = ["sample", "--model", str(SHIPPED), "--classifier", str(run), "--label", "7",
            "--classifier-scale", "3", "--method", "dpm_solver", "--steps", "20", "--num-samples", "40"]
    assert main([*args, "--out", str(out)]) == 0
    x = torch.from_numpy(np.load(out / "samples.npz")["x"])
    assert (load_classifier()(x.clamp(-1, 1)).argmax(1) == 7).double().mean() >= 0.7
    assert not (SHIPPED / "samples").exists()


def test_resumed_classifier_training_equals_an_uninterrupted_run(tmp_path):
    short = ["classifier.ckpt_every=2", "classifier.batch_size=32", "classifier.hidden=16"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train-classifier", "--config", CONFIG, *short, "classifier.steps=4", "--out", str(straight),
                 "--no-progress"]) == 0
    assert main(["train-classifier", "--config", CONFIG, *short, "classifier.steps=2", "--out", str(resumed),
                 "--no-progress"]) == 0
    assert main(["train-classifier", "--resume", "--out", str(resumed), "classifier.steps=4", "--no-progress"]) == 0
    a, b = load(straight), load(resumed)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.slow  # trains the config's classifier (3000 steps, ~40 s); only in the full run
def test_bad_classifier_input_exits_2_with_one_line(run, tmp_path, capsys):
    other_sde = tmp_path / "ve"
    assert main(["train-classifier", "--config", CONFIG, "sde.name=ve", "sde.params={}", "classifier.steps=1",
                 "--out", str(other_sde), "--no-progress"]) == 0
    sample = ["sample", "--model", str(SHIPPED), "--num-samples", "4", "--steps", "2", "--out", str(tmp_path / "s")]
    cases = [
        ([*sample, "--classifier-scale", "2"], "--classifier-scale needs --classifier"),
        ([*sample, "--classifier", str(run)], "need a label"),
        ([*sample, "--classifier", str(run), "--label", "10"], "allowed: 0..9"),
        ([*sample, "--classifier", str(run), "--label", "1", "--classifier-scale", "-1"], "scale must be a number >= 0"),
        ([*sample, "--classifier", str(run), "--label", "1", "--guidance", "2"], "needs a conditional model"),
        ([*sample, "--classifier", str(other_sde), "--label", "1"], "trained under VESDE"),
        ([*sample, "--classifier", str(SHIPPED), "--label", "1"], "holds a score model, not a noisy classifier"),
        (["train-classifier", "--config", CONFIG, "sde.name=ve", "sde.params={}", "--model", "shipped:digits_vp",
          "--out", str(tmp_path / "g")], "but --model 'shipped:digits_vp' samples under VPSDE"),
        (["sample", "--model", str(run)], "holds a noisy classifier, not a score model"),
        (["train-classifier", "--config", CONFIG, "--out", str(run)], "already holds a run"),
        (["train", "--resume", "--out", str(run)], "holds a noisy classifier run, not a score model run"),
        (["train-classifier", "--config", str(ROOT / "configs" / "toy_vp.yaml"), "--out", str(tmp_path / "r")],
         "a classifier needs labels"),
        (["train-classifier", "--config", CONFIG, "classifier.eps=2", "--out", str(tmp_path / "e")],
         "classifier.eps: must be below"),
    ]
    capsys.readouterr()
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)


def test_guided_score_bad_input(model):
    with pytest.raises(TypeError, match="model must be a ScoreModel"):
        guided_score(lambda x, t: x, torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="classifier must be a NoisyClassifier"):
        guided_score(model, torch.zeros(2, dtype=torch.long), classifier=load_classifier())
    with pytest.raises(ValueError, match="y must be an integer tensor of labels"):
        guided_score(model, torch.zeros(2))
    with pytest.raises(ValueError, match="needs a conditional model .* or a noisy classifier"):
        guided_score(model, torch.zeros(2, dtype=torch.long))


def test_ctrl_c_during_classifier_training_exits_130_and_resumes(tmp_path, capsys, monkeypatch):
    """Ctrl-C (simulated: StopOnSignal's request right after the first checkpoint) exits 130 with the
    resume command; resuming finishes the run, its metrics.csv with LF line endings only."""
    import sde_diffusion.training.classifier_training as ct
    from sde_diffusion.training.checkpoint import latest, read_state

    monkeypatch.setattr(ct, "LOG_EVERY", 1)  # rows before and after the interruption
    out = tmp_path / "clf"
    short = ["classifier.ckpt_every=2", "classifier.batch_size=32", "classifier.hidden=16"]
    with monkeypatch.context() as patch:
        ctrl_c_after_first_checkpoint(patch, ct)
        assert main(["train-classifier", "classifier.steps=6", "--config", CONFIG, "--out", str(out), *short,
                     "--no-progress"]) == 130
    stdout = capsys.readouterr().out
    assert read_state(latest(out))["step"] == 2
    assert stdout.endswith(f"to resume: sde-diffusion train-classifier --resume --out {out}\n"), stdout
    assert main(["train-classifier", "--resume", "--out", str(out), "--no-progress"]) == 0
    assert read_state(latest(out))["step"] == 6
    metrics = (out / "metrics.csv").read_bytes()
    assert b"\r" not in metrics and metrics.count(b"\n") == 7  # header + steps 1..6
