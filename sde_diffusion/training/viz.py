"""PNG figures of samples: a scatter for 2-D data, a grid for images (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..dequantize import DATA_RANGE, continuous_to_levels


def save_samples(x: torch.Tensor, path: str | Path, *, levels: int | None = None,
                 reference: torch.Tensor | None = None, title: str | None = None) -> Path:
    """Write samples x of shape (N, 2) as a scatter (over ``reference`` data if given) or of shape
    (N, C, H, W) as a grid; discrete images are shown at their ``levels``."""
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
        raise ValueError(f"samples must have shape (N, 2) or (N, C, H, W), got {tuple(x.shape)}.")
    if title:
        ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
