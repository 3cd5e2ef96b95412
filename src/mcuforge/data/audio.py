"""Audio features (numpy/scipy) and ``machine_sound``, synthetic machine-sound log-mel frames
for anomaly detection (the MLPerf Tiny AD input: 5 consecutive frames of 128 log-mel bins).

``mfcc`` follows the MLPerf Tiny KWS front end: 30 ms Hann windows every 20 ms over
1 s at 16 kHz (49 frames), 40 mel bands (20-4000 Hz), log, DCT-II, 10 coefficients.

``machine_sound``: each machine is a rotating part (fundamental 40-400 Hz with
decaying harmonics, amplitude modulation at the shaft rate), resonances excited by
noise and broadband noise. Test clips are normal or anomalous (shifted speed, a
bearing whine, periodic knocks, or rubbing noise bursts). Training clips are all
normal (y = 0); test y = 1 marks anomalies. Every vector keeps its machine and clip.
"""

from __future__ import annotations

import numpy as np

from . import Dataset, cached, preset_params, register

SAMPLE_RATE = 16000


def mel_filterbank(n_mels: int, n_fft: int, sr: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular filters on the HTK mel scale, [n_mels, n_fft // 2 + 1]."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    inv = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    pts = inv(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    fb = np.zeros((n_mels, freqs.size))
    for i in range(n_mels):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        fb[i] = np.maximum(0, np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)))
    return fb


def _frames(x: np.ndarray, win: int, hop: int) -> np.ndarray:
    """[..., n_frames, win] strided frames of the last axis."""
    n = 1 + (x.shape[-1] - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    return x[..., idx]


def log_mel(x: np.ndarray, sr: int = SAMPLE_RATE, n_fft: int = 1024, hop: int = 512, n_mels: int = 128,
            fmin: float = 20.0, fmax: float | None = None, win: int | None = None) -> np.ndarray:
    """[..., frames, n_mels] log-mel energies (natural log, floor 1e-6)."""
    win = win or n_fft
    frames = _frames(np.asarray(x, np.float64), win, hop) * np.hanning(win + 1)[:-1]
    power = np.abs(np.fft.rfft(frames, n_fft, axis=-1)) ** 2
    fb = mel_filterbank(n_mels, n_fft, sr, fmin, fmax or sr / 2)
    return np.log(power @ fb.T + 1e-6).astype(np.float32)


def mfcc(x: np.ndarray, sr: int = SAMPLE_RATE, n_mfcc: int = 10, n_mels: int = 40, win_ms: float = 30.0,
         hop_ms: float = 20.0, fmin: float = 20.0, fmax: float = 4000.0) -> np.ndarray:
    """[..., frames, n_mfcc] MFCCs (MLPerf Tiny KWS front end: 1 s -> 49 x 10)."""
    from scipy.fft import dct

    win, hop = int(sr * win_ms / 1000), int(sr * hop_ms / 1000)
    lm = log_mel(x, sr, n_fft=512, hop=hop, n_mels=n_mels, fmin=fmin, fmax=fmax, win=win)
    return dct(lm, type=2, norm="ortho", axis=-1)[..., :n_mfcc].astype(np.float32)


# --- machine_sound -----------------------------------------------------------------------------------

PRESETS = {
    "tiny": dict(machines=2, train_clips=6, test_clips=6, frames=5, n_mels=128),
    "small": dict(machines=4, train_clips=40, test_clips=20, frames=5, n_mels=128),
    "full": dict(machines=6, train_clips=200, test_clips=60, frames=5, n_mels=128),
}
ANOMALIES = ["speed_shift", "bearing_whine", "knocks", "rubbing"]
GENERATOR_VERSION = 1


def _machine(rng: np.random.Generator) -> dict:
    return {"f0": rng.uniform(40, 400), "harm": rng.uniform(0.2, 1.0, 12) * 0.7 ** np.arange(12),
            "res": rng.uniform(500, 6000, 3), "res_bw": rng.uniform(50, 400, 3), "noise": rng.uniform(0.02, 0.2),
            "am": rng.uniform(0.05, 0.4), "shaft": rng.uniform(5, 40)}


def machine_clip(m: dict, anomaly: str | None, rng: np.random.Generator, seconds: float = 1.0) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = m["f0"] * rng.uniform(0.99, 1.01)
    if anomaly == "speed_shift":
        f0 *= rng.choice([-1, 1]) * rng.uniform(0.06, 0.15) + 1
    phase = rng.uniform(0, 2 * np.pi, m["harm"].size)
    x = sum(a * np.sin(2 * np.pi * f0 * (k + 1) * t + phase[k]) for k, a in enumerate(m["harm"])
            if f0 * (k + 1) < SAMPLE_RATE / 2)
    x = x * (1 + m["am"] * np.sin(2 * np.pi * m["shaft"] * t))
    for fc, bw in zip(m["res"], m["res_bw"]):
        sos = butter(2, [max(20, fc - bw), min(SAMPLE_RATE / 2 - 10, fc + bw)], btype="band", fs=SAMPLE_RATE,
                     output="sos")
        x = x + 0.5 * sosfilt(sos, rng.standard_normal(n))
    x = x + m["noise"] * rng.standard_normal(n)
    if anomaly == "bearing_whine":
        x = x + rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * rng.uniform(2000, 6000) * t)
    elif anomaly == "knocks":
        period = int(SAMPLE_RATE / rng.uniform(3, 12))
        for s in range(int(rng.integers(period)), n, period):
            L = min(400, n - s)
            x[s:s + L] += rng.uniform(1, 3) * rng.standard_normal(L) * np.exp(-np.arange(L) / 60)
    elif anomaly == "rubbing":
        env = (np.sin(2 * np.pi * m["shaft"] * t) > 0.6).astype(float)
        sos = butter(2, [1000, 5000], btype="band", fs=SAMPLE_RATE, output="sos")
        x = x + rng.uniform(0.5, 1.5) * env * sosfilt(sos, rng.standard_normal(n))
    return (x / (np.abs(x).max() + 1e-9) * rng.uniform(0.3, 0.9)).astype(np.float32)


