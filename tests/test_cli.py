"""The ``sde-diffusion`` command: --help everywhere, exit code 2 with one line on bad input, and
train -> sample -> nll end to end on tiny models."""

import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from _tiny import CONFIGS, TINY

from sde_diffusion.training.checkpoint import load_checkpoint
from sde_diffusion.commands.cli import COMMANDS, main
from sde_diffusion.training.data import load_dataset
from sde_diffusion.likelihood import log_likelihood


@pytest.mark.parametrize("command", ["train", "train-classifier", "sample", "nll"])
def test_every_subcommand_has_help_device_and_seed(command, capsys):
    assert command in COMMANDS
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--device" in text and "--seed" in text


@pytest.mark.slow  # two fresh interpreters (~10 s); the same messages are checked in-process below; only the real entry point is slow-only
def test_module_entry_point_and_bad_input_in_a_real_process():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([sys.executable, "-m", "sde_diffusion", "train", "--help"], env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "--resume" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "sde_diffusion", "train", "--config",
                          str(CONFIGS / "toy_vp.yaml"), "train.lr=abc"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr == "sde-diffusion train: error: train.lr: expected float, got 'abc'.\n"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "toy"
    assert main(["train", "--config", str(CONFIGS / "toy_vp.yaml"), *TINY, "train.steps=4", "--out", str(out),
                 "--device", "cpu", "--no-progress", "--seed", "3"]) == 0
    return out


BAD = [
    (["train", "--config", "toy_vp.yaml", "train.lr=abc"], r"train\.lr: expected float, got 'abc'"),
    (["train", "--config", "toy_vp.yaml", "train.lrr=1"], r"train\.lrr: unknown key"),
    (["train", "--config", "toy_vp.yaml", "sde.name=foo"], r"sde\.name: unknown value 'foo'"),
    (["train", "--config", "toy_vp.yaml", "train.lr"], r"must look like key\.path=value"),
    (["train", "--config", "missing.yaml"], r"config file .* does not exist"),
    (["train"], r"--config is required"),
    (["train", "--resume"], r"--resume needs --out"),
    (["train", "--config", "toy_vp.yaml", "--device", "tpu:x"], r"--device 'tpu:x'"),
    (["train", "--config", "toy_vp.yaml", "data.name=imagenet", "--device", "cpu"], r"unknown dataset 'imagenet'"),
    (["sample", "--checkpoint", "nowhere"], r"checkpoint 'nowhere' does not exist"),
    (["sample", "--checkpoint", "RUN", "--steps", "0"], r"--steps must be an integer >= 1"),
    (["sample", "--checkpoint", "RUN", "--method", "magic", "--device", "cpu"], r"magic"),
    (["nll", "--checkpoint", "nowhere"], r"checkpoint 'nowhere' does not exist"),
    (["nll", "--checkpoint", "RUN", "--batch-size", "0"], r"--batch-size must be an integer >= 1"),
    (["nll", "--checkpoint", "RUN", "--n", "0", "--device", "cpu"], r"n must be an integer >= 1"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_exits_2_with_one_line(argv, message, toy_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [str(CONFIGS / a) if a == "toy_vp.yaml" else str(toy_run) if a == "RUN" else a for a in argv]
    if argv[0] == "train" and "--out" not in argv and "--config" in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err


def test_cuda_device_without_cuda_exits_2(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["sample", "--checkpoint", ".", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_train_applies_seed_and_overrides(toy_run):
    _, cfg = load_checkpoint(toy_run)
    assert cfg.train.seed == 3 and cfg.train.steps == 4 and cfg.model.params["hidden"] == 16


def test_sample_writes_scatter_and_npz_reproducibly(toy_run, tmp_path, capsys):
    args = ["sample", "--checkpoint", str(toy_run), "--method", "euler_maruyama", "--steps", "5",
            "--n", "32", "--device", "cpu"]
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert main(args + ["--seed", seed, "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "a.png").stat().st_size > 0
    a, b, c = (np.load(tmp_path / f"{n}.npz") for n in "abc")
    assert a["x"].shape == (32, 2) and int(a["nfe"]) == 6  # 5 steps + the final denoising step
    assert np.array_equal(a["x"], b["x"]) and not np.array_equal(a["x"], c["x"])
    assert "32 samples by euler_maruyama" in capsys.readouterr().out


def test_nll_prints_nats_per_dim_equal_to_the_library_value(toy_run, capsys):
    """Continuous data: the CLI's mean is -log p(x) / D from ``log_likelihood`` on the same points."""
    assert main(["nll", "--checkpoint", str(toy_run), "--n", "6", "--device", "cpu", "--rtol", "1e-4",
                 "--atol", "1e-4"]) == 0
    out = capsys.readouterr().out
    assert "(6 samples of shape (2,), continuous)" in out
    mean, se = map(float, re.search(r"^\| nats/dim\s*\| (\S+) \| (\S+) \|$", out, re.M).groups())
    model, _ = load_checkpoint(toy_run)
    x = load_dataset("ring", split="test", n=6, seed=0).x
    nll = -log_likelihood(model, model.sde, x, rtol=1e-4, atol=1e-4).log_prob / 2
    assert mean == pytest.approx(float(nll.mean()), abs=1e-4)
    assert se == pytest.approx(float(nll.std() / math.sqrt(6)), abs=1e-4)


def test_digits_train_sample_nll(tmp_path, capsys):
    out = tmp_path / "digits"
    tiny_unet = "model.params={base_channels: 8, channel_mults: [1], blocks_per_level: 1, attention_resolutions: []}"
    assert main(["train", "--config", str(CONFIGS / "digits_vp.yaml"), tiny_unet, "train.steps=2",
                 "train.batch_size=8", "sample.n=4", "sample.steps=2", "--out", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    assert (out / "samples" / "step_00000002.png").exists()
    assert main(["sample", "--checkpoint", str(out), "--n", "4", "--steps", "3", "--device", "cpu",
                 "--out", str(tmp_path / "s")]) == 0
    npz = np.load(tmp_path / "s.npz")
    assert npz["x"].shape == (4, 1, 8, 8) and npz["levels"].min() >= 0 and npz["levels"].max() <= 16
    assert main(["nll", "--checkpoint", str(out), "--n", "2", "--divergence", "hutchinson",
                 "--rtol", "1e-3", "--atol", "1e-3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "(2 samples of shape (1, 8, 8), 17 levels)" in out
    assert re.search(r"^\| bits/dim\s*\| \d+\.\d+ \| \d+\.\d+ \|$", out, re.M), out
