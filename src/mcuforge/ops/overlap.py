"""Tensor overlapping: how far before its dying input an op's output may start in the arena.

An op whose kernels write their output while they still read their input may share bytes
with the input if no write lands on an input byte that is read afterwards. With the output
at (input offset + s), s <= 0, the op's ``overlap_shift`` answers the largest safe s.

A kernel is described by a timeline: the steps it runs in order, and within a step it
reads before it writes (a step is, e.g., "read output pixel q's window for channel o, then
write that byte"). Per input byte, ``t_read`` is the last step that reads it (-1: never);
per output byte, ``t_write`` is the step that writes it. A shift s is safe for the kernel iff
every output byte w that lands inside the input is written no earlier than the last read of
the byte it lands on: t_write[w] >= t_read[w + s]. Where several kernels can run an op (the
portable one, the DSP one, compressed-weight ones), s must be safe for every one of them.

Timelines may claim more reads than a kernel does (a window's bounding box instead of its
dilated taps, a whole channel instead of the rows a plane needs): that only makes the answer
more cautious.
"""

from __future__ import annotations

import numpy as np

CHUNK = 8192          # output bytes compared at a time: a wrong shift usually fails in the first chunk
BUDGET = 20_000_000   # byte comparisons per layer before settling for the guaranteed shift


def last_reader(n_in: int, n_out: int, k: int, stride: int, dilation: int, pad: int) -> np.ndarray:
    """Along one axis: per input index, the last output index whose window (the span
    [o stride - pad, o stride - pad + (k - 1) dilation]) covers it; -1 where none does."""
    i = np.arange(n_in)
    o = np.minimum((i + pad) // stride, n_out - 1)
    return np.where(o * stride - pad + (k - 1) * dilation >= i, o, -1)


def last_pixel_reader(x_shape, y_shape, kernel, stride, dilation, pads) -> np.ndarray:
    """[H, W]: per input pixel, the last output pixel (raster index oy * OW + ox) whose window
    covers it, -1 where none does. Windows are boxes, so the last one is (last row, last column)."""
    _, h, w, _ = x_shape
    _, oh, ow, _ = y_shape
    ry = last_reader(h, oh, kernel[0], stride[0], dilation[0], pads[0])
    rx = last_reader(w, ow, kernel[1], stride[1], dilation[1], pads[2])
    q = ry[:, None] * ow + rx[None, :]
    return np.where((ry[:, None] >= 0) & (rx[None, :] >= 0), q, -1)


def _monotone_bound(t_read: np.ndarray, t_write: np.ndarray) -> int:
    """A shift below which every s is safe: each write lands below the lowest input byte that is
    still read after it. (Exact for kernels whose reads and writes both advance with the address.)"""
    if not (t_read >= 0).any():
        return 0
    steps = int(max(t_read.max(), t_write.max())) + 2
    lowest = np.full(steps + 1, np.iinfo(np.int64).max, np.int64)  # lowest byte whose last read is step t
    read = np.flatnonzero(t_read >= 0)
    np.minimum.at(lowest, t_read[read], read)
    after = np.minimum.accumulate(lowest[::-1])[::-1]  # after[t]: lowest byte read at step >= t
    still = after[t_write + 1]  # lowest byte read after the write
    bound = int((still - np.arange(t_write.size)).min()) - 1
    return min(0, bound)


def _safe(t_read: np.ndarray, t_write: np.ndarray, s: int, budget: list[int]) -> bool:
    lo, hi = max(0, -s), min(t_write.size, t_read.size - s)
    for a in range(lo, hi, CHUNK):
        b = min(hi, a + CHUNK)
        budget[0] -= b - a
        if (t_write[a:b] < t_read[a + s:b + s]).any():
            return False
    return True


def largest_safe_shift(timelines: list[tuple[np.ndarray, np.ndarray]], alignment: int = 1) -> int | None:
    """The largest s <= 0, a multiple of `alignment`, safe for every (t_read, t_write) timeline;
    None where the output could share no byte with the input."""
    out_bytes = timelines[0][1].size
    a = max(1, alignment)
    guaranteed = min(_monotone_bound(r, w) for r, w in timelines)
    guaranteed = -((-guaranteed + a - 1) // a) * a  # rounded down: still safe
    budget = [BUDGET]
    s = 0
    while s > guaranteed and s > -out_bytes and budget[0] > 0:
        if all(_safe(r, w, s, budget) for r, w in timelines):
            return s
        s -= a
    return guaranteed if guaranteed > -out_bytes else None
