"""Search over early-exit configurations with Optuna, without retraining.

A configuration is a subset of the candidate exits with one branch architecture each, a decision
mechanism with its integer thresholds, and (with several targets) the device that runs each segment.
Every trial is evaluated from PRECOMPUTED int8 outputs of all candidate exits on a validation stream
(``decisions.simulate`` replays the decisions sample by sample, state included) and from the
per-part costs (``cost.CandidateCosts``, exact Cortex-M4 instruction counts), so a trial takes
milliseconds.

Objectives: one target: accuracy (max) and mean instructions per inference (min); several targets:
accuracy, mean latency (ms) and mean energy (uJ) per inference (``cost.ENERGY_MODEL``). Studies live
where ``mcuforge.study`` puts them (SQLite by default, ``--storage postgresql://...`` for workers).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..study import Objective, finished_trials, open_study, run_trials
from .augment import Augmented
from .cost import CandidateCosts, Device, SampleCost, devices, outcome_cost
from .decisions import ENTROPY_Q12, Decision, simulate
from .network import EarlyExitNetwork, LinkModel
from .streams import Stream

SEARCH_KINDS = ("confidence", "margin", "entropy", "difference", "patience")
CONFIDENCE_KINDS = ("confidence", "margin", "entropy")


# --- precomputed exit outputs -----------------------------------------------------------------------

@dataclass
class StreamExits:
    """The u of every candidate exit on every sample of a stream (and its labels and scenes)."""

    name: str
    split: str
    y: np.ndarray
    scene: np.ndarray
    u: dict[str, np.ndarray]        # "final", "cut{k}/{arch}" -> (n, classes) int32

    def __len__(self) -> int:
        return int(len(self.y))


def precompute(aug: Augmented, stream: Stream, spec, cache_dir: str | Path | None = None) -> StreamExits:
    """Run the combined int8 graph over the stream once (cached as exits_<stream>_<split>.npz)."""
    key = hashlib.sha256(json.dumps([aug.meta.get("model_sha"), stream.name, stream.split, len(stream),
                                     stream.y[:64].tolist()]).encode()).hexdigest()[:16]
    f = Path(cache_dir) / f"exits_{stream.name}_{stream.split}_{key}.npz" if cache_dir else None
    if f is not None and f.is_file():
        with np.load(f) as z:
            return StreamExits(stream.name, stream.split, z["y"], z["scene"],
                               {k[2:].replace("__", "/"): z[k] for k in z.files if k.startswith("u_")})
    u = aug.exit_outputs(stream.model_inputs(spec))
    if f is not None:
        tmp = f.with_name(f.name + ".partial.npz")
        np.savez(tmp, y=stream.y, scene=stream.scene, **{"u_" + k.replace("/", "__"): v for k, v in u.items()})
        tmp.replace(f)
    return StreamExits(stream.name, stream.split, stream.y, stream.scene, u)


# --- configurations and their evaluation ------------------------------------------------------------

@dataclass
class Config:
    exits: list[tuple[int, str]] = field(default_factory=list)   # (cut, arch), sorted by cut
    decision: Decision = field(default_factory=lambda: Decision("none", []))
    mapping: list[str] = field(default_factory=list)             # one device per segment

    def to_json(self) -> dict:
        return {"exits": [[int(c), a] for c, a in self.exits], "decision": self.decision.to_json(),
                "mapping": list(self.mapping)}

    @classmethod
    def from_json(cls, d: dict) -> "Config":
        return cls([(int(c), a) for c, a in d["exits"]], Decision.from_json(d["decision"]), list(d["mapping"]))

    def describe(self) -> str:
        ex = ", ".join(f"{a}@{c}" for c, a in self.exits) or "none"
        th = ",".join(map(str, self.decision.thresholds))
        devs = "" if len(set(self.mapping)) <= 1 else " on " + ">".join(self.mapping)
        return f"{self.decision.kind}({th}) exits {ex}{devs}"


def single_exit(target: str = "cortex-m4") -> Config:
    return Config([], Decision("none", []), [target])


def evaluate(cfg: Config, sx: StreamExits, costs: CandidateCosts, link: LinkModel | None = None,
             table: dict[str, Device] | None = None) -> dict:
    """Accuracy and mean costs per inference of ``cfg`` on a stream (decisions replayed in order)."""
    link = link or LinkModel()
    table = table or devices()
    exit_u = [sx.u[f"cut{c}/{a}"] for c, a in cfg.exits] + [sx.u["final"]]
    outcomes = simulate(cfg.decision, exit_u)
    seg_i, head_i, seg_m, head_m = costs.parts(cfg.exits)
    cut_bytes = [costs.cut_bytes[c] for c, _ in cfg.exits]
    mapping = cfg.mapping if len(cfg.mapping) == len(exit_u) else [cfg.mapping[0] if cfg.mapping else
                                                                   "cortex-m4"] * len(exit_u)
    memo: dict[tuple, SampleCost] = {}
    tot = np.zeros(5)
    exits_taken = np.zeros(len(exit_u), np.int64)
    correct = 0
    for o, y in zip(outcomes, sx.y):
        k = (o.exit, o.heads)
        c = memo.get(k)
        if c is None:
            c = memo[k] = outcome_cost(o, seg_i, head_i, seg_m, head_m, cut_bytes, mapping, link, table)
        tot += (c.instructions, c.macs, c.seconds, c.joules, c.link_bytes)
        exits_taken[o.exit] += 1
        correct += int(o.cls == y)
    n = len(outcomes)
    mean = tot / n
    return {"accuracy": 100.0 * correct / n, "instructions": float(mean[0]), "macs": float(mean[1]),
            "latency_ms": float(mean[2] * 1e3), "energy_uj": float(mean[3] * 1e6), "link_bytes": float(mean[4]),
            "exit_share": (exits_taken / n).tolist(), "samples": n}


# --- the search ---------------------------------------------------------------------------------------

def objectives(targets: list[str]) -> list[Objective]:
    if len(targets) == 1:
        return [Objective("accuracy", False), Objective("instructions", True)]
    return [Objective("accuracy", False), Objective("latency_ms", True), Objective("energy_uj", True)]


def _thresholds(trial, kind: str, n: int, n_classes: int) -> list[int]:
    if kind == "difference":
        return [trial.suggest_int("difference_T", 1, 512, log=True)]
    if kind == "entropy":
        hi = int(ENTROPY_Q12[256 // n_classes] * n_classes) + 1   # ~ the uniform distribution's entropy
        return [trial.suggest_int(f"entropy_T{j}", 1, hi, log=True) for j in range(n)]
    lo = {"confidence": 256 // n_classes, "margin": 0, "patience": 0}[kind]
    return [trial.suggest_int(f"{kind}_T{j}", lo, 256) for j in range(n)]


def suggest(trial, n_cuts: int, archs: list[str], kinds: tuple[str, ...], targets: list[str],
            n_classes: int) -> Config:
    exits = []
    for k in range(n_cuts):
        a = trial.suggest_categorical(f"exit{k}", ["none", *archs])
        if a != "none":
            exits.append((k, a))
    kind = trial.suggest_categorical("kind", list(kinds)) if len(kinds) > 1 else kinds[0]
    if kind == "difference":
        exits = exits[:1]   # only exit 0 (the scene detector) is ever evaluated: more heads are dead flash
    if not exits:
        decision = Decision("none", [])
    else:
        decision = Decision(kind, _thresholds(trial, kind, len(exits), n_classes))
    mapping, dev = [targets[0]], 0
    for k in range(1, len(exits) + 1):
        if len(targets) > 1:
            dev = trial.suggest_int(f"dev{k}", dev, len(targets) - 1)
        mapping.append(targets[dev])
    return Config(exits, decision, mapping)


def _values(res: dict, objs: list[Objective]) -> tuple:
    return tuple(res[o.name] for o in objs)


@dataclass
class SearchResult:
    study: object
    objectives: list[Objective]
    ran: int
    seconds: float


def search(aug: Augmented, costs: CandidateCosts, val: StreamExits, n_trials: int = 200,
           targets: list[str] | None = None, kinds: tuple[str, ...] = SEARCH_KINDS, link: LinkModel | None = None,
           storage: str | None = None, study_name: str | None = None, default_file: str | Path = "eenn-study.db",
           worker: bool = False, seed: int = 0, show: bool = True, enqueue: list[dict] | None = None) -> SearchResult:
    """Run (or resume, or join as a worker) the multi-objective study; trials are configurations
    evaluated on the validation stream ``val``."""
    targets = targets or ["cortex-m4"]
    objs = objectives(targets)
    link = link or LinkModel()
    table = devices()
    name = study_name or f"eenn-{aug.meta.get('model', 'model')}-{'-'.join(targets)}-{'-'.join(kinds)}"
    study = open_study(name, objs, storage, Path(default_file), seed=seed, create=not worker)
    archs = list(aug.meta.get("archs") or sorted({c.arch for c in aug.candidates}))
    n_classes = len(aug.classes)
    if not worker and not finished_trials(study):
        for params in enqueue or []:
            study.enqueue_trial(params, skip_if_exists=True)

    def objective(trial):
        cfg = suggest(trial, len(aug.cuts), archs, kinds, targets, n_classes)
        res = evaluate(cfg, val, costs, link, table)
        trial.set_user_attr("config", cfg.to_json())
        trial.set_user_attr("describe", cfg.describe())
        for k in ("instructions", "macs", "latency_ms", "energy_uj", "link_bytes"):
            trial.set_user_attr(k, res[k])
        return _values(res, objs)

    t0 = time.perf_counter()
    ran = run_trials(study, objective, n_trials, label=f"eenn search ({name})", show=show)
    return SearchResult(study, objs, ran, time.perf_counter() - t0)


def correct(cfg: Config, sx: StreamExits) -> np.ndarray:
    """Per sample of the stream: did the configuration answer right (decisions replayed in order)?"""
    exit_u = [sx.u[f"cut{c}/{a}"] for c, a in cfg.exits] + [sx.u["final"]]
    return np.array([o.cls == y for o, y in zip(simulate(cfg.decision, exit_u), sx.y)])


def loss_bound(ok: np.ndarray, ok_ref: np.ndarray, scene: np.ndarray, level: float = 0.9, n_boot: int = 2000,
               seed: int = 0) -> float:
    """Upper ``level`` quantile (accuracy points) of the loss of ``ok`` against ``ok_ref`` under a bootstrap
    over SCENES: on a correlated stream errors come in runs (a missed scene change costs the whole scene),
    so samples are not independent and the spread over scenes is what a new stream will see."""
    _, idx = np.unique(scene, return_inverse=True)
    lost = np.bincount(idx, weights=ok_ref.astype(np.float64) - ok.astype(np.float64))
    size = np.bincount(idx).astype(np.float64)
    pick = np.random.default_rng(seed).integers(0, len(size), (n_boot, len(size)))
    return float(np.quantile(100.0 * lost[pick].sum(1) / size[pick].sum(1), level))


def choose(study, objs: list[Objective], reference_accuracy: float, max_loss: float = 2.0,
           fallback: Config | None = None, val: StreamExits | None = None,
           level: float = 0.9) -> tuple[Config, dict]:
    """The cheapest finished trial (instructions, or energy with several targets) whose validation
    accuracy is within ``max_loss`` points of ``reference_accuracy``; the fallback (single exit) if none is.
    With the validation stream ``val``, the loss against the fallback must also stay within ``max_loss``
    at the ``level`` quantile of a scene bootstrap (``loss_bound``): a point whose small loss rests on a
    few lucky scenes is passed over for a cheaper-looking one's safer neighbour."""
    cost_key = "instructions" if len(objs) == 2 else "energy_uj"
    fallback = fallback or single_exit()
    ok_ref = correct(fallback, val) if val is not None else None
    within = [t for t in finished_trials(study) if t.values[0] >= reference_accuracy - max_loss - 1e-9
              and t.user_attrs.get(cost_key) is not None]
    for t in sorted(within, key=lambda t: (t.user_attrs[cost_key], t.number)):
        cfg = Config.from_json(t.user_attrs["config"])
        info = {"trial": t.number, "accuracy": t.values[0], cost_key: t.user_attrs[cost_key]}
        if val is not None:
            bound = loss_bound(correct(cfg, val), ok_ref, val.scene, level)
            if bound > max_loss + 1e-9:
                continue
            info["loss_bound"] = {"points": bound, "level": level, "over": "scenes (bootstrap)"}
        return cfg, info
    return fallback, {"trial": None}


def to_network(aug: Augmented, cfg: Config, link: LinkModel | None = None, costs: CandidateCosts | None = None,
               meta: dict | None = None) -> EarlyExitNetwork:
    """The early-exit network of a configuration, with its per-part costs in ``meta``."""
    extra = dict(meta or {})
    if costs is not None:
        seg_i, head_i, seg_m, head_m = costs.parts(cfg.exits)
        extra["costs"] = {"target": costs.target, "segment_instructions": seg_i, "head_instructions": head_i,
                          "segment_macs": seg_m, "head_macs": head_m,
                          "cut_bytes": [costs.cut_bytes[c] for c, _ in cfg.exits],
                          "method": "per-layer instruction counts of the combined int8 graph on QEMU (bench)"}
    decision = cfg.decision if cfg.exits else None
    mapping = cfg.mapping if len(set(cfg.mapping)) > 1 else []
    return aug.network(cfg.exits, decision, mapping=mapping, link=link, meta=extra)
