"""The trained digits models the package ships (``load("shipped:digits_vp")``), and how they are reproduced.

``sde_diffusion/assets/digits_vp/`` holds the EMA weights (``ema.safetensors``), the run's ``config.json`` and
``meta.json`` (data shape, levels, training step, the weights' SHA-256, the command that made it):
an inference-only export of a normal training run, without optimizer state. Reproduce it with
    sde-diffusion train --config configs/digits_vp.yaml --out runs/digits_vp
    python -m sde_diffusion.training.shipped runs/digits_vp
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from .checkpoint import read_manifest, resolve, sha256_file

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "digits_vp"
COMMAND = "sde-diffusion train --config configs/digits_vp.yaml --out runs/digits_vp"


def export(run_dir: str | Path, dest: str | Path = SHIPPED, command: str = COMMAND) -> Path:
    """Copy a run's latest EMA weights and config to ``dest``, with meta.json."""
    ckpt = resolve(run_dir)
    manifest = read_manifest(ckpt)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("ema.safetensors", "config.json"):
        shutil.copyfile(ckpt / name, dest / name)
    meta = {"event_shape": manifest["event_shape"], "levels": manifest["levels"], "step": manifest["step"],
            "dataset": manifest.get("dataset"), "sha256": sha256_file(dest / "ema.safetensors"), "command": command}
    (dest / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return dest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Export a training run's EMA weights as the demo's shipped model.")
    p.add_argument("run_dir", help="run directory (or checkpoint folder) of `sde-diffusion train`")
    p.add_argument("--dest", default=str(SHIPPED))
    a = p.parse_args(argv)
    dest = export(a.run_dir, a.dest)
    size = sum(f.stat().st_size for f in dest.iterdir())
    print(f"wrote {dest} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
