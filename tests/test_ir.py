"""The IR: .mcf save/load round trips, validation errors that name the culprit, corrupt files."""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcuforge import reference
from mcuforge.codegen import generate
from mcuforge.errors import GraphError, ModelFormatError, UnsupportedOpError
from mcuforge.ir import Graph, Node, QuantParams, Tensor, load_graph, save_graph

from _graphs import Builder, quantize_random, random_graph


def _plain(v):
    """JSON's view of a value: tuples are lists, numpy scalars/arrays are Python values."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, np.generic):
        return v.item()
    return v


def assert_same_graph(a: Graph, b: Graph) -> None:
    assert (a.name, a.inputs, a.outputs) == (b.name, b.inputs, b.outputs)
    assert _plain(a.meta) == b.meta
    assert list(a.tensors) == list(b.tensors)
    for name, ta in a.tensors.items():
        tb = b.tensors[name]
        assert (ta.shape, ta.dtype) == (tb.shape, tb.dtype), name
        if ta.quant is None:
            assert tb.quant is None, name
        else:
            assert ta.quant.same_as(tb.quant), (name, ta.quant, tb.quant)
            assert tb.quant.scale.dtype == np.float32 and tb.quant.zero_point.dtype == np.int64
        if ta.data is None:
            assert tb.data is None, name
        else:
            assert tb.data.dtype == ta.data.dtype and np.array_equal(ta.data, tb.data), name
    assert len(a.nodes) == len(b.nodes)
    for na, nb in zip(a.nodes, b.nodes):
        assert (na.name, na.op, na.inputs, na.outputs) == (nb.name, nb.op, nb.inputs, nb.outputs)
        assert _plain(na.attrs) == nb.attrs, na.name


def _inputs(g, seed, n=5):
    rng = np.random.default_rng(seed)
    if g.is_quantized:
        return [rng.integers(-128, 128, size=(n,) + g.tensors[t].shape[1:]).astype(np.int8) for t in g.inputs]
    return [rng.normal(size=(n,) + g.tensors[t].shape[1:]).astype(np.float32) for t in g.inputs]


# --- round trips ------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), quantized=st.booleans(), per_channel_dense=st.booleans())
def test_random_graph_round_trip(tmp_path, seed, quantized, per_channel_dense):
    g = random_graph(seed)
    if quantized:
        g = quantize_random(g, np.random.default_rng(seed), per_channel_dense=per_channel_dense)
    path = tmp_path / f"g{seed}.mcf"
    save_graph(g, path)
    h = load_graph(path)
    assert_same_graph(g, h)
    xs = _inputs(g, seed)
    for mode in (["int", "float"] if quantized else ["float"]):
        for ya, yb in zip(reference.run(g, xs, mode), reference.run(h, xs, mode)):
            assert ya.dtype == yb.dtype and np.array_equal(ya, yb)


def _model_with_everything():
    """Per-channel conv weights and int32 bias, per-tensor dense weights, odd attrs and meta."""
    rng = np.random.default_rng(0)
    b = Builder("everything")
    x = b.input((1, 6, 6, 3))
    y = b.op("conv2d", [x, b.const("w", rng.normal(size=(4, 3, 3, 3))), b.const("b", rng.normal(size=4))],
             stride=(1, 1), dilation=[1, 1], pads=[1, 1, 1, 1], groups=np.int64(1), act_min=0.0, act_max=None)
    y = b.op("avg_pool2d", [y], kernel=[2, 2], stride=[2, 2], pads=[0, 0, 0, 0], count_include_pad=True)
    y = b.op("reshape", [y], shape=[1, 36])
    y = b.op("fully_connected", [y, b.const("w2", rng.normal(size=(5, 36)))], act_min=-1.5, act_max=2.25)
    y = b.op("softmax", [y], beta=0.5)
    g = b.finish(y)
    g.meta = {"source": "tést ✓", "io_layout": {"x": "NHWC"}, "version": np.int64(3),
              "ratio": np.float32(0.25), "list": (1, 2.5, None, True), "array": np.arange(3)}
    q = quantize_random(g, rng, log_scales=[0.0], method="minmax", per_channel_dense=False)
    return g, q


def test_round_trip_keeps_every_detail(tmp_path):
    g, q = _model_with_everything()
    for graph, name in ((g, "float.mcf"), (q, "int8.mcf")):
        save_graph(graph, tmp_path / name)
        back = load_graph(tmp_path / name)
        assert_same_graph(graph, back)
    back = load_graph(tmp_path / "int8.mcf")
    w, bias, w2 = back.tensors["w"], back.tensors["b"], back.tensors["w2"]
    assert w.dtype == "int8" and w.quant.axis == 0 and w.quant.scale.shape == (4,)
    assert bias.dtype == "int32" and bias.quant.axis == 0 and bias.data.dtype == np.int32
    assert w2.dtype == "int8" and w2.quant.axis is None and w2.quant.scale.shape == (1,)
    assert back.meta["quantization"]["method"] == "minmax"
    assert back.meta["source"] == "tést ✓" and back.meta["list"] == [1, 2.5, None, True]
    assert back.nodes[0].attrs["stride"] == [1, 1] and back.nodes[0].attrs["act_max"] is None
    assert back.nodes[1].attrs["count_include_pad"] is True
    xs = _inputs(q, 1, n=8)
    for ya, yb in zip(reference.run(q, xs, "int"), reference.run(back, xs, "int")):
        assert np.array_equal(ya, yb)
    # A second round trip is byte-for-byte stable in content.
    save_graph(back, tmp_path / "again.mcf")
    assert_same_graph(back, load_graph(tmp_path / "again.mcf"))


def test_generated_library_carries_the_graph(tmp_path):
    _, q = _model_with_everything()
    generate(q, tmp_path / "lib")
    assert_same_graph(q, load_graph(tmp_path / "lib" / "model.mcf"))


# --- validation ----------------------------------------------------------------------------------

def _small(quantized=True):
    rng = np.random.default_rng(0)
    b = Builder("small")
    x = b.input((1, 5, 5, 2))
    c = b.op("conv2d", [x, b.const("w", rng.normal(size=(3, 3, 3, 2))), b.const("b", rng.normal(size=3))],
             stride=[1, 1], dilation=[1, 1], pads=[1, 1, 1, 1], groups=1)
    s = b.op("sigmoid", [c])
    p = b.op("max_pool2d", [s], kernel=[2, 2], stride=[2, 2], pads=[0, 0, 0, 0])
    g = b.finish(p)
    return quantize_random(g, rng, log_scales=[0.0]) if quantized else g


def _expect(g, exc, *fragments):
    with pytest.raises(exc) as info:
        g.validate()
    msg = str(info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


def test_valid_graphs_validate():
    _small(False).validate()
    _small(True).validate()


def test_unknown_op_names_node_and_op():
    g = _small()
    g.nodes[1].op = "frobnicate"
    msg = _expect(g, UnsupportedOpError, "'sigmoid'", "frobnicate", "not supported")
    assert "conv2d" in msg  # lists what is supported


def test_shape_mismatch_names_node_and_shapes():
    g = _small(False)
    out = g.nodes[0].outputs[0]
    g.tensors[out].shape = (1, 5, 5, 4)
    _expect(g, GraphError, "'conv2d'", f"'{out}'", "(1, 5, 5, 4)", "(1, 5, 5, 3)")


def test_dangling_input():
    g = _small()
    g.nodes[1].inputs = ["nowhere"]
    _expect(g, GraphError, "'sigmoid'", "unknown tensor 'nowhere'")


def test_bad_order_and_cycle():
    g = _small()
    g.nodes[0], g.nodes[1] = g.nodes[1], g.nodes[0]
    _expect(g, GraphError, "'sigmoid'", "before it is computed")
    fixed = g.copy()
    fixed.toposort()
    fixed.validate()
    assert [n.op for n in fixed.nodes] == ["conv2d", "sigmoid", "max_pool2d"]
    # A real cycle: conv reads the pool's output.
    g = _small(False)
    g.nodes[0].inputs[0] = g.nodes[2].outputs[0]
    _expect(g, GraphError, "before it is computed")
    with pytest.raises(GraphError, match="cycle"):
        g.toposort()


def test_per_channel_scale_count_mismatch():
    g = _small()
    w = g.tensors["w"]
    w.quant = QuantParams(np.ones(2, np.float32), np.zeros(2, np.int64), axis=0)
    _expect(g, GraphError, "'w'", "axis 0", "2 scales", "(3, 3, 3, 2)")
    w.quant = QuantParams(np.ones(3, np.float32), np.zeros(3, np.int64), axis=4)
    _expect(g, GraphError, "'w'", "axis 4")


def test_activation_without_quantization_in_a_quantized_graph():
    g = _small()
    act = g.nodes[0].outputs[0]
    g.tensors[act].quant = None
    _expect(g, GraphError, f"'{act}'", "int8", "no quantization parameters")
    g = _small()
    g.tensors[act].quant = QuantParams(np.ones(3, np.float32), np.zeros(3, np.int64), axis=3)
    _expect(g, GraphError, f"'{act}'", "per tensor")


@pytest.mark.parametrize("case", [
    "no inputs", "no outputs", "unknown output", "output never computed", "constant input",
    "written twice", "duplicate node name", "arity", "groups", "bias shape", "pool quant",
    "softmax quant", "concat batch axis", "transpose perm", "reshape size", "broadcast",
])
def test_more_validation_errors(case):
    g = _small()
    x, c, s, p = g.inputs[0], *[n.outputs[0] for n in g.nodes]
    conv, sig, pool = g.nodes
    if case == "no inputs":
        g.inputs = []
        _expect(g, GraphError, "no inputs")
    elif case == "no outputs":
        g.outputs = []
        _expect(g, GraphError, "no outputs")
    elif case == "unknown output":
        g.outputs = ["ghost"]
        _expect(g, GraphError, "'ghost'")
    elif case == "output never computed":
        g.add_tensor(Tensor("orphan", (1, 2), "int8", QuantParams.per_tensor(0.1)))
        g.outputs.append("orphan")
        _expect(g, GraphError, "'orphan'", "never computed")
    elif case == "constant input":
        g.inputs = ["w"]
        _expect(g, GraphError, "'w'", "constant")
    elif case == "written twice":
        sig.outputs = [c]
        _expect(g, GraphError, f"'{c}'", "more than one")
    elif case == "duplicate node name":
        sig.name = conv.name
        _expect(g, GraphError, f"'{conv.name}'", "twice")
    elif case == "arity":
        sig.inputs = [c, c]
        _expect(g, GraphError, "'sigmoid'", "takes 1..1 inputs, got 2")
    elif case == "groups":
        conv.attrs["groups"] = 2
        _expect(g, GraphError, "'conv2d'", "groups=2")
    elif case == "bias shape":
        g.tensors["b"] = Tensor("b", (4,), "int32", QuantParams.per_tensor(1.0), np.zeros(4, np.int32))
        _expect(g, GraphError, "'conv2d'", "bias")
    elif case == "pool quant":
        g.tensors[p].quant = QuantParams.per_tensor(0.5, 3)
        _expect(g, GraphError, "'max_pool2d'", "share quantization")
    elif case == "softmax quant":
        g.add_tensor(Tensor("sm", g.tensors[p].shape, "int8", QuantParams.per_tensor(0.1, 0)))
        g.nodes.append(Node("sm_node", "softmax", [p], ["sm"], {}))
        g.outputs = ["sm"]
        _expect(g, GraphError, "'sm_node'", "1/256", "-128")
    elif case == "concat batch axis":
        g.add_tensor(Tensor("cat", (2, 2, 2, 3), "int8", g.tensors[p].quant))
        g.nodes.append(Node("cat_node", "concat", [p, p], ["cat"], {"axis": 0}))
        _expect(g, GraphError, "'cat_node'", "batch axis")
    elif case == "transpose perm":
        g.add_tensor(Tensor("tr", (2, 1, 2, 3), "int8", g.tensors[p].quant))
        g.nodes.append(Node("tr_node", "transpose", [p], ["tr"], {"perm": [1, 0, 2, 3]}))
        _expect(g, GraphError, "'tr_node'", "permutation")
    elif case == "reshape size":
        g.add_tensor(Tensor("rs", (1, 13), "int8", g.tensors[p].quant))
        g.nodes.append(Node("rs_node", "reshape", [p], ["rs"], {"shape": [1, 13]}))
        _expect(g, GraphError, "'rs_node'", "cannot reshape")
    elif case == "broadcast":
        g.add_tensor(Tensor("ad", (1, 5, 5, 3), "int8", QuantParams.per_tensor(0.1)))
        g.nodes.append(Node("ad_node", "add", [s, p], ["ad"], {}))
        _expect(g, GraphError, "'ad_node'", "do not broadcast")


def test_tensor_and_quant_constructors_reject_nonsense():
    with pytest.raises(GraphError, match="positive"):
        QuantParams.per_tensor(0.0)
    with pytest.raises(GraphError, match="positive"):
        QuantParams.per_tensor(float("nan"))
    with pytest.raises(GraphError, match="differ in shape"):
        QuantParams(np.ones(3, np.float32), np.zeros(2, np.int64), axis=0)
    with pytest.raises(GraphError, match="'t'.*does not match"):
        Tensor("t", (2, 3), "float32", None, np.zeros((3, 2)))
    with pytest.raises(GraphError, match="unknown dtype"):
        Tensor("t", (2,), "float16")
    g = Graph()
    g.add_tensor(Tensor("a", (1,)))
    with pytest.raises(GraphError, match="'a' is defined twice"):
        g.add_tensor(Tensor("a", (1,)))


# --- corrupt files --------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "ok.mcf"
    save_graph(_small(), path)
    return path


def _rewrite(path, doc=None, drop=(), **changes):
    """Re-pack an .mcf with graph.json edited (or replaced by raw text) and members dropped."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    if doc is None:
        d = json.loads(members["graph.json"])
        d.update(changes)
        doc = json.dumps(d)
    members["graph.json"] = doc
    out = path.with_name("bad.mcf")
    with zipfile.ZipFile(out, "w") as zf:
        for n, data in members.items():
            if n not in drop:
                zf.writestr(n, data)
    return out


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes(tmp_path, seed):
    rng = np.random.default_rng(seed)
    path = tmp_path / "noise.mcf"
    data = rng.integers(0, 256, size=int(rng.integers(0, 5000)), dtype=np.uint8).tobytes()
    if seed == 1:
        data = b"PK\x03\x04" + data  # looks like a zip at first
    path.write_bytes(data)
    with pytest.raises(ModelFormatError, match=re.escape(str(path))):
        load_graph(path)


