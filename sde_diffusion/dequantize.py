"""Discrete levels <-> continuous values: the map that dequantization and bits/dim rest on.

Level k of ``levels`` owns the bin [lo + k w, lo + (k + 1) w) of ``data_range`` = (lo, hi), with bin
width w = (hi - lo) / levels, and is represented by x = lo + (k + u) w: u = 1/2 (the bin centre) for
training and sampling, u ~ U[0, 1) for uniform dequantization in the likelihood.
"""

from __future__ import annotations

import torch

from . import checks

DATA_RANGE = (-1.0, 1.0)


def _check_range(levels: int, data_range: tuple[float, float]) -> tuple[float, float]:
    checks.positive_int("levels", levels)
    lo, hi = (float(v) for v in data_range)
    if not hi > lo:
        raise ValueError(f"data_range must be (lo, hi) with hi > lo, got {data_range!r}.")
    return lo, hi


def bin_width(levels: int, data_range: tuple[float, float] = (-1.0, 1.0)) -> float:
    """w = (hi - lo) / levels, the width of one level's bin in continuous units."""
    lo, hi = _check_range(levels, data_range)
    return (hi - lo) / levels


def levels_to_continuous(k: torch.Tensor, levels: int = 256, data_range: tuple[float, float] = (-1.0, 1.0),
                         u: torch.Tensor | float = 0.5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x = lo + (k + u) w for integer levels k in [0, levels - 1]; u = 1/2 gives bin centres."""
    lo, _ = _check_range(levels, data_range)
    if not isinstance(k, torch.Tensor):
        raise TypeError(f"k must be a torch.Tensor of integer levels, got {type(k).__name__}.")
    if k.is_floating_point() and k.device.type == "cpu" and not bool((k == k.round()).all()):
        raise ValueError("k must hold integer levels 0..levels-1; got non-integer values.")
    if k.device.type == "cpu" and k.numel() and bool(((k < 0) | (k > levels - 1)).any()):
        raise ValueError(f"k must lie in 0..{levels - 1} (levels={levels}), got values in "
                         f"[{float(k.min()):g}, {float(k.max()):g}].")
    return lo + (k.to(dtype) + u) * bin_width(levels, data_range)


def continuous_to_levels(x: torch.Tensor, levels: int = 256,
                         data_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """The level k whose bin holds x (clamped to 0..levels-1): k = floor((x - lo) / w)."""
    lo, _ = _check_range(levels, data_range)
    k = torch.floor((x - lo) / bin_width(levels, data_range))
    return k.clamp(0, levels - 1).long()
