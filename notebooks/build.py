"""Build the teaching notebooks from their readable sources and execute them in place.

Each notebook ``NN_name.ipynb`` is generated from ``src/NN_name.py``, a plain Python file in the
"percent" format: ``# %% [markdown]`` starts a markdown cell (its lines written as ``# text``),
``# %%`` starts a code cell (where ``# %magic`` lines become IPython magics). Usage, from the repository root:

    python notebooks/build.py              # rebuild and execute every notebook
    python notebooks/build.py 01 03        # only the notebooks whose name starts with 01 or 03
    python notebooks/build.py --no-execute # write the cells without running them

Execution uses the ``python3`` Jupyter kernel with the notebooks folder as working directory;
outputs are written into the committed ``.ipynb`` so figures show when browsing the repository.
The build refuses outputs that mention an absolute path of this machine.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
CELL = re.compile(r"^# %%(?P<md> \[markdown\])?\s*$")
MAGIC = re.compile(r"^# (?=%[a-z])")  # "# %matplotlib inline" in a code cell is the magic itself
CELL_TIMEOUT = 600  # seconds per cell; each notebook is meant to run in a few minutes in total


def read_source(path: Path) -> nbformat.NotebookNode:
    """The unexecuted notebook described by a percent-format source file."""
    cells, kind, lines = [], None, []

    def flush():
        text = "\n".join(lines).strip("\n")
        if kind is not None and text:
            make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
            cells.append(make(text, id=f"cell-{len(cells):02d}"))

    for line in path.read_text().splitlines():
        match = CELL.match(line)
        if match:
            flush()
            kind, lines = ("markdown" if match["md"] else "code"), []
        elif kind == "markdown":
            lines.append(re.sub(r"^# ?", "", line))
        elif kind == "code":
            lines.append(MAGIC.sub("", line))
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    return nb


def machine_paths() -> list[str]:
    """Absolute paths that must not leak into committed outputs."""
    return sorted({str(HERE.parent), str(Path.home()), sys.prefix, sys.base_prefix, "/tmp/"}, key=len)


def check_outputs(nb: nbformat.NotebookNode, name: str) -> None:
    """Raise if any text output mentions a machine-specific absolute path."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text = str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", "")) + \
                "".join(out.get("traceback", []))
            for p in machine_paths():
                if p in text:
                    raise RuntimeError(f"{name}: an output of cell {cell.id} mentions the local path {p!r}")


def execute(nb: nbformat.NotebookNode, cwd: Path = HERE, timeout: int = CELL_TIMEOUT) -> None:
    """Run every cell in order with the python3 kernel (raises CellExecutionError on failure)."""
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(cwd)}}).execute()
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in ("kernelspec", "language_info")}
    nb.metadata["language_info"] = {"name": "python"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="name prefixes of the notebooks to build (default all)")
    parser.add_argument("--no-execute", action="store_true", help="write the cells without outputs")
    args = parser.parse_args(argv)
    for src in sorted(SRC.glob("[0-9]*.py")):
        if args.only and not any(src.stem.startswith(p) for p in args.only):
            continue
        nb = read_source(src)
        if not args.no_execute:
            print(f"executing {src.stem} ...", flush=True)
            execute(nb)
            check_outputs(nb, src.stem)
        nbformat.validate(nb)
        nbformat.write(nb, HERE / f"{src.stem}.ipynb")
        print(f"wrote notebooks/{src.stem}.ipynb")


if __name__ == "__main__":
    main()
