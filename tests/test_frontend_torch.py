"""The PyTorch frontend and the graph passes: IR float reference == torch (eval mode)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mcuforge import passes, reference
from mcuforge.errors import InputError, ModelFormatError, UnsupportedOpError
from mcuforge.frontends import from_ir_layout, load_model, to_ir_layout
from mcuforge.frontends.torch import from_exported, from_torch, load_pt2
from mcuforge.ir import save_graph
from mcuforge.quant.ptq import quantize

torch.set_num_threads(1)
BATCH = 4


# --- helpers -----------------------------------------------------------------------------------------

def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
    return model.eval()


def run_ir(graph, *xs: torch.Tensor) -> list[np.ndarray]:
    ins = [to_ir_layout(graph, name, x.numpy()) for name, x in zip(graph.inputs, xs)]
    outs = reference.run(graph, ins, mode="float")
    return [from_ir_layout(graph, name, y) for name, y in zip(graph.outputs, outs)]


def check(model: nn.Module, *shapes, atol: float = 1e-4, seed: int = 0):
    """Convert `model` and compare the IR float reference with torch on a batch of 4."""
    torch.manual_seed(seed)
    model = randomize_bn(model, seed)
    xs = tuple(torch.randn(*s) for s in shapes)
    graph = from_torch(model, xs)
    graph.validate()
    for name in graph.activation_tensors():  # the IR describes one sample
        assert graph.tensors[name].shape[0] == 1, name
    with torch.no_grad():
        ref = model(*xs)
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    got = run_ir(graph, *xs)
    assert len(got) == len(ref)
    for r, y in zip(ref, got):
        r = r.numpy()
        assert y.shape == r.shape
        np.testing.assert_allclose(y, r, atol=atol * max(1.0, float(np.abs(r).max())), rtol=0)
    return graph


def ops(graph) -> list[str]:
    return [n.op for n in graph.nodes]


class Lambda(nn.Module):
    def __init__(self, fn, **modules):
        super().__init__()
        self.fn = fn
        for k, m in modules.items():
            setattr(self, k, m)

    def forward(self, *xs):
        return self.fn(self, *xs)


# --- single modules ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3),
    dict(kernel_size=3, padding=1, bias=False),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=4, padding="same"),  # even kernel: torch pads one more at the end
    dict(kernel_size=3, padding="valid", stride=2),
    dict(kernel_size=3, padding=2, dilation=2, groups=2),
])
def test_conv2d(kwargs):
    g = check(nn.Conv2d(4, 6, **kwargs), (BATCH, 4, 9, 11))
    assert ops(g) == ["conv2d"]


def test_conv2d_depthwise():
    g = check(nn.Conv2d(8, 8, 3, padding=1, groups=8), (BATCH, 8, 6, 6))
    assert g.nodes[0].attrs["groups"] == 8


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3), dict(kernel_size=5, stride=2, padding=2, bias=False),
    dict(kernel_size=3, padding="same", dilation=3), dict(kernel_size=3, groups=4),
])
def test_conv1d(kwargs):
    g = check(nn.Conv1d(4, 8, **kwargs), (BATCH, 4, 20))
    assert ops(g) == ["conv2d"]
    assert g.tensors[g.inputs[0]].shape == (1, 1, 20, 4)  # N,C,L -> N,1,L,C


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_conv_padding_mode_unsupported(mode):
    with pytest.raises(UnsupportedOpError, match="pad"):
        from_torch(nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode).eval(), (torch.randn(1, 3, 8, 8),))


def test_linear():
    g = check(nn.Linear(10, 7), (BATCH, 10))
    assert ops(g) == ["fully_connected"]
    check(nn.Linear(10, 7, bias=False), (BATCH, 10))
    check(nn.Linear(10, 7), (BATCH, 5, 10))  # over the last axis of a 3-D tensor


@pytest.mark.parametrize("act,op", [
    (nn.LeakyReLU(0.2), "leaky_relu"), (nn.Sigmoid(), "sigmoid"), (nn.Tanh(), "tanh"),
])
def test_unary(act, op):
    g = check(act, (BATCH, 3, 5, 5))
    assert ops(g) == [op]


@pytest.mark.parametrize("act,lo,hi", [
    (nn.ReLU(), 0.0, None), (nn.ReLU(inplace=True), 0.0, None), (nn.ReLU6(), 0.0, 6.0),
    (nn.Hardtanh(-2.0, 3.0), -2.0, 3.0),
])
def test_clamps_standalone(act, lo, hi):
    g = check(act, (BATCH, 6))
    assert ops(g) == ["clamp"]
    assert (g.nodes[0].attrs["min"], g.nodes[0].attrs["max"]) == (lo, hi)


@pytest.mark.parametrize("act,lo,hi", [(nn.ReLU(), 0.0, None), (nn.ReLU6(), 0.0, 6.0),
                                       (nn.Hardtanh(-1.0, 1.0), -1.0, 1.0)])
def test_activation_fused_into_conv(act, lo, hi):
    g = check(nn.Sequential(nn.Conv2d(3, 4, 3), act), (BATCH, 3, 8, 8))
    assert ops(g) == ["conv2d"]
    assert (g.nodes[0].attrs["act_min"], g.nodes[0].attrs["act_max"]) == (lo, hi)


def test_activation_not_fused_into_output_or_shared_tensor():
    # The conv output is also a model output: the relu must stay a node of its own.
    def fn(s, x):
        y = s.c(x)
        return y, F.relu(y)

    g = check(Lambda(fn, c=nn.Conv2d(3, 4, 1)), (BATCH, 3, 4, 4))
    assert ops(g) == ["conv2d", "clamp"]


@pytest.mark.parametrize("bn,shape", [(nn.BatchNorm2d(5), (BATCH, 5, 6, 6)), (nn.BatchNorm1d(5), (BATCH, 5, 9)),
                                      (nn.BatchNorm1d(5), (BATCH, 5)),
                                      (nn.BatchNorm2d(5, affine=False), (BATCH, 5, 3, 3))])
def test_standalone_batch_norm_is_depthwise_conv(bn, shape):
    g = check(bn, shape)
    convs = [n for n in g.nodes if n.op == "conv2d"]
    assert len(convs) == 1 and convs[0].attrs["groups"] == 5
    assert "batch_norm" not in ops(g)


@pytest.mark.parametrize("conv,bn,shape", [
    (nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), (BATCH, 3, 8, 8)),
    (nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), (BATCH, 3, 8, 8)),
    (nn.Conv1d(3, 6, 3), nn.BatchNorm1d(6), (BATCH, 3, 12)),
    (nn.Linear(7, 6), nn.BatchNorm1d(6), (BATCH, 7)),
])
def test_batch_norm_folded(conv, bn, shape):
    g = check(nn.Sequential(conv, bn, nn.ReLU()), shape)
    assert len(g.nodes) == 1 and g.nodes[0].op in ("conv2d", "fully_connected")
    assert g.nodes[0].attrs["act_min"] == 0.0


def test_batch_norm_not_folded_when_conv_output_shared():
    m = Lambda(lambda s, x: s.bn(s.c(x)) + s.c(x), c=nn.Conv2d(3, 4, 1), bn=nn.BatchNorm2d(4))
    g = check(m, (BATCH, 3, 5, 5))
    assert ops(g).count("conv2d") == 2  # the conv, and the BN as a depthwise conv
    assert "batch_norm" not in ops(g)


@pytest.mark.parametrize("pool", [
    nn.AvgPool2d(2), nn.AvgPool2d(3, stride=2, padding=1), nn.AvgPool2d(3, 2, 1, count_include_pad=False),
    nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1), nn.MaxPool2d((2, 3), stride=(1, 2)),
    nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d((2, 3)), nn.AdaptiveMaxPool2d(1),
    nn.MaxPool2d(2, ceil_mode=True),  # ceil_mode that does not change the output size is fine
])
def test_pool2d(pool):
    g = check(pool, (BATCH, 3, 8, 6))
    assert ops(g) in (["avg_pool2d"], ["max_pool2d"])


def test_avg_pool_count_include_pad_attr():
    g = check(nn.AvgPool2d(3, 1, 1, count_include_pad=False), (BATCH, 2, 5, 5))
    assert g.nodes[0].attrs["count_include_pad"] is False


@pytest.mark.parametrize("pool", [
    nn.AvgPool1d(2), nn.AvgPool1d(3, 2, 1, count_include_pad=False), nn.MaxPool1d(3, 2, 1),
    nn.AdaptiveAvgPool1d(1), nn.AdaptiveMaxPool1d(1),
])
def test_pool1d(pool):
    g = check(pool, (BATCH, 3, 12))
    assert len(g.nodes) == 1


def test_max_pool_with_indices_output_is_unused():
    check(Lambda(lambda s, x: F.max_pool2d(x, 2, return_indices=True)[0]), (BATCH, 3, 6, 6))


@pytest.mark.parametrize("pool,msg", [
    (nn.AvgPool2d(3, 2, ceil_mode=True), "ceil_mode"), (nn.MaxPool2d(3, 2, ceil_mode=True), "ceil_mode"),
    (nn.MaxPool2d(3, 1, 1, dilation=2), "dilation"), (nn.AvgPool2d(2, divisor_override=3), "divisor"),
    (nn.AdaptiveAvgPool2d(3), "divide"),
])
def test_pool_unsupported_options(pool, msg):
    with pytest.raises(UnsupportedOpError, match=msg):
        from_torch(pool.eval(), (torch.randn(1, 3, 8, 8),))


def test_global_mean_is_avg_pool():
    g = check(Lambda(lambda s, x: x.mean((2, 3))), (BATCH, 4, 5, 6))
    assert ops(g) == ["avg_pool2d", "reshape"]
    check(Lambda(lambda s, x: x.mean(-1, keepdim=True)), (BATCH, 4, 7))


def test_softmax_channel_dim_of_4d_is_last_ir_axis():
    g = check(nn.Softmax(dim=1), (BATCH, 5, 3, 3))
    assert ops(g) == ["softmax"]
    check(nn.Softmax(dim=-1), (BATCH, 7))
    check(nn.Softmax(dim=-1), (BATCH, 5, 3, 3))  # over W: needs torch order


def test_softmax_inexpressible():
    with pytest.raises(UnsupportedOpError, match="softmax"):
        from_torch(nn.Softmax(dim=2).eval(), (torch.randn(1, 5, 3, 3),))


def test_dropout_and_identity_vanish():
    g = check(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Identity(), nn.Dropout2d(), nn.Linear(4, 3)),
              (BATCH, 4))
    assert ops(g) == ["fully_connected", "fully_connected"]


def test_identity_model_copies_input():
    g = check(nn.Identity(), (BATCH, 3, 4))
    assert g.outputs[0] != g.inputs[0]


# --- layout-sensitive ops ---------------------------------------------------------------------------------

def test_flatten_needs_torch_element_order():
    # flatten of an NCHW value with H,W > 1 -> the flatten's transpose is folded into the weights
    g = check(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)), (BATCH, 3, 6, 6))
    assert ops(g) == ["conv2d", "reshape", "fully_connected"]


def test_flatten_with_transpose_kept():
    # the flattened tensor is also an output: torch order needs a real transpose
    g = check(Lambda(lambda s, x: torch.flatten(s.c(x), 1), c=nn.Conv2d(3, 4, 3)), (BATCH, 3, 6, 6))
    assert ops(g) == ["conv2d", "transpose", "reshape"]
    assert [n.attrs["perm"] for n in g.nodes if n.op == "transpose"] == [[0, 3, 1, 2]]


def test_flatten_of_1x1_is_reshape_only():
    g = check(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), (BATCH, 3, 6, 6))
    assert "transpose" not in ops(g)


@pytest.mark.parametrize("fn", [
    lambda s, x: x.view(x.size(0), -1),
    lambda s, x: x.reshape(x.shape[0], 4, 18),
    lambda s, x: x.reshape(x.shape[0], 12, 2, 3).softmax(1),
    lambda s, x: torch.flatten(x, 2),
    lambda s, x: x.unsqueeze(2).squeeze(2) * 2.0,
])
def test_reshapes(fn):
    check(Lambda(fn), (BATCH, 4, 3, 6))


def test_reshape_across_batch_unsupported():
    with pytest.raises(UnsupportedOpError, match="batch"):
        from_torch(Lambda(lambda s, x: x.reshape(-1, 6)).eval(), (torch.randn(2, 4, 3),))


def test_permute_is_free():
    g = check(Lambda(lambda s, x: s.l(x.permute(0, 2, 3, 1)), l=nn.Linear(3, 5)), (BATCH, 3, 4, 4))
    assert ops(g) == ["fully_connected"]  # NHWC is the IR layout already
    check(Lambda(lambda s, x: x.transpose(1, 2).softmax(-1)), (BATCH, 3, 6))


def test_permute_of_batch_unsupported():
    with pytest.raises(UnsupportedOpError, match="batch"):
        from_torch(Lambda(lambda s, x: x.permute(1, 0) * 2).eval(), (torch.randn(2, 3),))


def test_cat_channels():
    m = Lambda(lambda s, x: torch.cat([s.a(x), s.b(x)], dim=1), a=nn.Conv2d(3, 4, 1), b=nn.Conv2d(3, 2, 3, padding=1))
    g = check(m, (BATCH, 3, 5, 5))
    assert [n.attrs["axis"] for n in g.nodes if n.op == "concat"] == [3]
    check(Lambda(lambda s, x: torch.cat([x, x * 2], dim=3)), (BATCH, 3, 4, 5))
    check(Lambda(lambda s, x: torch.cat([x, F.relu(x)], dim=-1)), (BATCH, 6))
    check(Lambda(lambda s, x: torch.cat([x, -x], dim=1)), (BATCH, 3, 7))


def test_cat_mixed_layouts():
    # a 4-D view (torch order) concatenated with a channel-last conv output
    m = Lambda(lambda s, x, y: torch.cat([s.c(x), y.view(y.shape[0], 2, 4, 4)], 1), c=nn.Conv2d(3, 4, 1))
    check(m, (BATCH, 3, 4, 4), (BATCH, 32))


def test_mul_add_constants():
    m = Lambda(lambda s, x: (x * 2.5 + 1.0) * s.scale - s.shift / 4)
    m.register_buffer("scale", torch.randn(1, 3, 1, 1))  # per-channel constant
    m.register_buffer("shift", torch.randn(3, 1, 1))
    g = check(m, (BATCH, 3, 4, 5))
    assert set(ops(g)) <= {"mul", "add"}
    consts = [g.tensors[t] for n in g.nodes for t in n.inputs if g.tensors[t].is_const]
    assert any(t.shape == (1, 1, 1, 3) for t in consts)  # the channel is the last IR axis


def test_mul_by_constant_1d_signal_and_vector():
    m = Lambda(lambda s, x: x * s.c)
    m.register_buffer("c", torch.randn(3, 1))
    check(m, (BATCH, 3, 8))
    check(Lambda(lambda s, x: 3 - x * torch.tensor([1.0, 2.0, 3.0])), (BATCH, 3))


def test_residual_add_fuses_relu():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
            self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)

        def forward(self, x):
            return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + x)

    g = check(Block(), (BATCH, 8, 6, 6))
    assert ops(g) == ["conv2d", "conv2d", "add"]
    assert g.nodes[2].attrs["act_min"] == 0.0


def test_hard_activations_and_silu():
    check(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Hardswish()), (BATCH, 3, 5, 5))
    check(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Hardsigmoid()), (BATCH, 3, 5, 5))
    check(nn.Sequential(nn.Linear(3, 4), nn.SiLU()), (BATCH, 3))


def test_two_inputs_two_outputs():
    m = Lambda(lambda s, x, y: (s.c(x).mean((2, 3)) + y, torch.sigmoid(y)), c=nn.Conv2d(3, 5, 3))
    g = check(m, (BATCH, 3, 6, 6), (BATCH, 5))
    assert len(g.inputs) == 2 and len(g.outputs) == 2
    assert set(g.meta["io"]) == set(g.inputs) | set(g.outputs)


# --- whole models ---------------------------------------------------------------------------------------------

def small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, 10))


def test_small_cnn():
    g = check(small_cnn(), (BATCH, 3, 12, 12))
    assert ops(g) == ["conv2d", "max_pool2d", "conv2d", "avg_pool2d", "reshape", "fully_connected"]
    assert g.meta["io"][g.inputs[0]] == {"torch_shape": [1, 3, 12, 12], "perm": [0, 2, 3, 1],
                                         "ir_shape": [1, 12, 12, 3]}


def conv1d_net():
    return nn.Sequential(
        nn.Conv1d(2, 8, 5, stride=2, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.AvgPool1d(2),
        nn.Conv1d(8, 8, 3, padding="same", groups=8), nn.BatchNorm1d(8), nn.LeakyReLU(0.1),
        nn.MaxPool1d(2), nn.Flatten(), nn.Linear(8 * 4, 6), nn.Softmax(dim=-1))


def test_conv1d_net():
    g = check(conv1d_net(), (BATCH, 2, 32))
    assert "batch_norm" not in ops(g) and "clamp" not in ops(g) and "transpose" not in ops(g)


def test_depthwise_separable_blocks():
    def ds(cin, cout, stride):
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    m = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), *ds(8, 16, 1), *ds(16, 16, 2),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    g = check(m, (BATCH, 1, 16, 12))
    assert ops(g).count("conv2d") == 5 and len(g.nodes) == 8


def test_heads():
    trunk = [nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.Flatten(), nn.Linear(6 * 16, 5)]
    for head in (nn.LeakyReLU(0.3), nn.Sigmoid(), nn.Tanh(), nn.Softmax(dim=1)):
        check(nn.Sequential(*trunk, head), (BATCH, 3, 6, 6))


# --- exported programs, files, errors ----------------------------------------------------------------------------

def test_decomposed_program():
    """Core-ATen programs (run_decompositions) use convolution/addmm/_native_batch_norm."""
    m = randomize_bn(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)))
    x = torch.randn(BATCH, 3, 7, 7)
    ep = torch.export.export(m, (x,)).run_decompositions()
    g = from_exported(ep)
    np.testing.assert_allclose(run_ir(g, x)[0], m(x).detach().numpy(), atol=1e-4)
    assert "batch_norm" not in ops(g)


def test_dynamic_batch_program():
    m = small_cnn().eval()
    x = torch.randn(BATCH, 3, 12, 12)
    batch = torch.export.Dim("batch")
    ep = torch.export.export(m, (x,), dynamic_shapes=({0: batch},))
    g = from_exported(ep)
    np.testing.assert_allclose(run_ir(g, x)[0], m(x).detach().numpy(), atol=1e-4)


def test_load_pt2_round_trip(tmp_path):
    m = randomize_bn(small_cnn())
    x = torch.randn(BATCH, 3, 12, 12)
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(m, (x,)), path)
    for g in (load_pt2(path), load_model(path)):
        assert g.name == "net"
        np.testing.assert_allclose(run_ir(g, x)[0], m(x).detach().numpy(), atol=1e-4)
    save_graph(g, tmp_path / "net.mcf")
    g2 = load_model(tmp_path / "net.mcf")
    np.testing.assert_allclose(run_ir(g2, x)[0], m(x).detach().numpy(), atol=1e-4)


def test_load_pt2_errors(tmp_path):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(ModelFormatError, match="bad.pt2"):
        load_pt2(bad)
    with pytest.raises(ModelFormatError, match="missing.pt2.*does not exist"):
        load_model(tmp_path / "missing.pt2")
    with pytest.raises(ModelFormatError, match="m.onnx.*does not exist"):
        load_model(tmp_path / "m.onnx")
    with pytest.raises(ModelFormatError, match=r"\.pt2"):
        load_model(tmp_path / "m.h5")


@pytest.mark.parametrize("model,shape,op", [
    (nn.GELU(), (2, 4), "aten.gelu"),
    (nn.LSTM(4, 3, batch_first=True), (2, 5, 4), "aten.lstm"),
    (Lambda(lambda s, x: torch.sort(x, dim=1)[0]), (2, 4), "aten.sort"),
    (nn.ConvTranspose2d(3, 2, 2), (1, 3, 4, 4), "conv_transpose2d"),
])
def test_unsupported_ops_named(model, shape, op):
    with pytest.raises(UnsupportedOpError, match=op) as info:
        from_torch(model.eval(), (torch.randn(*shape),))
    msg = str(info.value)
    assert "node '" in msg and "does not support" in msg and "conv2d" in msg  # lists what is supported


def test_training_mode_program_rejected():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    ep = torch.export.export(m, (torch.randn(2, 3, 6, 6),))
    with pytest.raises(UnsupportedOpError, match="eval"):
        from_exported(ep)


def test_io_layout_helpers():
    g = from_torch(nn.Conv1d(3, 4, 3).eval(), (torch.randn(1, 3, 10),))
    x = np.random.default_rng(0).standard_normal((5, 3, 10)).astype(np.float32)
    ir = to_ir_layout(g, g.inputs[0], x)
    assert ir.shape == (5, 1, 10, 3)
    np.testing.assert_array_equal(from_ir_layout(g, g.inputs[0], ir), x)
    with pytest.raises(InputError, match="shape"):
        to_ir_layout(g, g.inputs[0], x[:, :, :4])


# --- passes ----------------------------------------------------------------------------------------------------

def test_passes_are_pure():
    m = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    from mcuforge.frontends.torch import _Converter
    raw = _Converter(torch.export.export(m, (torch.randn(1, 3, 5, 5),)), "m").convert()
    before = ops(raw)
    folded = passes.fold_batch_norm(raw)
    assert ops(raw) == before and "batch_norm" in before
    assert "batch_norm" not in ops(folded)
    fused = passes.fuse_activations(folded)
    assert ops(fused) == ["conv2d"] and ops(folded) == ["conv2d", "clamp"]


def test_clamps_compose():
    g = check(Lambda(lambda s, x: F.relu6(torch.clamp(s.c(x), -1.0, 4.0)), c=nn.Conv2d(2, 3, 1)), (BATCH, 2, 4, 4))
    assert ops(g) == ["conv2d"]
    assert (g.nodes[0].attrs["act_min"], g.nodes[0].attrs["act_max"]) == (0.0, 4.0)


# --- quantization of a converted model --------------------------------------------------------------------------

def test_converted_model_quantizes():
    torch.manual_seed(1)
    m = randomize_bn(small_cnn(), seed=1)
    g = from_torch(m, (torch.randn(1, 3, 12, 12),))
    calib = torch.randn(64, 3, 12, 12)
    q = quantize(g, to_ir_layout(g, g.inputs[0], calib.numpy()))
    x = torch.randn(32, 3, 12, 12)
    xin = to_ir_layout(q, q.inputs[0], x.numpy())
    qin = q.tensors[q.inputs[0]].quant
    yq = reference.run(q, [qin.quantize(xin)], mode="int")[0]
    y = q.tensors[q.outputs[0]].quant.dequantize(yq)
    ref = m(x).detach().numpy()
    agree = np.mean(np.argmax(y, 1) == np.argmax(ref, 1))
    assert agree >= 0.8, agree
