# %% [markdown]
# # 03 · Denoising score matching is $\epsilon$-prediction
#
# Sampling by reversing an SDE (notebook 02) needs the score $\nabla_x \log p_t(x)$ of every noisy
# marginal. We never know it for real data, so we learn it with a network $s_\theta(x, t)$. This
# notebook shows
#
# 1. why the intractable score-matching objective can be replaced by **denoising score matching**
#    (DSM, Vincent 2011), checked numerically against the exact score of a Gaussian mixture;
# 2. that DSM with the weighting $\lambda(t) = s(t)^2$ *is* DDPM's noise-prediction loss $L_\text{simple}$;
# 3. a small MLP trained with that loss on a 2-D mixture in about a minute, and its score field
#    compared with the analytic one.

# %%
# %matplotlib inline
import math
import warnings

import matplotlib.pyplot as plt
import torch

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets
from sde_diffusion import DDPMSchedule, MLPScore, ScoreModel, VPSDE, ddpm_loss, dsm_loss, ring2d

torch.manual_seed(0)
plt.rcParams.update({"figure.dpi": 80, "axes.grid": True, "grid.alpha": 0.3})
sde = VPSDE(beta_min=0.1, beta_max=20.0)
gm = ring2d()  # p_0: 8 Gaussian modes of std 0.05 on the unit circle; p_t and its score are exact
D = gm.dim

# %% [markdown]
# ## 1. From score matching to denoising score matching
#
# Song et al. (2021, eq. 7) train $s_\theta$ with a time-weighted regression onto the score,
#
# $$\min_\theta\ \mathbb E_{t}\Big\{\lambda(t)\, \mathbb E_{x_0}\mathbb E_{x_t \mid x_0}
# \big\| s_\theta(x_t, t) - \nabla_{x_t}\log p_{0t}(x_t \mid x_0)\big\|_2^2\Big\},$$
#
# where the target is the score of the *transition kernel*, not of the marginal $p_t$. For our
# linear SDEs $x_t = m(t)\,x_0 + s(t)\,z$ with $z \sim \mathcal N(0, I)$, so the target is simply
# $\nabla_{x_t}\log p_{0t}(x_t \mid x_0) = -(x_t - m x_0)/s^2 = -z/s$.
#
# Why is that allowed? Vincent (2011): for each $t$,
#
# $$\mathbb E\big\|s_\theta(x_t) + z/s\big\|^2 = \mathbb E\big\|s_\theta(x_t) - \nabla\log p_t(x_t)\big\|^2 + C(t),$$
#
# with $C(t)$ independent of $\theta$. The cross terms agree because
# $\mathbb E[-z/s \mid x_t] = \nabla \log p_t(x_t)$ (differentiate $p_t(x) = \int p_{0t}(x\mid x_0)\,p_0(x_0)\,dx_0$ under the integral).
# The same fact gives the constant: $C(t) = \mathbb E\|z/s\|^2 - \mathbb E\|\nabla\log p_t\|^2 = D/s^2 - \mathbb E\|\nabla\log p_t\|^2$,
# so the DSM loss never reaches zero, even for the exact score.
#
# We check both claims on the ring mixture, whose score is known exactly. `ScoreModel` accepts any
# callable as its "network", so the analytic score and deliberately perturbed versions of it go
# through the toolkit's own `dsm_loss`. With `weighting="none"` it returns
# $\frac1D\|s_\theta(x_t,t) + z/s\|^2$ averaged over the batch (the toolkit averages over the $D$
# dimensions; see `sde_diffusion.losses`).

# %%
def perturbed(c):
    """A score model s* + c * delta with a smooth, deterministic error field delta(x)."""
    def net(x, t):
        delta = torch.stack([torch.sin(3 * x[:, 1]), torch.cos(2 * x[:, 0])], 1)
        return gm.score_at(x, t, sde) + c * delta
    return ScoreModel(net, sde, parameterization="score")


n, t_fix = 200_000, 0.1
gen = torch.Generator().manual_seed(1)
x0 = gm.sample(n, gen, dtype=torch.float64)
z = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
t = torch.full((n,), t_fix, dtype=torch.float64)
m, s = (float(v) for v in sde.marginal(torch.tensor(t_fix)))
xt = m * x0 + s * z
exact = gm.score_at(xt, t, sde)

dsm_exact = dsm_loss(perturbed(0.0), x0, weighting="none", t=t, noise=z, reduction="none")
C = D / s**2 - exact.square().sum(1).mean()
print(f"t = {t_fix}: DSM loss of the exact score {dsm_exact.mean():.4f}   C(t)/D = {C / D:.4f}")
se = dsm_exact.std() / math.sqrt(n)
assert abs(dsm_exact.mean() - C / D) < 5 * se + 1e-3 * abs(C / D)

