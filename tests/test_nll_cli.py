"""``sde-diffusion nll`` on users' files and models: the analytic mixture's exact likelihood through
the CLI, the CSV/JSON outputs, bits/dim of integer files, runs scored from another directory, the
one loader for runs and exported models, and bad data refused before any compute."""

import csv
import json
import math
import re

import numpy as np
import pytest
import torch
from _tiny import tiny_config

from sde_diffusion import VPSDE, bits_per_dim, load, ring2d
from sde_diffusion.commands.cli import main
from sde_diffusion.training.shipped import SHIPPED
from sde_diffusion.training.train import train

GM = ring2d()
N = 60


@pytest.fixture(scope="module")
def ring_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("nll") / "ring.npy"
    np.save(path, GM.sample(N, torch.Generator().manual_seed(7), dtype=torch.float64).numpy())
    return path


def _nll(argv, capsys):
    assert main(["nll", *argv, "--device", "cpu", "--no-progress"]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def _row(out: str, name: str) -> tuple[float, float]:
    m = re.search(rf"^\| *{re.escape(name)}\s*\| (\S*) \| (\S*) \|$", out, re.M)
    return tuple(float(g) if g else math.nan for g in m.groups())


def test_analytic_mixture_scored_from_a_file_matches_its_exact_likelihood(ring_file, tmp_path, capsys):
    """The exact score of ring2d under the VP-SDE: the flow gives log p_eps(x); |log p_eps - log p_0|
    <= 2 eps |d/dt log p_t| ~ 1e-4 per point (tests/test_likelihood.py's truncation bound) and the
    solver adds <= 1e-3 nats/dim, so the mean is within 3 s.e. + 1e-3 of -log p_0 / D, and so is the
    paired difference, whose s.e. is far smaller."""
    out = _nll(["--model", "analytic:ring2d", "--sde", "vp", "--data", str(ring_file), "--dtype", "float64",
                "--batch-size", "25", "--out", str(tmp_path / "o")], capsys)
    x = torch.from_numpy(np.load(ring_file))
    true = -GM.log_prob(x) / 2
    mean, se = _row(out, "nats/dim")
    assert abs(mean - float(true.mean())) <= 3 * se + 1e-3
    with open(tmp_path / "o" / "per_sample.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(N))
    assert [int(r["batch"]) for r in rows] == [i // 25 for i in range(N)]
    values = torch.tensor([float(r["nats_per_dim"]) for r in rows], dtype=torch.float64)
    diff = values - true
    assert abs(float(diff.mean())) <= 3 * float(diff.std()) / math.sqrt(N) + 1e-3
    assert float(diff.abs().max()) <= 2e-3
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["n"] == N and summary["unit"] == "nats/dim" and summary["mean"] == pytest.approx(mean, abs=1e-4)
    assert summary["data"] == str(ring_file.resolve()) and summary["sde"].startswith("VPSDE")
    assert {k: summary["settings"][k] for k in ("divergence", "rtol", "atol", "error_control", "batch_size", "seed",
                                                "dtype")} == \
        {"divergence": "exact", "rtol": 1e-5, "atol": 1e-5, "error_control": "sample", "batch_size": 25, "seed": 0,
         "dtype": "float64"}
    assert len(summary["nfe_per_batch"]) == len(summary["seconds_per_batch"]) == 3
    assert summary["command"].startswith(f"sde-diffusion nll --model analytic:ring2d --sde vp --data {ring_file}")


def test_hutchinson_standard_errors(ring_file, tmp_path, capsys):
    """4 probes per point: the mean stays within 3 s.e. of the exact value; the probe part of the
    s.e., sqrt(mean_n se_n^2 / N), is the per-point probe spread, smaller than the total."""
    out = _nll(["--model", "analytic:ring2d", "--data", str(ring_file), "--dtype", "float64",
                "--divergence", "hutchinson", "--probes", "4", "--rtol", "1e-4", "--atol", "1e-4",
                "--out", str(tmp_path / "h")], capsys)
    s = json.loads((tmp_path / "h" / "summary.json").read_text())
    true = float((-GM.log_prob(torch.from_numpy(np.load(ring_file))) / 2).mean())
    assert abs(s["mean"] - true) <= 3 * s["stderr"] + 1e-3
    with open(tmp_path / "h" / "per_sample.csv") as f:
        probe_se = np.array([float(r["probe_stderr"]) for r in csv.DictReader(f)])
    assert s["stderr_probes"] == pytest.approx(math.sqrt((probe_se**2).mean() / N), rel=1e-4)
    assert 0 < s["stderr_probes"] < s["stderr"]
    assert _row(out, "of which probe noise")[1] == pytest.approx(s["stderr_probes"], abs=1e-4)


@pytest.mark.slow  # a 1e-10 reference solve
def test_error_budget_parts(ring_file, tmp_path, capsys):
    """summary.json's error_budget, one batch: the solver part (the batch's mean minus its mean at 10x
    tighter rtol/atol) is within a factor 3 of the actual solver error (against the same solve at 1e-10)
    at three tolerances; with 4 probes data^2 + probes^2 = the total s.e.^2; with the exact divergence
    the probe part is 0; --no-solver-pilot leaves the solver part out."""
    def summary(name, *extra):
        _nll(["--model", "analytic:ring2d", "--data", str(ring_file), "--dtype", "float64", "--batch-size",
              str(N), *extra, "--out", str(tmp_path / name)], capsys)
        return json.loads((tmp_path / name / "summary.json").read_text())

    exact = summary("tight", "--rtol", "1e-10", "--atol", "1e-10", "--no-solver-pilot")["mean"]
    for tol in ("1e-3", "1e-4", "1e-5"):
        s = summary(tol, "--rtol", tol, "--atol", tol)
        actual, reported = abs(s["mean"] - exact), s["error_budget"]["solver_error"]
        assert actual / 3 <= reported <= 3 * actual, (tol, actual, reported)
        assert s["error_budget"]["probe_se"] == 0 and s["error_budget"]["data_se"] == pytest.approx(s["stderr"])
        assert s["error_budget"]["solver_pilot"]["rtol"] == pytest.approx(float(tol) / 10)
    h = summary("h", "--divergence", "hutchinson", "--probes", "4", "--rtol", "1e-4", "--atol", "1e-4")
    b = h["error_budget"]
    assert b["data_se"] ** 2 + b["probe_se"] ** 2 == pytest.approx(h["stderr"] ** 2) and b["probe_se"] > 0
    assert b["solver_error"] is not None
    assert summary("none", "--no-solver-pilot")["error_budget"]["solver_error"] is None


def test_integer_file_gives_bits_per_dim_of_the_library(tmp_path, capsys):
    """Levels 0..L-1 dequantized as bits_per_dim does (batch 0 is seeded by --seed itself)."""
    k = np.random.RandomState(0).randint(0, 32, size=(8, 2))
    np.save(tmp_path / "k.npy", k.astype(np.float32))  # whole-number floats need --levels
    out = _nll(["--model", "analytic:ring2d", "--data", str(tmp_path / "k.npy"), "--levels", "32",
                "--dtype", "float64", "--seed", "5", "--rtol", "1e-3", "--atol", "1e-3"], capsys)
    ref = bits_per_dim(GM.score(VPSDE()), VPSDE(), torch.from_numpy(k), levels=32,
                       generator=torch.Generator().manual_seed(5), dtype=torch.float64, rtol=1e-3, atol=1e-3)
    mean, se = _row(out, "bits/dim")
    assert mean == pytest.approx(float(ref.mean()), abs=1e-4)
    assert se == pytest.approx(float(ref.std() / math.sqrt(8)), abs=1e-4)
    assert "32 levels" in out


def test_run_trained_in_one_directory_is_scored_from_another(tmp_path, capsys, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    np.save("points.npy", GM.sample(200, torch.Generator().manual_seed(1)).numpy())
    train(tiny_config("data.name=npy", "data.path=points.npy", "data.n=null", "train.steps=2"), "run",
          progress=False)
    saved = json.loads((tmp_path / "a" / "run" / "config.json").read_text())
    assert saved["data"]["path"] == str(tmp_path / "a" / "points.npy")  # stored absolute
    monkeypatch.chdir(tmp_path / "b")
    out = _nll(["--model", str(tmp_path / "a" / "run"), "--rtol", "1e-3", "--atol", "1e-3"], capsys)
    mean, se = _row(out, "nats/dim")
    assert math.isfinite(mean) and se > 0 and "(20 samples of shape (2,)" in out  # the 10% test split
    # the trained model with the batch error control and its error budget: the same value within the
    # pilot's solver error scale (1e-3 tolerances), every part of the budget finite
    _nll(["--model", str(tmp_path / "a" / "run"), "--rtol", "1e-3", "--atol", "1e-3", "--error-control", "batch",
          "--out", "o"], capsys)
    s = json.loads((tmp_path / "b" / "o" / "summary.json").read_text())
    b = s["error_budget"]
    assert s["settings"]["error_control"] == "batch" and math.isfinite(b["solver_error"]) and b["probe_se"] == 0
    assert abs(s["mean"] - mean) <= 1e-2 and b["data_se"] == pytest.approx(s["stderr"])


def test_the_shipped_model_reads_the_same_by_folder_by_name_and_through_the_cli(tmp_path, capsys):
    """One loader: the exported folder, ``shipped:digits_vp`` and the `sample` command give the same model
    (the same samples, bit for bit)."""
    from sde_diffusion.training.train import draw_samples

    model, other = load(SHIPPED), load("shipped:digits_vp")
    assert model.info.config == other.info.config and other.event_shape == (1, 8, 8)
    x, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        assert torch.equal(model(x, t), other(x, t))
    assert main(["sample", "--model", "shipped:digits_vp", "--method", "ddim", "--steps", "3", "--num-samples", "4",
                 "--device", "cpu", "--out", str(tmp_path / "s")]) == 0
    ours = draw_samples(model, model.info.config, (1, 8, 8), device="cpu", seed=0, n=4, method="ddim", steps=3).x
    assert np.array_equal(np.load(tmp_path / "s" / "samples.npz")["x"], ours.numpy())
    with pytest.raises(ValueError, match="holds the EMA weights only"):
        load(SHIPPED, ema=False)


@pytest.mark.parametrize("array, extra, message", [
    (np.zeros((50, 2, 3)), [],
     r"bad\.npy \(shape \(50, 2, 3\), float64\): samples read as \(N, 1, 2, 3\); model '.*digits_vp' \(unet\) "
     r"accepts \(N, 1, 8, 8\)\.$"),
    (np.zeros((50, 64), dtype=bool), [], r"bad\.npy \(shape \(50, 64\), bool\): expected an integer or float array"),
    (np.full((50, 1, 8, 8), 0.5, dtype=np.float32), ["--levels", "17"],
     r"bad\.npy \(shape \(50, 1, 8, 8\), float32\): levels=17 needs whole numbers 0\.\.16"),
    (np.full((50, 1, 8, 8), 20, dtype=np.int64), ["--levels", "17"],
     r"bad\.npy \(shape \(50, 1, 8, 8\), int64\): expected integer levels 0\.\.16, got values in \[20, 20\]"),
    (np.full((50, 1, 8, 8), 3, dtype=np.int64), [],  # not silently 256 levels: digits as int64 0..16
     r"bad\.npy \(shape \(50, 1, 8, 8\), int64\): integer data needs its number of levels .*'levels' entry, "
     r"or pass --levels \(nll\)"),
])
def test_bad_data_file_is_refused_before_any_compute(array, extra, message, tmp_path, capsys, monkeypatch):
    import sde_diffusion.evaluation.nll_table as table
    monkeypatch.setattr(table, "log_likelihood", lambda *a, **k: pytest.fail("computed before the data check"))
    np.save(tmp_path / "bad.npy", array)
    assert main(["nll", "--model", str(SHIPPED), "--data", str(tmp_path / "bad.npy"), *extra,
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err.strip()), err


@pytest.mark.parametrize("argv, message", [
    (["--model", str(SHIPPED), "--levels", "17"], r"--levels applies to a --data file"),
    (["--model", "analytic:ring2d", "--split", "test"], r"--split needs a run"),
    (["--model", str(SHIPPED), "--sde", "ve"], r"digits_vp' was trained with the vp SDE \(VPSDE.*\), not the ve SDE; "
                                              r"leave the SDE unset \(it is the model's own\) or pass vp\.$"),
    (["--model", "analytic:ring3d"], r"unknown analytic model 'ring3d'; allowed: ring2d, grid2d, gmm64\.$"),
    (["--model", "analytic:ring2d", "--probes", "3"], r"--probes applies to --divergence hutchinson"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert main(["nll", *argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err.strip()), err


def test_training_refuses_a_wrong_shape_before_the_first_step(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((60, 2, 3)))
    with pytest.raises(ValueError, match=r"cube\.npy \(shape \(60, 2, 3\), float64\): samples read as "
                                         r"\(N, 1, 2, 3\); model\.kind \(mlp\) accepts \(N, D\) vectors\.$"):
        train(tiny_config("data.name=npy", f"data.path={tmp_path / 'cube.npy'}", "data.n=null"), tmp_path / "run",
              progress=False)
    assert not (tmp_path / "run" / "metrics.csv").exists() and not (tmp_path / "run" / "config.json").exists()


def test_a_run_saved_with_a_relative_path_works_from_its_directory(tmp_path, capsys, monkeypatch):
    """Runs saved before data paths were stored absolute: resumed (the relative path then compares
    equal to the same file given absolute) and scored from the directory they were trained in."""
    import sde_diffusion.training.runs as runs

    monkeypatch.chdir(tmp_path)
    np.save("points.npy", GM.sample(200, torch.Generator().manual_seed(1)).numpy())
    cfg = tiny_config("data.name=npy", "data.path=points.npy", "data.n=null", "train.steps=2")
    with monkeypatch.context() as old:
        old.setattr(runs, "absolute_data_path", lambda c: c)
        train(cfg, "run", progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["path"] == "points.npy"
    mean, se = _row(_nll(["--model", "run", "--num-points", "5", "--rtol", "1e-3", "--atol", "1e-3"], capsys), "nats/dim")
    assert math.isfinite(mean) and se > 0
    resumed = train(tiny_config("data.name=npy", "data.path=points.npy", "data.n=null", "train.steps=4"), "run",
                    resume=True, progress=False)
    assert resumed.step == 4 and resumed.config.data.path == str(tmp_path / "points.npy")
