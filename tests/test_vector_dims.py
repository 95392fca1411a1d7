"""Vector data of any dimension D, end to end: (N, D) files for D = 1, 3 and 10 train, sample, compare
and score with ``nll`` (exit 0, figures written); a 1-D (N,) file is refused before any compute; a
figure that cannot be drawn is a one-line note, never a failed run."""

import re

import numpy as np
import pytest
import torch
from _tiny import CONFIGS, TINY

from sde_diffusion.commands.cli import main
from sde_diffusion.training import viz

CPU = ["--device", "cpu", "--no-progress"]


def _points(path, d: int, n: int = 120):
    """n points of a D-dimensional two-cluster mixture inside [-1, 1]^D."""
    rng = np.random.RandomState(d)
    centres = np.where(rng.rand(n, 1) < 0.5, -0.5, 0.5)
    np.save(path, np.clip(centres + 0.15 * rng.randn(n, d), -1, 1).astype(np.float32))
    return path


def _train(tmp_path, d: int, *extra):
    data = _points(tmp_path / f"points{d}.npy", d)
    out = tmp_path / f"run{d}"
    code = main(["train", "--config", str(CONFIGS / "toy_vp.yaml"), *TINY, "data.n=null", "data.name=npy",
                 f"data.path={data}", "train.steps=4", *extra, "--out", str(out), *CPU])
    return code, data, out


@pytest.mark.parametrize("d", [1, 3, 10])
def test_vectors_of_any_dimension_train_sample_compare_and_score(d, tmp_path, capsys):
    code, data, run = _train(tmp_path, d)
    assert code == 0, capsys.readouterr().err
    assert len(list((run / "samples").glob("step_*.png"))) == 1  # the final figure, sample_every=0
    assert main(["sample", "--model", str(run), "--num-samples", "16", "--steps", "4",
                 "--out", str(tmp_path / "s"), *CPU]) == 0, capsys.readouterr().err
    assert (tmp_path / "s" / "samples.png").is_file()
    assert np.load(tmp_path / "s" / "samples.npz")["x"].shape == (16, d)
    assert main(["compare", "--model", str(run), "--methods", "euler_maruyama", "--steps", "3",
                 "--num-samples", "12", "--repeats", "2", "--out", str(tmp_path / "c"), *CPU]) == 0, \
        capsys.readouterr().err
    assert len(list((tmp_path / "c").glob("samples_*.png"))) == 1 and (tmp_path / "c" / "report.md").is_file()
    capsys.readouterr()
    assert main(["nll", "--model", str(run), "--num-points", "4", "--rtol", "1e-3", "--atol", "1e-3", *CPU]) == 0, \
        capsys.readouterr().err
    assert "nats/dim" in capsys.readouterr().out


def test_sample_of_the_64_dimensional_analytic_mixture_draws_its_figure(tmp_path, capsys):
    assert main(["sample", "--model", "analytic:gmm64", "--num-samples", "16", "--steps", "4",
                 "--out", str(tmp_path), *CPU]) == 0, capsys.readouterr().err
    assert (tmp_path / "samples.png").is_file() and np.load(tmp_path / "samples.npz")["x"].shape == (16, 64)


def test_a_one_dimensional_array_is_refused_before_any_compute(tmp_path, capsys, monkeypatch):
    import sde_diffusion.training.train as training

    monkeypatch.setattr(training, "dsm_loss", lambda *a, **k: pytest.fail("trained on a refused file"))
    np.save(tmp_path / "flat.npy", np.zeros(300, np.float32))
    out = tmp_path / "run"
    assert main(["train", "--config", str(CONFIGS / "toy_vp.yaml"), *TINY, "data.n=null", "data.name=npy",
                 f"data.path={tmp_path / 'flat.npy'}", "--out", str(out), *CPU]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"flat\.npy: a 1-D array of shape \(300,\) .*shape \(N, 1\)", err), err
    assert not (out / "metrics.csv").exists()


@pytest.mark.parametrize("shape", [(50, 1), (50, 2), (50, 5), (9, 1, 4, 4)])
def test_every_vector_and_image_shape_draws(shape, tmp_path):
    x = torch.randn(shape).clamp(-1, 1)
    assert viz.save_samples(x, tmp_path / "f.png", reference=x if x.ndim == 2 else None, title="t").stat().st_size > 0


def test_a_figure_that_raises_does_not_fail_sample(tmp_path, capsys, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no display\nat all")

    monkeypatch.setattr(viz, "save_samples", broken)
    assert main(["sample", "--model", "analytic:ring2d", "--num-samples", "8", "--steps", "3",
                 "--out", str(tmp_path), *CPU]) == 0
    captured = capsys.readouterr()
    assert (tmp_path / "samples.npz").is_file() and not (tmp_path / "samples.png").exists()
    assert captured.err.count("\n") == 1 and "note: could not draw the sample figure (RuntimeError: no display at all)" \
        in captured.err, captured.err


def test_a_figure_that_raises_does_not_fail_training_or_compare(tmp_path, capsys, monkeypatch):
    import sde_diffusion.evaluation.report as report

    monkeypatch.setattr(viz, "save_samples", lambda *a, **k: 1 / 0)
    monkeypatch.setattr(report, "scatter", lambda *a, **k: 1 / 0)
    code, _, run = _train(tmp_path, 3)
    assert code == 0 and "ZeroDivisionError" in capsys.readouterr().err
    assert (run / "metrics.csv").is_file() and not list((run / "samples").glob("*.png"))
    assert main(["compare", "--model", str(run), "--methods", "euler_maruyama", "--steps", "3",
                 "--num-samples", "12", "--repeats", "2", "--out", str(tmp_path / "c"), *CPU]) == 0
    assert "note: could not draw" in capsys.readouterr().err and (tmp_path / "c" / "report.md").is_file()
