"""Time spent inside the score during sampling, so that ``compare`` reports cost per NFE apart from
the solver's own work and the machine's load (``TimedScore``), and one device synchronize per cell."""

from __future__ import annotations

import time

import torch

from ..sde import ScoreFn


class TimedScore:
    """score_fn(x, t) that keeps the time spent inside it: perf_counter on the CPU; on CUDA a pair of
    events per call, summed by ``seconds()`` after one synchronize per cell (no host sync per step)."""

    def __init__(self, score_fn: ScoreFn, device: torch.device):
        self.score_fn, self.cuda = score_fn, device.type == "cuda"
        self.cpu_s, self.events = 0.0, []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.score_fn(x, t)
            end.record()
            self.events.append((start, end))
            return out
        t0 = time.perf_counter()
        out = self.score_fn(x, t)
        self.cpu_s += time.perf_counter() - t0
        return out

    def seconds(self) -> float:
        """Seconds inside the score so far (call after the device has synchronized)."""
        return self.cpu_s + sum(a.elapsed_time(b) for a, b in self.events) / 1000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
