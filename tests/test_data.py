"""Data: the level map, the built-in datasets' documented statistics and splits, each file loader on
small files written here in exactly its format, the errors for bad files, and minibatching.

Statistical checks compare a sample mean with its exact expectation to within 5 standard errors,
SE = sample std / sqrt(n) (n >= 5,000, so the SE estimate itself is good to ~1%); with a fixed seed a
correct implementation fails with probability ~6e-7, while the wrong constants they guard against
(noise level, radius, centring) shift the mean by tens of SEs.
"""

import gzip
import hashlib
import math
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from sde_diffusion.training import data
from sde_diffusion.training.data import (DATASETS, Dataset, batches, continuous_to_levels, fixed_split,
                                levels_to_continuous, load_dataset)


def assert_mean(values: torch.Tensor, expected: float, k: float = 5.0):
    values = values.double()
    se = values.std() / math.sqrt(len(values))
    assert abs(float(values.mean()) - expected) < k * float(se), (float(values.mean()), expected, float(se))


# -- the level map ----------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [2, 17, 256])
def test_level_map_round_trips_and_dequantized_values_stay_in_their_bin(levels):
    k = torch.arange(levels)
    centres = levels_to_continuous(k, levels)
    assert torch.equal(continuous_to_levels(centres, levels), k)
    assert float(centres.min()) > -1 and float(centres.max()) < 1
    # x = lo + (k + u) w with u ~ U[0, 1) lies in bin k in exact arithmetic. In floating point the bin
    # edges lo + k w are not representable for w = 2/17, so (x - lo) / w carries a relative error of a
    # few ulps: ~1e-13 bins in float64, ~256 * 1e-7 = 3e-5 bins in float32 at 256 levels. Values that
    # close to an edge may land in the neighbouring bin, so u is kept 1e-9 (float64) / 1e-3 (float32)
    # away from the edges; the bulk of U[0, 1) is covered.
    for dtype, margin in ((torch.float64, 1e-9), (torch.float32, 1e-3)):
        u = torch.rand(levels, 200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        u = torch.cat([u, torch.zeros(levels, 1, dtype=torch.float64), torch.ones(levels, 1, dtype=torch.float64)], 1)
        u = margin + (1 - 2 * margin) * u
        kk = k[:, None].expand_as(u)
        x = levels_to_continuous(kk, levels, u=u.to(dtype), dtype=dtype)
        assert x.dtype == dtype and torch.equal(continuous_to_levels(x, levels), kk)


# -- built-in toys ------------------------------------------------------------------------------------
def test_ring_is_the_analytic_ring_mixture():
    """|x|^2 = |mu + s z|^2 = 1 + 2 s mu.z + s^2 |z|^2 with |mu| = 1, s = 0.05: E|x|^2 = 1 + 2 s^2 =
    1.005 (a wrong s = 0 would sit 7 SE away at n = 20,000). Each of the 8 sectors holds one mode
    (leaving a sector needs a 7.6 s deviation), so sector counts are Binomial(n, 1/8)."""
    ds = load_dataset("ring")
    assert (len(ds), ds.shape, ds.levels, ds.y) == (20_000, (2,), None, None)
    assert_mean(ds.x.double().square().sum(1), 1 + 2 * 0.05**2)
    sector = torch.floor(torch.atan2(ds.x[:, 1], ds.x[:, 0]) / (2 * math.pi / 8) + 0.5).long() % 8
    counts = torch.bincount(sector, minlength=8).double()
    assert float((counts - len(ds) / 8).abs().max()) < 5 * math.sqrt(len(ds) * (1 / 8) * (7 / 8))


def test_moons_statistics():
    """Upper moon (cos t, sin t), lower (1 - cos t, 1/2 - sin t), t ~ U(0, pi), minus c = (1/2, 1/4),
    over 1.5, plus N(0, 0.05^2): E x = 0; E x1^2 = (E cos^2 - E cos + 1/4) / 2.25 + s^2 = 0.75 / 2.25
    + s^2; E x2^2 = (E sin^2 - E sin / 2 + 1/16) / 2.25 + s^2 = (0.5625 - 1/pi) / 2.25 + s^2."""
    x = load_dataset("moons").x
    assert_mean(x[:, 0], 0.0)
    assert_mean(x[:, 1], 0.0)
    assert_mean(x[:, 0].square(), 0.75 / 2.25 + 0.05**2)
    assert_mean(x[:, 1].square(), (0.5625 - 1 / math.pi) / 2.25 + 0.05**2)


def test_swissroll_statistics():
    """r ~ U(1/3, 1): E|x|^2 = E r^2 + 2 s^2 = (1 - 1/27) / (3 * 2/3) + 2 * 0.02^2 = 13/27 + 0.0008."""
    x = load_dataset("swissroll", split="test").x
    assert len(x) == 5_000
    assert_mean(x.double().square().sum(1), 13 / 27 + 2 * 0.02**2)


def test_checkerboard_statistics():
    """Uniform on the 8 cells with i + j even: every point in such a cell; each coordinate is U(-1, 1)
    (E x = 0, E x^2 = 1/3); E[x1 x2] = mean over the 8 cells of c_i c_j = 0.5 / 8 = 0.0625."""
    x = load_dataset("checkerboard").x
    cell = torch.floor((x.double() + 1) / 0.5).long()
    assert bool(((cell >= 0) & (cell <= 3)).all()) and bool((cell.sum(1) % 2 == 0).all())
    for d in range(2):
        assert_mean(x[:, d], 0.0)
        assert_mean(x[:, d].square(), 1 / 3)
    assert_mean(x[:, 0] * x[:, 1], 0.0625)


@pytest.mark.parametrize("name", ["ring", "moons", "swissroll", "checkerboard"])
def test_toys_are_seeded_per_split(name):
    train, again = load_dataset(name, n=100), load_dataset(name, n=100)
    assert torch.equal(train.x, again.x) and train.x.dtype == torch.float32
    assert not torch.equal(train.x, load_dataset(name, split="test", n=100).x)
    assert not torch.equal(train.x, load_dataset(name, n=100, seed=1).x)
    assert float(train.x.abs().max()) < 1.5


# -- digits -------------------------------------------------------------------------------------------
def test_digits_fixed_split_levels_and_labels():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    assert (len(train), len(test), train.shape, train.dim, train.levels, train.num_classes) == \
        (1_497, 300, (1, 8, 8), 64, 17, 10)
    test_idx, train_idx = fixed_split(1797, "test", 300), fixed_split(1797, "train", 300)
    # the held-out indices are fixed forever: this digest must never change
    assert hashlib.sha256(test_idx.astype("<i8").tobytes()).hexdigest() == \
        "165261fd5435ebe5b78d0402945fe29815d725bf648152d8a18d81bdb9bc6e10"
    assert not set(test_idx) & set(train_idx) and len(set(test_idx) | set(train_idx)) == 1797
    for ds, idx in ((train, train_idx), (test, test_idx)):
        assert torch.equal(ds.discrete(), torch.from_numpy(bunch.images[idx, None].astype(np.int64)))
        assert torch.equal(ds.y, torch.from_numpy(bunch.target[idx]).long())
    assert torch.equal(train.x, levels_to_continuous(train.discrete(), 17))


# -- users' files: npy / npz ----------------------------------------------------------------------------
def test_npy_float_vectors_are_taken_as_is_with_a_fixed_tenth_held_out(tmp_path):
    x = np.random.RandomState(1).uniform(-1, 1, size=(50, 3)).astype(np.float64)
    np.save(tmp_path / "v.npy", x)
    train, test = (load_dataset("npy", split=s, path=tmp_path / "v.npy") for s in ("train", "test"))
    assert (len(train), len(test), train.levels, train.y, train.shape) == (45, 5, None, None, (3,))
    assert torch.equal(test.x, torch.from_numpy(x[fixed_split(50, "test", 5)]).float())
    assert torch.equal(torch.cat([train.x, test.x]).sort(0).values, torch.from_numpy(x).float().sort(0).values)


@pytest.mark.parametrize("layout,shape", [("nhwc", (20, 5, 4, 3)), ("nchw", (20, 3, 5, 4)), ("nhw", (20, 5, 4))])
def test_npz_uint8_images_layouts_and_labels(tmp_path, layout, shape):
    imgs = np.random.RandomState(2).randint(0, 256, size=shape).astype(np.uint8)
    labels = np.arange(20) % 4
    np.savez(tmp_path / "i.npz", x=imgs, y=labels)
    ds = load_dataset("npy", split="train", path=str(tmp_path / "i.npz"))
    nchw = {"nhwc": lambda: imgs.transpose(0, 3, 1, 2), "nchw": lambda: imgs, "nhw": lambda: imgs[:, None]}[layout]()
    idx = fixed_split(20, "train", 2)
    assert ds.levels == 256 and ds.shape == nchw.shape[1:]
    assert torch.equal(ds.discrete(), torch.from_numpy(nchw[idx].astype(np.int64)))
    assert torch.equal(ds.y, torch.from_numpy(labels[idx]))


def test_npz_integer_levels_and_single_unnamed_array(tmp_path):
    k = np.random.RandomState(3).randint(0, 17, size=(30, 1, 8, 8))
    np.savez(tmp_path / "d.npz", x=k, levels=17)
    assert load_dataset("npy", path=tmp_path / "d.npz").levels == 17
    np.savez(tmp_path / "one.npz", k.astype(np.uint8))
    ds = load_dataset("npy", path=tmp_path / "one.npz", split="test")
    assert ds.levels == 256 and torch.equal(ds.discrete(), torch.from_numpy(k[fixed_split(30, "test", 3)]))


@pytest.mark.parametrize("content,match", [
    (dict(x=np.full((20, 2), 50.0)), "must be finite with"),
    (dict(x=np.array([[np.nan, 0.0]] * 20)), "must be finite with"),
    (dict(x=np.full((20, 4), 300, dtype=np.int64), levels=256), r"integer levels 0\.\.255"),
    (dict(x=np.full((20, 4), 3, dtype=np.int64)), r"needs its number of levels.*'levels'"),  # no silent 256
    (dict(x=np.zeros((20, 4), np.uint8), levels=2, y=np.zeros(20, int) + 2), None),  # valid
    (dict(x=np.full((20, 4), 3), levels=2), r"integer levels 0\.\.1"),
    (dict(a=np.zeros((20, 2)), b=np.zeros((20, 2))), "with key 'x'"),
    (dict(x=np.zeros((20, 2)), y=np.zeros(19, int)), r"labels of shape \(20,\)"),
    (dict(x=np.zeros((20, 2)), y=np.zeros(20)), "integer values"),
    (dict(x=np.zeros((20, 2, 2, 2, 2))), "an array of shape"),
    (dict(x=np.zeros((20, 2), dtype=complex)), "integer or float array"),
    (dict(x=np.zeros((20, 2), np.uint8), levels=np.array([2, 3])), "'levels' to be an integer scalar"),
])
def test_npz_errors_name_the_file(tmp_path, content, match):
    np.savez(tmp_path / "bad.npz", **content)
    if match is None:
        assert load_dataset("npy", path=tmp_path / "bad.npz").num_classes == 3
        return
    with pytest.raises(ValueError, match=match) as err:
        load_dataset("npy", path=tmp_path / "bad.npz")
    assert "bad.npz" in str(err.value)


def test_npy_unreadable_pickled_and_too_small(tmp_path):
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match="junk.npy: expected a .npy or .npz"):
        load_dataset("npy", path=tmp_path / "junk.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}] * 20, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy: expected a .npy or .npz"):
        load_dataset("npy", path=tmp_path / "obj.npy")
    np.save(tmp_path / "tiny.npy", np.zeros((9, 2)))
    with pytest.raises(ValueError, match="test split needs at least 10 samples"):
        load_dataset("npy", path=tmp_path / "tiny.npy", split="test")


