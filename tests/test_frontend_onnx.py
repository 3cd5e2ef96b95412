"""The ONNX frontend: float models (IR float reference == onnxruntime), QDQ models
(mcuforge's integer reference ~ onnxruntime, host C == integer reference), errors."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from mcuforge import reference  # noqa: E402
from mcuforge.errors import ModelFormatError, QuantizationError, UnsupportedOpError  # noqa: E402
from mcuforge.frontends import from_ir_layout, load_model, to_ir_layout  # noqa: E402
from mcuforge.frontends.onnx import from_onnx_model, load_onnx  # noqa: E402
from mcuforge.quant.ptq import quantize  # noqa: E402
from test_frontend_torch import Lambda, conv1d_net, randomize_bn, small_cnn  # noqa: E402

torch.set_num_threads(1)
BATCH = 4


# --- helpers -----------------------------------------------------------------------------------------

def export(model: nn.Module, *shapes, opset: int = 13, dynamic: bool = True, fold: bool = True,
           seed: int = 0) -> onnx.ModelProto:
    """torch.onnx.export (the TorchScript exporter) of `model` in eval mode."""
    torch.manual_seed(seed)
    model = randomize_bn(model, seed)
    xs = tuple(torch.randn(*s) for s in shapes)
    names = [f"x{i}" for i in range(len(shapes))]
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, xs, f, dynamo=False, opset_version=opset, input_names=names,
                          dynamic_axes={n: {0: "N"} for n in names} if dynamic else None,
                          do_constant_folding=fold)
    return onnx.load_from_string(f.getvalue())


def session(model: onnx.ModelProto):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_ort(model: onnx.ModelProto, *xs: np.ndarray) -> list[np.ndarray]:
    s = session(model)
    feeds = {i.name: x for i, x in zip(s.get_inputs(), xs)}
    batch = s.get_inputs()[0].shape[0]
    if not isinstance(batch, int) or batch == xs[0].shape[0]:
        return s.run(None, feeds)
    outs = [s.run(None, {k: v[i:i + batch] for k, v in feeds.items()}) for i in range(0, xs[0].shape[0], batch)]
    return [np.concatenate(o) for o in zip(*outs)]


def run_ir(graph, *xs: np.ndarray, mode: str = "float") -> list[np.ndarray]:
    ins = [to_ir_layout(graph, name, x) for name, x in zip(graph.inputs, xs)]
    if mode == "int":
        ins = [graph.tensors[n].quant.quantize(x) for n, x in zip(graph.inputs, ins)]
    outs = reference.run(graph, ins, mode=mode)
    return [from_ir_layout(graph, name, y) for name, y in zip(graph.outputs, outs)]


def check_model(model: onnx.ModelProto, *shapes, atol: float = 1e-4, seed: int = 1, torch_model=None):
    """Import and compare the IR float reference with onnxruntime (or with the torch model
    it was exported from) on a batch of 4."""
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((BATCH, *s[1:])).astype(np.float32) for s in shapes]
    graph = from_onnx_model(model)
    graph.validate()
    for name in graph.activation_tensors():  # the IR describes one sample
        assert graph.tensors[name].shape[0] == 1, name
    if torch_model is None:
        ref = run_ort(model, *xs)
    else:
        with torch.no_grad():
            ref = torch_model(*map(torch.from_numpy, xs))
        ref = [r.numpy() for r in ((ref,) if isinstance(ref, torch.Tensor) else ref)]
    got = run_ir(graph, *xs)
    assert len(got) == len(ref)
    for r, y in zip(ref, got):
        assert y.shape == r.shape
        np.testing.assert_allclose(y, r, atol=atol * max(1.0, float(np.abs(r).max())), rtol=0)
    return graph


def check(model: nn.Module, *shapes, opset: int = 13, fold: bool = True, **kw):
    """Export a torch module; the IR float reference must match torch."""
    return check_model(export(model, *shapes, opset=opset, fold=fold), *shapes, torch_model=model.eval(), **kw)


def ops(graph) -> list[str]:
    return [n.op for n in graph.nodes]


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 13) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def vinfo(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def tensor(name: str, array: np.ndarray):
    return onnx.numpy_helper.from_array(np.asarray(array), name)


# --- single ops -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3),
    dict(kernel_size=3, padding=1, bias=False),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=4, padding="same"),  # asymmetric explicit pads
    dict(kernel_size=3, padding=2, dilation=2, groups=2),
])
def test_conv2d(kwargs):
    g = check(nn.Conv2d(4, 6, **kwargs), (BATCH, 4, 9, 11))
    assert ops(g) == ["conv2d"]


def test_conv2d_depthwise_and_conv1d():
    g = check(nn.Conv2d(8, 8, 3, padding=1, groups=8), (BATCH, 8, 6, 6))
    assert g.nodes[0].attrs["groups"] == 8
    for kw in (dict(kernel_size=5, stride=2, padding=2, bias=False), dict(kernel_size=3, padding="same", dilation=3),
               dict(kernel_size=3, groups=4)):
        g = check(nn.Conv1d(4, 8, **kw), (BATCH, 4, 20))
        assert ops(g) == ["conv2d"]
        assert g.tensors[g.inputs[0]].shape == (1, 1, 20, 4)  # N,C,L -> N,1,L,C


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("op", ["Conv", "MaxPool", "AveragePool"])
def test_auto_pad(auto_pad, op):
    rng = np.random.default_rng(0)
    inits, inputs = [], ["x"]
    attrs = dict(auto_pad=auto_pad, strides=[2, 2])
    if op == "Conv":
        inits = [tensor("w", rng.standard_normal((5, 3, 4, 3)).astype(np.float32)),
                 tensor("b", rng.standard_normal(5).astype(np.float32))]
        inputs += ["w", "b"]
        if auto_pad == "VALID":  # onnxruntime has no dilated SAME convolutions (torch checks those)
            attrs["dilations"] = [1, 2]
    else:
        attrs["kernel_shape"] = [3, 2]
    m = make_model([helper.make_node(op, inputs, ["y"], **attrs)], [vinfo("x", ["N", 3, 9, 11])],
                   [vinfo("y", ["N", "C", "H", "W"])], inits)
    check_model(m, (BATCH, 3, 9, 11))


def test_linear_gemm_and_matmul():
    g = check(nn.Linear(10, 7), (BATCH, 10))
    assert ops(g) == ["fully_connected"]
    check(nn.Linear(10, 7, bias=False), (BATCH, 10))
    g = check(nn.Linear(10, 7), (BATCH, 5, 10))  # MatMul + Add: the Add becomes the bias
    assert ops(g) == ["fully_connected"] and len(g.nodes[0].inputs) == 3


def test_gemm_attributes():
    rng = np.random.default_rng(0)
    w, c = rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal((1, 4)).astype(np.float32)
    m = make_model([helper.make_node("Gemm", ["x", "w", "c"], ["y"], alpha=0.5, beta=2.0, transB=0)],
                   [vinfo("x", ["N", 6])], [vinfo("y", ["N", "K"])], [tensor("w", w), tensor("c", c)])
    check_model(m, (BATCH, 6))


@pytest.mark.parametrize("act,op", [
    (nn.LeakyReLU(0.2), "leaky_relu"), (nn.Sigmoid(), "sigmoid"), (nn.Tanh(), "tanh"),
])
def test_unary(act, op):
    assert ops(check(act, (BATCH, 3, 5, 5))) == [op]


@pytest.mark.parametrize("act,lo,hi", [(nn.ReLU(), 0.0, None), (nn.ReLU6(), 0.0, 6.0),
                                       (nn.Hardtanh(-2.0, 3.0), -2.0, 3.0)])
@pytest.mark.parametrize("opset", [9, 13])  # Clip bounds as attributes (< 11) and as inputs
def test_clamps_fused(act, lo, hi, opset):
    g = check(nn.Sequential(nn.Conv2d(3, 4, 3), act), (BATCH, 3, 8, 8), opset=opset)
    assert ops(g) == ["conv2d"]
    assert (g.nodes[0].attrs["act_min"], g.nodes[0].attrs["act_max"]) == (lo, hi)
    g = check(act, (BATCH, 6), opset=opset)
    assert ops(g) == ["clamp"] and (g.nodes[0].attrs["min"], g.nodes[0].attrs["max"]) == (lo, hi)


@pytest.mark.parametrize("conv,bn,shape", [
    (nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), (BATCH, 3, 8, 8)),
    (nn.Conv1d(3, 6, 3), nn.BatchNorm1d(6), (BATCH, 3, 12)),
    (nn.Linear(7, 6), nn.BatchNorm1d(6), (BATCH, 7)),
])
def test_batch_norm_folded(conv, bn, shape):
    # do_constant_folding=False keeps BatchNormalization nodes in the ONNX graph
    model = export(nn.Sequential(conv, bn, nn.ReLU()), shape, fold=False)
    assert "BatchNormalization" in [n.op_type for n in model.graph.node]
    g = check_model(model, shape)
    assert len(g.nodes) == 1 and g.nodes[0].op in ("conv2d", "fully_connected")
    assert g.nodes[0].attrs["act_min"] == 0.0


@pytest.mark.parametrize("bn,shape", [(nn.BatchNorm2d(5), (BATCH, 5, 6, 6)), (nn.BatchNorm1d(5), (BATCH, 5, 9)),
                                      (nn.BatchNorm1d(5), (BATCH, 5))])
def test_standalone_batch_norm(bn, shape):
    g = check(bn, shape, fold=False)
    assert [n.attrs["groups"] for n in g.nodes if n.op == "conv2d"] == [5]


@pytest.mark.parametrize("pool", [
    nn.AvgPool2d(2), nn.AvgPool2d(3, stride=2, padding=1), nn.AvgPool2d(3, 2, 1, count_include_pad=False),
    nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1), nn.MaxPool2d((2, 3), stride=(1, 2)),
    nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1), nn.MaxPool2d(2, ceil_mode=True),
    nn.AvgPool1d(3, 2, 1, count_include_pad=False), nn.MaxPool1d(3, 2, 1), nn.AdaptiveAvgPool1d(1),
])
def test_pools(pool):
    shape = (BATCH, 3, 12) if "1d" in type(pool).__name__ else (BATCH, 3, 8, 6)
    g = check(pool, shape)
    assert ops(g) in (["avg_pool2d"], ["max_pool2d"])


def test_pool_unsupported_options():
    with pytest.raises(UnsupportedOpError, match="ceil_mode"):
        from_onnx_model(export(nn.MaxPool2d(3, 2, ceil_mode=True), (1, 3, 8, 8)))


def test_global_mean_is_avg_pool():
    g = check(Lambda(lambda s, x: x.mean((2, 3))), (BATCH, 4, 5, 6))  # ReduceMean, keepdims=0
    assert ops(g) == ["avg_pool2d", "reshape"]
    check(Lambda(lambda s, x: x.mean(-1, keepdim=True)), (BATCH, 4, 7))
    check(Lambda(lambda s, x: x.mean((2, 3), keepdim=True)), (BATCH, 4, 5, 6), opset=18)  # axes as an input
    with pytest.raises(UnsupportedOpError, match="mean over axes"):
        from_onnx_model(export(Lambda(lambda s, x: x.mean(1)), (2, 4, 5, 6)))


def test_softmax():
    assert ops(check(nn.Softmax(dim=1), (BATCH, 5, 3, 3))) == ["softmax"]
    check(nn.Softmax(dim=-1), (BATCH, 7))
    check(nn.Softmax(dim=-1), (BATCH, 5, 3, 3))
    check(nn.Softmax(dim=1), (BATCH, 5, 3, 3), opset=11)


def test_softmax_opset11_coerces_to_2d():
    # before opset 13, Softmax(axis=1) normalizes over all of C*H*W
    m = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=1)], [vinfo("x", ["N", 5, 3, 3])],
                   [vinfo("y", ["N", 5, 3, 3])], opset=11)
    check_model(m, (BATCH, 5, 3, 3))


def test_dropout_and_identity_vanish():
    g = check(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Identity(), nn.Linear(4, 3)), (BATCH, 4))
    assert ops(g) == ["fully_connected", "fully_connected"]


# --- layout, reshapes, constant folding ------------------------------------------------------------------

def test_flatten_needs_framework_element_order():
    g = check(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)), (BATCH, 3, 6, 6))
    assert ops(g) == ["conv2d", "reshape", "fully_connected"]  # the transpose is folded into the weights


@pytest.mark.parametrize("fn", [
    lambda s, x: x.view(x.size(0), -1),  # Shape -> Gather -> Unsqueeze -> Concat -> Reshape, folded
    lambda s, x: x.reshape(x.shape[0], 4, 18),
    lambda s, x: x.reshape(x.shape[0], 12, 2, 3).softmax(1),
    lambda s, x: torch.flatten(x, 2),
    lambda s, x: x.unsqueeze(2).squeeze(2) * 2.0,
    lambda s, x: x.permute(0, 2, 3, 1).reshape(x.shape[0], -1),
    lambda s, x: x.transpose(1, 2).softmax(-1),
])
def test_reshapes(fn):
    g = check(Lambda(fn), (BATCH, 4, 3, 6))
    assert set(ops(g)) <= {"reshape", "transpose", "softmax", "mul"}


def test_shape_arithmetic_folds_with_static_batch():
    model = export(Lambda(lambda s, x: s.l(x.view(x.size(0), -1)), l=nn.Linear(12, 3)), (2, 3, 4), dynamic=False)
    g = check_model(model, (2, 3, 4))
    assert ops(g) == ["reshape", "fully_connected"] or ops(g) == ["fully_connected"]


def test_reshape_across_batch_unsupported():
    with pytest.raises(UnsupportedOpError, match="batch"):
        from_onnx_model(export(Lambda(lambda s, x: x.reshape(-1, 6)), (2, 4, 3)))


def test_cat_mul_add_residual():
    m = Lambda(lambda s, x: torch.cat([s.a(x), s.b(x)], dim=1), a=nn.Conv2d(3, 4, 1), b=nn.Conv2d(3, 2, 3, padding=1))
    g = check(m, (BATCH, 3, 5, 5))
    assert [n.attrs["axis"] for n in g.nodes if n.op == "concat"] == [3]
    check(Lambda(lambda s, x: torch.cat([x, F.relu(x)], dim=-1)), (BATCH, 6))
    m = Lambda(lambda s, x: (x * 2.5 + 1.0) * s.scale - s.shift / 4 - x)
    m.register_buffer("scale", torch.randn(1, 3, 1, 1))
    m.register_buffer("shift", torch.randn(3, 1, 1))
    g = check(m, (BATCH, 3, 4, 5))
    assert set(ops(g)) <= {"mul", "add"}


def test_hard_activations_and_silu():
    check(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Hardswish()), (BATCH, 3, 5, 5), opset=14)
    check(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Hardsigmoid()), (BATCH, 3, 5, 5))
    check(nn.Sequential(nn.Linear(3, 4), nn.SiLU()), (BATCH, 3))


def test_two_inputs_two_outputs():
    m = Lambda(lambda s, x, y: (s.c(x).mean((2, 3)) + y, torch.sigmoid(y)), c=nn.Conv2d(3, 5, 3))
    g = check(m, (BATCH, 3, 6, 6), (BATCH, 5))
    assert len(g.inputs) == 2 and len(g.outputs) == 2
    assert set(g.meta["io"]) == set(g.inputs) | set(g.outputs)


# --- whole models ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [11, 13, 17, 20])
def test_small_cnn_opsets(opset):
    g = check(small_cnn(), (BATCH, 3, 12, 12), opset=opset)
    assert ops(g) == ["conv2d", "max_pool2d", "conv2d", "avg_pool2d", "reshape", "fully_connected"]
    # the same io record as the torch frontend: users feed NCHW arrays
    assert g.meta["io"][g.inputs[0]] == {"torch_shape": [1, 3, 12, 12], "perm": [0, 2, 3, 1],
                                         "ir_shape": [1, 12, 12, 3]}
    assert g.inputs == ["x0"] and g.meta["source"]["opset"] == opset


def test_opset_21():
    from onnx import version_converter

    model = version_converter.convert_version(export(small_cnn(), (BATCH, 3, 12, 12), opset=20), 21)
    check_model(model, (BATCH, 3, 12, 12))


def test_conv1d_net_and_depthwise_separable():
    g = check(conv1d_net(), (BATCH, 2, 32))
    assert "transpose" not in ops(g)

    def ds(cin, cout, stride):
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    m = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), *ds(8, 16, 1), *ds(16, 16, 2),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    g = check(m, (BATCH, 1, 16, 12))
    assert ops(g).count("conv2d") == 5 and len(g.nodes) == 8


def test_float_model_quantizes():
    m = randomize_bn(small_cnn(), seed=1)
    g = from_onnx_model(export(m, (1, 3, 12, 12), seed=1))
    calib = torch.randn(64, 3, 12, 12).numpy()
    q = quantize(g, to_ir_layout(g, g.inputs[0], calib))
    x = torch.randn(32, 3, 12, 12)
    y = q.tensors[q.outputs[0]].quant.dequantize(run_ir(q, x.numpy(), mode="int")[0])
    with torch.no_grad():
        ref = m(x).numpy()
    assert np.mean(np.argmax(y, 1) == np.argmax(ref, 1)) >= 0.8


# --- QDQ models (onnxruntime.quantization) ---------------------------------------------------------------------

class _Reader:
    def __init__(self, name: str, data: np.ndarray):
        self.it = iter([{name: data[i:i + 1]} for i in range(len(data))])

    def get_next(self):
        return next(self.it, None)


def qdq_model(tmp_path, model: onnx.ModelProto, calib: np.ndarray, per_channel: bool = True,
              activation: str = "QInt8", weight: str = "QInt8", **extra) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(_Reader, CalibrationDataReader):
        pass

    src, dst = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    onnx.save(model, src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(src), str(dst), Reader(model.graph.input[0].name, calib), quant_format=QuantFormat.QDQ,
                        activation_type=getattr(QuantType, activation), weight_type=getattr(QuantType, weight),
                        per_channel=per_channel, extra_options=extra or None)
    return onnx.load(dst)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        z = F.avg_pool2d(F.relu6(self.c2(y)) + y, 2)
        z = torch.sigmoid(z) * 0.5 + z
        return torch.softmax(self.fc(z.mean((2, 3))), -1)


def flatten_net():
    return nn.Sequential(nn.Conv2d(2, 6, 3), nn.Tanh(), nn.Flatten(), nn.Linear(6 * 6 * 6, 12), nn.LeakyReLU(0.1),
                         nn.Linear(12, 4))


QDQ_ZOO = {
    "small_cnn": (small_cnn, (1, 3, 12, 12)),
    "residual": (Residual, (1, 3, 8, 8)),
    "conv1d_net": (conv1d_net, (1, 2, 32)),
    "flatten_net": (flatten_net, (1, 2, 8, 8)),
}


def check_qdq(tmp_path, name: str, per_channel: bool = True, activation: str = "QInt8", host: bool = False):
    build, shape = QDQ_ZOO[name]
    rng = np.random.default_rng(0)
    float_model = export(build(), shape)
    calib = rng.standard_normal((32, *shape[1:])).astype(np.float32)
    qmodel = qdq_model(tmp_path, float_model, calib, per_channel, activation)
    g = from_onnx_model(qmodel, name=name)
    assert g.is_quantized and g.meta["quantization"]["method"] == "onnx-qdq"
    assert "requantized_constants" not in g.meta["quantization"]  # every weight taken as the model has it
    x = rng.standard_normal((64, *shape[1:])).astype(np.float32)
    yq = run_ir(g, x, mode="int")[0]
    oq = g.tensors[g.outputs[0]].quant
    ref = oq.quantize(to_ir_layout(g, g.outputs[0], run_ort(qmodel, x)[0]))
    ref = from_ir_layout(g, g.outputs[0], ref)
    diff = np.abs(yq.astype(np.int64) - ref)
    # onnxruntime computes in float and rounds half to even; mcuforge is TFLite's integer
    # arithmetic (pools round ties away from zero, softmax in fixed point, double rounding
    # where a requantization follows): outputs differ by an LSB here and there, never more than 2
    assert diff.max() <= 2, (name, diff.max(), np.mean(diff > 0))
    assert np.mean(diff > 0) < 0.5 and abs(np.mean(yq - ref)) < 0.5
    assert np.mean(np.argmax(yq.reshape(len(x), -1), 1) == np.argmax(ref.reshape(len(x), -1), 1)) >= 0.9
    if host:
        from mcuforge.codegen import generate
        from mcuforge.targets.host import run_host

        generate(g, tmp_path / "lib")
        xin = g.tensors[g.inputs[0]].quant.quantize(to_ir_layout(g, g.inputs[0], x))
        y_c = run_host(tmp_path / "lib", [xin])[0]
        np.testing.assert_array_equal(y_c, reference.run(g, [xin], mode="int")[0])
    return g


@pytest.mark.parametrize("name", sorted(QDQ_ZOO))
def test_qdq_per_channel_int8_host_bit_exact(tmp_path, name):
    check_qdq(tmp_path, name, per_channel=True, host=True)


def test_qdq_requantization_without_quantize_and_mean_ops(tmp_path, monkeypatch):
    """Where an op fixes its output quantization (softmax, pools) and the model wants other
    parameters, a requantizing copy follows it: a quantize op, or else a one-input concat."""
    from mcuforge.ops import OPS

    g = check_qdq(tmp_path, "residual")
    assert "quantize" in ops(g) or "concat" in ops(g)
    monkeypatch.delitem(OPS, "quantize", raising=False)
    monkeypatch.delitem(OPS, "mean", raising=False)
    g = check_qdq(tmp_path, "residual", host=True)
    assert "concat" in ops(g) and "quantize" not in ops(g) and "mean" not in ops(g)


@pytest.mark.parametrize("name", ["small_cnn", "residual"])
def test_qdq_per_tensor_and_uint8(tmp_path, name):
    g = check_qdq(tmp_path, name, per_channel=False)
    w = next(g.tensors[n.inputs[1]] for n in g.nodes if n.op == "conv2d")
    assert w.quant.axis is None and w.dtype == "int8"
    check_qdq(tmp_path, name, per_channel=True, activation="QUInt8")


def test_qdq_takes_the_models_parameters(tmp_path):
    rng = np.random.default_rng(0)
    qmodel = qdq_model(tmp_path, export(small_cnn(), (1, 3, 12, 12)),
                       rng.standard_normal((16, 3, 12, 12)).astype(np.float32))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in qmodel.graph.initializer}
    g = from_onnx_model(qmodel)
    x = g.tensors[g.inputs[0]]
    assert x.quant.s == inits["x0_scale"] and x.quant.zp == inits["x0_zero_point"]
    conv = g.nodes[0]
    w, b = g.tensors[conv.inputs[1]], g.tensors[conv.inputs[2]]
    w_onnx = next(v for k, v in inits.items() if k.endswith("_quantized") and v.ndim == 4)
    np.testing.assert_array_equal(w.data, w_onnx.transpose(0, 2, 3, 1))  # NCHW -> NHWC weights, same ints
    b_onnx = next(v for k, v in inits.items() if v.dtype == np.int32 and v.size == w.shape[0])
    np.testing.assert_array_equal(b.data, b_onnx)


def _qdq_errors_model(tmp_path, **kw):
    rng = np.random.default_rng(0)
    m = export(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), (1, 3, 6, 6))
    return qdq_model(tmp_path, m, rng.standard_normal((8, 3, 6, 6)).astype(np.float32), **kw)


def test_qdq_asymmetric_weights_rejected(tmp_path):
    with pytest.raises(QuantizationError, match="asymmetric"):
        from_onnx_model(_qdq_errors_model(tmp_path, per_channel=False, WeightSymmetric=False))
    # uint8 weights with zero point 128 are symmetric: int8 with zero point 0, exactly
    g = from_onnx_model(_qdq_errors_model(tmp_path, per_channel=True, activation="QUInt8", weight="QUInt8"))
    assert g.is_quantized and not g.tensors[g.nodes[0].inputs[1]].quant.zero_point.any()


def test_qdq_16bit_activations_rejected(tmp_path):
    with pytest.raises(QuantizationError, match="int16"):
        from_onnx_model(_qdq_errors_model(tmp_path, activation="QInt16"))


def test_qdq_per_channel_activation_rejected():
    s, z = np.array([0.1, 0.2, 0.3], np.float32), np.zeros(3, np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], axis=1),
             helper.make_node("Relu", ["d"], ["y"])]
    m = make_model(nodes, [vinfo("x", ["N", 3, 4, 4])], [vinfo("y", ["N", 3, 4, 4])], [tensor("s", s), tensor("z", z)])
    with pytest.raises(QuantizationError, match="per channel"):
        from_onnx_model(m)


# --- files, CLI, errors -----------------------------------------------------------------------------------------

def test_load_onnx_and_load_model(tmp_path):
    model = export(small_cnn(), (BATCH, 3, 12, 12))
    onnx.save(model, tmp_path / "net.onnx")
    x = np.random.default_rng(0).standard_normal((BATCH, 3, 12, 12)).astype(np.float32)
    ref = run_ort(model, x)[0]
    for g in (load_onnx(tmp_path / "net.onnx"), load_model(tmp_path / "net.onnx")):
        assert g.name == "net"
        np.testing.assert_allclose(run_ir(g, x)[0], ref, atol=1e-4)


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(ModelFormatError, match="bad.onnx"):
        load_onnx(bad)
    good = export(nn.Linear(3, 2), (1, 3)).SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelFormatError, match="cut.onnx"):
        load_onnx(tmp_path / "cut.onnx")
    with pytest.raises(ModelFormatError, match="missing.onnx.*does not exist"):
        load_model(tmp_path / "missing.onnx")


def test_unsupported_ops_named():
    model = export(nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2)), (2, 4))
    with pytest.raises(UnsupportedOpError, match="Erf") as info:
        from_onnx_model(model)
    msg = str(info.value)
    assert "node '" in msg and "(#" in msg and "Supported ONNX ops" in msg and "Conv" in msg
    # every unsupported node is named at once
    nodes = [helper.make_node("Erf", ["x"], ["a"], name="first"), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Floor", ["b"], ["y"], name="second")]
    m = make_model(nodes, [vinfo("x", ["N", 3])], [vinfo("y", ["N", 3])])
    with pytest.raises(UnsupportedOpError, match=r"node 'first' \(#0\) uses ONNX op Erf.*node 'second' \(#2\) "
                                                 r"uses ONNX op Floor"):
        from_onnx_model(m)
    with pytest.raises(UnsupportedOpError, match="LSTM"):
        from_onnx_model(export(nn.LSTM(4, 3, batch_first=True), (2, 5, 4)))


def test_dynamic_dimensions_rejected():
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(nn.Conv2d(3, 4, 3).eval(), (torch.randn(1, 3, 8, 8),), f, dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "N", 2: "H"}})
    with pytest.raises(UnsupportedOpError, match="dynamic dimension 'H' at axis 2"):
        from_onnx_model(onnx.load_from_string(f.getvalue()))


def test_cli_deploy_run_inspect(tmp_path, capsys):
    from test_cli import mcuforge

    rng = np.random.default_rng(0)
    net = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(8 * 6 * 6, 5)))
    model = export(net, (1, 3, 6, 6))
    onnx.save(model, tmp_path / "m.onnx")
    x = rng.standard_normal((100, 3, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = mcuforge(capsys, "deploy", tmp_path / "m.onnx", "--calib", tmp_path / "x.npy", "-o",
                              tmp_path / "lib")
    assert code == 0, err
    code, _, err = mcuforge(capsys, "run", tmp_path / "lib", "--input", tmp_path / "x.npy", "--output",
                            tmp_path / "y.npy", "--target", "host", "--dequantize")
    assert code == 0, err
    y, ref = np.load(tmp_path / "y.npy"), run_ort(model, x)[0]
    assert y.shape == ref.shape and np.mean(np.argmax(y, 1) == np.argmax(ref, 1)) > 0.9
    code, out, _ = mcuforge(capsys, "inspect", tmp_path / "m.onnx")
    assert code == 0 and "conv2d" in out and "float" in out
    # a QDQ model deploys without calibration data
    onnx.save(qdq_model(tmp_path, model, x[:32]), tmp_path / "q.onnx")
    code, out, err = mcuforge(capsys, "deploy", tmp_path / "q.onnx", "-o", tmp_path / "qlib")
    assert code == 0, err
    code, out, _ = mcuforge(capsys, "inspect", tmp_path / "q.onnx")
    assert code == 0 and "int8" in out
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage" * 10)
    code, _, err = mcuforge(capsys, "inspect", tmp_path / "bad.onnx")
    assert code != 0 and "bad.onnx" in err and "Traceback" not in err