print(f"\n{'c':>5} {'DSM excess':>11} {'E|s - s*|^2 / D':>16} {'5 s.e.':>8}")
for c in (0.25, 0.5, 1.0, 2.0):
    dsm_c = dsm_loss(perturbed(c), x0, weighting="none", t=t, noise=z, reduction="none")
    excess = dsm_c - dsm_exact  # common random numbers: only the cross term 2 c delta.(s* + z/s) is noise
    explicit = (perturbed(c).score(xt, t) - exact).square().mean(1)
    tol = 5 * (excess - explicit).std() / math.sqrt(n)
    print(f"{c:5.2f} {excess.mean():11.4f} {explicit.mean():16.4f} {tol:8.4f}")
    assert abs(excess.mean() - explicit.mean()) < tol  # DSM - DSM(s*) = explicit score matching

# %% [markdown]
# The excess DSM loss of a wrong score equals its squared distance from the true score, within
# Monte Carlo error: minimising DSM minimises the error against the (unknown) $\nabla\log p_t$.
#
# ## 2. The identity with $\epsilon$-prediction
#
# Parameterise the score through a noise predictor, $s_\theta(x_t, t) = -\epsilon_\theta(x_t, t)/s(t)$. Then
#
# $$\lambda(t)\,\big\|s_\theta(x_t,t) + z/s\big\|^2 = \frac{\lambda(t)}{s(t)^2}\,\big\|\epsilon_\theta(x_t, t) - z\big\|^2,$$
#
# and the weighting $\lambda(t) = s(t)^2$ (Song et al.'s choice, $\lambda \propto 1/\mathbb E\|\nabla\log p_{0t}\|^2$) leaves
#
# $$\mathbb E_{t, x_0, z}\ \big\|\epsilon_\theta\big(m(t)x_0 + s(t)z,\ t\big) - z\big\|^2,$$
#
# which for the VP-SDE ($m = \sqrt{\bar\alpha}$, $s = \sqrt{1-\bar\alpha}$) is DDPM's
# $L_\text{simple}$ (Ho et al. 2020, eq. 14). Its minimiser is $\epsilon^*(x_t, t) = \mathbb E[z \mid x_t] = -s(t)\nabla\log p_t(x_t)$:
# the noise predictor *is* a scaled score. `ScoreModel` holds this one conversion. Below, the exact
# mixture wrapped as an $\epsilon$-model gives the same number through `dsm_loss(weighting="sigma2")`
# and DDPM's `ddpm_loss` (with the same draws of $i$, $t = i/T$ and $z$); the two differ only by
# the $O(1/T)$ gap between $\bar\alpha_i$ and $m(t)^2$ of notebook 01.

# %%
oracle = ScoreModel(gm.eps(sde), sde, parameterization="eps")  # eps*(x, t) = -s(t) grad log p_t
sched = DDPMSchedule(T=1000)
assert sched.to_sde() == sde
gen = torch.Generator().manual_seed(2)
n = 50_000
x0 = gm.sample(n, gen, dtype=torch.float64)
z = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
i = torch.randint(1, sched.T + 1, (n,), generator=gen)
t = i.to(torch.float64) / sched.T

l_sigma2 = dsm_loss(oracle, x0, weighting="sigma2", t=t, noise=z, reduction="none")
l_none = dsm_loss(oracle, x0, weighting="none", t=t, noise=z, reduction="none")
l_ddpm = ddpm_loss(oracle, sched, x0, i=i, noise=z, reduction="none")
s_t = sde.marginal(t)[1]
print(f"DSM, lambda = s^2:           {l_sigma2.mean():.5f}")
print(f"s^2 x DSM with lambda = 1:   {(s_t**2 * l_none).mean():.5f}")
print(f"DDPM L_simple, T = 1000:     {l_ddpm.mean():.5f}")
assert torch.allclose(l_sigma2, s_t**2 * l_none, rtol=1e-10)  # the algebraic identity, per sample
assert abs(l_sigma2.mean() - l_ddpm.mean()) < 0.01 * l_ddpm.mean()  # same objective up to O(1/T)

# %% [markdown]
# ## 3. Training a small MLP in about a minute
#
# Now the real thing: a residual MLP `MLPScore` (time through a Fourier embedding) read as an
# $\epsilon$-predictor by `ScoreModel`, trained with `dsm_loss` (default weighting $s^2$, i.e.
# $L_\text{simple}$ in continuous time, $t \sim \mathcal U(10^{-5}, 1)$) and a plain AdamW loop on
# fresh samples of the mixture at every step. The dashed line is the loss of the exact score: the
# irreducible floor $\mathbb E_t[s(t)^2 C(t)]/D$ from section 1.

# %%
torch.manual_seed(0)
gen = torch.Generator().manual_seed(0)
model = ScoreModel(MLPScore(dim=D, hidden=128, blocks=3), sde, parameterization="eps")
steps, batch = 2500, 512
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
lr_decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
losses = []
for step in range(steps):
    loss = dsm_loss(model, gm.sample(batch, gen), generator=gen)
    opt.zero_grad()
    loss.backward()
    opt.step()
    lr_decay.step()
    losses.append(loss.item())
model.eval()

