"""`mcuforge bench`: exact instruction counts, estimated time, flash and RAM on an emulated Cortex-M.

Two firmwares run the same inputs under QEMU with the instruction-counting
plugin (firmware/mf_icount.c): the plain build (the code a user ships) gives
the instructions of one model invocation, between the markers the runner
calls around it; the profiling build (-DMF_PROFILE: a marker call after every
layer) gives the instructions of each layer. Every interval has the cost of
one marker call subtracted (measured by two marker calls back to back). The
counts are exact and repeatable; time is an estimate:

    cycles = instructions x CPI(core),   time = cycles / clock

with a per-core CPI factor for int8 kernel code (targets.table.CORES): QEMU
does not model pipelines, wait states or caches. Flash and RAM come from the
linker map (each input section attributed to the generated library or to the
runtime: start-up, runner, newlib), the stack high-water from painting the
stack before each invocation and finding the deepest overwritten word after.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..codegen.emit import load_report
from ..errors import ToolchainError
from .batch import check_inputs
from .cortex_m import HEAP_BYTES, STACK_BYTES, build_firmware, run_firmware
from .table import Target

CYCLE_NOTE = ("estimated cycles = exact executed instructions x a per-core CPI factor "
              "(cortex-m0plus 1.6, m3 1.4, m4 1.4, m7 0.9, m33 1.35, m55 1.1); time = cycles / clock. "
              "QEMU models no pipeline, wait states or caches: an estimate, not a measurement")

CAL, BEGIN, END, LAYER = range(4)  # marker indices, in the order of cortex_m.MARKERS


def marked_layers(lib_dir: Path, prefix: str) -> list[int]:
    """Indices of the layers that call MF_LAYER_MARK (those that emit code), in order."""
    text = (Path(lib_dir) / f"{prefix}.c").read_text()
    return [int(i) for i in re.findall(r"MF_LAYER_MARK\((\d+)\);", text)]


def _calibration(marks: list[tuple[int, int]]) -> tuple[int, list[tuple[int, int]]]:
    if len(marks) < 2 or marks[0][0] != CAL or marks[1][0] != CAL:
        raise ToolchainError("instruction counting: calibration marks missing (is the plugin loaded?)")
    return marks[1][1] - marks[0][1], marks[2:]


def _per_sample(marks: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    samples, cur = [], None
    for idx, count in marks:
        if idx == BEGIN:
            cur = [(idx, count)]
        elif cur is not None:
            cur.append((idx, count))
            if idx == END:
                samples.append(cur)
                cur = None
    return samples


# --- linker map ------------------------------------------------------------------------------------

_OUT = re.compile(r"^(\.[\w.]+|/DISCARD/)(?:\s+0x([0-9a-f]+)\s+0x([0-9a-f]+))?")
_IN_FULL = re.compile(r"^ (\S+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S.*)$")
_IN_NAME = re.compile(r"^ (\S+)$")
_IN_CONT = re.compile(r"^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S.*)$")


def map_sections(map_path: Path) -> list[tuple[str, str, str, int]]:
    """(output section, input section, file, bytes) for every input section the linker placed."""
    lines = Path(map_path).read_text().splitlines()
    try:
        start = lines.index("Linker script and memory map")
    except ValueError:
        raise ToolchainError(f"unexpected linker map format in {map_path}") from None
    out, pending, rows = None, None, []
    for line in lines[start + 1:]:
        if line.startswith("OUTPUT(") or line.startswith("LOAD ") or line.startswith("START GROUP"):
            continue
        m = _OUT.match(line)
        if m and not line.startswith(" "):
            out = m.group(1)
            pending = None
            continue
        if out is None or out == "/DISCARD/":
            continue
        if line.startswith(" *"):  # input section patterns, and alignment padding
            parts = line.split()
            if parts[0] == "*fill*" and len(parts) >= 3:
                rows.append((out, "*fill*", "", int(parts[2], 16)))
            continue
        m = _IN_FULL.match(line)
        if m:
            rows.append((out, m.group(1), m.group(4).strip(), int(m.group(3), 16)))
            pending = None
            continue
        m = _IN_NAME.match(line)
        if m:
            pending = m.group(1)
            continue
        m = _IN_CONT.match(line)
        if m and pending is not None:
            rows.append((out, pending, m.group(3).strip(), int(m.group(2), 16)))
        pending = None
    return rows


def memory_breakdown(fw, report: dict) -> dict:
    """Flash and RAM of the firmware, split into the generated library and the runtime."""
    lib_objs = set(fw.library_objects)
    sums: dict[tuple[str, str], int] = {}
    for out, _name, path, size in map_sections(fw.map):
        owner = "model" if Path(path).name in lib_objs else "runtime"
        kind = {".vectors": "code", ".text": "code", ".ARM.exidx": "code", ".ARM.extab": "code",
                ".rodata": "rodata", ".data": "data", ".bss": "bss"}.get(out)
        if kind is None:
            continue
        sums[(owner, kind)] = sums.get((owner, kind), 0) + size
    get = lambda o, k: sums.get((o, k), 0)  # noqa: E731
    arena = fw.symbols.get(f"{fw.prefix}_arena", (0, report["memory"]["arena_bytes"]))[1]
    flash = {
        "model_code": get("model", "code"),
        "model_constants": get("model", "rodata"),
        "model_data_init": get("model", "data"),
        "runtime_code": get("runtime", "code"),
        "runtime_constants": get("runtime", "rodata"),
        "runtime_data_init": get("runtime", "data"),
    }
    flash["model_total"] = flash["model_code"] + flash["model_constants"] + flash["model_data_init"]
    flash["total"] = sum(v for k, v in flash.items() if k != "model_total")
    flash["region"] = fw.target.flash
    ram = {
        "arena": arena,
        "model_other": get("model", "data") + get("model", "bss") - arena,
        "runtime_data_bss": get("runtime", "data") + get("runtime", "bss"),
        "heap": HEAP_BYTES,
        "stack_reserved": STACK_BYTES,
    }
    ram["total"] = sum(ram.values())
    ram["region"] = fw.target.ram
    return {"flash": flash, "ram": ram}


# --- bench -----------------------------------------------------------------------------------------

def default_inputs(report: dict, n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(-128, 128, size=(n,) + tuple(i["shape"][1:]), dtype=np.int64).astype(np.int8)
            for i in report["inputs"]]


def _stat(values: list[int]) -> int | float:
    return int(values[0]) if len(set(values)) == 1 else float(np.mean(values))


class CountedRun:
    """A batch run of the plain firmware with instruction counting: outputs, counts, stack, the firmware."""

    def __init__(self, outputs, per_sample, mark_cost, stats, firmware, report):
        self.outputs, self.per_sample, self.mark_cost = outputs, per_sample, mark_cost
        self.stats, self.firmware, self.report = stats, firmware, report


def run_counted(lib_dir: str | Path, target: Target, inputs: list[np.ndarray], timeout: float = 600) -> CountedRun:
    """Run a batch on the plain firmware and count the instructions of every inference exactly."""
    report = load_report(lib_dir)
    n = check_inputs(report, inputs)
    if n < 1:
        raise ToolchainError("counting instructions needs at least one sample")
    fw = build_firmware(lib_dir, target)
    res = run_firmware(fw, report, inputs, timeout, count=True)
    mark_cost, marks = _calibration(res.marks)
    per_sample = [seq[-1][1] - seq[0][1] - mark_cost for seq in _per_sample(marks)]
    if len(per_sample) != n:
        raise ToolchainError(f"instruction counting saw {len(per_sample)} inferences, expected {n}")
    return CountedRun(res.outputs, per_sample, mark_cost, res.stats, fw, report)


def bench(lib_dir: str | Path, target: Target, inputs: list[np.ndarray] | None = None, samples: int = 3,
          seed: int = 0, timeout: float = 600) -> dict:
    """Instructions per inference and per layer, estimated cycles and time, flash and RAM."""
    lib_dir = Path(lib_dir)
    report = load_report(lib_dir)
    inputs = default_inputs(report, samples, seed) if inputs is None else inputs
    run = run_counted(lib_dir, target, inputs, timeout)
    n, per_sample = len(run.per_sample), run.per_sample

    prof = build_firmware(lib_dir, target, profile=True)
    pres = run_firmware(prof, report, inputs, timeout, count=True)
    for a, b in zip(run.outputs, pres.outputs):
        if not np.array_equal(a, b):
            raise ToolchainError("the profiling build computed different outputs than the plain build")
    pcost, pmarks = _calibration(pres.marks)
    marked = marked_layers(lib_dir, report["prefix"])
    layer_counts = np.zeros((n, len(report["layers"])), dtype=np.int64)
    tails = []
    for s, seq in enumerate(_per_sample(pmarks)):
        counts = [c for _, c in seq]
        if len(counts) != len(marked) + 2:
            raise ToolchainError(f"instruction counting saw {len(counts) - 2} layer marks, expected {len(marked)}")
        for j, layer in enumerate(marked):
            layer_counts[s, layer] = counts[j + 1] - counts[j] - pcost
        tails.append(counts[-1] - counts[-2] - pcost)

    total = _stat(per_sample)
    macs = report["totals"]["macs"]
    layers = []
    mean_layers = layer_counts.mean(axis=0)
    for i, row in enumerate(report["layers"]):
        col = layer_counts[:, i].tolist()
        instr = _stat(col)
        layers.append({
            "index": i, "name": row["name"], "op": row["op"], "macs": row["macs"], "instructions": instr,
            "instructions_per_mac": (float(mean_layers[i]) / row["macs"]) if row["macs"] else None,
            "share": float(mean_layers[i] / np.mean(per_sample)) if np.mean(per_sample) else 0.0,
        })
    mean_total = float(np.mean(per_sample))
    cycles = target.estimate_cycles(mean_total)
    return {
        "model": report["model"],
        "target": target.to_json(),
        "samples": n,
        "instructions": {
            "per_inference": total, "min": int(min(per_sample)), "max": int(max(per_sample)),
            "per_sample": [int(v) for v in per_sample],
            "per_mac": mean_total / macs if macs else None,
            "layers_sum": float(mean_layers.sum()),
            "outside_layers": _stat(tails),
            "mark_cost": run.mark_cost,
        },
        "macs": macs,
        "estimate": {
            "cpi": target.core.cpi, "cycles": cycles, "clock_hz": target.clock_hz,
            "time_ms": cycles / target.clock_hz * 1e3, "method": CYCLE_NOTE,
        },
        "layers": layers,
        **memory_breakdown(run.firmware, report),
        "stack": {"inference": run.stats["stack_invoke"], "program_peak": run.stats["stack_peak"],
                  "reserved": run.stats["stack_size"]},
    }
