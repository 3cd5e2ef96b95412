"""Data-movement ops: reshape, transpose, concat.

reshape (attr shape, batch first) reuses its input's buffer: no code, no copy.
transpose (attr perm, perm[0] == 0) and concat (attr axis) copy bytes; concat
requantizes an input whose quantization differs from the output's with TFLite's
Requantize: y = clamp(zp_y + MBQM(x - zp_x, M(s_x / s_y))).
"""

from __future__ import annotations

import numpy as np

from ..errors import GraphError
from ..quant.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
from .base import OpDef, require_attrs, shape4, t_in, t_out


class Reshape(OpDef):
    name = "reshape"
    output_shares_input_quant = True
    alias_input = True  # the planner gives the output its input's buffer

    def infer(self, node, graph):
        require_attrs(node, "shape")
        x = t_in(graph, node)
        shape = tuple(int(d) for d in node.attrs["shape"])
        if int(np.prod(shape)) != x.size:
            raise GraphError(f"node '{node.name}' (reshape): cannot reshape {x.shape} to {shape}")
        return [shape]

    def run_float(self, node, graph, xs):
        return [xs[0].reshape((xs[0].shape[0],) + tuple(node.attrs["shape"][1:]))]

    run_int = run_float

    def emit_c(self, node, graph, ctx):
        return ""  # the planner gave the output its input's buffer


class Transpose(OpDef):
    name = "transpose"
    output_shares_input_quant = True
    kernel = "layout"

    def infer(self, node, graph):
        require_attrs(node, "perm")
        x = t_in(graph, node)
        perm = list(node.attrs["perm"])
        if sorted(perm) != list(range(len(x.shape))) or perm[0] != 0:
            raise GraphError(f"node '{node.name}' (transpose): bad permutation {perm} for rank {len(x.shape)} "
                             "(the batch axis must stay first)")
        return [tuple(x.shape[p] for p in perm)]

    def run_float(self, node, graph, xs):
        return [np.ascontiguousarray(np.transpose(xs[0], node.attrs["perm"]))]

    run_int = run_float

    def emit_c(self, node, graph, ctx):
        x = t_in(graph, node)
        perm = list(node.attrs["perm"])
        pad = 4 - len(perm)
        perm4 = list(range(pad)) + [p + pad for p in perm]
        in4 = shape4(x.shape)
        fmt = lambda v: "{ " + ", ".join(str(int(a)) for a in v) + " }"  # noqa: E731
        p = ctx.ident(node.name + "_p")
        ctx.decl(f"static const mf_transpose_params {p} = {{ {fmt(in4)}, {fmt(perm4)} }};")
        return f"mf_transpose_s8(&{p}, {ctx.buf(node.inputs[0])}, {ctx.buf(node.outputs[0])});"


class Concat(OpDef):
    name = "concat"
    kernel = "layout"
    num_inputs = (1, 64)

    def infer(self, node, graph):
        require_attrs(node, "axis")
        shapes = [t_in(graph, node, i).shape for i in range(len(node.inputs))]
        axis = int(node.attrs["axis"])
        rank = len(shapes[0])
        if not 0 < axis < rank:
            raise GraphError(f"node '{node.name}' (concat): axis {axis} out of range for rank {rank} "
                             "(concatenation along the batch axis is not supported)")
        for s in shapes[1:]:
            if len(s) != rank or any(s[d] != shapes[0][d] for d in range(rank) if d != axis):
                raise GraphError(f"node '{node.name}' (concat): shapes {shapes} differ outside axis {axis}")
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return [tuple(out)]

    def run_float(self, node, graph, xs):
        return [np.concatenate(xs, axis=int(node.attrs["axis"]))]

    def requant(self, node, graph, i: int):
        """(multiplier, shift) for input i, or None where it is copied as is."""
        qx, qy = t_in(graph, node, i).quant, t_out(graph, node).quant
        if qx.same_as(qy):
            return None
        return quantize_multiplier(np.float64(qx.s) / np.float64(qy.s))

    def run_int(self, node, graph, xs):
        qy = t_out(graph, node).quant
        parts = []
        for i, x in enumerate(xs):
            rq = self.requant(node, graph, i)
            if rq is None:
                parts.append(x)
            else:
                zx = t_in(graph, node, i).quant.zp
                y = multiply_by_quantized_multiplier(x.astype(np.int64) - zx, *rq) + qy.zp
                parts.append(np.clip(y, -128, 127).astype(np.int8))
        return [np.concatenate(parts, axis=int(node.attrs["axis"]))]

    def emit_c(self, node, graph, ctx):
        axis = int(node.attrs["axis"])
        y = t_out(graph, node)
        out_inner = int(np.prod(y.shape[axis:]))
        outer = int(np.prod(y.shape[:axis]))
        lines, offset = [], 0
        for i, name in enumerate(node.inputs):
            x = t_in(graph, node, i)
            inner = int(np.prod(x.shape[axis:]))
            rq = self.requant(node, graph, i)
            mult, shift = rq if rq is not None else (0, 0)
            lines.append(
                f"mf_concat_part_s8({ctx.buf(name)}, {ctx.buf(node.outputs[0])}, {outer}, {inner}, "
                f"{out_inner}, {offset}, {1 if rq is not None else 0}, {-x.quant.zp}, {y.quant.zp}, "
                f"{mult}, {shift});")
            offset += inner
        return "\n    ".join(lines)
