"""Cortex-M targets: the generated C on emulated cores (QEMU) == the integer reference, bit for bit.

Every op family over a few random configurations and the demo-style models run
on Cortex-M4 (mps2-an386); one multi-op model runs on each other core. Also:
the does-not-fit errors, repeatable instruction counts, the target table and
its errors. These tests need arm-none-eabi-gcc, newlib and qemu-system-arm
(`make setup` installs them); without them they fail, they do not skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mcuforge import reference
from mcuforge.codegen import generate
from mcuforge.codegen.emit import render_sources
from mcuforge.errors import DoesNotFitError, InputError, ToolchainError
from mcuforge.ir import save_graph
from mcuforge.ops import OPS
from mcuforge.targets.bench import bench
from mcuforge.targets.cortex_m import build_firmware, run_cortex_m
from mcuforge.targets.table import BOARDS, CORES, MACHINES, get_target, parse_size, target_names

from _graphs import Builder, perturb_quant, quantize_random, random_graph, random_int8_inputs
from test_cli import mcuforge

TOOLS = ("arm-none-eabi-gcc", "qemu-system-arm")


@pytest.fixture(scope="module", autouse=True)
def _toolchain_and_private_cache():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: the Cortex-M tests need the Debian packages "
                    "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm (`make setup` installs them)",
                    pytrace=False)
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCUFORGE_CACHE", d)  # build everything afresh, once per module
        yield


def check_on_target(q, rng, target="cortex-m4", n=32, xs=None):
    """Integer reference == firmware on QEMU, all outputs, bit for bit."""
    xs = random_int8_inputs(q, rng, n) if xs is None else xs
    want = reference.run(q, xs, "int")
    with tempfile.TemporaryDirectory() as d:
        lib = Path(d) / "lib"
        generate(q, lib)
        got = run_cortex_m(lib, xs, target)
    assert len(got) == len(want)
    for name, w, c in zip(q.outputs, want, got):
        assert w.dtype == c.dtype == np.int8 and w.shape == c.shape, (name, w.shape, c.shape)
        bad = np.argwhere(w != c)
        assert not bad.size, (f"{target}: output '{name}': {len(bad)} of {w.size} values differ, first at "
                              f"{tuple(bad[0])}: reference {w[tuple(bad[0])]} vs firmware {c[tuple(bad[0])]}\n"
                              f"{q.summary()}")
    return want


# --- graph builders: a few configurations per op family ----------------------------------------

def _act(rng):
    return [dict(), dict(act_min=0.0), dict(act_min=0.0, act_max=6.0), dict(act_min=-1.0, act_max=1.0)][
        int(rng.integers(4))]


def conv2d_case(rng, i):
    b = Builder()
    mode = ["regular", "depthwise", "grouped", "1d"][i % 4]
    h, w = (1, int(rng.integers(6, 16))) if mode == "1d" else (int(rng.integers(4, 11)), int(rng.integers(4, 11)))
    if mode == "depthwise":
        c = int(rng.integers(1, 17))
        groups, o = c, c * int(rng.integers(1, 3))
    elif mode == "grouped":
        groups = int(rng.integers(2, 4))
        c, o = groups * int(rng.integers(1, 5)), groups * int(rng.integers(1, 4))
    else:
        c, o, groups = int(rng.integers(1, 20)), int(rng.integers(1, 20)), 1
    kh, kw = (1, int(rng.integers(1, 6))) if mode == "1d" else (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    stride = [1, int(rng.integers(1, 3))] if mode == "1d" else [int(rng.integers(1, 3)), int(rng.integers(1, 3))]
    dil = [1, int(rng.integers(1, 3))]
    pads = [0, 0, int(rng.integers(0, 2)), int(rng.integers(0, 2))] if mode == "1d" else \
        [int(v) for v in rng.integers(0, 2, size=4)]
    x = b.input((1, h, w, c))
    inputs = [x, b.const("w", rng.normal(size=(o, kh, kw, c // groups)))]
    if rng.random() < 0.7:
        inputs.append(b.const("b", rng.normal(size=o)))
    return b.finish(b.op("conv2d", inputs, stride=stride, dilation=dil, pads=pads, groups=groups, **_act(rng)))


def fully_connected_case(rng, i):
    b = Builder()
    lead = [(1,), (1, 3), (1, 2, 3)][i % 3]
    k, o = int(rng.integers(1, 48)), int(rng.integers(1, 24))
    x = b.input(lead + (k,))
    y = b.op("fully_connected", [x, b.const("w", rng.normal(size=(o, k))), b.const("b", rng.normal(size=o))],
             **_act(rng))
    return b.finish(y), dict(per_channel_dense=bool(i % 2))


def _pool_case(op, rng, i):
    b = Builder()
    c, h, w = int(rng.integers(1, 12)), int(rng.integers(3, 10)), int(rng.integers(3, 10))
    x = b.input((1, h, w, c))
    if i == 2:  # global
        attrs = dict(kernel=[h, w], stride=[1, 1], pads=[0, 0, 0, 0])
    else:
        attrs = dict(kernel=[3, 2], stride=[int(rng.integers(1, 3)), int(rng.integers(1, 3))], pads=[1, 1, 1, 0])
    if op == "avg_pool2d":
        attrs["count_include_pad"] = bool(i % 2)
    return b.finish(b.op(op, [x], **attrs, **_act(rng)))


def avg_pool2d_case(rng, i):
    return _pool_case("avg_pool2d", rng, i)


def max_pool2d_case(rng, i):
    return _pool_case("max_pool2d", rng, i)


def _binary_case(op, rng, i):
    b = Builder()
    shape = (1, int(rng.integers(1, 6)), int(rng.integers(1, 6)), int(rng.integers(1, 8)))
    x = b.input(shape)
    other = [lambda: b.input(shape, "y"),                                   # same shape
             lambda: b.input((1, 1, shape[2], shape[3]), "y"),             # broadcast
             lambda: b.const("k", rng.normal(size=shape[-1:]))][i % 3]()   # constant per channel
    return b.finish(b.op(op, [x, other] if rng.random() < 0.5 else [other, x], **_act(rng)))


def add_case(rng, i):
    return _binary_case("add", rng, i)


def mul_case(rng, i):
    return _binary_case("mul", rng, i)


def _unary_case(op, rng, i, **attrs):
    b = Builder()
    shape = [(1, int(rng.integers(1, 40))), (1, 3, 4, int(rng.integers(1, 9))), (1, 5, 7)][i % 3]
    return b.finish(b.op(op, [b.input(shape)], **attrs))


def clamp_case(rng, i):
    return _unary_case("clamp", rng, i, min=[0.0, -1.0, None][i % 3], max=[6.0, 0.5, 2.0][i % 3])


def leaky_relu_case(rng, i):
    return _unary_case("leaky_relu", rng, i, alpha=float(rng.uniform(0, 1.5)))


def sigmoid_case(rng, i):
    return _unary_case("sigmoid", rng, i)


def tanh_case(rng, i):
    return _unary_case("tanh", rng, i)


def abs_case(rng, i):
    return _unary_case("abs", rng, i)


def log_abs_case(rng, i):
    return _unary_case("log_abs", rng, i, eps=float(10.0 ** rng.uniform(-4, -1)))


def quantize_levels_case(rng, i):
    return _unary_case("quantize_levels", rng, i, threshold=float(rng.uniform(0.2, 3.0)), levels=[4, 8, 16][i % 3])


def quantize_case(rng, i):
    b = Builder()
    y = b.op("quantize", [b.input((1, 4, int(rng.integers(1, 20))))])
    return b.finish(y), dict(perturb=True)


def softmax_case(rng, i):
    b = Builder()
    shape = [(1, int(rng.integers(2, 40))), (1, 3, int(rng.integers(2, 12))), (1, 2, 2, 10)][i % 3]
    return b.finish(b.op("softmax", [b.input(shape)], beta=[1.0, 0.5, 2.0][i % 3]))


def reshape_case(rng, i):
    b = Builder()
    x = b.input((1, 4, 3, 2))
    y = b.op("leaky_relu", [x], alpha=0.25)
    y = b.op("reshape", [y], shape=[[1, 24], [1, 6, 4], [1, 2, 12]][i % 3])
    y = b.op("mul", [y, b.const("k", rng.normal(size=b.g.tensors[y].shape[-1:]))])
    return b.finish(y)


def transpose_case(rng, i):
    b = Builder()
    shape, perm = [((1, 3, 5, 4), [0, 3, 1, 2]), ((1, 6, 7), [0, 2, 1]), ((1, 2, 3, 4), [0, 2, 3, 1])][i % 3]
    return b.finish(b.op("transpose", [b.input(shape)], perm=perm))


def concat_case(rng, i):
    b = Builder()
    axis = [3, 1, 2][i % 3]
    inputs = []
    for k in range(int(rng.integers(2, 4))):
        shape = [1, 3, 4, 5]
        shape[axis] = int(rng.integers(1, 6))
        inputs.append(b.input(tuple(shape), f"x{k}"))
    return b.finish(b.op("concat", inputs, axis=axis)), dict(log_scales=[-1.0, 0.5, 2.0])


def pad_case(rng, i):
    b = Builder()
    shape = [(1, 4, 5, 3), (1, 6, 2), (1, 7)][i % 3]
    pads = [0, 0] + [int(v) for v in rng.integers(0, 3, size=2 * (len(shape) - 1))]
    return b.finish(b.op("pad", [b.input(shape)], pads=pads))


def mean_case(rng, i):
    b = Builder()
    shape, axes, keep = [((1, 5, 6, 7), [1, 2], True), ((1, 4, 9), [2], False), ((1, 3, 4, 5), [3], False)][i % 3]
    return b.finish(b.op("mean", [b.input(shape)], axes=axes, keepdims=keep))


CASES = {name.removesuffix("_case"): fn for name, fn in dict(globals()).items()
         if name.endswith("_case") and not name.startswith("_") and callable(fn)}
CONFIGS = 3


def test_every_op_has_a_cortex_m_case():
    """An op added to the registry needs a case here too (every C kernel is checked on the emulated core)."""
    missing = sorted(set(OPS) - set(CASES))
    assert not missing, f"add Cortex-M cases for {missing} to tests/test_cortex_m.py"


@pytest.mark.parametrize("op", sorted(CASES))
def test_op_bit_exact_on_cortex_m4(op):
    for i in range(CONFIGS):
        rng = np.random.default_rng(1000 * i + sorted(CASES).index(op))
        made = CASES[op](rng, i)
        g, opts = made if isinstance(made, tuple) else (made, {})
        q = quantize_random(g, rng, log_scales=opts.get("log_scales"),
                            per_channel_dense=opts.get("per_channel_dense", True))
        if opts.get("perturb") or i == 2:
            perturb_quant(q, rng)
        assert any(n.op == op for n in q.nodes)
        check_on_target(q, rng)


def digits_style_cnn(rng):
    """The demo's architecture (conv16-conv32-maxpool-conv32/relu6-gap-fc10) built in the IR."""
    b = Builder("digits_style")
    x = b.input((1, 8, 8, 1))

    def conv(t, o, act):
        c = b.g.tensors[t].shape[3]
        return b.op("conv2d", [t, b.const("w", rng.normal(size=(o, 3, 3, c)) / np.sqrt(9 * c)),
                               b.const("b", rng.normal(size=o) * 0.1)],
                    stride=[1, 1], dilation=[1, 1], pads=[1, 1, 1, 1], groups=1, **act)

    y = conv(x, 16, dict(act_min=0.0))
    y = conv(y, 32, dict(act_min=0.0))
    y = b.op("max_pool2d", [y], kernel=[2, 2], stride=[2, 2], pads=[0, 0, 0, 0])
    y = conv(y, 32, dict(act_min=0.0, act_max=6.0))
    y = b.op("avg_pool2d", [y], kernel=[4, 4], stride=[1, 1], pads=[0, 0, 0, 0])
    y = b.op("reshape", [y], shape=[1, 32])
    return b.finish(b.op("fully_connected", [y, b.const("w", rng.normal(size=(10, 32))),
                                             b.const("b", rng.normal(size=10))]))


