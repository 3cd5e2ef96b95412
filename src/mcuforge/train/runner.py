"""Run training through a library generated with --train: the numpy twin (reference), the host build,
or Cortex-M firmware on QEMU (instructions of every step counted exactly), with the same samples.

Every runner returns a TrainRun: the prediction before each step, the trained parameters at each dump
(every `dump_every` steps and at the end) and, on QEMU, the instructions of each step and the stack.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..codegen.emit import load_report
from ..errors import InputError, ToolchainError
from ..targets.host import run_executable
from ..ir.graph import Graph, QuantParams
from ..runner import load_library
from .program import TrainConfig

CE_LABEL_BYTES = 4


@dataclass
class LayerParams:
    node: str
    w: np.ndarray  # int8 [O, K]
    b: np.ndarray | None  # int32 [O]
    a: np.ndarray  # int32 [O]

    def equal(self, other: "LayerParams") -> bool:
        return (np.array_equal(self.w, other.w) and np.array_equal(self.a, other.a)
                and ((self.b is None and other.b is None) or np.array_equal(self.b, other.b)))


@dataclass
class TrainRun:
    target: str
    preds: np.ndarray  # int32 [N]
    states: list[list[LayerParams]]  # per dump, per layer (backward order)
    stats: dict = field(default_factory=dict)
    instructions: list[int] | None = None  # per step (QEMU)
    seconds: float = 0.0
    firmware: object = None

    @property
    def final(self) -> list[LayerParams]:
        return self.states[-1]


def train_report(lib_dir: str | Path) -> dict:
    report = load_report(lib_dir)
    if "train" not in report:
        raise InputError(f"'{lib_dir}' was deployed without training: deploy it with --train")
    return report


def check_samples(report: dict, x: np.ndarray, labels: np.ndarray) -> int:
    tr = report["train"]
    shape = tuple(report["inputs"][0]["shape"][1:])
    if x.dtype != np.int8 or tuple(x.shape[1:]) != shape:
        raise InputError(f"training inputs must be int8 of shape (N, {', '.join(map(str, shape))}), got "
                         f"{x.dtype} {x.shape}")
    n = len(x)
    if tr["loss"] == "ce":
        labels = np.asarray(labels)
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise InputError(f"labels must be N integer class indices, got {labels.dtype} {labels.shape}")
        if n and (labels.min() < 0 or labels.max() >= tr["num_classes"]):
            raise InputError(f"labels must be classes 0..{tr['num_classes'] - 1}")
    else:
        size = int(np.prod(report["outputs"][0]["shape"][1:]))
        if labels.dtype != np.int8 or labels.shape[0] != n or labels.reshape(n, -1).shape[1] != size:
            raise InputError(f"MSE targets must be int8 of shape (N, {size}) in the output's quantization")
    return n


def pack_samples(report: dict, x: np.ndarray, labels: np.ndarray) -> bytes:
    n = len(x)
    xi = np.ascontiguousarray(x).reshape(n, -1).view(np.uint8)
    if report["train"]["loss"] == "ce":
        lab = np.asarray(labels, "<i4").reshape(n, 1).view(np.uint8)
    else:
        lab = np.ascontiguousarray(labels).reshape(n, -1).view(np.uint8)
    return np.concatenate([xi, lab], axis=1).tobytes()


def parse_states(report: dict, raw: bytes) -> list[list[LayerParams]]:
    layers = report["train"]["layers"]
    per = sum(L["out_channels"] * L["per_channel"] + 4 * L["out_channels"] * (2 if L["bias"] else 1) for L in layers)
    if per == 0 or len(raw) % per:
        raise ToolchainError(f"the training runner wrote {len(raw)} state bytes, not a multiple of {per}")
    out = []
    for d in range(len(raw) // per):
        at = d * per
        dump = []
        for L in layers:
            o, k = L["out_channels"], L["per_channel"]
            w = np.frombuffer(raw, np.int8, o * k, at).reshape(o, k).copy()
            at += o * k
            b = None
            if L["bias"]:
                b = np.frombuffer(raw, "<i4", o, at).astype(np.int32)
                at += 4 * o
            a = np.frombuffer(raw, "<i4", o, at).astype(np.int32)
            at += 4 * o
            dump.append(LayerParams(L["node"], w, b, a))
        out.append(dump)
    return out


def apply_state(graph: Graph, report: dict, state: list[LayerParams]) -> Graph:
    """The graph with trained parameters: weights, biases, and weight scales s_w0 2^a (exactly what the C
    library computes with: the requantization multipliers of s_w0 2^a are the original ones, shifts + a)."""
    g = graph.copy()
    for L, P in zip(report["train"]["layers"], state):
        wt = g.tensors[L["weight"]]
        s_w0 = np.asarray(L["s_w0"], np.float64)
        wt.data = P.w.reshape(wt.shape).astype(np.int8)
        scale = (s_w0 * np.exp2(P.a.astype(np.float64))).astype(np.float32)
        wt.quant = QuantParams(scale, np.zeros(len(scale), np.int64), 0)
        if L["bias"]:
            bt = g.tensors[L["bias"]]
            s_x = float(g.tensors[g.node(L["node"]).inputs[0]].quant.s)
            bt.data = P.b.astype(np.int32)
            bt.quant = QuantParams((np.float64(s_x) * scale.astype(np.float64)).astype(np.float32),
                                   np.zeros(len(scale), np.int64), 0)
    return g


# --- reference (the numpy twin) -----------------------------------------------------------------------

def twin_state(trainer) -> list[LayerParams]:
    out = []
    for L, S in zip(trainer.prog.layers, trainer.state):
        out.append(LayerParams(L.node, S.w.copy(), S.b.astype(np.int32).copy() if L.bias else None,
                               S.a.astype(np.int32).copy()))
    return out


def run_train_reference(lib_dir: str | Path, x: np.ndarray, labels: np.ndarray, dump_every: int = 0,
                        on_step=None) -> tuple[TrainRun, object]:
    from .fqt import FQTTrainer

    report = train_report(lib_dir)
    n = check_samples(report, x, labels)
    graph = load_library(lib_dir)
    trainer = FQTTrainer(graph, TrainConfig.from_json(report["train"]["config"]))
    preds, states = np.zeros(n, np.int32), []
    t0 = time.perf_counter()
    for i in range(n):
        preds[i] = trainer.step(x[i:i + 1], labels[i])
        if dump_every and (i + 1) % dump_every == 0:
            states.append(twin_state(trainer))
        if on_step is not None:
            on_step(i + 1, trainer)
    if not dump_every or n % dump_every:
        states.append(twin_state(trainer))
    return TrainRun("reference", preds, states, {"samples": n}, seconds=time.perf_counter() - t0), trainer


# --- host -----------------------------------------------------------------------------------------------

def build_host_runner(lib_dir: str | Path, sanitize: bool = False) -> Path:
    from ..targets.host import build_firmware_main

    return build_firmware_main(lib_dir, "mf_train_main.c", "training runner", sanitize)


def _files(tmp: Path, report: dict, x, labels, dump_every: int) -> None:
    (tmp / "mf_train_cfg.bin").write_bytes(np.array([dump_every], "<i4").tobytes())
    (tmp / "mf_train_in.bin").write_bytes(pack_samples(report, x, labels))


def _results(tmp: Path, report: dict, n: int, out_text: str, target: str) -> TrainRun:
    m = re.search(r"MF_STATS (.*)", out_text)
    if not m:
        raise ToolchainError(f"the training runner printed no statistics:\n{out_text[-4000:]}")
    stats = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    if stats["samples"] != n:
        raise ToolchainError(f"the training runner ran {stats['samples']} samples, expected {n}")
    preds = np.fromfile(tmp / "mf_train_out.bin", "<i4").astype(np.int32)
    if preds.size != n:
        raise ToolchainError(f"the training runner wrote {preds.size} predictions, expected {n}")
    return TrainRun(target, preds, parse_states(report, (tmp / "mf_train_state.bin").read_bytes()), stats)


def run_train_host(lib_dir: str | Path, x: np.ndarray, labels: np.ndarray, dump_every: int = 0,
                   sanitize: bool = False, timeout: float = 600) -> TrainRun:
    report = train_report(lib_dir)
    n = check_samples(report, x, labels)
    exe = build_host_runner(lib_dir, sanitize)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _files(tmp, report, x, labels, dump_every)
        t0 = time.perf_counter()
        proc = run_executable([str(exe)], tmp, "host training run", sanitize, timeout)
        run = _results(tmp, report, n, proc.stdout, "host")
        run.seconds = time.perf_counter() - t0
        return run


# --- Cortex-M on QEMU -------------------------------------------------------------------------------------

def run_train_cortex_m(lib_dir: str | Path, x: np.ndarray, labels: np.ndarray, target="cortex-m4",
                       dump_every: int = 0, count: bool = True, ram=None, flash=None,
                       timeout: float = 600, profile: bool = False) -> TrainRun:
    """Train on the emulated target; count=True counts every step's instructions exactly; profile=True
    (a build with -DMF_PROFILE) also splits them into phases (stats["phases"]: name -> mean instructions):
    each forward layer, the loss and plan, each backward node."""
    from ..targets.bench import _calibration, _per_sample
    from ..targets.cortex_m import build_firmware, build_icount_plugin, qemu_command, resolve_target
    from ..targets.table import Target

    report = train_report(lib_dir)
    n = check_samples(report, x, labels)
    t = target if isinstance(target, Target) else resolve_target(report, target, ram, flash)
    fw = build_firmware(lib_dir, t, profile=profile, main="mf_train_main.c")
    plugin = build_icount_plugin() if count or profile else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _files(tmp, report, x, labels, dump_every)
        cmd = qemu_command(fw, plugin, tmp / "icount.txt")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ToolchainError(f"QEMU ({t.machine.name}) did not finish training {n} samples within "
                                 f"{timeout:g} s") from None
        text = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            raise ToolchainError(f"training firmware on QEMU {t.machine.name} failed (exit {proc.returncode}):\n"
                                 f"{text[-4000:]}")
        run = _results(tmp, report, n, proc.stdout, t.name)
        run.seconds = time.perf_counter() - t0
        run.firmware = fw
        if count:
            lines = (tmp / "icount.txt").read_text().split("\n")
            marks = [(int(a), int(b)) for a, b in (ln.split() for ln in lines if ln and not ln.startswith("total"))]
            cost, marks = _calibration(marks)
            seqs = _per_sample(marks)
            run.instructions = [seq[-1][1] - seq[0][1] - cost * (len(seq) - 1) for seq in seqs]
            if len(run.instructions) != n:
                raise ToolchainError(f"instruction counting saw {len(run.instructions)} steps, expected {n}")
            if profile:
                from ..targets.bench import marked_layers

                names = [f"forward {report['layers'][i]['name']} ({report['layers'][i]['op']})"
                         for i in marked_layers(Path(lib_dir), report["prefix"])] + report["train"]["profile_phases"]
                counts = np.array([[b[1] - a[1] - cost for a, b in zip(seq[:-1], seq[1:])] for seq in seqs])
                if counts.shape[1] != len(names) + 1:
                    raise ToolchainError(f"profiling saw {counts.shape[1] - 1} phases, expected {len(names)}")
                run.stats["phases"] = dict(zip(names + ["return"], counts.mean(axis=0).tolist()))
        return run
