"""Transcription tests of the deterministic update rules (Heun, DPM-Solver, DPM-Solver++): each writes
the paper's algorithm out with its own tables (closed-form m, s, lambda and t(lambda) of
``_closed_forms``) and runs it on the same non-uniform grid from the same state as the package's
sampler; float64, to 1e-12.

DPM-Solver (Lu et al. 2022a, noise eps = -s score) and DPM-Solver++ (Lu et al. 2022b, data
x0 = (x + s^2 score) / m) with h = lambda_t - lambda_s. Their exact Taylor form is
    data:  x_t = (s_t/s_s) x + m_t  sum_k x0^(k)(lambda_s) int_0^h e^{u-h} u^k/k! du,
    noise: x_t = (m_t/m_s) x - s_t  sum_k eps^(k)(lambda_s) int_0^h e^{h-u} u^k/k! du,
whose integrals are, for k = 0, 1, 2: 1 - e^{-h}, h - 1 + e^{-h}, h^2/2 - h + 1 - e^{-h} (data) and
e^h - 1, e^h - 1 - h, e^h - 1 - h - h^2/2 (noise): the multistep order-3 reference.
"""

import pytest
import torch

from _closed_forms import F64, GRID, SDES, at, run, score, start, vp, vp_lam, vp_t_of_lam

TOL = dict(rtol=1e-12, atol=1e-12)
SDE_VP = SDES["vp"][0]


def test_heun_is_karras_algorithm_1():
    """Karras et al. 2022, Algorithm 1 in x_hat = x/m, sigma = s/m with the denoiser
    D(x_hat; sigma) = x_hat + sigma^2 m score(m x_hat, t), d = (x_hat - D)/sigma:
    x' = x_hat + h d_i, x_hat <- x_hat + h (d_i + d(x'; sigma_{i+1})) / 2, h = sigma_{i+1} - sigma_i."""
    for name in ("vp", "ve"):
        sde, cf = SDES[name]
        x = start()
        got = run("heun", sde, GRID, x)
        m, s = cf(GRID)[:2]
        sig = s / m

        def d(y, j):
            D = y + sig[j] ** 2 * m[j] * score(m[j] * y, at(GRID[j], y))
            return (y - D) / sig[j]
        y = x / m[0]
        for j in range(len(GRID) - 1):
            h = sig[j + 1] - sig[j]
            dj = d(y, j)
            y = y + h * (dj + d(y + h * dj, j + 1)) / 2
        torch.testing.assert_close(got, m[-1] * y, **TOL)


def _predict(x, t, data):
    m, s = vp(t)[:2]
    g = score(x, at(t, x))
    return (x + s**2 * g) / m if data else -s * g


def _first(x, t, u, data, D=None):
    """The first-order (DDIM) step from t to u with prediction D (default: at (x, t))."""
    D = _predict(x, t, data) if D is None else D
    (mt, st), (mu, su) = vp(t)[:2], vp(u)[:2]
    h = vp_lam(u) - vp_lam(t)
    return su / st * x - mu * torch.expm1(-h) * D if data else mu / mt * x - su * torch.expm1(h) * D


def _second_multistep(x, D0, D1, t_prev, t, u, data, form):
    """DPM-Solver++(2M), Lu et al. 2022b Algorithm 2 (``midpoint``), or its Taylor (``heun``) form;
    the noise variant by symmetry (Lu et al. 2022a, multistep DPM-Solver-2)."""
    h, h_prev = vp_lam(u) - vp_lam(t), vp_lam(t) - vp_lam(t_prev)
    r = h_prev / h
    (mt, st), (mu, su) = vp(t)[:2], vp(u)[:2]
    if form == "midpoint":
        D = (1 + 1 / (2 * r)) * D0 - 1 / (2 * r) * D1
        return _first(x, t, u, data, D)
    Dd = (D0 - D1) / r  # h times the divided difference
    if data:
        return su / st * x - mu * torch.expm1(-h) * D0 + mu * (torch.expm1(-h) / h + 1) * Dd
    return mu / mt * x - su * torch.expm1(h) * D0 - su * (torch.expm1(h) / h - 1) * Dd


