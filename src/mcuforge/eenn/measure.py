"""Exact instructions per part and per exit of a generated early-exit library on an emulated Cortex-M.

The library is built into firmware (targets/firmware/mf_eenn_main.c + the start-up code of
targets.cortex_m) and run on QEMU with the instruction-counting plugin (targets/firmware/mf_icount.c):

* parts: every segment and head of the library runs once per sample between two marks (segment k
  includes copying its input from the cut buffer and its output into it; the first also loading
  the sample; a head includes copying its input and turning its softmax output into u);
* stop at exit k: one run per exit with a confidence decision forced to stop there (thresholds 256
  before k, 0 at k), each invoke between two marks: the end-to-end instructions of an inference that
  answers at exit k (segments 0..k, heads 0..k, the decision code, the call);
* the decision runtime's own overhead = stop at exit k - the parts that ran.

Counts are exact and repeatable (the cost of a mark is subtracted); time = instructions x the core's
CPI factor / clock (targets.table; an estimate, as `mcuforge bench`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from ..targets.table import Target
from .decisions import Decision
from .network import EarlyExitNetwork, EennError
from .runner import DECIDE, PARTS, load_eenn_report, run_stream_cortex_m


def _default_inputs(report: dict, n: int, seed: int) -> np.ndarray:
    shape = tuple(report["inputs"][0]["shape"][1:])
    return np.random.default_rng(seed).integers(-128, 128, size=(n, *shape), dtype=np.int64).astype(np.int8)


def _mean(v) -> float:
    return float(np.mean(v))


def measure_library(lib_dir: str | Path, target: str | Target | None = None, inputs: np.ndarray | None = None,
                    samples: int = 3, seed: int = 0, write: bool = True) -> dict:
    """Per-part and per-exit instructions of one (device) library; written into its report.json (exit_costs)."""
    from ..targets.cortex_m import resolve_target

    lib_dir = Path(lib_dir)
    report = load_eenn_report(lib_dir)
    if report["kind"] != "eenn":
        raise EennError(f"'{lib_dir}' holds one library per device: measure each device directory")
    t = target if isinstance(target, Target) else resolve_target(report, target)
    x = _default_inputs(report, samples, seed) if inputs is None else inputs
    e = report["eenn"]
    E, single = e["n_exits"], e["n_devices"] == 1
    run = run_stream_cortex_m(lib_dir, x, t, mode=PARTS)
    names = run.part_names
    parts = []
    for j, name in enumerate(names):
        col = run.part_instructions[:, j]
        p = next(p for p in e["parts"] if f"{p['what'].replace(' ', '')}" == name)
        parts.append({"part": name, "instructions": _mean(col), "min": int(col.min()), "max": int(col.max()),
                      "macs": p["macs"], "per_mac": _mean(col) / p["macs"] if p["macs"] else None})
    part = {p["part"]: p["instructions"] for p in parts}
    result = {
        "target": t.to_json(), "samples": int(len(x)), "parts": parts,
        "segments": {k: part[f"segment{k}"] for k in e["segments"]},
        "heads": {k: part[f"head{k}"] for k in e["heads"]},
        "method": "exact executed instructions on QEMU (TCG plugin), mean over the samples; time = instructions x "
                  "CPI / clock (an estimate)",
    }
    if single:
        exits = []
        for k in range(E):
            if k < E - 1:
                thr = [256] * k + [0] + [0] * (E - 2 - k)
                dec = Decision("confidence", thr)
            else:
                dec = Decision("confidence", [256] * (E - 1)) if E > 1 else Decision("none", [])
            r = run_stream_cortex_m(lib_dir, x, t, decision=dec, mode=DECIDE)
            if not np.all(r.exits == k):
                raise EennError(f"the forced decision stopped at exits {sorted(set(r.exits.tolist()))}, not {k}")
            ran = sum(part[f"segment{j}"] for j in range(k + 1)) + sum(part[f"head{j}"] for j in range(min(k + 1, E - 1)))
            inst = _mean(r.invoke_instructions)
            cycles = t.estimate_cycles(inst)
            exits.append({"exit": k, "instructions": inst, "parts": ran, "decision_overhead": inst - ran,
                          "macs": sum(p["macs"] for p in e["parts"] if
                                      (p["what"].startswith("segment") and int(p["what"].split()[1]) <= k) or
                                      (p["what"].startswith("head") and int(p["what"].split()[1]) <= k)),
                          "time_ms": cycles / t.clock_hz * 1e3,
                          "stack_bytes": r.stats.get("stack_invoke")})
        result["exits"] = exits
        result["decision_overhead"] = {"mean": _mean([x["decision_overhead"] for x in exits]),
                                       "max": float(max(x["decision_overhead"] for x in exits))}
    if write:
        report["exit_costs"] = result
        (lib_dir / "report.json").write_text(json.dumps(report, indent=1))
        from .codegen import render_markdown

        (lib_dir / "report.md").write_text(render_markdown(report))
    return result


def measure_exit_costs(path: str | Path, target: str | Target = "cortex-m4", inputs: np.ndarray | None = None,
                       samples: int = 3, seed: int = 0) -> dict:
    """Instructions per part and per exit on `target` (QEMU, exact).

    `path`: a generated single-device library (measured as built; its report.json gets them), a
    multi-device deployment (each device library measured on its own target: {"devices": [...]}), or
    an early-exit network directory (eenn.json: generated for `target` into a temporary library)."""
    from ..targets.table import get_target

    path = Path(path)
    if (path / "eenn.json").is_file():
        from .codegen import generate_eenn

        net = EarlyExitNetwork.load(path)
        net.mapping = []
        t = target if isinstance(target, Target) else get_target(target)
        with tempfile.TemporaryDirectory() as tmp:
            generate_eenn(net, Path(tmp) / "lib", name="net", target=t)
            return measure_library(Path(tmp) / "lib", t, inputs, samples, seed, write=False)
    report = load_eenn_report(path)
    if report["kind"] == "eenn":
        return measure_library(path, target, inputs, samples, seed)
    devices = []
    for d in report["devices"]:
        sub = load_eenn_report(path / d["dir"])
        if sub["target"]["qemu_machine"] is None:
            devices.append({"device": d["device"], "target": d["target"], "instructions": None,
                            "note": "not a Cortex-M: no emulator to count on"})
            continue
        devices.append({"device": d["device"], "target": d["target"],
                        **measure_library(path / d["dir"], None, None, samples, seed)})
    return {"devices": devices, "links": report["links"]}
