"""Checkpoints: written atomically, verified when read, never unpickling arbitrary objects.

A run directory holds ``checkpoints/step_XXXXXXXX/`` folders and a ``checkpoints/latest`` pointer.
Each folder holds
    model.safetensors, ema.safetensors   the weights and their EMA (safetensors),
    state.pt                             optimizer state, step, RNG states (torch.load(weights_only=True)),
    config.json                          the resolved run configuration,
    manifest.json                        step, data shape and the size and SHA-256 of every file above.
A folder is written under a temporary name, each file through a temp file + ``os.replace``, then
renamed into place; only then does ``latest`` (itself replaced atomically) point at it. A run killed at
any moment therefore keeps its previous checkpoint intact, and a truncated or corrupted file is
reported at load by its size or hash, never by a later crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import Config, RESUMABLE_CHANGES, differences, from_dict, to_dict

FILES = ("model.safetensors", "ema.safetensors", "state.pt", "config.json")
FORMAT = 1


# -- writing --------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` by ``write(tmp)`` to a temp file in the same folder, fsync, then os.replace."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tensors(state_dict: dict) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}


def save_checkpoint(run_dir: str | Path, *, step: int, model: torch.nn.Module, ema: torch.nn.Module,
                    state: dict[str, Any], config: Config, meta: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` of a run atomically, point ``latest`` at it, keep the newest ``keep``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step_{step:08d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    try:
        atomic_write(tmp / "model.safetensors", lambda p: save_file(_tensors(model.state_dict()), p))
        atomic_write(tmp / "ema.safetensors", lambda p: save_file(_tensors(ema.state_dict()), p))
        atomic_write(tmp / "state.pt", lambda p: torch.save({"step": step, **state}, p))
        atomic_write_text(tmp / "config.json", json.dumps(to_dict(config), indent=2))
        files = {f: {"bytes": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)} for f in FILES}
        manifest = {"format": FORMAT, "step": step, **meta, "files": files}
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
        final = root / name
        if final.exists():  # re-saving a step (e.g. after a resume): move the old copy aside first
            old = root / f".tmp-old-{name}-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
        _fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(root / "latest", name + "\n")
    for old in sorted(p for p in root.glob("step_*") if p.name != name)[:-(keep - 1) or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# -- reading --------------------------------------------------------------------------------
def resolve(path: str | Path) -> Path:
    """The checkpoint folder for ``path``: a run directory (its latest checkpoint), its
    ``checkpoints`` folder, or one ``step_*`` folder."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint {str(path)!r} does not exist.")
    for root in (path / "checkpoints", path):
        pointer = root / "latest"
        if pointer.is_file():
            target = root / pointer.read_text().strip()
            if not (target / "manifest.json").is_file():
                raise ValueError(f"checkpoint {str(path)!r}: 'latest' points at {target.name}, "
                                 "which is missing or incomplete.")
            return target
    if (path / "manifest.json").is_file():
        return path
    raise ValueError(f"{str(path)!r} is not a checkpoint: expected a run directory with "
                     "checkpoints/latest or a step folder with manifest.json.")


def latest(run_dir: str | Path) -> Path | None:
    """The newest checkpoint folder of a run, or None when it has none."""
    return resolve(run_dir) if (Path(run_dir) / "checkpoints" / "latest").is_file() else None


def read_manifest(ckpt: Path) -> dict:
    """The manifest, after checking every file's presence, size and SHA-256."""
    try:
        manifest = json.loads((ckpt / "manifest.json").read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT:
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"checkpoint {str(ckpt)!r}: manifest.json is unreadable or of an unknown "
                         f"format (expected format {FORMAT}).") from None
    for name in FILES:
        f = ckpt / name
        if not f.is_file():
            raise ValueError(f"checkpoint {str(ckpt)!r} is incomplete: {name} is missing.")
        size, want = f.stat().st_size, files[name]["bytes"]
        if size != want:
            raise ValueError(f"checkpoint {str(ckpt)!r}: {name} is truncated or altered "
                             f"({size} bytes, expected {want}).")
        if sha256_file(f) != files[name]["sha256"]:
            raise ValueError(f"checkpoint {str(ckpt)!r}: {name} is corrupted (SHA-256 mismatch).")
    return manifest


def kind_of(manifest: dict) -> str:
    """What a checkpoint holds: "score model" (``train``) or "noisy classifier" (``classifier_training``)."""
    return manifest.get("kind", "score model")


def read_config(ckpt: Path) -> Config:
    try:
        return from_dict(json.loads((ckpt / "config.json").read_text()))
    except (OSError, ValueError) as e:
        raise ValueError(f"checkpoint {str(ckpt)!r}: config.json is invalid ({e}).") from None


def read_state(ckpt: Path, device: torch.device | str = "cpu") -> dict:
    """state.pt, loaded with ``weights_only=True``: plain containers and tensors, no arbitrary objects."""
    try:
        return torch.load(ckpt / "state.pt", map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ValueError(f"checkpoint {str(ckpt)!r}: state.pt cannot be loaded safely ({e}).") from None


def load_weights(module: torch.nn.Module, ckpt: Path, *, ema: bool = True,
                 device: torch.device | str = "cpu") -> None:
    """Load ``ema.safetensors`` (or ``model.safetensors``) into ``module``, naming any mismatch."""
    name = "ema.safetensors" if ema else "model.safetensors"
    try:
        weights = load_file(ckpt / name, device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"checkpoint {str(ckpt)!r}: {name} cannot be read ({e}).") from None
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or unexpected:
        raise ValueError(f"checkpoint {str(ckpt)!r} does not fit this architecture: missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}.")
    for key, w in weights.items():
        if w.shape != own[key].shape:
            raise ValueError(f"checkpoint {str(ckpt)!r} does not fit this architecture: {key} has shape "
                             f"{tuple(w.shape)} in the checkpoint, {tuple(own[key].shape)} in the model.")
    module.load_state_dict(weights)


def check_resumable(saved: Config, cfg: Config) -> None:
    """Refuse to resume under a config that changes more than the run length or the logging."""
    changed = [d for d in differences(saved, cfg) if not d.startswith(RESUMABLE_CHANGES)]
    if changed:
        raise ValueError(f"the config differs from the checkpoint's in {changed[0]}"
                         f"{f' (and {len(changed) - 1} more)' if len(changed) > 1 else ''}; only "
                         f"{', '.join(RESUMABLE_CHANGES)} may change on --resume.")
