"""Elementwise unary ops: clamp (relu, relu6, hardtanh), leaky_relu, sigmoid, tanh,
abs, log_abs (log(|x| + eps): the log compression of raw-audio front ends).

Integer semantics: one int8 -> int8 table of 256 entries per node,
table[q] = quantize_y(f(dequantize_x(q))), rounding half away from zero.
Any int8 elementwise function is exactly a table, so the table is the whole
specification. With attr ``table_method: "tflm"`` (imported TFLite models) the
table is instead computed with TFLite Micro's integer kernel for the op
(quant/tflm_tables.py: gemmlowp fixed-point logistic/tanh, ReLU requantization).
sigmoid and tanh use TFLite's fixed output quantization (1/256, -128) and
(1/128, 0). clamp nodes are normally fused into their producer.
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import QuantParams
from .base import OpDef, t_in, t_out


class _Unary(OpDef):
    kernel = "unary"
    inplace = True

    def fn(self, node, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def infer(self, node, graph):
        return [t_in(graph, node).shape]

    def run_float(self, node, graph, xs):
        return [self.fn(node, xs[0].astype(np.float64)).astype(np.float32)]

    def table(self, node, graph) -> np.ndarray:
        qx, qy = t_in(graph, node).quant, t_out(graph, node).quant
        if node.attrs.get("table_method", "float") == "tflm":  # imported TFLite: TFLM's integer kernel
            from ..quant.tflm_tables import tflm_table

            return tflm_table(node.op, node.attrs, qx, qy)
        q = np.arange(-128, 128, dtype=np.int64)
        real = (q - qx.zp) * np.float64(qx.s)
        return qy.quantize(self.fn(node, real))

    def run_int(self, node, graph, xs):
        return [self.table(node, graph)[xs[0].astype(np.int64) + 128]]

    def emit_c(self, node, graph, ctx):
        lut = ctx.array(node.name + "_lut", self.table(node, graph), "int8_t")
        n = t_in(graph, node).size
        return f"mf_lut_s8({ctx.buf(node.inputs[0])}, {ctx.buf(node.outputs[0])}, {n}, {lut});"


class Clamp(_Unary):
    """min/max may be None (unbounded): relu = clamp(0, None), relu6 = clamp(0, 6)."""

    name = "clamp"

    def fn(self, node, x):
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
        return np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi)


class LeakyRelu(_Unary):
    name = "leaky_relu"

    def fn(self, node, x):
        return np.where(x >= 0, x, x * float(node.attrs.get("alpha", 0.01)))


class Sigmoid(_Unary):
    name = "sigmoid"

    def fn(self, node, x):
        with np.errstate(over="ignore"):  # exp(-x) -> inf gives the right limit, 0
            return 1.0 / (1.0 + np.exp(-x))

    def output_quant(self, node, graph, observed):
        return QuantParams.per_tensor(1.0 / 256, -128)


class Tanh(_Unary):
    name = "tanh"

    def fn(self, node, x):
        return np.tanh(x)

    def output_quant(self, node, graph, observed):
        return QuantParams.per_tensor(1.0 / 128, 0)




class Abs(_Unary):
    name = "abs"

    def fn(self, node, x):
        return np.abs(x)


class LogAbs(_Unary):
    """y = log(|x| + eps), eps > 0 (attr): SincConv-style log compression as one table."""

    name = "log_abs"

    def check(self, node, graph):
        super().check(node, graph)
        eps = node.attrs.get("eps")
        if eps is None or not float(eps) > 0:
            from ..errors import GraphError

            raise GraphError(f"node '{node.name}' (log_abs): attribute eps must be > 0, got {eps}")

    def fn(self, node, x):
        return np.log(np.abs(x) + float(node.attrs["eps"]))


class QuantizeLevels(_Unary):
    """y = round(clip(x, 0, t) * L / t) * t / L with L = levels - 1 (attrs threshold t > 0, levels):
    the frozen b-bit activation of Squeeze-and-Threshold QAT (quant/squeeze_threshold.py), levels = 2^b.
    Its output is quantized to the b-bit grid itself (scale t / L, zero point -128), so the int8
    table snaps the producer's int8 output onto codes -128 .. -128 + L exactly; the values are
    carried in int8 storage (packed sub-byte storage is not implemented)."""

    name = "quantize_levels"

    def check(self, node, graph):
        super().check(node, graph)
        from ..errors import GraphError

        t, n = node.attrs.get("threshold"), node.attrs.get("levels")
        if t is None or not float(t) > 0:
            raise GraphError(f"node '{node.name}' (quantize_levels): attribute threshold must be > 0, got {t}")
        if n is None or int(n) != n or not 2 <= int(n) <= 256:
            raise GraphError(f"node '{node.name}' (quantize_levels): attribute levels must be an integer "
                             f"in 2 .. 256, got {n}")

    def fn(self, node, x):
        t, top = float(node.attrs["threshold"]), int(node.attrs["levels"]) - 1
        return np.round(np.clip(x, 0.0, t) * (top / t)) * (t / top)

    def output_quant(self, node, graph, observed):
        t, top = float(node.attrs["threshold"]), int(node.attrs["levels"]) - 1
        return QuantParams.per_tensor(np.float32(t / top), -128)

    def table(self, node, graph):
        """Exactly the level index: table[q] = -128 + round(clip(x, 0, t) * L / t)."""
        qx = t_in(graph, node).quant
        t, top = float(node.attrs["threshold"]), int(node.attrs["levels"]) - 1
        real = (np.arange(-128, 128, dtype=np.int64) - qx.zp) * np.float64(qx.s)
        return (np.round(np.clip(real, 0.0, t) * (top / t)) - 128).astype(np.int8)
