"""Compressed weight storage (ops/weight_storage.py, compress/storage.py, kernels/mf_wstore.c).

Every format (packed int4 and int2, codebook with 4- and 2-bit indices, sparse) on every weight op
(conv2d, grouped conv, depthwise in its three DSP forms, fully_connected), with odd channel counts
and sizes that leave packing tails: integer reference == host C (portable kernels, sanitizers) ==
host C for the Cortex-M4 (emulated DSP kernels, sanitizers) == QEMU Cortex-M4 == QEMU Cortex-M0+,
bit for bit. Plus the encodings, validation, serialization, flash accounting, the API and the CLI.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mcuforge import reference
from mcuforge.codegen import generate
from mcuforge.compress.storage import (StorageError, choose_sparse, quantize_weights_to_bits, share_weights,
                                       weight_flash_bytes)
from mcuforge.errors import GraphError
from mcuforge.ir import load_graph, save_graph
from mcuforge.ops.weight_storage import decode_weights, encode_weights
from mcuforge.targets.cortex_m import run_cortex_m
from mcuforge.targets.host import run_host
from mcuforge.targets.table import get_target

from _graphs import Builder, quantize_random, random_int8_inputs
from test_cli import float_model, mcuforge  # noqa: F401 (fixture)

M4, M0 = get_target("cortex-m4"), get_target("cortex-m0plus")
FORMATS = ("packed4", "packed2", "codebook16", "codebook3", "sparse")


pytestmark = pytest.mark.usefixtures("arm_toolchain_cache")


def _conv(b, rng, shape, o, k, groups=1, stride=(1, 1), dil=(1, 1), pads=None, act=False):
    x = b.input(shape)
    kh, kw = k
    pads = pads if pads is not None else [kh // 2, kh // 2, kw // 2, kw // 2]
    return b.op("conv2d", [x, b.const("w", rng.normal(size=(o, kh, kw, shape[3] // groups))),
                           b.const("b", rng.normal(size=o))],
                stride=list(stride), dilation=list(dil), pads=pads, groups=groups, act_min=0.0 if act else None)


def layer_zoo(seed: int, copies: int = 1):
    """Independent single-layer branches covering the kernels' forms and packing tails (`copies` sets)."""
    rng = np.random.default_rng(seed)
    b = Builder(f"ws{seed}")
    outs = []
    for _ in range(copies):
        outs += _branches(b, rng)
    return quantize_random(b.finish(*outs), rng, log_scales=[0.0], offsets=[0.3])


def _branches(b, rng) -> list[str]:
    outs = [
        _conv(b, rng, (1, 5, 7, 3), 5, (3, 3), act=True),                       # k = 27: odd tails, odd channels
        _conv(b, rng, (1, 4, 4, 8), 6, (1, 1)),                                 # k = 8: whole chunks
        _conv(b, rng, (1, 6, 5, 4), 6, (3, 3), groups=2, stride=(2, 1)),        # grouped, og = 3
        _conv(b, rng, (1, 6, 7, 5), 5, (3, 3), groups=5),                       # depthwise, 3-wide form
        _conv(b, rng, (1, 7, 4, 3), 3, (3, 1), groups=3),                       # depthwise, transposed form
        _conv(b, rng, (1, 5, 9, 2), 4, (1, 5), groups=2, dil=(1, 2)),           # depthwise x2, pairs form
        _conv(b, rng, (1, 1, 20, 6), 7, (1, 9), dil=(1, 2)),                    # 1-D, k = 54
    ]
    for k, o in ((37, 7), (16, 4), (300, 3)):                                   # fc: odd, whole, long rows
        x = b.input((1, k))
        outs.append(b.op("fully_connected", [x, b.const("w", rng.normal(size=(o, k))),
                                             b.const("b", rng.normal(size=o))]))
    return outs


def weight_nodes(q):
    return [n.name for n in q.nodes if n.op in ("conv2d", "fully_connected")]


