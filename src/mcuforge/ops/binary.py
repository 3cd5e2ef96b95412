"""add and mul: elementwise with numpy broadcasting (rank <= 4), fused clamp.

Integer semantics (TFLite int8 ADD and MUL, TFLM reference kernels):
add: left_shift = 20, twice_max = 2 * max(s_a, s_b);
     a' = MBQM((a - zp_a) << 20, M(s_a / twice_max)),  b' likewise,
     y  = clamp(zp_y + MBQM(a' + b', M(twice_max / (2^20 s_y))))
mul: y  = clamp(zp_y + MBQM((a - zp_a) * (b - zp_b), M(s_a s_b / s_y)))
where MBQM is MultiplyByQuantizedMultiplier and M() QuantizeMultiplier.
A float constant operand is quantized symmetrically per tensor.
"""

from __future__ import annotations

import numpy as np

from ..errors import GraphError
from ..ir.graph import QuantParams
from ..quant.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
from .base import (OpDef, apply_float_activation, quantized_activation_range, shape4, t_in,
                   t_out)

ADD_LEFT_SHIFT = 20


def broadcast_strides(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[int]:
    """Element strides of `shape` inside the rank-4 `out_shape`; 0 where broadcast."""
    s4, o4 = shape4(shape), shape4(out_shape)
    strides, acc = [0] * 4, 1
    for d in range(3, -1, -1):
        strides[d] = 0 if (s4[d] == 1 and o4[d] != 1) else acc
        acc *= s4[d]
    return strides


class _Binary(OpDef):
    fusable_activation = True
    num_inputs = (2, 2)
    kernel = "binary"

    def infer(self, node, graph):
        a, b = t_in(graph, node, 0).shape, t_in(graph, node, 1).shape
        try:
            out = np.broadcast_shapes(a, b)
        except ValueError:
            raise GraphError(f"node '{node.name}' ({node.op}): shapes {a} and {b} do not broadcast") from None
        if len(out) > 4:
            raise GraphError(f"node '{node.name}' ({node.op}): rank {len(out)} > 4 is not supported")
        return [tuple(out)]

    inplace = True

    def quantize_constants(self, node, graph, options):
        for t in node.inputs:
            tensor = graph.tensors[t]
            if tensor.is_const and tensor.dtype == "float32":
                data = tensor.data.astype(np.float64)
                maxabs = float(np.abs(data).max()) if data.size else 0.0
                q = QuantParams.per_tensor(maxabs / 127.0 if maxabs > 0 else 1.0, 0)
                tensor.data, tensor.dtype, tensor.quant = q.quantize(data), "int8", q

    def params(self, node, graph) -> dict:
        raise NotImplementedError

    def emit_c(self, node, graph, ctx):
        if ctx.target.has_dsp and self.name == "add":  # fast kernel for DSP-extension cores (ops/dsp.py)
            from .dsp import emit_add

            code = emit_add(self, node, graph, ctx)
            if code:
                return code
        a, b, y = t_in(graph, node, 0), t_in(graph, node, 1), t_out(graph, node)
        prm = self.params(node, graph)
        lo, hi = quantized_activation_range(node, y.quant)
        p = ctx.ident(node.name + "_p")
        sa, sb = broadcast_strides(a.shape, y.shape), broadcast_strides(b.shape, y.shape)
        fmt = lambda v: "{ " + ", ".join(str(int(x)) for x in v) + " }"  # noqa: E731
        ctx.decl(
            f"static const mf_binary_params {p} = {{\n  {fmt(shape4(y.shape))}, {fmt(sa)}, {fmt(sb)},\n"
            f"  {-a.quant.zp}, {-b.quant.zp}, {y.quant.zp},\n"
            f"  {prm['a_mult']}, {prm['a_shift']}, {prm['b_mult']}, {prm['b_shift']}, "
            f"{prm['out_mult']}, {prm['out_shift']}, {prm['left_shift']}, {lo}, {hi}\n}};"
        )
        fn = "mf_add_s8" if self.name == "add" else "mf_mul_s8"
        return f"{fn}(&{p}, {ctx.buf(node.inputs[0])}, {ctx.buf(node.inputs[1])}, {ctx.buf(node.outputs[0])});"


class Add(_Binary):
    name = "add"

    def run_float(self, node, graph, xs):
        return [apply_float_activation(node, xs[0].astype(np.float64) + xs[1]).astype(np.float32)]

    def params(self, node, graph):
        sa, sb = t_in(graph, node, 0).quant.s, t_in(graph, node, 1).quant.s
        sy = t_out(graph, node).quant.s
        twice_max = 2.0 * max(sa, sb)
        am, ash = quantize_multiplier(sa / twice_max)
        bm, bsh = quantize_multiplier(sb / twice_max)
        om, osh = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * sy))
        return dict(a_mult=am, a_shift=ash, b_mult=bm, b_shift=bsh, out_mult=om, out_shift=osh,
                    left_shift=ADD_LEFT_SHIFT)

    def run_int(self, node, graph, xs):
        p = self.params(node, graph)
        za, zb = t_in(graph, node, 0).quant.zp, t_in(graph, node, 1).quant.zp
        qy = t_out(graph, node).quant
        a = multiply_by_quantized_multiplier((xs[0].astype(np.int64) - za) << p["left_shift"], p["a_mult"], p["a_shift"])
        b = multiply_by_quantized_multiplier((xs[1].astype(np.int64) - zb) << p["left_shift"], p["b_mult"], p["b_shift"])
        y = multiply_by_quantized_multiplier(a + b, p["out_mult"], p["out_shift"]) + qy.zp
        lo, hi = quantized_activation_range(node, qy)
        return [np.clip(y, lo, hi).astype(np.int8)]


class Mul(_Binary):
    name = "mul"

    def run_float(self, node, graph, xs):
        return [apply_float_activation(node, xs[0].astype(np.float64) * xs[1]).astype(np.float32)]

    def params(self, node, graph):
        sa, sb = t_in(graph, node, 0).quant.s, t_in(graph, node, 1).quant.s
        om, osh = quantize_multiplier(np.float64(sa) * np.float64(sb) / np.float64(t_out(graph, node).quant.s))
        return dict(a_mult=0, a_shift=0, b_mult=0, b_shift=0, out_mult=om, out_shift=osh, left_shift=0)

    def run_int(self, node, graph, xs):
        p = self.params(node, graph)
        za, zb = t_in(graph, node, 0).quant.zp, t_in(graph, node, 1).quant.zp
        qy = t_out(graph, node).quant
        prod = (xs[0].astype(np.int64) - za) * (xs[1].astype(np.int64) - zb)
        y = multiply_by_quantized_multiplier(prod, p["out_mult"], p["out_shift"]) + qy.zp
        lo, hi = quantized_activation_range(node, qy)
        return [np.clip(y, lo, hi).astype(np.int8)]
