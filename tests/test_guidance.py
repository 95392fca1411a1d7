"""Classifier-free and classifier guidance (ScoreModel.conditional, sde_diffusion.guidance).

Exact checks on an analytic mixture whose class is the component: p_t(x | k) = N(m mu_k, m^2 v_k + s^2),
so the conditional score is component k's score s_k, the null-label score is the mixture's s, and
p(k | x_t) is the responsibility r_k(x_t). Then, with no approximation anywhere:
    classifier-free  (1 + w) s_k - w s                      (the formula, w >= 0)
    Bayes            s + grad log r_k = s_k                 (classifier guidance, scale 1)
    equivalence      (1 + w) s_k - w s = s + (1 + w) grad log r_k
all hold to float64 rounding. Trained checks on the 8-mode ring with labels = mode index: guided
samples land in the requested mode far more often than unguided ones (thresholds stated below).
"""

import math

import pytest
import torch

import solvers
from sde_diffusion.training import data
from sde_diffusion.analytic import GaussianMixture, ring2d
from sde_diffusion.training.config import load_config
from sde_diffusion.guidance import NoisyClassifier, classifier_guided, train_classifier
from sde_diffusion.models import ScoreModel
from sde_diffusion.sde import VPSDE

SDE = VPSDE()
GM = GaussianMixture([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]], [[0.1, 0.2], [0.3, 0.05], [0.2, 0.2]],
                     [0.2, 0.5, 0.3])
PARTS = [GaussianMixture(GM.means[k:k + 1], GM.variances[k:k + 1]) for k in range(3)]


class ClassScores:
    """An analytic conditional 'net' in the score parameterization: label k -> s_k, null (3) -> s."""

    num_classes = 3

    def __call__(self, x, t, y=None):
        y = torch.full((x.shape[0],), 3) if y is None else y
        out = GM.score_at(x, t, SDE)
        for k, part in enumerate(PARTS):
            out = torch.where((y == k)[:, None], part.score_at(x, t, SDE), out)
        return out


def log_posterior(x, t):
    """log r_k(x_t) = log w_k + log N_k(x_t) - log p_t(x_t), shape (N, 3)."""
    comps = torch.stack([part.log_prob_t(x, t, SDE) for part in PARTS], 1)
    return GM.log_weights + comps - GM.log_prob_t(x, t, SDE)[:, None]


def _points(n=64):
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = 0.01 + 0.98 * torch.rand(n, generator=g, dtype=torch.float64)
    y = torch.randint(3, (n,), generator=g)
    return x, t, y


@pytest.mark.parametrize("w", [0.0, 0.5, 3.0])
def test_classifier_free_formula(w):
    x, t, y = _points()
    model = ScoreModel(ClassScores(), SDE, "score")
    s_k = torch.stack([PARTS[int(k)].score_at(x[i:i + 1], t[i:i + 1], SDE)[0] for i, k in enumerate(y)])
    expected = (1 + w) * s_k - w * GM.score_at(x, t, SDE)
    torch.testing.assert_close(model.conditional(y, w)(x, t), expected, rtol=1e-12, atol=1e-12)