def test_small_models_bit_exact_on_cortex_m4(small_cnn, calib_nhwc):
    from mcuforge.quant.ptq import quantize

    rng = np.random.default_rng(3)
    check_on_target(quantize(small_cnn, [calib_nhwc]), rng, n=64)
    d = digits_style_cnn(rng)
    check_on_target(quantize(d, [rng.uniform(0, 1, size=(64, 8, 8, 1)).astype(np.float32)]), rng, n=64)
    for seed in (11, 12, 13):
        g = random_graph(seed)
        q = quantize_random(g, np.random.default_rng(seed))
        check_on_target(perturb_quant(q, np.random.default_rng(seed)) if seed % 2 else q, rng, n=16)


def multi_op_model(rng):
    """conv, depthwise conv, residual add, mul, pools, tanh, fc, softmax: most kernels in one firmware."""
    b = Builder("multi_op")
    x = b.input((1, 8, 8, 4))
    y = b.op("conv2d", [x, b.const("w", rng.normal(size=(6, 3, 3, 4))), b.const("b", rng.normal(size=6))],
             stride=[1, 1], dilation=[1, 1], pads=[1, 1, 1, 1], groups=1, act_min=0.0)
    z = b.op("conv2d", [y, b.const("w", rng.normal(size=(6, 3, 3, 1)))], stride=[1, 1], dilation=[1, 1],
             pads=[1, 1, 1, 1], groups=6)
    y = b.op("add", [y, b.op("leaky_relu", [z], alpha=0.1)])
    y = b.op("mul", [y, b.const("k", rng.uniform(0.5, 2, size=6))])
    y = b.op("max_pool2d", [y], kernel=[2, 2], stride=[2, 2], pads=[0, 0, 0, 0])
    y = b.op("tanh", [y])
    y = b.op("avg_pool2d", [y], kernel=[4, 4], stride=[1, 1], pads=[0, 0, 0, 0])
    y = b.op("reshape", [y], shape=[1, 6])
    y = b.op("fully_connected", [y, b.const("w", rng.normal(size=(5, 6))), b.const("b", rng.normal(size=5))])
    return b.finish(b.op("softmax", [y]))


