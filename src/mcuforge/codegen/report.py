"""report.json and report.md: per-layer costs, totals and the memory plan."""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..ir.graph import Graph
from ..ops import get_op
from ..ops.weight_storage import is_compressed, stored_weight_bytes
from .context import CodegenContext
from .planner import MemoryPlan


def layer_rows(graph: Graph) -> list[dict]:
    rows = []
    for n in graph.nodes:
        consts = [graph.tensors[t] for t in n.inputs if t and graph.tensors[t].is_const]
        acts = [graph.tensors[t] for t in n.inputs if t and not graph.tensors[t].is_const]
        out = graph.tensors[n.outputs[0]]
        rows.append({
            "name": n.name, "op": n.op,
            "input_shapes": [list(t.shape) for t in acts], "output_shape": list(out.shape),
            "macs": int(get_op(n.op).macs(n, graph)),
            "params": int(sum(t.size for t in consts)),
            # compressed weights (ops/weight_storage.py) count at their stored size
            "weight_bytes": int(sum(t.nbytes for t in consts)) + stored_weight_bytes_delta(n, graph),
            "activation_bytes": int(sum(t.nbytes for t in acts) + out.nbytes),
            "output_bytes": int(out.nbytes),
            "output_quant": ({"scale": out.quant.s, "zero_point": out.quant.zp} if out.quant else None),
        })
    return rows


def stored_weight_bytes_delta(node, graph: Graph) -> int:
    if not is_compressed(node):
        return 0
    return stored_weight_bytes(node, graph) - graph.tensors[node.inputs[1]].nbytes


def build_report(graph: Graph, plan: MemoryPlan, ctx: CodegenContext, prefix: str,
                 extra: dict | None = None) -> dict:
    layers = layer_rows(graph)
    return {
        "mcuforge_version": __version__, "model": graph.name, "prefix": prefix,
        "layers": layers,
        "totals": {
            "layers": len(layers),
            "macs": sum(r["macs"] for r in layers),
            "params": sum(r["params"] for r in layers),
            "weight_bytes": sum(r["weight_bytes"] for r in layers),
            "const_bytes": ctx.const_bytes,
        },
        "memory": {
            "arena_bytes": plan.arena_size,
            "scratch_bytes": ctx.scratch_bytes,  # static scratch of the kernels (im2col), RAM beside the arena
            "unplanned_bytes": plan.naive_size,
            "inplace_layers": plan.inplace,
            # output placed `shift` bytes from the input it is the last reader of, sharing `shared_bytes`
            "overlap_layers": [{"layer": o.node, "input": o.input, "output": o.output, "shift": o.shift,
                                "shared_bytes": o.shared} for o in plan.overlaps],
            "tensors": {t: {"offset": off, "bytes": graph.tensors[t].nbytes} for t, off in plan.offsets.items()},
        },
        "inputs": [{"name": t, "shape": list(graph.tensors[t].shape), "scale": graph.tensors[t].quant.s,
                    "zero_point": graph.tensors[t].quant.zp} for t in graph.inputs],
        "outputs": [{"name": t, "shape": list(graph.tensors[t].shape), "scale": graph.tensors[t].quant.s,
                     "zero_point": graph.tensors[t].quant.zp} for t in graph.outputs],
        "quantization": graph.meta.get("quantization", {}),
        **(extra or {}),
    }


def _shape(s) -> str:
    return "x".join(map(str, s))


def render_markdown(report: dict) -> str:
    t, m = report["totals"], report["memory"]
    lines = [
        f"# {report['model']}: mcuforge deployment report",
        "",
        f"{t['layers']} layers, {t['macs']:,} MACs, {t['params']:,} parameters.",
        "",
        "| # | layer | op | input | output | MACs | params | weight B | activation B |",
        "|--:|---|---|---|---|--:|--:|--:|--:|",
    ]
    for i, r in enumerate(report["layers"]):
        ins = ", ".join(_shape(s) for s in r["input_shapes"])
        lines.append(f"| {i} | {r['name']} | {r['op']} | {ins} | {_shape(r['output_shape'])} | {r['macs']:,} | "
                     f"{r['params']:,} | {r['weight_bytes']:,} | {r['activation_bytes']:,} |")
    lines.append(f"| | **total** | | | | **{t['macs']:,}** | **{t['params']:,}** | **{t['weight_bytes']:,}** | |")
    lines += [
        "",
        "## Memory",
        "",
        "| what | bytes |",
        "|---|--:|",
        f"| activation arena (RAM, planned peak) | {m['arena_bytes']:,} |",
        *([f"| kernel scratch (RAM, im2col) | {m['scratch_bytes']:,} |"] if m.get("scratch_bytes") else []),
        f"| activations without planning | {m['unplanned_bytes']:,} |",
        f"| weights, biases, tables, layer parameters (flash) | {t['const_bytes']:,} |",
        "",
        f"In-place layers: {', '.join(m['inplace_layers']) or 'none'}.",
        "",
        "Overlapping layers (the output starts `shift` bytes from the input it is the last reader of, "
        "sharing bytes with it): " + (", ".join(f"{o['layer']} ({o['shift']:+,} B, {o['shared_bytes']:,} B shared)"
                                               for o in m.get("overlap_layers", [])) or "none") + ".",
        "",
    ]
    q = report.get("quantization") or {}
    if q:
        lines.append(f"Quantization: {q.get('scheme')}, calibration '{q.get('method')}' on "
                     f"{q.get('calibration_samples')} samples.")
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(render_markdown(report))
