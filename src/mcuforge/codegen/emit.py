"""Emit a self-contained C99 library for a quantized graph.

generate(graph, out_dir) writes: <prefix>.h (API), <prefix>.c (weights as const
arrays, layer sequence, arena), the portable kernels the graph uses, a Makefile
and a CMakeLists.txt, report.json and report.md (per-layer costs and memory),
and model.mcf (the quantized graph, for the reference runner and exporters).
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import jinja2

from .. import __version__
from ..errors import GraphError
from ..ir.graph import Graph
from ..ir.serialize import save_graph
from ..ops import get_op
from ..outdir import mark_complete, staged_output_dir
from ..targets.table import GENERIC, Target
from .context import CodegenContext, c_identifier
from .planner import MemoryPlan, plan_memory
from .report import build_report, write_report

KERNEL_DIR = resources.files("mcuforge") / "ops" / "kernels"
COMMON_HEADERS = ("mf_kernels.h", "mf_fixedpoint.h")


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("mcuforge") / "codegen" / "templates")),
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
    )


def _io_info(graph: Graph, names: list[str], plan: MemoryPlan) -> list[dict]:
    out = []
    for name in names:
        t = graph.tensors[name]
        shape = list(t.shape)
        out.append({
            "name": name, "rank": len(shape), "shape_text": "x".join(map(str, shape)),
            "shape4": (shape + [1] * 4)[:4] if len(shape) <= 4 else shape[:4],
            "size": t.size, "scale": repr(float(t.quant.s)), "zero_point": t.quant.zp,
            "offset": plan.offsets[name],
        })
    return out


def render_sources(graph: Graph, prefix: str = "model", target: Target | None = None,
                   extension=None, shared_arena: str | None = None, plan_options: dict | None = None
                   ) -> tuple[dict[str, str], MemoryPlan, CodegenContext]:
    """The generated text files by name (without copied kernels), the plan and the context.

    `target` (default: GENERIC, portable C) is what op emitters see as `ctx.target`.
    `extension` (e.g. mcuforge.train.codegen.TrainExtension) may replace the memory plan
    (`plan(graph)`), emit a node itself (`emit(node, graph, ctx)`: code, or None for the op's
    emitter), add code after the layers (`finish(ctx)`: dict with `blocks` for the .c, `header`
    for the .h, `files` {name: text}) and a report section (`report(ctx)`).
    `shared_arena` (a C symbol, e.g. "net_arena"): use the arena (and the kernel scratch,
    `<symbol>_scratch`) that `<symbol>.h` declares instead of private ones, for libraries whose
    parts run one after another (mcuforge.eenn.codegen); the caller defines them large enough.
    `plan_options`: keyword arguments of plan_memory (e.g. {"allow_overlap": False})."""
    if not graph.is_quantized:
        raise GraphError(f"graph '{graph.name}' is not quantized: quantize it (calibration data) before "
                         "generating C")
    graph.validate()
    for name in graph.inputs + graph.outputs:
        if graph.tensors[name].dtype != "int8":
            raise GraphError(f"graph input/output '{name}' must be int8, is {graph.tensors[name].dtype}")
    prefix = c_identifier(prefix)
    plan = extension.plan(graph) if extension is not None else plan_memory(graph, **(plan_options or {}))
    ctx = CodegenContext(graph, plan, prefix, target)
    layers = []
    for node in graph.nodes:
        code = extension.emit(node, graph, ctx) if extension is not None else None
        if code is None:
            code = get_op(node.op, node).emit_c(node, graph, ctx)
        shapes = " x ".join(str(list(graph.tensors[t].shape)) for t in node.inputs
                            if not graph.tensors[t].is_const) + " -> " + str(list(graph.tensors[node.outputs[0]].shape))
        layers.append({"name": node.name, "op": node.op, "shapes": shapes, "code": code})
    ext = extension.finish(ctx) if extension is not None else {}
    if ctx.scratch_bytes and shared_arena:
        ctx.decls.insert(0, f"#define {prefix}_scratch {shared_arena}_scratch /* shared, see {shared_arena}.h */")
    elif ctx.scratch_bytes:
        ctx.decls.insert(0, f"/* scratch for kernels that unroll their input (im2col), shared by the layers */\n"
                            f"static uint32_t {prefix}_scratch[{ctx.scratch_bytes // 4}];")
    env = _env()
    common = dict(prefix=prefix, PREFIX=prefix.upper(), version=__version__, graph_name=graph.name,
                  arena_size=plan.arena_size, inputs=_io_info(graph, graph.inputs, plan),
                  outputs=_io_info(graph, graph.outputs, plan), extra_blocks=ext.get("blocks", []),
                  header_blocks=ext.get("header", []), shared_arena=shared_arena)
    total_macs = sum(get_op(n.op).macs(n, graph) for n in graph.nodes)
    files = {
        f"{prefix}.h": env.get_template("model.h.j2").render(**common),
        f"{prefix}.c": env.get_template("model.c.j2").render(
            **common, decls=ctx.decls, layers=layers, total_macs=total_macs,
            includes=[f for f in ctx.kernel_files if f.endswith(".h")]),
    }
    sources = [f"{prefix}.c"] + kernel_sources(graph) + [f for f in ctx.kernel_files if f.endswith(".c")]
    headers = [f"{prefix}.h", *COMMON_HEADERS] + [f for f in ctx.kernel_files if f.endswith(".h")]
    files["Makefile"] = env.get_template("Makefile.j2").render(**common, sources=sources, headers=headers)
    files["CMakeLists.txt"] = env.get_template("CMakeLists.txt.j2").render(**common, sources=sources)
    files.update(ext.get("files", {}))
    return files, plan, ctx


def kernel_sources(graph: Graph) -> list[str]:
    stems = sorted({get_op(n.op).kernel for n in graph.nodes if get_op(n.op).kernel})
    return [f"mf_{s}.c" for s in stems]


def write_library(graph: Graph, out: Path, prefix: str = "model", extra_report: dict | None = None,
                  target: Target | None = None, extension=None, plan_options: dict | None = None) -> dict:
    """Write the library into an existing directory `out`; returns the report (which records the target)."""
    files, plan, ctx = render_sources(graph, prefix, target, extension, plan_options=plan_options)
    for name, text in files.items():
        (out / name).write_text(text)
    for name in list(COMMON_HEADERS) + kernel_sources(graph) + ctx.kernel_files:
        shutil.copyfile(KERNEL_DIR / name, out / name)
    save_graph(graph, out / "model.mcf")
    extra = {"target": (target or GENERIC).to_json(), **(extra_report or {})}
    if extension is not None:
        extra.update(extension.report(ctx))
    report = build_report(graph, plan, ctx, prefix=c_identifier(prefix), extra=extra)
    write_report(report, out)
    mark_complete(out)
    return report


def generate(graph: Graph, out_dir: str | Path, prefix: str = "model", extra_report: dict | None = None,
             target: Target | None = None, extension=None, plan_options: dict | None = None) -> dict:
    """Write the C library atomically into `out_dir` for `target` (default: portable C); returns the report.
    `plan_options`: keyword arguments of codegen.plan_memory."""
    with staged_output_dir(out_dir) as staging:
        return write_library(graph, staging, prefix, extra_report, target, extension, plan_options)


def load_report(lib_dir: str | Path) -> dict:
    return json.loads((Path(lib_dir) / "report.json").read_text())