def apply_format(q, fmt: str, rng, names=None):
    names = weight_nodes(q) if names is None else names
    if fmt.startswith("packed"):
        return quantize_weights_to_bits(q, {n: int(fmt[-1]) for n in names})
    if fmt.startswith("codebook"):
        return share_weights(q, {n: int(fmt[8:]) for n in names}, seed=1)
    g = q.copy()
    for i, n in enumerate(names):
        w = g.tensors[g.node(n).inputs[1]]
        keep = rng.random(w.shape) < (0.15 if i % 2 else 0.4)
        data = np.where(keep, w.data, 0).astype(np.int8)
        data[0] = 0  # an empty output channel
        if i % 10 == 9:  # the fc with rows of 300
            data[1, :290] = 0  # a run of more than 255 zeros: filler entries
            data[1, 295] = 5
        w.data = data
        g.node(n).attrs["weight_storage"] = {"format": "sparse"}
    g.validate()
    return g


def _compare(q, want, got, where):
    for name, w, c in zip(q.outputs, want, got):
        bad = np.argwhere(w != c)
        if bad.size:
            node = next(n for n in q.nodes if name in n.outputs)
            raise AssertionError(f"{where}: {node.name} ({node.op} {node.attrs}, weights "
                                 f"{q.tensors[node.inputs[1]].shape}): {len(bad)} of {w.size} values differ")


def test_every_format_bit_exact_on_host_and_qemu():
    """One graph, one set of branches per format (one build per runner keeps this fast)."""
    rng = np.random.default_rng(0)
    q = layer_zoo(0, copies=len(FORMATS))
    names = weight_nodes(q)
    per = len(names) // len(FORMATS)
    for i, fmt in enumerate(FORMATS):
        q = apply_format(q, fmt, rng, names[i * per:(i + 1) * per])
        kinds = {encode_weights(q.node(n), q).kind for n in names[i * per:(i + 1) * per]}
        assert kinds == {"packed4": {"packed4"}, "packed2": {"packed2"}, "codebook16": {"codebook4"},
                         "codebook3": {"codebook2"}, "sparse": {"sparse"}}[fmt]
    xs = random_int8_inputs(q, rng, 5)
    want = reference.run(q, xs, "int")
    with tempfile.TemporaryDirectory() as d:
        portable, dsp = Path(d) / "portable", Path(d) / "m4"
        generate(q, portable)
        generate(q, dsp, target=M4)
        src = (dsp / "model.c").read_text()
        # every DSP layer decodes its weights (conv/fc arranged words, depthwise blocks), no int8 copy
        assert src.count("mf_wdecode_arranged(") == 7 * len(FORMATS) and src.count("mf_wdecode_dwconv(") == 3 * len(FORMATS)
        assert "_wpk" not in src and "_wq[" not in src
        psrc = (portable / "model.c").read_text()
        assert psrc.count("mf_conv2d_ws_s8(") == 7 * len(FORMATS) and psrc.count("mf_fc_ws_s8(") == 3 * len(FORMATS)
        _compare(q, want, run_host(portable, xs, sanitize=True), "host portable")
        _compare(q, want, run_host(dsp, xs, sanitize=True), "host, emulated DSP")
        _compare(q, want, run_cortex_m(dsp, xs, M4), "QEMU cortex-m4")
        _compare(q, want, run_cortex_m(portable, xs, M0), "QEMU cortex-m0plus")


