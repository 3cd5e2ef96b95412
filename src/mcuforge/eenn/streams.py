"""Temporally correlated sample streams for evaluating early exits and temporal decisions.

A stream is a sequence of model inputs in time order with their labels and a scene id (a run during
which the observed thing does not change). Built from held-out splits only, deterministically per
seed; ``val`` streams choose operating points, ``test`` streams report them:

* ``ecg``: the ``ecg`` data set's windows (2 s each) in stream order, as recorded: rhythm episodes
  of 10-40 s, so runs of 5-20 windows of one class. A scene is a run of one class in one recording.
* ``keywords``: a sliding window over an utterance sees the same word several times, slightly
  shifted. A scene is one clip of the split (a word, an unknown word, or silence) seen for a run of
  windows (words 3-10, silence 4-16), each window the clip shifted by up to +-100 ms (circularly)
  plus fresh noise at 1/50 of the clip's RMS. MFCCs are computed per window, as on the device.
* ``digits``: a camera holding a digit: each scene holds one image of the split for 4-16 frames,
  each frame with fresh pixel noise (sigma 0.05 on the 0..1 scale), then changes to another digit.
  ``digits`` has no validation split: the test images are halved (seeded) into val and test.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DatasetError

STREAMS = ("ecg", "keywords", "digits")
SPLITS = ("val", "test")
DEFAULT_LENGTH = {"keywords": 600, "digits": 600}


@dataclass
class Stream:
    name: str
    split: str
    x: np.ndarray           # data-set inputs in time order (raw: audio clips, ECG windows, images)
    y: np.ndarray           # labels
    scene: np.ndarray       # scene id per sample; consecutive samples of one scene show the same thing
    classes: list[str]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.y))

    @property
    def n_scenes(self) -> int:
        return int(len(np.unique(self.scene)))

    @property
    def repeat_rate(self) -> float:
        """Share of samples whose label equals the previous sample's (how correlated the stream is)."""
        return float(np.mean(self.y[1:] == self.y[:-1])) if len(self.y) > 1 else 0.0

    def model_inputs(self, spec) -> np.ndarray:
        """The stream as inputs of zoo model ``spec`` (features computed on the host)."""
        from ..zoo import model_inputs

        return model_inputs(spec, self.x)


def make_stream(name: str, split: str = "test", preset: str = "small", seed: int = 0,
                length: int | None = None) -> Stream:
    from .. import data as datasets

    if name not in STREAMS:
        raise DatasetError(f"unknown stream '{name}' (streams: {', '.join(STREAMS)})")
    if split not in SPLITS:
        raise DatasetError(f"streams are built from the 'val' or 'test' split, not '{split}'")
    rng = np.random.default_rng([seed, SPLITS.index(split), STREAMS.index(name)])
    if name == "ecg":
        ds = datasets.load("ecg", split, preset, seed=seed)
        order = np.lexsort((ds.info["position"], ds.info["stream"]))
        y, rec = ds.y[order], ds.info["stream"][order]
        change = np.r_[True, (y[1:] != y[:-1]) | (rec[1:] != rec[:-1])]
        n = len(order) if length is None else min(length, len(order))
        return Stream(name, split, ds.x[order][:n], y[:n], np.cumsum(change)[:n] - 1, ds.classes,
                      {"source": "ecg windows in recording order", "recordings": int(len(np.unique(rec[:n])))})
    length = length or DEFAULT_LENGTH[name]
    if name == "keywords":
        ds = datasets.load("keywords", split, preset, seed=seed)
        silence = ds.classes.index("silence") if "silence" in ds.classes else -1
        sr = int(ds.meta.get("sample_rate", 16000))
        xs, ys, scenes, s = [], [], [], 0
        while len(ys) < length:
            i = int(rng.integers(len(ds)))
            run = int(rng.integers(4, 17) if ds.y[i] == silence else rng.integers(3, 11))
            clip = ds.x[i].astype(np.float32)
            rms = float(np.sqrt(np.mean(clip ** 2))) + 1e-6
            for _ in range(run):
                w = np.roll(clip, int(rng.integers(-sr // 10, sr // 10 + 1)))
                xs.append(w + rng.normal(0, rms / 50, w.shape).astype(np.float32))
                ys.append(int(ds.y[i]))
                scenes.append(s)
            s += 1
        return Stream(name, split, np.stack(xs)[:length], np.array(ys[:length]), np.array(scenes[:length]),
                      ds.classes, {"source": "keyword clips seen by a sliding window (runs, +-100 ms shifts)"})
    ds = datasets.load("digits", "test", preset, seed=seed)
    perm = np.random.default_rng(seed).permutation(len(ds))
    half = perm[: len(perm) // 2] if split == "val" else perm[len(perm) // 2:]
    xs, ys, scenes, s, prev = [], [], [], 0, -1
    while len(ys) < length:
        i = int(half[rng.integers(len(half))])
        if ds.y[i] == prev:
            continue  # a change shows another digit
        prev = int(ds.y[i])
        for _ in range(int(rng.integers(4, 17))):
            xs.append(np.clip(ds.x[i] + rng.normal(0, 0.05, ds.x[i].shape), 0, 1).astype(np.float32))
            ys.append(prev)
            scenes.append(s)
        s += 1
    return Stream(name, split, np.stack(xs)[:length], np.array(ys[:length]), np.array(scenes[:length]),
                  ds.classes, {"source": "digit images held 4-16 frames with pixel noise"})


def stream_for_data(data: str) -> str:
    """The stream kind built from data set ``data``."""
    if data not in STREAMS:
        raise DatasetError(f"no temporally correlated stream is defined for data set '{data}' "
                           f"(streams: {', '.join(STREAMS)})")
    return data