@pytest.mark.parametrize("target", ["cortex-m3", "cortex-m7", "cortex-m33", "cortex-m55", "cortex-m0plus"])
def test_other_cores_bit_exact(target):
    rng = np.random.default_rng(21)
    q = quantize_random(multi_op_model(rng), rng, log_scales=[0.0], offsets=[0.3])
    check_on_target(q, rng, target, n=24)


# --- does not fit --------------------------------------------------------------------------------

def _fc_graph(k=256, o=128):
    rng = np.random.default_rng(0)
    b = Builder("big_fc")
    x = b.input((1, k))
    y = b.op("fully_connected", [x, b.const("w", rng.normal(size=(o, k))), b.const("b", rng.normal(size=o))])
    return quantize_random(b.finish(y), rng, log_scales=[0.0])


def test_weights_exceeding_flash_name_the_region_and_overflow(tmp_path, capsys):
    save_graph(_fc_graph(), tmp_path / "fc.mcf")  # 32 KB of weights
    code, out, err = mcuforge(capsys, "deploy", tmp_path / "fc.mcf", "-o", tmp_path / "lib", "--target",
                              "cortex-m4", "--flash", "16K")
    assert code == 0, err
    assert "does not fit" in out
    report = json.loads((tmp_path / "lib" / "report.json").read_text())
    assert report["target"]["name"] == "cortex-m4" and report["target"]["flash_bytes"] == 16 * 1024
    np.save(tmp_path / "x.npy", np.zeros((2, 256), np.int8))
    # run picks up the deployed sizes for the same target
    code, out, err = mcuforge(capsys, "run", tmp_path / "lib", "--input", tmp_path / "x.npy", "--output",
                              tmp_path / "y.npy", "--target", "cortex-m4")
    assert code == 1
    assert "region FLASH overflowed by" in err and "bytes" in err
    assert "16 KB" in err and "--flash" in err and "Traceback" not in err
    assert not (tmp_path / "y.npy").exists()
    # with enough flash it runs
    code, out, err = mcuforge(capsys, "run", tmp_path / "lib", "--input", tmp_path / "x.npy", "--output",
                              tmp_path / "y.npy", "--target", "cortex-m4", "--flash", "1M")
    assert code == 0, err


