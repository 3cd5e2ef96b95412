"""Image data sets: sklearn digits, MNIST and CIFAR-10 from local folders in their standard
formats, and ``shapes``, a synthetic 32x32x3 set of 10 shape classes with CIFAR-10's shapes.

Images are float32 in [0, 1], N,C,H,W.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from . import Dataset, cached, preset_params, register, require_files, split_groups

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SHAPE_CLASSES = ["disc", "square", "triangle", "ring", "cross", "horizontal_stripes", "vertical_stripes",
                 "diagonal_stripes", "checkerboard", "blob"]
LIMIT_PRESETS = {"tiny": dict(limit=200), "small": dict(limit=10000), "full": dict(limit=None)}


def _limit(x, y, limit, seed):
    if limit is None or len(x) <= limit:
        return x, y
    idx = np.sort(np.random.default_rng(seed).choice(len(x), limit, replace=False))
    return x[idx], y[idx]


# --- digits ---------------------------------------------------------------------------------------

@register("digits", synthetic=True, splits=("train", "test"), description="sklearn's 8x8 digits, 1x8x8")
def load_digits(split: str, preset: str, root, seed: int, cache: bool = True, **overrides) -> Dataset:
    from ..demo import digits_split

    preset_params("digits", {p: {} for p in LIMIT_PRESETS}, preset, overrides)
    x_tr, x_te, y_tr, y_te = digits_split(seed)
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    return Dataset("digits", split, x, y, {"classes": [str(i) for i in range(10)], "task": "classification",
                                          "source": "sklearn.datasets.load_digits"})


# --- MNIST ------------------------------------------------------------------------------------------

MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST format), plain or gzipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DatasetError(f"'{path}' is not readable: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"'{path}' is not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise DatasetError(f"'{path}': unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"'{path}' is truncated: {data.size} values for shape {dims}")
    return data.reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (root / name).is_file():
            return root / name
    return None


@register("mnist", synthetic=False, splits=("train", "test"), description="MNIST (IDX files) from a local folder")
def load_mnist(split: str, preset: str, root: Path, seed: int, cache: bool = True, **overrides) -> Dataset:
    params = preset_params("mnist", LIMIT_PRESETS, preset, overrides)
    expected = ", ".join(f"{s}[.gz]" for pair in MNIST_FILES.values() for s in pair)
    if not root.is_dir():
        raise DatasetError(f"MNIST folder '{root}' does not exist (expected {expected})")
    paths = [_find(root, s) for s in MNIST_FILES[split]]
    require_files("MNIST", root, expected, [s for s, p in zip(MNIST_FILES[split], paths) if p is None])
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"MNIST files in '{root}' disagree: images {images.shape}, labels {labels.shape}")
    x = (images.astype(np.float32) / 255.0)[:, None]
    x, y = _limit(x, labels.astype(np.int64), params["limit"], seed)
    return Dataset("mnist", split, x, y, {"classes": [str(i) for i in range(10)], "task": "classification",
                                         "source": f"MNIST ({root})"})


# --- CIFAR-10 ----------------------------------------------------------------------------------------

def _cifar_python(root: Path, split: str):
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for n in names:
        try:
            with open(root / n, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            data = np.asarray(d[b"data"] if b"data" in d else d["data"], np.uint8)
            labels = d[b"labels"] if b"labels" in d else d["labels"]
        except Exception as exc:
            raise DatasetError(f"'{root / n}' is not a CIFAR-10 python batch: {exc}") from None
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _cifar_binary(root: Path, split: str):
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    xs, ys = [], []
    for n in names:
        raw = np.fromfile(root / n, np.uint8)
        if raw.size % 3073:
            raise DatasetError(f"'{root / n}' is not a CIFAR-10 binary batch (size {raw.size} is not a "
                               "multiple of 3073 bytes)")
        raw = raw.reshape(-1, 3073)
        ys.append(raw[:, 0].astype(np.int64))
        xs.append(raw[:, 1:].reshape(-1, 3, 32, 32))
    return np.concatenate(xs), np.concatenate(ys)


@register("cifar10", synthetic=False, splits=("train", "test"),
          description="CIFAR-10 (python pickle batches or the binary version) from a local folder")
def load_cifar10(split: str, preset: str, root: Path, seed: int, cache: bool = True, **overrides) -> Dataset:
    params = preset_params("cifar10", LIMIT_PRESETS, preset, overrides)
    expected = ("data_batch_1..data_batch_5 and test_batch (python version), or data_batch_1.bin.."
                "data_batch_5.bin and test_batch.bin (binary version)")
    if not root.is_dir():
        raise DatasetError(f"CIFAR-10 folder '{root}' does not exist (expected {expected})")
    for sub in ("cifar-10-batches-py", "cifar-10-batches-bin"):
        if (root / sub).is_dir():
            root = root / sub
    py = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if all((root / n).is_file() for n in py):
        x, y = _cifar_python(root, split)
    elif all((root / f"{n}.bin").is_file() for n in py):
        x, y = _cifar_binary(root, split)
    else:
        require_files("CIFAR-10", root, expected, [n for n in py if not (root / n).is_file()])
    x, y = _limit(x.astype(np.float32) / 255.0, y, params["limit"], seed)
    return Dataset("cifar10", split, x, y, {"classes": CIFAR_CLASSES, "task": "classification",
                                           "source": f"CIFAR-10 ({root})"})


# --- shapes (synthetic, CIFAR-10 shapes) -------------------------------------------------------------

SHAPES_PRESETS = {"tiny": dict(per_class=20), "small": dict(per_class=300), "full": dict(per_class=2000)}


def _shape_image(c: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    cy, cx = rng.uniform(10, 22, 2)
    r = rng.uniform(5, 10)
    ang = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
    v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
    period = rng.uniform(3, 7)
    d = np.hypot(xx - cx, yy - cy)
    if c == 0:
        m = d < r
    elif c == 1:
        m = (np.abs(u) < r * 0.8) & (np.abs(v) < r * 0.8)
    elif c == 2:
        m = (v > -r * 0.6) & (v < r * 0.9 - 1.8 * np.abs(u))
    elif c == 3:
        m = (d < r) & (d > r * 0.55)
    elif c == 4:
        m = ((np.abs(u) < r * 0.25) & (np.abs(v) < r)) | ((np.abs(v) < r * 0.25) & (np.abs(u) < r))
    elif c == 5:
        m = np.sin(2 * np.pi * yy / period + ang) > 0
    elif c == 6:
        m = np.sin(2 * np.pi * xx / period + ang) > 0
    elif c == 7:
        m = np.sin(2 * np.pi * (xx + yy) / (period * 1.4) + ang) > 0
    elif c == 8:
        m = (np.sin(np.pi * xx / period * 1.3) > 0) ^ (np.sin(np.pi * yy / period * 1.3) > 0)
    else:
        field = sum(np.exp(-((xx - rng.uniform(6, 26)) ** 2 + (yy - rng.uniform(6, 26)) ** 2) / rng.uniform(8, 30))
                    for _ in range(3))
        m = field > 0.5
    fg, bg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    while np.abs(fg - bg).sum() < 0.6:
        fg = rng.uniform(0, 1, 3)
    img = np.where(m[None], fg[:, None, None], bg[:, None, None])
    img = img + rng.normal(0, rng.uniform(0.02, 0.12), img.shape)  # sensor noise
    img = img * (1 + 0.3 * (yy / 32 - 0.5))[None] * rng.uniform(0.7, 1.2)  # lighting gradient
    return np.clip(img, 0, 1).astype(np.float32)


@register("shapes", synthetic=True, splits=("train", "val", "test"),
          description="synthetic 3x32x32 images of 10 shape/texture classes (CIFAR-10 shapes)")
def load_shapes(split: str, preset: str, root, seed: int, cache: bool = True, **overrides) -> Dataset:
    params = preset_params("shapes", SHAPES_PRESETS, preset, overrides)

    def build():
        rng = np.random.default_rng(seed)
        n = int(params["per_class"])
        y = np.tile(np.arange(10), n)
        x = np.stack([_shape_image(int(c), rng) for c in y])
        return {"x": np.round(x * 255).astype(np.uint8), "y": y.astype(np.int64), "group": np.arange(len(y)) // 10}

    arrays = cached("shapes", params, seed, build, cache)
    groups = split_groups(list(np.unique(arrays["group"])), {"train": 0.7, "val": 0.1, "test": 0.2}, seed)
    sel = np.nonzero(np.isin(arrays["group"], sorted(groups[split])))[0]
    return Dataset("shapes", split, arrays["x"][sel].astype(np.float32) / 255.0, arrays["y"][sel],
                   {"classes": SHAPE_CLASSES, "task": "classification", "source": "synthetic", "preset": preset,
                    "params": params, "seed": seed})
