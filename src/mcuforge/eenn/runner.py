"""Run a generated early-exit library on a stream: the integer reference, host C, or a Cortex-M on QEMU.

The compiled runner (targets/firmware/mf_eenn_main.c) keeps one stream state over all samples and
records, per sample, the class, the exit taken, the evaluated exits and their u vectors ("decide"
mode), and/or runs every part of the library once between instruction-count marks ("parts" mode).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import reference
from ..errors import InputError, ToolchainError
from ..targets.host import run_executable
from .codegen import NETWORK_DIR
from .decisions import KINDS, Decision, Outcome, simulate, u_from_int8
from .network import EarlyExitNetwork, EennError

DECIDE, PARTS = 1, 2


def load_eenn_report(lib_dir: str | Path) -> dict:
    lib_dir = Path(lib_dir)
    f = lib_dir / "report.json"
    if not f.is_file():
        raise EennError(f"'{lib_dir}' is not an early-exit library written by `mcuforge deploy` (no report.json)")
    try:
        report = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise EennError(f"{f}: corrupt ({e})") from None
    if report.get("kind") not in ("eenn", "eenn-devices"):
        raise EennError(f"'{lib_dir}' is a library of a single model, not of an early-exit network")
    return report


def is_eenn_library(path: str | Path) -> bool:
    f = Path(path) / "report.json"
    try:
        return f.is_file() and json.loads(f.read_text()).get("kind") in ("eenn", "eenn-devices")
    except (OSError, json.JSONDecodeError):
        return False


def load_network(lib_dir: str | Path) -> EarlyExitNetwork:
    return EarlyExitNetwork.load(Path(lib_dir) / NETWORK_DIR)


# --- the integer reference ---------------------------------------------------------------------------

def reference_exit_u(net: EarlyExitNetwork, x: np.ndarray) -> list[np.ndarray]:
    """u (N, classes) of every exit for int8 inputs x (N, ...) in the IR layout: the specification."""
    u, h = [], x
    for k, seg in enumerate(net.segments):
        h = reference.run(seg, [h], "int")[0]
        if k < net.n_exits - 1:
            u.append(u_from_int8(reference.run(net.heads[k], [h], "int")[0].reshape(len(x), -1)))
    u.append(u_from_int8(h.reshape(len(x), -1)))
    return u


# --- compiled runners ---------------------------------------------------------------------------------

@dataclass
class StreamRun:
    target: str
    cls: np.ndarray | None = None        # (N,) decide mode
    exits: np.ndarray | None = None      # (N,)
    evaluated: np.ndarray | None = None  # (N,) bit mask of the exits evaluated
    u: np.ndarray | None = None          # (N, E, C) u of the evaluated exits (0 elsewhere)
    parts_u: np.ndarray | None = None    # (N, E, C) parts mode: u of this device's exits
    stats: dict = field(default_factory=dict)
    invoke_instructions: list[int] | None = None       # per sample, decide mode
    part_instructions: np.ndarray | None = None        # (N, parts) in the order of part_names
    part_names: list[str] = field(default_factory=list)

    def outcomes(self) -> list[Outcome]:
        E = self.u.shape[1]
        return [Outcome(int(c), int(e), tuple(k for k in range(E - 1) if (m >> k) & 1))
                for c, e, m in zip(self.cls, self.exits, self.evaluated)]


def part_names(report: dict) -> list[str]:
    """The parts in the order parts mode runs them."""
    e = report["eenn"]
    names = []
    for k in e["segments"]:
        names.append(f"segment{k}")
        if k < e["n_exits"] - 1:
            names.append(f"head{k}")
    return names


def _config(report: dict, decision: Decision | None, mode: int) -> bytes:
    e = report["eenn"]
    decision = decision or Decision.from_json(e["decision"])
    decision.check(e["n_exits"])
    n = max(e["n_exits"] - 1, 1)
    thr = list(decision.thresholds) + [0] * (n - len(decision.thresholds))
    return np.array([mode, KINDS.index(decision.kind), n, *thr], "<i4").tobytes()


def _check_stream(report: dict, x: np.ndarray) -> int:
    shape = tuple(report["inputs"][0]["shape"][1:])
    if x.dtype != np.int8 or tuple(x.shape[1:]) != shape:
        raise InputError(f"the early-exit library takes int8 inputs of shape (N, {', '.join(map(str, shape))}), got "
                         f"{x.dtype} {x.shape}")
    return len(x)


def _read_records(report: dict, path: Path, n_records: int) -> tuple[np.ndarray, ...]:
    E, C = report["eenn"]["n_exits"], len(report["eenn"]["classes"])
    size = 12 + E * C
    raw = np.fromfile(path, np.uint8) if path.exists() else np.zeros(0, np.uint8)
    if raw.size != n_records * size:
        raise ToolchainError(f"the early-exit runner wrote {raw.size} bytes, expected {n_records} x {size}")
    raw = raw.reshape(n_records, size)
    head = raw[:, :12].copy().view("<i4")
    return head[:, 0], head[:, 1], head[:, 2].astype(np.uint32), raw[:, 12:].reshape(n_records, E, C)


def _results(report: dict, tmp: Path, n: int, mode: int, stdout: str, target: str) -> StreamRun:
    m = re.search(r"MF_STATS (.*)", stdout)
    if not m:
        raise ToolchainError(f"the early-exit runner printed no statistics:\n{stdout[-4000:]}")
    stats = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    if stats["samples"] != n:
        raise ToolchainError(f"the early-exit runner ran {stats['samples']} samples, expected {n}")
    per = bin(mode).count("1")
    cls, ex, ev, u = _read_records(report, tmp / "mf_eenn_out.bin", n * per)
    run = StreamRun(target, stats=stats, part_names=part_names(report))
    if mode & DECIDE:
        sel = slice(0, None, per)
        run.cls, run.exits, run.evaluated, run.u = cls[sel], ex[sel], ev[sel], u[sel]
    if mode & PARTS:
        run.parts_u = u[per - 1::per]
    return run


def build_host_runner(lib_dir: str | Path, sanitize: bool = False) -> Path:
    from ..targets.host import build_firmware_main

    return build_firmware_main(lib_dir, "mf_eenn_main.c", "early-exit runner", sanitize)


def run_stream_host(lib_dir: str | Path, x: np.ndarray, decision: Decision | None = None, mode: int = DECIDE,
                    sanitize: bool = False, timeout: float = 600) -> StreamRun:
    """One stream through host C (the samples in order, one state)."""
    report = load_eenn_report(lib_dir)
    n = _check_stream(report, x)
    exe = build_host_runner(lib_dir, sanitize)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "mf_eenn_cfg.bin").write_bytes(_config(report, decision, mode))
        np.ascontiguousarray(x).tofile(tmp / "mf_in.bin")
        proc = run_executable([str(exe)], tmp, "host early-exit run", sanitize, timeout)
        return _results(report, tmp, n, mode, proc.stdout, "host")


def run_stream_cortex_m(lib_dir: str | Path, x: np.ndarray, target="cortex-m4", decision: Decision | None = None,
                        mode: int = DECIDE, count: bool = True, ram=None, flash=None,
                        timeout: float = 600) -> StreamRun:
    """One stream through the library built into firmware for `target`, on QEMU; count=True counts the
    instructions of every invoke (decide mode) and of every part (parts mode) exactly."""
    from ..targets.bench import _calibration, _per_sample
    from ..targets.cortex_m import build_firmware, build_icount_plugin, qemu_command, resolve_target
    from ..targets.table import Target

    lib_dir = Path(lib_dir)
    report = load_eenn_report(lib_dir)
    n = _check_stream(report, x)
    t = target if isinstance(target, Target) else resolve_target(report, target, ram, flash)
    fw = build_firmware(lib_dir, t, main="mf_eenn_main.c")
    plugin = build_icount_plugin() if count else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "mf_eenn_cfg.bin").write_bytes(_config(report, decision, mode))
        np.ascontiguousarray(x).tofile(tmp / "mf_in.bin")
        cmd = qemu_command(fw, plugin, tmp / "icount.txt")
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ToolchainError(f"QEMU ({t.machine.name}) did not finish {n} samples within {timeout:g} s") from None
        text = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            raise ToolchainError(f"early-exit firmware on QEMU {t.machine.name} failed (exit {proc.returncode}):\n"
                                 f"{text[-4000:]}")
        run = _results(report, tmp, n, mode, proc.stdout, t.name)
        run.stats["firmware"] = str(fw.elf)
        if count:
            lines = (tmp / "icount.txt").read_text().split("\n")
            marks = [(int(a), int(b)) for a, b in (ln.split() for ln in lines if ln and not ln.startswith("total"))]
            cost, marks = _calibration(marks)
            spans = [seq[-1][1] - seq[0][1] - cost for seq in _per_sample(marks)]
            per = (1 if mode & DECIDE else 0) + (len(run.part_names) if mode & PARTS else 0)
            if len(spans) != n * per:
                raise ToolchainError(f"instruction counting saw {len(spans)} intervals, expected {n} x {per}")
            spans = np.array(spans, np.int64).reshape(n, per)
            if mode & DECIDE:
                run.invoke_instructions = spans[:, 0].tolist()
            if mode & PARTS:
                run.part_instructions = spans[:, per - len(run.part_names):]
        return run


def run_stream(lib_dir: str | Path, x: np.ndarray, target: str = "host", decision: Decision | None = None,
               **kw) -> StreamRun:
    """The decisions of a single-device library over one stream on `target` (reference, host, or a Cortex-M
    core/board on QEMU)."""
    report = load_eenn_report(lib_dir)
    if report["kind"] != "eenn":
        raise EennError(f"'{lib_dir}' holds one library per device: run the chain with run_chain_host, or each "
                        "device directory on its own")
    if target == "reference":
        net = load_network(lib_dir)
        _check_stream(report, x)
        u = reference_exit_u(net, x)
        outs = simulate(decision or net.decision, u)
        E, C = len(u), u[0].shape[1]
        full = np.zeros((len(x), E, C), np.uint8)
        ev = np.zeros(len(x), np.uint32)
        for i, o in enumerate(outs):
            for k in (*o.heads, *([E - 1] if o.exit == E - 1 else [])):
                full[i, k] = u[k][i]
                ev[i] |= 1 << k
        return StreamRun("reference", np.array([o.cls for o in outs]), np.array([o.exit for o in outs]), ev, full)
    if target == "host":
        return run_stream_host(lib_dir, x, decision, **kw)
    return run_stream_cortex_m(lib_dir, x, target, decision, **kw)


# --- several devices chained on the host ---------------------------------------------------------------

@dataclass
class ChainRun:
    cls: np.ndarray            # (N,) the answers
    exits: np.ndarray          # (N,) the exits taken
    last_device: np.ndarray    # (N,) the device that answered
    link_bytes: np.ndarray     # (N, links) bytes that crossed each link, forward and reply

    def outcome_pairs(self) -> list[tuple[int, int]]:
        return [(int(c), int(e)) for c, e in zip(self.cls, self.exits)]


def _chain_main(report: dict) -> str:
    """A host program that plays every device of a multi-device deployment in one process, passing the
    messages between them as bytes, the way a link would."""
    devs = report["devices"]
    names = [d["prefix"] for d in devs]
    N0 = names[0].upper()
    inc = "\n".join(f'#include "{n}_eenn.h"' for n in names)
    setd = "\n".join(f"    if ({n}_set_decision(kind, thr) != 0) return 4;" for n in names)
    hops = []
    for d, n in enumerate(names[1:], start=1):
        hops.append(f"""        if (cls == {N0}_FORWARD && hop == {d - 1}) {{
            memcpy(in, msg, sizeof msg);
            fwd[{d - 1}] = {n.upper()}_MSG_IN_SIZE;
            cls = {n}_continue(in, &e, msg);
            if (cls == {N0}_BAD_MESSAGE) return 5;
            hop = {d};
        }}""")
    sizes = " + ".join(f"{n.upper()}_MSG_OUT_SIZE" for n in names)
    return f"""#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
{inc}
static uint8_t msg[{sizes}], in[{sizes}];

