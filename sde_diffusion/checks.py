"""Shared input checks and broadcasting helpers.

Every check raises a ``ValueError`` or ``TypeError`` whose one-line message names the argument,
what was wrong and what is allowed.  Checks that need the value of a tensor (NaN, range) would
force a host synchronisation on CUDA; they run on CPU tensors only, so solver loops on a GPU
never stall on them.  Entry points (``solvers.sample``, ``log_likelihood``) check once up front.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import Iterator, Union

import torch

Time = Union[float, int, torch.Tensor]


def positive(name: str, value: float) -> float:
    """Require a finite ``value > 0``."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def nonnegative(name: str, value: float) -> float:
    """Require a finite ``value >= 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return float(value)


def positive_int(name: str, value: int) -> int:
    """Require an integer ``value >= 1``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return value


def one_of(name: str, value: str, allowed) -> str:
    """Require ``value`` to be one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}.")
    return value


def own_sde(score_fn, sde):
    """``sde``, or when None the score_fn's own (a ScoreModel's ``.sde``, e.g. from ``sde_diffusion.load``)."""
    if sde is None:
        sde = getattr(score_fn, "sde", None)
        if sde is None:
            raise TypeError("sde is required: this score_fn has no SDE of its own (a ScoreModel, e.g. from "
                            "sde_diffusion.load, carries one).")
    return sde


def generator(name: str, value) -> torch.Generator | None:
    """Require a ``torch.Generator`` or None."""
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(value).__name__}.")
    return value


_STATE = threading.local()


@contextmanager
def values_unchecked() -> Iterator[None]:
    """Skip the value checks (NaN, range) within, as on CUDA: for a function traced by torch.func
    (``vmap`` cannot branch on values), whose caller has checked its inputs once before."""
    before = getattr(_STATE, "off", False)
    _STATE.off = True
    try:
        yield
    finally:
        _STATE.off = before


def _inspect_values(x: torch.Tensor) -> bool:
    """Value checks run where they cost no device synchronisation, and not under ``values_unchecked``."""
    return x.device.type == "cpu" and not getattr(_STATE, "off", False)


def float_tensor(name: str, x, *, finite: bool = True) -> torch.Tensor:
    """Require a floating-point tensor with at least one (batch) dimension and, on CPU, no NaN/Inf."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32 or float64), got {x.dtype}.")
    if x.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension, shape (N, ...), got a scalar.")
    if finite and _inspect_values(x) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf; all values must be finite.")
    return x


def time(t: Time, T: float, *, batch: int | None = None, like: torch.Tensor | None = None,
         name: str = "t") -> torch.Tensor:
    """Return ``t`` as a tensor in [0, T]: shape (N,) when ``batch`` is given, else as passed.

    A Python float becomes a tensor on ``like``'s device and dtype (default dtype otherwise).
    """
    if isinstance(t, torch.Tensor):
        if not t.is_floating_point():
            t = t.to(like.dtype if like is not None else torch.get_default_dtype())
        elif like is not None and (t.dtype != like.dtype or t.device != like.device):
            t = t.to(device=like.device, dtype=like.dtype)
        if batch is not None:
            if t.ndim == 0:
                t = t.expand(batch)
            elif t.shape != (batch,):
                raise ValueError(f"{name} must be a float or a tensor of shape ({batch},) matching "
                                 f"the batch of x, got shape {tuple(t.shape)}.")
        if _inspect_values(t):
            bad = ~torch.isfinite(t) | (t < 0) | (t > T)
            if bool(bad.any()):
                raise ValueError(f"{name} must lie in [0, T] = [0, {T:g}], got values in "
                                 f"[{float(t.min()):g}, {float(t.max()):g}].")
        return t
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"{name} must be a float or a torch.Tensor, got {type(t).__name__}.")
    if not math.isfinite(t) or t < 0 or t > T:
        raise ValueError(f"{name} must lie in [0, T] = [0, {T:g}], got {t!r}.")
    kwargs = {"dtype": like.dtype, "device": like.device} if like is not None else {}
    out = torch.tensor(float(t), **kwargs)
    return out.expand(batch) if batch is not None else out


def bcast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample coefficient of shape (N,) (or a scalar) to broadcast against ``x``."""
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim)) if c.ndim else c


def same_shape(name: str, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Require ``out`` (e.g. a score) to have exactly the shape of ``x``."""
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name} must return a tensor shaped like x {tuple(x.shape)}, got {shape}.")
    return out


@contextmanager
def sync_allowed() -> Iterator[None]:
    """Suspend CUDA's sync debug mode (``torch.cuda.set_sync_debug_mode``) inside the block, so a
    caller running under mode "error" to find stray synchronisations lets the documented one pass."""
    if not torch.cuda.is_available():
        yield
        return
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(mode)


def host_read(t: torch.Tensor) -> list | float | bool:
    """``t.tolist()``: the one host synchronisation of a ``solvers.sample`` or ``log_likelihood``
    call, its finiteness check after the loop (a failing check reads once more, to name where).
    It runs under ``sync_allowed``; every other read of device values in the loops is a bug
    (``tests/test_no_host_sync.py``)."""
    with sync_allowed():
        return t.tolist()


def upload(table: torch.Tensor, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """A CPU ``table`` (e.g. float64 coefficients) in ``dtype`` on ``device``, without a host sync:
    a copy from pageable host memory to CUDA blocks until the GPU is idle, one from pinned memory
    is queued on the stream (``non_blocking``; the allocator keeps the pinned block until it ran)."""
    table = table.to(dtype=dtype)
    if torch.device(device).type != "cuda" or table.device.type != "cpu":
        return table.to(device=device)
    return table.pin_memory().to(device=device, non_blocking=True)
