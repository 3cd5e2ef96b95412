"""pad: constant padding of an activation (TFLite PAD / PADV2).

inputs: x (rank <= 4); attrs: pads [before_0, after_0, before_1, after_1, ...] one
pair per dimension (the batch dimension is not padded), value (real, default 0).
Input and output share quantization. Integer semantics: every new element is
the int8 value quantize_y(value) = clamp(zp + round(value / scale)); for value 0
that is the zero point, as TFLite's PAD pads with the output zero point.
"""

from __future__ import annotations

import numpy as np

from ..errors import GraphError
from .base import OpDef, require_attrs, shape4, t_in, t_out


def _pairs(node, rank: int) -> list[tuple[int, int]]:
    pads = [int(p) for p in node.attrs["pads"]]
    if len(pads) != 2 * rank:
        raise GraphError(f"node '{node.name}' (pad): pads needs {2 * rank} values (before, after per "
                         f"dimension), got {len(pads)}")
    pairs = [(pads[2 * d], pads[2 * d + 1]) for d in range(rank)]
    if min(pads) < 0:
        raise GraphError(f"node '{node.name}' (pad): negative padding {pads}")
    if pairs[0] != (0, 0):
        raise GraphError(f"node '{node.name}' (pad): the batch dimension cannot be padded")
    return pairs


class Pad(OpDef):
    name = "pad"
    kernel = "pad"
    output_shares_input_quant = True

    def infer(self, node, graph):
        require_attrs(node, "pads")
        x = t_in(graph, node)
        shape4(x.shape)  # rank <= 4
        pairs = _pairs(node, len(x.shape))
        return [tuple(d + lo + hi for d, (lo, hi) in zip(x.shape, pairs))]

    def check(self, node, graph):
        super().check(node, graph)
        qi, qo = t_in(graph, node).quant, t_out(graph, node).quant
        if qi is not None and not qi.same_as(qo):
            raise GraphError(f"node '{node.name}' (pad): input and output must share quantization")

    def run_float(self, node, graph, xs):
        pairs = _pairs(node, xs[0].ndim)
        return [np.pad(xs[0], pairs, constant_values=float(node.attrs.get("value", 0.0))).astype(np.float32)]

    def pad_value(self, node, graph) -> int:
        q = t_out(graph, node).quant
        return int(q.quantize(np.array([float(node.attrs.get("value", 0.0))], np.float64))[0])

    def run_int(self, node, graph, xs):
        pairs = _pairs(node, xs[0].ndim)
        return [np.pad(xs[0], pairs, constant_values=self.pad_value(node, graph)).astype(np.int8)]

    def emit_c(self, node, graph, ctx):
        x, y = t_in(graph, node), t_out(graph, node)
        pairs = _pairs(node, len(x.shape))
        before = [0] * (4 - len(pairs)) + [lo for lo, _ in pairs]
        fmt = lambda v: "{ " + ", ".join(str(int(a)) for a in v) + " }"  # noqa: E731
        p = ctx.ident(node.name + "_p")
        ctx.decl(f"static const mf_pad_params {p} = {{ {fmt(shape4(x.shape))}, {fmt(shape4(y.shape))}, "
                 f"{fmt(before)}, {self.pad_value(node, graph)} }};")
        return f"mf_pad_s8(&{p}, {ctx.buf(node.inputs[0])}, {ctx.buf(node.outputs[0])});"
