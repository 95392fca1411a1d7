"""sde-diffusion: score-based generative modelling in continuous time.

    import sde_diffusion as sd
    model = sd.load("shipped:digits_vp")                  # any model source: see ``load``
    x = sd.sample(model, 16, method="dpm_solver", steps=20).x
    bpd = sd.bits_per_dim(model, sd.model_dataset(model, "test", n=100).discrete())
"""

from .analytic import GaussianMixture, grid2d, random_mixture, ring2d
from .training.config import Config, load_config
from .training.data import Dataset, available_datasets, batches, load_dataset
from .training.classifier_training import train_noisy_classifier
from .training.loading import load, model_dataset, shipped_models
from .training.train import train
from .guidance import NoisyClassifier, classifier_guided, guided_score, train_classifier
from .likelihood import LikelihoodResult, bits_per_dim, log_likelihood
from .losses import ddpm_loss, dsm_loss
from .models import MLPScore, ModelInfo, ScoreModel, UNet, build_model, from_denoiser
from .models.diffusers_adapter import from_diffusers
from .reverse import ReverseSDE
from .schedule import DDPMSchedule, RespacedSchedule, learned_log_variance
from .sde import SDE, CosineVPSDE, DiscreteVPSDE, SubVPSDE, VESDE, VPSDE, get_sde
from .vlb import ddpm_vlb_bits_per_dim

__version__ = "0.1.0"

__all__ = [
    "load", "model_dataset", "shipped_models", "sample", "train", "log_likelihood", "bits_per_dim",
    "SDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "DiscreteVPSDE", "get_sde", "ReverseSDE",
    "DDPMSchedule", "RespacedSchedule", "learned_log_variance", "GaussianMixture", "ring2d", "grid2d", "random_mixture",
    "Dataset", "load_dataset", "available_datasets", "batches",
    "MLPScore", "UNet", "ScoreModel", "ModelInfo", "build_model", "from_diffusers", "from_denoiser", "dsm_loss",
    "ddpm_loss", "classifier_guided", "guided_score", "NoisyClassifier", "train_classifier", "train_noisy_classifier",
    "LikelihoodResult", "ddpm_vlb_bits_per_dim", "Config", "load_config", "__version__",
]


def __getattr__(name: str):
    """``sample`` is ``solvers.sample``, imported on first use (solvers is a package of its own that
    imports this one)."""
    if name == "sample":
        from solvers import sample
        return sample
    raise AttributeError(f"module 'sde_diffusion' has no attribute {name!r}")
