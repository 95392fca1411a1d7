"""Classifier guidance (Dhariwal & Nichol 2021; Song et al. 2021, section 5): a noisy classifier
p_phi(y | x_t, t) trained on forward-noised data, and the guided score
    score(x, t) + w grad_x log p_phi(y | x, t),
which for w = 1 and the exact posterior is the conditional score grad log p_t(x | y) (Bayes).
Classifier-free guidance, (1 + w) s(x | y) - w s(x | null), is ``ScoreModel.conditional``; for exact
scores it equals classifier guidance with weight 1 + w.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import checks
from .models import ScoreModel
from .models.embeddings import time_embedding
from .sde import SDE, ScoreFn

LogProbFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t) -> log p(. | x_t) (N, K)


class NoisyClassifier(nn.Module):
    """Logits (N, K) of a time-conditioned SiLU MLP on flattened x plus a time embedding."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 128, layers: int = 3,
                 embedding: str = "sinusoidal", emb_dim: int = 64):
        super().__init__()
        self.num_classes = checks.positive_int("num_classes", num_classes)
        self.time_embed = nn.Sequential(time_embedding(embedding, emb_dim), nn.Linear(emb_dim, hidden))
        self.inp = nn.Linear(checks.positive_int("dim", dim), hidden)
        body = []
        for _ in range(checks.positive_int("layers", layers) - 1):
            body += [nn.SiLU(), nn.Linear(hidden, hidden)]
        self.body = nn.Sequential(*body, nn.SiLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = checks.time(t, float("inf"), batch=x.shape[0], like=x)
        return self.body(self.inp(x.flatten(1)) + self.time_embed(t))

    def log_prob(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log p_phi(. | x_t = x, t), shape (N, K)."""
        return F.log_softmax(self(x, t), dim=1)


def classifier_loss(classifier: NoisyClassifier, sde: SDE, x0: torch.Tensor, y: torch.Tensor, *,
                    eps: float = 1e-3, generator: torch.Generator | None = None) -> torch.Tensor:
    """E_{t ~ U(eps, T), z} [-log p_phi(y | m(t) x0 + s(t) z, t)]: cross-entropy on noised data."""
    t = eps + (sde.T - eps) * torch.rand(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
    m, s = sde.marginal(t)
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    xt = checks.bcast(m, x0) * x0 + checks.bcast(s, x0) * z
    return F.cross_entropy(classifier(xt, t), y)


def classifier_step(classifier: NoisyClassifier, opt: torch.optim.Optimizer, sde: SDE, x0: torch.Tensor,
                    y: torch.Tensor, *, eps: float = 1e-3, generator: torch.Generator | None = None) -> torch.Tensor:
    """One optimizer step on ``classifier_loss`` of the minibatch (x0, y); returns the detached loss."""
    loss = classifier_loss(classifier, sde, x0, y, eps=eps, generator=generator)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def train_classifier(classifier: NoisyClassifier, sde: SDE, x: torch.Tensor, y: torch.Tensor, *,
                     steps: int = 2000, batch_size: int = 256, lr: float = 2e-3, eps: float = 1e-3,
                     seed: int = 0) -> list[float]:
    """Adam on ``classifier_loss`` over minibatches of in-memory (x, y) drawn with replacement;
    returns the loss of every step (one host sync at the end). ``sde-diffusion train-classifier``
    (``classifier_training``) does the same from a config, with checkpoints."""
    checks.positive_int("steps", steps)
    checks.positive_int("batch_size", batch_size)
    if y.shape != (x.shape[0],) or y.dtype != torch.long:
        raise ValueError(f"y must be a LongTensor of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}.")
    gen = torch.Generator(x.device).manual_seed(seed)
    opt = torch.optim.Adam(classifier.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        idx = torch.randint(x.shape[0], (batch_size,), generator=gen, device=x.device)
        losses.append(classifier_step(classifier, opt, sde, x[idx], y[idx], eps=eps, generator=gen))
    return torch.stack(losses).tolist()


def classifier_guided(score_fn: ScoreFn, log_prob: LogProbFn, y: torch.Tensor, scale: float = 1.0) -> ScoreFn:
    """The score_fn (x, t) -> score_fn(x, t) + scale * grad_x log p(y | x, t), with ``log_prob``
    (x, t) -> (N, K) log-probabilities (e.g. ``NoisyClassifier.log_prob``) and labels y (N,)."""
    if not callable(score_fn) or not callable(log_prob):
        raise TypeError("score_fn and log_prob must be callables of (x, t).")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
        raise ValueError(f"scale must be a number >= 0, got {scale!r}.")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # grad for a copy of x only, also when the caller runs under no_grad or inference_mode
        with torch.inference_mode(False), torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            picked = log_prob(xg, t).gather(1, y.reshape(-1, 1)).sum()
            grad, = torch.autograd.grad(picked, xg)
        return score_fn(x, t) + scale * grad
    return guided


def guided_score(model: ScoreModel, y: torch.Tensor | None = None, guidance: float = 0.0,
                 classifier: NoisyClassifier | None = None, scale: float = 1.0) -> ScoreFn:
    """The score_fn a sampler follows towards labels y (N,):
    ``model`` itself without y; (1 + w) s(x|y) - w s(x|null) for a conditional model (w = ``guidance``);
    plus ``scale`` grad log p_phi(y | x_t) with a noisy ``classifier`` (the model may then be
    unconditional). Labels are checked against both models' classes."""
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a ScoreModel, got {type(model).__name__}.")
    if classifier is not None and not isinstance(classifier, NoisyClassifier):
        raise TypeError(f"classifier must be a NoisyClassifier, got {type(classifier).__name__}.")
    if y is not None and (not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point()):
        raise ValueError(f"y must be an integer tensor of labels, shape (N,); got {getattr(y, 'dtype', y)!r}.")
    if y is None:
        if guidance or classifier is not None:
            raise ValueError("guidance and a classifier need a label (the class to steer towards).")
        return model
    for name, classes in (("model", model.num_classes), ("classifier", getattr(classifier, "num_classes", None))):
        if classes is not None and bool(((y < 0) | (y >= classes)).any()):
            raise ValueError(f"label must be a class index of the {name}; allowed: 0..{classes - 1}; "
                             f"got {sorted(set(y.tolist()))[:5]}.")
    if model.num_classes is None and classifier is None:
        raise ValueError("label needs a conditional model (e.g. configs/digits_cfg.yaml) or a noisy "
                         "classifier (sde-diffusion train-classifier); this model is unconditional.")
    if model.num_classes is None and guidance:
        raise ValueError("guidance (classifier-free) needs a conditional model; this one is unconditional "
                         "(use a classifier and its scale instead).")
    score_fn = model if model.num_classes is None else model.conditional(y, guidance)
    return score_fn if classifier is None else classifier_guided(score_fn, classifier.log_prob, y, scale)