int main(void) {{
    FILE *fcfg = fopen("mf_eenn_cfg.bin", "rb"), *fin = fopen("mf_in.bin", "rb"), *fout = fopen("mf_chain_out.bin", "wb");
    int32_t head[3], thr[{N0}_NUM_THRESHOLDS], kind, rec[{3 + len(names) - 1}];
    static int8_t x[{N0}_INPUT_SIZE];
    {names[0]}_state st;
    if (!fcfg || !fin || !fout) return 2;
    if (fread(head, 4, 3, fcfg) != 3 || head[2] != {N0}_NUM_THRESHOLDS) return 3;
    if (fread(thr, 4, {N0}_NUM_THRESHOLDS, fcfg) != {N0}_NUM_THRESHOLDS) return 3;
    kind = head[1];
{chr(10).join(f"    {n}_init();" for n in names)}
{setd}
    {names[0]}_reset(&st);
    while (fread(x, 1, sizeof x, fin) == sizeof x) {{
        int e = -1, hop = 0, j;
        int32_t fwd[{len(names) - 1}];
        int cls = {names[0]}_invoke(&st, x, &e, msg);
        for (j = 0; j < {len(names) - 1}; ++j) fwd[j] = 0;
{chr(10).join(hops)}
        if (hop > 0) {{
            /* the reply travels back over every link the sample crossed */
            cls = {names[0]}_complete(&st, msg, &e);
            if (cls < 0) return 6;
        }}
        rec[0] = cls;
        rec[1] = e;
        rec[2] = hop;
        for (j = 0; j < {len(names) - 1}; ++j) rec[3 + j] = fwd[j] ? fwd[j] + 4 : 0;
        if (fwrite(rec, 4, {3 + len(names) - 1}, fout) != {3 + len(names) - 1}) return 7;
    }}
    fclose(fin);
    fclose(fout);
    return 0;
}}
"""


def run_chain_host(out_dir: str | Path, x: np.ndarray, decision: Decision | None = None,
                   sanitize: bool = False, timeout: float = 600) -> ChainRun:
    """A stream through every device library of a multi-device deployment, chained on the host through
    the bytes of the messages (one process; each device's library compiled with the host compiler)."""
    from ..targets.host import CFLAGS, SANITIZE_FLAGS, cache_dir, find_compiler

    out_dir = Path(out_dir)
    top = load_eenn_report(out_dir)
    if top["kind"] != "eenn-devices":
        raise EennError(f"'{out_dir}' is a single-device early-exit library: use run_stream")
    dev_dirs = [out_dir / d["dir"] for d in top["devices"]]
    first = load_eenn_report(dev_dirs[0])
    n = _check_stream(first, x)
    main = _chain_main(top)
    sources: dict[str, Path] = {}
    for d in dev_dirs:   # the kernel files are the same in every device (copies of ops/kernels)
        for p in sorted(d.glob("*.c")):
            if p.name in sources and sources[p.name].read_bytes() != p.read_bytes():
                raise EennError(f"{p.name} differs between device libraries")
            sources.setdefault(p.name, p)
    flags = SANITIZE_FLAGS if sanitize else CFLAGS
    cc = find_compiler()
    h = hashlib.sha256(main.encode() + " ".join([cc] + flags).encode())
    for d in dev_dirs:
        for p in sorted(d.glob("*.[ch]")):
            h.update(p.name.encode() + p.read_bytes())
    build = cache_dir() / "host"
    exe = build / f"eenn-chain-{h.hexdigest()[:16]}"
    if not exe.exists():
        build.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=build) as tmp:
            (Path(tmp) / "chain_main.c").write_text(main)
            cmd = [cc, *flags, *[f"-I{d}" for d in dev_dirs], *map(str, sources.values()),
                   str(Path(tmp) / "chain_main.c"), "-o", str(Path(tmp) / "chain")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise ToolchainError(f"host build of the device chain failed:\n{proc.stderr.strip()[-4000:]}")
            os.replace(Path(tmp) / "chain", exe)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "mf_eenn_cfg.bin").write_bytes(_config(first, decision, DECIDE))
        np.ascontiguousarray(x).tofile(tmp / "mf_in.bin")
        run_executable([str(exe)], tmp, "host device chain", sanitize, timeout)
        links = len(dev_dirs) - 1
        rec = np.fromfile(tmp / "mf_chain_out.bin", "<i4")
        if rec.size != n * (3 + links):
            raise ToolchainError(f"the device chain wrote {rec.size} values, expected {n} x {3 + links}")
        rec = rec.reshape(n, 3 + links)
        return ChainRun(rec[:, 0], rec[:, 1], rec[:, 2], rec[:, 3:])
