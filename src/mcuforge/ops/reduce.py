"""mean over axes (TFLite MEAN), int8 with TFLite Micro's integer semantics.

inputs: x (rank <= 4); attrs: axes (list of axes, never the batch axis 0),
keepdims (bool). Integer semantics follow TFLM's reduce kernel, which picks one
of three algorithms (n = number of elements averaged, S = sum of raw int8 values):

* ``spatial`` -- rank 4, keepdims, axes {1, 2} (reference_integer_ops::Mean):
  acc = MBQM(S - n zp_x, M(s_x / s_y)); acc = acc / n rounded half away from zero;
  y = clamp(zp_y + acc).
* ``same_quant`` -- otherwise, input and output quantized alike (reference_ops::Mean):
  y = S / n truncated toward zero (C integer division).
* ``requant`` -- otherwise (reference_ops::QuantizedMeanOrSum): with (M, e) = M(s_x / s_y),
  k = min(floor(log2 n), 32, 31 + e), M' = (M 2^k) / n truncated, e' = e - k;
  y = clamp(zp_y + MBQM(S - zp_x n, M', e')).

The algorithm is derived from shapes, attributes and quantization (``mean_mode``),
so the integer reference and the C kernel cannot disagree on it.
"""

from __future__ import annotations

import numpy as np

from ..errors import GraphError
from ..quant.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
from .base import OpDef, require_attrs, shape4, t_in, t_out

MODES = {"spatial": 0, "same_quant": 1, "requant": 2}


def _axes(node, rank: int) -> list[int]:
    axes = sorted({int(a) % rank for a in node.attrs["axes"]}) if rank else []
    if not axes or 0 in axes:
        raise GraphError(f"node '{node.name}' (mean): axes {node.attrs['axes']} must be non-empty and "
                         "must not include the batch axis 0")
    return axes


def mean_mode(node, graph) -> str:
    x, y = t_in(graph, node), t_out(graph, node)
    axes = _axes(node, len(x.shape))
    if len(x.shape) == 4 and node.attrs.get("keepdims", False) and axes == [1, 2]:
        return "spatial"
    if x.quant.same_as(y.quant):
        return "same_quant"
    return "requant"


def mean_params(node, graph) -> tuple[str, int, int, int]:
    """(mode, multiplier, shift, count)."""
    x, y = t_in(graph, node), t_out(graph, node)
    axes = _axes(node, len(x.shape))
    n = int(np.prod([x.shape[a] for a in axes]))
    mode = mean_mode(node, graph)
    mult, shift = quantize_multiplier(np.float64(x.quant.s) / np.float64(y.quant.s))
    if mode == "requant":
        k = min(n.bit_length() - 1, 32, 31 + shift)
        mult = int((mult << k) // n) if k >= 0 else int((mult >> -k) // n)
        shift = shift - k
    return mode, mult, shift, n


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
        mode, mult, shift, n = mean_params(node, graph)
        zx, zy = t_in(graph, node).quant.zp, t_out(graph, node).quant.zp
        total = x.sum(axis=axes, keepdims=bool(node.attrs.get("keepdims", False)))
        if mode == "spatial":
            acc = multiply_by_quantized_multiplier(total - n * zx, mult, shift)
            half = n // 2
            acc = np.where(acc > 0, acc + half, acc - half)
            y = np.sign(acc) * (np.abs(acc) // n) + zy
        elif mode == "same_quant":
            y = np.sign(total) * (np.abs(total) // n)
        else:
            y = multiply_by_quantized_multiplier(total - n * zx, mult, shift) + zy
        return [np.clip(y, -128, 127).astype(np.int8)]

    def emit_c(self, node, graph, ctx):
        x = t_in(graph, node)
        axes = _axes(node, len(x.shape))
        mode, mult, shift, n = mean_params(node, graph)
        pad = 4 - len(x.shape)
        mask = [0] * 4
        for a in axes:
            mask[a + pad] = 1
        fmt = lambda v: "{ " + ", ".join(str(int(a)) for a in v) + " }"  # noqa: E731
        p = ctx.ident(node.name + "_p")
        ctx.decl(f"static const mf_mean_params {p} = {{ {fmt(shape4(x.shape))}, {fmt(mask)}, {MODES[mode]}, "
                 f"{n}, {x.quant.zp}, {t_out(graph, node).quant.zp}, {mult}, {shift} }};")
        return f"mf_mean_s8(&{p}, {ctx.buf(node.inputs[0])}, {ctx.buf(node.outputs[0])});"
