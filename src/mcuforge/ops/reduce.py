"""mean over axes (TFLite MEAN), int8 with TensorFlow Lite Micro's integer semantics.

inputs: x (rank <= 4); attrs: axes (list of axes, never the batch axis 0),
keepdims (bool). Integer semantics: TFLM's int8 MEAN (reference_ops::QuantizedMeanOrSum,
which TFLM uses for every int8 MEAN): with n the number of elements averaged,
S the sum of the raw int8 values and (M, e) = QuantizeMultiplier(s_x / s_y),
k = min(floor(log2 n), 32, 31 + e), M' = floor(M 2^k / n), e' = e - k:
y = clamp(zp_y + MBQM(S - zp_x n, M', e')).
"""

from __future__ import annotations

import numpy as np

from ..errors import GraphError
from ..quant.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
from .base import OpDef, require_attrs, shape4, t_in, t_out


def _axes(node, rank: int) -> list[int]:
    axes = sorted({int(a) % rank for a in node.attrs["axes"]}) if rank else []
    if not axes or 0 in axes:
        raise GraphError(f"node '{node.name}' (mean): axes {node.attrs['axes']} must be non-empty and "
                         "must not include the batch axis 0")
    return axes


def mean_params(node, graph) -> tuple[int, int, int]:
    """(multiplier, shift, count): the requantization with 1/n folded in, as TFLM computes it."""
    x, y = t_in(graph, node), t_out(graph, node)
    n = int(np.prod([x.shape[a] for a in _axes(node, len(x.shape))]))
    mult, shift = quantize_multiplier(np.float64(x.quant.s) / np.float64(y.quant.s))
    k = min(n.bit_length() - 1, 32, 31 + shift)
    mult = int((mult << k) // n) if k >= 0 else int((mult >> -k) // n)
    return mult, shift - k, n


class Mean(OpDef):
    name = "mean"
    kernel = "reduce"

    def infer(self, node, graph):
        require_attrs(node, "axes")
        x = t_in(graph, node)
        shape4(x.shape)
        axes = _axes(node, len(x.shape))
        if node.attrs.get("keepdims", False):
            return [tuple(1 if d in axes else s for d, s in enumerate(x.shape))]
        return [tuple(s for d, s in enumerate(x.shape) if d not in axes)]

    def run_float(self, node, graph, xs):
        axes = tuple(_axes(node, xs[0].ndim))
        y = xs[0].astype(np.float64).mean(axis=axes, keepdims=bool(node.attrs.get("keepdims", False)))
        return [y.astype(np.float32)]

    def run_int(self, node, graph, xs):
        x = xs[0].astype(np.int64)
        axes = tuple(_axes(node, x.ndim))
        mult, shift, n = mean_params(node, graph)
        zx, zy = t_in(graph, node).quant.zp, t_out(graph, node).quant.zp
        total = x.sum(axis=axes, keepdims=bool(node.attrs.get("keepdims", False)))
        y = multiply_by_quantized_multiplier(total - n * zx, mult, shift) + zy
        return [np.clip(y, -128, 127).astype(np.int8)]

    def emit_c(self, node, graph, ctx):
        x = t_in(graph, node)
        axes = _axes(node, len(x.shape))
        mult, shift, n = mean_params(node, graph)
        pad = 4 - len(x.shape)
        mask = [0] * 4
        for a in axes:
            mask[a + pad] = 1
        fmt = lambda v: "{ " + ", ".join(str(int(a)) for a in v) + " }"  # noqa: E731
        p = ctx.ident(node.name + "_p")
        ctx.decl(f"static const mf_mean_params {p} = {{ {fmt(shape4(x.shape))}, {fmt(mask)}, "
                 f"{n}, {x.quant.zp}, {t_out(graph, node).quant.zp}, {mult}, {shift} }};")
        return f"mf_mean_s8(&{p}, {ctx.buf(node.inputs[0])}, {ctx.buf(node.outputs[0])});"
