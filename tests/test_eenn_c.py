"""The early-exit network as generated C: the runtime's decisions equal decisions.simulate on every
sample of a stream (host C under ASan/UBSan and Cortex-M4 on QEMU), the exits' u vectors equal the
integer reference, device libraries chained through the message bytes equal the single library, exact
per-part/per-exit instructions, and the user errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_mcuforge
from _graphs import Builder
from mcuforge import reference
from mcuforge.eenn.codegen import generate_eenn, plan_devices
from mcuforge.eenn.decisions import ENTROPY_Q12, Decision, simulate
from mcuforge.eenn.measure import measure_exit_costs
from mcuforge.eenn.network import EarlyExitNetwork
from mcuforge.eenn.runner import (DECIDE, PARTS, reference_exit_u, run_chain_host, run_stream_cortex_m,
                                  run_stream_host)
from mcuforge.errors import DoesNotFitError, McuforgeError
from mcuforge.quant.ptq import quantize
from mcuforge.targets.table import get_target

KINDS = ("none", "confidence", "margin", "entropy", "difference", "patience")


def _subgraph(q, inp: str, out: str):
    """The part of a quantized graph between two tensors (a cut of the chain)."""
    g = q.copy()
    g.name = f"{q.name}_{out}"
    prod = g.producer(inp)
    g.inputs, g.outputs = [inp], [out]
    if prod is not None:
        g.remove_node(prod)
    g.prune()
    g.validate()
    return g


def _scenes(rng, n):
    yy, xx = np.mgrid[0:8, 0:8] / 7.0
    out = []
    for _ in range(n):
        fx, fy, ph = rng.uniform(0, 3, 3)
        img = rng.uniform(0, 1) * np.sin(3 * fx * xx + 3 * fy * yy + ph) + rng.uniform(-1, 1) * xx + rng.uniform(-1, 1)
        out.append(img[..., None])
    return np.array(out, np.float32)


def build_network(seed: int = 3) -> tuple[EarlyExitNetwork, np.ndarray]:
    """A 3-exit int8 network (conv8 | maxpool conv16 | conv8 gap fc softmax; heads gap fc softmax whose
    weights are fitted to the final logits, so that exits mostly agree) and its input quantization."""
    rng = np.random.default_rng(seed)
    b = Builder("tiny_eenn")
    x = b.input((1, 8, 8, 1))

    def conv(t, o):
        c = b.g.tensors[t].shape[3]
        return b.op("conv2d", [t, b.const("w", rng.normal(size=(o, 3, 3, c)) / np.sqrt(9 * c)),
                               b.const("b", rng.normal(size=o) * 0.1)],
                    stride=[1, 1], dilation=[1, 1], pads=[1, 1, 1, 1], groups=1, act_min=0.0)

    fcs = []

    def head(t, n=5):
        s = b.g.tensors[t].shape
        y = b.op("avg_pool2d", [t], kernel=[s[1], s[2]], stride=[1, 1], pads=[0, 0, 0, 0])
        y = b.op("reshape", [y], shape=[1, s[3]])
        w, bias = b.const("w", rng.normal(size=(n, s[3])) * 3), b.const("b", rng.normal(size=n) * 0.1)
        fcs.append((y, w, bias))
        return b.op("softmax", [b.op("fully_connected", [y, w, bias])])

    a = conv(x, 8)
    h0 = head(a)
    bb = conv(b.op("max_pool2d", [a], kernel=[2, 2], stride=[2, 2], pads=[0, 0, 0, 0]), 16)
    h1 = head(bb)
    f = head(conv(bb, 8))
    g = b.finish(h0, h1, f)
    scenes = _scenes(rng, 256)
    seen = {}
    reference.run(g, [scenes], "float", observe=lambda n, v: seen.__setitem__(n, v))
    logits = seen[g.producer(f).inputs[0]]
    logits = logits - logits.mean(1, keepdims=True)
    for feat, w, bias in fcs[:2]:
        sol = np.linalg.lstsq(np.c_[seen[feat], np.ones(len(scenes))], logits, rcond=None)[0]
        g.tensors[w].data = np.ascontiguousarray(sol[:-1].T, np.float32)
        g.tensors[bias].data = np.ascontiguousarray(sol[-1], np.float32)
    q = quantize(g, [scenes[:64]])
    net = EarlyExitNetwork([_subgraph(q, x, a), _subgraph(q, a, bb), _subgraph(q, bb, f)],
                           [_subgraph(q, a, h0), _subgraph(q, bb, h1)], Decision("confidence", [150, 150]),
                           classes=["a", "b", "c", "d", "e"], meta={"model": "tiny_eenn"})
    net.check()
    return net, q.tensors[q.inputs[0]].quant


def make_stream(quant, seed: int = 7, scenes: int = 30) -> np.ndarray:
    """Scenes held for 1-6 samples with small noise, then a change."""
    rng = np.random.default_rng(seed)
    base = quant.quantize(_scenes(rng, scenes)).astype(np.int16)
    xs = []
    for s in range(scenes):
        for _ in range(int(rng.integers(1, 7))):
            xs.append(np.clip(base[s] + rng.integers(-2, 3, size=base[s].shape), -128, 127))
    return np.array(xs, np.int8)


def decisions_for(u: list[np.ndarray]) -> dict[str, Decision]:
    """Thresholds in the middle of the stream's distributions, so that every mechanism stops early on some
    samples and runs to the end on others."""
    def mid(v):
        return int(np.median(v))

    top2 = [np.sort(v, axis=1)[:, -2:] for v in u[:2]]
    ent = [ENTROPY_Q12[v].sum(axis=1) for v in u[:2]]
    return {"none": Decision("none", []),
            "confidence": Decision("confidence", [mid(v.max(1)) for v in u[:2]]),
            "margin": Decision("margin", [mid(t[:, 1] - t[:, 0]) for t in top2]),
            "entropy": Decision("entropy", [mid(e) for e in ent]),
            "difference": Decision("difference", [12]),
            "patience": Decision("patience", [mid(u[0].max(1)), 0])}


@pytest.fixture(scope="module")
def eenn(tmp_path_factory):
    net, quant = build_network()
    xs = make_stream(quant)
    u = reference_exit_u(net, xs)
    lib = tmp_path_factory.mktemp("eenn") / "lib"
    generate_eenn(net, lib, name="tiny", target=get_target("cortex-m4"))
    return net, xs, u, lib, decisions_for(u)


def check_against_python(run, u, decision, parts: bool):
    """(class, exit, heads evaluated) == simulate on every sample; u of the evaluated exits == reference."""
    want = simulate(decision, u)
    E = len(u)
    assert [(int(c), int(e)) for c, e in zip(run.cls, run.exits)] == [(o.cls, o.exit) for o in want], decision
    assert [o.heads for o in run.outcomes()] == [o.heads for o in want], decision
    ref = np.stack(u, axis=1)   # (N, E, C)
    for i, o in enumerate(want):
        ran = set(o.heads) | ({E - 1} if o.exit == E - 1 else set())
        assert run.evaluated[i] == sum(1 << k for k in ran)
        for k in range(E):
            assert np.array_equal(run.u[i, k], ref[i, k] if k in ran else np.zeros_like(ref[i, k])), (i, k)
    if parts:
        assert np.array_equal(run.parts_u.astype(np.int32), ref)
    return want


def test_runtime_decisions_equal_python_host(eenn):
    net, xs, u, lib, decisions = eenn
    E = net.n_exits
    for kind in KINDS:
        run = run_stream_host(lib, xs, decisions[kind], mode=DECIDE | PARTS, sanitize=True)
        want = check_against_python(run, u, decisions[kind], parts=True)
        exits = [o.exit for o in want]
        if kind == "none":
            assert set(exits) == {E - 1}
        else:  # the stream exercises both an early answer and the full network
            assert min(exits) < E - 1 and max(exits) == E - 1, (kind, exits)
    # patience also stops at exit 1, difference detection keeps a reference over held scenes
    assert 1 in [o.exit for o in simulate(decisions["patience"], u)]
    assert sum(o.exit == 0 for o in simulate(decisions["difference"], u)) > len(xs) // 3


def test_runtime_decisions_equal_python_cortex_m4(eenn):
    net, xs, u, lib, decisions = eenn
    parts = run_stream_cortex_m(lib, xs, "cortex-m4", mode=PARTS)
    assert np.array_equal(parts.parts_u.astype(np.int32), np.stack(u, axis=1))
    pc = dict(zip(parts.part_names, parts.part_instructions.T))
    for kind in KINDS:
        run = run_stream_cortex_m(lib, xs, "cortex-m4", decisions[kind], mode=DECIDE)
        want = check_against_python(run, u, decisions[kind], parts=False)
        # what an invoke costs beyond the parts it ran (same sample): the decision runtime and the call
        for i, o in enumerate(want):
            ran = sum(pc[f"segment{k}"][i] for k in range(o.exit + 1)) + sum(pc[f"head{k}"][i] for k in o.heads)
            assert 0 < run.invoke_instructions[i] - ran < 600, (kind, i, run.invoke_instructions[i], ran)
    assert 0 < run.stats["stack_invoke"] < 2048


def test_exit_costs_on_cortex_m4(eenn):
    net, xs, u, lib, decisions = eenn
    costs = measure_exit_costs(lib, "cortex-m4")
    exits = costs["exits"]
    assert [e["exit"] for e in exits] == [0, 1, 2]
    assert exits[0]["instructions"] < exits[1]["instructions"] < exits[2]["instructions"]
    seg, head = costs["segments"], costs["heads"]
    assert exits[1]["parts"] == pytest.approx(seg[0] + seg[1] + head[0] + head[1])
    assert all(0 < e["decision_overhead"] < 600 for e in exits)
    assert json.loads((lib / "report.json").read_text())["exit_costs"]["exits"][2]["instructions"] == \
        exits[2]["instructions"]
    assert costs == measure_exit_costs(lib, "cortex-m4")   # exact and repeatable


def test_one_shared_arena(eenn):
    net, xs, u, lib, decisions = eenn
    report = json.loads((lib / "report.json").read_text())
    parts = report["eenn"]["parts"]
    cut = max(net.cut_bytes(k) for k in range(net.n_exits - 1))
    assert report["memory"]["arena_bytes"] == max(p["arena_bytes"] for p in parts) + cut
    assert report["memory"]["arena_bytes"] < sum(p["arena_bytes"] for p in parts)
    text = (lib / "tiny_s1.c").read_text()
    assert "#define tiny_s1_arena tiny_arena" in text and "static union" not in text
    assert "int tiny_invoke(tiny_state *state, const int8_t *input, int *exit_taken);" in \
        (lib / "tiny_eenn.h").read_text()


def test_devices_chained_equal_single_library(eenn, tmp_path):
    net, xs, u, lib, decisions = eenn
    multi = dataclasses.replace(net, mapping=["cortex-m4", "cortex-m7", "edge-cpu"])
    out = tmp_path / "multi"
    top = generate_eenn(multi, out, name="tiny")
    assert [d["target"] for d in top["devices"]] == ["cortex-m4", "cortex-m7", "generic"]
    assert [ln["forward_bytes"] for ln in top["links"]] == [4 + net.cut_bytes(0), 4 + net.cut_bytes(1)]
    for kind in KINDS:
        chain = run_chain_host(out, xs, decisions[kind], sanitize=True)
        single = run_stream_host(lib, xs, decisions[kind])
        assert chain.outcome_pairs() == [(int(c), int(e)) for c, e in zip(single.cls, single.exits)], kind
        # bytes over each link: header + cut forward and the 4-byte reply, for the samples that crossed it
        for j in range(2):
            crossed = chain.last_device > j
            assert np.all(chain.link_bytes[crossed, j] == top["links"][j]["forward_bytes"] + 4)
            assert np.all(chain.link_bytes[~crossed, j] == 0)
    # each device's library on its own emulated core computes the reference exits from its input
    h0 = reference.run(net.segments[0], [xs[:8]], "int")[0]
    d0 = run_stream_cortex_m(out / "device0", xs[:8], "cortex-m4", mode=PARTS, count=False)
    assert np.array_equal(d0.parts_u[:, 0].astype(np.int32), u[0][:8])
    d1 = run_stream_cortex_m(out / "device1", h0, "cortex-m7", mode=PARTS, count=False)
    assert np.array_equal(d1.parts_u[:, 1].astype(np.int32), u[1][:8])
    assert (out / "device1" / "tiny_d1_eenn.h").read_text().count("tiny_d1_continue") >= 2


mcuforge = run_mcuforge


def test_cli_deploy_run_bench(eenn, tmp_path, capsys):
    net, xs, u, lib, decisions = eenn
    net.save(tmp_path / "net")
    code, out, err = mcuforge(capsys, "deploy", tmp_path / "net", "-o", tmp_path / "lib", "--target", "cortex-m4",
                              "--name", "kws")
    assert code == 0, err
    assert "shared arena" in out and (tmp_path / "lib" / "kws_eenn.h").is_file()
    np.save(tmp_path / "x.npy", xs)
    for target in ("reference", "host", "cortex-m4"):
        code, out, err = mcuforge(capsys, "run", tmp_path / "lib", "--input", tmp_path / "x.npy", "--output",
                                  tmp_path / f"y_{target}.npy", "--target", target)
        assert code == 0, err
        y = np.load(tmp_path / f"y_{target}.npy")
        assert y.tolist() == [[o.cls, o.exit] for o in simulate(net.decision, u)], target
    code, out, err = mcuforge(capsys, "bench", tmp_path / "lib", "--json", tmp_path / "b.json")
    assert code == 0, err
    assert "stop at exit k" in out and json.loads((tmp_path / "b.json").read_text())["exits"][0]["exit"] == 0
    multi = dataclasses.replace(net, mapping=["cortex-m4", "cortex-m4", "cortex-m7"])
    multi.save(tmp_path / "net2")
    code, out, err = mcuforge(capsys, "deploy", tmp_path / "net2", "-o", tmp_path / "multi")
    assert code == 0, err
    assert f"{4 + net.cut_bytes(1):,}" in out and (tmp_path / "multi" / "device1" / "report.json").is_file()
    code, out, err = mcuforge(capsys, "run", tmp_path / "multi", "--input", tmp_path / "x.npy", "--output",
                              tmp_path / "ym.npy", "--target", "host")
    assert code == 0, err
    assert np.load(tmp_path / "ym.npy").tolist() == [[o.cls, o.exit] for o in simulate(net.decision, u)]


def test_user_errors(eenn, tmp_path, capsys):
    net, xs, u, lib, decisions = eenn
    # not an early-exit network / corrupt
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "eenn.json").write_text("{not json")
    code, _, err = mcuforge(capsys, "deploy", bad, "-o", tmp_path / "o1")
    assert code == 1 and "error:" in err and "corrupt" in err
    assert not (tmp_path / "o1").exists()
    # a mapping to an unknown target
    m = dataclasses.replace(net, mapping=["cortex-m4", "cortex-m99", "cortex-m99"])
    with pytest.raises(McuforgeError, match="segment 1 is mapped to unknown target 'cortex-m99'"):
        plan_devices(m)
    m.save(tmp_path / "badmap")
    code, _, err = mcuforge(capsys, "deploy", tmp_path / "badmap", "-o", tmp_path / "o2")
    assert code == 1 and "unknown target 'cortex-m99'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o2").exists()
    # does not fit: a 1 KB part
    with pytest.raises(DoesNotFitError, match="RAM overflows by"):
        generate_eenn(net, tmp_path / "o3", target=get_target("cortex-m4", ram="1K"))
    assert not (tmp_path / "o3").exists()
    net.save(tmp_path / "net")
    code, _, err = mcuforge(capsys, "deploy", tmp_path / "net", "-o", tmp_path / "o4", "--target", "cortex-m4",
                            "--ram", "1K")
    assert code == 1 and "does not fit cortex-m4" in err
    code, _, err = mcuforge(capsys, "deploy", tmp_path / "net", "-o", tmp_path / "o4", "--train")
    assert code == 1 and "already int8" in err
    # wrong input shape, unknown run target, a bad decision
    np.save(tmp_path / "x.npy", xs[:, :4])
    code, _, err = mcuforge(capsys, "run", lib, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert code == 1 and "must have shape" in err
    np.save(tmp_path / "x.npy", xs[:2])
    code, _, err = mcuforge(capsys, "run", lib, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy",
                            "--target", "cortex-m99")
    assert code == 1 and "unknown target" in err
    with pytest.raises(McuforgeError, match="needs 2 threshold"):
        run_stream_host(lib, xs[:2], Decision("confidence", [1]))
