"""mcuforge.zoo: parameter counts, SincConv export, the log_abs table op, and for every model
train (a couple of steps) -> export -> quantize -> C library -> host C == integer reference."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import run_mcuforge
from mcuforge import reference, zoo
from mcuforge.codegen import generate
from mcuforge.errors import UnsupportedOpError
from mcuforge.frontends.torch import from_torch
from mcuforge.ir import Graph, Tensor
from mcuforge.quant.ptq import quantize
from mcuforge.targets.host import run_host
from mcuforge.zoo.models import SincKWS
from mcuforge.zoo.sinc import LogCompression, SincConv1d, fix_sinc


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Generated data sets go to a cache of this test session, shared by its xdist workers."""
    base = tmp_path_factory.getbasetemp()
    base = base.parent if base.name.startswith("popen-gw") else base
    monkeypatch.setenv("MCUFORGE_CACHE", str(base / "mcuforge-cache"))


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# MLPerf Tiny reference MACs (DESIGN.md, from the reference .tflite models)
@pytest.mark.parametrize("name, params, macs", [
    ("sinc_kws", 62_000, None), ("ds_cnn", 23_756, 2_656_768), ("resnet8", 78_186, 12_501_632),
    ("fc_autoencoder", 267_928, 264_192), ("ecg_cnn", 26_053, None), ("motor_tcn", 25_314, None),
])
def test_parameter_counts(name, params, macs):
    spec = zoo.get(name)
    n_out = {"sinc_kws": 12, "ds_cnn": 12, "resnet8": 10, "fc_autoencoder": 640, "ecg_cnn": 5, "motor_tcn": 2}[name]
    model = spec.build(spec.input_shape, n_out)
    if name == "sinc_kws":
        assert abs(n_params(model) - params) <= 0.05 * params, n_params(model)
    else:
        assert n_params(model) == params
    if macs is not None:
        g = from_torch(fix_sinc(model), torch.zeros((1,) + spec.input_shape))
        from mcuforge.ops import get_op

        assert sum(get_op(n.op).macs(n, g) for n in g.nodes) == macs


def test_sinc_kws_architecture():
    m = SincKWS()
    assert m.sinc.out_channels == 40 and m.sinc.kernel_size == 101 and m.sinc.stride == 8
    assert n_params(m.sinc) == 80  # two cut-offs per filter
    convs = [c for c in m.blocks.modules() if isinstance(c, torch.nn.Conv1d)]
    assert len(convs) == 10 and all(c.out_channels in (162, 40) for c in convs)
    low, high = (t.detach() for t in m.sinc.cutoffs())
    assert torch.all(high > low) and float(high.max()) <= 8000


def test_sinc_kws_export_form_computes_the_same():
    torch.manual_seed(1)
    m = SincKWS()
    fit_steps = torch.optim.SGD(m.parameters(), lr=0.01)
    x = torch.randn(4, 1, 16000) * 0.2
    m(x).sum().backward()  # move the batch-norm statistics and the cut-offs away from their initial values
    fit_steps.step()
    m.eval()
    dep = fix_sinc(m).for_export().eval()
    with torch.no_grad():
        torch.testing.assert_close(dep(x), m(x), rtol=1e-4, atol=1e-4)
    assert isinstance(m.sinc, SincConv1d)  # the trained model keeps its SincConv


def test_sinc_conv_exports_as_a_fixed_conv1d():
    torch.manual_seed(0)
    sinc = SincConv1d(8, 101, 16000, stride=8)
    with torch.no_grad():
        sinc.low_hz_.add_(torch.rand_like(sinc.low_hz_) * 100)  # "learned" cut-offs
    model = torch.nn.Sequential(sinc, LogCompression(0.01))
    fixed = fix_sinc(model)
    assert isinstance(fixed[0], torch.nn.Conv1d) and isinstance(model[0], SincConv1d)
    x = torch.randn(3, 1, 2000) * 0.3
    torch.testing.assert_close(fixed(x), model(x), rtol=1e-5, atol=1e-5)
    g = from_torch(fixed, x[:1])
    assert [n.op for n in g.nodes] == ["conv2d", "log_abs"]
    assert g.nodes[1].attrs["eps"] == pytest.approx(0.01)


def test_log_abs_pattern_and_refusals():
    class Log(torch.nn.Module):
        def forward(self, x):
            return torch.log(x + 1.0)

    with pytest.raises(UnsupportedOpError, match=r"log\(abs\(x\) \+ eps\)"):
        from_torch(torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), Log()), torch.randn(1, 1, 16))

    class Abs(torch.nn.Module):
        def forward(self, x):
            return torch.abs(x) * 2

    g = from_torch(torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), Abs()), torch.randn(1, 1, 16))
    assert "abs" in [n.op for n in g.nodes]


