"""Tensor overlapping (codegen/planner.py step 3, ops/overlap.py): a conv's or pool's output may
start before the input it is the last reader of, and share bytes with it.

* The rules against the kernels' loop orders: Python emulations of the C loop nests (portable
  conv and pools, DSP conv, channel-outer DSP depthwise, DSP pools) never read an input byte that
  the layer has already overwritten, at the shifts the planner takes.
* The C kernels with every allowed overlap taken (on random conv, depthwise and pool layers) and on
  hand-made chains: host C (portable, and DSP with emulated instructions; ASan/UBSan) and QEMU
  Cortex-M4 (DSP kernels) and Cortex-M0+ (portable) == the integer reference, bit for bit.
* The chains: which layers overlap, by how much (from the kernels' window arithmetic), and the arena
  that saves; a skip connection keeps its input and does not overlap.
* A shift beyond the rule gives wrong outputs in C (so the bit-exact tests would catch a wrong rule),
  and the depthwise rule holds for the channel-outer DSP kernel, not only for the portable one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from mcuforge import reference
from mcuforge.codegen import generate, plan_memory
from mcuforge.ops.conv import Conv2D
from mcuforge.targets.cortex_m import run_cortex_m
from mcuforge.targets.host import run_host
from mcuforge.targets.table import get_target

from _graphs import Builder, quantize_random, random_int8_inputs
from test_dsp_kernels import _compare, _multi_layer_graph, conv_layer, dwconv_layer, pool_layer

M4, M0P = get_target("cortex-m4"), get_target("cortex-m0plus")
TAKE_ALL = {"choose_overlaps": False}


pytestmark = pytest.mark.usefixtures("arm_toolchain_cache")


# --- the kernels' loop orders, as in their C sources ------------------------------------------------

def _taps(o, k, stride, dil, pad, n):
    return [o * stride - pad + j * dil for j in range(k) if 0 <= o * stride - pad + j * dil < n]


def _bytes(pixels, channels, c):
    return (np.asarray(pixels)[:, None] * c + np.asarray(list(channels))[None, :]).ravel()


def conv_orders(n, g):
    """{kernel: [(input bytes read, output bytes written), ...]} in the kernels' loop order."""
    x, w, y = (g.tensors[t].shape for t in (n.inputs[0], n.inputs[1], n.outputs[0]))
    _, h, wd, c = x
    _, oh, ow, o = y
    _, kh, kw, cg = w
    (sh, sw), (dh, dw), (pt, _, pl, _) = n.attrs["stride"], n.attrs["dilation"], n.attrs["pads"]
    groups = int(n.attrs["groups"])
    og = o // groups

    def window(q):  # mf_conv2d_s8 / conv_im2col: the taps inside the input
        oy, ox = divmod(q, ow)
        return [iy * wd + ix for iy in _taps(oy, kh, sh, dh, pt, h) for ix in _taps(ox, kw, sw, dw, pl, wd)]

    pixels = oh * ow
    # mf_conv2d_s8: per pixel, per output channel: the group's inputs over the window, then the byte
    orders = {"portable": [(_bytes(window(q), range(oc // og * cg, oc // og * cg + cg), c), np.array([q * o + oc]))
                           for q in range(pixels) for oc in range(o)]}
    if groups > 1 and cg == 1:  # mf_dwconv_dsp: per channel pair, the planes (all pixels), then all outputs
        m = o // c
        orders["dsp"] = [(_bytes(range(h * wd), range(k, min(k + 2, c)), c),
                          _bytes(range(pixels), range(k * m, min(k + 2, c) * m), o)) for k in range(0, c, 2)]
    else:  # mf_conv_dsp: per 3 pixels, per group: im2col of the 3 windows, then the group's channels
        orders["dsp"] = [
            (np.concatenate([_bytes(window(q), range(gi * cg, gi * cg + cg), c) for q in block]),
             _bytes(block, range(gi * og, gi * og + og), o))
            for block in (range(p, min(pixels, p + 3)) for p in range(0, pixels, 3)) for gi in range(groups)]
    return orders


def pool_orders(n, g):
    _, h, wd, c = g.tensors[n.inputs[0]].shape
    _, oh, ow, _ = g.tensors[n.outputs[0]].shape
    (kh, kw), (sh, sw), (pt, _, pl, _) = n.attrs["kernel"], n.attrs["stride"], n.attrs["pads"]

    def window(q):  # pool_window / the portable loops: the window clipped to the input
        oy, ox = divmod(q, ow)
        return [iy * wd + ix for iy in _taps(oy, kh, sh, 1, pt, h) for ix in _taps(ox, kw, sw, 1, pl, wd)]

    c4 = c & ~3
    blocks = [range(k, k + 4) for k in range(0, c4, 4)] + [range(k, k + 1) for k in range(c4, c)]
    return {"portable": [(_bytes(window(q), [k], c), np.array([q * c + k])) for q in range(oh * ow) for k in range(c)],
            "dsp": [(_bytes(window(q), b, c), q * c + np.array(b)) for q in range(oh * ow) for b in blocks]}


def clobbered_read(steps, shift: int, in_bytes: int) -> int | None:
    """The first step that reads an input byte the layer already overwrote (output at input + shift)."""
    dirty = np.zeros(in_bytes, bool)
    for k, (reads, writes) in enumerate(steps):
        if reads.size and dirty[reads].any():
            return k
        at = writes + shift
        dirty[at[(at >= 0) & (at < in_bytes)]] = True
    return None


def orders(n, g):
    return conv_orders(n, g) if n.op == "conv2d" else pool_orders(n, g)


def mixed_layer(b, rng, i):
    return [conv_layer, dwconv_layer, pool_layer][i % 3](b, rng, i // 3)


@pytest.mark.parametrize("alignment", [1, 4])
def test_shifts_respect_every_kernels_loop_order(alignment):
    """Every overlap the planner may take leaves each kernel's later reads intact; over the layer
    generators of the DSP tests (pointwise, first, depthwise with multipliers, grouped, 1-D, strided,
    dilated, odd paddings; pools incl. global ones)."""
    seen: dict[str, int] = {}
    for seed in range(6):
        q, _ = _multi_layer_graph(mixed_layer, 600 + seed, 24)
        plan = plan_memory(q, alignment=alignment, choose_overlaps=False)
        assert len(plan.overlaps) >= 18, [o.node for o in plan.overlaps]
        for o in plan.overlaps:
            n = q.node(o.node)
            for kernel, steps in orders(n, q).items():
                bad = clobbered_read(steps, o.shift, q.tensors[o.input].nbytes)
                assert bad is None, f"{kernel} {n.op} {n.attrs} {q.tensors[o.input].shape}: shift {o.shift} " \
                                    f"overwrites input read at step {bad}"
            depthwise = n.op == "conv2d" and int(n.attrs["groups"]) == q.tensors[o.input].shape[3] > 1
            kind = "depthwise" if depthwise else n.op
            seen[kind] = seen.get(kind, 0) + 1
    assert set(seen) == {"conv2d", "depthwise", "avg_pool2d", "max_pool2d"}, seen


def _chain(rng, shape, layers):
    """A chain of layers (kind, out channels, kernel, stride, groups) or pools (op, kernel, stride)."""
    b = Builder("chain")
    y = b.input(shape)
    for spec in layers:
        if spec[0] == "conv":
            _, o, (kh, kw), stride, groups = spec
            c = b.g.tensors[y].shape[3]
            y = b.op("conv2d", [y, b.const("w", rng.normal(size=(o, kh, kw, c // groups))),
                                b.const("b", rng.normal(size=o))],
                     stride=[stride if kh > 1 else 1, stride], dilation=[1, 1],
                     pads=[kh // 2, kh // 2, kw // 2, kw // 2], groups=groups, act_min=0.0)
        else:
            _, op, k, s = spec
            y = b.op(op, [y], kernel=k, stride=s, pads=[0, 0, 0, 0])
    return quantize_random(b.finish(y), rng, log_scales=[0.0], offsets=[0.5])


def check_c(q, rng, plan_options=None, qemu=True, n=8):
    """Reference == host C (portable; DSP emulated) and, with qemu, QEMU Cortex-M4 and M0+."""
    xs = random_int8_inputs(q, rng, n)
    want = reference.run(q, xs, "int")
    for target in (None, M4):
        with tempfile.TemporaryDirectory() as d:
            lib = Path(d) / "lib"
            generate(q, lib, target=target, plan_options=plan_options)
            where = "portable" if target is None else "DSP (emulated)"
            _compare(q, want, run_host(lib, xs, sanitize=True), f"host {where}")
            if qemu:
                _compare(q, want, run_cortex_m(lib, xs, M0P if target is None else M4),
                         f"QEMU {'cortex-m0plus' if target is None else 'cortex-m4'}")


# 2-D: 8x8x8, 3x3 conv, depthwise 3x3, pointwise, 3x3 stride 2, max pool 2x2, global average pool
CHAIN_2D = [("conv", 8, (3, 3), 1, 1), ("conv", 8, (3, 3), 1, 8), ("conv", 8, (1, 1), 1, 1),
            ("conv", 8, (3, 3), 2, 1), ("pool", "max_pool2d", [2, 2], [2, 2]), ("pool", "avg_pool2d", [2, 2], [1, 1])]
# 1-D (N,1,L,C): 24x12, k3 conv, k5 stride 2 conv, depthwise k3, max pool 2, global average pool
CHAIN_1D = [("conv", 12, (1, 3), 1, 1), ("conv", 12, (1, 5), 2, 1), ("conv", 12, (1, 3), 1, 12),
            ("pool", "max_pool2d", [1, 2], [1, 2]), ("pool", "avg_pool2d", [1, 6], [1, 1])]


@pytest.mark.parametrize("shape, layers, shifts", [
    # W = 8, C = 8. Portable conv: writing pixel q's channel o comes before reading q's window for o + 1,
    # so the output trails the window's lowest pixel, (W + 1) pixels back for 3x3 pad 1, by a further
    # pixel less a byte: -(W + 2) C. Depthwise reads only channel o: -(W + 1) C. 1x1: one pixel, -C.
    # 3x3 stride 2: pixel 0's window starts at input byte 0: -C. Pools write channel c after reading
    # its window (the 2x2 one never reaches back before the pixel it writes): 0.
    ((1, 8, 8, 8), CHAIN_2D, [-80, -72, -8, -8, 0, 0]),
    # L = 24, C = 12: k3: one pixel back and a pixel less a byte (-23, aligned to 4: -24); k5 stride 2:
    # pixel 1's window starts at input byte 0 and 2 pixels are written by then (-23: -24); depthwise k3:
    # one pixel; pools 0.
    ((1, 1, 24, 12), CHAIN_1D, [-24, -24, -12, 0, 0]),
])
def test_chains_overlap_by_the_window_rules(shape, layers, shifts):
    rng = np.random.default_rng(len(layers))
    q = _chain(rng, shape, layers)
    size = int(np.prod(shape))
    every = plan_memory(q, choose_overlaps=False)
    assert [o.node for o in every.overlaps] == [n.name for n in q.nodes]
    assert [o.shift for o in every.overlaps] == shifts
    # One chain: each output `shift` bytes below its input; the arena is the chain's span.
    rel, low, high = 0, 0, size
    for o, n in zip(every.overlaps, q.nodes):
        rel += o.shift
        low, high = min(low, rel), max(high, rel + q.tensors[n.outputs[0]].nbytes)
    assert every.arena_size == high - low == size - sum(shifts)
    without = plan_memory(q, allow_overlap=False)
    assert without.arena_size == 2 * size  # input and first output side by side
    chosen = plan_memory(q)
    assert chosen.overlaps and chosen.arena_size <= every.arena_size < without.arena_size
    check_c(q, rng, qemu=False)  # the planner's choice
    check_c(q, rng, TAKE_ALL)  # every overlap


def test_mlperf_shaped_chain_saves_what_the_shifts_say():
    """DS-CNN's body (25x5x64: conv, then depthwise 3x3 + pointwise, twice, global average pool):
    the shifts -(W + 1) C = -384 and -C = -64 make one buffer of 8,000 + 2 x 448 bytes."""
    rng = np.random.default_rng(5)
    layers = [("conv", 64, (3, 3), 1, 64), ("conv", 64, (1, 1), 1, 1)] * 2 + [("pool", "avg_pool2d", [25, 5], [1, 1])]
    q = _chain(rng, (1, 25, 5, 64), layers)
    plan = plan_memory(q)
    assert [o.shift for o in plan.overlaps] == [-384, -64, -384, -64, 0]
    assert plan.arena_size == 8000 + 2 * 448 and plan_memory(q, allow_overlap=False).arena_size == 16000
    check_c(q, rng, qemu=False, n=4)


def test_skip_connection_keeps_its_input():
    """y feeds the second conv and the add: that conv must not write over y. The first conv is the
    last reader of x and overlaps it."""
    rng = np.random.default_rng(9)
    b = Builder("skip")
    x = b.input((1, 6, 6, 8))

    def conv(t):
        return b.op("conv2d", [t, b.const("w", rng.normal(size=(8, 3, 3, 8)))], stride=[1, 1], dilation=[1, 1],
                    pads=[1, 1, 1, 1], groups=1)

    y = conv(x)
    z = conv(y)
    out = b.op("add", [y, z])
    q = quantize_random(b.finish(out), rng, log_scales=[0.0])
    every = plan_memory(q, choose_overlaps=False)
    assert [o.node for o in every.overlaps] == [q.producer(y).name]
    for plan in (plan_memory(q), every):
        assert q.producer(z).name not in [o.node for o in plan.overlaps]
        oy, oz = plan.offsets[y], plan.offsets[z]
        assert oy + 288 <= oz or oz + 288 <= oy
        assert plan.inplace == [q.producer(out).name]
    check_c(q, rng, TAKE_ALL, qemu=False)


@pytest.mark.parametrize("seed", [0, 1])
def test_every_overlap_taken_is_bit_exact_in_c(seed):
    """Random conv, depthwise and pool layers (each the last reader of its input), every one placed
    as far into its input as its rule allows."""
    q, rng = _multi_layer_graph(mixed_layer, 700 + seed, 18)
    assert len(plan_memory(q, choose_overlaps=False).overlaps) >= 14
    check_c(q, rng, TAKE_ALL, n=6)


def _one_layer(rng, shape, o, k, groups):
    b = Builder("one")
    x = b.input(shape)
    y = b.op("conv2d", [x, b.const("w", rng.normal(size=(o, k, k, shape[3] // groups)))], stride=[1, 1],
             dilation=[1, 1], pads=[k // 2] * 4, groups=groups)
    return quantize_random(b.finish(y), rng, log_scales=[0.0])


def _mismatches(q, rng, target) -> int:
    xs = random_int8_inputs(q, rng, 8)
    want = reference.run(q, xs, "int")[0]
    with tempfile.TemporaryDirectory() as d:
        generate(q, Path(d) / "lib", target=target, plan_options=TAKE_ALL)
        return int(np.count_nonzero(run_host(Path(d) / "lib", xs, sanitize=True)[0] != want))


def test_a_shift_beyond_the_rule_breaks_the_outputs(monkeypatch):
    """1x1 conv, 8 channels: one pixel back (-8) is the rule; -4 overwrites input channels 0..3 of a
    pixel while its output channels 4..7 still read them. Depthwise 3x3 on 6x6x8: -(W + 1) C = -56
    is the rule; -60 is safe for the portable kernel (further back) but not for the channel-outer DSP
    kernel, which lands channel 0..3 outputs on channels 4..7 of the input before reading them."""
    rng = np.random.default_rng(4)
    pointwise = _one_layer(rng, (1, 5, 5, 8), 8, 1, 1)
    depthwise = _one_layer(rng, (1, 6, 6, 8), 8, 3, 8)
    assert plan_memory(pointwise, choose_overlaps=False).overlaps[0].shift == -8
    assert plan_memory(depthwise, choose_overlaps=False).overlaps[0].shift == -56
    assert _mismatches(pointwise, rng, None) == 0 and _mismatches(depthwise, rng, M4) == 0
    monkeypatch.setattr(Conv2D, "overlap_shift", lambda self, n, g, alignment=1: -4)
    assert _mismatches(pointwise, rng, None) > 0
    monkeypatch.setattr(Conv2D, "overlap_shift", lambda self, n, g, alignment=1: -60)
    assert _mismatches(depthwise, rng, None) == 0
    assert _mismatches(depthwise, rng, M4) > 0
