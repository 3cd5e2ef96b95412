"""Squeeze-and-Threshold low-bit activation QAT: the module, freezing, the quantize_levels table op,
and a tiny QAT run on digits deployed to host C (== integer reference bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_mcuforge
from mcuforge import reference
from mcuforge.errors import InputError
from mcuforge.frontends import to_ir_layout
from mcuforge.frontends.torch import from_torch
from mcuforge.ir import Graph, Tensor
from mcuforge.quant import squeeze_threshold as st
from mcuforge.quant.ptq import quantize


def test_module_shapes_and_ste_gradients():
    torch.manual_seed(0)
    m = st.SqueezeThreshold(8, bits=3, init_threshold=2.0).train()
    x = (torch.randn(4, 8, 5, 5) * 2).relu().requires_grad_()
    y = m(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # STE: gradients pass the rounding
    assert m.fc1.weight.grad is not None and m.fc2.bias.grad.abs() > 0  # ... and reach the attention stage
    assert m(torch.zeros(2, 8)).shape == (2, 8)  # (N, C) input: linear layers


def test_frozen_output_on_grid():
    m = st.SqueezeThreshold(4, bits=2, init_threshold=1.5).eval()
    f = st.freeze(torch.nn.Sequential(m))[0]
    assert isinstance(f, st.FrozenThreshold) and f.threshold == pytest.approx(1.5)
    x = torch.linspace(-1, 3, 1001).reshape(1, 1, 1, -1)
    y = f(x).numpy().ravel()
    k = y / (1.5 / 3)
    assert np.allclose(k, np.round(k), atol=1e-5) and set(np.round(k).astype(int)) == {0, 1, 2, 3}
    assert torch.allclose(f(x), m(x))  # frozen == stage-1 module in eval mode


def test_quantize_levels_op_table_and_frontend():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), st.FrozenThreshold(2.0, 3))
    g = from_torch(model.eval(), torch.zeros(1, 1, 6, 6))
    assert "quantize_levels" in [n.op for n in g.nodes]
    # standalone table op: int == table, outputs on the 8-level grid
    h = Graph("t")
    h.add_tensor(Tensor("x", (1, 64)))
    h.add_tensor(Tensor("y", (1, 64)))
    h.add_node("quantize_levels", ["x"], ["y"], threshold=2.0, levels=8)
    h.inputs, h.outputs = ["x"], ["y"]
    x = np.linspace(-1, 3, 64, dtype=np.float32).reshape(1, 64)
    q = quantize(h, [x])
    assert q.tensors["y"].quant.zp == -128 and q.tensors["y"].quant.s == pytest.approx(2.0 / 7)
    yq = reference.run(q, [q.tensors["x"].quant.quantize(x)], mode="int")[0]
    assert yq.min() == -128 and yq.max() == -128 + 7
    yf = reference.run(h, [x], mode="float")[0]
    assert np.abs(q.tensors["y"].quant.dequantize(yq) - yf).max() <= 2.0 / 7 + 1e-6


def test_activation_bits_error():
    st.check_activation_bits(8)
    with pytest.raises(InputError, match="int8 storage on the 2\\^b-level grid"):
        st.check_activation_bits(4)


def test_tiny_qat_on_digits_deploys_bit_exact(tmp_path):
    from mcuforge.codegen.emit import write_library
    from mcuforge.demo import digits_cnn, digits_split, train_classifier
    from mcuforge.targets.host import run_host
    from mcuforge.zoo.trainer import predict

    x_train, x_test, y_train, y_test = digits_split(0)
    model = train_classifier(digits_cnn(), x_train, y_train, 6, 0)
    acc = lambda p: float(np.mean(np.argmax(p, -1) == y_test))  # noqa: E731
    float_acc = acc(predict(model, x_test))
    qat = st.qat_finetune(st.to_squeeze_threshold(model, 3, x_train[:256]), x_train, y_train, epochs=2)
    frozen = st.freeze(qat)
    assert len(st.thresholds(frozen)) == 3
    g = from_torch(frozen, torch.from_numpy(x_train[:1]))
    q = quantize(g, [to_ir_layout(g, g.inputs[0], x_train)])
    xq = q.tensors[q.inputs[0]].quant.quantize(to_ir_layout(q, q.inputs[0], x_test))
    y_ref = reference.run(q, [xq], mode="int")[0]
    assert acc(y_ref) >= float_acc - 0.06, (acc(y_ref), float_acc)
    write_library(q, tmp_path, prefix="st")
    y_c = run_host(tmp_path, [xq[:128]])[0]
    assert np.array_equal(y_c, y_ref[:128])


def _mcuforge(capsys, *args) -> tuple[int, str]:
    code, _, err = run_mcuforge(capsys, *args)
    return code, err


def test_cli_deploys_frozen_pt2_and_refuses_packed_int4(tmp_path, capsys):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), st.FrozenThreshold(1.0, 4),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3)).eval()
    x = torch.randn(64, 1, 5, 5)
    torch.export.save(torch.export.export(net, (x[:1],)), tmp_path / "m.pt2")
    np.save(tmp_path / "x.npy", x.numpy())
    code, err = _mcuforge(capsys, "deploy", tmp_path / "m.pt2", "--calib", tmp_path / "x.npy",
                          "-o", tmp_path / "bad", "--activation-bits", "4")
    assert code != 0 and "packed 4-bit activation storage is not implemented" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
    code, err = _mcuforge(capsys, "deploy", tmp_path / "m.pt2", "--calib", tmp_path / "x.npy", "-o", tmp_path / "lib")
    assert code == 0, err