def test_classifier_guidance_with_the_exact_posterior_is_the_conditional_score():
    x, t, y = _points()
    guided = classifier_guided(GM.score(SDE), log_posterior, y, 1.0)(x, t)
    torch.testing.assert_close(guided, ClassScores()(x, t, y), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("w", [0.5, 2.0])
def test_classifier_free_equals_classifier_guidance_with_weight_one_plus_w(w):
    x, t, y = _points()
    cfg = ScoreModel(ClassScores(), SDE, "score").conditional(y, w)(x, t)
    cg = classifier_guided(GM.score(SDE), log_posterior, y, 1 + w)(x, t)
    torch.testing.assert_close(cfg, cg, rtol=1e-9, atol=1e-9)


# -- trained models on the ring with mode labels ---------------------------------------------------
RING = ring2d()
N, LABEL = 800, 3
# Unguided, the fraction in a given mode is Binomial(N, 1/8)/N: mean 0.125, SE 0.0117, so it lies
# below 0.125 + 5 SE < 0.19 (asserted). We require guided samples in the requested mode at >= 0.8
# (a stated quality bar, 4x the unguided rate), i.e. "far more often".
UNGUIDED_MAX = 0.125 + 5 * math.sqrt(0.125 * 0.875 / N)
GUIDED_MIN = 0.8


def _mode(x):
    return torch.cdist(x.double(), RING.means).argmin(1)


def _ring_with_modes(split, path, n, seed):
    n = n or 20_000
    x = RING.sample(n, torch.Generator().manual_seed(2 * seed + (split == "test")), dtype=torch.float64)
    return data.Dataset(x.float(), _mode(x), None, "ring_modes")


def _sample(score_fn, seed):
    return solvers.sample(score_fn, SDE, (N, 2), "euler_maruyama", 200,
                          generator=torch.Generator().manual_seed(seed)).x


@pytest.fixture(scope="module")
def cfg_model(trained):
    """A conditional MLP trained by ``train`` with label dropout p_uncond = 0.2 (about 10 s), from the
    session's ``trained`` factory (the ring_modes data set registered for the training only)."""
    return trained("toy_vp", "data.name=ring_modes", "model.params.num_classes=8", "train.p_uncond=0.2",
                   "train.steps=1500", "train.sample_every=0", "train.ckpt_every=1500", "train.log_every=500",
                   datasets={"ring_modes": _ring_with_modes})


@pytest.mark.slow  # the 1,500-step conditional model (~30 s); only in the full run
def test_classifier_free_guidance_lands_in_the_requested_mode(cfg_model):
    cfg_model, y = cfg_model.model, torch.full((N,), LABEL)
    with torch.no_grad():
        unguided = (_mode(_sample(cfg_model, 0)) == LABEL).float().mean()  # y = None: the null label
        conditional = (_mode(_sample(cfg_model.conditional(y, 0.0), 1)) == LABEL).float().mean()
        guided = (_mode(_sample(cfg_model.conditional(y, 2.0), 2)) == LABEL).float().mean()
    assert unguided < UNGUIDED_MAX
    assert conditional >= GUIDED_MIN and guided >= GUIDED_MIN


@pytest.mark.slow  # the 1,500-step conditional model (~30 s); only in the full run
def test_cli_sample_label_and_guidance(cfg_model, tmp_path):
    from sde_diffusion.commands.cli import main

    out = tmp_path / "s"
    args = ["sample", "--model", str(cfg_model.out), "--num-samples", str(N), "--steps", "200", "--seed", "7"]
    assert main([*args, "--label", str(LABEL), "--guidance", "1", "--out", str(out)]) == 0
    x = torch.from_numpy(__import__("numpy").load(out / "samples.npz")["x"])
    assert (_mode(x) == LABEL).float().mean() >= GUIDED_MIN
    assert main([*args, "--label", "8"]) == 2  # labels 0..7
    assert main([*args, "--guidance", "1"]) == 2  # guidance without a label


def test_noisy_classifier_guidance_lands_in_the_requested_mode():
    torch.manual_seed(0)
    x = RING.sample(20_000, torch.Generator().manual_seed(5))
    clf = NoisyClassifier(2, 8, hidden=64)
    losses = train_classifier(clf, SDE, x, _mode(x), steps=600, batch_size=256)
    assert sum(losses[-50:]) / 50 < sum(losses[:50]) / 50  # it learned something (the real check follows)
    y = torch.full((N,), LABEL)
    with torch.no_grad():
        unguided = (_mode(_sample(RING.score(SDE), 3)) == LABEL).float().mean()
        guided = (_mode(_sample(classifier_guided(RING.score(SDE), clf.log_prob, y, 2.0), 4)) == LABEL).float().mean()
    assert unguided < UNGUIDED_MAX
    assert guided >= GUIDED_MIN


def test_bad_guidance_input():
    with pytest.raises(ValueError, match="scale must be a number >= 0"):
        classifier_guided(GM.score(SDE), log_posterior, torch.zeros(2, dtype=torch.long), -1.0)
    with pytest.raises(ValueError, match="p_uncond: label dropout needs a conditional model"):
        load_config("configs/toy_vp.yaml", ["train.p_uncond=0.1"])
    with pytest.raises(ValueError, match=r"p_uncond: must lie in \[0, 1\]"):
        load_config("configs/digits_cfg.yaml", ["train.p_uncond=1.5"])
