"""Data-parallel training and sharded evaluation with ``torch.distributed`` (torchrun).

Under ``torchrun`` (WORLD_SIZE, RANK, LOCAL_RANK in the environment) ``setup`` joins the process
group: NCCL on CUDA (one GPU per process, cuda:LOCAL_RANK), gloo on the CPU. Training keeps the
single-process run exactly: every rank draws the same global batch and the same noise from the same
seeds and takes its own contiguous slice (a DistributedSampler over each global batch); DDP averages
the gradients, which is the gradient of the mean loss over the concatenated batch. So N processes
with global batch B equal one process with batch B up to float reduction order. Only rank 0 writes
logs, checkpoints and samples. Evaluation splits its items into disjoint contiguous shards and
gathers them back in order on every rank (``gather``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes (size 1: no process group)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """[start, stop) of this rank's contiguous shard of n items (sizes differ by at most one)."""
        per, extra = divmod(n, self.size)
        start = self.rank * per + min(self.rank, extra)
        return start, start + per + (self.rank < extra)

    def chunks(self, n: int, batch_size: int) -> list[tuple[int, int, int]]:
        """(index i, start, stop) of this rank's batches among the ceil(n / batch_size) batches
        [i B, min(n, (i + 1) B)) of an evaluation: whole batches, so results do not depend on the
        number of ranks (adaptive solvers and noise are per batch; see ``chunk_seed``)."""
        first, last = self.bounds(-(-n // batch_size))
        return [(i, i * batch_size, min(n, (i + 1) * batch_size)) for i in range(first, last)]

    def shard(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """This rank's rows of x (None stays None)."""
        if x is None or self.size == 1:
            return x
        start, stop = self.bounds(x.shape[0])
        return x[start:stop]

    def sum(self, v: torch.Tensor) -> torch.Tensor:
        """The sum of v over ranks (v itself for one process)."""
        if self.size > 1:
            v = v.clone()
            dist.all_reduce(v)
        return v

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on any rank (one all-reduce; ``flag`` itself for one process)."""
        if self.size == 1:
            return flag
        return bool(self.sum(torch.tensor(float(flag), device=device)) > 0)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The shards of all ranks concatenated in rank order (rows of dim 0; shards may differ in
        length by one), on every rank."""
        if self.size == 1:
            return x
        sizes = [torch.zeros((), dtype=torch.long, device=x.device) for _ in range(self.size)]
        dist.all_gather(sizes, torch.tensor(x.shape[0], device=x.device))
        longest = int(max(sizes))
        pad = torch.zeros(longest - x.shape[0], *x.shape[1:], dtype=x.dtype, device=x.device)
        parts = [torch.empty(longest, *x.shape[1:], dtype=x.dtype, device=x.device) for _ in range(self.size)]
        dist.all_gather(parts, torch.cat([x, pad]))
        return torch.cat([p[:int(k)] for p, k in zip(parts, sizes)])


def chunk_seed(seed: int, i: int) -> int:
    """The seed of batch i of an evaluation (batch 0: ``seed`` itself)."""
    return seed + 1_000_003 * i


def is_main() -> bool:
    """False only in a process group's ranks other than 0 (for printing once)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def env_size() -> int:
    """WORLD_SIZE from the environment (torchrun sets it), 1 when absent."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device | str) -> tuple[World, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo otherwise) and
    return (world, this process's device: cuda:LOCAL_RANK on CUDA); (World(), device) otherwise."""
    device = torch.device(device)
    if env_size() == 1:
        return World(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size()), device


def ddp(module: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel when there are several processes."""
    if world.size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
