"""mcuforge.quant.fixedpoint and the softmax / table references against independent formulations.

* Python integers and fractions for the gemmlowp/TFLite primitives (no numpy, no int64 tricks);
* the C helpers in mf_fixedpoint.h, compiled with ASan/UBSan, on the same values;
* float math for quantize_multiplier, MultiplyByQuantizedMultiplier, exp, 1/(1+x), softmax;
* the unary int8 tables: monotone, within half an output step of the float function.
"""

from __future__ import annotations

import math
import subprocess
import tempfile
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mcuforge.ops import OPS
from mcuforge.ops.softmax import SCALED_DIFF_INTEGER_BITS, softmax_int8, softmax_params
from mcuforge.quant.tflm_tables import exp_on_negative_values, one_over_one_plus_x_for_x_in_0_1
from mcuforge.quant.fixedpoint import (INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier,
                                       quantize_multiplier, quantize_multiplier_greater_than_one,
                                       quantize_multipliers, round_half_away, rounding_divide_by_pot,
                                       saturating_left_shift, srdhm, wrap_int32)
from mcuforge.targets.host import SANITIZE_FLAGS, find_compiler

from _graphs import Builder, quantize_random

FAST = settings(max_examples=500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
int32s = st.one_of(st.integers(INT32_MIN, INT32_MAX),
                   st.sampled_from([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1, INT32_MAX,
                                    1 << 30, -(1 << 30), (1 << 30) + 1, -(1 << 30) - 1]))


# --- independent formulations (Python integers / fractions) ------------------------------------

def srdhm_ref(a: int, b: int) -> int:
    """a * b / 2^31 rounded to nearest, ties towards +inf; the one overflow saturates."""
    if a == b == INT32_MIN:
        return INT32_MAX
    return math.floor(Fraction(a * b, 2**31) + Fraction(1, 2))


def round_half_away_ref(q: Fraction) -> int:
    sign = 1 if q >= 0 else -1
    return sign * math.floor(abs(q) + Fraction(1, 2))


def rdbpot_ref(x: int, exponent: int) -> int:
    return round_half_away_ref(Fraction(x, 2**exponent))


def wrap_ref(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - 2**32 if x >= 2**31 else x


def mbqm_ref(x: int, m: int, shift: int) -> int:
    left, right = max(shift, 0), max(-shift, 0)
    return rdbpot_ref(srdhm_ref(wrap_ref(x * 2**left), m), right)


def sat_shl_ref(x: int, exponent: int) -> int:
    return min(max(x * 2**exponent, INT32_MIN), INT32_MAX)


# --- the primitives ------------------------------------------------------------------------------

@FAST
@given(a=int32s, b=int32s)
@example(INT32_MIN, INT32_MIN)
@example(INT32_MIN, INT32_MAX)
@example(1, 1 << 30)   # exactly +0.5
@example(-1, 1 << 30)  # exactly -0.5
def test_srdhm(a, b):
    got = int(srdhm(a, b))
    assert got == srdhm_ref(a, b)
    assert INT32_MIN <= got <= INT32_MAX


def test_srdhm_ties_and_saturation():
    assert int(srdhm(1, 1 << 30)) == 1      # 0.5 -> 1
    assert int(srdhm(-1, 1 << 30)) == 0     # -0.5 -> 0 (ties towards +inf)
    assert int(srdhm(-3, 1 << 30)) == -1    # -1.5 -> -1
    assert int(srdhm(INT32_MIN, INT32_MIN)) == INT32_MAX
    assert int(srdhm(INT32_MIN, INT32_MAX)) == INT32_MIN + 1
    assert int(srdhm(INT32_MAX, INT32_MAX)) == INT32_MAX - 1


@FAST
@given(x=int32s, exponent=st.integers(0, 31))
@example(INT32_MIN, 31)
@example(INT32_MAX, 31)
@example(-3, 1)
@example(3, 1)
def test_rounding_divide_by_pot(x, exponent):
    assert int(rounding_divide_by_pot(x, exponent)) == rdbpot_ref(x, exponent)


def test_rounding_divide_by_pot_rounds_half_away_from_zero():
    assert rounding_divide_by_pot(np.array([5, -5, 6, -6, 7, -7, 0]), 1).tolist() == [3, -3, 3, -3, 4, -4, 0]
    assert rounding_divide_by_pot(np.array([2, -2, 1, -1]), 2).tolist() == [1, -1, 0, 0]


@FAST
@given(x=int32s, m=st.one_of(st.just(0), st.integers(1 << 30, INT32_MAX)), shift=st.integers(-31, 12))
@example(INT32_MIN, 1 << 30, 0)
@example(INT32_MIN, INT32_MAX, 1)  # the left shift wraps
@example(0, INT32_MAX, 5)
@example(-1, 1 << 30, -31)
def test_multiply_by_quantized_multiplier(x, m, shift):
    assert int(multiply_by_quantized_multiplier(x, m, shift)) == mbqm_ref(x, m, shift)


@FAST
@given(x=st.integers(-(2**24), 2**24), real=st.floats(2.0**-30, 64.0))
def test_multiply_by_quantized_multiplier_approximates_the_real_product(x, real):
    m, shift = quantize_multiplier(real)
    got = int(multiply_by_quantized_multiplier(x, m, shift))
    exact = Fraction(x) * Fraction(real)
    if abs(x) * 2**max(shift, 0) >= 2**31:
        return  # x << shift wraps there (as in TFLite); bit-exactness is tested above
    # Double rounding: at most 1 away from the exact product (plus the multiplier's 2^-31 error).
    assert abs(got - exact) <= 1 + abs(exact) * Fraction(1, 2**30)


def test_multiply_by_quantized_multiplier_vectorized_per_channel():
    x = np.array([[1000, -1000, 7]] * 2, np.int64)
    m, s = quantize_multipliers([0.5, 0.25, 3.0])
    got = multiply_by_quantized_multiplier(x, m, s)
    assert got.tolist() == [[500, -250, 21]] * 2


@FAST
@given(real=st.one_of(st.floats(2.0**-31, 2.0**20), st.floats(1e-9, 1.0)))
@example(1.0)
@example(0.5)
@example(1.0 - 2.0**-35)  # rounds up to 2^31: halved, shift + 1
@example(2.0**-31)
@example(0.999999999)
def test_quantize_multiplier_reconstructs_the_real_value(real):
    m, shift = quantize_multiplier(real)
    assert (1 << 30) <= m <= INT32_MAX
    approx = Fraction(m) * Fraction(2) ** (shift - 31)
    assert abs(approx - Fraction(real)) <= Fraction(real) * Fraction(1, 2**31)
    assert shift <= 21  # consistent with real <= 2^20


def test_quantize_multiplier_edge_cases():
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(0.75) == (3 << 29, 0)
    assert quantize_multiplier(3.0) == (3 << 29, 2)
    assert quantize_multiplier(1.0 - 2.0**-40) == (1 << 30, 1)
    assert quantize_multiplier(2.0**-33) == (0, 0)  # below 2^-32: flushed to zero as TFLite
    assert quantize_multiplier(2.0**-32) == (1 << 30, -31)
    # Beyond shift 31, x << shift keeps no bit of x: flushed to the zero multiplier (same result).
    assert quantize_multiplier(2.0**31 - 1) == (INT32_MAX, 31)
    assert quantize_multiplier(2.0**31) == (0, 0)
    assert quantize_multiplier(1e11) == (0, 0)
    m, s = quantize_multiplier(-0.3)
    assert m < 0 and quantize_multiplier(0.3) == (-m, s)
    ms, ss = quantize_multipliers([0.0, 0.5, 2.0])
    assert ms.tolist() == [0, 1 << 30, 1 << 30] and ss.tolist() == [0, 0, 2]
    assert quantize_multiplier_greater_than_one(2.0) == (1 << 30, 2)
    with pytest.raises(ValueError):
        quantize_multiplier_greater_than_one(0.25)


@FAST
@given(x=int32s, exponent=st.integers(0, 31))
def test_saturating_left_shift(x, exponent):
    assert int(saturating_left_shift(x, exponent)) == sat_shl_ref(x, exponent)


@FAST
@given(x=st.integers(-(2**62), 2**62))
def test_wrap_int32(x):
    assert int(wrap_int32(x)) == wrap_ref(x)
    assert int(wrap_int32(x)) == int(np.array([x], np.int64).astype(np.int32)[0])


@FAST
@given(x=st.one_of(st.floats(-1e6, 1e6), st.integers(-1000, 1000).map(lambda i: i + 0.5)))
def test_round_half_away(x):
    want = int(Decimal(x).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert int(round_half_away(x)) == want


# --- the same values through the C helpers (mf_fixedpoint.h, ASan + UBSan) -----------------------

C_HARNESS = r"""
#include <stdio.h>
#include "mf_fixedpoint.h"
int main(void) {
    long long a, b, c;
    char op;
    while (scanf(" %c %lld %lld %lld", &op, &a, &b, &c) == 4) {
        int32_t r = 0;
        switch (op) {
            case 'h': r = mf_srdhm((int32_t)a, (int32_t)b); break;
            case 'd': r = mf_rdbpot((int32_t)a, (int)b); break;
            case 'm': r = mf_requant((int32_t)a, (int32_t)b, (int32_t)c); break;
            case 's': r = mf_sat_shl((int32_t)a, (int)b); break;
            case 'w': r = mf_shl_wrap((int32_t)a, (int)b); break;
            case '8': r = mf_sat8((int32_t)a); break;
        }
        printf("%ld\n", (long)r);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_fixedpoint():
    kernels = Path(__file__).resolve().parents[1] / "src" / "mcuforge" / "ops" / "kernels"
    with tempfile.TemporaryDirectory() as d:
        src, exe = Path(d) / "fp.c", Path(d) / "fp"
        src.write_text(C_HARNESS)
        subprocess.run([find_compiler(), *SANITIZE_FLAGS, "-I", str(kernels), str(src), "-o", str(exe)],
                       check=True, capture_output=True, text=True)

        def run(lines: list[tuple[str, int, int, int]]) -> list[int]:
            text = "".join(f"{op} {a} {b} {c}\n" for op, a, b, c in lines)
            proc = subprocess.run([str(exe)], input=text, capture_output=True, text=True)
            assert proc.returncode == 0 and not proc.stderr, proc.stderr
            return [int(v) for v in proc.stdout.split()]

        yield run


def test_c_fixedpoint_helpers_match_python(c_fixedpoint):
    rng = np.random.default_rng(0)
    n = 4000
    edge = np.array([INT32_MIN, INT32_MIN + 1, -(1 << 30), -1, 0, 1, 1 << 30, INT32_MAX - 1, INT32_MAX])
    a = np.concatenate([edge, rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True),
                        rng.integers(-(2**16), 2**16, n)])
    b = np.concatenate([edge[::-1], rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True),
                        rng.integers(-(2**20), 2**20, n)])
    e = rng.integers(0, 32, a.size)
    m = rng.integers(1 << 30, INT32_MAX, a.size, endpoint=True)
    s = rng.integers(-31, 8, a.size)
    lines, want = [], []
    lines += [("h", x, y, 0) for x, y in zip(a, b)]
    want += srdhm(a, b).tolist()
    lines += [("d", x, k, 0) for x, k in zip(a, e)]
    want += rounding_divide_by_pot(a, e).tolist()
    lines += [("m", x, mm, ss) for x, mm, ss in zip(a, m, s)]
    want += multiply_by_quantized_multiplier(a, m, s).tolist()
    lines += [("s", x, k, 0) for x, k in zip(a, e)]
    want += [int(saturating_left_shift(int(x), int(k))) for x, k in zip(a, e)]
    lines += [("w", x, k, 0) for x, k in zip(a, e)]
    want += [wrap_ref(int(x) * 2 ** int(k)) for x, k in zip(a, e)]
    lines += [("8", x, 0, 0) for x in a]
    want += np.clip(a, -128, 127).tolist()
    got = c_fixedpoint(lines)
    assert len(got) == len(want)
    bad = [(l, g, w) for l, g, w in zip(lines, got, want) if g != w]
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:5]}"


# --- exp, 1/(1+x) and softmax against float -----------------------------------------------------

def test_exp_on_negative_values_against_float():
    rng = np.random.default_rng(1)
    a = np.concatenate([[0, -1, -(1 << 24), -(1 << 26), INT32_MIN + 1, INT32_MIN],
                        -rng.integers(0, 2**31, 20000)])
    got = exp_on_negative_values(a, SCALED_DIFF_INTEGER_BITS)
    want = np.minimum(np.exp(a / 2.0**26) * 2.0**31, INT32_MAX)
    assert got[0] == INT32_MAX
    assert np.all(got >= 0) and np.all(got <= INT32_MAX)
    assert np.abs(got - want).max() <= 2.0**31 * 2.0**-20
    order = np.argsort(a)
    assert np.all(np.diff(got[order]) >= 0), "exp must be monotone"


def test_one_over_one_plus_x_against_float():
    rng = np.random.default_rng(2)
    a = np.concatenate([[0, 1, INT32_MAX - 1, INT32_MAX], rng.integers(0, 2**31, 20000)])
    got = one_over_one_plus_x_for_x_in_0_1(a)
    want = np.minimum(2.0**31 / (1.0 + a / 2.0**31), INT32_MAX)
    assert np.abs(got - want).max() <= 16


def _float_softmax(x, beta, scale):
    z = beta * scale * x.astype(np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(depth=st.integers(1, 64), rows=st.integers(1, 8), beta=st.floats(0.05, 10.0),
       log_scale=st.floats(-3.0, 1.5), seed=st.integers(0, 2**32 - 1))
def test_softmax_int8_against_float(depth, rows, beta, log_scale, seed):
    scale = 10.0 ** log_scale
    x = np.random.default_rng(seed).integers(-128, 128, size=(rows, depth)).astype(np.int8)
    x[0, 0] = -128
    x[-1, -1] = 127
    y = softmax_int8(x, *softmax_params(beta, scale)).astype(np.int64)
    p = _float_softmax(x, beta, scale)
    want = np.clip(np.round(p * 256) - 128, -128, 127)
    assert np.abs(y - want).max() <= 1, "more than 1 LSB away from the float softmax"
    total = (y + 128).sum(axis=-1)
    assert np.all(np.abs(total - 256) <= depth / 2 + 1), total
    # The row maximum gets the largest probability; a row of equal values is uniform.
    assert np.all(y[np.arange(rows), x.argmax(axis=-1)] == y.max(axis=-1))


def test_softmax_int8_special_rows():
    mult, shift, diff_min = softmax_params(1.0, 0.1)
    uniform = np.zeros((1, 4), np.int8)
    assert softmax_int8(uniform, mult, shift, diff_min).tolist() == [[-64] * 4]  # 64/256 each
    single = np.array([[5]], np.int8)
    assert softmax_int8(single, mult, shift, diff_min).tolist() == [[127]]  # 256/256 saturates
    peaked = np.array([[127, -128, -128]], np.int8)  # 25.5 apart: exp(-25.5) ~ 0
    assert softmax_int8(peaked, mult, shift, diff_min).tolist() == [[127, -128, -128]]


def test_softmax_params_diff_min():
    # diff_min is the most negative difference whose rescaled value still fits Q5.26.
    for beta, scale in [(1.0, 0.01), (1.0, 0.5), (2.0, 3.0), (1.0, 20.0), (0.1, 1e-3)]:
        mult, shift, diff_min = softmax_params(beta, scale)
        assert (1 << 30) <= mult <= INT32_MAX and 0 <= shift <= 31
        assert -diff_min * 2**shift <= 31 * 2**26 < (-diff_min + 1) * 2**shift
        real = Fraction(mult) * Fraction(2) ** (shift - 31)
        assert abs(real - Fraction(beta * scale * 2**26)) <= real * Fraction(1, 2**30)


# --- unary tables ---------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(op=st.sampled_from(["sigmoid", "tanh", "leaky_relu", "clamp"]), log_scale=st.floats(-3, 2),
       offset=st.floats(-1, 1), alpha=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_unary_tables(op, log_scale, offset, alpha, seed):
    b = Builder()
    x = b.input((1, 5))
    attrs = {"leaky_relu": {"alpha": alpha}, "clamp": {"min": -0.5 * 10**log_scale, "max": 10**log_scale}}
    y = b.op(op, [x], **attrs.get(op, {}))
    q = quantize_random(b.finish(y), np.random.default_rng(seed), log_scales=[log_scale], offsets=[offset])
    node = q.nodes[0]
    table = OPS[op].table(node, q).astype(np.int64)
    assert table.shape == (256,)
    assert np.all(np.diff(table) >= 0), f"{op} table is not monotone"
    qx, qy = q.tensors[x].quant, q.tensors[y].quant
    real_in = (np.arange(-128, 128) - qx.zp) * np.float64(qx.s)
    want = OPS[op].fn(node, real_in)
    got = (table - qy.zp) * np.float64(qy.s)
    inside = (want >= (-128 - qy.zp) * qy.s) & (want <= (127 - qy.zp) * qy.s)
    assert np.all(np.abs(got - want)[inside] <= qy.s * (0.5 + 1e-6))
    if op == "sigmoid":
        assert (qy.s, qy.zp) == (1.0 / 256, -128)
        assert np.all(table[real_in < -7] == -128) and np.all(table[real_in > 6] == 127)
    if op == "tanh":
        assert (qy.s, qy.zp) == (1.0 / 128, 0)
        assert np.all(table[real_in > 5] == 127) and np.all(table[real_in < -5] == -128)


@FAST
@given(x=int32s, m=st.integers(1 << 30, INT32_MAX), shift=st.integers(32, 70))
def test_huge_multipliers_give_zero_like_a_flushed_one(x, m, shift):
    """Why quantize_multiplier may flush shifts > 31: the result is 0 either way."""
    assert int(multiply_by_quantized_multiplier(x, m, shift)) == 0 == mbqm_ref(x, m, shift)
    assert int(multiply_by_quantized_multiplier(x, 0, 0)) == 0
    real = float(m) * 2.0 ** (shift - 31)
    assert quantize_multiplier(real) == (0, 0)
