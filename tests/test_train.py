"""On-device training (mcuforge.train): the integer helpers, the twin's gradients against float
autograd, and bit-exactness of the twin, the host C (sanitizers) and QEMU Cortex-M4 C."""

from __future__ import annotations

import numpy as np
import pytest

from mcuforge.errors import DoesNotFitError, GraphError, InputError
from mcuforge.ir import Graph, Tensor
from mcuforge.quant.ptq import quantize
from mcuforge.train import fixed as fx
from mcuforge.train.codegen import generate_training_library
from mcuforge.train.fqt import FQTTrainer, plan_dynamic
from mcuforge.train.program import TrainConfig, build_program, resolve_trainable
from mcuforge.train.runner import apply_state, run_train_host, run_train_reference, twin_state

from conftest import build_small_cnn


def residual_graph(seed: int = 0) -> Graph:
    """conv(relu) -> depthwise(relu6) -> add(conv out) -> avgpool 3x3/1 (overlap) -> conv 1x1 stride 2 ->
    maxpool 3x3/2 pad 1 (overlap) -> reshape -> fc (no softmax)."""
    rng = np.random.default_rng(seed)
    g = Graph("residual")
    g.add_tensor(Tensor("x", (1, 8, 8, 3)))
    g.inputs = ["x"]

    def conv(name, x, cin, cout, k, groups=1, stride=1, pad=1, act=(0.0, None)):
        w = g.add_const(name + "_w", rng.normal(size=(cout, k, k, cin // groups)).astype(np.float32) * 0.5)
        b = g.add_const(name + "_b", rng.normal(size=cout).astype(np.float32) * 0.1)
        h = g.tensors[x].shape[1]
        o = (h + 2 * pad - k) // stride + 1
        g.add_tensor(Tensor(name, (1, o, o, cout)))
        g.add_node("conv2d", [x, w, b], [name], name=name, stride=[stride, stride], dilation=[1, 1],
                   pads=[pad] * 4, groups=groups, act_min=act[0], act_max=act[1])
        return name

    c1 = conv("c1", "x", 3, 8, 3)
    dw = conv("dw", c1, 8, 8, 3, groups=8, act=(0.0, 6.0))
    g.add_tensor(Tensor("sum", (1, 8, 8, 8)))
    g.add_node("add", [dw, c1], ["sum"], name="add", act_min=0.0, act_max=None)
    g.add_tensor(Tensor("avg", (1, 8, 8, 8)))
    g.add_node("avg_pool2d", ["sum"], ["avg"], name="avg", kernel=[3, 3], stride=[1, 1], pads=[1, 1, 1, 1],
               count_include_pad=True)
    c2 = conv("c2", "avg", 8, 12, 1, stride=2, pad=0, act=(None, None))
    g.add_tensor(Tensor("mp", (1, 2, 2, 12)))
    g.add_node("max_pool2d", [c2], ["mp"], name="mp", kernel=[3, 3], stride=[2, 2], pads=[1, 1, 1, 1])
    g.add_tensor(Tensor("flat", (1, 48)))
    g.add_node("reshape", ["mp"], ["flat"], name="flat", shape=[1, 48])
    fw = g.add_const("fc_w", rng.normal(size=(5, 48)).astype(np.float32) * 0.3)
    fb = g.add_const("fc_b", rng.normal(size=5).astype(np.float32) * 0.1)
    g.add_tensor(Tensor("y", (1, 5)))
    g.add_node("fully_connected", ["flat", fw, fb], ["y"], name="fc")
    g.outputs = ["y"]
    g.validate()
    return g


def _quantized(graph: Graph, shape, seed=1) -> Graph:
    calib = np.random.default_rng(seed).normal(size=(64,) + shape).astype(np.float32)
    return quantize(graph, [calib])


@pytest.fixture(scope="module")
def small_q() -> Graph:
    return _quantized(build_small_cnn(), (8, 8, 2))


@pytest.fixture(scope="module")
def residual_q() -> Graph:
    return _quantized(residual_graph(), (8, 8, 3))


def _data(graph: Graph, n: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = graph.tensors[graph.inputs[0]].shape[1:]
    return (rng.integers(-128, 128, size=(n,) + shape).astype(np.int8),
            rng.integers(0, classes, size=n).astype(np.int64))


# --- integer helpers --------------------------------------------------------------------------------

def test_mulshift_matches_exact_rounding():
    rng = np.random.default_rng(0)
    v = rng.integers(-2**31, 2**31, size=2000)
    m = rng.integers(2**30, 2**31, size=2000)
    s = rng.integers(-40, 70, size=2000)
    got = fx.mulshift(v, m, s)
    for vi, mi, si, g in zip(v[:400], m[:400], s[:400], got[:400]):
        exact = int(vi) * int(mi)
        sh = 31 - int(si)
        r = (exact + (1 << (sh - 1))) >> sh if sh > 0 else exact << -sh
        assert g == max(-2**31, min(2**31 - 1, r))


def test_normalize_and_log2():
    for acc in ([0, 0], [127, -127], [128, -3], [255], [-2**31, 5], [2**31 - 1], [300, -301, 5]):
        e, k = fx.normalize(np.array(acc))
        assert np.abs(e).max() <= 127
        m = max(abs(a) for a in acc)
        assert k == 0 or int(fx.rdbpot(m, k - 1)) > 127  # least shift
    v = np.array([1, 2, 3, 255, 256, 1000, 2**31 - 1])
    assert np.all(np.abs(fx.ilog2_q8(v) / 256 - np.log2(v)) < 0.09)
    assert int(fx.ilog2_q8(0)) == fx.NEG


def test_prng_is_uniform_and_counter_based():
    r = fx.prng(1, 7, np.arange(100000)) >> np.uint64(16)
    assert abs(r.mean() / 65536 - 0.5) < 0.01
    assert np.array_equal(fx.prng(1, 7, np.arange(10, 20)), fx.prng(1, 7, np.arange(30))[10:20])


def test_resolve_trainable(small_q):
    assert resolve_trainable(small_q, "all") == ["conv", "fc"]
    assert resolve_trainable(small_q, "last:1") == ["fc"]
    assert resolve_trainable(small_q, "0") == ["conv"]
    with pytest.raises(InputError, match="not a conv/fc layer"):
        resolve_trainable(small_q, "softmax")


# --- the twin's arithmetic against float autograd -----------------------------------------------------

def test_gradients_follow_float_autograd(residual_q):
    """The FQT weight gradient of every layer points where the float gradient of the dequantized model does."""
    import torch

    from mcuforge.train import fqt
    from mcuforge.train.torch_ref import IRModule

    rng = np.random.default_rng(3)  # inputs as calibrated (outputs rarely saturate, where the STE masks)
    x = residual_q.tensors["x"].quant.quantize(rng.normal(size=(6, 8, 8, 3)))
    y = rng.integers(0, 5, size=6)
    cos = {}
    for i in range(6):
        tr = FQTTrainer(residual_q, TrainConfig(lr=1e-4))
        grads = {}
        orig = fqt.weight_grad
        try:
            fqt.weight_grad = lambda e, pat, g, _o=orig: grads.setdefault(len(grads), _o(e, pat, g))
            xy = []
            upd = tr._update_layer
            tr._update_layer = lambda j, ey, *a, **k: (xy.append((j, a[1])), upd(j, ey, *a, **k))[1]
            tr.step(x[i:i + 1], y[i])
        finally:
            fqt.weight_grad = orig
        m = IRModule(residual_q)
        xd = residual_q.tensors["x"].quant.dequantize(x[i:i + 1])
        loss = torch.nn.functional.cross_entropy(m(torch.from_numpy(xd)), torch.tensor([int(y[i])]))
        loss.backward()
        for (idx, G), (j, xexp) in zip(grads.items(), xy):
            L = tr.prog.layers[j]
            real = G.reshape(L.O, -1) * L.c_y * 2.0 ** xexp * L.s_x
            ref = m.params[m.keys[L.weight]].grad.numpy().reshape(L.O, -1)
            if np.linalg.norm(ref) > 0:
                cos.setdefault(L.node, []).append(float((real * ref).sum() / np.linalg.norm(real) / np.linalg.norm(ref)))
    for node, values in cos.items():
        assert np.median(values) > 0.9, (node, values)


def test_update_has_the_float_step_on_average(small_q):
    """Stochastic rounding is unbiased: the mean int8 update of the fc layer over many repetitions of one step
    is the float SGD step."""
    x, y = _data(small_q, 1, 4)
    w0 = small_q.tensors["fc_w"].float_data().astype(np.float64)
    deltas = []
    for seed in range(40):
        tr = FQTTrainer(small_q, TrainConfig(lr=0.05, seed=seed, trainable=["fc"]))
        tr.step(x, y[0])
        assert tr.state[0].a.max() == 0
        deltas.append(tr.graph.tensors["fc_w"].float_data() - w0)
    mean = np.mean(deltas, axis=0)
    tr = FQTTrainer(small_q, TrainConfig(lr=0.05, rounding="nearest", trainable=["fc"]))
    tr.step(x, y[0])
    nearest = tr.graph.tensors["fc_w"].float_data() - w0
    scale = small_q.tensors["fc_w"].quant.scale[:, None]
    assert np.abs(mean - nearest).max() < 0.6 * scale.max()


# --- bit-exactness: twin == host C (ASan/UBSan) -------------------------------------------------------

CONFIGS = {
    "full": TrainConfig(lr=0.02),
    "dynamic": TrainConfig(lr=0.02, policy="dynamic", budget=0.3, age_q8=64),
    "dynamic-gated": TrainConfig(lr=0.02, policy="dynamic", budget=0.1, min_step_budget=0.4),
    "bias": TrainConfig(lr=0.02, policy="bias"),
    "last1-momentum-nearest": TrainConfig(lr=0.02, momentum=0.9, rounding="nearest", trainable=["fc"],
                                          lr_halve_every=20),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("model", ["small", "residual"])
def test_twin_equals_host_c(name, model, small_q, residual_q, tmp_path):
    graph = small_q if model == "small" else residual_q
    classes = 4 if model == "small" else 5
    cfg = CONFIGS[name]
    if model == "residual" and cfg.trainable == ["fc"]:
        cfg = TrainConfig(**{**cfg.to_json(), "trainable": resolve_trainable(graph, "0") + ["fc"]})
    lib = tmp_path / "lib"
    generate_training_library(graph, lib, cfg, prefix="net")
    x, y = _data(graph, 60, classes)
    ref, trainer = run_train_reference(lib, x, y, dump_every=20)
    host = run_train_host(lib, x, y, dump_every=20, sanitize=True)
    assert np.array_equal(ref.preds, host.preds)
    assert len(ref.states) == len(host.states) == 3
    for d_ref, d_host in zip(ref.states, host.states):
        for a, b in zip(d_ref, d_host):
            assert a.equal(b), a.node
    changed = sum(int(np.count_nonzero(a.w != graph.tensors[L.weight].data.reshape(a.w.shape)))
                  for a, L in zip(ref.final, trainer.prog.layers))
    assert changed > 0 or name == "bias"


def test_masks_stop_at_activation_bounds_and_pass_back_from_saturation(residual_q):
    """ReLU's zero and ReLU6's six are real bounds (the error stops); int8 saturation of the output scale
    is not: an error pointing back into the range passes (a saturated layer can recover)."""
    from mcuforge.train.fqt import apply_mask

    masks = {b.node: b.mask for b in build_program(residual_q, TrainConfig()).backward}
    assert masks["c1_1"][2:] == (0, 1)          # ReLU: stops at zero, int8 top is saturation
    assert masks["dw_1"][2:] == (0, 0)          # ReLU6 calibrated so that six is int8 127: both real
    assert masks["add"][2:] == (0, 1)
    assert masks["c2_1"][2:] == (1, 1)          # no activation: both bounds are saturation
    lo, hi = -128, 127
    y = np.array([lo, lo, hi, hi, 0, 0])
    e = np.array([-5, 5, -5, 5, -5, 5])
    assert apply_mask(e, y, (lo, hi, 1, 1)).tolist() == [-5, 0, 0, 5, -5, 5]
    assert apply_mask(e, y, (lo, hi, 0, 1)).tolist() == [0, 0, 0, 5, -5, 5]
    assert apply_mask(e, y, (lo, hi, 0, 0)).tolist() == [0, 0, 0, 0, -5, 5]


def test_extreme_learning_rates_and_inputs_stay_defined(small_q, tmp_path):
    """Saturating inputs, huge and tiny step sizes, momentum: no UB (sanitizers), bit-exact, weights in range."""
    x = np.where(np.random.default_rng(0).random((40, 8, 8, 2)) < 0.5, -128, 127).astype(np.int8)
    y = np.arange(40) % 4
    from mcuforge.targets.table import get_target

    for k, cfg in enumerate([TrainConfig(lr=1e6, momentum=0.99, max_adapt=24),
                             TrainConfig(lr=1e-12, rounding="nearest"),
                             TrainConfig(lr=1e3, policy="dynamic", budget=0.05)]):
        lib = tmp_path / f"lib{k}"
        # the first on the DSP forward kernel (host: the intrinsics emulated exactly)
        generate_training_library(small_q, lib, cfg, prefix="net", target=get_target("cortex-m4") if k == 0 else None)
        ref, _ = run_train_reference(lib, x, y)
        host = run_train_host(lib, x, y, sanitize=True)
        for a, b in zip(ref.final, host.final):
            assert a.equal(b)
            assert np.abs(a.w.astype(int)).max() <= 127 and a.a.max() <= cfg.max_adapt


def test_adapted_graph_runs_like_the_trained_library(small_q, tmp_path):
    """After training, the exported IR (weights, scales) infers exactly as the library's RAM weights do."""
    from mcuforge import reference
    from mcuforge.targets.host import run_host

    lib = tmp_path / "lib"
    report = generate_training_library(small_q, lib, TrainConfig(lr=0.5, adapt_after=2), prefix="net")
    x, y = _data(small_q, 30, 4)
    ref, trainer = run_train_reference(lib, x, y)
    assert sum(int(S.a.sum()) for S in trainer.state) > 0  # scales did adapt
    adapted = apply_state(small_q, report, ref.final)
    assert np.array_equal(reference.run(adapted, [x])[0], trainer.predict(x))
    out = tmp_path / "adapted"
    generate_training_library(adapted, out, TrainConfig(lr=0.5, adapt_after=2), prefix="net")
    assert np.array_equal(run_host(out, [x])[0], trainer.predict(x))
    assert all(a.equal(b) for a, b in zip(twin_state(trainer), ref.final))


# --- plan, memory, errors ---------------------------------------------------------------------------

def test_dynamic_plan_respects_the_budget(residual_q):
    prog = build_program(residual_q, TrainConfig(policy="dynamic", budget=0.25))
    for est in ([0, 0, 0, 0], [5, 900, -3, 40], [-100, -200, 700, 800]):
        deep, taken = plan_dynamic(est, prog.layers, prog.budget_macs)
        cost = prog.layers[deep].prop + sum(t * L.cwc for t, L in zip(taken, prog.layers))
        assert cost <= prog.budget_macs
        assert all(t == 0 for t in taken[deep + 1:])


def test_loss_gate_gives_the_budget_to_the_largest_losses(residual_q):
    """Below min_step_budget, the samples with the larger loss gradients get steps planned with the step
    budget while the saved budget lasts; the others leave the model untouched; the spending never runs
    ahead of budget x steps."""
    cfg = TrainConfig(lr=0.02, policy="dynamic", budget=0.1, min_step_budget=0.4)
    tr = FQTTrainer(residual_q, cfg)
    p = tr.prog
    assert p.gate is not None and p.step_macs == int(0.4 * p.full_macs) > p.budget_macs
    assert p.gate.up + p.gate.down == 1 << 14 and abs(p.gate.down / (1 << 14) - 0.25) < 1e-3
    x, y = _data(residual_q, 200, 5, seed=3)
    loss, stepped, spent = [], [], 0
    for i in range(len(x)):
        w0 = [S.w.copy() for S in tr.state]
        vals = tr.forward(tr._check_x(x[i]))
        loss.append(int(np.abs(tr.loss_grad(vals, y[i])).sum()))
        tr.step(x[i], y[i])
        stepped.append(tr.last.deep >= 0)
        if stepped[-1]:
            spent += p.step_macs
            assert p.layers[tr.last.deep].prop + sum(t * L.cwc for t, L in zip(tr.last.taken, p.layers)) \
                <= p.step_macs
        else:
            assert tr.last.macs == 0 and all(np.array_equal(a, S.w) for a, S in zip(w0, tr.state))
        assert spent <= (i + 1) * p.budget_macs
    stepped, loss = np.array(stepped), np.array(loss)
    assert 0.15 < stepped.mean() <= 0.25  # budget / step budget, minus the start-up (nothing saved yet)
    # a stepped sample's loss gradient is larger than a skipped one's more often than not (random: 0.5)
    assert (loss[stepped][:, None] > loss[~stepped][None, :]).mean() > 0.6
    # at or above the minimum step budget there is no gate: every sample gets a step with the budget
    assert build_program(residual_q, TrainConfig(policy="dynamic", budget=0.4, min_step_budget=0.4)).gate is None
    off = build_program(residual_q, TrainConfig(policy="dynamic", budget=0.1, min_step_budget=0))
    assert off.gate is None and off.step_macs == off.budget_macs


def test_memory_plan_beats_naive_layout(residual_q, tmp_path):
    rep = generate_training_library(residual_q, tmp_path / "lib", TrainConfig(), prefix="net")
    mem = rep["train"]["memory"]
    assert mem["ram"]["arena_bytes"] < mem["naive_arena_bytes"]
    assert mem["ram"]["total_bytes"] < mem["naive_ram_bytes"]
    assert rep["memory"]["arena_bytes"] == mem["ram"]["arena_bytes"] >= mem["inference_arena_bytes"]


def test_does_not_fit_and_bad_graphs(small_q, tmp_path):
    from mcuforge.targets.table import get_target

    with pytest.raises(DoesNotFitError, match="training does not fit cortex-m4.*momentum"):
        generate_training_library(small_q, tmp_path / "lib", TrainConfig(momentum=0.9), prefix="net",
                                  target=get_target("cortex-m4", "4K"))
    assert not (tmp_path / "lib").exists()
    with pytest.raises(GraphError, match="cross-entropy"):
        build_program(small_q, TrainConfig(loss="mse"))
    with pytest.raises(InputError, match="budget"):
        build_program(small_q, TrainConfig(policy="dynamic", budget=0))


# --- bit-exactness on the emulated Cortex-M4 -------------------------------------------------------------

@pytest.mark.parametrize("model", ["small", "residual"])
def test_twin_equals_host_and_qemu_after_200_steps(model, small_q, residual_q, tmp_path):
    """200 steps: the numpy twin, host C and Cortex-M4 firmware (QEMU; frozen layers on the DSP kernels)
    end with identical weights, biases and scales; every step's instructions are counted."""
    from mcuforge.targets.table import get_target
    from mcuforge.train.runner import run_train_cortex_m

    if model == "small":
        graph, classes = small_q, 4
        cfg = TrainConfig(lr=1.0, seed=7, adapt_after=4)
    else:
        graph, classes = residual_q, 5
        cfg = TrainConfig(lr=0.02, policy="dynamic", budget=0.5, momentum=0.5, min_step_budget=0.6,
                          trainable=resolve_trainable(residual_q, "last:2"))  # loss-gated steps
    lib = tmp_path / "lib"
    generate_training_library(graph, lib, cfg, prefix="net", target=get_target("cortex-m4"))
    x, y = _data(graph, 200, classes, seed=5)
    ref, _ = run_train_reference(lib, x, y, dump_every=100)
    host = run_train_host(lib, x, y, dump_every=100)
    m4 = run_train_cortex_m(lib, x, y, dump_every=100)
    for run in (host, m4):
        assert np.array_equal(run.preds, ref.preds)
        assert len(run.states) == 2
        for d_ref, d_run in zip(ref.states, run.states):
            assert all(a.equal(b) for a, b in zip(d_ref, d_run))
    assert len(m4.instructions) == 200 and min(m4.instructions) > 1000
    if model == "small":
        assert sum(int(p.a.sum()) for p in m4.final) > 0  # weight scales adapted on the device
    assert 0 < m4.stats["stack_step"] < 4096


# --- command line ----------------------------------------------------------------------------------------

def test_cli_deploy_train_and_train_on_device(small_q, tmp_path):
    import json

    from typer.testing import CliRunner

    from mcuforge.cli import app
    from mcuforge.ir.serialize import load_graph, save_graph

    save_graph(small_q, tmp_path / "m.mcf")
    runner = CliRunner()
    lib = tmp_path / "lib"
    r = runner.invoke(app, ["deploy", str(tmp_path / "m.mcf"), "-o", str(lib), "--train", "--budget", "0.5",
                            "--lr", "0.02", "--name", "net"])
    assert r.exit_code == 0, r.output
    assert "training memory" in r.output and "budget 0.5 of the backward MACs" in r.output
    assert "loss-gated" not in r.output                    # 0.5 is above the minimum step budget
    x, y = _data(small_q, 40, 4)
    np.savez(tmp_path / "d.npz", x=x.transpose(0, 3, 1, 2) if small_q.meta.get("io") else x, y=y)
    out = []
    for target in ("reference", "host"):
        r = runner.invoke(app, ["train-on-device", str(lib), "--data", str(tmp_path / "d.npz"), "--target", target,
                                "--eval", str(tmp_path / "d.npz"), "--every", "20", "--json",
                                str(tmp_path / f"{target}.json"), "--save-ir", str(tmp_path / f"{target}.mcf"),
                                "--save-lib", str(tmp_path / f"lib_{target}")])
        assert r.exit_code == 0, r.output
        out.append(json.loads((tmp_path / f"{target}.json").read_text()))
    assert out[0]["checkpoints"] == out[1]["checkpoints"] and len(out[0]["checkpoints"]) == 2
    adapted = load_graph(tmp_path / "host.mcf")
    assert not np.array_equal(adapted.tensors["fc_w"].data, small_q.tensors["fc_w"].data)
    assert json.loads((tmp_path / "lib_host" / "report.json").read_text())["train"]["policy"] == "dynamic"
    r = runner.invoke(app, ["deploy", str(tmp_path / "m.mcf"), "-o", str(tmp_path / "x"), "--budget", "0.5"])
    assert r.exit_code != 0 and "need --train" in str(r.exception or r.output)


def test_integer_only_training_on_cortex_m0plus(small_q, tmp_path):
    """No DSP, no FPU (ARMv6-M): the same integer step, bit-exact with the twin."""
    from mcuforge.targets.table import get_target
    from mcuforge.train.runner import run_train_cortex_m

    lib = tmp_path / "lib"
    generate_training_library(small_q, lib, TrainConfig(lr=0.05, policy="dynamic", budget=0.5), prefix="net",
                              target=get_target("cortex-m0plus"))
    x, y = _data(small_q, 60, 4)
    ref, _ = run_train_reference(lib, x, y)
    m0 = run_train_cortex_m(lib, x, y)
    assert np.array_equal(m0.preds, ref.preds)
    assert all(a.equal(b) for a, b in zip(ref.final, m0.final))