def test_arena_exceeding_ram_names_the_region_and_overflow(tmp_path):
    rng = np.random.default_rng(0)
    b = Builder("wide")
    x = b.input((1, 32, 32, 16))
    y = b.op("conv2d", [x, b.const("w", rng.normal(size=(16, 3, 3, 16)))], stride=[1, 1], dilation=[1, 1],
             pads=[1, 1, 1, 1], groups=1)
    q = quantize_random(b.finish(y), rng, log_scales=[0.0])
    generate(q, tmp_path / "lib")  # 16 KB input, the output overlapping it: 16,928 B
    target = get_target("nrf52840", ram="16K")
    with pytest.raises(DoesNotFitError) as exc:
        build_firmware(tmp_path / "lib", target)
    msg = str(exc.value)
    arena = json.loads((tmp_path / "lib" / "report.json").read_text())["memory"]["arena_bytes"]
    assert arena == 16 * 1024 + 34 * 16
    assert "region RAM overflowed by" in msg and f"{arena:,} B" in msg and "16 KB" in msg and "--ram" in msg
    # a part with more RAM than QEMU's micro:bit (16 KB): builds for the target, cannot be emulated
    with pytest.raises(DoesNotFitError, match="cannot be emulated"):
        build_firmware(tmp_path / "lib", get_target("rp2040"))


