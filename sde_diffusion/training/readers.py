"""File-format readers for users' data: ``.npy``/``.npz``, PNG folders, MNIST IDX, CIFAR-10 pickles.

Each reader returns numpy arrays in one canonical layout: samples first, images as (N, C, H, W).
Every format error is a ``ValueError`` naming the file and what was expected. ``sde_diffusion.training.data``
turns these arrays into ``Dataset`` objects; nothing here knows about scaling or splits.
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
from pathlib import Path

import numpy as np


def _bad(path: Path, expected: str, got: str) -> ValueError:
    return ValueError(f"{path}: expected {expected}, got {got}.")


def image_layout(a: np.ndarray, path: Path) -> np.ndarray:
    """Canonical layout. 2-D (N, D) vectors as-is; 3-D (N, H, W) grey images -> (N, 1, H, W); 4-D
    (N, H, W, C) with C in {1, 3} and dim 1 not in {1, 3} is channels-last and is transposed; every
    other 4-D array is read as (N, C, H, W). A 1-D (N,) array is refused (one value per sample or one
    flattened sample? the file does not say): saved as (N, 1) it is N one-dimensional samples."""
    if a.ndim == 1:
        raise ValueError(f"{path}: a 1-D array of shape {a.shape} is not read as data; save one value per "
                         f"sample as shape (N, 1), e.g. np.save(path, x.reshape(-1, 1)).")
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4 and a.shape[3] in (1, 3) and a.shape[1] not in (1, 3):
        return a.transpose(0, 3, 1, 2)
    if a.ndim in (2, 4):
        return a
    raise _bad(path, "an array of shape (N, D), (N, H, W), (N, H, W, C) or (N, C, H, W)",
               f"shape {a.shape}")


def read_array(path: Path) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """(x, y, levels) from a ``.npy`` (x only) or ``.npz`` (key ``x``, or its only array; optional
    ``y`` labels and ``levels`` scalar). ``levels`` is None unless the file stores it."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise _bad(path, "a .npy or .npz file written by numpy (no pickled objects)", repr(err)) from None
    if isinstance(loaded, np.ndarray):
        return loaded, None, None
    with loaded:
        keys = list(loaded.keys())
        if "x" not in keys and len(keys) != 1:
            raise _bad(path, "an .npz with key 'x' (optional 'y', 'levels') or a single array",
                       f"keys {keys}")
        x = loaded["x" if "x" in keys else keys[0]]
        y = loaded["y"] if "y" in keys else None
        levels = loaded["levels"] if "levels" in keys else None
    if levels is not None:
        if levels.shape != () or levels.dtype.kind not in "iu" or int(levels) < 2:
            raise _bad(path, "'levels' to be an integer scalar >= 2", f"{levels!r}")
        levels = int(levels)
    return x, y, levels


def read_labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    """Labels as int64 of shape (n,), values >= 0."""
    y = np.asarray(y)
    if y.shape != (n,) or y.dtype.kind not in "iu" or (n and y.min() < 0):
        raise _bad(path, f"labels of shape ({n},) with integer values >= 0",
                   f"shape {y.shape}, dtype {y.dtype}")
    return y.astype(np.int64)


def read_png_folder(root: Path) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """uint8 images (N, C, H, W) from ``*.png`` files under ``root``, sorted by path.

    Either all PNGs lie directly in ``root`` (no labels) or all lie in its subfolders, one per class
    (label = index of the subfolder in sorted order). Mode L is grey (C = 1), RGB colour (C = 3);
    1-bit and palette images are converted to L and RGB. All images need the same size and channels.
    """
    from PIL import Image

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise _bad(root, "a folder of .png images (optionally in one subfolder per class)", "no .png files")
    depth = {len(p.relative_to(root).parts) for p in files}
    if depth not in ({1}, {2}):
        raise _bad(root, "all .png files directly in the folder or all in class subfolders",
                   "a mix of depths")
    classes = sorted({p.parent.name for p in files}) if depth == {2} else []
    images = []
    for p in files:
        try:
            with Image.open(p) as im:
                im = im.convert({"1": "L", "P": "RGB"}.get(im.mode, im.mode))
                if im.mode not in ("L", "RGB"):
                    raise _bad(p, "an 8-bit grey (L) or RGB image", f"mode {im.mode}")
                a = np.asarray(im, dtype=np.uint8)
        except OSError as err:
            raise _bad(p, "a readable PNG image", repr(err)) from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if images and a.shape != images[0].shape:
            raise _bad(p, f"the same channels x height x width as {files[0].name} {images[0].shape}",
                       f"{a.shape}")
        images.append(a)
    y = np.array([classes.index(p.parent.name) for p in files]) if classes else None
    return np.stack(images), y, classes


def _open_maybe_gz(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise _bad(path, "a gzip-compressed file", repr(err)) from None
    return data


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (MNIST format): magic 0x00 0x00 0x08 ndim, ndim big-endian int32
    sizes, then the bytes in C order. Optionally gzip-compressed (``.gz``)."""
    data = _open_maybe_gz(path)
    header = 4 + 4 * ndim
    if len(data) < header or data[:4] != bytes([0, 0, 8, ndim]):
        raise _bad(path, f"an IDX file of unsigned bytes with {ndim} dimensions (magic 00 00 08 0{ndim})",
                   f"header {data[:4].hex(' ') or 'empty'}")
    shape = tuple(int(v) for v in np.frombuffer(data, ">i4", ndim, 4))
    if len(data) - header != int(np.prod(shape)):
        raise _bad(path, f"{int(np.prod(shape))} data bytes for shape {shape}", f"{len(data) - header}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def find_file(root: Path, names: list[str]) -> Path:
    """The first of ``names`` (each also tried with ``.gz``) that exists in ``root``."""
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise ValueError(f"{root}: expected one of {', '.join(names)} (optionally .gz); none found.")


_NP_CORE = np._core if hasattr(np, "_core") else np.core  # numpy >= 2 renamed numpy.core
_SAFE_GLOBALS = {("_codecs", "encode"): codecs.encode,
                 ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
for _mod in ("numpy.core", "numpy._core"):
    _SAFE_GLOBALS[(f"{_mod}.multiarray", "_reconstruct")] = _NP_CORE.multiarray._reconstruct
    _SAFE_GLOBALS[(f"{_mod}.numeric", "_frombuffer")] = _NP_CORE.numeric._frombuffer


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: any other global is refused before it is
    looked up, so loading never runs arbitrary code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return _SAFE_GLOBALS[(module, name)]


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 3, 32, 32), labels (N,)) from one CIFAR-10 python batch: a pickled dict with
    ``data`` (N, 3072) uint8 rows of 1024 red, 1024 green, 1024 blue values and ``labels`` (N ints)."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise _bad(path, "a CIFAR-10 python batch (a pickled dict of numpy arrays and lists)", repr(err)) from None
    if not isinstance(batch, dict):
        raise _bad(path, "a pickled dict with keys 'data' and 'labels'", type(batch).__name__)
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    x = batch.get("data")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        got = f"shape {x.shape}, dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
        raise _bad(path, "'data' a uint8 array of shape (N, 3072)", got)
    y = read_labels(np.asarray(batch.get("labels", [])), len(x), path)
    if len(y) and y.max() > 9:
        raise _bad(path, "labels 0..9", f"max {y.max()}")
    return x.reshape(-1, 3, 32, 32), y
