"""TFLite import/export and TensorFlow Lite Micro as the oracle.

* The three MLPerf Tiny int8 models (../shared/models): the imported graph's integer
  reference == TFLM on the original file == host C (ASan/UBSan) on 100 random inputs,
  and the exported .tflite runs in TFLM with the same outputs.
* 300 random int8 graphs (tests/_tflite_graphs.py, fixed seeds): reference == TFLM on the
  exported file == host C, 100 random inputs each.
* TFLM's table kernels (LOGISTIC, TANH, RELU, RELU6, LEAKY_RELU) over all 256 int8 inputs.
* Errors: float models, unsupported ops, corrupt files; the CLI (inspect, deploy, export).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from mcuforge import reference
from mcuforge.codegen import generate
from mcuforge.errors import McuforgeError, ModelFormatError, UnsupportedOpError
from mcuforge.export import to_tflite_bytes
from mcuforge.frontends import load_model
from mcuforge.frontends.tflite import from_tflite_bytes, read_model, schema
from mcuforge.ir import Graph, QuantParams, Tensor
from mcuforge.targets.host import run_host
from mcuforge.tflm import run_tflm, tflm_arena

from _tflite_graphs import check_vs_tflm, compare, random_inputs, random_tflite_graph

MODELS_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "models"
MODELS = ["ad01_int8", "kws_ref_model", "pretrainedResnet_quant"]
N_INPUTS = 100
N_RANDOM_GRAPHS = 300
CHUNK = 10


def model_path(name: str) -> Path:
    p = (MODELS_DIR / f"{name}.tflite").resolve()
    if not p.is_file():
        pytest.skip(f"{p} not found (the MLPerf Tiny models live in ../shared/models)")
    return p


# --- the MLPerf Tiny models ------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_mlperf_model_bit_exact_with_tflm(name):
    path = model_path(name)
    g = load_model(path)
    assert g.is_quantized and g.meta["source"]["format"] == "tflite"
    xs = random_inputs(g, np.random.default_rng(1234), N_INPUTS)
    tflm = run_tflm(path, xs)
    ref = reference.run(g, xs, "int")
    for out, r, t in zip(g.outputs, ref, tflm):
        compare(out, r, t, f"{name}: reference vs TFLM", g)
    with tempfile.TemporaryDirectory() as d:
        report = generate(g, Path(d) / "lib")
        cs = run_host(Path(d) / "lib", xs, sanitize=True)
    for out, r, c in zip(g.outputs, ref, cs):
        compare(out, r, c, f"{name}: reference vs host C", g)
    # export -> TFLM runs it with the same outputs; re-import gives the same graph semantics
    data = to_tflite_bytes(g)
    for out, t, e in zip(g.outputs, tflm, run_tflm(data, xs)):
        compare(out, t.reshape(e.shape), e, f"{name}: TFLM(original) vs TFLM(exported)", g)
    g2 = from_tflite_bytes(data)
    assert [n.op for n in g2.nodes] == [n.op for n in g.nodes]
    # memory: mcuforge's arena never exceeds TFLM's
    assert report["memory"]["arena_bytes"] <= tflm_arena(path)["total"]


def test_mlperf_models_import_structure():
    g = load_model(model_path("kws_ref_model"))
    ops = [n.op for n in g.nodes]
    assert ops.count("conv2d") == 9 and "avg_pool2d" in ops and ops[-1] == "softmax"
    dw = [n for n in g.nodes if n.op == "conv2d" and n.attrs["groups"] > 1]
    assert len(dw) == 4 and all(g.tensors[n.inputs[1]].shape[3] == 1 for n in dw)
    assert g.meta["io"][g.inputs[0]]["torch_shape"] == [1, 49, 10, 1]
    r = load_model(model_path("pretrainedResnet_quant"))
    assert [n.op for n in r.nodes].count("add") == 3


# --- random graphs ------------------------------------------------------------------------------

def _union(graphs: list[Graph]) -> Graph:
    """Disjoint union of graphs (one C library for several graphs: fewer compiler runs)."""
    u = Graph("union")
    for i, g in enumerate(graphs):
        ren = {t: f"g{i}_{t}" for t in g.tensors}
        for t, tensor in g.tensors.items():
            u.add_tensor(Tensor(ren[t], tensor.shape, tensor.dtype, tensor.quant, tensor.data))
        for n in g.nodes:
            u.add_node(n.op, [ren[t] if t else t for t in n.inputs], [ren[t] for t in n.outputs],
                       name=f"g{i}_{n.name}", **n.attrs)
        u.inputs += [ren[t] for t in g.inputs]
        u.outputs += [ren[t] for t in g.outputs]
    u.validate()
    return u


@pytest.mark.parametrize("chunk", range(N_RANDOM_GRAPHS // CHUNK))
def test_random_graphs_bit_exact_with_tflm(chunk):
    """reference == TFLM(exported .tflite) per graph; host C (sanitized) on the chunk's union."""
    graphs, inputs, wants = [], [], []
    for seed in range(chunk * CHUNK, (chunk + 1) * CHUNK):
        q = random_tflite_graph(seed)
        xs = random_inputs(q, np.random.default_rng(seed), N_INPUTS)
        wants += check_vs_tflm(q, xs, host=False)
        graphs.append(q)
        inputs += xs
    u = _union(graphs)
    with tempfile.TemporaryDirectory() as d:
        generate(u, Path(d) / "lib")
        got = run_host(Path(d) / "lib", inputs, sanitize=True)
    for name, w, c in zip(u.outputs, wants, got):
        compare(name, w, c, "reference vs host C", u)


