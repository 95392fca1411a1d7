# %% [markdown]
# # 01 · From the DDPM forward process to the VP-SDE
#
# Denoising diffusion probabilistic models (DDPM, Ho et al. 2020) destroy data in $T$ small
# Gaussian steps. Song et al. (2021, *Score-Based Generative Modeling through Stochastic
# Differential Equations*) observed that as $T \to \infty$ this chain becomes a stochastic
# differential equation, the **variance-preserving (VP) SDE**, and that other noising schemes
# (SMLD's variance-exploding noise, the sub-VP SDE) are SDEs of the same linear family.
#
# This notebook walks that path with the toolkit's `DDPMSchedule` and SDE classes:
#
# 1. the discrete chain $q(x_t \mid x_{t-1})$ and its closed form $q(x_t \mid x_0)$, checked by simulation;
# 2. the limit $T \to \infty$: $\bar\alpha_t \to \exp(-\int_0^t \beta(s)\,ds)$, with the gap shrinking like $1/T$;
# 3. the VP, sub-VP and VE SDEs side by side: mean and standard deviation of $x_t \mid x_0$ over time.
#
# Everything runs on a laptop CPU in seconds.

# %%
# %matplotlib inline
import math
import warnings

import matplotlib.pyplot as plt
import torch

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets
from sde_diffusion import VESDE, VPSDE, CosineVPSDE, DDPMSchedule, SubVPSDE, ring2d

torch.manual_seed(0)
gen = torch.Generator().manual_seed(0)
plt.rcParams.update({"figure.dpi": 80, "axes.grid": True, "grid.alpha": 0.3})

# %% [markdown]
# ## 1. The discrete forward process
#
# DDPM fixes a variance schedule $\beta_1, \dots, \beta_T$ (linear from $10^{-4}$ to $0.02$ with
# $T = 1000$ in the paper) and adds noise one step at a time:
#
# $$q(x_t \mid x_{t-1}) = \mathcal N\big(x_t;\ \sqrt{1-\beta_t}\,x_{t-1},\ \beta_t I\big),
# \qquad t = 1, \dots, T.$$
#
# With $\alpha_t = 1 - \beta_t$ and $\bar\alpha_t = \prod_{s=1}^t \alpha_s$, the composition of these
# Gaussian steps is again Gaussian. By induction, if $x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,x_0 +
# \sqrt{1-\bar\alpha_{t-1}}\,\epsilon'$ then
# $x_t = \sqrt{\alpha_t}\,x_{t-1} + \sqrt{1-\alpha_t}\,\epsilon = \sqrt{\bar\alpha_t}\,x_0 + (\text{noise of variance } \alpha_t(1-\bar\alpha_{t-1}) + 1 - \alpha_t = 1 - \bar\alpha_t)$, so
#
# $$q(x_t \mid x_0) = \mathcal N\big(x_t;\ \sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\big),
# \qquad x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\ \ \epsilon \sim \mathcal N(0, I).$$
#
# This closed form is what makes training cheap: any $x_t$ is one draw away from $x_0$. Below we
# run the chain step by step on samples of a 2-D "ring" of eight Gaussian modes (the toolkit's
# analytic test distribution) and compare with the one-shot `DDPMSchedule.q_sample`.

# %%
sched = DDPMSchedule(T=1000, beta_1=1e-4, beta_T=0.02)
gm = ring2d()  # 8 modes on the unit circle, std 0.05
n = 4000
x0 = gm.sample(n, gen, dtype=torch.float64)

checkpoints = [0, 50, 100, 250, 500, 1000]
chain = {0: x0}
x = x0.clone()
for i in range(1, sched.T + 1):
    beta = sched.betas[i - 1]
    x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    if i in checkpoints:
        chain[i] = x
oneshot = {i: sched.q_sample(x0, i, torch.randn(x0.shape, generator=gen, dtype=x0.dtype))
           for i in checkpoints[1:]}

# The residual x_i - sqrt(abar_i) x0 must be N(0, (1 - abar_i) I): standardise it and compare
# its mean and std with 0 and 1. With 2n = 8000 standard normal values the standard errors are
# 1/sqrt(8000) = 0.011 for the mean and 1/sqrt(2 * 8000) = 0.008 for the std; we allow 5 of them.
print(f"{'step':>5} {'abar_i':>9} {'mean(z)':>9} {'std(z)':>8}")
for i in checkpoints[1:]:
    ab = sched.alphas_cumprod[i - 1]
    z = (chain[i] - ab.sqrt() * x0) / (1 - ab).sqrt()
    print(f"{i:5d} {ab.item():9.5f} {z.mean().item():9.4f} {z.std().item():8.4f}")
    assert abs(z.mean().item()) < 5 / math.sqrt(2 * n) and abs(z.std().item() - 1) < 5 / math.sqrt(4 * n)