@pytest.mark.parametrize("op, attrs", [("log_abs", {"eps": 0.01}), ("log_abs", {"eps": 1e-4}), ("abs", {})])
def test_table_ops_bit_exact_over_all_inputs(tmp_path, op, attrs):
    """Every one of the 256 int8 inputs: integer reference == host C; the table follows the float fn."""
    g = Graph(op)
    g.add_tensor(Tensor("x", (1, 256)))
    g.add_tensor(Tensor("y", (1, 256)))
    g.inputs, g.outputs = ["x"], ["y"]
    g.add_node(op, ["x"], ["y"], name=op, **attrs)
    g.validate()
    calib = np.random.default_rng(0).normal(0, 0.5, (64, 256)).astype(np.float32)
    q = quantize(g, [calib])
    xq = np.arange(-128, 128, dtype=np.int8)[None]
    y_ref = reference.run(q, [xq], mode="int")[0]
    generate(q, tmp_path / "lib", prefix="t")
    np.testing.assert_array_equal(run_host(tmp_path / "lib", [xq], sanitize=True)[0], y_ref)
    qx, qy = q.tensors["x"].quant, q.tensors["y"].quant
    real = qx.dequantize(xq).astype(np.float64)
    want = np.log(np.abs(real) + attrs["eps"]) if op == "log_abs" else np.abs(real)
    assert np.max(np.abs(qy.dequantize(y_ref) - want)) <= qy.s / 2 + 1e-6 + (  # exact rounding inside range
        np.max(np.abs(np.clip(want, qy.dequantize(np.int8(-128)), qy.dequantize(np.int8(127))) - want)))


def test_log_abs_eps_must_be_positive():
    from mcuforge.errors import GraphError

    g = Graph("bad")
    g.add_tensor(Tensor("x", (1, 4)))
    g.add_tensor(Tensor("y", (1, 4)))
    g.inputs, g.outputs = ["x"], ["y"]
    g.add_node("log_abs", ["x"], ["y"], name="l", eps=0.0)
    with pytest.raises(GraphError, match="eps must be > 0"):
        g.validate()


@pytest.mark.parametrize("name", ["sinc_kws", "ds_cnn", "resnet8", "fc_autoencoder", "ecg_cnn", "motor_tcn"])
def test_train_quantize_deploy_run(tmp_path, name):
    out = tmp_path / name
    m = zoo.train(name, preset="tiny", out=out, max_steps=2, calib_size=16)
    for f in ("model.pt", "model.pt2", "calib.npy", "metrics.json", "test_inputs.npy"):
        assert (out / f).is_file()
    ck = torch.load(out / "model.pt", weights_only=True)
    assert ck["model"] == name and ck["state_dict"]
    d = zoo.deploy_and_evaluate(out, host_samples=4, limit=6)
    assert d["int8"]["c_vs_reference_mismatches"] == 0 and d["int8"]["c_outputs_compared"] > 0
    assert d["deployed"]["macs"] > 0 and d["deployed"]["arena_bytes"] > 0
    primary = zoo.trainer.PRIMARY[m["task"]]
    if primary in d["float"]["test"]:
        assert primary in d["int8"]["test"]
    assert json.loads((out / "metrics.json").read_text())["int8"] == d["int8"]
    if name == "sinc_kws":
        report = json.loads((out / "lib" / "report.json").read_text())
        assert "log_abs" in {r["op"] for r in report["layers"]}


def test_cli_train_then_deploy(tmp_path, capsys):
    def mcuforge(*args):
        code, out, err = run_mcuforge(capsys, *args)
        return code, SimpleNamespace(out=out, err=err)

    out = tmp_path / "ecg"
    code, io = mcuforge("train", "ecg_cnn", "--preset", "tiny", "--max-steps", "2", "-o", out)
    assert code == 0, io.err
    assert "ecg_cnn" in io.out and "mcuforge deploy" in io.out
    code, io = mcuforge("deploy", out / "model.pt2", "--calib", out / "calib.npy", "-o", tmp_path / "lib")
    assert code == 0, io.err
    x = np.load(out / "test_inputs.npy")[:3]
    np.save(tmp_path / "x.npy", x)
    code, io = mcuforge("run", tmp_path / "lib", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy",
                        "--target", "host")
    assert code == 0, io.err and np.load(tmp_path / "y.npy").shape == (3, 5)
    code, io = mcuforge("train", "ecg_cnn", "--data", "keywords", "-o", tmp_path / "x")
    assert code == 1 and "does not train on 'keywords'" in io.err
    code, io = mcuforge("train", "nope")
    assert code == 1 and "unknown model 'nope'" in io.err
    code, io = mcuforge("zoo")
    assert code == 0 and "sinc_kws" in io.out and "motor_temperature" in io.out


def test_sinc_kws_bit_exact_on_cortex_m4(tmp_path):
    """The raw-audio KWS model, generated for the M4 (DSP kernels), equals the reference on QEMU."""
    from mcuforge.frontends import load_model, to_ir_layout
    from mcuforge.targets.cortex_m import run_cortex_m
    from mcuforge.targets.table import get_target

    out = tmp_path / "sinc"
    zoo.train("sinc_kws", preset="tiny", out=out, max_steps=2, calib_size=16)
    graph = load_model(out / "model.pt2")
    name = graph.inputs[0]
    q = quantize(graph, [to_ir_layout(graph, name, np.load(out / "calib.npy"))])
    lib = tmp_path / "lib"
    report = generate(q, lib, target=get_target("cortex-m4"))
    assert report["memory"]["arena_bytes"] < 256 * 1024
    x = to_ir_layout(q, name, np.load(out / "test_inputs.npy")[:3])
    xq = q.tensors[name].quant.quantize(x)
    y_ref = reference.run(q, [xq], mode="int")[0]
    np.testing.assert_array_equal(run_cortex_m(lib, [xq], "cortex-m4")[0], y_ref)
    np.testing.assert_array_equal(run_host(lib, [xq])[0], y_ref)