def test_random_graph_check_detects_a_difference():
    """The oracle comparison is not vacuous: a one-off change in a zero point is caught."""
    q = random_tflite_graph(3)
    xs = random_inputs(q, np.random.default_rng(3), 20)
    want = reference.run(q, xs, "int")
    data = bytearray(to_tflite_bytes(q))
    m = read_model(bytes(data))
    out_t = m.subgraphs[0].tensors[int(m.subgraphs[0].outputs[0])]
    out_t.quantization.zeroPoint = [int(out_t.quantization.zeroPoint[0]) + (1 if out_t.quantization.zeroPoint[0] < 0
                                                                            else -1)]
    import flatbuffers

    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    got = run_tflm(bytes(b.Output()), xs)[0].reshape(want[0].shape)
    assert np.any(got != want[0])


# --- TFLM table kernels over all 256 int8 values ----------------------------------------------------

def _table_graph(op: str, sx: float, zx: int, sy: float, zy: int, **attrs) -> Graph:
    g = Graph(op)
    g.add_tensor(Tensor("x", (1, 256), "int8", QuantParams.per_tensor(sx, zx)))
    g.add_tensor(Tensor("y", (1, 256), "int8", QuantParams.per_tensor(sy, zy)))
    g.inputs, g.outputs = ["x"], ["y"]
    g.add_node(op, ["x"], ["y"], name=op, table_method="tflm", **attrs)
    g.validate()
    return g


@pytest.mark.parametrize("kind", ["sigmoid", "tanh", "relu", "relu6", "leaky_relu", "quantize"])
def test_tflm_tables_all_int8_values(kind):
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
    x = np.arange(-128, 128, dtype=np.int64).astype(np.int8).reshape(1, 256)
    for _ in range(25):
        sx = float(np.float32(10.0 ** rng.uniform(-3, 0.5)))
        zx = int(rng.integers(-128, 128))
        sy, zy = float(np.float32(sx * 2.0 ** rng.uniform(-2, 2))), int(rng.integers(-128, 128))
        attrs = {}
        if kind == "sigmoid":
            sy, zy = 1 / 256, -128
        elif kind == "tanh":
            sy, zy = 1 / 128, 0
        elif kind == "relu":
            attrs = {"min": 0.0, "max": None, "tflm_op": "RELU"}
        elif kind == "relu6":
            sy, zy = sx, zx
            attrs = {"min": 0.0, "max": 6.0, "tflm_op": "RELU6"}
        elif kind == "leaky_relu":
            attrs = {"alpha": float(np.float32(rng.uniform(0.01, 0.9)))}
        op = {"relu": "clamp", "relu6": "clamp"}.get(kind, kind)
        if kind == "quantize":
            g = Graph(op)
            g.add_tensor(Tensor("x", (1, 256), "int8", QuantParams.per_tensor(sx, zx)))
            g.add_tensor(Tensor("y", (1, 256), "int8", QuantParams.per_tensor(sy, zy)))
            g.inputs, g.outputs = ["x"], ["y"]
            g.add_node("quantize", ["x"], ["y"], name="q")
        else:
            g = _table_graph(op, sx, zx, sy, zy, **attrs)
        if kind == "relu6" and int(np.round(np.float32(6.0) / np.float32(sx))) + zx > 127:
            continue  # TFLM refuses RELU6 when 6.0 is not representable
        want = run_tflm(to_tflite_bytes(g), [x])[0].reshape(1, 256)
        got = reference.run(g, [x], "int")[0]
        compare("y", got, want, f"{kind} table (s_x {sx}, zp_x {zx}, s_y {sy}, zp_y {zy})", g)


