"""Test-set likelihood summaries for reports: PF-ODE NLL with its standard error, the DDPM bound
where it applies, and reference figures (the true NLL of an analytic model, a Gaussian baseline).

Units: bits/dim for discrete data (``likelihood.bits_per_dim``: uniform dequantization,
bpd = -(log p(x) + D log w) / (D ln 2) with bin width w), nats/dim for continuous data
(-log p(x) / D). The standard error is over samples: std / sqrt(n).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..dequantize import DATA_RANGE, bin_width, continuous_to_levels
from ..likelihood import bits_from_log_prob, dequantize, log_likelihood
from ..schedule import DDPMSchedule
from ..sde import VPSDE


def mean_se(v: torch.Tensor) -> tuple[float, float]:
    """(mean, standard error std/sqrt(n)) of a 1-D tensor."""
    v = v.detach().double().cpu()
    return float(v.mean()), float(v.std() / math.sqrt(len(v))) if len(v) > 1 else math.nan


def row(sde: str, estimate: str, unit: str, values: torch.Tensor, seconds: float) -> dict:
    m, se = mean_se(values)
    return {"sde": sde, "estimate": estimate, "unit": unit, "value": m, "stderr": se, "n": len(values),
            "seconds": seconds}


def gaussian_bpd(train_x: torch.Tensor, test_k: torch.Tensor, levels: int, gen: torch.Generator) -> torch.Tensor:
    """Per-sample bits/dim of a full-covariance Gaussian fitted to the dequantized training data:
    mean E[x], covariance Cov(x) + w^2/12 I (x plus independent U(0, w) noise), evaluated at the
    dequantized test points x = lo + (k + u) w: bpd = -(log N(x; mu, Sigma) + D log w) / (D ln 2)."""
    w = bin_width(levels, DATA_RANGE)
    x = train_x.flatten(1).double().cpu()
    d = x.shape[1]
    cov = torch.cov(x.T) + w * w / 12 * torch.eye(d, dtype=torch.float64)
    gauss = torch.distributions.MultivariateNormal(x.mean(0), covariance_matrix=cov)
    u = torch.rand(test_k.shape, generator=gen, dtype=torch.float64)
    xt = (DATA_RANGE[0] + (test_k.cpu().double() + u) * w).flatten(1)
    return -(gauss.log_prob(xt) + d * math.log(w)) / (d * math.log(2))


def ddpm_chain(cfg, sde) -> DDPMSchedule | None:
    """The DDPM chain whose continuous limit is the run's SDE: the config's schedule (``ddpm``), or
    T = 1000 steps beta_i = beta(i/T)/T of a linear VP-SDE; None where there is no such chain."""
    from ..training.config import build_schedule

    schedule = build_schedule(cfg) if cfg is not None else None
    if schedule is None and isinstance(sde, VPSDE):
        schedule = DDPMSchedule(T=1000, beta_1=sde.beta_min / 1000, beta_T=sde.beta_max / 1000)
    return schedule


# the convention behind each bound's decoder L_0 (``vlb.decoder_rule``), said in the row
DECODER_LABEL = {"ddpm": "sigma_1^2 = beta_tilde_2, DDPM's code", "step": "sigma_1^2 = beta_1",
                 "learned": "the learned sigma_1^2"}
# the bin convention (``vlb.bins_rule``)
BINS_LABEL = {"ddpm": "bins x +- 1/(L-1), tanh CDF, DDPM's code", "exact": "bin centres, exact CDF"}


def analytic_rows(target, n: int, device: torch.device, seed: int = 0) -> list[dict]:
    """Per SDE: nats/dim by the PF-ODE with the exact score (exact divergence up to 16 dimensions,
    else Hutchinson with one Rademacher probe) on n held-out points, and the true -log p_0 / D."""

    x = target.reference[:n]
    dim = x[0].numel()
    div = "exact" if dim <= 16 else "hutchinson"
    rows = [row("-", "true -log p_0 (analytic)", "nats/dim", -target.log_prob(x) / dim, 0.0)]
    for name, sde in target.sdes.items():
        t0 = time.perf_counter()
        lp = log_likelihood(target.score(sde), sde, x, divergence=div,
                            generator=torch.Generator(device).manual_seed(seed)).log_prob
        rows.append(row(name, f"PF-ODE ({div} divergence, dopri5)", "nats/dim", -lp / dim, time.perf_counter() - t0))
    return rows


@dataclass(frozen=True)
class PerSample:
    """Per-sample NLL of ``nll_per_sample``: ``values`` (N,) in bits/dim (discrete data) or nats/dim,
    ``probe_se`` (N,) the standard error of each value over its Hutchinson probes (0 for the exact
    divergence, NaN for one probe), and per batch the score evaluations ``nfe`` and wall ``seconds``."""

    values: torch.Tensor
    probe_se: torch.Tensor
    nfe: list[int]
    seconds: list[float]


def nll_per_sample(model, x: torch.Tensor, levels: int | None, *, generator, batch_size: int,
                   **kwargs) -> PerSample:
    """NLL per sample of x (its continuous values; for discrete data, ``levels`` given, the levels
    k = ``continuous_to_levels(x)`` dequantized as in ``likelihood.bits_per_dim`` with one draw u):
    bits/dim -(log p(x) + D log w) / (D ln 2), else nats/dim -log p(x) / D, in batches of
    ``batch_size``. ``kwargs`` go to ``log_likelihood``."""
    values, se, nfe, seconds = [], [], [], []
    for chunk in x.split(batch_size):
        t0, dim = time.perf_counter(), chunk[0].numel()
        if levels:
            k = continuous_to_levels(chunk, levels, DATA_RANGE)
            chunk = dequantize(k, levels=levels, data_range=DATA_RANGE, generator=generator, dtype=x.dtype)
        r = log_likelihood(model, model.sde, chunk, generator=generator, **kwargs)
        if levels:
            values.append(bits_from_log_prob(r.log_prob, dim, levels, DATA_RANGE))
            se.append(r.stderr / (dim * math.log(2)))
        else:
            values.append(-r.log_prob / dim)
            se.append(r.stderr / dim)
        nfe.append(r.nfe)
        seconds.append(time.perf_counter() - t0)
    empty = x.new_zeros(0)
    return PerSample(torch.cat(values) if values else empty, torch.cat(se) if se else empty, nfe, seconds)


def model_rows(model, device: torch.device, n: int | None = None, n_vlb: int = 50, seed: int = 0,
               rtol: float = 1e-5, data: str | None = None) -> list[dict]:
    """Test-set NLL of a loaded model (``load``) on its test split (or the file ``data``): PF-ODE
    (Hutchinson, dopri5) on n test samples (all if None); for discrete data also the DDPM bound on
    n_vlb samples where a chain applies, and the Gaussian baseline. Bits/dim for discrete data,
    nats/dim for continuous."""
    from ..training.loading import model_dataset
    from ..models import learns_variance
    from ..vlb import bins_rule, ddpm_vlb_bits_per_dim, decoder_rule

    cfg = model.info.config
    test = model_dataset(model, "test", data=data)
    if n is not None and n < len(test):
        test = model_dataset(model, "test", data=data, n=n, seed=seed)
    sde_name, levels = cfg.sde.name, test.levels
    unit = "bits/dim" if levels else "nats/dim"
    gen = torch.Generator(device).manual_seed(seed)
    t0 = time.perf_counter()
    nll = nll_per_sample(model, test.x.to(device), levels, generator=gen, batch_size=100,
                         divergence="hutchinson", rtol=rtol, atol=rtol).values
    rows = [row(sde_name, f"PF-ODE (Hutchinson, dopri5, rtol=atol={rtol:g})", unit, nll, time.perf_counter() - t0)]
    if not levels:
        return rows
    k = test.discrete()
    schedule = ddpm_chain(cfg, model.sde)
    if schedule is not None and n_vlb > 0:
        t0 = time.perf_counter()
        vlb = ddpm_vlb_bits_per_dim(model, schedule, k[:n_vlb].to(device), levels=levels, data_range=DATA_RANGE,
                                    generator=torch.Generator(device).manual_seed(seed), max_batch=4096)
        rule = "learned" if learns_variance(model) else decoder_rule("auto", levels)
        rows.append(row(sde_name, f"DDPM bound (T={schedule.T}, decoder {DECODER_LABEL[rule]}; "
                        f"{BINS_LABEL[bins_rule('auto', levels)]})", unit, vlb,
                        time.perf_counter() - t0))
    train = model_dataset(model, "train", data=data)
    rows.append(row("-", "full-covariance Gaussian (baseline)", unit,
                    gaussian_bpd(train.x, k, levels, torch.Generator().manual_seed(seed)), 0.0))
    return rows
