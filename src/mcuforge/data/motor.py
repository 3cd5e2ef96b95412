"""Electric-motor temperature estimation: multivariate time series -> winding and magnet temperature.

``motor_temperature`` simulates a permanent-magnet synchronous motor under random
speed/torque profiles (holds, ramps, random excitation) with a lumped-parameter
thermal network of three nodes, sampled at 2 Hz like the public data set:

    C_w dT_w/dt = P_cu(T_w)        - (T_w - T_s)/R_ws
    C_s dT_s/dt = P_fe_stator      + (T_w - T_s)/R_ws + (T_r - T_s)/R_rs(n) - (T_s - T_cool)/R_sc
    C_r dT_r/dt = P_pm + P_fric    - (T_r - T_s)/R_rs(n) - (T_r - T_amb)/R_ra(n)

with copper losses 1.5 R(T_w) (i_d^2 + i_q^2), R(T) = R_20 (1 + 0.00393 (T - 20)),
iron losses from speed (hysteresis ~ f, eddy currents ~ f^2), magnet eddy losses,
friction; speed-dependent convection in the air gap; coolant and ambient
temperatures that drift. The columns are those of the public data set
(``measures_v2.csv``): u_q, coolant, stator_winding, u_d, stator_tooth,
motor_speed, i_d, i_q, pm, stator_yoke, ambient, torque, profile_id.

``motor_csv`` reads that CSV from a local path. Both are windowed the same way:
the series is averaged to one sample per ``step_s`` seconds, inputs are windows
of ``window`` steps of the 8 measurable signals (N, 8, window), targets the
stator winding and magnet (pm) temperatures at the window's last step (N, 2).
Inputs and targets are scaled by fixed constants (``meta["y_offset"]``,
``meta["y_scale"]`` map targets back to deg C). Splits hold out whole profiles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DatasetError
from . import Dataset, cached, preset_params, register, split_groups

COLUMNS = ["u_q", "coolant", "stator_winding", "u_d", "stator_tooth", "motor_speed", "i_d", "i_q", "pm",
           "stator_yoke", "ambient", "torque", "profile_id"]
FEATURES = ["u_q", "u_d", "i_d", "i_q", "motor_speed", "torque", "coolant", "ambient"]
TARGETS = ["stator_winding", "pm"]
# fixed scaling: (value - offset) / scale
FEATURE_OFFSET = np.array([0, 0, 0, 0, 0, 0, 50, 25], np.float64)
FEATURE_SCALE = np.array([100, 100, 200, 200, 6000, 200, 25, 5], np.float64)
Y_OFFSET = np.array([60.0, 60.0])
Y_SCALE = np.array([30.0, 30.0])
RATE_HZ = 2.0
SPLITS = ("train", "val", "test")
GENERATOR_VERSION = 1

PRESETS = {
    "tiny": dict(profiles=4, hours=1.0, step_s=10.0, window=64, hop=8, fractions=(0.5, 0.25, 0.25)),
    "small": dict(profiles=20, hours=2.0, step_s=10.0, window=64, hop=4, fractions=(0.7, 0.15, 0.15)),
    "full": dict(profiles=60, hours=4.0, step_s=10.0, window=64, hop=2, fractions=(0.7, 0.15, 0.15)),
}

# motor constants
POLE_PAIRS, PSI, L_D, L_Q, K_T, R_20 = 4, 0.045, 0.00015, 0.00018, 1.1, 0.02
C_W, C_S, C_R = 2500.0, 60000.0, 15000.0
R_WS, R_SC = 0.03, 0.015


def _profile(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Speed (rpm) and torque (Nm) at 2 Hz: holds and ramps between random operating points,
    some segments with random excitation."""
    speed, torque = np.empty(n), np.empty(n)
    i, s0, t0 = 0, 0.0, 0.0
    while i < n:
        hold = int(rng.uniform(30, 1200) * RATE_HZ)
        ramp = int(rng.uniform(2, 60) * RATE_HZ)
        s1 = rng.choice([0.0, rng.uniform(0, 6000)], p=[0.1, 0.9])
        t_max = 250.0 * min(1.0, 2500.0 / max(s1, 1.0))  # constant power above base speed
        t1 = rng.uniform(-0.6, 1.0) * t_max
        seg = np.arange(ramp + hold)
        frac = np.clip(seg / max(ramp, 1), 0, 1)
        sp = s0 + (s1 - s0) * frac
        tq = t0 + (t1 - t0) * frac
        if rng.random() < 0.3:  # random excitation around the operating point
            tq = tq + np.cumsum(rng.normal(0, 2.0, seg.size)).clip(-40, 40)
            sp = sp + np.cumsum(rng.normal(0, 5.0, seg.size)).clip(-300, 300)
        m = min(seg.size, n - i)
        speed[i:i + m], torque[i:i + m] = sp[:m], tq[:m]
        i += m
        s0, t0 = s1, t1
    return np.clip(speed, -100, 6500), np.clip(torque, -260, 260)


