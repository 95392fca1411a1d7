"""The layout's one rule: imports run commands -> evaluation -> training -> solvers -> the maths.

Every module of ``sde_diffusion`` and ``solvers`` is parsed (ast, so imports inside functions count
too) and each import of the project's own code is checked against the layer order. The package's
``__init__.py`` (the public face, which re-exports from every layer) and ``__main__.py`` (the entry
point) are exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"maths": 0, "solvers": 1, "training": 2, "evaluation": 3, "commands": 4}
EXEMPT = {"sde_diffusion/__init__.py", "sde_diffusion/__main__.py"}
MODULES = sorted(p for pkg in ("sde_diffusion", "solvers") for p in (ROOT / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str | None:
    """The layer of a dotted module name of this project, None for third-party modules."""
    parts = module.split(".")
    if parts[0] == "solvers":
        return "solvers"
    if parts[0] != "sde_diffusion":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "maths"


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            # `from pkg import sub` imports the submodule sub when it is one
            for a in node.names:
                sub = f"{mod}.{a.name}"
                is_module = (ROOT / sub.replace(".", "/")).with_suffix(".py").exists() \
                    or (ROOT / sub.replace(".", "/")).is_dir()
                out.append((node.lineno, sub if is_module else mod))
    return out


def test_every_module_is_found():
    names = {module_name(p) for p in MODULES}
    assert {"sde_diffusion.sde", "sde_diffusion.training.train", "sde_diffusion.evaluation.compare",
            "sde_diffusion.commands.cli", "solvers.base"} <= names


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(ROOT)) for p in MODULES])
def test_imports_run_downward(path):
    rel = str(path.relative_to(ROOT))
    if rel in EXEMPT:
        pytest.skip("the public face / entry point re-exports every layer")
    own = layer(module_name(path))
    upward = [f"{rel}:{line} imports {mod} ({layer(mod)} above {own})" for line, mod in imported(path)
              if layer(mod) is not None and LAYERS[layer(mod)] > LAYERS[own]]
    assert not upward, "; ".join(upward)


def test_the_detector_sees_an_upward_import(tmp_path, monkeypatch):
    """A maths module importing the training layer is reported (the test can fail)."""
    fake = ROOT / "sde_diffusion" / "sde.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "from .training.data import load_dataset\n"
                        if self == fake else Path.read_bytes(self).decode())
    with pytest.raises(AssertionError, match="sde_diffusion/sde.py:1 imports sde_diffusion.training.data"):
        test_imports_run_downward(fake)
