# %% [markdown]
# # 06 · Guidance: steering a diffusion model towards a label
#
# A class-conditional score model $s_\theta(x, t, y) \approx \nabla_x \log p_t(x \mid y)$ can already
# sample a requested digit $y$. **Guidance** trades diversity for fidelity by exaggerating the label's
# pull. By Bayes' rule the conditional score splits into an unconditional score and a classifier term:
#
# $$\nabla_x \log p_t(x \mid y) = \nabla_x \log p_t(x) + \nabla_x \log p_t(y \mid x).$$
#
# **Classifier guidance** (Dhariwal & Nichol 2021; Song et al. 2021, sec. 5) trains a *noisy*
# classifier $p_\phi(y \mid x_t, t)$ on forward-noised data and samples with
#
# $$\tilde s(x, t) = s_\theta(x, t) + w\, \nabla_x \log p_\phi(y \mid x_t = x, t),$$
#
# which for $w = 1$ and the exact posterior is the conditional score; $w > 1$ samples from
# $p_t(x)\, p_t(y \mid x)^w$ (sharper classes). In this toolkit: `classifier_guided(score_fn, log_prob, y, w)`
# with `NoisyClassifier`, trained from a config by `sde-diffusion train-classifier` (section 3), and on the
# command line `sde-diffusion sample --model shipped:digits_vp --classifier RUN --label k --classifier-scale w`.
#
# **Classifier-free guidance** (Ho & Salimans 2022) needs no classifier: one network learns both the
# conditional score and the unconditional one (the label is replaced by a *null* label with
# probability `train.p_uncond`), and
#
# $$\tilde s(x, t) = (1 + w)\, s_\theta(x, t, y) - w\, s_\theta(x, t, \varnothing)
#   = s_\theta(x, t, \varnothing) + (1 + w)\,\big[s_\theta(x, t, y) - s_\theta(x, t, \varnothing)\big].$$
#
# The bracket is the network's implicit classifier gradient $\nabla_x \log p_t(y \mid x)$, so for exact
# scores classifier-free guidance with weight $w$ is classifier guidance with weight $1 + w$; $w = 0$ is
# the plain conditional model. In this toolkit: `ScoreModel.conditional(y, w)`, and on the command line
# `sde-diffusion sample --model shipped:digits_cfg --label k --guidance w`.
#
# Here we use the shipped class-conditional digits model (`sd.load("shipped:digits_cfg")`: the export in
# `sde_diffusion/assets/digits_cfg/`, trained by `configs/digits_cfg.yaml` with `p_uncond = 0.1`) and
# judge the samples with the shipped digits classifier (the CNN of the Fréchet distance, > 95 %
# accurate on the held-out digits).

# %%
# %matplotlib inline
import warnings

import matplotlib.pyplot as plt
import torch

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets
import solvers
import sde_diffusion as sd
from sde_diffusion.evaluation.features import load_classifier

torch.manual_seed(0)
model = sd.load("shipped:digits_cfg")  # the model itself; its run's config and metadata in model.info
cfg = model.info.config
judge = load_classifier()
print(f"{cfg.model.kind} with {model.num_classes} labels (null label = {model.num_classes}), "
      f"trained {model.info.meta['step']} steps; p_uncond = {cfg.train.p_uncond}")

# %% [markdown]
# ## 1. Samples per label as the guidance weight grows
#
# For every label $k = 0..9$ we draw samples with DPM-Solver++(2M) (20 steps of the probability-flow
# ODE; guided scores cost two network calls per step) from the **same** prior draws $x_T$ for every
# weight, so each column follows one starting point as $w$ changes. The first panel uses the null
# label (the unconditional model) for reference.

# %%
n = 50  # samples per label
y = torch.arange(10).repeat_interleave(n)
null = torch.full_like(y, model.num_classes)
weights = [0.0, 1.0, 3.0]
settings = {"unconditional": lambda x, t: model.score(x, t, null)}
settings.update({f"w = {w:g}": model.conditional(y, w) for w in weights})

x_T = torch.randn(len(y), 1, 8, 8, generator=torch.Generator().manual_seed(1))
samples = {}
with torch.no_grad():
    for name, score_fn in settings.items():
        samples[name] = solvers.sample(score_fn, model.sde, x_T.shape, "dpm_solver", 20, x_T=x_T).x.clamp(-1, 1)

cols = 8
fig, axes = plt.subplots(1, len(samples), figsize=(4 * len(samples), 5.2))
for ax, (name, x) in zip(axes, samples.items()):
    tiles = torch.nn.functional.pad(x.reshape(10, n, 8, 8)[:, :cols], (1, 1, 1, 1), value=-1.0)
    grid = tiles.permute(0, 2, 1, 3).reshape(100, 10 * cols)   # rows: labels, columns: samples
    ax.imshow(grid, cmap="gray_r", vmin=-1, vmax=1)
    ax.set_title(name)
    ax.set_yticks([5 + 10 * k for k in range(10)], [str(k) for k in range(10)])
    ax.set_xticks([])
    ax.grid(False)
