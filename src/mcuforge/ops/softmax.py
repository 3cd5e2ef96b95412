"""softmax over the last axis (attr beta, default 1).

Integer semantics: TFLite/TFLM's int8 softmax (reference_ops::Softmax with
gemmlowp fixed point): differences to the row maximum are scaled to Q5.26,
exp() is evaluated in fixed point, the sum is accumulated in Q12.19, its
reciprocal computed by Newton-Raphson, and outputs are int8 with the fixed
quantization scale 1/256, zero point -128.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import GraphError
from ..ir.graph import QuantParams
from ..quant.fixedpoint import quantize_multiplier_greater_than_one, rounding_divide_by_pot, srdhm
from ..quant.tflm_tables import exp_on_negative_values, one_over_one_plus_x_for_x_in_0_1
from .base import OpDef, t_in, t_out

SCALED_DIFF_INTEGER_BITS = 5
ACCUM_INTEGER_BITS = 12


def softmax_params(beta: float, input_scale: float) -> tuple[int, int, int]:
    """TFLite PreprocessSoftmaxScaling + CalculateInputRadius: (multiplier, left_shift, diff_min)."""
    real = min(beta * float(input_scale) * (1 << (31 - SCALED_DIFF_INTEGER_BITS)), (1 << 31) - 1.0)
    mult, left_shift = quantize_multiplier_greater_than_one(real)
    max_input_rescaled = (1.0 * ((1 << SCALED_DIFF_INTEGER_BITS) - 1)
                          * (1 << (31 - SCALED_DIFF_INTEGER_BITS)) / (1 << left_shift))
    diff_min = -int(math.floor(max_input_rescaled))
    return mult, left_shift, diff_min


def _count_leading_zeros32(x):
    """Leading zeros of positive values below 2^32 (exact: frexp gives the bit length)."""
    _, bit_length = np.frexp(np.asarray(x, np.float64))
    return 32 - bit_length.astype(np.int64)


def softmax_int8(x: np.ndarray, mult: int, left_shift: int, diff_min: int) -> np.ndarray:
    x = x.astype(np.int64)
    diff = x - x.max(axis=-1, keepdims=True)
    valid = diff >= diff_min
    rescaled = srdhm(diff * (1 << left_shift), mult)
    exps = np.where(valid, exp_on_negative_values(rescaled, SCALED_DIFF_INTEGER_BITS), 0)
    sum_of_exps = rounding_divide_by_pot(exps, ACCUM_INTEGER_BITS).sum(axis=-1, keepdims=True)
    headroom_plus_one = _count_leading_zeros32(sum_of_exps)
    num_bits_over_unit = ACCUM_INTEGER_BITS - headroom_plus_one
    shifted_sum_minus_one = ((sum_of_exps << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31)
    shifted_scale = one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one)
    out = rounding_divide_by_pot(srdhm(shifted_scale, exps), num_bits_over_unit + 31 - 8) - 128
    out = np.where(valid, np.clip(out, -128, 127), -128)
    return out.astype(np.int8)


class Softmax(OpDef):
    name = "softmax"
    kernel = "softmax"

    def infer(self, node, graph):
        return [t_in(graph, node).shape]

    def run_float(self, node, graph, xs):
        z = xs[0].astype(np.float64) * float(node.attrs.get("beta", 1.0))
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return [(e / e.sum(axis=-1, keepdims=True)).astype(np.float32)]

    def output_quant(self, node, graph, observed):
        return QuantParams.per_tensor(1.0 / 256, -128)

    def check(self, node, graph):
        super().check(node, graph)
        q = t_out(graph, node).quant
        if q is not None and (q.s != 1.0 / 256 or q.zp != -128):
            raise GraphError(f"node '{node.name}' (softmax): int8 output must be quantized with "
                             f"scale 1/256 and zero point -128, got {q.s}, {q.zp}")

    def params(self, node, graph):
        return softmax_params(float(node.attrs.get("beta", 1.0)), t_in(graph, node).quant.s)

    def run_int(self, node, graph, xs):
        return [softmax_int8(xs[0], *self.params(node, graph))]

    def emit_c(self, node, graph, ctx):
        x = t_in(graph, node)
        mult, left_shift, diff_min = self.params(node, graph)
        depth = x.shape[-1]
        rows = x.size // depth
        return (f"mf_softmax_s8({ctx.buf(node.inputs[0])}, {ctx.buf(node.outputs[0])}, {rows}, {depth}, "
                f"{mult}, {left_shift}, {diff_min});")
