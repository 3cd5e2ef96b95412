"""ECG rhythm windows in stream order.

``ecg`` simulates long ECG streams with neurokit2: each stream is a sequence of
rhythm episodes (10-40 s each) of the classes normal (60-100 bpm), tachycardia
(105-170 bpm), bradycardia (35-55 bpm), irregular (AF-like: irregularly irregular
RR intervals, no P waves, fibrillatory waves) and noisy (a normal rhythm buried in
baseline wander, muscle noise, mains hum and electrode pops). Streams are cut into
consecutive windows; every window keeps its stream id and its position in the
stream, so early-exit and temporal-decision methods can be evaluated on the
stream. Splits hold out whole streams.

``mitbih`` reads MIT-BIH records (wfdb: ``NNN.hea``/``.dat``/``.atr``) from a
local folder with the ``wfdb`` package, resamples lead 0 to the same rate and
labels windows by the record's rhythm annotations ((N, (SBR, (SVTA/(VT, (AFIB/(AFL)
and signal-quality annotations (noise), in the same classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DatasetError
from . import Dataset, cached, preset_params, register, require_files, split_groups

CLASSES = ["normal", "tachycardia", "bradycardia", "irregular", "noisy"]
PRESETS = {
    "tiny": dict(streams=5, stream_s=60, fs=128, window=256, hop=256, fractions=(0.6, 0.2, 0.2)),
    "small": dict(streams=24, stream_s=240, fs=128, window=256, hop=256, fractions=(0.7, 0.15, 0.15)),
    "full": dict(streams=100, stream_s=600, fs=128, window=256, hop=256, fractions=(0.7, 0.15, 0.15)),
}
SPLITS = ("train", "val", "test")
GENERATOR_VERSION = 2


def _normalize(x: np.ndarray) -> np.ndarray:
    return ((x - np.median(x)) / (np.std(x) + 1e-6)).astype(np.float32)


def _episode(cls: str, seconds: float, fs: int, rng: np.random.Generator) -> np.ndarray:
    import neurokit2 as nk

    n = int(seconds * fs)
    rs = int(rng.integers(2**31 - 1))
    t = np.arange(n) / fs
    if cls in ("normal", "tachycardia", "bradycardia", "noisy"):
        hr = {"normal": (60, 100), "tachycardia": (105, 170), "bradycardia": (35, 55), "noisy": (60, 100)}[cls]
        sig = nk.ecg_simulate(duration=seconds + 2, sampling_rate=fs, heart_rate=rng.uniform(*hr),
                              heart_rate_std=rng.uniform(0.5, 3.0), method="ecgsyn", noise=0.0,
                              random_state=rs)[:n]
    else:  # irregular: beat by beat with irregularly irregular RR, no P wave, f-waves
        beats, total = [], 0
        mean_rr = 60.0 / rng.uniform(70, 130)
        while total < n:
            rr = float(np.clip(rng.normal(mean_rr, 0.25 * mean_rr), 0.3, 1.6))
            beat = nk.ecg_simulate(length=int(rr * fs), sampling_rate=fs, heart_rate=60.0 / rr, method="simple",
                                   noise=0.0, random_state=rs + total)
            beat = np.asarray(beat, np.float64)
            k = int(0.35 * beat.size)  # the P wave sits in the first third of a "simple" beat
            beat[:k] = beat[:k] * np.linspace(0.2, 1.0, k) ** 4 if k else beat[:k]
            beats.append(beat)
            total += beat.size
        sig = np.concatenate(beats)[:n]
        f = rng.uniform(4, 8)
        sig = sig + 0.05 * np.std(sig) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) * (
            1 + 0.5 * np.sin(2 * np.pi * 0.3 * t))
    sig = np.asarray(sig, np.float64)
    sig = (sig - sig.mean()) / (sig.std() + 1e-9)
    # everyday measurement noise on every class; heavy noise makes the `noisy` class
    heavy = cls == "noisy"
    wander = rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 6.3))
    emg = rng.normal(0, 0.03, n)
    if heavy:
        wander = wander * rng.uniform(4, 10)
        emg = rng.normal(0, rng.uniform(0.3, 0.8), n)
        hum = rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * t)
        pops = np.zeros(n)
        for _ in range(rng.integers(1, 4)):
            p = rng.integers(n)
            pops[p:] += rng.normal(0, 1.5) * np.exp(-np.arange(n - p) / (0.3 * fs))
        sig = sig + hum + pops
    return sig + wander + emg


def generate(params: dict, seed: int) -> dict[str, np.ndarray]:
    fs, win, hop = int(params["fs"]), int(params["window"]), int(params["hop"])
    rng = np.random.default_rng(seed)
    xs, ys, stream, pos, start_s = [], [], [], [], []
    seconds = np.zeros(len(CLASSES))  # time per class so far: episodes keep the classes balanced
    for s in range(int(params["streams"])):
        sig, lab = [], []
        total = 0.0
        cls = int(rng.choice(np.flatnonzero(seconds == seconds.min())))
        while total < params["stream_s"]:
            dur = float(min(rng.uniform(10, 40), params["stream_s"] - total + 2))
            seg = _episode(CLASSES[cls], dur, fs, rng)
            sig.append(seg)
            lab.append(np.full(seg.size, cls))
            total += dur
            seconds[cls] += dur
            # the next episode has another rhythm, one of those least seen so far
            others = np.delete(np.arange(len(CLASSES)), cls)
            least = others[seconds[others] <= seconds[others].min() + 20]
            cls = int(rng.choice(least))
        sig, lab = np.concatenate(sig), np.concatenate(lab)
        n = int(params["stream_s"] * fs)
        sig, lab = sig[:n], lab[:n]
        for i, st in enumerate(range(0, n - win + 1, hop)):
            xs.append(_normalize(sig[st:st + win]))
            ys.append(np.bincount(lab[st:st + win], minlength=len(CLASSES)).argmax())
            stream.append(s)
            pos.append(i)
            start_s.append(st / fs)
    return {"x": np.stack(xs)[:, None, :], "y": np.array(ys, np.int64), "stream": np.array(stream, np.int64),
            "position": np.array(pos, np.int64), "start_s": np.array(start_s, np.float64)}


def _finish(name: str, split: str, arrays: dict, groups_key: str, fractions, seed: int, meta: dict) -> Dataset:
    groups = split_groups(list(np.unique(arrays[groups_key])), dict(zip(SPLITS, fractions)), seed)
    sel = np.nonzero(np.isin(arrays[groups_key], sorted(groups[split])))[0]
    info = {k: v[sel] for k, v in arrays.items() if k not in ("x", "y")}
    meta = dict(meta, classes=CLASSES, task="classification", split_groups=sorted(map(str, groups[split])))
    return Dataset(name, split, arrays["x"][sel].astype(np.float32), arrays["y"][sel], meta, info)


@register("ecg", synthetic=True, splits=SPLITS,
          description="simulated ECG streams (neurokit2), 5 rhythm classes, windows in stream order")
def load_ecg(split: str, preset: str, root, seed: int, cache: bool = True, **overrides) -> Dataset:
    params = preset_params("ecg", PRESETS, preset, overrides)
    arrays = cached("ecg", params, seed, lambda: generate(params, seed), cache, version=GENERATOR_VERSION)
    meta = {"fs": params["fs"], "window": params["window"], "source": "neurokit2", "preset": preset,
            "params": params, "seed": seed}
    return _finish("ecg", split, arrays, "stream", params["fractions"], seed, meta)


# --- MIT-BIH ------------------------------------------------------------------------------------------

RHYTHMS = {"(N": "normal", "(SBR": "bradycardia", "(SVTA": "tachycardia", "(VT": "tachycardia",
           "(AFIB": "irregular", "(AFL": "irregular"}
MITBIH_PRESETS = {p: dict(fs=128, window=256, hop=256, fractions=PRESETS[p]["fractions"]) for p in PRESETS}


@register("mitbih", synthetic=False, splits=SPLITS,
          description="MIT-BIH records (wfdb .hea/.dat/.atr) from a local folder, rhythm windows")
def load_mitbih(split: str, preset: str, root: Path, seed: int, cache: bool = True, **overrides) -> Dataset:
    params = preset_params("mitbih", MITBIH_PRESETS, preset, overrides)
    try:
        import wfdb
    except ImportError:
        raise DatasetError("reading MIT-BIH needs the wfdb package (pip install wfdb)") from None
    from scipy.signal import resample_poly

    expected = "WFDB records: NNN.hea, NNN.dat and NNN.atr (annotations) per record"
    if not root.is_dir():
        raise DatasetError(f"MIT-BIH folder '{root}' does not exist (expected {expected})")
    records = sorted(p.stem for p in root.glob("*.hea"))
    missing = [] if records else ["*.hea"]
    missing += [f"{r}.{e}" for r in records for e in ("dat", "atr") if not (root / f"{r}.{e}").is_file()]
    require_files("MIT-BIH", root, expected, missing)
    fs, win, hop = int(params["fs"]), int(params["window"]), int(params["hop"])
    xs, ys, rec_ids, pos, start_s = [], [], [], [], []
    for ri, rec in enumerate(records):
        try:
            r = wfdb.rdrecord(str(root / rec))
            ann = wfdb.rdann(str(root / rec), "atr")
        except Exception as exc:
            raise DatasetError(f"MIT-BIH record '{root / rec}' is not readable: {exc}") from None
        sig = np.asarray(r.p_signal[:, 0], np.float64)
        g = np.gcd(int(r.fs), fs)
        sig = resample_poly(sig, fs // g, int(r.fs) // g)
        # rhythm label per sample from '+' annotations; '~' marks noise until the next quality change
        label = np.full(sig.size, -1, np.int64)
        noisy = np.zeros(sig.size, bool)
        cur, events = -1, []
        for sample, sym, aux in zip(ann.sample, ann.symbol, ann.aux_note):
            at = int(sample * fs / r.fs)
            if sym == "+":
                aux = (aux or "").strip("\x00").strip()
                events.append((at, CLASSES.index(RHYTHMS[aux]) if aux in RHYTHMS else -1))
            elif sym == "~":
                events.append((at, "noise"))
        quality_noise = False
        last = 0
        for at, what in events + [(sig.size, None)]:
            label[last:at] = cur
            noisy[last:at] = quality_noise
            last = at
            if what == "noise":
                quality_noise = not quality_noise
            elif what is not None:
                cur = what
        label[noisy] = CLASSES.index("noisy")
        for i, st in enumerate(range(0, sig.size - win + 1, hop)):
            lab = label[st:st + win]
            if np.any(lab < 0):
                continue
            xs.append(_normalize(sig[st:st + win]))
            ys.append(np.bincount(lab, minlength=len(CLASSES)).argmax())
            rec_ids.append(ri)
            pos.append(i)
            start_s.append(st / fs)
    if not xs:
        raise DatasetError(f"no MIT-BIH window in '{root}' has a known rhythm annotation")
    arrays = {"x": np.stack(xs)[:, None, :], "y": np.array(ys, np.int64), "stream": np.array(rec_ids, np.int64),
              "position": np.array(pos, np.int64), "start_s": np.array(start_s)}
    meta = {"fs": fs, "window": win, "source": f"MIT-BIH ({root})", "records": records, "preset": preset,
            "params": params, "seed": seed}
    return _finish("mitbih", split, arrays, "stream", params["fractions"], seed, meta)
