"""sde-diffusion: score-based generative modelling in continuous time."""

from .analytic import GaussianMixture, grid2d, random_mixture, ring2d
from .training.checkpoint import load_checkpoint
from .training.config import Config, load_config
from .training.data import Dataset, available_datasets, batches, load_dataset
from .training.classifier_training import load_noisy_classifier, train_noisy_classifier
from .guidance import NoisyClassifier, classifier_guided, guided_score, train_classifier
from .likelihood import LikelihoodResult, bits_per_dim, log_likelihood
from .losses import ddpm_loss, dsm_loss
from .models import MLPScore, ScoreModel, UNet, build_model, from_denoiser
from .models.diffusers_adapter import from_diffusers
from .reverse import ReverseSDE
from .schedule import DDPMSchedule, RespacedSchedule, learned_log_variance
from .sde import SDE, CosineVPSDE, DiscreteVPSDE, SubVPSDE, VESDE, VPSDE, get_sde
from .vlb import ddpm_vlb_bits_per_dim

__version__ = "0.1.0"

__all__ = [
    "SDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "DiscreteVPSDE", "get_sde", "ReverseSDE",
    "DDPMSchedule", "RespacedSchedule", "learned_log_variance", "GaussianMixture", "ring2d", "grid2d", "random_mixture",
    "Dataset", "load_dataset", "available_datasets", "batches",
    "MLPScore", "UNet", "ScoreModel", "build_model", "from_diffusers", "from_denoiser", "dsm_loss", "ddpm_loss",
    "classifier_guided", "guided_score", "NoisyClassifier", "train_classifier", "train_noisy_classifier",
    "load_noisy_classifier",
    "log_likelihood", "LikelihoodResult", "bits_per_dim", "ddpm_vlb_bits_per_dim",
    "Config", "load_config", "load_checkpoint", "__version__",
]
