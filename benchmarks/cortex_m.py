"""Cortex-M benchmark: mcuforge's kernels on the MLPerf Tiny int8 models, against CMSIS-NN.

    .venv/bin/python benchmarks/cortex_m.py [--targets cortex-m4,cortex-m7] [--models kws_ref_model,...]
                                            [--samples 2] [--no-portable]
                                            [--json benchmarks/results/cortex_m.json]

For each model (../shared/models) and target, the library is generated twice -- for the
target (its DSP-extension kernels, ops/dsp.py) and as portable C (the baseline) -- built
into firmware and run on QEMU with the instruction-counting plugin (mcuforge bench):
exact instructions per inference and per layer, flash and RAM (arena + static + stack).
The firmware's outputs are checked bit for bit against the integer reference on the same
inputs. Instructions are set side by side with CMSIS-NN's, measured on this emulator
(Cortex-M4, arm-none-eabi-gcc 12.2 -O2, DSP path; /work/shared/DESIGN.md), per model and
per layer type (CMSIS-NN's per-type figures are the ranges DESIGN.md gives). Instruction
counts are exact and repeatable (independent of machine load); CMSIS-NN was measured on
the M4 only, so the M7 rows compare with the same M4 figures.
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
from mcuforge.codegen import generate
from mcuforge.frontends.tflite import load_tflite
from mcuforge.targets.bench import bench, default_inputs
from mcuforge.targets.cortex_m import run_cortex_m
from mcuforge.targets.table import GENERIC, get_target

ROOT = Path(__file__).resolve().parent
MODELS_DIR = ROOT.parent.parent / "shared" / "models"
MODELS = ("kws_ref_model", "pretrainedResnet_quant", "ad01_int8")

# CMSIS-NN on QEMU's Cortex-M4 (DESIGN.md, "Anchor figures measured on this emulator").
CMSIS = {
    "kws_ref_model": {"instructions": 7_693_620, "pure_c": 10_489_378, "tflm_arena": 24_272, "macs": 2_656_768},
    "pretrainedResnet_quant": {"instructions": 29_858_430, "pure_c": 41_815_663, "tflm_arena": 55_984,
                               "macs": 12_501_632},
    "ad01_int8": {"instructions": 579_884, "pure_c": 955_444, "tflm_arena": 3_984, "macs": 264_192},
}
# Per layer type: CMSIS-NN's instructions per MAC (per element for add), low and high (DESIGN.md).
CMSIS_TYPES = {
    "depthwise 3x3": (7.5, 8.9, "MAC"),
    "residual add": (81.0, 81.0, "element"),
    "first conv (1-3 input channels)": (3.5, 6.0, "MAC"),
    "fully connected 8->128": (8.2, 8.2, "MAC"),
    "1x1 conv": (2.1, 2.1, "MAC"),
    "3x3 conv (16-64 channels)": (1.8, 1.8, "MAC"),
}


def layer_type(graph, node) -> str:
    t = graph.tensors
    if node.op == "conv2d":
        o, kh, kw, cg = t[node.inputs[1]].shape
        c = t[node.inputs[0]].shape[3]
        if int(node.attrs["groups"]) > 1 and cg == 1:
            return f"depthwise {kh}x{kw}"
        if c <= 3:
            return "first conv (1-3 input channels)"
        if kh == kw == 1:
            return "1x1 conv"
        return f"{kh}x{kw} conv (16-64 channels)" if 16 <= c <= 64 else f"{kh}x{kw} conv"
    if node.op == "fully_connected":
        o, k = t[node.inputs[1]].shape
        return "fully connected 8->128" if (k, o) == (8, 128) else "fully connected"
    if node.op == "add":
        return "residual add"
    return node.op


def layer_shape(graph, node) -> str:
    ins = [graph.tensors[i] for i in node.inputs if i and not graph.tensors[i].is_const]
    shape = lambda s: "x".join(map(str, s[1:]))  # noqa: E731
    k = ""
    if node.op == "conv2d":
        w = graph.tensors[node.inputs[1]].shape
        k = f" k{w[1]}x{w[2]}" + (f" s{node.attrs['stride'][0]}" if node.attrs["stride"][0] > 1 else "")
    return " + ".join(shape(i.shape) for i in ins) + " -> " + shape(graph.tensors[node.outputs[0]].shape) + k


def measure(graph, target, gen_target, inputs, work: Path, tag: str) -> dict:
    lib = work / tag
    generate(graph, lib, target=gen_target)
    report = json.loads((lib / "report.json").read_text())
    res = bench(lib, target, inputs=inputs)
    got = run_cortex_m(lib, inputs, target)
    want = reference.run(graph, inputs, "int")
    mism = int(sum(np.count_nonzero(a != b) for a, b in zip(want, got)))
    ram = res["ram"]
    return {
        "instructions": res["instructions"]["per_inference"],
        "instructions_per_mac": res["instructions"]["per_mac"],
        "layers": [l["instructions"] for l in res["layers"]],
        "flash_model": res["flash"]["model_total"],
        "flash_model_code": res["flash"]["model_code"],
        "flash_model_constants": res["flash"]["model_constants"],
        "ram_arena": ram["arena"],
        "ram_static": ram["model_other"],  # the model's other data and bss: the kernels' scratch
        "scratch_bytes": report["memory"].get("scratch_bytes", 0),
        "stack_inference": res["stack"]["inference"],
        "ram_model": ram["arena"] + ram["model_other"] + res["stack"]["inference"],
        "mismatches": mism,
        "bit_exact": mism == 0,
    }


def bench_model(name: str, targets: list[str], samples: int, portable: bool, seed: int) -> list[dict]:
    graph = load_tflite(MODELS_DIR / f"{name}.tflite")
    from mcuforge.ops import get_op

    nodes = graph.nodes
    macs = [int(get_op(n.op).macs(n, graph)) for n in nodes]
    elements = [graph.tensors[n.outputs[0]].size for n in nodes]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        for tname in targets:
            target = get_target(tname)
            t0 = time.perf_counter()
            probe = work / "probe"
            generate(graph, probe, target=target)
            inputs = default_inputs(json.loads((probe / "report.json").read_text()), samples, seed)
            fast = measure(graph, target, target, inputs, work, f"{tname}-dsp")
            base = measure(graph, target, GENERIC, inputs, work, f"{tname}-portable") if portable else None
            layers = []
            for i, n in enumerate(nodes):
                layers.append({
                    "index": i, "name": n.name, "op": n.op, "type": layer_type(graph, n),
                    "shape": layer_shape(graph, n), "macs": macs[i], "elements": elements[i],
                    "instructions": fast["layers"][i],
                    "instructions_portable": base["layers"][i] if base else None,
                })
            cm = CMSIS[name]
            rows.append({
                "model": name, "target": tname, "macs": sum(macs), "samples": samples,
                "dsp": {k: v for k, v in fast.items() if k != "layers"},
                "portable": {k: v for k, v in base.items() if k != "layers"} if base else None,
                "cmsis_nn_m4": cm,
                "ratio_vs_cmsis_nn": fast["instructions"] / cm["instructions"],
                "ratio_portable_vs_cmsis_pure_c": base["instructions"] / cm["pure_c"] if base else None,
                "layers": layers,
                "seconds": round(time.perf_counter() - t0, 1),
            })
    return rows


def type_summary(rows: list[dict]) -> list[dict]:
    """Per layer type (M4 rows): our instructions per MAC (per element for add) vs CMSIS-NN's."""
    agg: dict[str, dict] = {}
    for r in rows:
        if r["target"] != "cortex-m4":
            continue
        for layer in r["layers"]:
            t = layer["type"]
            if t not in CMSIS_TYPES:
                continue
            a = agg.setdefault(t, {"type": t, "instructions": 0, "work": 0, "layers": 0, "models": set()})
            unit = CMSIS_TYPES[t][2]
            a["instructions"] += layer["instructions"]
            a["work"] += layer["elements"] if unit == "element" else layer["macs"]
            a["layers"] += 1
            a["models"].add(r["model"])
    out = []
    for t, a in agg.items():
        lo, hi, unit = CMSIS_TYPES[t]
        per = a["instructions"] / a["work"]
        out.append({"type": t, "unit": unit, "layers": a["layers"], "models": sorted(a["models"]),
                    "instructions_per_unit": per, "cmsis_nn_low": lo, "cmsis_nn_high": hi,
                    "ratio_vs_cmsis_low": per / lo, "ratio_vs_cmsis_high": per / hi})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="cortex-m4,cortex-m7")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-portable", action="store_true", help="skip the portable-kernel baseline")
    ap.add_argument("--json", type=Path, default=ROOT / "results" / "cortex_m.json")
    args = ap.parse_args(argv)
    console = Console(width=None if Console().is_terminal else 180)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        console.print(f"{name} on {', '.join(targets)} ...")
        rows += bench_model(name, targets, args.samples, not args.no_portable, args.seed)

    for r in rows:
        if r["target"] != targets[0]:
            continue
        t = Table(title=f"{r['model']} on {r['target']}: instructions per layer (one inference)", header_style="bold")
        for col in ("#", "op", "type", "shape", "MACs", "instr.", "instr./MAC", "portable", "portable/MAC"):
            t.add_column(col, justify="left" if col in ("op", "type", "shape") else "right")
        for layer in r["layers"]:
            if not layer["instructions"] and not layer["macs"]:
                continue
            m = layer["macs"]
            p = layer["instructions_portable"]
            t.add_row(str(layer["index"]), layer["op"], layer["type"], layer["shape"], f"{m:,}",
                      f"{layer['instructions']:,.0f}", f"{layer['instructions'] / m:.2f}" if m else "",
                      f"{p:,.0f}" if p is not None else "", f"{p / m:.2f}" if (p is not None and m) else "")
        console.print(t)

    t = Table(title="Instructions per inference vs CMSIS-NN (CMSIS-NN: Cortex-M4 on QEMU, DESIGN.md)",
              header_style="bold")
    for col in ("model", "target", "MACs", "instr.", "/MAC", "CMSIS-NN", "ratio", "portable", "/CMSIS C",
                "flash B", "arena B", "static B", "stack B", "exact"):
        t.add_column(col, justify="left" if col in ("model", "target", "exact") else "right", no_wrap=True)
    for r in rows:
        d, p, c = r["dsp"], r["portable"], r["cmsis_nn_m4"]
        t.add_row(r["model"], r["target"].replace("cortex-", ""), f"{r['macs']:,}", f"{d['instructions']:,.0f}",
                  f"{d['instructions_per_mac']:.2f}", f"{c['instructions']:,}", f"{r['ratio_vs_cmsis_nn']:.2f}",
                  f"{p['instructions']:,.0f}" if p else "",
                  f"{r['ratio_portable_vs_cmsis_pure_c']:.2f}" if p else "",
                  f"{d['flash_model']:,}", f"{d['ram_arena']:,}", f"{d['ram_static']:,}", f"{d['stack_inference']:,}",
                  "yes" if d["bit_exact"] and (p is None or p["bit_exact"]) else "[red]NO[/]")
    console.print(t)
    console.print("ratio: mcuforge / CMSIS-NN instructions; /CMSIS C: portable kernels / CMSIS-NN's pure-C build; "
                  "flash: the model library's code and constants; static: its other RAM (kernel scratch); "
                  "stack: measured for one inference. TFLM's arenas (x86): " +
                  ", ".join(f"{m} {v['tflm_arena']:,} B" for m, v in CMSIS.items()))

    types = type_summary(rows)
    if types:
        t = Table(title="Per layer type on cortex-m4: instructions per MAC (add: per element) vs CMSIS-NN",
                  header_style="bold")
        for col in ("layer type", "layers", "mcuforge", "CMSIS-NN", "ratio"):
            t.add_column(col, justify="left" if col == "layer type" else "right")
        for s in types:
            cm = (f"{s['cmsis_nn_low']:.1f}" if s["cmsis_nn_low"] == s["cmsis_nn_high"]
                  else f"{s['cmsis_nn_low']:.1f}-{s['cmsis_nn_high']:.1f}")
            ratio = (f"{s['ratio_vs_cmsis_low']:.2f}" if s["cmsis_nn_low"] == s["cmsis_nn_high"]
                     else f"{s['ratio_vs_cmsis_high']:.2f}-{s['ratio_vs_cmsis_low']:.2f}")
            t.add_row(f"{s['type']} (per {s['unit']})", str(s["layers"]), f"{s['instructions_per_unit']:.2f}", cm,
                      ratio)
        console.print(t)

    result = {"mcuforge_version": __version__, "python": platform.python_version(), "machine": platform.machine(),
              "targets": targets, "samples": args.samples, "seed": args.seed,
              "cmsis_nn_source": "DESIGN.md anchor figures (Cortex-M4, QEMU mps2-an386, gcc 12.2 -O2)",
              "models": rows, "layer_types_m4": types}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    console.print(f"wrote {args.json}")
    return 0 if all(r["dsp"]["bit_exact"] and (r["portable"] is None or r["portable"]["bit_exact"])
                    for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
