"""Shared fixtures: ``--device`` / ``--dtype`` select where the device-agnostic tests run."""

import os

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
