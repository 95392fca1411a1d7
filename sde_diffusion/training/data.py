"""Data: built-in offline datasets and loaders for users' files.

Discrete data has ``levels`` values k = 0..L-1 per dimension. Level k owns the bin
[lo + k w, lo + (k + 1) w) of ``data_range`` = (lo, hi), with bin width w = (hi - lo) / L, and is
represented by x = lo + (k + u) w: u = 1/2 (the bin centre) for training and sampling, u ~ U[0, 1)
for uniform dequantization in the likelihood. The same map serves both, so bits/dim are those of
the discrete data (see ``dequantize`` and ``likelihood.bits_per_dim``). Discrete datasets use ``DATA_RANGE`` = (-1, 1);
continuous ones are scaled to roughly that range.

Datasets (``load_dataset(name, split=, path=, n=, seed=)``; ``available_datasets()``):
  ring, moons, swissroll, checkerboard   2-D toys, continuous, generated from a torch generator seeded
                                         2 * seed + (0 train, 1 test), so train and test differ;
                                         n defaults to 20,000 (train) / 5,000 (test). ``ring`` samples
                                         exactly ``analytic.ring2d()``, the analytic ground truth.
  digits    scikit-learn's 1,797 8x8 digits, 17 levels, labels 0..9, shape (1, 8, 8). Fixed split
            forever: ``numpy.random.RandomState(0).permutation(1797)``, first 300 indices (sorted) are
            test, the other 1,497 train.
  npy       ``path`` to .npy (x) or .npz (key 'x' or its only array; optional 'y', 'levels'). Layout
            rules in ``readers.image_layout``. Integer arrays are discrete levels 0..levels-1
            (levels = ``levels=`` (config ``data.levels``), else the file's 'levels'; uint8 without
            either defaults to 256 with a printed notice, other integer dtypes are refused); float
            arrays are continuous data used as-is and must be finite with |x| <= MAX_ABS.
  png       ``path`` to a folder of PNGs (grey or RGB, one size), labels from class subfolders; 256 levels.
  mnist     ``path`` to a folder with train-/t10k-images-idx3-ubyte and -labels-idx1-ubyte (or .gz).
  cifar10   ``path`` to cifar-10-batches-py (or its parent): data_batch_1..5 (train), test_batch.
npy and png have no split of their own: a fixed 10% test split, the first N // 10 indices of
``RandomState(0).permutation(N)``. ``n`` keeps a seeded random subset (``RandomState(seed)``) of a split
of real data, in stored order; for toys it is the number of samples generated.
A new dataset is one loader ``(split, path, n, seed) -> Dataset`` decorated with ``@register(name)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .. import checks
from . import readers
from ..dequantize import DATA_RANGE, continuous_to_levels, levels_to_continuous
from .toys import TOYS

MAX_ABS = 10.0
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Dataset:
    """Samples ``x`` (float32, N x shape, in ``DATA_RANGE`` for discrete data), optional long labels
    ``y`` (N,), ``levels`` per value for discrete data (None for continuous data), a ``name``,
    for users' files, ``source``: the file with the shape and dtype it was stored with, and
    ``levels_source``: where ``levels`` came from ("dataset", "npz", "argument", "uint8 default";
    None for continuous data)."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    levels: int | None = None
    name: str = "data"
    source: str | None = None
    levels_source: str | None = None

    def __post_init__(self):
        checks.float_tensor("Dataset.x", self.x)
        if self.x.ndim not in (2, 4) or len(self.x) == 0:
            raise ValueError(f"Dataset.x must have shape (N, D) or (N, C, H, W) with N >= 1, "
                             f"got {tuple(self.x.shape)}.")
        if self.y is not None and (self.y.dtype != torch.long or self.y.shape != (len(self.x),)):
            raise ValueError(f"Dataset.y must be a long tensor of shape ({len(self.x)},), "
                             f"got {self.y.dtype} {tuple(self.y.shape)}.")
        if self.levels is not None and (isinstance(self.levels, bool) or not isinstance(self.levels, int)
                                        or self.levels < 2):
            raise ValueError(f"levels must be an integer >= 2 or None, got {self.levels}.")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample shape, e.g. (2,) or (1, 8, 8)."""
        return tuple(self.x.shape[1:])

    @property
    def dim(self) -> int:
        """Values per sample, D = prod(shape): the denominator of bits/dim."""
        return math.prod(self.shape)

    @property
    def num_classes(self) -> int | None:
        """max(y) + 1, or None without labels."""
        return None if self.y is None else int(self.y.max()) + 1

    def discrete(self) -> torch.Tensor:
        """The integer levels k (long, shaped like x) of discrete data: ``continuous_to_levels(x)``."""
        if self.levels is None:
            raise ValueError(f"dataset {self.name!r} is continuous (levels=None); discrete() needs "
                             "discrete data such as digits or images.")
        return continuous_to_levels(self.x, self.levels, DATA_RANGE)


Loader = Callable[[str, "Path | None", "int | None", int], Dataset]
DATASETS: dict[str, Loader] = {}
_NEEDS_PATH: set[str] = set()


def register(name: str, *, needs_path: bool = False):
    """Decorator adding a loader ``(split, path, n, seed) -> Dataset`` to ``DATASETS``."""
    def add(loader: Loader) -> Loader:
        DATASETS[name] = loader
        if needs_path:
            _NEEDS_PATH.add(name)
        return loader
    return add


def available_datasets() -> list[str]:
    return sorted(DATASETS)


def load_dataset(name: str, *, split: str = "train", path: str | Path | None = None,
                 n: int | None = None, seed: int = 0, levels: int | None = None) -> Dataset:
    """Load dataset ``name`` (see the module docstring) on CPU, ``split`` "train" or "test";
    ``levels`` (``npy`` only): the levels of the file's integer values, over the file's own."""
    checks.one_of("dataset", name, available_datasets())
    if levels is not None:
        checks.positive_int("levels", levels)
        if name != "npy":
            raise ValueError(f"data.levels applies to data.name 'npy' (a file of integer levels); dataset "
                             f"{name!r} has its own levels: remove data.levels.")
    checks.one_of("split", split, SPLITS)
    if n is not None:
        checks.positive_int("n", n)
    if name in _NEEDS_PATH and path is None:
        raise ValueError(f"dataset {name!r} reads users' files: pass path=<file or folder>.")
    if name not in _NEEDS_PATH and path is not None:
        raise ValueError(f"dataset {name!r} is built in and takes no path, got path={path!r}.")
    if path is not None and not Path(path).exists():
        raise ValueError(f"dataset {name!r}: path {path} does not exist.")
    path = None if path is None else Path(path)
    ds = DATASETS[name](split, path, n, seed) if levels is None else _npy(split, path, n, seed, levels)
    return ds if n is None else _take(ds, n, seed)


def _take(ds: Dataset, n: int, seed: int) -> Dataset:
    """A seeded random subset of n samples, kept in stored order."""
    if n > len(ds):
        raise ValueError(f"n={n} exceeds the {len(ds)} samples of dataset {ds.name!r}.")
    if n == len(ds):
        return ds
    idx = torch.from_numpy(np.sort(np.random.RandomState(seed).permutation(len(ds))[:n]))
    return Dataset(ds.x[idx], None if ds.y is None else ds.y[idx], ds.levels, ds.name, ds.source, ds.levels_source)


def fixed_split(count: int, split: str, n_test: int) -> np.ndarray:
    """Sorted indices of ``split``: test = the first n_test of RandomState(0).permutation(count)."""
    perm = np.random.RandomState(0).permutation(count)
    return np.sort(perm[:n_test] if split == "test" else perm[n_test:])


LEVELS_HOW = ("store them in the .npz as a 'levels' entry, or pass --levels (nll) or set data.levels "
              "in the config (training)")


def resolve_levels(x: np.ndarray, levels: int | None, levels_source: str | None, source, stored: str
                   ) -> tuple[int, str]:
    """(levels, where they came from) of integer data: ``levels`` as given, else uint8's 256 with a
    printed one-line notice; other integer dtypes without levels are refused (a one-line ValueError
    naming ``levels``), since their range says nothing about the number of levels."""
    if levels is not None:
        return levels, levels_source or "argument"
    if x.dtype == np.uint8:
        print(f"note: {source} ({stored}): uint8 data without 'levels', read as 256 levels "
              f"(to change it, {LEVELS_HOW}).", flush=True)
        return 256, "uint8 default"
    raise ValueError(f"{source} ({stored}): integer data needs its number of levels (values here span "
                     f"{x.min() if x.size else 0}..{x.max() if x.size else 0}): {LEVELS_HOW}.")


def from_arrays(x: np.ndarray, y: np.ndarray | None, levels: int | None, name: str, source: Path,
                stored: str | None = None, levels_source: str | None = None) -> Dataset:
    """A Dataset from canonical arrays: integer x are levels 0..levels-1 mapped to bin centres,
    float x are continuous values taken as-is (finite, |x| <= MAX_ABS). ``stored``: the file's own
    "shape (...), dtype" where a reader changed the layout (default: x's). ``levels_source``: where
    given ``levels`` came from (default "argument"); integer data without levels: ``resolve_levels``."""
    stored = stored or describe(x)
    if x.dtype.kind in "ui":
        levels, levels_source = resolve_levels(x, levels, levels_source, source, stored)
        if x.size and (x.min() < 0 or x.max() > levels - 1):
            raise ValueError(f"{source} ({stored}): expected integer levels 0..{levels - 1}, got values in "
                             f"[{x.min()}, {x.max()}] (store 'levels' in the .npz for other ranges).")
        k = x.astype(np.uint8 if levels <= 256 else np.int64)  # 8-bit images stay small until scaled
        xt = levels_to_continuous(torch.from_numpy(k), levels, DATA_RANGE)
    elif x.dtype.kind == "f":
        if not np.isfinite(x).all() or np.abs(x).max(initial=0) > MAX_ABS:
            raise ValueError(f"{source} ({stored}): float data is used as-is and must be finite with |x| <= "
                             f"{MAX_ABS:g}; rescale it to about [-1, 1] or store integer levels.")
        xt, levels, levels_source = torch.from_numpy(x.astype(np.float32)), None, None
    else:
        raise ValueError(f"{source} ({stored}): expected an integer or float array, got dtype {x.dtype}.")
    yt = None if y is None else torch.from_numpy(readers.read_labels(y, len(x), source))
    return Dataset(xt.contiguous(), yt, levels, name, f"{source} ({stored})", levels_source)


def describe(x: np.ndarray) -> str:
    """"shape (N, ...), dtype" of an array, as error messages name data."""
    return f"shape {tuple(x.shape)}, {x.dtype}"


def load_file(path: str | Path, *, levels: int | None = None, n: int | None = None, seed: int = 0) -> Dataset:
    """Every sample of a users' .npy/.npz file (no split), by the rules of dataset ``npy``
    (``readers.read_array``, ``readers.image_layout``, ``from_arrays``); ``levels`` overrides the
    file's for integer data (also float arrays of whole numbers 0..levels-1); ``n``: a seeded subset.
    Integer data with neither is refused unless uint8 (256, with a notice): ``resolve_levels``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {str(path)!r} does not exist.")
    x, y, levels, how, stored = _read_npy(path, levels)
    ds = from_arrays(readers.image_layout(x, path), y, levels, "npy", path, stored, how)
    return ds if n is None else _take(ds, n, seed)


def _read_npy(path: Path, levels: int | None):
    """(x, y, levels, levels source, stored shape and dtype) of a .npy/.npz: ``levels`` (an argument)
    over the file's own (whole-number floats with an argument become integers)."""
    x, y, stored_levels = readers.read_array(path)
    stored = describe(x)
    if levels is None:
        return x, y, stored_levels, (None if stored_levels is None else "npz"), stored
    checks.positive_int("levels", levels)
    if x.dtype.kind == "f":
        if not (np.isfinite(x).all() and (x == np.round(x)).all()):
            raise ValueError(f"{path} ({stored}): levels={levels} needs whole numbers 0..{levels - 1}, "
                             "got non-integer floats (continuous data take no levels).")
        x = x.astype(np.int64)
    return x, y, levels, "argument", stored


def accepted_shapes(kind: str, params: dict, event_shape: tuple | None = None) -> str:
    """The data shapes a model accepts, in words: a trained model's ``event_shape`` exactly; before
    training an MLP any (N, D) and a U-Net any (N, C, S, S) with S = ``image_size``."""
    if event_shape is not None:
        return f"(N, {', '.join(map(str, event_shape))})"
    if kind == "mlp":
        return "(N, D) vectors"
    return f"(N, C, {params.get('image_size', 8)}, {params.get('image_size', 8)}) images"


def check_model_data(ds: Dataset, kind: str, params: dict, event_shape: tuple | None = None,
                     what: str = "the model") -> None:
    """Refuse data of a shape ``kind`` (with ``params``; a trained model: its ``event_shape``) does not
    accept, before any compute: a one-line ValueError naming the file, its stored shape and dtype,
    and the accepted shapes."""
    shape = ds.shape
    if event_shape is not None:
        ok = shape == tuple(event_shape)
    elif kind == "mlp":
        ok = len(shape) == 1
    else:
        size = params.get("image_size", 8)
        ok = len(shape) == 3 and shape[1:] == (size, size)
    if not ok:
        read_as = f"read as (N, {', '.join(map(str, shape))})"
        raise ValueError(f"{ds.source or ds.name}: samples {read_as}; {what} ({kind}) accepts "
                         f"{accepted_shapes(kind, params, event_shape)}.")


# -- built-in toys (``toys.py``) ----------------------------------------------------------------
TOY_SIZES = (20_000, 5_000)  # default n for train, test


def _register_toy(name: str, sample: Callable[[int, torch.Generator], torch.Tensor]) -> None:
    """Serve a 2-D toy ``sample(n, generator) -> (n, 2) float64`` as a continuous dataset."""
    @register(name)
    def load(split: str, path, n: int | None, seed: int) -> Dataset:
        n = TOY_SIZES[SPLITS.index(split)] if n is None else n
        gen = torch.Generator().manual_seed(2 * seed + SPLITS.index(split))
        return Dataset(sample(n, gen).float(), None, None, name)


for _name, _sample in TOYS.items():
    _register_toy(_name, _sample)


# -- real data --------------------------------------------------------------------------------
DIGITS_TEST = 300


@register("digits")
def _digits(split: str, path, n, seed) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    idx = fixed_split(len(bunch.images), split, DIGITS_TEST)
    return from_arrays(bunch.images[idx, None].astype(np.int64), bunch.target[idx], 17, "digits",
                       Path("sklearn.datasets.load_digits"), levels_source="dataset")


def _tenth(x: np.ndarray, y: np.ndarray | None, levels, split: str, name: str, source: Path,
           stored: str | None = None, levels_source: str | None = "dataset") -> Dataset:
    """The fixed 10% test split of data that has none (``stored``: the file's shape and dtype)."""
    if split == "test" and len(x) < 10:
        raise ValueError(f"{source}: a test split needs at least 10 samples, got {len(x)}.")
    y = None if y is None else readers.read_labels(y, len(x), source)
    idx = fixed_split(len(x), split, len(x) // 10)
    return from_arrays(x[idx], None if y is None else y[idx], levels, name, source, stored, levels_source)


@register("npy", needs_path=True)
def _npy(split: str, path: Path, n, seed, levels: int | None = None) -> Dataset:
    x, y, levels, how, stored = _read_npy(path, levels)
    return _tenth(readers.image_layout(x, path), y, levels, split, "npy", path, stored, how)


@register("png", needs_path=True)
def _png(split: str, path: Path, n, seed) -> Dataset:
    if not path.is_dir():
        raise ValueError(f"{path}: expected a folder of .png images, got a file.")
    x, y, _ = readers.read_png_folder(path)
    return _tenth(x, y, 256, split, "png", path)


@register("mnist", needs_path=True)
def _mnist(split: str, path: Path, n, seed) -> Dataset:
    stem = "train" if split == "train" else "t10k"
    images = readers.find_file(path, [f"{stem}-images-idx3-ubyte", f"{stem}-images.idx3-ubyte"])
    labels = readers.find_file(path, [f"{stem}-labels-idx1-ubyte", f"{stem}-labels.idx1-ubyte"])
    x, y = readers.read_idx(images, 3), readers.read_idx(labels, 1)
    if len(y) != len(x):
        raise ValueError(f"{labels}: expected {len(x)} labels (one per image), got {len(y)}.")
    return from_arrays(x[:, None], y, 256, "mnist", images, levels_source="dataset")


@register("cifar10", needs_path=True)
def _cifar10(split: str, path: Path, n, seed) -> Dataset:
    root = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [readers.read_cifar_batch(readers.find_file(root, [name])) for name in names]
    return from_arrays(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                       256, "cifar10", root, levels_source="dataset")


# -- minibatches ------------------------------------------------------------------------------
def batches(ds: Dataset, batch_size: int, *, generator: torch.Generator | None = None,
            device: torch.device | str | None = None, start: int = 0
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Endless (x, y) minibatches on ``device`` (y None without labels). The index stream is
    consecutive random permutations of 0..N-1 (epochs without replacement, batches may span two
    epochs), each ``torch.randperm(N, generator=generator)``: the sequence is a pure function of the
    generator's state when called. ``start`` skips that many batches (to resume training exactly)."""
    checks.positive_int("batch_size", batch_size)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an integer >= 0, got {start!r}.")
    x = ds.x.to(device)
    y = None if ds.y is None else ds.y.to(x.device)
    count, gen_device = len(ds), (generator.device if generator is not None else "cpu")
    for _ in range(start * batch_size // count):  # whole skipped epochs advance the generator
        torch.randperm(count, generator=generator, device=gen_device)
    pending = torch.randperm(count, generator=generator, device=gen_device)[start * batch_size % count:]
    while True:
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(count, generator=generator, device=gen_device)])
        idx, pending = pending[:batch_size].to(x.device), pending[batch_size:]
        yield x[idx], (None if y is None else y[idx])
