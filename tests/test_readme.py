"""The README's Python quickstart, run as written: load the shipped model, sample, and print test
bits/dim inside the interval the README states."""

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def quickstart() -> str:
    """The first ```python block under the heading "## Python quickstart"."""
    text = README.read_text()
    section = text[text.index("## Python quickstart"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_quickstart_is_five_lines_after_the_import():
    code = [line for line in quickstart().splitlines() if line.strip()]
    assert code[0] == "import sde_diffusion as sd" and len(code) == 6, code


@pytest.mark.slow  # ~100 probability-flow solves of the digits U-Net (Hutchinson): a minute on one core
def test_the_quickstart_prints_bits_per_dim_in_the_documented_interval():
    """The README says it prints a value between 2.0 and 2.5 bits/dim: the shipped model's test bits/dim
    is about 2.2 with a standard error of about 0.03 over 100 digits, so the interval is ~8 s.e. wide."""
    assert "between 2.0 and 2.5" in README.read_text()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(quickstart(), "README.md", "exec"), {})
    nfe, bpd, se = re.search(r"^(\d+) NFE; test bits/dim (\S+) \+- (\S+)$", out.getvalue().strip(), re.M).groups()
    assert int(nfe) == 21 and 2.0 <= float(bpd) <= 2.5 and 0 < float(se) < 0.1, out.getvalue()