axes[0].set_ylabel("requested label")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. How often is the sample the requested digit?
#
# The fraction of the 500 samples that the clean classifier assigns to the requested label, with its
# binomial standard error $\sqrt{p(1-p)/N}$. The unconditional samples do not depend on the requested
# label, and every label is requested equally often, so their expected fraction is exactly
# $\sum_k p(\text{class } k)/10 = 0.1$ (chance). Guidance should lift the fraction far above chance, and a
# larger $w$ should make it at least as high as the unguided conditional model ($w = 0$): the price is
# diversity (the samples of one label at $w = 3$ look more alike).

# %%
accuracy, per_label = {}, {}
for name, x in samples.items():
    hit = (judge(x).argmax(1) == y).double()
    accuracy[name] = hit.mean().item()
    per_label[name] = hit.reshape(10, n).mean(1)
    se = (accuracy[name] * (1 - accuracy[name]) / len(y)) ** 0.5
    print(f"{name:>14}: {accuracy[name]:.3f} ± {se:.3f}   per label "
          + " ".join(f"{v:.2f}" for v in per_label[name].tolist()))

fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(list(accuracy), list(accuracy.values()), color=["grey"] + ["C0"] * len(weights))
ax.axhline(0.1, color="k", ls="--", lw=1, label="chance")
ax.set_ylabel("fraction classified as requested")
ax.set_ylim(0, 1)
ax.legend()
plt.show()

chance_se = (0.1 * 0.9 / len(y)) ** 0.5
assert accuracy["unconditional"] < 0.1 + 5 * chance_se
assert all(accuracy[f"w = {w:g}"] > 0.1 + 10 * chance_se for w in weights[1:])
assert max(accuracy[f"w = {w:g}"] for w in weights[1:]) >= accuracy["w = 0"]

# %% [markdown]
# ## 3. Classifier guidance of an unconditional model
#
# The shipped *unconditional* digits model (`assets/digits_vp/`, the same VP-SDE) knows nothing of labels.
# We train the noisy classifier of `configs/digits_classifier.yaml` (a time-conditioned MLP, 3000 Adam
# steps on digits noised to random t, about 15 s; exactly what `sde-diffusion train-classifier` runs) and
# add $c\,\nabla_x \log p_\phi(y \mid x_t, t)$ to the score, from the same $x_T$ as above.

# %%
import tempfile

from sde_diffusion.training.classifier_training import train_noisy_classifier
from sde_diffusion.training.config import load_config
from sde_diffusion.guidance import guided_score

uncond = sd.load("shipped:digits_vp")
with tempfile.TemporaryDirectory() as run:
    trained = train_noisy_classifier(load_config("../configs/digits_classifier.yaml"), run, progress=False)
print("held-out accuracy of the noisy classifier: "
      + ", ".join(f"{a:.2f} at t = {t:.3g}" for t, a in trained.accuracy.items()))

scales = [0.0, 1.0, 3.0]
cg = {}
with torch.no_grad():
    for c in scales:
        score_fn = uncond if c == 0 else guided_score(uncond, y, classifier=trained.classifier, scale=c)
        cg[f"c = {c:g}"] = solvers.sample(score_fn, uncond.sde, x_T.shape, "dpm_solver", 20, x_T=x_T).x.clamp(-1, 1)

fig, axes = plt.subplots(1, len(cg), figsize=(4 * len(cg), 5.2))
for ax, (name, x) in zip(axes, cg.items()):
    tiles = torch.nn.functional.pad(x.reshape(10, n, 8, 8)[:, :cols], (1, 1, 1, 1), value=-1.0)
    ax.imshow(tiles.permute(0, 2, 1, 3).reshape(100, 10 * cols), cmap="gray_r", vmin=-1, vmax=1)
    hit = (judge(x).argmax(1) == y).double().mean().item()
    ax.set_title(f"{name}: {hit:.2f} classified as requested")
    ax.set_yticks([5 + 10 * k for k in range(10)], [str(k) for k in range(10)])
    ax.set_xticks([])
    ax.grid(False)
    cg[name] = hit
axes[0].set_ylabel("requested label")
plt.tight_layout()
plt.show()

assert cg["c = 0"] < 0.1 + 5 * chance_se            # unguided: chance
assert cg["c = 3"] > 0.1 + 10 * chance_se           # guided: far above chance

# %% [markdown]
# A noisy classifier is cheap to train but must be trained under the model's SDE (its inputs are the
# model's $x_t$); near $t = T$ it is close to chance (its accuracy falls with the noise, printed above), so
# the guidance acts mostly in the second half of sampling. Classifier-free guidance needs no second
# network but a conditional model; for exact scores the two coincide with $c = 1 + w$.
#
# ## 4. Takeaways
#
# * Classifier-free guidance extrapolates from the unconditional towards the conditional score; the
#   classifier term it amplifies is implicit in the difference of the two network outputs.
# * $w = 0$ is the conditional model as trained; $w > 0$ pushes samples towards regions the model
#   considers typical *of that label*, raising fidelity (classifier accuracy) at the cost of diversity.
# * Classifier guidance (`classifier_guided`) does the same with an explicit noisy classifier;
#   `benchmarks/guidance_digits.py` compares both on these digits.