# -- users' files: PNG folders ----------------------------------------------------------------------------
def _write_pngs(root, arrays, mode):
    root.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a, mode).save(root / f"{i:03d}.png")


def test_png_folder_with_class_subfolders(tmp_path):
    rng = np.random.RandomState(4)
    cats, dogs = rng.randint(0, 256, (6, 5, 4, 3), dtype=np.uint8), rng.randint(0, 256, (14, 5, 4, 3), dtype=np.uint8)
    _write_pngs(tmp_path / "cat", cats, "RGB")
    _write_pngs(tmp_path / "dog", dogs, "RGB")
    ds = load_dataset("png", path=tmp_path, split="test")
    every = np.concatenate([cats, dogs]).transpose(0, 3, 1, 2)  # files sorted: cat/*, dog/*
    idx = fixed_split(20, "test", 2)
    assert (ds.levels, ds.shape, len(ds)) == (256, (3, 5, 4), 2)
    assert torch.equal(ds.discrete(), torch.from_numpy(every[idx].astype(np.int64)))
    assert torch.equal(ds.y, torch.from_numpy((idx >= 6).astype(np.int64)))


def test_png_flat_grey_folder(tmp_path):
    grey = np.random.RandomState(5).randint(0, 256, (12, 6, 7), dtype=np.uint8)
    _write_pngs(tmp_path, grey, "L")
    ds = load_dataset("png", path=tmp_path)
    assert ds.y is None and ds.shape == (1, 6, 7)
    assert torch.equal(ds.discrete()[:, 0], torch.from_numpy(grey[fixed_split(12, "train", 1)].astype(np.int64)))


