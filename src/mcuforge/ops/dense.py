"""fully_connected: y = x @ W^T + b over the last axis, with a fused clamp.

inputs: x [..., K], weight [O, K], bias [O] (optional); attrs: act_min, act_max
Integer semantics as conv2d (per-output-channel requantization).
"""

from __future__ import annotations

import numpy as np

from ..errors import GraphError
from .base import OpDef, apply_float_activation, t_in, t_out
from .conv import Conv2D, quantize_weight_and_bias
from .weight_storage import portable_weights


class FullyConnected(OpDef):
    name = "fully_connected"
    kernel = "dense"
    fusable_activation = True
    num_inputs = (2, 3)

    def infer(self, node, graph):
        x, w = t_in(graph, node, 0), t_in(graph, node, 1)
        if len(w.shape) != 2 or not x.shape or x.shape[-1] != w.shape[1]:
            raise GraphError(f"node '{node.name}' (fully_connected): input {x.shape} does not match "
                             f"weight {w.shape} (expected [..., {w.shape[-1] if w.shape else '?'}])")
        if len(node.inputs) == 3 and node.inputs[2] and t_in(graph, node, 2).shape != (w.shape[0],):
            raise GraphError(f"node '{node.name}' (fully_connected): bias must have shape ({w.shape[0]},)")
        return [x.shape[:-1] + (w.shape[0],)]

    def run_float(self, node, graph, xs):
        y = xs[0].astype(np.float64) @ xs[1].astype(np.float64).T
        if len(xs) > 2 and xs[2] is not None:
            y = y + xs[2]
        return [apply_float_activation(node, y).astype(np.float32)]

    requant = Conv2D.requant

    requantize_accumulator = Conv2D.requantize_accumulator

    def run_int(self, node, graph, xs):
        zx = t_in(graph, node, 0).quant.zp
        acc = ((xs[0].astype(np.float64) - zx) @ xs[1].astype(np.float64).T).astype(np.int64)
        return [self.requantize_accumulator(node, graph, acc, xs[2] if len(xs) > 2 else None)]

    def quantize_constants(self, node, graph, options):
        quantize_weight_and_bias(node, graph, per_channel=options.get("per_channel_dense", True))

    def macs(self, node, graph):
        o, k = t_in(graph, node, 1).shape
        rows = int(np.prod(t_out(graph, node).shape[:-1]))
        return rows * o * k

    def emit_c(self, node, graph, ctx):
        if ctx.target.has_dsp:  # fast kernel for DSP-extension cores (ops/dsp.py)
            from .dsp import emit_fc

            code = emit_fc(self, node, graph, ctx)
            if code:
                return code
        x, w, y = t_in(graph, node, 0), t_in(graph, node, 1), t_out(graph, node)
        mult, shift, (lo, hi) = self.requant(node, graph)
        p = ctx.ident(node.name + "_p")
        m_id = ctx.array(node.name + "_mult", mult, "int32_t")
        s_id = ctx.array(node.name + "_shift", shift, "int32_t")
        bias = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else "NULL"
        rows = int(np.prod(x.shape[:-1]))
        ctx.decl(f"static const mf_fc_params {p} = {{ {rows}, {w.shape[1]}, {w.shape[0]}, "
                 f"{-x.quant.zp}, {y.quant.zp}, {lo}, {hi}, {m_id}, {s_id} }};")
        kernel, weights = portable_weights(node, graph, ctx, "mf_fc_s8")
        return f"{kernel}(&{p}, {ctx.buf(node.inputs[0])}, {weights}, {bias}, {ctx.buf(node.outputs[0])});"
