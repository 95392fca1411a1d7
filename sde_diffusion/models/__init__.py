"""Score networks: SDE-agnostic backbones and ``ScoreModel``, where score, eps and x0 convert."""

from .denoiser import VEDenoiser, from_denoiser
from .embeddings import FourierEmbedding, LabelEmbedding, SinusoidalEmbedding, time_embedding
from .mlp import MLPScore
from .score_model import (NETS, PARAMETERIZATIONS, PREDICTIONS, ModelInfo, ScoreModel, build_model, convert,
                          edm_scalings, from_eps, learns_variance, to_eps)
from .unet import UNet

__all__ = [
    "MLPScore", "UNet", "ScoreModel", "ModelInfo", "build_model", "convert", "to_eps", "from_eps", "learns_variance",
    "NETS",
    "PARAMETERIZATIONS", "PREDICTIONS", "edm_scalings", "VEDenoiser", "from_denoiser", "FourierEmbedding",
    "SinusoidalEmbedding", "LabelEmbedding", "time_embedding",
]