def _vectors(clip: np.ndarray, frames: int, n_mels: int) -> np.ndarray:
    lm = log_mel(clip, n_fft=1024, hop=512, n_mels=n_mels)  # [T, n_mels]
    return np.stack([lm[i:i + frames].ravel() for i in range(lm.shape[0] - frames + 1)])


def generate(params: dict, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = {"x": [], "y": [], "machine": [], "clip": [], "train": [], "anomaly": []}
    clip_id = 0
    for mi in range(int(params["machines"])):
        m = _machine(rng)
        for is_train, count in ((1, params["train_clips"]), (0, params["test_clips"])):
            for k in range(int(count)):
                anomaly = None if is_train or k % 2 == 0 else ANOMALIES[int(rng.integers(len(ANOMALIES)))]
                v = _vectors(machine_clip(m, anomaly, rng), int(params["frames"]), int(params["n_mels"]))
                rows["x"].append(v)
                for key, val in (("y", int(anomaly is not None)), ("machine", mi), ("clip", clip_id),
                                 ("train", is_train), ("anomaly", -1 if anomaly is None else ANOMALIES.index(anomaly))):
                    rows[key].append(np.full(len(v), val, np.int64))
                clip_id += 1
    out = {k: np.concatenate(v) for k, v in rows.items()}
    tr = out["x"][out["train"] == 1]
    out["x"] = ((out["x"] - tr.mean()) / (tr.std() + 1e-6)).astype(np.float32)  # one global offset/scale
    return out


@register("machine_sound", synthetic=True, splits=("train", "test"),
          description="synthetic machine sounds: 5x128 log-mel vectors (640), normal train, normal/anomalous test")
def load_machine_sound(split: str, preset: str, root, seed: int, cache: bool = True, **overrides) -> Dataset:
    params = preset_params("machine_sound", PRESETS, preset, overrides)
    arrays = cached("machine_sound", params, seed, lambda: generate(params, seed), cache, version=GENERATOR_VERSION)
    sel = arrays["train"] == (1 if split == "train" else 0)
    return Dataset("machine_sound", split, arrays["x"][sel], arrays["y"][sel],
                   {"classes": ["normal", "anomaly"], "task": "autoencoder", "anomalies": ANOMALIES,
                    "source": "synthetic", "preset": preset, "params": params, "seed": seed},
                   {"machine": arrays["machine"][sel], "clip": arrays["clip"][sel], "anomaly": arrays["anomaly"][sel]})