@pytest.mark.parametrize("seed", range(12))
def test_pad_and_mean_any_rank(seed):
    """pad and mean on rank 2..4 tensors, every axis combination: reference == TFLM == host C."""
    rng = np.random.default_rng(seed)
    rank = 2 + seed % 3
    shape = (1,) + tuple(int(d) for d in rng.integers(1, 7, size=rank - 1))
    g = Graph(f"pm{seed}")
    qx = QuantParams.per_tensor(float(np.float32(10.0 ** rng.uniform(-2, 1))), int(rng.integers(-128, 128)))
    g.add_tensor(Tensor("x", shape, "int8", qx))
    pads = [0, 0] + [int(v) for v in rng.integers(0, 3, size=2 * (rank - 1))]
    g.add_tensor(Tensor("p", tuple(d + pads[2 * i] + pads[2 * i + 1] for i, d in enumerate(shape)), "int8", qx))
    g.add_node("pad", ["x"], ["p"], name="pad", pads=pads, value=float(rng.choice([0.0, rng.normal()])))
    axes = sorted({int(a) for a in rng.choice(np.arange(1, rank), size=int(rng.integers(1, rank)))})
    keep = bool(seed % 2)
    ps = g.tensors["p"].shape
    mshape = tuple(1 if d in axes else s for d, s in enumerate(ps)) if keep else \
        tuple(s for d, s in enumerate(ps) if d not in axes)
    qy = qx if seed % 4 == 0 else QuantParams.per_tensor(float(np.float32(qx.s * 2.0 ** rng.uniform(-2, 2))),
                                                        int(rng.integers(-128, 128)))
    g.add_tensor(Tensor("m", mshape, "int8", qy))
    g.add_node("mean", ["p"], ["m"], name="mean", axes=axes, keepdims=keep)
    g.inputs, g.outputs = ["x"], ["m", "p"]
    g.validate()
    check_vs_tflm(g, random_inputs(g, rng, N_INPUTS))


# --- errors -------------------------------------------------------------------------------------------

def _exported(name="kws_ref_model") -> bytes:
    return model_path(name).read_bytes()


def _repack(model) -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_float_model_is_refused_with_a_hint():
    fb = schema()
    m = read_model(_exported("ad01_int8"))
    sg = m.subgraphs[0]
    for t in sg.tensors:
        if t.type == fb.TensorType.INT8 and (m.buffers[t.buffer].data is None or len(m.buffers[t.buffer].data) == 0):
            t.type = fb.TensorType.FLOAT32
            t.quantization = None
    with pytest.raises(ModelFormatError, match="float TFLite model.*quantize it to int8 first.*--calib"):
        from_tflite_bytes(_repack(m), where="float.tflite")


def test_unsupported_op_names_op_and_index():
    fb = schema()
    m = read_model(_exported("ad01_int8"))
    m.operatorCodes[0].builtinCode = fb.BuiltinOperator.HARD_SWISH
    m.operatorCodes[0].deprecatedBuiltinCode = fb.BuiltinOperator.HARD_SWISH
    with pytest.raises(UnsupportedOpError, match=r"operator 0 \(HARD_SWISH\) is not supported"):
        from_tflite_bytes(_repack(m), where="hs.tflite")