# %%
fig, axes = plt.subplots(2, len(checkpoints), figsize=(2.3 * len(checkpoints), 4.8), sharex=True, sharey=True)
for col, i in enumerate(checkpoints):
    axes[0, col].scatter(*chain[i][:600].T, s=1, alpha=0.5)
    axes[0, col].set_title(f"chain, step {i}")
    shot = oneshot.get(i, x0)
    axes[1, col].scatter(*shot[:600].T, s=1, alpha=0.5, color="C1")
    axes[1, col].set_title(f"q_sample, step {i}")
for ax in axes.flat:
    ax.set_aspect("equal")
    ax.set_xlim(-3.5, 3.5)
    ax.set_ylim(-3.5, 3.5)
fig.suptitle("1000 small steps (top) and the closed form q(x_t | x_0) (bottom) agree")
fig.tight_layout()

# %% [markdown]
# ## 2. The limit $T \to \infty$: the VP-SDE
#
# Put the chain on a time axis: step $i$ happens at $t_i = i/T$, with $\Delta t = 1/T$, and let the
# noise levels come from a continuous rate $\beta(t)$, $\beta_i = \beta(t_i)\,\Delta t$. One DDPM step is then
#
# $$x_i = \sqrt{1 - \beta(t_i)\Delta t}\;x_{i-1} + \sqrt{\beta(t_i)\Delta t}\;z
# \;\approx\; x_{i-1} - \tfrac12 \beta(t_i)\,x_{i-1}\,\Delta t + \sqrt{\beta(t_i)}\,\sqrt{\Delta t}\,z,$$
#
# which is the Euler–Maruyama step of the **VP-SDE** (Song et al. 2021, eq. 11)
#
# $$dx = -\tfrac12 \beta(t)\,x\,dt + \sqrt{\beta(t)}\,dw .$$
#
# The marginal coefficient converges too:
# $\log \bar\alpha_i = \sum_{j \le i} \log\big(1 - \beta(t_j)\Delta t\big) = -\sum_{j\le i} \beta(t_j)\Delta t + O(\Delta t)
# \to -\int_0^{t} \beta(s)\,ds =: -B(t)$, so
#
# $$x_t \mid x_0 \sim \mathcal N\big(m(t)\,x_0,\ s(t)^2 I\big), \qquad m(t) = e^{-B(t)/2}, \quad s(t)^2 = 1 - e^{-B(t)} .$$
#
# DDPM's linear schedule with $T = 1000$, $\beta_1 = 10^{-4}$, $\beta_T = 0.02$ corresponds to
# $\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})$ with $\beta_{\min} = T\beta_1 = 0.1$ and
# $\beta_{\max} = T\beta_T = 20$; `DDPMSchedule.to_sde()` returns exactly that `VPSDE`. Keeping
# $\beta_{\min}, \beta_{\max}$ fixed and varying $T$, the discrete $\bar\alpha_i$ should approach
# $m(t_i)^2 = e^{-B(t_i)}$ with an error of order $\Delta t = 1/T$.

# %%
vp = VPSDE(beta_min=0.1, beta_max=20.0)
Ts = [25, 50, 100, 200, 500, 1000, 4000]
gaps = []
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for T in Ts:
    s = DDPMSchedule(T=T, beta_1=vp.beta_min / T, beta_T=vp.beta_max / T)
    assert s.to_sde() == vp  # the same continuous limit for every T
    t = torch.arange(1, T + 1, dtype=torch.float64) / T
    exact = vp.marginal(t)[0] ** 2  # m(t)^2 = exp(-B(t))
    gaps.append((s.alphas_cumprod - exact).abs().max().item())
    if T in (25, 50, 100, 1000):
        ax1.plot(t, s.alphas_cumprod, ".-" if T <= 50 else "-", ms=3, lw=1, label=f"DDPM, T = {T}")
tt = torch.linspace(0, 1, 400, dtype=torch.float64)
ax1.plot(tt, vp.marginal(tt)[0] ** 2, "k--", lw=2, label=r"VP-SDE $e^{-B(t)}$")
ax1.set(xlabel="t = i / T", ylabel=r"$\bar\alpha_i$", title=r"$\bar\alpha_i$ against its continuous limit")
ax1.legend()

slope = torch.linalg.lstsq(torch.tensor([[math.log(T), 1.0] for T in Ts]),
                           torch.tensor(gaps).log()[:, None]).solution[0].item()