def test_encodings_round_trip_and_sizes():
    rng = np.random.default_rng(3)
    q = layer_zoo(3)
    for fmt in FORMATS:
        g = apply_format(q, fmt, rng)
        for n in weight_nodes(g):
            node, w = g.node(n), g.tensors[g.node(n).inputs[1]].data
            enc = encode_weights(node, g)
            assert np.array_equal(decode_weights(enc, w.shape), w), (fmt, n)
            size = w.size
            expect = {"packed4": -(-size // 2), "packed2": -(-size // 4)}.get(enc.kind)
            if expect is not None:
                assert enc.nbytes == expect
            if enc.kind.startswith("codebook"):
                assert enc.table.size == len(np.unique(w)) <= int(fmt[8:])
                assert enc.nbytes == enc.table.size + -(-size // (2 if enc.kind == "codebook4" else 4))
            if enc.kind == "sparse":
                assert enc.counts.size == w.shape[0] and enc.counts[0] == 0
                assert enc.nbytes == 2 * w.shape[0] + 2 * int(enc.counts.sum())
    g = apply_format(q, "sparse", rng)
    enc = encode_weights(g.node(weight_nodes(g)[-1]), g)
    assert np.count_nonzero((enc.data == 255) & (enc.table == 0)) >= 1  # the filler entry


def _array_bytes(src: str) -> dict[str, int]:
    sizes = {"int8_t": 1, "uint8_t": 1, "uint16_t": 2, "int32_t": 4, "uint32_t": 4}
    return {m.group(2): sizes[m.group(1)] * int(m.group(3))
            for m in re.finditer(r"static const (u?int\d+_t) (\w+)\[(\d+)\] =", src)}


@pytest.mark.parametrize("fmt", ["int8", "packed4", "codebook3", "sparse"])
def test_flash_accounting_equals_the_emitted_arrays(fmt, tmp_path):
    rng = np.random.default_rng(7)
    q = layer_zoo(7)
    if fmt != "int8":
        q = apply_format(q, fmt, rng)
    for target in (None, M4):
        lib = tmp_path / f"{fmt}_{target.name if target else 'portable'}"
        report = generate(q, lib, target=target)
        arrays = _array_bytes((lib / "model.c").read_text())
        flash = weight_flash_bytes(q, target)
        for n in weight_nodes(q):
            node = q.node(n)
            ident = "model_" + re.sub(r"\W", "_", n)
            if fmt != "int8":
                emitted = sum(v for k, v in arrays.items() if k in (ident + "_wdata", ident + "_wtable", ident + "_wcount"))
            elif target is None:
                emitted = arrays["model_" + re.sub(r"\W", "_", node.inputs[1])]
            elif node.attrs.get("groups", 1) > 1 and q.tensors[node.inputs[1]].shape[3] == 1:
                emitted = arrays[ident + "_wq"] - 16 * q.tensors[node.inputs[1]].shape[0]  # less the records
            else:
                emitted = arrays[ident + "_wpk"]
            assert flash[n] == emitted, (fmt, target, n)
        rows = {r["name"]: r for r in report["layers"]}
        for n in weight_nodes(q):
            node = q.node(n)
            bias = q.tensors[node.inputs[2]].nbytes
            stored = weight_flash_bytes(q)[n]
            assert rows[n]["weight_bytes"] == stored + bias


def test_low_bit_weights_rederive_scales_and_bias():
    rng = np.random.default_rng(11)
    q = layer_zoo(11)
    before = q.copy()
    names = weight_nodes(q)
    g = quantize_weights_to_bits(q, {names[0]: 4, names[1]: 2, names[-1]: 8})
    for n in names:  # the input graph is untouched
        assert np.array_equal(q.tensors[q.node(n).inputs[1]].data, before.tensors[before.node(n).inputs[1]].data)
    for n, bits in ((names[0], 4), (names[1], 2), (names[-1], 8)):
        node = g.node(n)
        w, bt = g.tensors[node.inputs[1]], g.tensors[node.inputs[2]]
        qmax = 2 ** (bits - 1) - 1
        assert np.abs(w.data).max() == qmax and np.all(np.abs(w.data.reshape(w.shape[0], -1)).max(axis=1) == qmax)
        sx = g.tensors[node.inputs[0]].quant.s
        assert np.allclose(bt.quant.scale, np.float32(sx) * w.quant.scale, rtol=1e-6)
        # real values close to the int8 ones: at most half a step of the new scale
        old = before.tensors[before.node(n).inputs[1]].float_data()
        step = w.quant.scale.reshape((-1,) + (1,) * (w.data.ndim - 1))
        assert np.all(np.abs(w.float_data() - old) <= 0.5 * step + 1e-6)
        assert np.allclose(bt.float_data(), before.tensors[before.node(n).inputs[2]].float_data(),
                           atol=float(bt.quant.scale.max()))
        assert node.attrs.get("weight_storage") == ({"format": "packed", "bits": bits} if bits < 8 else None)
    assert "weight_storage" not in g.node(names[2]).attrs
    # from float weights: the same as from the dequantized int8 ones when those are the float weights
    fw = {names[0]: before.tensors[before.node(names[0]).inputs[1]].float_data()}
    g2 = quantize_weights_to_bits(q, {names[0]: 4}, fw)
    assert np.array_equal(g2.tensors[g2.node(names[0]).inputs[1]].data, g.tensors[g.node(names[0]).inputs[1]].data)
    with pytest.raises(StorageError, match="'nope'"):
        quantize_weights_to_bits(q, {"nope": 4})
    with pytest.raises(StorageError, match="8, 4 or 2"):
        quantize_weights_to_bits(q, {names[0]: 3})
    with pytest.raises(StorageError, match="shape"):
        quantize_weights_to_bits(q, {names[0]: 4}, {names[0]: np.zeros(3)})


def test_share_weights_codebook_and_relevance():
    q = layer_zoo(5)
    n = weight_nodes(q)[-1]  # fc 300 -> 3
    w = q.tensors[q.node(n).inputs[1]].data
    g = share_weights(q, {n: 4})
    shared = g.tensors[g.node(n).inputs[1]].data
    assert len(np.unique(shared)) <= 4 and g.node(n).attrs["weight_storage"] == {"format": "codebook", "k": 4}
    # relevance as sample weights: the one relevant weight keeps its exact value
    target = np.unravel_index(np.argmax(w), w.shape)
    rel = np.full(w.shape, 1e-6)
    rel[target] = 1e6
    g2 = share_weights(q, {n: 4}, relevance={n: rel})
    assert g2.tensors[g2.node(n).inputs[1]].data[target] == w[target]
    with pytest.raises(StorageError, match="2..16"):
        share_weights(q, {n: 17})
    with pytest.raises(StorageError, match="relevance"):
        share_weights(q, {n: 4}, relevance={n: -rel})


def test_choose_sparse_only_where_smaller():
    rng = np.random.default_rng(2)
    q = layer_zoo(2)
    names = weight_nodes(q)
    g = q.copy()
    w = g.tensors[g.node(names[-1]).inputs[1]]
    w.data = np.where(rng.random(w.shape) < 0.3, w.data, 0).astype(np.int8)  # 70% zeros
    chosen = choose_sparse(g)
    marked = [n for n in names if chosen.node(n).attrs.get("weight_storage") == {"format": "sparse"}]
    assert marked == [names[-1]]
    assert weight_flash_bytes(chosen)[names[-1]] < w.size
    # 30% density in 2-byte entries does not beat packed 4-bit storage (half a byte per weight)
    p4 = quantize_weights_to_bits(g, {names[-1]: 4})
    assert choose_sparse(p4).node(names[-1]).attrs["weight_storage"] == {"format": "packed", "bits": 4}
    assert choose_sparse(g, min_saving=0.9).node(names[-1]).attrs.get("weight_storage") is None


def test_validation_names_the_node_and_serialization_round_trips(tmp_path):
    q = layer_zoo(4)
    names = weight_nodes(q)
    g = quantize_weights_to_bits(q, {names[0]: 4})
    g = share_weights(g, {names[1]: 3})
    g.node(names[2]).attrs["weight_storage"] = {"format": "sparse"}
    save_graph(g, tmp_path / "g.mcf")
    back = load_graph(tmp_path / "g.mcf")
    for n in names[:3]:
        assert back.node(n).attrs["weight_storage"] == g.node(n).attrs["weight_storage"]
        assert np.array_equal(back.tensors[back.node(n).inputs[1]].data, g.tensors[g.node(n).inputs[1]].data)
    cases = [
        (names[0], lambda w: w.__setitem__((0, 0, 0, 0), 8), {"format": "packed", "bits": 4}, "outside \\[-8, 7\\]"),
        (names[0], lambda w: None, {"format": "packed", "bits": 2}, "outside \\[-2, 1\\]"),
        (names[0], lambda w: None, {"format": "packed", "bits": 3}, "bits 4 or 2"),
        (names[1], lambda w: None, {"format": "codebook", "k": 1}, "distinct values, more than the declared codebook of 1"),
        (names[1], lambda w: None, {"format": "codebook", "k": 17}, "1..16"),
        (names[1], lambda w: None, {"format": "zip"}, "'format' one of"),
        (names[1], lambda w: None, {"format": "sparse", "k": 2}, "takes only"),
    ]
    for n, damage, storage, message in cases:
        bad = g.copy()
        damage(bad.tensors[bad.node(n).inputs[1]].data)
        bad.node(n).attrs["weight_storage"] = storage
        with pytest.raises(GraphError, match=f"node '{n}'.*{message}"):
            bad.validate()
        save_graph(bad, tmp_path / "bad.mcf")
        with pytest.raises(GraphError, match=f"node '{n}'"):
            load_graph(tmp_path / "bad.mcf")
    b = Builder("other")
    other = quantize_random(b.finish(b.op("clamp", [b.input((1, 4))], min=0.0, max=6.0)), np.random.default_rng(0))
    other.nodes[0].attrs["weight_storage"] = {"format": "int8"}
    with pytest.raises(GraphError, match="node 'clamp'.*conv2d and fully_connected only"):
        other.validate()


def test_cli_deploy_with_compressed_weights(tmp_path, capsys, float_model):  # noqa: F811
    model, calib = float_model
    lib = tmp_path / "lib"
    code, out, err = mcuforge(capsys, "deploy", model, "--calib", calib, "-o", lib, "--weight-bits", "conv=4,fc=2",
                              "--target", "cortex-m4")
    assert code == 0, err
    assert "packed 4-bit" in out and "packed 2-bit" in out and "less than int8" in out
    g = load_graph(lib / "model.mcf")
    assert g.node("conv").attrs["weight_storage"] == {"format": "packed", "bits": 4}
    x = np.random.default_rng(0).integers(-128, 128, size=(4, 8, 8, 2)).astype(np.int8)
    want = reference.run(g, [x], "int")
    assert np.array_equal(run_cortex_m(lib, [x], M4)[0], want[0])
    code, out, err = mcuforge(capsys, "deploy", model, "--calib", calib, "-o", tmp_path / "lib2",
                              "--share-weights", "4", "--sparse", "auto")
    assert code == 0, err
    g = load_graph(tmp_path / "lib2" / "model.mcf")
    assert g.node("fc").attrs["weight_storage"]["format"] in ("codebook", "sparse")
    for args, message in ((["--weight-bits", "3"], "8, 4 or 2"), (["--weight-bits", "conv1=4"], "'conv1'"),
                          (["--weight-bits", "conv=four"], "LAYER=N"), (["--share-weights", "40"], "2..16"),
                          (["--sparse", "maybe"], "auto or off")):
        out_dir = tmp_path / "bad"
        code, _, err = mcuforge(capsys, "deploy", model, "--calib", calib, "-o", out_dir, *args)
        assert code != 0 and "error:" in err and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and not out_dir.exists()
