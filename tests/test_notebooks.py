"""The teaching notebooks run top to bottom and match their sources.

Each ``notebooks/*.ipynb`` is executed headless with nbclient in a fresh ``python3`` kernel started
from this interpreter, with the notebooks folder as working directory; a failing cell (including
the notebooks' own asserts of their teaching claims) fails the test. Run them in parallel with
``python -m pytest -n 2 tests/test_notebooks.py``; regenerate the committed notebooks with
``python notebooks/build.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 600  # seconds; a kill switch for a hung cell, each notebook runs in a few minutes


def _build_module():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _build_module()


@pytest.fixture
def python3_kernel(tmp_path, monkeypatch):
    """A ``python3`` kernelspec that runs this interpreter, found before any installed one."""
    kernelspec.write_kernel_spec(tmp_path / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))


def test_every_source_has_a_notebook():
    sources = {p.stem for p in (NOTEBOOKS / "src").glob("[0-9]*.py")}
    assert sources == {p.stem for p in PATHS}, "run `python notebooks/build.py` to regenerate"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_is_built_from_its_source(path):
    """The committed cells are those of ``src/<name>.py``, every code cell carries its outputs
    from one in-order run, and no output mentions a local absolute path."""
    nb = nbformat.read(path, as_version=4)
    source = build.read_source(NOTEBOOKS / "src" / f"{path.stem}.py")
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in source.cells], \
        "stale notebook: run `python notebooks/build.py`"
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), "notebook committed without (in-order) outputs"
    build.check_outputs(nb, path.stem)


@pytest.mark.slow  # a kernel per notebook, 10-80 s each; the source checks above stay fast
@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_executes(path, python3_kernel):
    nb = nbformat.read(path, as_version=4)
    build.execute(nb, cwd=NOTEBOOKS, timeout=CELL_TIMEOUT)  # clears old outputs; raises CellExecutionError
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
