# %% [markdown]
# # 02 · The reverse-time SDE and the probability-flow ODE
#
# Notebook 01 built the forward SDE $dx = f(t)\,x\,dt + g(t)\,dw$ that turns data $p_0$ into a
# simple prior $p_T$. Generation runs it backwards. Two processes do that with the **same marginals**
# $p_t$ at every $t$ (Song et al. 2021, eqs. 6 and 13):
#
# $$\text{reverse-time SDE (Anderson 1982):}\quad dx = \big[f(t)\,x - g(t)^2\,\nabla_x\log p_t(x)\big]\,dt + g(t)\,d\bar w,$$
#
# $$\text{probability-flow ODE:}\quad \frac{dx}{dt} = f(t)\,x - \tfrac12\,g(t)^2\,\nabla_x\log p_t(x),$$
#
# both integrated from $t = T$ down to $t = 0$ ($d\bar w$ is a Brownian motion running backwards in time).
#
# **Why the ODE has the same marginals.** The forward density obeys the Fokker–Planck equation
#
# $$\partial_t p_t = -\nabla\cdot\big(f\,x\,p_t\big) + \tfrac12 g^2\,\Delta p_t
# = -\nabla\cdot\Big(\big[f\,x - \tfrac12 g^2\,\nabla\log p_t\big]\,p_t\Big),$$
#
# using $\Delta p = \nabla\cdot(p\,\nabla\log p)$. The right-hand side is the continuity equation of
# the deterministic flow with velocity $f x - \frac12 g^2\nabla\log p_t$: moving particles along it
# transports $p_t$ exactly, in either direction of time. Splitting the same term differently,
# $-\tfrac12 g^2\nabla\log p$ becomes $-g^2\nabla\log p$ plus a diffusion $+\tfrac12 g^2 \Delta p$,
# gives the reverse SDE.
#
# Both need only the score $\nabla\log p_t$. Here we use the **exact** score of a Gaussian mixture
# (`GaussianMixture.score(sde)`), so any mismatch we see is the solver's, not a network's.

# %%
# %matplotlib inline
import math
import warnings

import matplotlib.pyplot as plt
import torch

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets
import solvers
from sde_diffusion import GaussianMixture, VPSDE, ring2d

plt.rcParams.update({"figure.dpi": 72, "axes.grid": True, "grid.alpha": 0.3})
sde = VPSDE(beta_min=0.1, beta_max=20.0)
gm = ring2d()                    # p_0: 8 modes of std 0.05 on the unit circle
score = gm.score(sde)            # the exact (x, t) -> grad log p_t(x)
reverse_sde = sde.reverse(score)                         # drift f x - g^2 score, diffusion g
flow = sde.reverse(score, probability_flow=True)         # drift f x - g^2 score / 2, no noise
print(reverse_sde.score_weight, flow.score_weight)

# %% [markdown]
# ## 1. The two vector fields
#
# At a fixed time the two drifts differ only in the weight of the score term. The SDE pulls hard
# towards high density and relies on its noise to spread the particles back out; the ODE moves
# them exactly as much as the density itself moves. At $t = 0.3$ the VP marginal is already close
# to $\mathcal N(0, I)$, whose score is $-x$: there the ODE velocity $-(f x - \tfrac12 g^2 \nabla\log p_t) \approx -\tfrac12\beta (-x + x) = 0$
# nearly vanishes, while the SDE's is $\approx -\tfrac12\beta x$, pointing inwards. (Arrows are
# scaled per panel; the titles give the largest speed.)