def test_truncated_file(saved):
    raw = saved.read_bytes()
    for cut in (0, 10, len(raw) // 2, len(raw) - 5):
        saved.with_name("cut.mcf").write_bytes(raw[:cut])
        with pytest.raises(ModelFormatError):
            load_graph(saved.with_name("cut.mcf"))


def test_zip_without_graph_json(tmp_path, saved):
    with pytest.raises(ModelFormatError, match="graph.json"):
        load_graph(_rewrite(saved, drop=("graph.json",)))
    other = tmp_path / "other.mcf"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("model.json", "{}")
    with pytest.raises(ModelFormatError, match="graph.json"):
        load_graph(other)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_wrong_format_version(saved, version):
    with pytest.raises(ModelFormatError, match=f"version {version}.*not supported"):
        load_graph(_rewrite(saved, version=version))


def test_wrong_format_name(saved):
    with pytest.raises(ModelFormatError, match="not an mcuforge graph"):
        load_graph(_rewrite(saved, format="onnx"))


@pytest.mark.parametrize("doc", ["{not json", b"\xff\xfe\x00", "", '{"format": "mcuforge-graph", "version": 1}'])
def test_broken_graph_json(saved, doc):
    with pytest.raises(ModelFormatError, match="corrupt"):
        load_graph(_rewrite(saved, doc=doc))


def test_missing_or_broken_constant_data(saved):
    with zipfile.ZipFile(saved) as zf:
        data_member = next(n for n in zf.namelist() if n.startswith("data/"))
    with pytest.raises(ModelFormatError, match="corrupt"):
        load_graph(_rewrite(saved, drop=(data_member,)))
    with zipfile.ZipFile(saved) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    buf = io.BytesIO()
    np.save(buf, np.array([object()], dtype=object), allow_pickle=True)  # pickles are refused
    members[data_member] = buf.getvalue()
    bad = saved.with_name("pickle.mcf")
    with zipfile.ZipFile(bad, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    with pytest.raises(ModelFormatError, match="corrupt"):
        load_graph(bad)


def test_missing_path(tmp_path):
    with pytest.raises(ModelFormatError, match="no such file"):
        load_graph(tmp_path / "absent.mcf")
    with pytest.raises(ModelFormatError, match="no such file"):
        load_graph(tmp_path)  # a directory


def test_well_formed_file_with_an_invalid_graph_fails_validation(saved):
    with zipfile.ZipFile(saved) as zf:
        doc = json.loads(zf.read("graph.json"))
    doc["nodes"][1]["op"] = "frobnicate"
    with pytest.raises(UnsupportedOpError, match="frobnicate"):
        load_graph(_rewrite(saved, doc=json.dumps(doc)))


def test_damaged_mcf_files_raise_model_format_error(tmp_path):
    """Any single-byte corruption either still loads a valid graph or raises ModelFormatError."""
    import random

    from conftest import build_small_cnn
    from mcuforge.errors import ModelFormatError
    from mcuforge.ir import load_graph, save_graph

    good = tmp_path / "g.mcf"
    save_graph(build_small_cnn(), good)
    raw = good.read_bytes()
    rng = random.Random(0)
    refused = 0
    for _ in range(150):
        b = bytearray(raw)
        b[rng.randrange(len(b))] ^= 0xFF
        path = tmp_path / "damaged.mcf"
        path.write_bytes(bytes(b))
        try:
            load_graph(path)
        except ModelFormatError:
            refused += 1
    assert refused > 100


def test_scalar_constants_keep_rank_zero():
    import numpy as np

    from mcuforge.ir import Tensor

    t = Tensor("c", (), "float32", None, np.float32(2.0))
    assert t.shape == () and t.data.shape == () and t.size == 1