@pytest.mark.parametrize("case,match", [
    ("sizes", "the same channels x height x width"),
    ("modes", "the same channels x height x width"),
    ("rgba", r"8-bit grey \(L\) or RGB image"),
    ("depth", "a mix of depths"),
    ("empty", "no .png files"),
    ("corrupt", "a readable PNG image"),
])
def test_png_errors(tmp_path, case, match):
    grey = np.zeros((3, 4, 4), np.uint8)
    _write_pngs(tmp_path, grey, "L")
    if case == "sizes":
        Image.fromarray(np.zeros((5, 4), np.uint8), "L").save(tmp_path / "z.png")
    elif case == "modes":
        Image.fromarray(np.zeros((4, 4, 3), np.uint8), "RGB").save(tmp_path / "z.png")
    elif case == "rgba":
        Image.fromarray(np.zeros((4, 4, 4), np.uint8), "RGBA").save(tmp_path / "z.png")
    elif case == "depth":
        _write_pngs(tmp_path / "sub", grey, "L")
    elif case == "empty":
        tmp_path = tmp_path / "empty"
        tmp_path.mkdir()
    elif case == "corrupt":
        (tmp_path / "z.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=match):
        load_dataset("png", path=tmp_path)


# -- users' files: MNIST IDX ----------------------------------------------------------------------------------
def _idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">i4").tobytes() + a.astype(np.uint8).tobytes()


