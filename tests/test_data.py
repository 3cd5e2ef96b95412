"""mcuforge.data: determinism, shapes, class balance, group hold-out, clear errors, and the
loaders of the real formats on small files written here in those formats."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest

from mcuforge import data
from mcuforge.data import audio, ecg, keywords, motor
from mcuforge.errors import DatasetError, McuforgeError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Generated data sets go to a cache of this test session, shared by its xdist workers."""
    base = tmp_path_factory.getbasetemp()
    base = base.parent if base.name.startswith("popen-gw") else base
    monkeypatch.setenv("MCUFORGE_CACHE", str(base / "mcuforge-cache"))


# --- keywords ---------------------------------------------------------------------------------------

def test_keywords_generation_is_deterministic_per_seed():
    p = dict(keywords.PRESETS["tiny"], voices=2)
    a, b = keywords.generate(p, seed=3, workers=2), keywords.generate(p, seed=3, workers=1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = keywords.generate(p, seed=4)
    assert not np.array_equal(a["x"], c["x"])


def test_keywords_shapes_balance_and_voice_holdout():
    splits = {s: data.load("keywords", split=s, preset="tiny") for s in keywords.SPLITS}
    voices = {}
    for s, ds in splits.items():
        assert ds.x.dtype == np.float32 and ds.x.shape[1:] == (16000,) and len(ds.y) == len(ds)
        assert np.abs(ds.x).max() <= 1.0
        counts = np.bincount(ds.y, minlength=12)
        assert counts.min() == counts.max() > 0  # 12 balanced classes
        assert ds.classes[-2:] == ["unknown", "silence"] and len(ds.classes) == 12
        voices[s] = set(ds.info["voice"])
        assert voices[s] == set(ds.meta["split_voices"])
    names = list(voices)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not voices[a] & voices[b], f"voices in both {a} and {b}"
    assert set().union(*voices.values()) == set(keywords.voice_list(keywords.PRESETS["tiny"]["voices"]))
    # the same call returns the same arrays (from the cache)
    again = data.load("keywords", split="test", preset="tiny")
    np.testing.assert_array_equal(again.x, splits["test"].x)


def test_keywords_clips_hold_speech_and_silence_is_quiet():
    ds = data.load("keywords", split="train", preset="tiny")
    rms = np.sqrt(np.mean(ds.x ** 2, axis=1))
    sil = ds.y == keywords.CLASSES.index("silence")
    assert np.median(rms[~sil]) > 3 * np.median(rms[sil])
    assert audio.mfcc(ds.x[:2]).shape == (2, 49, 10)


def test_speech_commands_folder(tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(0)
    root = tmp_path / "sc"
    files = {"yes": ["aa_nohash_0", "bb_nohash_0", "cc_nohash_0"], "no": ["aa_nohash_1", "dd_nohash_0"],
             "cat": ["ee_nohash_0", "ff_nohash_0"]}
    for word, names in files.items():
        (root / word).mkdir(parents=True)
        for n in names:
            sf.write(root / word / f"{n}.wav", (rng.normal(0, 0.1, 12000)).astype(np.float32), 16000,
                     subtype="PCM_16")
    (root / "_background_noise_").mkdir()
    sf.write(root / "_background_noise_" / "white.wav", rng.normal(0, 0.1, 40000).astype(np.float32), 16000)
    (root / "validation_list.txt").write_text("yes/bb_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("yes/cc_nohash_0.wav\nno/dd_nohash_0.wav\n")
    tr = data.load("speech_commands", split="train", root=root)
    te = data.load("speech_commands", split="test", root=root)
    va = data.load("speech_commands", split="val", root=root)
    assert tr.x.shape[1:] == (16000,) and tr.x.dtype == np.float32
    assert sorted(tr.classes[i] for i in tr.y) == ["no", "silence", "unknown", "yes"]
    assert sorted(te.classes[i] for i in te.y) == ["no", "silence", "yes"]
    assert [va.classes[i] for i in va.y] == ["yes", "silence"]
    assert "aa" in set(tr.info["voice"]) and not {"bb", "cc", "dd"} & set(tr.info["voice"])
    np.testing.assert_array_equal(tr.x[0, 12000:], 0)  # padded to 1 s


# --- ECG ----------------------------------------------------------------------------------------------

def test_ecg_streams_windows_and_holdout():
    p = dict(ecg.PRESETS["tiny"], streams=1, stream_s=30)
    a, b = ecg.generate(p, 1), ecg.generate(p, 1)
    np.testing.assert_array_equal(a["x"], b["x"])
    assert a["x"].shape[1:] == (1, 256)
    splits = {s: data.load("ecg", split=s, preset="tiny") for s in ecg.SPLITS}
    streams = [set(ds.info["stream"]) for ds in splits.values()]
    assert not (streams[0] & streams[1] or streams[0] & streams[2] or streams[1] & streams[2])
    tr = splits["train"]
    for s in np.unique(tr.info["stream"]):  # windows are in stream order
        pos = tr.info["position"][tr.info["stream"] == s]
        np.testing.assert_array_equal(pos, np.arange(len(pos)))
    all_y = np.concatenate([ds.y for ds in splits.values()])
    counts = np.bincount(all_y, minlength=5)
    assert counts.min() > 0.5 * counts.mean()  # episodes keep the rhythms balanced
    # rhythms persist over consecutive windows (temporal correlation)
    assert np.mean(tr.y[1:] == tr.y[:-1]) > 0.7


def test_mitbih_record(tmp_path):
    wfdb = pytest.importorskip("wfdb")
    import neurokit2 as nk

    fs = 360
    sig = np.asarray(nk.ecg_simulate(duration=30, sampling_rate=fs, heart_rate=70, method="simple",
                                     random_state=0), np.float64)
    wfdb.wrsamp("100", fs=fs, units=["mV"], sig_name=["MLII"], p_signal=sig[:, None], fmt=["212"],
                write_dir=str(tmp_path))
    wfdb.wrann("100", "atr", np.array([0, 10 * fs, 20 * fs]), symbol=["+", "+", "~"],
               aux_note=["(N", "(AFIB", ""], write_dir=str(tmp_path))
    ds = data.load("mitbih", split="train", root=tmp_path, fractions=(1.0, 0.0, 0.0))
    assert ds.x.shape[1:] == (1, 256)
    labels = [ds.classes[i] for i in ds.y]
    assert labels[0] == "normal" and "irregular" in labels and labels[-1] == "noisy"
    assert list(ds.info["position"][:3]) == [0, 1, 2]


# --- motor temperature ------------------------------------------------------------------------------------

def test_motor_simulation_windows_and_profiles():
    p = dict(motor.PRESETS["tiny"], profiles=2, hours=0.5)
    a, b = motor.generate_table(p, 5), motor.generate_table(p, 5)
    for c in motor.COLUMNS:
        np.testing.assert_array_equal(a[c], b[c])
    # physics: winding is the hottest node under load, all above the coolant on average
    assert np.mean(a["stator_winding"]) > np.mean(a["stator_yoke"]) > np.mean(a["coolant"])
    splits = {s: data.load("motor_temperature", split=s, preset="tiny") for s in motor.SPLITS}
    for ds in splits.values():
        assert ds.x.shape[1:] == (8, 64) and ds.y.shape[1:] == (2,) and ds.meta["task"] == "regression"
    prof = [set(ds.info["profile"]) for ds in splits.values()]
    assert not (prof[0] & prof[1] or prof[0] & prof[2] or prof[1] & prof[2])


def test_motor_csv(tmp_path):
    import pandas as pd

    table = motor.generate_table(dict(motor.PRESETS["tiny"], profiles=3, hours=0.3), 0)
    pd.DataFrame({c: table[c] for c in motor.COLUMNS}).to_csv(tmp_path / "measures_v2.csv", index=False)
    ds = data.load("motor_csv", split="train", root=tmp_path, window=16, hop=4)
    assert ds.x.shape[1:] == (8, 16) and ds.y.shape[1:] == (2,)
    # deg C back from the scaled targets
    assert 0 < (ds.y * ds.meta["y_scale"] + ds.meta["y_offset"]).mean() < 200
    pd.DataFrame({"u_q": [1.0]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DatasetError, match="lacks the column.*coolant"):
        data.load("motor_csv", root=tmp_path / "bad.csv")


# --- images and machine sounds -----------------------------------------------------------------------------

def _write_idx(path, arr, gz=False):
    code = {np.uint8: 0x08}[arr.dtype.type]
    raw = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    (gzip.open if gz else open)(path, "wb").write(raw)


def test_mnist_idx(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs, gz=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    ds = data.load("mnist", split="train", root=tmp_path)
    assert ds.x.shape == (7, 1, 28, 28)
    np.testing.assert_allclose(ds.x[:, 0] * 255, imgs, atol=1e-3)
    np.testing.assert_array_equal(ds.y, labels)
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte"):
        data.load("mnist", split="test", root=tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04garbage")
    (tmp_path / "bad" / "train-labels-idx1-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DatasetError, match="not an IDX file"):
        data.load("mnist", root=tmp_path / "bad")


@pytest.mark.parametrize("binary", [False, True])
def test_cifar10_batches(tmp_path, binary):
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, 3)
        batches[name] = (x, y)
        if binary:
            np.concatenate([y.astype(np.uint8)[:, None], x], axis=1).tofile(tmp_path / f"{name}.bin")
        else:
            with open(tmp_path / name, "wb") as f:
                pickle.dump({b"data": x, b"labels": list(map(int, y))}, f)
    tr = data.load("cifar10", split="train", root=tmp_path)
    te = data.load("cifar10", split="test", root=tmp_path)
    assert tr.x.shape == (15, 3, 32, 32) and te.x.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(te.x.reshape(3, -1) * 255, batches["test_batch"][0], atol=1e-3)
    np.testing.assert_array_equal(te.y, batches["test_batch"][1])


def test_synthetic_images_and_machine_sounds():
    sh = data.load("shapes", split="train", preset="tiny")
    assert sh.x.shape[1:] == (3, 32, 32) and 0 <= sh.x.min() and sh.x.max() <= 1
    counts = np.bincount(sh.y, minlength=10)
    assert counts.min() == counts.max()
    tr = data.load("machine_sound", split="train", preset="tiny")
    te = data.load("machine_sound", split="test", preset="tiny")
    assert tr.x.shape[1:] == (640,) and set(tr.y) == {0} and set(te.y) == {0, 1}
    assert not set(tr.info["clip"]) & set(te.info["clip"])
    d = data.load("digits", split="test")
    assert d.x.shape[1:] == (1, 8, 8) and len(np.unique(d.y)) == 10


# --- errors -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("mnist", "train-images-idx3-ubyte"), ("cifar10", "data_batch_1"), ("speech_commands", "validation_list.txt"),
    ("mitbih", ".hea"), ("motor_csv", "measures_v2.csv"),
])
def test_wrong_folder_names_the_expected_files(tmp_path, name, expected):
    (tmp_path / "stray.txt").write_text("not a data set")
    with pytest.raises(DatasetError, match=expected.replace(".", r"\.")) as exc:
        data.load(name, root=tmp_path)
    assert isinstance(exc.value, McuforgeError)
    with pytest.raises(DatasetError, match="does not exist|holds no"):
        data.load(name, root=tmp_path / "missing")


def test_usage_errors():
    with pytest.raises(DatasetError, match="unknown data set 'nope'.*keywords"):
        data.load("nope")
    with pytest.raises(DatasetError, match="no split 'new_speakers'"):
        data.load("ecg", split="new_speakers", preset="tiny")
    with pytest.raises(DatasetError, match="unknown preset"):
        data.load("ecg", preset="huge")
    with pytest.raises(DatasetError, match="give root="):
        data.load("mnist")
    with pytest.raises(DatasetError, match="no parameter.*colour"):
        data.load("ecg", preset="tiny", colour=1)
