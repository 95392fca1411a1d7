"""Shared fixtures: ``--device`` / ``--dtype`` select where the device-agnostic tests run;
``trained`` is the one source of trained test models (each trained once per session).

Tiers: ``python -m pytest -m "not slow" -n 2`` is the development loop (a few minutes on 2 cores);
``python -m pytest -n 2`` (the README's command, CI) runs everything, ``slow`` included."""

import os
from pathlib import Path
from typing import Callable

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per xdist worker and per process it starts (notebook kernels, CLI and
    # torchrun subprocesses): `pytest -n 2` on 2 cores would otherwise oversubscribe, and spinning
    # OpenMP threads on busy cores slow small models down by an order of magnitude
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="torch device for the tests (cpu, cuda, cuda:1, ...)")
    parser.addoption("--dtype", default="float32", choices=["float32", "float64"],
                     help="default floating dtype for device-agnostic tests")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Tests taking the ``cuda_device`` fixture are marked ``cuda``, so ``pytest -m cuda`` runs them."""
    for item in items:
        if "cuda_device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cuda)


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA requested with --device but not available")
    return dev


@pytest.fixture(scope="session")
def dtype(request) -> torch.dtype:
    return getattr(torch, request.config.getoption("--dtype"))


@pytest.fixture
def cuda_device():
    """A CUDA device, or a clean skip where there is none (CI has none)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda")


@pytest.fixture(autouse=True)
def _restore_torch_defaults():
    """Tests may change the default dtype or seed; restore both afterwards."""
    default = torch.get_default_dtype()
    state = torch.random.get_rng_state()
    yield
    torch.set_default_dtype(default)
    torch.random.set_rng_state(state)


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A factory of trained test models, each trained once per session (per xdist worker):

        trained(config, *overrides, tiny=False, prepare=None, datasets=None) -> TrainResult

    trains ``configs/<config>.yaml`` with ``overrides`` (after the ``_tiny.TINY`` shrink when
    ``tiny``) into a fresh directory under the session's tmp_path_factory. ``prepare(dir) -> list of
    overrides`` writes input files (e.g. a data file) into that directory first; ``datasets`` (name ->
    loader) are registered in ``training.data`` for the training only. Same arguments, same result
    object: callers share it, so they must not write into ``result.out`` (copy it first)."""
    from sde_diffusion.training import data
    from sde_diffusion.training.config import load_config
    from sde_diffusion.training.train import train
    from _tiny import TINY

    cache: dict = {}

    def make(config: str, *overrides: str, tiny: bool = False, prepare: Callable[[Path], list] | None = None,
             datasets: dict | None = None):
        key = (config, overrides, tiny, prepare and f"{prepare.__module__}.{prepare.__qualname__}",
               tuple(sorted(datasets or {})))
        if key not in cache:
            root = tmp_path_factory.mktemp(f"trained-{config}")
            extra = list(prepare(root)) if prepare is not None else []
            for name, loader in (datasets or {}).items():
                data.register(name)(loader)
            try:
                cfg = load_config(CONFIGS / f"{config}.yaml", (TINY if tiny else []) + list(overrides) + extra)
                cache[key] = train(cfg, root / "run", progress=False)
            finally:
                for name in datasets or {}:
                    del data.DATASETS[name]
        return cache[key]
    return make
