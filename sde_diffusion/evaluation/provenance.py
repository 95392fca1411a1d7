"""What produced a figure: the package, library and Python versions, the code's commit where it runs
from a git checkout, and the machine (OS, CPU cores, torch threads, device)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import scipy
import torch


def commit() -> str | None:
    """The short commit of the package's checkout, with '+changes' for a dirty tree; None outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def versions(device: torch.device | str = "cpu") -> dict:
    """Versions and machine as a flat dict (JSON-ready)."""
    from .. import __version__

    device = torch.device(device)
    return {"sde_diffusion": __version__, "commit": commit(), "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "python": platform.python_version(),
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores",
            "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type}


def provenance_line(device: torch.device | str = "cpu") -> str:
    """One line: 'sde-diffusion 0.1.0 (commit abc1234), torch ..., numpy ..., scipy ..., Python ...;
    Linux x86_64, 2 CPU cores, 2 torch threads, device cpu'."""
    v = versions(device)
    code = f"sde-diffusion {v['sde_diffusion']}" + (f" (commit {v['commit']})" if v["commit"] else "")
    return (f"{code}, torch {v['torch']}, numpy {v['numpy']}, scipy {v['scipy']}, Python {v['python']}; "
            f"{v['machine']}, {v['threads']} torch threads, device {v['device']}")
