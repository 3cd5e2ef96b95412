"""Keyword spotting: 1 s, 16 kHz clips of 10 keywords, `unknown` words and `silence`.

``keywords`` synthesizes the clips offline with espeak-ng over many voices (a
language voice such as en-gb-scotland combined with a variant such as +f3; each
voice gets its own base pitch and speed), with per-clip pitch, speed and
amplitude jitter, a random time shift, a synthetic room impulse response and
colored background noise at a random SNR. Every clip records its voice, and the
splits hold out whole voices: no voice is in two splits. ``new_speakers`` is a
fourth split of unseen voices for on-device adaptation.

``speech_commands`` reads Google Speech Commands v2 from a local folder in its
standard layout (``<word>/<speaker>_nohash_<n>.wav``, ``validation_list.txt``,
``testing_list.txt``, ``_background_noise_/``) into the same 12 classes.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from . import Dataset, cached, preset_params, register, require_files, split_groups

SAMPLE_RATE = 16000
KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
CLASSES = KEYWORDS + ["unknown", "silence"]
UNKNOWN_WORDS = ["bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow", "zero",
                 "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "learn", "follow",
                 "forward", "backward", "visual"]
WORDS = KEYWORDS + UNKNOWN_WORDS
BASE_VOICES = ["en", "en-us", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
               "en-us-nyc"]
VARIANTS = ["m1", "f1", "m2", "f2", "m3", "f3", "m4", "f4", "m5", "f5", "m6", "m7"]
NOISES = ["white", "pink", "brown", "hum"]

PRESETS = {
    # voices: how many voices (up to 96); per_class: clips per class and voice
    "tiny": dict(voices=12, per_class=1, max_shift_ms=100, noise_prob=0.8, snr_db=(5.0, 30.0),
                 reverb_prob=0.5, fractions=(0.6, 0.15, 0.15, 0.1)),
    "small": dict(voices=48, per_class=3, max_shift_ms=100, noise_prob=0.8, snr_db=(5.0, 30.0),
                  reverb_prob=0.5, fractions=(0.7, 0.1, 0.1, 0.1)),
    "full": dict(voices=96, per_class=8, max_shift_ms=100, noise_prob=0.8, snr_db=(5.0, 30.0),
                 reverb_prob=0.5, fractions=(0.7, 0.1, 0.1, 0.1)),
}
SPLITS = ("train", "val", "test", "new_speakers")
GENERATOR_VERSION = 1


def voice_list(n: int) -> list[str]:
    """n distinct espeak-ng voices, variants spread over all language voices."""
    all_voices = [f"{b}+{v}" for v in VARIANTS for b in BASE_VOICES]
    if not 1 <= n <= len(all_voices):
        raise DatasetError(f"keywords: voices must be in 1..{len(all_voices)}, got {n}")
    return all_voices[:n]


# --- synthesis --------------------------------------------------------------------------------------

def espeak_binary() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DatasetError("the keywords data set needs espeak-ng (Debian: apt-get install espeak-ng)")
    return exe


def synthesize(word: str, voice: str, pitch: int = 50, speed: int = 160, amplitude: int = 100) -> np.ndarray:
    """One utterance as float32 at 16 kHz (espeak-ng speaks at 22.05 kHz; resampled 320/441)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    cmd = [espeak_binary(), "--stdout", "-v", voice, "-p", str(int(pitch)), "-s", str(int(speed)),
           "-a", str(int(amplitude)), word]
    proc = subprocess.run(cmd, capture_output=True, timeout=60)
    if proc.returncode != 0 or not proc.stdout:
        raise DatasetError(f"espeak-ng failed for voice '{voice}', word '{word}': "
                           f"{proc.stderr.decode(errors='replace').strip()}")
    wav, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if wav.ndim > 1:
        wav = wav.mean(axis=1)
    if sr != SAMPLE_RATE:
        g = np.gcd(SAMPLE_RATE, sr)
        wav = resample_poly(wav, SAMPLE_RATE // g, sr // g).astype(np.float32)
    return wav


def colored_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise: white, pink (1/f), brown (1/f^2), or mains hum over pink noise."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    f[0] = f[1]
    if kind == "pink" or kind == "hum":
        spec = spec / np.sqrt(f)
    elif kind == "brown":
        spec = spec / f
    x = np.fft.irfft(spec, n)
    x = x / (np.sqrt(np.mean(x ** 2)) + 1e-12)
    if kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        base = rng.choice([50.0, 60.0])
        hum = sum(np.sin(2 * np.pi * base * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3, 5))
        x = 0.3 * x + hum / np.sqrt(np.mean(hum ** 2))
        x = x / np.sqrt(np.mean(x ** 2))
    return x.astype(np.float32)


def room_impulse(rng: np.random.Generator) -> np.ndarray:
    """A synthetic room: direct path plus exponentially decaying noise (RT60 0.1-0.6 s)."""
    rt60 = rng.uniform(0.1, 0.6)
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.91 * t / rt60)
    tail[: int(0.002 * SAMPLE_RATE)] = 0.0  # first reflections after 2 ms
    ir = tail * rng.uniform(0.05, 0.3) / np.sqrt(np.sum(tail ** 2) + 1e-12)
    ir[0] = 1.0
    return ir


