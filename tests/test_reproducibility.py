"""Reproducibility of the randomised likelihood paths: same seed -> bitwise the same NLL, another seed
-> another value. (Samplers: test_solvers_contract::test_same_seed_same_samples for every method;
training curves and weights: test_train::test_same_seed_same_curve_other_seed_other_curve and the
exact-resume tests; CLI samples: test_cli::test_sample_writes_scatter_and_npz_reproducibly.)"""

import re

import pytest
import torch

from sde_diffusion import VPSDE, ring2d
from sde_diffusion.commands.cli import main
from sde_diffusion.dequantize import continuous_to_levels
from sde_diffusion.likelihood import bits_per_dim, log_likelihood

SDE, GM = VPSDE(), ring2d()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_nll_same_seed_same_value(noise):
    x = GM.sample(4, _gen(0))
    run = lambda seed: log_likelihood(GM.score(SDE), SDE, x, divergence="hutchinson", probes=3,  # noqa: E731
                                      noise=noise, rtol=1e-4, atol=1e-4, generator=_gen(seed))
    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.log_prob, b.log_prob) and torch.equal(a.stderr, b.stderr) and a.nfe == b.nfe
    # another probe draw is another estimate (in 2-D a Rademacher probe is one of 2 classes up to
    # sign, +-(1, 1) or +-(1, -1), so some samples may repeat; not all 4 with 3 probes each here)
    assert not torch.equal(a.log_prob, c.log_prob)


def test_bits_per_dim_same_seed_same_value():
    """The dequantization noise u and the probes both come from ``generator``."""
    k = continuous_to_levels(GM.sample(4, _gen(0)), 256).to(torch.uint8)
    run = lambda seed: bits_per_dim(GM.score(SDE), SDE, k, n_dequant=2, divergence="hutchinson",  # noqa: E731
                                    rtol=1e-4, atol=1e-4, generator=_gen(seed))
    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cli_nll_same_seed_same_output(trained, capsys):
    """Seed -> probes (and dequantization on discrete data): the printed NLL repeats exactly (on the
    session's shared tiny VP run)."""
    run = trained("toy_vp", "train.steps=8", tiny=True).out
    outputs = []
    for seed in ("0", "0", "1"):
        assert main(["nll", "--model", str(run), "--num-points", "4", "--divergence", "hutchinson", "--rtol", "1e-4",
                     "--atol", "1e-4", "--device", "cpu", "--seed", seed]) == 0
        outputs.append(re.sub(r"^\| seconds .*\n", "", capsys.readouterr().out, flags=re.M))  # wall time varies
    assert outputs[0] == outputs[1] and outputs[0] != outputs[2]


@pytest.mark.slow  # two training subprocesses and a SIGINT (~35 s); only in the full run
def test_sigint_then_resume_equals_uninterrupted(tmp_path):
    """The SIGINT checkpoint lands at an arbitrary step (between checkpoints and log rows); resuming
    from it must end bitwise where an uninterrupted run of the same seed does (weights, EMA,
    optimizer moments, metrics.csv). Complements test_train's SIGKILL resume and SIGINT exit tests."""
    import signal
    import subprocess

    from test_train import ENV, _assert_same_run, _train_cmd, _wait_for

    from sde_diffusion.training.checkpoint import latest, read_state

    steps = ["train.steps=600", "train.ckpt_every=50", "train.log_every=10"]
    straight = subprocess.Popen(_train_cmd(tmp_path / "straight", *steps), env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(_train_cmd(out, *steps), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(lambda: (out / "metrics.csv").exists() and len((out / "metrics.csv").read_text().split()) > 3, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr  # 128 + SIGINT, after printing how to resume
    assert f"to resume: sde-diffusion train --resume --out {out}\n" in stdout
    assert 30 <= read_state(latest(out))["step"] < 600
    resumed = subprocess.run(_train_cmd(out, *steps, "--resume"), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert straight.wait() == 0, straight.communicate()
    _assert_same_run(tmp_path / "straight", out)
    assert b"\r" not in (out / "metrics.csv").read_bytes()  # one line ending across the resume
