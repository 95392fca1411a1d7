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

from sde_diffusion import load
from sde_diffusion.commands.cli import COMMANDS, build_parser, main
from sde_diffusion.training.data import load_dataset
from sde_diffusion.likelihood import log_likelihood


SHARED = ("--model", "--out", "--no-progress", "--device", "--seed")


def _flags(command: str) -> dict:
    """option string -> argparse action of a subcommand, read from the parser the CLI builds."""
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return {flag: action for action in sub._actions for flag in action.option_strings}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_subcommand_shares_the_vocabulary(command, capsys):
    """Walks the command registry: each subcommand has --model, --out, --no-progress, --device and
    --seed with one meaning (--model a SOURCE, --out a folder, --no-progress a switch, --seed an int), no
    --n (ambiguous, and a prefix of torchrun's own flags), no --checkpoint or --diffusers, and --help."""
    flags = _flags(command)
    assert set(SHARED) <= set(flags), sorted(set(SHARED) - set(flags))
    assert flags["--model"].metavar == "SOURCE" and flags["--out"].metavar == "DIR"
    assert flags["--no-progress"].nargs == 0 and flags["--seed"].type is int
    assert not {"--n", "--checkpoint", "--diffusers"} & set(flags)
    for flag in ("--method", "--methods"):
        if flag in flags:
            assert "NAME" in (flags[flag].metavar or "") or flag == "--methods"
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "--model SOURCE" in capsys.readouterr().out


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
    (["train", "--model", "analytic:ring2d"], r"--model 'analytic:ring2d' was not trained by sde-diffusion"),
    (["train", "--resume"], r"--resume needs --out"),
    (["train", "--config", "toy_vp.yaml", "--device", "tpu:x"], r"--device 'tpu:x'"),
    (["train", "--config", "toy_vp.yaml", "data.name=imagenet", "--device", "cpu"], r"unknown dataset 'imagenet'"),
    (["sample", "--model", "nowhere"], r"model source 'nowhere' does not exist"),
    (["sample", "--model", "shipped:nope"], r"unknown shipped model 'nope'.*digits_vp"),
    (["sample", "--model", "RUN", "--method", "ode:solver", "--device", "cpu"], r"must read option=value"),
    (["sample", "--model", "RUN", "--method", "ode:solve=rk4", "--device", "cpu"], r"takes no option 'solve'"),
    (["nll", "--model", "RUN", "--method", "rk45", "--device", "cpu"], r"--method \(ODE solver\).*dopri5"),
    (["nll", "--model", "RUN", "--method", "dopri5:rtol=1e-4", "--rtol", "1e-3"], r"rtol is set both"),
    (["nll", "--model", "RUN", "--sde", "ve", "--device", "cpu"], r"trained with the vp SDE.*not the ve SDE"),
    (["sample", "--model", "RUN", "--steps", "0"], r"--steps must be an integer >= 1"),
    (["sample", "--model", "RUN", "--method", "magic", "--device", "cpu"], r"magic"),
    (["nll", "--model", "nowhere"], r"model source 'nowhere' does not exist"),
    (["nll", "--model", "RUN", "--batch-size", "0"], r"--batch-size must be an integer >= 1"),
    (["nll", "--model", "RUN", "--num-points", "0", "--device", "cpu"], r"--num-points must be an integer >= 1"),
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
    assert main(["sample", "--model", ".", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_train_applies_seed_and_overrides(toy_run):
    cfg = load(toy_run).info.config
    assert cfg.train.seed == 3 and cfg.train.steps == 4 and cfg.model.params["hidden"] == 16


def test_sample_writes_scatter_and_npz_reproducibly(toy_run, tmp_path, capsys):
    args = ["sample", "--model", str(toy_run), "--method", "euler_maruyama", "--steps", "5",
            "--num-samples", "32", "--device", "cpu", "--no-progress"]
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert main(args + ["--seed", seed, "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "a" / "samples.png").stat().st_size > 0
    a, b, c = (np.load(tmp_path / n / "samples.npz") for n in "abc")
    assert a["x"].shape == (32, 2) and int(a["nfe"]) == 6  # 5 steps + the final denoising step
    assert np.array_equal(a["x"], b["x"]) and not np.array_equal(a["x"], c["x"])
    assert "32 samples by euler_maruyama" in capsys.readouterr().out


def test_nll_prints_nats_per_dim_equal_to_the_library_value(toy_run, capsys):
    """Continuous data: the CLI's mean is -log p(x) / D from ``log_likelihood`` on the same points."""
    assert main(["nll", "--model", str(toy_run), "--num-points", "6", "--device", "cpu", "--rtol", "1e-4",
                 "--atol", "1e-4"]) == 0
    out = capsys.readouterr().out
    assert "(6 samples of shape (2,), continuous)" in out
    mean, se = map(float, re.search(r"^\| nats/dim\s*\| (\S+) \| (\S+) \|$", out, re.M).groups())
    model = load(toy_run)
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
    assert main(["sample", "--model", str(out), "--num-samples", "4", "--steps", "3", "--device", "cpu",
                 "--out", str(tmp_path / "s")]) == 0
    npz = np.load(tmp_path / "s" / "samples.npz")
    assert npz["x"].shape == (4, 1, 8, 8) and npz["levels"].min() >= 0 and npz["levels"].max() <= 16
    assert main(["nll", "--model", str(out), "--num-points", "2", "--divergence", "hutchinson",
                 "--rtol", "1e-3", "--atol", "1e-3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "(2 samples of shape (1, 8, 8), 17 levels)" in out
    assert re.search(r"^\| bits/dim\s*\| \d+\.\d+ \| \d+\.\d+ \|$", out, re.M), out


def test_sample_method_options_match_the_python_api(toy_run, tmp_path):
    """`sample --method ode:solver=rk4` runs RK4 (4 score calls a step, + the denoising step) and gives
    the samples of ``solvers.sample(model, n, method="ode:solver=rk4")`` under the same seed, where the
    model's SDE and data shape come from the handle; ``nll --method bosh3:rtol=...`` the library's value."""
    import solvers

    assert main(["sample", "--model", str(toy_run), "--method", "ode:solver=rk4", "--steps", "3", "--num-samples",
                 "5", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "rk4")]) == 0
    npz = np.load(tmp_path / "rk4" / "samples.npz")
    assert int(npz["nfe"]) == 4 * 3 + 1
    model = load(toy_run)
    from sde_diffusion.training.distributed import chunk_seed
    ref = solvers.sample(model, 5, method="ode:solver=rk4", steps=3, eps=model.info.config.sample.eps,
                         generator=torch.Generator().manual_seed(chunk_seed(0, 0)))
    assert np.array_equal(npz["x"], ref.x.numpy()) and ref.nfe == 13


def test_nll_method_chooses_the_solver(toy_run, capsys):
    x = load_dataset("ring", split="test", n=4, seed=0).x
    model = load(toy_run)
    for spec, solver in (("bosh3:rtol=1e-4:atol=1e-4", "bosh3"), ("adaptive_heun", "adaptive_heun")):
        args = ["nll", "--model", str(toy_run), "--num-points", "4", "--method", spec, "--device", "cpu"]
        assert main(args + ([] if ":" in spec else ["--rtol", "1e-4", "--atol", "1e-4"])) == 0
        out = capsys.readouterr().out
        assert f"{solver} rtol=0.0001 atol=0.0001" in out
        mean = float(re.search(r"^\| nats/dim\s*\| (\S+) \|", out, re.M).group(1))
        lib = -log_likelihood(model, x, method=solver, rtol=1e-4, atol=1e-4).log_prob / 2
        assert mean == pytest.approx(float(lib.mean()), abs=1e-4)


@pytest.mark.parametrize("argv, overrides", [
    (["train", "train.steps=5", "--config", "X", "--out", "Y", "model.params.hidden=8"],
     ["train.steps=5", "model.params.hidden=8"]),
    (["train", "--config", "X", "a.b=1", "--resume", "c.d=2", "--out", "Y", "e.f=[1, 2]"], ["a.b=1", "c.d=2", "e.f=[1, 2]"]),
    (["train-classifier", "--config", "X", "--out", "Y", "classifier.steps=3"], ["classifier.steps=3"]),
    (["train", "--config", "X", "--out", "Y"], []),
])
def test_overrides_parse_before_between_and_after_options_in_order(argv, overrides):
    from sde_diffusion.commands.cli import parse

    args = parse(build_parser(), argv)
    assert args.overrides == overrides and (args.config, args.out) == ("X", "Y")


@pytest.mark.parametrize("argv, message", [
    (["sample", "--model", "m", "sample.steps=3"],
     r"sample takes no key\.path=value overrides \(got sample\.steps=3\); config overrides go to train and "
     r"train-classifier"),
    (["train", "--config", "X", "--bogus"], r"unrecognized arguments: --bogus$"),
])
def test_misplaced_arguments_are_refused_saying_where_they_go(argv, message, capsys):
    from sde_diffusion.commands.cli import parse

    with pytest.raises(SystemExit) as exit_:
        parse(build_parser(), argv)
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err.strip().splitlines()[-1])
