"""Image quality by the Frechet distance in the features of a small digits classifier.

The Frechet (2-Wasserstein) distance between Gaussians N(mu1, S1) and N(mu2, S2) is
    FD^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))            (Dowson & Landau 1982),
and FID (Heusel et al. 2017) evaluates it on the moments of Inception features of two image sets.
For 8x8 digits an Inception network is meaningless; instead a small CNN trained on the digits
*train* split (``DigitsClassifier``, shipped as ``assets/digits_classifier.safetensors``) gives
64-dimensional penultimate-layer features, and ``frechet_distance`` is FD^2 on their moments, the
same quantity as FID with a different feature map. Reproduce the shipped weights with
    python -m sde_diffusion.evaluation.features --out sde_diffusion/assets/digits_classifier.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from .. import checks

ASSET = Path(__file__).resolve().parent.parent / "assets" / "digits_classifier.safetensors"
FEATURES = 64


class DigitsClassifier(nn.Module):
    """(N, 1, 8, 8) in [-1, 1] -> 10 logits; ``features`` is the 64-d penultimate layer (after ReLU)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 4 * 4, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"the digits classifier takes images of shape (N, 1, 8, 8), got {tuple(x.shape)}.")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(epochs: int = 60, seed: int = 0, batch_size: int = 64) -> DigitsClassifier:
    """Adam on the digits train split (cross-entropy), with one-pixel random shifts as augmentation."""
    from ..training.data import batches, load_dataset

    torch.manual_seed(seed)
    ds = load_dataset("digits", split="train")
    net = DigitsClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    stream = batches(ds, batch_size, generator=gen)
    for _ in range(epochs * len(ds) // batch_size):
        x, y = next(stream)
        dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
        x = torch.roll(x, (dy, dx), dims=(2, 3))
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def load_classifier(path: str | Path = ASSET, device: torch.device | str = "cpu") -> DigitsClassifier:
    """The shipped (or a given) classifier, in eval mode on ``device``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"digits classifier weights {str(path)!r} not found; rebuild them with "
                         "`python -m sde_diffusion.evaluation.features`.")
    net = DigitsClassifier()
    net.load_state_dict(load_file(path))
    return net.to(device).eval().requires_grad_(False)


def moments(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features f (N, D), in float64."""
    f = f.to(torch.float64)
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def gaussian_frechet(mu1: torch.Tensor, s1: torch.Tensor, mu2: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) for PSD S1, S2, in float64.

    tr (S1 S2)^(1/2) = tr (S1^(1/2) S2 S1^(1/2))^(1/2): the eigenvalues of S1 S2 are those of the
    symmetric PSD matrix S1^(1/2) S2 S1^(1/2), so two symmetric eigendecompositions suffice.
    """
    mu1, s1, mu2, s2 = (a.to(torch.float64) for a in (mu1, s1, mu2, s2))
    w, v = torch.linalg.eigh(s1)
    root1 = (v * w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp(min=0).sqrt().sum()
    return (mu1 - mu2).square().sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross


def frechet_distance(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """FD^2 between the Gaussian moments of two feature sets (N1, D) and (N2, D), N1, N2 >= 2."""
    for name, f in (("f1", f1), ("f2", f2)):
        checks.float_tensor(name, f)
        if f.ndim != 2 or len(f) < 2:
            raise ValueError(f"{name} must have shape (N, D) with N >= 2, got {tuple(f.shape)}.")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"f1 and f2 must have the same feature dimension, got {f1.shape[1]} and {f2.shape[1]}.")
    return gaussian_frechet(*moments(f1), *moments(f2))


@torch.no_grad()
def accuracy(net: DigitsClassifier, split: str = "test") -> float:
    """Fraction of the digits ``split`` classified correctly."""
    from ..training.data import load_dataset

    ds = load_dataset("digits", split=split)
    device = next(net.parameters()).device
    return float((net(ds.x.to(device)).argmax(1).cpu() == ds.y).double().mean())


def main(argv: list[str] | None = None) -> None:
    from safetensors.torch import save_file

    p = argparse.ArgumentParser(description="Train the digits feature classifier and save it (safetensors).")
    p.add_argument("--out", default=str(ASSET))
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    net = train_classifier(a.epochs, a.seed)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, a.out)
    print(f"test accuracy {accuracy(net):.4f}; wrote {a.out}")


if __name__ == "__main__":
    main()