x_big = gm.sample(100_000, torch.Generator().manual_seed(3), dtype=torch.float64)
floor = dsm_loss(oracle, x_big, generator=torch.Generator().manual_seed(4)).item()
smooth = torch.tensor(losses).unfold(0, 50, 1).mean(1)
plt.figure(figsize=(6, 3.5))
plt.plot(losses, lw=0.5, alpha=0.4, label="batch loss")
plt.plot(range(49, steps), smooth, label="moving average (50)")
plt.axhline(floor, color="k", ls="--", label=f"exact score: {floor:.3f}")
plt.ylim(0, 0.5)
plt.xlabel("step")
plt.ylabel(r"$\|\epsilon_\theta - z\|^2 / D$")
plt.legend()
plt.title("DSM / L_simple during training")
print(f"final loss (average of the last 200 steps) {sum(losses[-200:]) / 200:.4f}, exact-score floor {floor:.4f}")

# %% [markdown]
# ## 4. Learned against analytic score field
#
# Black arrows: the exact $\nabla\log p_t$; red arrows: the trained network's score
# $-\epsilon_\theta/s(t)$; the background is the exact density $p_t$. The score's length ranges over
# orders of magnitude, so the arrows show directions only (unit length); the relative error in
# magnitude follows below.

# %%
times = [0.02, 0.1, 0.3]
fig, axes = plt.subplots(1, len(times), figsize=(4.2 * len(times), 4.2))
g = torch.linspace(-1.6, 1.6, 17, dtype=torch.float64)
X, Y = torch.meshgrid(g, g, indexing="xy")
grid = torch.stack([X.flatten(), Y.flatten()], 1)
gf = torch.linspace(-1.6, 1.6, 120, dtype=torch.float64)
XF, YF = torch.meshgrid(gf, gf, indexing="xy")
fine = torch.stack([XF.flatten(), YF.flatten()], 1)
for ax, t in zip(axes, times):
    tt = torch.full((grid.shape[0],), t, dtype=torch.float64)
    with torch.no_grad():
        learned = model.score(grid.float(), tt.float()).double()
    exact = gm.score_at(grid, tt, sde)
    ax.contourf(XF, YF, gm.at(t, sde).log_prob(fine).exp().reshape(XF.shape), levels=10, cmap="Blues")
    ax.quiver(X, Y, *(exact / exact.norm(dim=1, keepdim=True)).T, color="k", scale=22, width=0.004, label="exact")
    ax.quiver(X, Y, *(learned / learned.norm(dim=1, keepdim=True)).T, color="r", scale=22, width=0.004,
              alpha=0.7, label="learned")
    ax.set_aspect("equal")
    ax.set_title(f"t = {t}")
axes[0].legend(loc="lower left", fontsize=8)
fig.suptitle(r"score fields $\nabla \log p_t$: exact (black) vs MLP (red)")
fig.tight_layout()

# %% [markdown]
# At moderate $t$ the fields agree everywhere. At small $t$ the network is least accurate, for two
# reasons: $p_t$ is a set of sharp peaks whose score changes by $\sim 1/s(t)^2$ over a distance
# $s(t)$, and between the peaks $p_t$ is nearly zero, so the training samples $x_t$ almost never
# visit there and nothing pins the network down (Song & Ermon 2019). The relative
# error, averaged over $x_t \sim p_t$, makes this quantitative. The $\lambda(t) = s(t)^2$ weighting
# is the reason: in score units the error at time $t$ is $\|\epsilon_\theta - \epsilon^*\|^2 / s(t)^2$,
# so a small noise-prediction error becomes a large score error as $s(t) \to 0$.

# %%
ts = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
gen = torch.Generator().manual_seed(5)
rel = []
for t in ts:
    x = gm.at(t, sde).sample(5000, gen)
    tt = torch.full((x.shape[0],), t)
    with torch.no_grad():
        err = (model.score(x, tt) - gm.score_at(x, tt, sde)).square().sum(1).mean()
    rel.append((err / gm.score_at(x, tt, sde).square().sum(1).mean()).item())
plt.figure(figsize=(6, 3.5))
plt.semilogy(ts, rel, "o-")
plt.xlabel("t")
plt.ylabel(r"$E\|s_\theta - \nabla\log p_t\|^2 / E\|\nabla\log p_t\|^2$")
plt.title("relative score error of the trained MLP")
for t, r in zip(ts, rel):
    print(f"t = {t:<5} relative error {r:.4f}")
# the teaching claims, with wide margins (a run on another machine trains slightly differently):
assert max(r for t, r in zip(ts, rel) if t >= 0.2) < 0.05  # the field is right where p_t is smooth
assert rel[0] > max(rel[-3:])  # and worst near the data, t -> 0

# %% [markdown]
# **Summary.** DSM regresses onto the noise we added; in expectation that is regression onto the
# true score plus a constant. Written for $\epsilon_\theta = -s(t)\,s_\theta$ with $\lambda = s^2$ it is
# exactly DDPM's noise-prediction loss, so "a DDPM" and "a VP-SDE score model" are the same trained
# network read in two ways. Notebook 04 samples from score models with every solver of the toolkit.