ax2.loglog(Ts, gaps, "o-", label=f"max gap (fitted slope {slope:.2f})")
ax2.loglog(Ts, [gaps[0] * Ts[0] / T for T in Ts], "k:", label="slope -1")
ax2.set(xlabel="T (number of steps)", ylabel=r"$\max_i |\bar\alpha_i - e^{-B(t_i)}|$", title="the gap shrinks like 1/T")
ax2.legend()
fig.tight_layout()

print("T     max gap")
for T, g in zip(Ts, gaps):
    print(f"{T:<5d} {g:.2e}")
# the teaching claim: the gap decreases monotonically, at first order in 1/T
assert all(a > b for a, b in zip(gaps, gaps[1:]))
assert -1.15 < slope < -0.85, slope

# %% [markdown]
# The exact transition of the SDE over one step $[t_{i-1}, t_i]$ is again a DDPM step,
# $x_i = \sqrt{1-\beta_i^\star}\,x_{i-1} + \sqrt{\beta_i^\star}\,z$ with
# $\beta_i^\star = 1 - m(t_i)^2/m(t_{i-1})^2 = 1 - e^{-\int_{t_{i-1}}^{t_i}\beta}$ — this is what
# `SDE.discretize` returns (its noise scale $G_i$ is $\sqrt{\beta_i^\star}$). DDPM's
# $\beta_i \approx \beta(t_i)\Delta t$ is the first-order approximation of
# $\beta^\star_i = \int_{t_{i-1}}^{t_i}\beta - \tfrac12\big(\int_{t_{i-1}}^{t_i}\beta\big)^2 + \dots$:

# %%
T = 1000
s = DDPMSchedule(T=T)
t = torch.arange(1, T + 1, dtype=torch.float64) / T
_, G = vp.discretize(torch.zeros(T, 2, dtype=torch.float64), t, 1 / T)
diff = (G**2 - s.betas).abs()
print(f"beta_1 = {s.betas[0]:.3e} vs exact {G[0]**2:.3e};  beta_T = {s.betas[-1]:.5f} vs exact {G[-1]**2:.5f}")
print(f"largest difference over the 1000 steps: {diff.max():.1e}")
# 1 - exp(-b) = b - b^2/2 + ...: the second-order term is at most beta_T^2 / 2 = 2e-4; the grid of
# DDPM's linspace sits up to half a step (beta' dt^2 / 2 = 1e-5) away from the interval midpoints
assert diff.max() < 2.2e-4

# %% [markdown]
# ## 3. One family, three noising schemes
#
# Every SDE in the toolkit is linear, $dx = f(t)\,x\,dt + g(t)\,dw$, so $x_t \mid x_0$ is Gaussian,
# $\mathcal N(m(t)\,x_0, s(t)^2 I)$, with mean and variance solving
#
# $$\frac{dm}{dt} = f(t)\,m, \qquad \frac{d s^2}{dt} = 2 f(t)\,s^2 + g(t)^2, \qquad m(0) = 1,\ s(0) = 0 .$$
#
# | SDE | $f(t)$ | $g(t)^2$ | $m(t)$ | $s(t)^2$ |
# |---|---|---|---|---|
# | VP (DDPM) | $-\tfrac12\beta(t)$ | $\beta(t)$ | $e^{-B(t)/2}$ | $1 - e^{-B(t)}$ |
# | sub-VP | $-\tfrac12\beta(t)$ | $\beta(t)\,(1 - e^{-2B(t)})$ | $e^{-B(t)/2}$ | $(1 - e^{-B(t)})^2$ |
# | VE (SMLD) | $0$ | $\frac{d\sigma^2(t)}{dt}$ | $1$ | $\sigma(t)^2 - \sigma_{\min}^2$ |
#
# with $\sigma(t) = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^t$ for VE. The VP-SDE keeps the total
# variance at one for unit-variance data (hence its name); the sub-VP SDE has the same mean but a
# variance that is everywhere *below* the VP one (it was introduced for better likelihoods);
# the VE-SDE (Song & Ermon's noise-conditional score networks) never shrinks the signal and instead
# lets the noise explode to $\sigma_{\max} = 50$. The cosine schedule of Nichol & Dhariwal (2021) is
# another VP-SDE with a different $\beta(t)$.
#
# First we check, with finite differences, that each class's `marginal` solves the moment
# equations for its own `drift_coef` and `diffusion`:

