"""sde-diffusion: score-based generative modelling in continuous time."""

from .analytic import GaussianMixture, grid2d, random_mixture, ring2d
from .data import Dataset, available_datasets, batches, load_dataset
from .reverse import ReverseSDE
from .schedule import DDPMSchedule
from .sde import SDE, CosineVPSDE, SubVPSDE, VESDE, VPSDE, get_sde

__version__ = "0.1.0"

__all__ = [
    "SDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "get_sde", "ReverseSDE",
    "DDPMSchedule", "GaussianMixture", "ring2d", "grid2d", "random_mixture",
    "Dataset", "load_dataset", "available_datasets", "batches", "__version__",
]
