"""MLPerf Tiny benchmark: mcuforge vs TensorFlow Lite Micro on the int8 reference models.

    .venv/bin/python benchmarks/mlperf_tiny.py [--models-dir ../shared/models] [--inputs 100]
                                               [--json benchmarks/results/mlperf_tiny.json]

For every .tflite in the models directory: import it, deploy it (C library), and run
N random int8 inputs (seeded; the first three are all -128, all 127, all zero point)
through TFLM (PyPI tflite-micro, the real interpreter) and through mcuforge's integer
reference and its host C build (ASan/UBSan). Reports: bit-exact (yes/no, mismatching
output values over all inputs), mcuforge's peak activation RAM (report.json
memory.arena_bytes) against TFLM's arena (total, and its activation part) and against the same
plan without tensor overlapping, weight bytes, MACs, deploy time, and whether the exported
.tflite gives TFLM's outputs again.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from mcuforge import __version__, reference
from mcuforge.codegen import generate, plan_memory
from mcuforge.export import to_tflite_bytes
from mcuforge.frontends import load_model
from mcuforge.targets.host import run_host
from mcuforge.tflm import run_tflm, tflm_arena

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent


def random_inputs(graph, rng, n):
    xs = []
    for name in graph.inputs:
        t = graph.tensors[name]
        x = rng.integers(-128, 128, size=(n,) + t.shape[1:]).astype(np.int8)
        x[0], x[1], x[2] = -128, 127, t.quant.zp
        xs.append(x)
    return xs


def mismatches(a: list[np.ndarray], b: list[np.ndarray]) -> int:
    return int(sum(np.count_nonzero(x != y.reshape(x.shape)) for x, y in zip(a, b)))


def bench_model(path: Path, n: int, seed: int) -> dict:
    t0 = time.perf_counter()
    graph = load_model(path)
    with tempfile.TemporaryDirectory() as d:
        lib = Path(d) / "lib"
        report = generate(graph, lib)
        deploy_s = time.perf_counter() - t0
        xs = random_inputs(graph, np.random.default_rng(seed), n)
        t = time.perf_counter()
        tflm = run_tflm(path, xs)
        tflm_s = time.perf_counter() - t
        t = time.perf_counter()
        ref = reference.run(graph, xs, "int")
        ref_s = time.perf_counter() - t
        host = run_host(lib, xs, sanitize=True)
    exported = run_tflm(to_tflite_bytes(graph), xs)
    arena = tflm_arena(path)
    ours = report["memory"]["arena_bytes"]
    total_out = int(sum(r.size for r in ref))
    return {
        "model": path.stem, "file": path.name, "inputs": n, "output_values": total_out,
        "ops": len(graph.nodes),
        "mismatch_reference_vs_tflm": mismatches(ref, tflm),
        "mismatch_host_c_vs_tflm": mismatches(host, tflm),
        "mismatch_exported_vs_tflm": mismatches(tflm, exported),
        "bit_exact": mismatches(ref, tflm) == 0 and mismatches(host, tflm) == 0,
        "arena_bytes": ours,
        "arena_unplanned_bytes": report["memory"]["unplanned_bytes"],
        "inplace_layers": len(report["memory"]["inplace_layers"]),
        "overlap_layers": len(report["memory"]["overlap_layers"]),
        "arena_without_overlap_bytes": plan_memory(graph, allow_overlap=False).arena_size,
        "tflm_arena_bytes": arena["total"], "tflm_arena_activations_bytes": arena.get("head"),
        "ram_ratio": ours / arena["total"],
        "ram_ratio_activations": ours / arena["head"] if arena.get("head") else None,
        "weight_bytes": report["totals"]["weight_bytes"], "const_bytes": report["totals"]["const_bytes"],
        "macs": report["totals"]["macs"],
        "deploy_s": round(deploy_s, 3), "tflm_s": round(tflm_s, 3), "reference_s": round(ref_s, 3),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", type=Path, default=REPO / ".." / "shared" / "models")
    ap.add_argument("--inputs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=ROOT / "results" / "mlperf_tiny.json")
    args = ap.parse_args(argv)
    console = Console(width=None if Console().is_terminal else 160)
    paths = sorted(args.models_dir.resolve().glob("*.tflite"))
    if not paths:
        console.print(f"[red]no .tflite models in {args.models_dir}[/]")
        return 1
    rows = []
    for p in paths:
        console.print(f"{p.name} ...")
        rows.append(bench_model(p, args.inputs, args.seed))
    table = Table(title=f"MLPerf Tiny: mcuforge {__version__} vs TFLM ({args.inputs} random int8 inputs each)",
                  header_style="bold")
    for col, just in (("model", "left"), ("bit-exact", "left"), ("mismatches ref/C/export", "right"),
                      ("arena B", "right"), ("no overlap B", "right"), ("TFLM arena B (act.)", "right"),
                      ("ratio", "right"),
                      ("weights B", "right"), ("MACs", "right"), ("deploy s", "right")):
        table.add_column(col, justify=just)
    for r in rows:
        table.add_row(r["model"], "yes" if r["bit_exact"] else "[red]no[/]",
                      f"{r['mismatch_reference_vs_tflm']}/{r['mismatch_host_c_vs_tflm']}/"
                      f"{r['mismatch_exported_vs_tflm']} of {r['output_values']:,}",
                      f"{r['arena_bytes']:,}", f"{r['arena_without_overlap_bytes']:,}",
                      f"{r['tflm_arena_bytes']:,} ({r['tflm_arena_activations_bytes']:,})",
                      f"{r['ram_ratio']:.2f}", f"{r['weight_bytes']:,}", f"{r['macs']:,}", f"{r['deploy_s']:.2f}")
    console.print(table)
    result = {"mcuforge_version": __version__, "python": platform.python_version(),
              "machine": platform.machine(), "inputs": args.inputs, "seed": args.seed, "models": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    console.print(f"wrote {args.json}")
    return 0 if all(r["bit_exact"] and r["mismatch_exported_vs_tflm"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