# %%
t_show = 0.3
g1 = torch.linspace(-1.8, 1.8, 15, dtype=torch.float64)
X, Y = torch.meshgrid(g1, g1, indexing="xy")
pts = torch.stack([X.flatten(), Y.flatten()], 1)
gf = torch.linspace(-1.8, 1.8, 120, dtype=torch.float64)
XF, YF = torch.meshgrid(gf, gf, indexing="xy")
dens = gm.at(t_show, sde).log_prob(torch.stack([XF.flatten(), YF.flatten()], 1)).exp().reshape(XF.shape)
fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
for ax, (name, process) in zip(axes, [("reverse SDE", reverse_sde), ("probability-flow ODE", flow)]):
    v = -process.drift(pts, t_show)  # the direction of travel as t decreases
    top = v.norm(dim=1).max()
    ax.contourf(XF, YF, dens, levels=10, cmap="Blues")
    ax.quiver(X, Y, *(v / top).T, color="k", angles="xy", scale_units="xy", scale=4, width=0.005)
    ax.set_title(f"{name}: -drift at t = {t_show}\n(longest arrow: speed {top:.1f})", fontsize=10)
    ax.set_aspect("equal")
fig.tight_layout()

# %% [markdown]
# ## 2. Trajectories from the same prior samples
#
# We draw one set of prior samples $x_T \sim \mathcal N(0, I)$ and run both processes from it with
# the toolkit's `solvers.sample`: Euler–Maruyama on the reverse SDE (500 steps) and an adaptive
# Dormand–Prince solver (`torchdiffeq`, tolerance $10^{-5}$) on the probability-flow ODE, recording the
# state on the same uniform time grid from $T = 1$ to $\epsilon = 10^{-3}$.

# %%
n, steps, eps = 2000, 500, 1e-3
gen = torch.Generator().manual_seed(0)
x_T = sde.prior_sample((n, 2), generator=gen, dtype=torch.float64)
common = dict(eps=eps, x_T=x_T, dtype=torch.float64, return_trajectory=True)
res_sde = solvers.sample(score, sde, (n, 2), "euler_maruyama", steps, generator=gen, **common)
res_ode = solvers.sample(score, sde, (n, 2), "ode", steps, rtol=1e-5, atol=1e-5, **common)
times = torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)  # the recorded grid
print(f"reverse SDE: {res_sde.nfe} score evaluations;  PF ODE: {res_ode.nfe} (adaptive steps)")
print("trajectory shapes:", tuple(res_sde.trajectory.shape), tuple(res_ode.trajectory.shape))

# %%
gw = torch.linspace(-2.6, 2.6, 120, dtype=torch.float64)
XW, YW = torch.meshgrid(gw, gw, indexing="xy")
p0 = gm.at(eps, sde).log_prob(torch.stack([XW.flatten(), YW.flatten()], 1)).exp().reshape(XW.shape)
fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
for ax, (name, res, show) in zip(axes[:2], [("reverse SDE", res_sde, 5), ("probability-flow ODE", res_ode, 14)]):
    path = res.trajectory[::5, :show]  # every 5th recorded state
    ax.contourf(XW, YW, p0, levels=8, cmap="Greys", alpha=0.5)
    for k in range(show):
        ax.plot(path[:, k, 0], path[:, k, 1], lw=0.8, color=f"C{k % 10}")
    ax.scatter(*path[0].T, s=20, c="k", marker="x", label="start $x_T$")
    ax.scatter(*path[-1].T, s=20, c="r", label=r"end $x_\epsilon$")
    ax.set(xlim=(-2.6, 2.6), ylim=(-2.6, 2.6), title=f"{name}: {show} paths")
    ax.set_aspect("equal")
    ax.legend(loc="lower left", fontsize=8)
for k in range(5):
    axes[2].plot(times[::2], res_sde.trajectory[::2, k, 0], lw=0.7, color=f"C{k}")
    axes[2].plot(times[::2], res_ode.trajectory[::2, k, 0], lw=1.8, color=f"C{k}", ls="--")
axes[2].invert_xaxis()
axes[2].set(xlabel="t (running from T to 0)", ylabel="first coordinate",
            title="same start: SDE (thin) vs ODE (dashed)")
fig.tight_layout()

# %% [markdown]
# Starting from the same $x_T$, the SDE paths are rough and end in a *random* mode; the ODE paths
# are smooth and $x_T \mapsto x_0$ is a deterministic, invertible map (the basis of the exact
# likelihood in notebook 05 and of DDIM-style encoding). Individual paths differ, but the two
# clouds have the same distribution at every $t$.
#
# ## 3. The marginals match the forward process
#
# At several times we compare the first coordinate of the 2000 particles with the exact forward
# marginal. The marginal of one coordinate of a Gaussian mixture is a 1-D Gaussian mixture, here
# built from `gm.at(t, sde)` (means $m(t)\mu_k$, variances $m(t)^2 v_k + s(t)^2$).

