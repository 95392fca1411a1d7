"""Data-parallel training under torch.distributed: 2 CPU processes (gloo on 127.0.0.1) against one.

Every rank draws the same global batch and noise and takes half; DDP averages the two half-batch
gradients, which is the gradient of the mean loss over the whole batch (with t uniform or importance-
sampled from q(t): either is drawn for the global batch). So after k steps:
  - the two replicas hold bitwise identical weights (same averaged gradient, same AdamW update);
  - they equal the single-process run with the same global batch up to float32 rounding: the only
    difference is the order of the reductions (two half means averaged vs one mean), a relative
    ~1e-7 per gradient; through K = 20 AdamW steps of lr 3e-3 each weight moves by at most
    lr * K = 0.06, and a relative change of ~1e-7..1e-5 in its update direction (Adam's
    normalisation can amplify rounding where a gradient is tiny) moves it by < 0.06 * 1e-4 ~ 1e-5,
    the asserted bound. The logged mean losses agree to 5 significant digits (printed with 6).
"""

import os
import re
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from sde_diffusion import load
from sde_diffusion.training.config import load_config

OVERRIDES = ["train.steps=20", "train.batch_size=64", "train.ckpt_every=20", "train.log_every=10",
             "train.sample_every=0", "train.warmup=1", "data.n=512", "sample.n=8", "sample.steps=5",
             "model.params.hidden=32", "model.params.blocks=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_rank(rank: int, world: int, port: int, out: str, overrides: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from sde_diffusion.training.train import train

    try:
        result = train(load_config("configs/toy_vp.yaml", overrides), out, device="cpu", progress=False)
        torch.save(result.model.state_dict(), os.path.join(out, f"ema_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(out, overrides, world=2):
    mp.start_processes(_train_rank, args=(world, _free_port(), str(out), overrides), nprocs=world,
                       start_method="spawn", join=True)


@pytest.fixture(scope="module", params=[[], ["loss.weighting=likelihood", "loss.importance_sampling=true"]],
                ids=["uniform-t", "importance-sampled-t"])
def runs(request, tmp_path_factory):
    from sde_diffusion.training.train import train

    overrides = OVERRIDES + request.param
    multi, single = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("single")
    _spawn(multi, overrides)
    train(load_config("configs/toy_vp.yaml", overrides), single, device="cpu", progress=False)
    return multi, single


@pytest.mark.slow  # spawns 2-process gloo runs (torchrun-like); only in the full run
def test_replicas_hold_identical_weights(runs):
    multi, _ = runs
    a, b = torch.load(multi / "ema_rank0.pt"), torch.load(multi / "ema_rank1.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow  # spawns 2-process gloo runs (torchrun-like); only in the full run
def test_two_processes_equal_one_process_on_the_whole_batch(runs):
    multi, single = runs
    m2 = load(multi, ema=False)
    m1 = load(single, ema=False)
    for (k, p2), p1 in zip(m2.state_dict().items(), m1.state_dict().values()):
        torch.testing.assert_close(p2, p1, rtol=0, atol=1e-5, msg=k)
    # the metrics (rank 0 only) hold the mean loss over both shards: equal to the single run's
    rows2 = (multi / "metrics.csv").read_text().splitlines()
    rows1 = (single / "metrics.csv").read_text().splitlines()
    assert len(rows2) == len(rows1) == 3
    for r2, r1 in zip(rows2[1:], rows1[1:]):
        assert abs(float(r2.split(",")[1]) - float(r1.split(",")[1])) < 1e-5 * abs(float(r1.split(",")[1]))


def test_shards_are_disjoint_and_cover_in_order():
    from sde_diffusion.training.distributed import World

    for n in (0, 1, 7, 64):
        for size in (1, 2, 3):
            bounds = [World(r, size).bounds(n) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_bad_distributed_config(monkeypatch, tmp_path):
    from sde_diffusion.training import train as train_module

    from sde_diffusion.training.distributed import World

    monkeypatch.setattr(train_module, "setup", lambda device: (World(0, 3), torch.device("cpu")))
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        train_module.train(load_config("configs/toy_vp.yaml", OVERRIDES), tmp_path / "r", progress=False)


# -- sharded evaluation: whole batches per rank, gathered on rank 0 ----------------------------------
def _cli_rank(rank: int, world: int, port: int, argv: list[str], log: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import contextlib

    import torch.distributed as dist
    from sde_diffusion.commands.cli import main

    try:
        with open(f"{log}.{rank}", "w") as f, contextlib.redirect_stdout(f):
            assert main(argv) == 0
    finally:
        dist.destroy_process_group()


def _cli(argv, log, world=2):
    mp.start_processes(_cli_rank, args=(world, _free_port(), argv, str(log)), nprocs=world,
                       start_method="spawn", join=True)
    return [open(f"{log}.{r}").read() for r in range(world)]


@pytest.mark.slow  # spawns 2-process gloo runs (torchrun-like); only in the full run
def test_sharded_nll_equals_one_process(runs, tmp_path, capsys):
    """6 samples in batches of 2 (3 batches: ranks take 2 and 1), Hutchinson with per-batch seeds:
    every per-sample figure is computed by the same operations on the same numbers, so the printed
    mean and standard error are identical."""
    from sde_diffusion.commands.cli import main

    multi, _ = runs
    argv = ["nll", "--model", str(multi), "--num-points", "6", "--batch-size", "2", "--divergence", "hutchinson",
            "--rtol", "1e-3", "--atol", "1e-3", "--device", "cpu", "--seed", "3"]
    rank0, rank1 = _cli(argv, tmp_path / "nll")
    assert main(argv) == 0
    single = capsys.readouterr().out
    drop_seconds = lambda out: re.sub(r"^\| seconds .*\n", "", out, flags=re.M)  # noqa: E731 - wall time varies
    assert "nats/dim" in single and drop_seconds(rank0) == drop_seconds(single) and rank1 == ""


@pytest.mark.slow  # spawns 2-process gloo runs (torchrun-like); only in the full run
def test_sharded_sample_equals_one_process(runs, tmp_path):
    from sde_diffusion.commands.cli import main

    multi, _ = runs
    argv = ["sample", "--model", str(multi), "--num-samples", "10", "--batch-size", "3", "--steps", "20",
            "--device", "cpu", "--seed", "5"]
    _cli([*argv, "--out", str(tmp_path / "two")], tmp_path / "sample")
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    two, one = np.load(tmp_path / "two" / "samples.npz"), np.load(tmp_path / "one" / "samples.npz")
    assert two["x"].shape == (10, 2) and int(two["nfe"]) == int(one["nfe"])
    assert np.array_equal(two["x"], one["x"])
