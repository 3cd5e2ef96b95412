"""The fast kernels for DSP-extension cores (ops/dsp.py, kernels/mf_*_dsp.c) == the integer reference.

Each op family with a DSP path runs over many random configurations, several layers in one
graph (independent inputs and outputs, so one firmware and one QEMU run cover them all):
on the host, where mf_dsp.h emulates the instructions in portable C, built with
AddressSanitizer and UBSan, and on QEMU's Cortex-M4, where the real instructions run.
Quantizations are perturbed so that both requantization variants (fast SMMLAR and exact)
and the fused clamps are exercised; the tests check that they were.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mcuforge import reference
from mcuforge.codegen import generate
from mcuforge.ir import QuantParams
from mcuforge.targets.cortex_m import run_cortex_m
from mcuforge.targets.host import run_host
from mcuforge.targets.table import get_target

from _graphs import Builder, perturb_quant, quantize_random, random_int8_inputs

M4 = get_target("cortex-m4")


pytestmark = pytest.mark.usefixtures("arm_toolchain_cache")


def _compare(q, want, got, where):
    for name, w, c in zip(q.outputs, want, got):
        assert w.shape == c.shape, (where, name, w.shape, c.shape)
        bad = np.argwhere(w != c)
        if bad.size:
            node = next(n for n in q.nodes if name in n.outputs)
            idx = tuple(bad[0])
            ins = [q.tensors[t].shape for t in node.inputs]
            raise AssertionError(f"{where}: output '{name}' of {node.op} {node.attrs} {ins}: {len(bad)} of "
                                 f"{w.size} values differ, first at {idx}: reference {w[idx]} vs C {c[idx]}")


def check_dsp(q, rng, n=6, qemu=True) -> str:
    """Reference == host (emulated DSP, sanitizers) == QEMU Cortex-M4; returns the generated model.c."""
    xs = random_int8_inputs(q, rng, n)
    want = reference.run(q, xs, "int")
    with tempfile.TemporaryDirectory() as d:
        lib = Path(d) / "lib"
        generate(q, lib, target=M4)
        src = (lib / "model.c").read_text()
        _compare(q, want, run_host(lib, xs, sanitize=True), "host (emulated DSP)")
        if qemu:
            _compare(q, want, run_cortex_m(lib, xs, M4), "QEMU cortex-m4")
    return src


def calls(src: str, kernel: str) -> list[str]:
    return re.findall(rf"\b({kernel}\w*)\(", src.split("_invoke(void)")[1])


def force_requant_forms(q, rng, prob=0.3):
    """Give some conv/fc/add outputs scales whose multipliers are >= 0.5 (no right shift) or > 1
    (a left shift): layers the fast requantization does not cover."""
    for node in q.nodes:
        if node.op not in ("conv2d", "fully_connected", "add") or rng.random() >= prob:
            continue
        sx = q.tensors[node.inputs[0]].quant.s
        if node.op == "add":  # the output multiplier is 2 max(s_a, s_b) / (2^20 s_y)
            sw = 2 * max(sx, q.tensors[node.inputs[1]].quant.s) / 2.0**20 / sx
        else:
            sw = float(np.max(q.tensors[node.inputs[1]].quant.scale))
        out = q.tensors[node.outputs[0]]
        factor = float(rng.choice([0.7, 1.0, 3.0]))
        out.quant = QuantParams.per_tensor(np.float32(sx * sw / factor), out.quant.zp)
    q.validate()
    return q


# --- conv2d -------------------------------------------------------------------------------------

def conv_layer(b: Builder, rng, i: int) -> str:
    mode = ["regular", "pointwise", "first", "depthwise", "grouped", "1d", "strided", "wide"][i % 8]
    h, w = int(rng.integers(1, 10)), int(rng.integers(1, 10))
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    stride = [int(rng.integers(1, 3)), int(rng.integers(1, 3))]
    dil = [1, 1] if rng.random() < 0.7 else [int(rng.integers(1, 3)), int(rng.integers(1, 3))]
    groups, m = 1, 1
    if mode == "pointwise":
        c, o, kh, kw = int(rng.integers(1, 40)), int(rng.integers(1, 24)), 1, 1
    elif mode == "first":
        c, o = int(rng.integers(1, 4)), int(rng.integers(1, 20))
        kh, kw = int(rng.integers(1, 11)), int(rng.integers(1, 5))
    elif mode == "depthwise":
        c = int(rng.integers(1, 20))
        m = int(rng.choice([1, 1, 2, 3]))
        groups, o = c, c * m
    elif mode == "grouped":
        groups = int(rng.integers(2, 4))
        c, o = groups * int(rng.integers(1, 9)), groups * int(rng.integers(1, 5))
    elif mode == "1d":
        h, kh, c, o = 1, 1, int(rng.integers(1, 17)), int(rng.integers(1, 17))
        kw = int(rng.integers(1, 6))
        w = int(rng.integers(kw, 20))
        stride[0] = dil[0] = 1
    elif mode == "strided":
        c, o = 4 * int(rng.integers(1, 6)), int(rng.integers(1, 20))
        stride = [2, 2]
    else:  # wide: long columns, many channels
        c, o = int(rng.integers(8, 40)), int(rng.integers(16, 40))
        kh = kw = 3
    eff_h, eff_w = dil[0] * (kh - 1) + 1, dil[1] * (kw - 1) + 1
    pads = [int(v) for v in rng.integers(0, 3, size=4)]
    pads = [min(pads[0], eff_h - 1), min(pads[1], eff_h - 1), min(pads[2], eff_w - 1), min(pads[3], eff_w - 1)]
    h, w = max(h, eff_h), max(w, eff_w)
    x = b.input((1, h, w, c))
    inputs = [x, b.const("w", rng.normal(size=(o, kh, kw, c // groups)))]
    if rng.random() < 0.8:
        inputs.append(b.const("b", rng.normal(size=o) * 3))
    act = [dict(), dict(act_min=0.0), dict(act_min=0.0, act_max=6.0), dict(act_min=-1.0, act_max=1.0)][
        int(rng.integers(4))]
    return b.op("conv2d", inputs, stride=stride, dilation=dil, pads=pads, groups=groups, **act)


def _multi_layer_graph(layer, seed: int, layers: int):
    rng = np.random.default_rng(seed)
    b = Builder(f"dsp{seed}")
    outs = [layer(b, rng, i) for i in range(layers)]
    q = quantize_random(b.finish(*outs), rng, per_channel_dense=bool(seed % 2))
    perturb_quant(q, rng, prob=0.4)
    return force_requant_forms(q, rng), rng


def dwconv_layer(b: Builder, rng, i: int) -> str:
    """Depthwise: 3x3 stride 1 (the two-output form, odd and even widths), other sizes, strides, dilations."""
    c = int(rng.integers(2, 12))
    m = int(rng.choice([1, 1, 2, 3]))
    form = i % 5  # 3x3 stride 1 (twice), 3-wide, stride 2 along the row (3x3 s2 every other), anything
    kh, kw = [(3, 3), (3, 3), (int(rng.integers(1, 6)), 3),
              (3, 3) if i % 2 else (int(rng.integers(1, 6)), int(rng.integers(1, 6))),
              (int(rng.integers(1, 4)), int(rng.integers(1, 6)))][form]
    stride = [2 if form == 3 and i % 2 else int(rng.integers(1, 3)), [1, 1, 1, 2, int(rng.integers(1, 3))][form]]
    dil = [1, 1] if rng.random() < 0.7 or form == 3 else [int(rng.integers(1, 3)), 1 if form < 3 else
                                                          int(rng.integers(1, 3))]
    eff_h, eff_w = dil[0] * (kh - 1) + 1, dil[1] * (kw - 1) + 1
    h, w = int(rng.integers(eff_h, eff_h + 8)), int(rng.integers(eff_w, eff_w + 8))
    pads = [int(rng.integers(0, eff_h)), int(rng.integers(0, eff_h)), int(rng.integers(0, eff_w)),
            int(rng.integers(0, eff_w))]
    x = b.input((1, h, w, c))
    inputs = [x, b.const("w", rng.normal(size=(c * m, kh, kw, 1)))]
    if rng.random() < 0.8:
        inputs.append(b.const("b", rng.normal(size=c * m) * 3))
    act = [dict(), dict(act_min=0.0), dict(act_min=0.0, act_max=6.0), dict(act_min=-1.0, act_max=1.0)][
        0 if form == 3 else int(rng.integers(4))]
    return b.op("conv2d", inputs, stride=stride, dilation=dil, pads=pads, groups=c, **act)


CONV_SEEDS, DW_SEEDS = (0, 1, 2), (0, 1)


@pytest.mark.parametrize("seed", CONV_SEEDS)
def test_conv2d_dsp_bit_exact(seed):
    q, rng = _multi_layer_graph(conv_layer, seed, 16)
    src = check_dsp(q, rng)
    used = calls(src, "mf_(?:dw)?conv")
    assert len(used) == 16 and all("dsp" in c for c in used), used


@pytest.mark.parametrize("seed", DW_SEEDS)
def test_depthwise_dsp_bit_exact(seed):
    q, rng = _multi_layer_graph(dwconv_layer, 100 + seed, 16)
    src = check_dsp(q, rng)
    used = calls(src, "mf_(?:dw)?conv")
    assert len(used) == 16 and all(c.startswith("mf_dwconv_dsp") for c in used), used


def fc_layer(b: Builder, rng, i: int) -> str:
    """Row counts, feature counts not multiples of 4 or 8, narrow and wide layers."""
    lead = [(1,), (1,), (1, 3), (1, 2, 3)][i % 4]
    k = [int(rng.integers(1, 12)), int(rng.integers(12, 80)), int(rng.integers(1, 300)), 8][i % 4]
    o = [int(rng.integers(1, 9)), int(rng.integers(9, 40)), int(rng.integers(1, 20)), 128][(i // 4) % 4]
    x = b.input(lead + (k,))
    inputs = [x, b.const("w", rng.normal(size=(o, k)))]
    if rng.random() < 0.8:
        inputs.append(b.const("b", rng.normal(size=o) * 3))
    act = [dict(), dict(act_min=0.0), dict(act_min=0.0, act_max=6.0), dict(act_min=-1.0, act_max=1.0)][
        int(rng.integers(4))]
    return b.op("fully_connected", inputs, **act)


FC_SEEDS = (0, 1)


@pytest.mark.parametrize("seed", FC_SEEDS)
def test_fully_connected_dsp_bit_exact(seed):
    q, rng = _multi_layer_graph(fc_layer, 200 + seed, 16)
    src = check_dsp(q, rng)
    used = calls(src, "mf_fc")
    assert len(used) == 16 and all(c.startswith("mf_fc_dsp") for c in used), used


def add_layer(b: Builder, rng, i: int) -> str:
    """Same-shape adds (the DSP kernel; odd sizes, in place or not) and, every 8th, a broadcast one."""
    shape = (1, int(rng.integers(1, 7)), int(rng.integers(1, 7)), int(rng.integers(1, 9)))
    x = b.input(shape)
    if i % 8 == 7:
        y = b.input((1, 1, shape[2], shape[3]), "y")
    else:
        y = b.op("leaky_relu", [b.input(shape, "y")], alpha=0.5) if i % 3 == 0 else b.input(shape, "y")
    act = [dict(), dict(act_min=0.0), dict(act_min=0.0, act_max=6.0), dict(act_min=-1.0, act_max=1.0)][
        int(rng.integers(4))]
    return b.op("add", [x, y] if rng.random() < 0.5 else [y, x], **act)


ADD_SEEDS = (0, 1)


@pytest.mark.parametrize("seed", ADD_SEEDS)
def test_add_dsp_bit_exact(seed):
    q, rng = _multi_layer_graph(add_layer, 300 + seed, 16)
    src = check_dsp(q, rng)
    used = calls(src, "mf_add")
    assert len(used) == 16 and sum(c.startswith("mf_add_dsp") for c in used) == 14, used


def _variants(layer, seeds, offset=0) -> set[str]:
    seen = set()
    for seed in seeds:
        q, _ = _multi_layer_graph(layer, offset + seed, 16)
        with tempfile.TemporaryDirectory() as d:
            generate(q, Path(d) / "lib", target=M4)
            src = (Path(d) / "lib" / "model.c").read_text()
            seen |= set(calls(src, r"mf_\w+_dsp"))
            for body, tail in re.findall(r"mf_dwconv_dsp_params \w+ = \{(.*?)\};([^\n]*)", src, re.S):
                f = [int(v) for v in re.findall(r"-?\d+", body)[:22]]  # stride_w f[13], dil_w f[15], three f[21]
                form = "three" if f[21] else "stride2" if (f[13], f[15]) == (2, 1) else "pairs"
                seen.add(("dw", form, "transposed" in tail))
    return seen


def test_dsp_tests_cover_every_variant():
    """The seeds above exercise both requantization forms, with and without the clamp, per kernel,
    and the depthwise forms (3-wide two-output rows, normal and transposed; stride 2; tap pairs)."""
    seen = _variants(conv_layer, CONV_SEEDS) | _variants(dwconv_layer, DW_SEEDS, 100) | \
        _variants(fc_layer, FC_SEEDS, 200) | _variants(add_layer, ADD_SEEDS, 300)
    assert {("dw", "three", False), ("dw", "three", True), ("dw", "stride2", False), ("dw", "pairs", False)} <= seen, seen
    want = {f"mf_{k}_dsp_s8_{v}" for k in ("conv", "dwconv", "fc", "add")
            for v in ("fast", "fast_clamp", "exact", "exact_clamp")}
    assert want <= seen, want - seen


def pool_layer(b: Builder, rng, i: int) -> str:
    """Average (global windows over 255 values included: the int16 lanes flush) and max pooling."""
    c = int(rng.integers(1, 13))
    if i % 4 == 3:  # global
        h, w = [(25, 5), (16, 17), (3, 4)][(i // 4) % 3]
        attrs = dict(kernel=[h, w], stride=[1, 1], pads=[0, 0, 0, 0])
    else:
        h, w = int(rng.integers(2, 10)), int(rng.integers(2, 10))
        kh, kw = int(rng.integers(1, min(h, 4) + 1)), int(rng.integers(1, min(w, 4) + 1))
        attrs = dict(kernel=[kh, kw], stride=[int(rng.integers(1, 3)), int(rng.integers(1, 3))],
                     pads=[int(rng.integers(0, kh)), int(rng.integers(0, kh)), int(rng.integers(0, kw)),
                           int(rng.integers(0, kw))])
    op = "avg_pool2d" if i % 2 == 0 or i % 4 == 3 else "max_pool2d"
    if op == "avg_pool2d":
        attrs["count_include_pad"] = bool(rng.integers(2))
    act = [dict(), dict(act_min=0.0), dict(act_min=-1.0, act_max=1.0)][int(rng.integers(3))]
    return b.op(op, [b.input((1, h, w, c))], **attrs, **act)


def test_pool_dsp_bit_exact():
    q, rng = _multi_layer_graph(pool_layer, 500, 16)
    src = check_dsp(q, rng)
    used = calls(src, r"mf_\w+_pool")
    assert len(used) == 16 and all("_dsp_" in c for c in used), used


def mixed_layer(b: Builder, rng, i: int) -> str:
    return [conv_layer, dwconv_layer, fc_layer, add_layer][i % 4](b, rng, i // 4)


@pytest.mark.parametrize("core", ["cortex-m7", "cortex-m33", "cortex-m55"])
def test_other_dsp_cores_bit_exact(core):
    """The same kernels (ACLE intrinsics, Thumb-2 assembly) on the other DSP-extension cores."""
    target = get_target(core)
    assert target.has_dsp
    q, rng = _multi_layer_graph(mixed_layer, 400 + ["cortex-m7", "cortex-m33", "cortex-m55"].index(core), 8)
    xs = random_int8_inputs(q, rng, 4)
    want = reference.run(q, xs, "int")
    with tempfile.TemporaryDirectory() as d:
        lib = Path(d) / "lib"
        generate(q, lib, target=target)
        assert len(calls((lib / "model.c").read_text(), r"mf_\w+_dsp")) >= 6
        _compare(q, want, run_cortex_m(lib, xs, target), f"QEMU {core}")


# --- the MLPerf Tiny models -----------------------------------------------------------------------

MODELS_DIR = Path(__file__).resolve().parents[2] / "shared" / "models"


@pytest.mark.parametrize("model", ["ad01_int8", "kws_ref_model", "pretrainedResnet_quant"])
def test_mlperf_tiny_models_bit_exact_with_dsp_kernels(model):
    """The three MLPerf Tiny reference models, deployed for the M4 (every layer on a DSP kernel
    but pooling and softmax), == the integer reference on the host and on QEMU's Cortex-M4."""
    from mcuforge.frontends.tflite import load_tflite

    path = MODELS_DIR / f"{model}.tflite"
    if not path.exists():
        pytest.skip(f"{path} not found")
    q = load_tflite(path)
    src = check_dsp(q, np.random.default_rng(7), n=4)
    kernels = calls(src, r"mf_\w+")
    assert all("_dsp_" in k for k in kernels if k.startswith(("mf_conv", "mf_fc", "mf_add"))), kernels