# %%
sdes = {"VP": VPSDE(), "sub-VP": SubVPSDE(), "VE": VESDE(sigma_min=0.01, sigma_max=50.0), "cosine VP": CosineVPSDE()}
h = 1e-6
for name, sde in sdes.items():
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64) * sde.T
    (m_hi, s_hi), (m_lo, s_lo) = sde.marginal(t + h), sde.marginal(t - h)
    dm, dvar = (m_hi - m_lo) / (2 * h), (s_hi**2 - s_lo**2) / (2 * h)  # central differences
    m, std = sde.marginal(t)
    f, g2 = sde.drift_coef(t), sde.diffusion(t) ** 2
    res_m = (dm - f * m).abs().max().item()
    res_v = ((dvar - 2 * f * std**2 - g2).abs() / g2).max().item()
    print(f"{name:10s} residuals: dm/dt - f m: {res_m:.1e}   (ds^2/dt - 2 f s^2 - g^2) / g^2: {res_v:.1e}")
    # central differences in float64 with h = 1e-6: truncation (h^2 / 6) * third derivative plus
    # rounding 1e-16 * s^2 / h, both below 1e-7 relative to g^2
    assert res_m < 1e-6 and res_v < 1e-6

# %%
t = torch.linspace(0, 1, 500, dtype=torch.float64)
fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
for name, sde in sdes.items():
    tt = t * sde.T
    m, std = sde.marginal(tt)
    axes[0].plot(tt, m, label=name)
    (axes[2] if name == "VE" else axes[1]).plot(tt, std, label=name, color=f"C{list(sdes).index(name)}")
    axes[3].plot(tt[1:], (m[1:] ** 2 / std[1:] ** 2).log(), label=name)
axes[0].set(title="mean coefficient m(t)", xlabel="t")
axes[1].set(title="std s(t): VP, sub-VP, cosine", xlabel="t")
axes[2].set(title="std s(t): VE (log scale)", xlabel="t", yscale="log")
axes[3].set(title=r"log SNR $\log(m^2 / s^2)$", xlabel="t")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()

m_vp, s_vp = sdes["VP"].marginal(t)
m_sub, s_sub = sdes["sub-VP"].marginal(t)
assert torch.equal(m_vp, m_sub) and bool((s_sub <= s_vp).all())  # sub-VP: same mean, less noise
print(f"at t = 1: VP m = {m_vp[-1]:.4f}, s = {s_vp[-1]:.4f};  sub-VP s = {s_sub[-1]:.4f};  "
      f"VE s = {sdes['VE'].marginal(1.0)[1]:.1f}")

# %% [markdown]
# All three end (nearly) at a simple prior: $\mathcal N(0, I)$ for VP and sub-VP, $\mathcal N(0, \sigma_{\max}^2 I)$
# for VE. The log-SNR panel is the clearest comparison: every scheme sweeps the signal-to-noise
# ratio $m^2/s^2$ from $+\infty$ down to about $e^{-10}$; they differ in how fast, and in the
# overall scale of $x_t$.
#
# Finally, the marginal densities $p_t = \int q(x_t \mid x_0)\,p_0(x_0)\,dx_0$ of the ring
# mixture. Convolving a Gaussian mixture with a Gaussian kernel gives a Gaussian mixture, so
# `GaussianMixture.at(t, sde)` returns $p_t$ exactly (means $m\,\mu_k$, variances $m^2 v_k + s^2$).
# Note the axis ranges: VE grows the cloud to radius $\approx 3\sigma_{\max}$ instead of shrinking the signal.

# %%
times = [0.0, 0.05, 0.1, 0.3, 1.0]
rows = {k: sdes[k] for k in ("VP", "sub-VP", "VE")}
fig, axes = plt.subplots(len(rows), len(times), figsize=(2.3 * len(times), 2.3 * len(rows)))
for r, (name, sde) in enumerate(rows.items()):
    for c, t in enumerate(times):
        m, std = (float(v) for v in sde.marginal(torch.tensor(t, dtype=torch.float64)))
        L = max(1.5, 1.3 * m + 3.5 * std)
        g = torch.linspace(-L, L, 120, dtype=torch.float64)
        X, Y = torch.meshgrid(g, g, indexing="xy")
        dens = gm.at(t, sde).log_prob(torch.stack([X.flatten(), Y.flatten()], 1)).exp().reshape(X.shape)
        ax = axes[r, c]
        ax.contourf(X, Y, dens, levels=12, cmap="magma")
        ax.set_aspect("equal")
        ax.set_title(f"{name}, t = {t}  (|x| < {L:.3g})", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
fig.suptitle(r"$p_t$ of the ring mixture under each SDE (exact)")
fig.tight_layout()

# %% [markdown]
# **Summary.** The DDPM chain is a discretisation of the VP-SDE: $\bar\alpha_i$ matches
# $e^{-\int_0^{t_i}\beta}$ up to $O(1/T)$, and each DDPM step is an Euler–Maruyama step. Working in
# continuous time frees us from a fixed $T$: the same trained score can be sampled with any time
# grid and any solver (notebook 02 reverses these SDEs; notebook 04 compares samplers).