def _singlestep_2(x, t, u, data, form, r=0.5):
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1) / DPM-Solver-2 (2022a, Algorithm 4) with r = 1/2:
    s_mid = t(lambda_t + r h), u_mid a first-order step to it, then midpoint: D = (1 - 1/(2r)) D0 +
    1/(2r) D_mid; Taylor: D0 and the difference (D_mid - D0)/r with the k = 1 integral."""
    lt, lu = vp_lam(t), vp_lam(u)
    h = lu - lt
    t_mid = vp_t_of_lam(lt + r * h)
    D0 = _predict(x, t, data)
    D_mid = _predict(_first(x, t, t_mid, data, D0), t_mid, data)
    if form == "midpoint":
        return _first(x, t, u, data, (1 - 1 / (2 * r)) * D0 + 1 / (2 * r) * D_mid)
    return _taylor_step(x, t, u, data, [D0, (D_mid - D0) / (r * h)])


def _integrals(h, data):
    if data:
        e = torch.exp(-h)
        return [1 - e, h - 1 + e, h**2 / 2 - h + 1 - e]
    e = torch.exp(h)
    return [e - 1, e - 1 - h, e - 1 - h - h**2 / 2]


def _taylor_step(x, t, u, data, derivs):
    """x_t from the Taylor form of the module docstring with y^(k)(lambda_s) = derivs[k]."""
    h = vp_lam(u) - vp_lam(t)
    (mt, st), (mu, su) = vp(t)[:2], vp(u)[:2]
    terms = sum(c * y for c, y in zip(_integrals(h, data), derivs))
    return su / st * x + mu * terms if data else mu / mt * x - su * terms


def _singlestep_3(x, t, u, data):
    """DPM-Solver-3 (Lu et al. 2022a, Algorithm 5; DPM-Solver++ by the data form), r1 = 1/3, r2 = 2/3:
    u1 first order to s1; u2 = first order to s2 plus (r2/r1) times the k = 1 term of D1 = D(u1) - D0
    over r2 h; the step uses the k = 1 term of D2 = D(u2) - D0 over r2 h."""
    lt = vp_lam(t)
    h = vp_lam(u) - lt
    r1, r2 = 1 / 3, 2 / 3
    s1, s2 = vp_t_of_lam(lt + r1 * h), vp_t_of_lam(lt + r2 * h)
    D0 = _predict(x, t, data)
    D1 = _predict(_first(x, t, s1, data, D0), s1, data) - D0
    u2 = _taylor_step(x, t, s2, data, [D0, D1 / (r1 * h)])
    D2 = _predict(u2, s2, data) - D0
    return _taylor_step(x, t, u, data, [D0, D2 / (r2 * h)])


def _lagrange_derivatives(lams, ys):
    """First and second derivatives at lams[0] of the quadratic through (lams[k], ys[k]), k = 0..2."""
    l0, l1, l2 = lams
    w1 = [(2 * l0 - l1 - l2) / ((l0 - l1) * (l0 - l2)), (l0 - l2) / ((l1 - l0) * (l1 - l2)),
          (l0 - l1) / ((l2 - l0) * (l2 - l1))]
    w2 = [2 / ((l0 - l1) * (l0 - l2)), 2 / ((l1 - l0) * (l1 - l2)), 2 / ((l2 - l0) * (l2 - l1))]
    return sum(w * y for w, y in zip(w1, ys)), sum(w * y for w, y in zip(w2, ys))


def _reference(x, order, multistep, data, form):
    hist = []
    for j in range(len(GRID) - 1):
        t, u = GRID[j], GRID[j + 1]
        if not multistep:
            x = (_first(x, t, u, data) if order == 1 else _singlestep_2(x, t, u, data, form) if order == 2
                 else _singlestep_3(x, t, u, data))
            continue
        hist = [_predict(x, t, data)] + hist[:2]
        k = min(order, len(hist))
        if k == 1:
            x = _first(x, t, u, data, hist[0])
        elif k == 2:
            x = _second_multistep(x, hist[0], hist[1], GRID[j - 1], t, u, data, form)
        else:
            d1, d2 = _lagrange_derivatives([vp_lam(GRID[j - q]) for q in range(3)], hist)
            x = _taylor_step(x, t, u, data, [hist[0], d1, d2])
    return x


CASES = [(order, multistep, variant, form) for variant in ("dpm_solver++", "dpm_solver")
         for order, multistep in [(1, True), (1, False), (2, True), (2, False), (3, True), (3, False)]
         for form in (("midpoint", "heun") if order > 1 else ("midpoint",))
         if not (order == 3 and not multistep and form == "heun")]


@pytest.mark.parametrize("order, multistep, variant, form", CASES,
                         ids=["-".join(map(str, c)) for c in CASES])
def test_dpm_solver(order, multistep, variant, form):
    """Every order, single- and multistep, both predictions and both second-order forms (3M uses
    the form on its second step, its warm-up; 3S has no second-order step)."""
    x = start()
    got = run("dpm_solver", SDE_VP, GRID, x, order=order, multistep=multistep, variant=variant, solver_type=form)
    torch.testing.assert_close(got, _reference(x, order, multistep, variant == "dpm_solver++", form), **TOL)


def test_midpoint_is_the_default_second_order_form():
    x = start()
    torch.testing.assert_close(run("dpm_solver", SDE_VP, GRID, x), _reference(x, 2, True, True, "midpoint"), **TOL)