def _write_mnist(root, gz: bool):
    rng = np.random.RandomState(6)
    arrays = {"train-images-idx3-ubyte": rng.randint(0, 256, (12, 5, 4)), "train-labels-idx1-ubyte": np.arange(12) % 10,
              "t10k-images-idx3-ubyte": rng.randint(0, 256, (3, 5, 4)), "t10k-labels-idx1-ubyte": np.array([7, 8, 9])}
    for name, a in arrays.items():
        raw = _idx_bytes(a)
        (root / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    arrays = _write_mnist(tmp_path, gz)
    for split, stem in (("train", "train"), ("test", "t10k")):
        ds = load_dataset("mnist", path=tmp_path, split=split)
        assert ds.levels == 256 and ds.shape == (1, 5, 4)
        assert torch.equal(ds.discrete()[:, 0], torch.from_numpy(arrays[f"{stem}-images-idx3-ubyte"]).long())
        assert torch.equal(ds.y, torch.from_numpy(arrays[f"{stem}-labels-idx1-ubyte"]).long())


@pytest.mark.parametrize("case,match", [
    ("magic", r"IDX file of unsigned bytes with 3 dimensions"),
    ("truncated", "data bytes for shape"),
    ("count", "expected 12 labels"),
    ("missing", "train-labels-idx1-ubyte"),
    ("badgzip", "a gzip-compressed file"),
])
def test_mnist_errors(tmp_path, case, match):
    _write_mnist(tmp_path, gz=False)
    images, labels = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    if case == "magic":
        images.write_bytes(_idx_bytes(np.zeros((12, 20))))
    elif case == "truncated":
        images.write_bytes(images.read_bytes()[:-1])
    elif case == "count":
        labels.write_bytes(_idx_bytes(np.zeros(11)))
    elif case == "missing":
        labels.unlink()
    elif case == "badgzip":
        images.unlink()
        (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=match):
        load_dataset("mnist", path=tmp_path)


# -- users' files: CIFAR-10 python batches ----------------------------------------------------------------------
def _write_cifar(root, per_batch=2):
    root.mkdir(parents=True, exist_ok=True)
    rng, batches_ = np.random.RandomState(7), {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"batch_label": name.encode(), b"labels": list(rng.randint(0, 10, per_batch)),
             b"data": rng.randint(0, 256, (per_batch, 3072)).astype(np.uint8),
             b"filenames": [b"img%d.png" % i for i in range(per_batch)]}
        d[b"labels"] = [int(v) for v in d[b"labels"]]
        raw = pickle.dumps(d, protocol=2)
        if name == "test_batch":  # as in the real files, written by numpy < 2: numpy.core.multiarray
            raw = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        (root / name).write_bytes(raw)
        batches_[name] = d
    return batches_


def test_cifar10_batches(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-py")
    train = load_dataset("cifar10", path=tmp_path)  # the parent folder is accepted too
    test = load_dataset("cifar10", path=tmp_path / "cifar-10-batches-py", split="test")
    assert (len(train), len(test), train.shape, train.levels) == (10, 2, (3, 32, 32), 256)
    first = written["data_batch_1"][b"data"][0]
    k = train.discrete()[0]
    for c in range(3):  # rows hold 1024 red, then 1024 green, then 1024 blue values, row-major 32 x 32
        assert torch.equal(k[c], torch.from_numpy(first[1024 * c:1024 * (c + 1)].reshape(32, 32)).long())
    labels = sum((written[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert train.y.tolist() == labels and test.y.tolist() == written["test_batch"][b"labels"]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_cifar10_refuses_pickled_code_and_bad_batches(tmp_path):
    _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps({b"data": _Exploit(str(marker))}, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_2: expected a CIFAR-10 python batch.*refused global"):
        load_dataset("cifar10", path=tmp_path)
    assert not marker.exists()
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"data_batch_2: expected 'data' a uint8 array of shape \(N, 3072\)"):
        load_dataset("cifar10", path=tmp_path)
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}))
    with pytest.raises(ValueError, match=r"data_batch_2: expected labels of shape \(2,\)"):
        load_dataset("cifar10", path=tmp_path)
    (tmp_path / "data_batch_2").unlink()
    with pytest.raises(ValueError, match="expected one of data_batch_2"):
        load_dataset("cifar10", path=tmp_path)


# -- registry, arguments, Dataset -------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(name="nope"), "unknown dataset 'nope'; allowed: checkerboard, cifar10, digits"),
    (dict(name="ring", split="val"), "unknown split 'val'; allowed: train, test"),
    (dict(name="npy"), "pass path="),
    (dict(name="ring", path="x.npy"), "built in and takes no path"),
    (dict(name="npy", path="/nonexistent/x.npy"), "does not exist"),
    (dict(name="digits", split="test", n=301), "n=301 exceeds the 300 samples"),
    (dict(name="ring", n=0), "n must be an integer >= 1"),
])
def test_load_dataset_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(kwargs.pop("name"), **kwargs)


