"""TFLite Micro's integer algorithms for elementwise int8 ops, evaluated as 256-entry tables.

Any int8 -> int8 elementwise function is exactly a table, so an imported TFLite
LOGISTIC, TANH, RELU, RELU6, RELU_N1_TO_1 or LEAKY_RELU becomes an mcuforge unary
node whose table is computed here with the arithmetic of TFLM's reference kernels
(gemmlowp fixed point for logistic/tanh, MultiplyByQuantizedMultiplier for the
ReLU family). Such nodes carry ``table_method: "tflm"``; the default
(``"float"``) evaluates the real function and rounds once.

Like TFLM, these tables depend only on what TFLM reads: logistic and tanh ignore
the output quantization (TFLM assumes (1/256, -128) and (1/128, 0)), RELU6 and
RELU_N1_TO_1 clamp in the input's quantization.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import GraphError
from .fixedpoint import (INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier, quantize_multiplier,
                         rounding_divide_by_pot, round_half_away, saturating_left_shift, srdhm, wrap_int32)

Q = np.arange(-128, 128, dtype=np.int64)  # the table's index values


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a):
    constant_term = 1895147668
    constant_1_over_3 = 715827883
    x = a + (1 << 28)
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    poly = rounding_divide_by_pot(srdhm(x4_over_4 + x3, constant_1_over_3) + x2, 1)
    return constant_term + srdhm(constant_term, x + poly)


def exp_on_negative_values(a, integer_bits: int):
    """gemmlowp exp_on_negative_values: FixedPoint<int32, integer_bits> -> FixedPoint<int32, 0>."""
    a = np.asarray(a, np.int64)
    frac = 31 - integer_bits
    one_quarter = 1 << (frac - 2)
    mask = one_quarter - 1
    a_mod = (a & mask) - one_quarter
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(saturating_left_shift(a_mod, integer_bits))
    remainder = a_mod - a
    for exponent, multiplier in ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
                                 (2, 39332535), (3, 720401), (4, 242)):
        if integer_bits > exponent:
            bit = 1 << (frac + exponent)
            result = np.where(remainder & bit, srdhm(result, multiplier), result)
    if integer_bits > 5:
        result = np.where(a < -(1 << (36 - integer_bits)), 0, result)
    return np.where(a == 0, INT32_MAX, result)


def _rounding_half_sum(a, b):
    s = np.asarray(a, np.int64) + b
    s = np.where(s >= 0, s + 1, s - 1)
    return np.sign(s) * (np.abs(s) // 2)


def _newton_f2(half_denominator):
    """gemmlowp's Newton-Raphson 1/(1+x) iteration in F2 (returns the F2 raw value)."""
    x = 1515870810 + srdhm(half_denominator, -1010580540)  # 48/17 - 32/17 d
    one_f2 = 1 << 29
    for _ in range(3):
        one_minus = one_f2 - srdhm(half_denominator, x)
        x = x + saturating_left_shift(srdhm(x, one_minus), 2)
    return x


def one_over_one_plus_x_for_x_in_0_1(a):
    return saturating_left_shift(_newton_f2(_rounding_half_sum(a, INT32_MAX)), 1)


def one_minus_x_over_one_plus_x_for_x_in_0_1(a):
    return saturating_left_shift(_newton_f2(_rounding_half_sum(a, INT32_MAX)) - (1 << 29), 2)


def gemmlowp_logistic(a, integer_bits: int):
    a = np.asarray(a, np.int64)
    abs_a = np.where(a > 0, a, -a)
    pos = one_over_one_plus_x_for_x_in_0_1(exp_on_negative_values(-abs_a, integer_bits))
    neg = INT32_MAX - pos
    return np.where(a == 0, 1 << 30, np.where(a > 0, pos, neg))


def gemmlowp_tanh(a, integer_bits: int):
    a = np.asarray(a, np.int64)
    n = np.where(a < 0, a, -a)
    # ExactMulByPot<1>: the same raw value read with one more integer bit
    t = one_minus_x_over_one_plus_x_for_x_in_0_1(exp_on_negative_values(n, integer_bits + 1))
    return np.where(a == 0, 0, np.where(a < 0, -t, t))


def _input_rescaling(scale: float, integer_bits: int = 4):
    """TFLM's logistic/tanh Prepare: (multiplier, left_shift, input_range_radius)."""
    real = float(np.float32(scale)) * float(1 << (31 - integer_bits))
    q, left_shift = math.frexp(real)
    multiplier = int(round_half_away(q * (1 << 31)))
    if multiplier >= 2**31:  # q * 2^31 rounded up to 2^31 (not representable in int32)
        multiplier, left_shift = multiplier // 2, left_shift + 1
    max_input_rescaled = ((1 << integer_bits) - 1) * float(1 << (31 - integer_bits)) / float(1 << left_shift) \
        if left_shift >= 0 else ((1 << integer_bits) - 1) * float(1 << (31 - integer_bits)) * 2.0 ** -left_shift
    return multiplier, left_shift, int(math.floor(max_input_rescaled))


