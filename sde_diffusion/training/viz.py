"""PNG figures of samples (matplotlib, Agg backend): a scatter for 2-D data, a histogram for 1-D data,
pairwise scatters of the leading ``MAX_DIMS`` coordinates for D >= 3, a grid for images. ``try_plot``
draws a figure so that a failure is a one-line note, never a failed run."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path
from typing import Callable

import torch

from ..dequantize import DATA_RANGE, continuous_to_levels

MAX_DIMS = 4  # vectors with D >= 3: scatters of every pair among the leading MAX_DIMS coordinates


def try_plot(draw: Callable[..., Path], *args, what: str = "figure", **kwargs) -> Path | None:
    """``draw(*args, **kwargs)``, or None after printing one line (to stderr) saying why ``what``
    could not be drawn: a plot never fails the run that asked for it."""
    try:
        return draw(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - any failure to draw is reported, not raised
        reason = " ".join(str(err).split()) or type(err).__name__
        print(f"note: could not draw the {what} ({type(err).__name__}: {reason}); the run continues.",
              file=sys.stderr, flush=True)
        return None


def pairs(dim: int) -> list[tuple[int, int]]:
    """The coordinate pairs shown for D >= 3: (0, 1), (0, 2), (1, 2), ... among the leading MAX_DIMS."""
    return list(itertools.combinations(range(min(dim, MAX_DIMS)), 2))


def vector_axes(plt, dim: int, size: float = 3.2):
    """(figure, axes) for D-dimensional vectors: one axis for D <= 2, else one per pair in a grid."""
    if dim <= 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        return fig, [ax]
    n = len(pairs(dim))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.4), squeeze=False)
    return fig, list(axes.flat)


def save_samples(x: torch.Tensor, path: str | Path, *, levels: int | None = None,
                 reference: torch.Tensor | None = None, title: str | None = None) -> Path:
    """Write samples x of shape (N, 2) as a scatter (over ``reference`` data if given), (N, 1) as a
    histogram, (N, D >= 3) as scatters of the pairs among the leading ``MAX_DIMS`` coordinates, or of
    shape (N, C, H, W) as a grid; discrete images are shown at their ``levels``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x.detach().float().cpu()
    if x.ndim == 2 and x.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        if reference is not None:
            r = reference.detach().float().cpu().numpy()
            ax.scatter(r[:, 0], r[:, 1], s=2, c="lightgray", label="data")
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=2, c="tab:blue", label="samples")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", markerscale=4)
    elif x.ndim == 2 and x.shape[1] == 1:
        fig, ax = plt.subplots(figsize=(5, 4))
        r = None if reference is None else reference.detach().float().cpu()[:, 0].numpy()
        bins = min(50, max(5, len(x) // 10))
        if r is not None:
            ax.hist(r, bins=bins, density=True, color="lightgray", label="data")
        ax.hist(x[:, 0].numpy(), bins=bins, density=True, histtype="step", color="tab:blue", label="samples")
        ax.set(xlabel="x[0]", ylabel="density")
        ax.legend(loc="upper right")
    elif x.ndim == 2 and x.shape[1] >= 3:
        fig, axes = vector_axes(plt, x.shape[1])
        r = None if reference is None else reference.detach().float().cpu().numpy()
        for ax, (i, j) in zip(axes, pairs(x.shape[1])):
            if r is not None:
                ax.scatter(r[:, i], r[:, j], s=2, c="lightgray", label="data")
            ax.scatter(x[:, i].numpy(), x[:, j].numpy(), s=2, c="tab:blue", label="samples")
            ax.set(xlabel=f"x[{i}]", ylabel=f"x[{j}]")
        axes[0].legend(loc="upper right", markerscale=4, fontsize=8)
        for ax in axes[len(pairs(x.shape[1])):]:
            ax.axis("off")
        if title:
            fig.suptitle(f"{title} (leading {min(x.shape[1], MAX_DIMS)} of {x.shape[1]} coordinates)")
            title = None
        fig.tight_layout()
    elif x.ndim == 4:
        lo, hi = DATA_RANGE
        img = (continuous_to_levels(x, levels, DATA_RANGE).float() / (levels - 1) if levels
               else ((x - lo) / (hi - lo)).clamp(0, 1))
        n, c, h, w = img.shape
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        grid = torch.ones(c, rows * (h + 1) + 1, cols * (w + 1) + 1)
        for i in range(n):
            r, q = divmod(i, cols)
            grid[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = img[i]
        fig, ax = plt.subplots(figsize=(min(12, 0.4 * cols * w / 8 + 1),) * 2)
        ax.imshow((grid[0] if c == 1 else grid.permute(1, 2, 0)).numpy(), cmap="gray" if c == 1 else None,
                  vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
    else:
        raise ValueError(f"samples must have shape (N, D) or (N, C, H, W), got {tuple(x.shape)}.")
    if title:
        ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
