"""``nll --target-se`` / ``precision.at_target_se``: the plan from a pilot by hand, the target met
against the analytic truth, and the refusals."""

import json
import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.commands.cli import main
from sde_diffusion.evaluation.precision import PILOT_PROBES, at_target_se, plan


def test_plan_hand_values():
    """Pilot values -1, -0.5, 0.5, 1 (mean 0): var = (1 + 0.25 + 0.25 + 1) / 3 = 0.83333; probe s.e. 0.3
    each with 2 probes: one probe's variance 2 x 0.09 = 0.18, of which 0.09 sits in the values' variance:
    var_data = 0.74333. Target S = 0.05, f = 1/3: room (1 - 2/9) 0.0025 = 0.0019444, n = ceil(382.29) = 383;
    probes = ceil(0.18 / (383 (0.05/3)^2)) = ceil(1.692) = 2, Hutchinson in D = 64 (exact where D <= 2).
    Solver error 1e-3 at rtol 1e-5: rtol x 0.5 x (0.05/3) / 1e-3 = 8.33e-5 (within the 10x / 100x limits)."""
    values, pse = torch.tensor([-1.0, -0.5, 0.5, 1.0], dtype=torch.float64), torch.full((4,), 0.3, dtype=torch.float64)
    c = plan(values, pse, 1e-3, 0.05, 10_000, 64, 1e-5)
    assert PILOT_PROBES == 2
    assert c["points"] == 383 and c["divergence"] == "hutchinson" and c["probes"] == 2
    assert c["rtol"] == pytest.approx(1e-5 * 0.5 * (0.05 / 3) / 1e-3, rel=1e-12)
    assert c["predicted"]["data_se"] == pytest.approx(math.sqrt(0.74333333 / 383), rel=1e-6)
    assert plan(values, pse, 1e-3, 0.05, 10_000, 2, 1e-5)["divergence"] == "exact"
    # a tenfold smaller target needs 100x the points: more than the data hold
    with pytest.raises(ValueError, match=r"target s.e. 0.005 cannot be met: the data's spread alone \(sd 0.862 per "
                                         r"point\) needs 38229 points at 0.005, the data hold 10000"):
        plan(values, pse, 1e-3, 0.005, 10_000, 64, 1e-5)
    # no solver error seen: loosen at most 10x; a large one: tighten at most 100x
    assert plan(values, pse, 0.0, 0.05, 10_000, 64, 1e-5)["rtol"] == pytest.approx(1e-4)
    assert plan(values, pse, 1.0, 0.05, 10_000, 64, 1e-5)["rtol"] == pytest.approx(1e-7)


@pytest.mark.slow  # 20 runs to the target (~1.5 min)
def test_target_se_is_met_against_the_analytic_truth():
    """The ring's exact score: for 20 seeds, 1000 fresh draws scored to S = 0.1 nats/dim. Each result's
    total s.e. is at most S, and its error against the truth (E[-log p_0 / D], from 200,000 draws of the
    closed-form density: s.e. 0.0015) is within 3 S in at least 19 of 20 (the data part alone gives
    |error| > 3 S with probability 0.3%; probe and solver parts add at most S / 3 each)."""
    model = sd.load("analytic:ring2d").to(torch.float64)
    gm = model.info.mixture
    big = gm.sample(200_000, torch.Generator().manual_seed(99)).double()
    truth = float((-gm.log_prob(big) / 2).mean())
    within = 0
    for seed in range(20):
        x = gm.sample(1000, torch.Generator().manual_seed(seed)).double()
        r = at_target_se(model, x, None, 0.1, seed=seed, batch_size=50, rtol=1e-4)
        assert r.se <= 0.1 and "target was met" in r.stopped, (seed, r.se, r.stopped)
        assert len(r.values) < 1000  # it stopped early, at the points the target needs
        within += abs(r.mean - truth) <= 0.3
    assert within >= 19, within


def test_nll_target_se_cli_writes_its_choice_and_refuses_conflicts(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["nll", "--model", "analytic:gmm64", "--target-se", "0.02", "--num-points", "400", "--batch-size",
                 "100", "--rtol", "1e-4", "--atol", "1e-4", "--out", str(out), "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["stderr"] <= 0.02 and s["n"] <= 400 and s["target_se"] == 0.02
    assert s["choice"]["divergence"] in ("exact", "hutchinson") and s["choice"]["points"] <= s["n"]
    for part in ("data_se", "probe_se", "solver_error"):
        assert s["error_budget"][part] <= 0.02
    assert s["error_budget"]["probe_se"] <= 0.02 / 3 + 1e-3 and s["error_budget"]["solver_error"] <= 0.02 / 3
    assert s["cost"]["nfe"] == sum(s["cost"]["nfe_per_batch"]) + sum(s["cost"]["pilot_nfe"])
    assert abs(s["mean"] - s["true_mean"]) < 3 * 0.02
    assert "choice: " in capsys.readouterr().out
    assert main(["nll", "--model", "analytic:gmm64", "--target-se", "0.02", "--divergence", "exact",
                 "--no-progress"]) == 2
    assert "--target-se chooses the divergence and probes itself" in capsys.readouterr().err


def test_target_se_on_a_briefly_trained_model(trained, tmp_path, capsys):
    """The session's tiny trained VP run on the toy ring (not an analytic score): nll --target-se 0.2 on
    its test split ends with a total s.e. at most 0.2 from fewer points than the split holds, and its
    choice and budget in summary.json."""
    run = trained("toy_vp", "train.steps=8", tiny=True).out
    assert main(["nll", "--model", str(run), "--target-se", "0.2", "--rtol", "1e-3", "--atol", "1e-3",
                 "--batch-size", "50", "--out", str(tmp_path / "t"), "--no-progress"]) == 0
    s = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert s["stderr"] <= 0.2 and s["n"] <= s["available"] and "target was met" in s["stopped"]
    assert s["error_budget"]["solver_error"] <= 0.2 / 3 and s["choice"]["points"] <= s["n"]