def simulate_profile(seconds: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = int(seconds * RATE_HZ)
    dt = 1.0 / RATE_HZ
    speed, torque = _profile(n, rng)
    i_q = torque / K_T + rng.normal(0, 0.5, n)
    i_d = -np.clip((speed - 1500) / 4500, 0, 1) * rng.uniform(180, 260) - 2 * np.abs(i_q) / 100
    w_el = POLE_PAIRS * speed * 2 * np.pi / 60
    # drifting coolant and ambient temperatures
    coolant = np.clip(rng.uniform(20, 65) + np.cumsum(rng.normal(0, 0.02, n)), 10, 90)
    steps = np.cumsum(rng.random(n) < 1 / 1800) * rng.uniform(-10, 10)  # occasional set-point changes
    coolant = np.clip(coolant + steps, 10, 90)
    ambient = np.clip(rng.uniform(18, 28) + np.cumsum(rng.normal(0, 0.005, n)), 8, 35)
    f = np.abs(w_el) / (2 * np.pi)
    p_fe = 1.0 * f + 0.0025 * f ** 2
    p_pm = 0.001 * f ** 2 * (1 + (i_q ** 2 + i_d ** 2) / 200 ** 2)
    p_fr = 0.01 * np.abs(speed) + 2e-6 * speed ** 2
    r_rs = 0.3 / (1 + np.abs(speed) / 3000)
    r_ra = 1.0 / (1 + np.abs(speed) / 2000)
    tw = np.empty(n)
    ts = np.empty(n)
    tr = np.empty(n)
    t_w = t_s = t_r = coolant[0] + rng.uniform(0, 5)
    for k in range(n):
        r = R_20 * (1 + 0.00393 * (t_w - 20))
        p_cu = 1.5 * r * (i_d[k] ** 2 + i_q[k] ** 2)
        q_ws = (t_w - t_s) / R_WS
        q_rs = (t_r - t_s) / r_rs[k]
        t_w += dt * (p_cu - q_ws) / C_W
        t_s += dt * (0.8 * p_fe[k] + q_ws + q_rs - (t_s - coolant[k]) / R_SC) / C_S
        t_r += dt * (p_pm[k] + 0.2 * p_fe[k] + p_fr[k] - q_rs - (t_r - ambient[k]) / r_ra[k]) / C_R
        tw[k], ts[k], tr[k] = t_w, t_s, t_r
    r_now = R_20 * (1 + 0.00393 * (tw - 20))
    u_d = r_now * i_d - w_el * L_Q * i_q
    u_q = r_now * i_q + w_el * (L_D * i_d + PSI)
    noise = lambda s: rng.normal(0, s, n)  # noqa: E731  (sensor noise)
    return {"u_q": np.clip(u_q, -140, 140) + noise(0.3), "u_d": np.clip(u_d, -140, 140) + noise(0.3),
            "i_d": i_d + noise(0.5), "i_q": i_q + noise(0.5), "motor_speed": speed + noise(2.0),
            "torque": torque + noise(0.5), "coolant": coolant + noise(0.05), "ambient": ambient + noise(0.05),
            "stator_winding": tw, "stator_tooth": ts + 0.3 * (tw - ts), "stator_yoke": ts, "pm": tr}


def generate_table(params: dict, seed: int) -> dict[str, np.ndarray]:
    """All profiles as columns of the public CSV (2 Hz)."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for pid in range(int(params["profiles"])):
        prof = simulate_profile(params["hours"] * 3600, rng)
        n = prof["pm"].size
        for c in COLUMNS:
            cols[c].append(np.full(n, pid, np.float64) if c == "profile_id" else prof[c])
    return {c: np.concatenate(v).astype(np.float32) for c, v in cols.items()}


def windows(table: dict[str, np.ndarray], params: dict) -> dict[str, np.ndarray]:
    """Average to one sample per step_s, then windows (N, 8, W) -> targets at the last step (N, 2)."""
    k = max(1, int(round(params["step_s"] * RATE_HZ)))
    win, hop = int(params["window"]), int(params["hop"])
    xs, ys, prof, pos = [], [], [], []
    pids = table["profile_id"].astype(np.int64)
    for pid in np.unique(pids):
        sel = pids == pid
        f = np.stack([table[c][sel] for c in FEATURES], axis=1).astype(np.float64)
        t = np.stack([table[c][sel] for c in TARGETS], axis=1).astype(np.float64)
        m = f.shape[0] // k
        if m < win:
            continue
        f = f[: m * k].reshape(m, k, -1).mean(axis=1)
        t = t[: m * k].reshape(m, k, -1)[:, -1]
        f = (f - FEATURE_OFFSET) / FEATURE_SCALE
        t = (t - Y_OFFSET) / Y_SCALE
        for i, end in enumerate(range(win, m + 1, hop)):
            xs.append(f[end - win:end].T)
            ys.append(t[end - 1])
            prof.append(pid)
            pos.append(i)
    if not xs:
        raise DatasetError(f"the profiles are shorter than one window ({win} steps of {params['step_s']} s)")
    return {"x": np.stack(xs).astype(np.float32), "y": np.stack(ys).astype(np.float32),
            "profile": np.array(prof, np.int64), "position": np.array(pos, np.int64)}


def _finish(name: str, split: str, arrays: dict, params: dict, seed: int, meta: dict) -> Dataset:
    groups = split_groups(list(np.unique(arrays["profile"])), dict(zip(SPLITS, params["fractions"])), seed)
    sel = np.nonzero(np.isin(arrays["profile"], sorted(groups[split])))[0]
    meta = dict(meta, task="regression", features=FEATURES, targets=TARGETS, y_offset=Y_OFFSET.tolist(),
                y_scale=Y_SCALE.tolist(), feature_offset=FEATURE_OFFSET.tolist(),
                feature_scale=FEATURE_SCALE.tolist(), split_profiles=sorted(int(g) for g in groups[split]),
                params=params, seed=seed)
    return Dataset(name, split, arrays["x"][sel], arrays["y"][sel], meta,
                   {"profile": arrays["profile"][sel], "position": arrays["position"][sel]})


@register("motor_temperature", synthetic=True, splits=SPLITS,
          description="PMSM thermal-network simulation: 8 signals -> winding and magnet temperature")
def load_motor(split: str, preset: str, root, seed: int, cache: bool = True, **overrides) -> Dataset:
    params = preset_params("motor_temperature", PRESETS, preset, overrides)
    arrays = cached("motor_temperature", params, seed,
                    lambda: windows(generate_table(params, seed), params), cache, version=GENERATOR_VERSION)
    return _finish("motor_temperature", split, arrays, params, seed,
                   {"source": "lumped-parameter thermal model", "preset": preset})


def read_measures_csv(path: Path) -> dict[str, np.ndarray]:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise DatasetError(f"'{path}' is not a readable CSV file: {exc}") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"'{path}' lacks the column(s) {', '.join(missing)} of measures_v2.csv "
                           f"(expected {', '.join(COLUMNS)})")
    return {c: df[c].to_numpy(np.float32) for c in COLUMNS}


@register("motor_csv", synthetic=False, splits=SPLITS,
          description="the public electric-motor-temperature CSV (measures_v2.csv) from a local path")
def load_motor_csv(split: str, preset: str, root: Path, seed: int, cache: bool = True, **overrides) -> Dataset:
    params = preset_params("motor_csv", {p: {k: v for k, v in d.items() if k not in ("profiles", "hours")}
                                         for p, d in PRESETS.items()}, preset, overrides)
    path = root / "measures_v2.csv" if root.is_dir() else root
    if not path.is_file():
        raise DatasetError(f"'{root}' holds no measures_v2.csv (expected the electric-motor-temperature CSV "
                           f"with columns {', '.join(COLUMNS)})")
    arrays = windows(read_measures_csv(path), params)
    return _finish("motor_csv", split, arrays, params, seed, {"source": f"measures_v2.csv ({path})",
                                                               "preset": preset})
