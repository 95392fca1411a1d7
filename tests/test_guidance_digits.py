"""Classifier-free guidance on a trained digits model: guided samples are classified as the requested
label far more often than unguided ones, by the project's shipped digits classifier (the CNN of
``features.py``, > 95 % accurate on the test digits).

The model is the shipped ``assets/digits_cfg/`` (configs/digits_cfg.yaml, see the README's shipped
files). n = 20 samples per label (N = 200), DPM-Solver++(2M) with 20 steps, fixed seeds.

Unguided: samples with the null label do not depend on the requested label, so with every label
requested equally often the expected fraction classified as the requested one is
sum_k p(class k) / 10 = 0.1 exactly, whatever the model's class balance; its standard error is
sqrt(0.1 * 0.9 / 200) = 0.021, so the bound is 0.1 + 5 SE = 0.206.
Guided (w = 1 and w = 2): a working guidance makes almost every sample the requested digit; we assert
>= 0.8, far above chance (0.1 + 33 SE). Measured with the shipped model: unguided 0.08, w = 1 0.97,
w = 2 0.98; at p = 0.97 the SE is sqrt(0.97 * 0.03 / 200) = 0.012, so 0.8 is 14 SE below (and even a
true p of 0.9, SE 0.021, would leave 5 SE).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import solvers
from sde_diffusion.evaluation.features import load_classifier
from sde_diffusion import load

CFG = Path(__file__).resolve().parent.parent / "sde_diffusion" / "assets" / "digits_cfg"
N_PER_LABEL = 20
CHANCE = 0.1
SE = (CHANCE * (1 - CHANCE) / (10 * N_PER_LABEL)) ** 0.5


@pytest.fixture(scope="module")
def hits():
    """Fraction classified as the requested label for w = None (null label), 1 and 2."""
    model = load(CFG)
    judge = load_classifier()
    y = torch.arange(10).repeat_interleave(N_PER_LABEL)
    null = torch.full_like(y, model.num_classes)
    settings = {None: lambda x, t: model.score(x, t, null), 1.0: model.conditional(y, 1.0),
                2.0: model.conditional(y, 2.0)}
    out = {}
    for w, score_fn in settings.items():
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            x = solvers.sample(score_fn, model.sde, (len(y), 1, 8, 8), "dpm_solver", 20, generator=gen).x
            out[w] = (judge(x.clamp(-1, 1)).argmax(1) == y).double().mean().item()
    return out


@pytest.mark.slow  # samples the shipped conditional model 3 x 200 digits (~15 s); only in the full run
def test_unguided_samples_match_the_requested_label_at_chance(hits):
    assert hits[None] <= CHANCE + 5 * SE, hits


@pytest.mark.slow  # samples the shipped conditional model 3 x 200 digits (~15 s); only in the full run
@pytest.mark.parametrize("w", [1.0, 2.0])
def test_guided_samples_are_the_requested_digit(hits, w):
    assert hits[w] >= 0.8, hits
    assert hits[w] >= hits[None] + 0.5, hits