# --- bench ---------------------------------------------------------------------------------------

def test_bench_counts_are_exact_and_repeatable(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(5)
    q = quantize_random(multi_op_model(rng), rng, log_scales=[0.0], offsets=[0.3])
    lib = tmp_path / "lib"
    generate(q, lib, target=get_target("cortex-m4"))
    first = bench(lib, get_target("cortex-m4"), samples=2)
    monkeypatch.setenv("MCUFORGE_CACHE", str(tmp_path / "fresh-cache"))  # rebuild firmware and plugin
    second = bench(lib, get_target("cortex-m4"), samples=2)
    assert first["instructions"] == second["instructions"]
    assert [r["instructions"] for r in first["layers"]] == [r["instructions"] for r in second["layers"]]
    ins = first["instructions"]
    assert ins["per_inference"] > 1000 and ins["mark_cost"] >= 1
    assert ins["layers_sum"] + ins["outside_layers"] == pytest.approx(ins["per_inference"])
    by_op = {r["op"]: r for r in first["layers"]}
    assert by_op["reshape"]["instructions"] == 0 and by_op["conv2d"]["instructions"] > 0
    assert first["flash"]["model_constants"] >= sum(r["weight_bytes"] for r in json.loads(
        (lib / "report.json").read_text())["layers"])
    assert first["ram"]["arena"] == json.loads((lib / "report.json").read_text())["memory"]["arena_bytes"]
    assert 0 < first["stack"]["inference"] < first["stack"]["reserved"]
    assert first["estimate"]["cycles"] == pytest.approx(ins["per_inference"] * CORES["cortex-m4"].cpi)

    # the command: tables and JSON; the same counts again
    code, out, err = mcuforge(capsys, "bench", lib, "--samples", "2", "--json", tmp_path / "b.json")
    assert code == 0, err
    assert "instructions per inference" in out and "estimated time at 120 MHz" in out and "CPI" in out
    third = json.loads((tmp_path / "b.json").read_text())
    assert third["instructions"] == first["instructions"]


# --- targets -------------------------------------------------------------------------------------

def test_target_table_and_sizes():
    t = get_target("NUCLEO-L4R5ZI")
    assert (t.core.name, t.ram, t.flash, t.clock_hz, t.machine.name) == ("cortex-m4", 640 * 1024, 2 << 20,
                                                                        120_000_000, "mps2-an386")
    assert get_target("stm32f746").ram == 320 * 1024 and get_target("m7").core.name == "cortex-m7"
    assert get_target("rp2040").core.name == "cortex-m0plus" and get_target("nrf5340").core.name == "cortex-m33"
    t = get_target("cortex-m4", ram="256K", flash="1M")
    assert (t.ram, t.flash) == (256 * 1024, 1 << 20)
    assert parse_size("640KB") == 640 * 1024 and parse_size("2MiB") == 2 << 20 and parse_size("4096") == 4096
    with pytest.raises(InputError, match="256X"):
        get_target("cortex-m4", ram="256X")
    assert get_target("cortex-m4").has_dsp and not get_target("cortex-m3").has_dsp
    assert get_target("cortex-m55").has_mve and not get_target("cortex-m0plus").has_fpu
    for b in BOARDS.values():
        assert b.core in CORES
    machines = subprocess.run(["qemu-system-arm", "-M", "help"], capture_output=True, text=True).stdout
    for c in CORES.values():
        assert c.machine in MACHINES and c.machine in machines


def test_unknown_target_lists_the_choices(tmp_path, capsys, small_cnn):
    with pytest.raises(InputError) as exc:
        get_target("cortex-m5")
    assert "cortex-m5" in str(exc.value) and all(n in str(exc.value) for n in target_names())
    save_graph(small_cnn, tmp_path / "m.mcf")
    np.save(tmp_path / "c.npy", np.zeros((4, 8, 8, 2), np.float32))
    code, _, err = mcuforge(capsys, "deploy", tmp_path / "m.mcf", "--calib", tmp_path / "c.npy", "-o",
                            tmp_path / "lib", "--target", "esp32")
    assert code == 1 and "unknown target 'esp32'" in err and "nucleo-l4r5zi" in err
    assert not (tmp_path / "lib").exists()
    code, _, err = mcuforge(capsys, "deploy", tmp_path / "m.mcf", "--calib", tmp_path / "c.npy", "-o",
                            tmp_path / "lib")
    assert code == 0, err
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8, 2), np.float32))
    code, _, err = mcuforge(capsys, "run", tmp_path / "lib", "--input", tmp_path / "x.npy", "--output",
                            tmp_path / "y.npy", "--target", "cortex-m5")
    assert code == 1 and "unknown target 'cortex-m5'" in err
    assert "reference, host, cortex-m0plus" in err and "Traceback" not in err
    code, _, err = mcuforge(capsys, "bench", tmp_path / "lib", "--target", "m99")
    assert code == 1 and "unknown target 'm99'" in err


def test_codegen_context_sees_the_target(small_cnn, calib_nhwc):
    from mcuforge.quant.ptq import quantize

    q = quantize(small_cnn, [calib_nhwc])
    _, _, ctx = render_sources(q, target=get_target("cortex-m4"))
    assert ctx.target.has_dsp and ctx.target.name == "cortex-m4"
    _, _, ctx = render_sources(q)
    assert ctx.target.is_generic and not ctx.target.has_dsp


def test_missing_tools_say_which_package(tmp_path, monkeypatch, small_cnn, calib_nhwc):
    from mcuforge.quant.ptq import quantize

    generate(quantize(small_cnn, [calib_nhwc]), tmp_path / "lib")
    xs = [np.zeros((1, 8, 8, 2), np.int8)]
    monkeypatch.setenv("MCUFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolchainError, match="gcc-arm-none-eabi"):
        run_cortex_m(tmp_path / "lib", xs, "cortex-m4")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("arm-none-eabi-gcc", "arm-none-eabi-nm"):
        os.symlink(shutil.which(tool, path=os.defpath + ":/usr/bin"), bin_dir / tool)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(ToolchainError, match="qemu-system-arm"):
        run_cortex_m(tmp_path / "lib", xs, "cortex-m4")
