"""quantize: int8 -> int8 requantization (TFLite QUANTIZE between int8 tensors).

Integer semantics (TFLM Requantize): y = clamp(zp_y + MBQM(x - zp_x, M(s_x / s_y))),
an elementwise int8 function, so it runs as a 256-entry table (mf_lut_s8) and
in place. Float semantics: the identity. A float -> int8 QUANTIZE at a graph
input and an int8 -> float DEQUANTIZE at a graph output are not nodes: they are
the graph's input/output quantization (the C API is int8 in and out), recorded
in ``meta["io"][tensor]["source_dtype"]``.
"""

from __future__ import annotations

import numpy as np

from ..quant.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
from .base import t_in, t_out
from .unary import _Unary


class Quantize(_Unary):
    name = "quantize"

    def fn(self, node, x):
        return x

    def table(self, node, graph):
        qx, qy = t_in(graph, node).quant, t_out(graph, node).quant
        mult, shift = quantize_multiplier(np.float64(qx.s) / np.float64(qy.s))
        q = np.arange(-128, 128, dtype=np.int64)
        return np.clip(qy.zp + multiply_by_quantized_multiplier(q - qx.zp, mult, shift), -128, 127).astype(np.int8)
