"""Integer helpers of the training arithmetic, vectorized in numpy.

The C twins live in ops/kernels/mf_train.h; both are the same integer functions
(see docs/training.md). Values are carried in int64 arrays.
"""

from __future__ import annotations

import numpy as np

from ..quant.fixedpoint import INT32_MAX, INT32_MIN, rounding_divide_by_pot

FRAC_BITS = 16  # fractional bits of a weight step (weight LSB units) before rounding
ERR_MAX = 127  # int8 errors are kept in [-127, 127]
W_MAX = 127  # int8 weights are kept in [-127, 127] (symmetric, as TFLite's)
NEG = -(1 << 30)  # log2 importance of a zero signal
Q15 = 1 << 15
PRNG_STEP = 0x9E3779B9
PRNG_INDEX = 0x85EBCA6B
M32 = 0xFFFFFFFF


def sat32(x):
    return np.clip(np.asarray(x, np.int64), INT32_MIN, INT32_MAX)


def rdbpot(x, e):
    """x / 2^e rounded half away from zero (gemmlowp RoundingDivideByPOT), e >= 0."""
    return rounding_divide_by_pot(np.asarray(x, np.int64), np.asarray(e, np.int64))


def shr_round(x, n):
    """floor(x / 2^n + 1/2): round half up by an arithmetic shift, n >= 0."""
    x = np.asarray(x, np.int64)
    n = np.asarray(n, np.int64)
    half = np.where(n > 0, np.left_shift(np.int64(1), np.maximum(n - 1, 0)), 0)
    return (x + half) >> n


def mulshift(v, m, s):
    """round_half_up(v * m * 2^(s - 31)) saturated to int32, for int32 v, m and any integer s.

    The product v * m (|.| < 2^62) is exact in int64; a right shift r = 31 - s >= 63 gives 0,
    a left shift saturates."""
    v, m, s = np.broadcast_arrays(np.asarray(v, np.int64), np.asarray(m, np.int64), np.asarray(s, np.int64))
    p = v * m
    r = 31 - s
    rr = np.clip(r, 1, 62)
    right = (p + (np.int64(1) << (rr - 1))) >> rr
    right = np.where(r >= 63, 0, right)
    left_n = np.clip(-r, 0, 31)
    limit = np.int64(INT32_MAX) >> left_n
    left = np.where(np.abs(p) > limit, np.where(p > 0, INT32_MAX, INT32_MIN), p << left_n)
    left = np.where((-r >= 32) & (p != 0), np.where(p > 0, INT32_MAX, INT32_MIN), left)
    out = np.where(r > 0, right, np.where(r == 0, p, left))
    return sat32(out)


def bit_length(v):
    """Bit length of non-negative integers below 2^53."""
    _, e = np.frexp(np.asarray(v, np.float64))
    return np.where(np.asarray(v) > 0, e, 0).astype(np.int64)


def normalize(acc) -> tuple[np.ndarray, int]:
    """int32 accumulator -> int8 error with a run-time power-of-two scale.

    k is the least shift >= 0 with RDBPOT(max|acc|, k) <= 127; the error is RDBPOT(acc, k),
    whose real value is acc's times 2^k."""
    acc = np.asarray(acc, np.int64)
    m = int(np.abs(acc).max()) if acc.size else 0
    k = max(0, int(bit_length(m)) - 7)
    if int(rdbpot(m, k)) > ERR_MAX:
        k += 1
    return rdbpot(acc, k).astype(np.int8), k


def ilog2_q8(v):
    """log2(v) in Q8 for v > 0, from the bit length and the next 8 bits (linear between powers
    of two); NEG for v <= 0."""
    v = np.asarray(v, np.int64)
    b = bit_length(np.maximum(v, 0)) - 1
    bb = np.maximum(b, 0)
    frac = np.where(bb >= 8, v >> np.maximum(bb - 8, 0), v << np.maximum(8 - bb, 0)) & 255
    return np.where(v > 0, bb * 256 + frac, NEG).astype(np.int64)


def floor_shift(x, n: int):
    """floor(x / 2^n) (arithmetic right shift)."""
    return np.asarray(x, np.int64) >> n


def hash32(x):
    """lowbias32 (Chris Wellons' 32-bit integer hash): xorshift-multiply, full avalanche."""
    x = np.asarray(x, np.uint64) & M32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & M32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & M32
    x ^= x >> np.uint64(16)
    return x


def prng(seed: int, step: int, index):
    """Counter-based random uint32 for weight `index` at `step`: hash32(seed + step*K1 + index*K2).

    Counter-based (not a sequential stream) so that a weight's random draw does not depend on
    which other weights were updated in the step, and the twin can draw all of them at once."""
    idx = np.asarray(index, np.uint64)
    base = (np.uint64(seed & M32) + np.uint64((step * PRNG_STEP) & M32)) & M32
    return hash32(base + ((idx * np.uint64(PRNG_INDEX)) & M32))


def rescale_q15(e, r):
    """floor((e * r + 2^14) / 2^15): an int8 error scaled by a Q15 ratio r in [0, 2^15]."""
    return (np.asarray(e, np.int64) * np.asarray(r, np.int64) + (1 << 14)) >> 15


def ema_step(est, fresh):
    """est + floor((fresh - est) / 4)."""
    return np.asarray(est, np.int64) + ((np.asarray(fresh, np.int64) - est) >> 2)
