"""``sde-diffusion compare``: the Frechet distance against its closed form, the shipped digits
classifier, the report files and their numbers on the analytic ring, and the error cases."""

import csv
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from _tiny import tiny_config

from sde_diffusion.analytic import ring2d
from sde_diffusion.commands.cli import main
from sde_diffusion.evaluation.features import (FEATURES, accuracy, frechet_distance, gaussian_frechet, load_classifier,
                                    moments)


def _random_spd(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_gaussian_frechet_matches_the_closed_form():
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) with scipy's general matrix square root of the
    (non-symmetric) product S1 S2; both are exact up to float64 rounding in 6 dimensions."""
    d = 6
    mu1, mu2 = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    s1, s2 = _random_spd(d, 1), _random_spd(d, 2)
    root = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = float((mu1 - mu2).square().sum()) + np.trace(s1.numpy() + s2.numpy() - 2 * root)
    assert float(gaussian_frechet(mu1, s1, mu2, s2)) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # commuting diagonal covariances: tr(S1 + S2 - 2 (S1 S2)^(1/2)) = sum_d (sqrt a_d - sqrt b_d)^2
    a, b = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64), torch.tensor([4.0, 1.0, 9.0], dtype=torch.float64)
    z = torch.zeros(3, dtype=torch.float64)
    assert float(gaussian_frechet(z, torch.diag(a), z + 1, torch.diag(b))) == pytest.approx(3 + 1 + 1, abs=1e-12)


def test_frechet_distance_of_samples_is_that_of_their_moments_and_zero_on_itself():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(500, 4, generator=g), torch.randn(300, 4, generator=g) * 2 + 1
    assert float(frechet_distance(f1, f2)) == pytest.approx(float(gaussian_frechet(*moments(f1), *moments(f2))))
    assert abs(float(frechet_distance(f1, f1))) < 1e-9
    with pytest.raises(ValueError, match="same feature dimension"):
        frechet_distance(f1, f2[:, :3])


def test_shipped_classifier_loads_and_classifies_the_test_digits():
    """The committed weights (python -m sde_diffusion.evaluation.features) score 98.7% on the 300 test digits;
    95% leaves room for a different BLAS, not for a broken file or feature map."""
    net = load_classifier()
    assert accuracy(net, "test") > 0.95
    assert net.features(torch.zeros(3, 1, 8, 8)).shape == (3, FEATURES)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        net.features(torch.zeros(3, 64))


def _rows(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_compare_on_the_ring_writes_every_file_with_sane_numbers(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--model", "analytic:ring2d", "--sde", "vp", "--methods", "euler_maruyama,heun",
               "--steps", "3,200", "--n", "1000", "--nll", "--nll-n", "100", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out / "report.md") in printed and "euler_maruyama" in printed
    for name in ("report.md", "results.csv", "nll.csv", "quality_vs_nfe.png", "samples_vp_euler_maruyama.png",
                 "samples_vp_heun.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = {(r["method"], int(r["steps"])): r for r in _rows(out / "results.csv")}
    assert set(rows) == {(m, s) for m in ("euler_maruyama", "heun") for s in (3, 200)}
    # NFE: one score call per EM step, two per Heun step (the grid ends at eps > 0), plus Tweedie
    assert [int(rows["euler_maruyama", s]["nfe"]) for s in (3, 200)] == [4, 201]
    assert [int(rows["heun", s]["nfe"]) for s in (3, 200)] == [7, 401]
    # The SW2 of a perfect sampler to the held-out set has mean = floor and s.d. ~0.18 floor at
    # n = 1000 (measured over 100 fresh sets), so at 200 steps, where both samplers are close to
    # exact on this mixture (benchmarks/samplers.py), ratio < 2 holds with > 5 s.d. to spare.
    # The true-NLL gap of a perfect sampler has s.d. sqrt(2 Var[log p] / n) (two independent means):
    sd_gap = math.sqrt(2 * float(ring2d().log_prob(ring2d().sample(20000, torch.Generator().manual_seed(7))).var())
                       / 1000)
    for m in ("euler_maruyama", "heun"):
        assert float(rows[m, 200]["ratio"]) < 2.0
        # 3 steps are visibly worse: the gap falls by more than 5 s.d. of a difference of two gaps
        assert float(rows[m, 3]["nll_gap"]) - float(rows[m, 200]["nll_gap"]) > 5 * math.sqrt(2) * sd_gap
    # Heun is second order: at 200 steps its bias is far below the Monte-Carlo error
    assert abs(float(rows["heun", 200]["nll_gap"])) < 5 * sd_gap
    # --nll: the PF-ODE with the exact score recovers the true NLL (dopri5 at rtol = atol = 1e-5)
    nll = {r["estimate"]: float(r["value"]) for r in _rows(out / "nll.csv")}
    pf = next(v for k, v in nll.items() if k.startswith("PF-ODE"))
    assert pf == pytest.approx(nll["true -log p_0 (analytic)"], abs=1e-2)
    md = (out / "report.md").read_text()
    assert "![quality against NFE](quality_vs_nfe.png)" in md and "| vp | heun | ode | 200 | 401 |" in md


def test_compare_all_sdes_skips_vp_only_methods_on_ve_with_a_note(tmp_path, capsys):
    rc = main(["compare", "--sde", "all", "--methods", "ddim", "--steps", "2", "--n", "50",
               "--out", str(tmp_path / "all"), "--no-progress"])
    assert rc == 0
    assert "note: ddim skipped on ve: it needs a VP-type SDE." in capsys.readouterr().out
    assert {r["sde"] for r in _rows(tmp_path / "all" / "results.csv")} == {"vp", "subvp", "cosine"}


@pytest.mark.parametrize("args, message", [
    (["--methods", "heun,nosuch"], "unknown method 'nosuch'; allowed: "),
    (["--steps", ","], "--steps is empty"),
    (["--steps", "10,x"], "--steps must be integers"),
    (["--methods", "ode:solver=nosuch"], "unknown solver 'nosuch'"),
    (["--methods", "ddim", "--sde", "ve"], "method 'ddim' needs a VP-type SDE"),
    (["--model", "ring2d"], "--model must read analytic:NAME"),
    (["--model", "analytic:nosuch"], "unknown analytic model 'nosuch'"),
    (["--show-steps", "7", "--steps", "10"], "--show-steps 7 is not one of --steps 10"),
])
def test_bad_input_exits_2_with_one_line(args, message, tmp_path, capsys):
    assert main(["compare", "--n", "50", "--out", str(tmp_path / "x"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sde-diffusion compare: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_a_checkpoint_must_match_the_requested_sde(tmp_path, capsys):
    from sde_diffusion.training.train import train

    run = tmp_path / "run"
    train(tiny_config("train.steps=4"), run, device="cpu", progress=False)
    assert main(["compare", "--checkpoint", str(run), "--sde", "ve", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "was trained with the vp SDE" in err and "pass --sde vp" in err
    assert main(["compare", "--checkpoint", str(run), "--sde", "all", "--out", str(tmp_path / "c")]) == 2
    assert "--sde all needs an analytic --model" in capsys.readouterr().err
    # the matching SDE runs: SW2 against the toy ring's test split, floor from a train subset
    assert main(["compare", "--checkpoint", str(run), "--methods", "heun", "--steps", "4", "--n", "200",
                 "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    (row,) = _rows(tmp_path / "c" / "results.csv")
    assert row["sde"] == "vp" and row["metric"] == "SW2" and float(row["floor"]) > 0