def test_n_takes_a_seeded_subset_in_stored_order():
    full = load_dataset("digits", split="test")
    a, b, c = (load_dataset("digits", split="test", n=50, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    idx = np.sort(np.random.RandomState(0).permutation(300)[:50])
    assert torch.equal(a.x, full.x[idx]) and torch.equal(a.y, full.y[idx])


def test_a_new_dataset_is_one_registered_loader(monkeypatch):
    monkeypatch.setattr(data, "DATASETS", dict(DATASETS))
    data.register("zeros")(lambda split, path, n, seed: Dataset(torch.zeros(n or 4, 3), name="zeros"))
    assert "zeros" in data.available_datasets()
    assert load_dataset("zeros", n=7).shape == (3,)


def test_dataset_checks_and_properties():
    ds = Dataset(torch.zeros(4, 2), name="toy")
    assert (ds.shape, ds.dim, ds.num_classes, len(ds)) == ((2,), 2, None, 4)
    with pytest.raises(ValueError, match="'toy' is continuous"):
        ds.discrete()
    with pytest.raises(ValueError, match=r"shape \(N, D\) or \(N, C, H, W\)"):
        Dataset(torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="Dataset.y must be a long tensor of shape"):
        Dataset(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="levels must be an integer >= 2"):
        Dataset(torch.zeros(4, 2), levels=1)
    with pytest.raises(TypeError, match="floating-point"):
        Dataset(torch.zeros(4, 2, dtype=torch.long))


# -- minibatches -------------------------------------------------------------------------------------------------
def test_batches_are_epochs_of_permutations_and_resume_exactly(device):
    count, size = 10, 4
    ds = Dataset(torch.arange(count, dtype=torch.float32)[:, None], torch.arange(count) % 3)
    stream = batches(ds, size, generator=torch.Generator().manual_seed(0), device=device)
    first = [next(stream) for _ in range(10)]  # 40 indices = 4 whole epochs
    seen = torch.cat([x[:, 0] for x, _ in first]).long().cpu()
    assert first[0][0].device.type == torch.device(device).type
    for e in range(4):
        assert sorted(seen[e * count:(e + 1) * count].tolist()) == list(range(count))
    assert all(torch.equal(y.cpu(), x[:, 0].long().cpu() % 3) for x, y in first)
    for start in (1, 2, 5, 7):  # mid-epoch and at epoch boundaries (start * size % count == 0)
        resumed = batches(ds, size, generator=torch.Generator().manual_seed(0), device=device, start=start)
        assert torch.equal(next(resumed)[0], first[start][0])
    big = batches(ds, 25, generator=torch.Generator().manual_seed(1))  # a batch larger than the data
    x, _ = next(big)
    assert len(x) == 25 and torch.equal(torch.bincount(x[:20, 0].long()), torch.full((count,), 2))
    unlabeled = next(batches(Dataset(ds.x), 3, generator=torch.Generator().manual_seed(0)))
    assert unlabeled[1] is None


# -- no silent levels: where integer data's levels come from --------------------------------------
def test_integer_file_without_levels_is_refused_naming_levels(tmp_path):
    """sklearn's digits stored as int64 0..16 used to be read as 256 levels (6.90 bits/dim instead of
    2.24): an integer dtype other than uint8 says nothing about the number of levels."""
    k = np.random.RandomState(0).randint(0, 17, size=(40, 1, 8, 8)).astype(np.int64)
    np.save(tmp_path / "digits.npy", k)
    for load in (lambda: data.load_file(tmp_path / "digits.npy"),
                 lambda: load_dataset("npy", path=tmp_path / "digits.npy")):
        with pytest.raises(ValueError, match=r"digits\.npy \(shape \(40, 1, 8, 8\), int64\): integer data needs "
                                             r"its number of levels .*'levels' entry.*--levels.*data\.levels") as err:
            load()
        assert "\n" not in str(err.value)
    ds = data.load_file(tmp_path / "digits.npy", levels=17)
    assert (ds.levels, ds.levels_source) == (17, "argument")
    assert torch.equal(ds.discrete(), torch.from_numpy(k))
    ds = load_dataset("npy", path=tmp_path / "digits.npy", levels=17)
    assert (ds.levels, ds.levels_source) == (17, "argument")


def test_uint8_without_levels_is_256_with_a_one_line_notice(tmp_path, capsys):
    np.save(tmp_path / "img.npy", np.zeros((20, 4), np.uint8))
    ds = data.load_file(tmp_path / "img.npy")
    out = capsys.readouterr().out
    assert (ds.levels, ds.levels_source) == (256, "uint8 default")
    assert out.count("\n") == 1 and "uint8" in out and "256 levels" in out, out


def test_levels_source_npz_argument_dataset_and_continuous(tmp_path, capsys):
    np.savez(tmp_path / "k.npz", x=np.full((20, 4), 3, np.int32), levels=np.int64(5))
    assert (data.load_file(tmp_path / "k.npz").levels_source, data.load_file(tmp_path / "k.npz").levels) == ("npz", 5)
    ds = load_dataset("npy", path=tmp_path / "k.npz", split="test")
    assert (ds.levels, ds.levels_source) == (5, "npz")
    ds = data.load_file(tmp_path / "k.npz", levels=7)  # the argument wins over the file
    assert (ds.levels, ds.levels_source) == (7, "argument")
    ds = load_dataset("digits", split="test", n=10)  # a subset keeps its source
    assert (ds.levels, ds.levels_source) == (17, "dataset")
    assert load_dataset("ring", n=10).levels_source is None
    np.save(tmp_path / "f.npy", np.zeros((20, 2)))
    assert data.load_file(tmp_path / "f.npy").levels_source is None
    assert capsys.readouterr().out == ""  # no notice without a uint8 default
    with pytest.raises(ValueError, match=r"data\.levels applies to data\.name 'npy'"):
        load_dataset("digits", levels=17)