# %%
check_times = [1.0, 0.5, 0.25, 0.1, eps]
fig, axes = plt.subplots(2, len(check_times), figsize=(3.2 * len(check_times), 5.6), sharey="col")
u = torch.linspace(-3, 3, 400, dtype=torch.float64)
print(f"{'t':>6} {'E|x|^2 exact':>13} {'SDE':>8} {'ODE':>8} {'5 s.e.':>8}")
for c, t in enumerate(check_times):
    k = round((sde.T - t) / (sde.T - eps) * steps)
    pt = gm.at(t, sde)
    first = GaussianMixture(pt.means[:, :1], pt.variances[:, :1], pt.log_weights.exp())
    density = first.log_prob(u[:, None]).exp()
    exact_m2 = (pt.log_weights.exp() * (pt.means.square().sum(1) + pt.variances.sum(1))).sum().item()
    row = []
    for r, (name, res) in enumerate([("reverse SDE", res_sde), ("PF ODE", res_ode)]):
        xt = res.trajectory[k]
        ax = axes[r, c]
        ax.hist(xt[:, 0], bins=60 if t > 0.05 else 200, range=(-3, 3), density=True, alpha=0.5, color=f"C{r}", label=name)
        ax.plot(u, density, "k", lw=1.2, label="exact $p_t$")
        ax.set_title(f"{name}, t = {t:g}", fontsize=10)
        m2 = xt.square().sum(1)
        row.append((m2.mean().item(), 5 * m2.std().item() / math.sqrt(n)))
    axes[0, c].legend(fontsize=7)
    print(f"{t:6g} {exact_m2:13.4f} {row[0][0]:8.4f} {row[1][0]:8.4f} {max(row[0][1], row[1][1]):8.4f}")
    # second moment within 5 standard errors, plus 2% for the time discretisation of the SDE
    for m2, tol in row:
        assert abs(m2 - exact_m2) < tol + 0.02 * exact_m2, (t, m2, exact_m2)
fig.suptitle("first coordinate of $x_t$: particles (histogram) vs the forward marginal (line)")
fig.tight_layout()

# %% [markdown]
# ## 4. The generated samples
#
# Every sample should land in one of the 8 modes, each with probability $1/8$. We assign samples to
# the nearest mode and check the fractions (standard error $\sqrt{p(1-p)/n} \approx 0.007$ for $n = 2000$).

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
for ax, (name, res) in zip(axes, [("reverse SDE", res_sde), ("PF ODE", res_ode)]):
    x0 = res.x
    ax.scatter(*x0.T, s=2, alpha=0.5)
    ax.scatter(*gm.means.T, s=40, c="r", marker="+")
    ax.set(xlim=(-1.5, 1.5), ylim=(-1.5, 1.5), title=f"{name}: {n} samples")
    ax.set_aspect("equal")
    frac = torch.bincount(torch.cdist(x0, gm.means).argmin(1), minlength=8) / n
    dist = torch.cdist(x0, gm.means).min(1).values
    print(f"{name:12s} mode fractions {[round(f, 3) for f in frac.tolist()]}, "
          f"median distance to a mode {dist.median():.3f} (exact: 0.05 sqrt(2 ln 2) = 0.059)")
    assert (frac - 1 / 8).abs().max() < 5 * math.sqrt(1 / 8 * 7 / 8 / n)
fig.tight_layout()

# %% [markdown]
# **Summary.** The reverse SDE and the probability-flow ODE share the drift term $f x$ and differ in
# how they use the score: $g^2\nabla\log p_t$ plus noise, or $\tfrac12 g^2\nabla\log p_t$ without.
# Fed the exact score, both reproduce the forward marginals at every $t$. In practice the score is a
# network (notebook 03), and the choice between the two (and of the solver and step count) is a
# trade-off between cost and how errors accumulate — the subject of notebook 04.
