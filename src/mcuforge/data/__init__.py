"""Data sets: synthetic research workloads, generated deterministically from a seed and
cached on disk, and loaders for the standard public sets from local folders.

One interface for all of them::

    from mcuforge import data
    ds = data.load("keywords", split="train", preset="small", seed=0)
    ds.x, ds.y          # numpy arrays (inputs, targets)
    ds.meta             # classes, sample rate, task, source, normalization...
    ds.info["voice"]    # per-sample columns (voice, stream, position, profile...)

| name                | what                                                          | splits                         |
|---------------------|---------------------------------------------------------------|--------------------------------|
| keywords            | 1 s 16 kHz clips of 10 keywords + unknown + silence (espeak-ng) | train/val/test/new_speakers, by voice |
| speech_commands     | Google Speech Commands v2 from `root` (same 12 classes)        | train/val/test                 |
| ecg                 | ECG streams (neurokit2), windows in stream order               | train/val/test, by stream      |
| mitbih              | MIT-BIH records (wfdb) from `root`, same windows and classes    | train/val/test, by record      |
| motor_temperature   | lumped-parameter thermal model of a PMSM, windows              | train/val/test, by profile     |
| motor_csv           | the public `measures_v2.csv` from `root` (a folder or the file) | train/val/test, by profile     |
| machine_sound       | log-mel frames (5 x 128) of synthetic machines, normal/anomalous | train (normal)/test            |
| digits              | sklearn's 8x8 digits                                           | train/test                     |
| mnist, cifar10      | local folders in their standard formats (`root`)               | train/test                     |
| shapes              | synthetic 32x32x3 images of 10 shape classes (CIFAR-10 shapes) | train/val/test                 |

Presets size the synthetic sets: ``tiny`` (seconds, for tests), ``small`` (a minute),
``full``. Keyword arguments override single parameters (``load("keywords", voices=20)``).
Generated sets are cached under ``$MCUFORGE_CACHE/data`` (default
``~/.cache/mcuforge/data``), keyed by name and parameters; ``cache=False`` skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import DatasetError

PRESETS = ("tiny", "small", "full")
CACHE_VERSION = 1


@dataclass
class Dataset:
    """One split of a data set: inputs `x`, targets `y`, metadata and per-sample columns."""

    name: str
    split: str
    x: np.ndarray
    y: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    info: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    def subset(self, idx) -> "Dataset":
        idx = np.asarray(idx)
        return Dataset(self.name, self.split, self.x[idx], self.y[idx], dict(self.meta),
                       {k: v[idx] for k, v in self.info.items()})

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, split={self.split!r}, x={self.x.dtype}{tuple(self.x.shape)}, "
                f"y={self.y.dtype}{tuple(self.y.shape)})")


@dataclass
class _Entry:
    loader: Callable[..., Dataset]
    synthetic: bool
    splits: tuple[str, ...]
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, synthetic: bool, splits: tuple[str, ...], description: str):
    def deco(fn):
        _REGISTRY[name] = _Entry(fn, synthetic, splits, description)
        return fn
    return deco


def names() -> list[str]:
    _load_modules()
    return sorted(_REGISTRY)


def describe() -> dict[str, dict]:
    _load_modules()
    return {n: {"synthetic": e.synthetic, "splits": list(e.splits), "description": e.description}
            for n, e in sorted(_REGISTRY.items())}


def load(name: str, split: str = "train", preset: str = "small", root: str | Path | None = None,
         seed: int = 0, cache: bool = True, **params) -> Dataset:
    """Load one split of data set `name` (see the module docstring).

    preset: tiny | small | full (sizes of synthetic sets; ignored by most local sets).
    root:   the local folder (or file) for real data sets.
    params: overrides of single generation parameters (see each module's PRESETS).
    """
    _load_modules()
    if name not in _REGISTRY:
        raise DatasetError(f"unknown data set '{name}' (available: {', '.join(sorted(_REGISTRY))})")
    entry = _REGISTRY[name]
    if split not in entry.splits:
        raise DatasetError(f"data set '{name}' has no split '{split}' (splits: {', '.join(entry.splits)})")
    if preset not in PRESETS:
        raise DatasetError(f"unknown preset '{preset}' (choose one of {', '.join(PRESETS)})")
    if not entry.synthetic and root is None:
        raise DatasetError(f"data set '{name}' is read from a local folder: give root=... "
                           f"(`--root DIR` on the command line)")
    return entry.loader(split=split, preset=preset, root=None if root is None else Path(root), seed=seed,
                        cache=cache, **params)


def _load_modules() -> None:
    from . import audio, ecg, images, keywords, motor  # noqa: F401  (registration)


# --- helpers shared by the data modules -------------------------------------------------------

def cache_root() -> Path:
    from ..targets.host import cache_dir

    return cache_dir() / "data"


def preset_params(name: str, presets: dict[str, dict], preset: str, overrides: dict) -> dict:
    params = dict(presets[preset])
    unknown = set(overrides) - set(params)
    if unknown:
        raise DatasetError(f"data set '{name}' has no parameter(s) {sorted(unknown)} "
                           f"(parameters: {', '.join(sorted(params))})")
    params.update(overrides)
    return params


def cached(name: str, params: dict, seed: int, build: Callable[[], dict[str, np.ndarray]],
           use_cache: bool = True, version: int = 1) -> dict[str, np.ndarray]:
    """The arrays `build()` returns, stored once per (name, params, seed, generator version) as .npz.
    Bump `version` whenever a generator's output changes."""
    key = json.dumps({"name": name, "params": params, "seed": seed, "v": [CACHE_VERSION, version]},
                     sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache_root() / name / f"{digest}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception:  # a damaged cache entry: rebuild it
            pass
    arrays = build()
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.partial")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
            (path.parent / f"{digest}.json").write_text(key + "\n")
        except OSError:
            pass  # an unwritable cache only costs time
    return arrays


def split_groups(groups: list, fractions: dict[str, float], seed: int) -> dict[str, set]:
    """Assign whole groups (voices, streams, profiles) to splits, deterministically.
    Every split with a positive fraction gets at least one group."""
    groups = sorted(set(groups), key=str)
    rng = np.random.default_rng(seed)
    order = [groups[i] for i in rng.permutation(len(groups))]
    names_ = [k for k, f in fractions.items() if f > 0]
    if len(order) < len(names_):
        raise DatasetError(f"{len(order)} groups cannot fill the splits {names_}: generate more")
    counts = {k: max(1, int(round(fractions[k] * len(order)))) for k in names_}
    first = names_[0]  # the largest split (train) takes what is left
    counts[first] = len(order) - sum(c for k, c in counts.items() if k != first)
    if counts[first] < 1:
        raise DatasetError(f"{len(order)} groups are too few for the splits {names_}")
    out, i = {k: set() for k in fractions}, 0
    for k in names_:
        out[k] = set(order[i:i + counts[k]])
        i += counts[k]
    return out


def require_files(name: str, root: Path, expected: str, missing: list[str]) -> None:
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(f"'{root}' is not a {name} folder: {shown} not found (expected {expected})")


__all__ = ["Dataset", "load", "names", "describe", "PRESETS", "DatasetError"]