def test_corrupt_and_foreign_files(tmp_path):
    p = tmp_path / "bad.tflite"
    p.write_bytes(b"\x00" * 4 + b"TFL3" + b"\xff" * 40)
    with pytest.raises(ModelFormatError):
        load_model(p)
    p.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ModelFormatError, match="not a TFLite flatbuffer"):
        load_model(p)
    with pytest.raises(ModelFormatError, match="does not exist"):
        load_model(tmp_path / "missing.tflite")


def test_export_refuses_what_tflite_cannot_express():
    g = _table_graph("sigmoid", 0.05, 3, 0.01, 0)
    g.nodes[0].attrs.pop("table_method")  # float table for output (0.01, 0): TFLM's LOGISTIC assumes (1/256, -128)
    with pytest.raises(UnsupportedOpError, match="node 'sigmoid'.*LOGISTIC"):
        to_tflite_bytes(g)
    g = _table_graph("abs", 0.05, 3, 0.05, -128)
    with pytest.raises(McuforgeError, match="node 'abs'"):
        to_tflite_bytes(g)


# --- float boundary: QUANTIZE / DEQUANTIZE at the graph's edges ----------------------------------

def test_float_io_boundary_round_trip():
    g = load_model(model_path("ad01_int8"))
    g.meta["io"][g.inputs[0]]["source_dtype"] = "float32"
    g.meta["io"][g.outputs[0]]["source_dtype"] = "float32"
    data = to_tflite_bytes(g)
    m = read_model(data)
    fb = schema()
    sg = m.subgraphs[0]
    assert sg.tensors[int(sg.inputs[0])].type == fb.TensorType.FLOAT32
    g2 = from_tflite_bytes(data)
    assert g2.meta["io"][g2.inputs[0]]["source_dtype"] == "float32"
    assert g2.meta["io"][g2.outputs[0]]["source_dtype"] == "float32"
    assert [n.op for n in g2.nodes] == [n.op for n in g.nodes]
    q = g.tensors[g.inputs[0]].quant
    xi = random_inputs(g, np.random.default_rng(5), 10)[0]
    xf = q.dequantize(xi)  # exactly representable: TFLM's QUANTIZE gives xi back
    yf = run_tflm(data, [xf])[0]
    want = g.tensors[g.outputs[0]].quant.dequantize(reference.run(g, [xi], "int")[0])
    np.testing.assert_array_equal(yf.reshape(want.shape), want)


# --- CLI ---------------------------------------------------------------------------------------------

def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mcuforge", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_inspect_deploy_export(tmp_path):
    path = model_path("ad01_int8")
    r = _cli("inspect", str(path))
    assert r.returncode == 0, r.stderr
    assert "fully_connected" in r.stdout and "ad01_int8 (int8)" in r.stdout
    r = _cli("deploy", str(path), "-o", str(tmp_path / "lib"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "ad.tflite"
    r = _cli("export", str(tmp_path / "lib"), "--format", "tflite", "-o", str(out))
    assert r.returncode == 0, r.stderr
    g = load_model(path)
    xs = random_inputs(g, np.random.default_rng(7), 8)
    np.testing.assert_array_equal(run_tflm(out, xs)[0], run_tflm(path, xs)[0])
    np.save(tmp_path / "x.npy", xs[0])
    r = _cli("run", str(tmp_path / "lib"), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"),
             "--target", "reference")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), reference.run(g, xs, "int")[0])


def test_cli_errors(tmp_path):
    bad = tmp_path / "m.tflite"
    bad.write_bytes(b"garbage")
    r = _cli("inspect", str(bad))
    assert r.returncode == 1 and "error:" in r.stderr and "not a TFLite flatbuffer" in r.stderr
    r = _cli("export", str(bad), "-o", str(tmp_path / "o.tflite"))
    assert r.returncode == 1 and "error:" in r.stderr