def _trim(wav: np.ndarray, rel: float = 0.02) -> np.ndarray:
    """Cut leading/trailing silence (below rel * peak)."""
    if wav.size == 0:
        return wav
    idx = np.nonzero(np.abs(wav) > rel * (np.abs(wav).max() + 1e-9))[0]
    return wav[idx[0]: idx[-1] + 1] if idx.size else wav[:0]


def render_clip(speech: np.ndarray | None, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Place an utterance in 1 s (random shift), reverberate, add noise; silence: noise only."""
    from scipy.signal import fftconvolve

    n = SAMPLE_RATE
    out = np.zeros(n, np.float64)
    if speech is not None:
        s = _trim(speech.astype(np.float64))
        if s.size > n:
            s = s[:n]
        if s.size:
            if rng.random() < p["reverb_prob"]:
                s = fftconvolve(s, room_impulse(rng))[: min(n, s.size + int(0.3 * n))]
            start = (n - s.size) // 2 + int(rng.uniform(-1, 1) * p["max_shift_ms"] * SAMPLE_RATE / 1000)
            start = int(np.clip(start, 0, n - s.size))
            out[start:start + s.size] = s
            out *= rng.uniform(0.3, 0.9) / (np.abs(out).max() + 1e-9)
        if rng.random() < p["noise_prob"]:
            rms = np.sqrt(np.mean(out ** 2)) + 1e-9
            snr = rng.uniform(*p["snr_db"])
            out += colored_noise(n, NOISES[rng.integers(len(NOISES))], rng) * rms / 10 ** (snr / 20)
    else:
        level = 10 ** rng.uniform(-3.5, -1.0)  # from near digital silence to a noisy room
        out += colored_noise(n, NOISES[rng.integers(len(NOISES))], rng) * level
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def generate(params: dict, seed: int, workers: int | None = None) -> dict[str, np.ndarray]:
    """All clips of all voices: x int16 [N, 16000], y, voice, word (indices into WORDS, -1: silence)."""
    voices = voice_list(int(params["voices"]))
    rng = np.random.default_rng(seed)
    jobs = []  # (class, word index, voice index, pitch, speed, amp)
    for vi, _ in enumerate(voices):
        base_pitch, base_speed = rng.integers(25, 76), rng.integers(130, 196)
        for ci, cls in enumerate(CLASSES):
            for _ in range(int(params["per_class"])):
                if cls == "silence":
                    wi = -1
                elif cls == "unknown":
                    wi = len(KEYWORDS) + int(rng.integers(len(UNKNOWN_WORDS)))
                else:
                    wi = ci
                pitch = int(np.clip(base_pitch + rng.integers(-8, 9), 0, 99))
                speed = int(np.clip(base_speed + rng.integers(-15, 16), 80, 260))
                amp = int(rng.integers(60, 151))
                jobs.append((ci, wi, vi, pitch, speed, amp))
    clip_seeds = rng.integers(0, 2**63 - 1, size=len(jobs))

    def work(i: int) -> np.ndarray:
        ci, wi, vi, pitch, speed, amp = jobs[i]
        speech = None if wi < 0 else synthesize(WORDS[wi], voices[vi], pitch, speed, amp)
        clip = render_clip(speech, params, np.random.default_rng(int(clip_seeds[i])))
        return np.round(clip * 32767).astype(np.int16)

    if any(j[1] >= 0 for j in jobs):
        espeak_binary()
    import os

    workers = workers or max(1, min(8, (os.cpu_count() or 1) * 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # espeak-ng runs in subprocesses
        clips = list(pool.map(work, range(len(jobs))))
    cols = np.array([j[:3] for j in jobs], np.int64).reshape(-1, 3)
    return {"x": np.stack(clips) if clips else np.zeros((0, SAMPLE_RATE), np.int16),
            "y": cols[:, 0], "word": cols[:, 1], "voice": cols[:, 2],
            "pitch": np.array([j[3] for j in jobs], np.int64), "speed": np.array([j[4] for j in jobs], np.int64)}


@register("keywords", synthetic=True, splits=SPLITS,
          description="1 s 16 kHz clips, 10 keywords + unknown + silence, espeak-ng voices, split by voice")
def load_keywords(split: str, preset: str, root, seed: int, cache: bool = True, **overrides) -> Dataset:
    params = preset_params("keywords", PRESETS, preset, overrides)
    arrays = cached("keywords", params, seed, lambda: generate(params, seed), cache, version=GENERATOR_VERSION)
    voices = voice_list(int(params["voices"]))
    frac = dict(zip(SPLITS, params["fractions"]))
    groups = split_groups(list(range(len(voices))), frac, seed)
    sel = np.nonzero(np.isin(arrays["voice"], sorted(groups[split])))[0]
    meta = {"classes": CLASSES, "task": "classification", "sample_rate": SAMPLE_RATE, "source": "espeak-ng",
            "voices": voices, "words": WORDS, "split_voices": sorted(voices[v] for v in groups[split]),
            "preset": preset, "params": params, "seed": seed}
    info = {"voice": np.array(voices, dtype=object)[arrays["voice"][sel]].astype(str),
            "voice_id": arrays["voice"][sel], "word_id": arrays["word"][sel],
            "pitch": arrays["pitch"][sel], "speed": arrays["speed"][sel]}
    x = arrays["x"][sel].astype(np.float32) / 32767.0
    return Dataset("keywords", split, x, arrays["y"][sel].astype(np.int64), meta, info)


# --- Google Speech Commands v2 ---------------------------------------------------------------------

SC_PRESETS = {"tiny": dict(max_per_class=20), "small": dict(max_per_class=500), "full": dict(max_per_class=None)}


def read_wav(path: Path) -> np.ndarray:
    """A mono float32 clip at 16 kHz (resampled if needed)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise DatasetError(f"'{path}' is not a readable WAV file: {exc}") from None
    wav = wav.mean(axis=1)
    if sr != SAMPLE_RATE:
        g = np.gcd(SAMPLE_RATE, sr)
        wav = resample_poly(wav, SAMPLE_RATE // g, sr // g).astype(np.float32)
    return wav


def _fit(wav: np.ndarray) -> np.ndarray:
    out = np.zeros(SAMPLE_RATE, np.float32)
    out[: min(SAMPLE_RATE, wav.size)] = wav[:SAMPLE_RATE]
    return out


@register("speech_commands", synthetic=False, splits=("train", "val", "test"),
          description="Google Speech Commands v2 from a local folder, 12 classes as `keywords`")
def load_speech_commands(split: str, preset: str, root: Path, seed: int, cache: bool = True,
                         **overrides) -> Dataset:
    params = preset_params("speech_commands", SC_PRESETS, preset, overrides)
    expected = ("<word>/<speaker>_nohash_<n>.wav folders (yes, no, ...), validation_list.txt, testing_list.txt, "
                "_background_noise_/*.wav")
    if not root.is_dir():
        raise DatasetError(f"Speech Commands folder '{root}' does not exist (expected {expected})")
    missing = [f for f in ("validation_list.txt", "testing_list.txt") if not (root / f).is_file()]
    if not any((root / w).is_dir() for w in KEYWORDS):
        missing.append("keyword folders (yes/, no/, ...)")
    require_files("Speech Commands v2", root, expected, missing)
    listed = {"val": set((root / "validation_list.txt").read_text().split()),
              "test": set((root / "testing_list.txt").read_text().split())}
    rng = np.random.default_rng(seed)
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    files: dict[int, list[str]] = {c: [] for c in range(len(CLASSES))}
    for w in words:
        ci = KEYWORDS.index(w) if w in KEYWORDS else CLASSES.index("unknown")
        for f in sorted((root / w).glob("*.wav")):
            rel = f"{w}/{f.name}"
            which = "val" if rel in listed["val"] else "test" if rel in listed["test"] else "train"
            if which == split:
                files[ci].append(rel)
    cap = params["max_per_class"]
    kw_counts = [len(files[c]) for c in range(len(KEYWORDS)) if files[c]]
    per_kw = max(1, int(round(np.mean(kw_counts)))) if kw_counts else 0  # unknown and silence: like a keyword
    limit_unknown = min(per_kw if per_kw else len(files[10]), cap or 10**9)
    chosen: list[tuple[int, str]] = []
    for c, fl in files.items():
        if c == CLASSES.index("silence"):
            continue
        limit = limit_unknown if c == CLASSES.index("unknown") else (cap or len(fl))
        if len(fl) > limit:
            fl = [fl[i] for i in sorted(rng.choice(len(fl), limit, replace=False))]
        chosen += [(c, f) for f in fl]
    xs = [_fit(read_wav(root / f)) for _, f in chosen]
    ys = [c for c, _ in chosen]
    speakers = [f.split("/")[1].split("_nohash_")[0] for _, f in chosen]
    # silence: 1 s crops of the background noise recordings at random gains
    noise_dir = root / "_background_noise_"
    noises = [read_wav(p) for p in sorted(noise_dir.glob("*.wav"))] if noise_dir.is_dir() else []
    noises = [n for n in noises if n.size >= SAMPLE_RATE]
    n_sil = min(per_kw, cap or per_kw) if noises else 0
    for _ in range(n_sil):
        n = noises[rng.integers(len(noises))]
        start = rng.integers(0, n.size - SAMPLE_RATE + 1)
        xs.append((n[start:start + SAMPLE_RATE] * rng.uniform(0.0, 1.0)).astype(np.float32))
        ys.append(CLASSES.index("silence"))
        speakers.append("_background_noise_")
    x = np.stack(xs) if xs else np.zeros((0, SAMPLE_RATE), np.float32)
    meta = {"classes": CLASSES, "task": "classification", "sample_rate": SAMPLE_RATE,
            "source": f"Speech Commands v2 ({root})", "preset": preset, "params": params, "seed": seed}
    return Dataset("speech_commands", split, x, np.array(ys, np.int64), meta,
                   {"voice": np.array(speakers, dtype=str)})