def logistic_table(in_scale: float, in_zp: int) -> np.ndarray:
    """reference_integer_ops::Logistic (int8): input in Q4.27, output (1/256, -128)."""
    mult, shift, radius = _input_rescaling(in_scale, 4)
    x = Q - in_zp
    xin = multiply_by_quantized_multiplier(np.clip(x, -radius, radius), mult, shift)
    out = rounding_divide_by_pot(gemmlowp_logistic(xin, 4), 31 - 8) - 128
    out = np.clip(out, -128, 127)
    out = np.where(x <= -radius, -128, np.where(x >= radius, 127, out))
    return out.astype(np.int8)


def tanh_table(in_scale: float, in_zp: int) -> np.ndarray:
    """reference_integer_ops::Tanh (int8): input in Q4.27, output (1/128, 0)."""
    mult, shift, radius = _input_rescaling(in_scale, 4)
    x = Q - in_zp
    xin = multiply_by_quantized_multiplier(np.clip(x, -radius, radius), mult, shift)
    out = np.clip(rounding_divide_by_pot(gemmlowp_tanh(xin, 4), 31 - 7), -128, 127)
    out = np.where(x <= -radius, -128, np.where(x >= radius, 127, out))
    return out.astype(np.int8)


def _quantize_f32(value: float, scale: float, zp: int) -> int:
    return zp + int(round_half_away(np.float32(value) / np.float32(scale)))


def relu_table(in_scale, in_zp, out_scale, out_zp, act_min: float = 0.0, act_max: float | None = None):
    """TFLM ReluQuantized: zp_y + MBQM(x - zp_x, M(s_x / s_y)), clamped to the activation range."""
    mult, shift = quantize_multiplier(np.float64(np.float32(in_scale)) / np.float64(np.float32(out_scale)))
    lo = max(-128, _quantize_f32(act_min, out_scale, out_zp))
    hi = 127 if act_max is None else min(127, _quantize_f32(act_max, out_scale, out_zp))
    y = out_zp + multiply_by_quantized_multiplier(Q - in_zp, mult, shift)
    return np.clip(y, lo, hi).astype(np.int8)


def relu6_table(in_scale, in_zp):
    """TFLM Relu6 (int8): min(max(x, zp_x), quantize_x(6)) -- in the input's quantization."""
    six = _quantize_f32(6.0, in_scale, in_zp)
    return np.clip(Q, in_zp, min(six, 127)).astype(np.int8)


def relu_n1_to_1_table(in_scale, in_zp):
    lo = _quantize_f32(-1.0, in_scale, in_zp)
    hi = _quantize_f32(1.0, in_scale, in_zp)
    return np.clip(np.clip(Q, lo, hi), -128, 127).astype(np.int8)


def leaky_relu_table(in_scale, in_zp, out_scale, out_zp, alpha: float):
    """TFLM QuantizeLeakyRelu: identity and alpha multipliers computed in float32 as TFLM does."""
    s_in, s_out, a = np.float32(in_scale), np.float32(out_scale), np.float32(alpha)
    am, ash = quantize_multiplier(float(np.float32(s_in * a / s_out)))
    im, ish = quantize_multiplier(float(np.float32(s_in / s_out)))
    x = Q - in_zp
    y = np.where(x >= 0, multiply_by_quantized_multiplier(x, im, ish),
                 multiply_by_quantized_multiplier(x, am, ash)) + out_zp
    return np.clip(y, -128, 127).astype(np.int8)


def tflm_table(op: str, attrs: dict, qx, qy) -> np.ndarray:
    """The table of an IR unary node with table_method 'tflm'."""
    kind = attrs.get("tflm_op")
    if op == "sigmoid":
        return logistic_table(qx.s, qx.zp)
    if op == "tanh":
        return tanh_table(qx.s, qx.zp)
    if op == "leaky_relu":
        return leaky_relu_table(qx.s, qx.zp, qy.s, qy.zp, float(attrs.get("alpha", 0.01)))
    if op == "clamp":
        lo, hi = attrs.get("min"), attrs.get("max")
        if kind == "RELU6" or (kind is None and (lo, hi) == (0.0, 6.0)):
            return relu6_table(qx.s, qx.zp)
        if kind == "RELU_N1_TO_1" or (kind is None and (lo, hi) == (-1.0, 1.0)):
            return relu_n1_to_1_table(qx.s, qx.zp)
        if kind == "RELU" or (kind is None and lo == 0.0 and hi is None):
            return relu_table(qx.s, qx.zp, qy.s, qy.zp)
        raise GraphError(f"clamp({lo}, {hi}) has no TFLM integer kernel (table_method 'tflm' needs "
                         "relu, relu6 or relu_n1_to_1)")
    raise GraphError(f"op '{op}' has no TFLM table (table_method 'tflm')")


__all__ = ["tflm_table", "logistic_table", "tanh_table", "relu_table", "relu6_table", "leaky_relu_table",
           "exp_on_negative_values", "gemmlowp_logistic", "gemmlowp_tanh", "INT32_MIN", "wrap_int32"]
