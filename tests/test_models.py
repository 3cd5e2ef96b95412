"""Whole-model checks on the demo flow: torch -> IR float -> int8 reference -> C."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mcuforge import reference
from mcuforge.demo import run_demo
from mcuforge.ir import load_graph
from mcuforge.targets.host import run_host


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    run_demo(out, epochs=15, seed=0)
    return out


def test_demo_accuracy_and_bit_exactness(demo_dir):
    s = json.loads((demo_dir / "summary.json").read_text())
    assert s["float_accuracy"] > 0.9
    assert abs(s["int8_reference_accuracy"] - s["float_accuracy"]) <= 0.01
    assert s["c_vs_reference_mismatches"] == 0 and s["outputs_compared"] == s["data"]["test"] * 10
    assert s["c_accuracy"] == s["int8_reference_accuracy"]
    assert s["torch_vs_ir_float_max_abs_diff"] < 1e-4
    assert (demo_dir / "model.pt2").is_file() and (demo_dir / "lib" / "digits.h").is_file()


def test_demo_runs_on_the_emulated_cortex_m4(demo_dir):
    m4 = json.loads((demo_dir / "summary.json").read_text())["cortex_m4"]
    s = json.loads((demo_dir / "summary.json").read_text())
    assert "skipped" not in m4, m4.get("skipped")
    assert m4["vs_reference_mismatches"] == 0 and m4["accuracy"] == s["int8_reference_accuracy"]
    assert s["macs"] < m4["instructions_per_inference"] < 20 * s["macs"]
    assert m4["flash_model_bytes"] > s["const_bytes"] and m4["arena_bytes"] == s["arena_bytes"]
    assert 0 < m4["stack_inference_bytes"] < 4096


def test_demo_library_is_clean_under_sanitizers(demo_dir):
    lib = demo_dir / "lib"
    g = load_graph(lib / "model.mcf")
    x = np.load(demo_dir / "test_inputs.npy")[:100]
    xq = g.tensors[g.inputs[0]].quant.quantize(x.transpose(0, 2, 3, 1))
    y_ref = reference.run(g, [xq], mode="int")[0]
    np.testing.assert_array_equal(run_host(lib, [xq], sanitize=True)[0], y_ref)


def test_memory_plan_reaches_the_per_layer_lower_bound(demo_dir):
    """Sequential CNN: the arena is the largest input + output of one layer, less the bytes the
    output shares with its dying input where the layer overlaps (the 16 -> 32 channel conv)."""
    report = json.loads((demo_dir / "lib" / "report.json").read_text())
    shared = {o["layer"]: o["shared_bytes"] for o in report["memory"]["overlap_layers"]}
    pair = {r["name"]: sum(np.prod(s) for s in r["input_shapes"]) + np.prod(r["output_shape"])
            for r in report["layers"] if r["op"] != "reshape"}
    assert report["memory"]["arena_bytes"] == max(pair[k] - shared.get(k, 0) for k in pair) < max(pair.values())
    assert report["memory"]["arena_bytes"] < report["memory"]["unplanned_bytes"]


def test_demo_adapts_on_the_device(demo_dir):
    """The demo's last act: on-device training on rotated digits, firmware == host C, dynamic cheaper than full."""
    a = json.loads((demo_dir / "summary.json").read_text())["on_device_training"]
    assert "cortex_m4_skipped" not in a, a.get("cortex_m4_skipped")
    full, dyn = a["runs"]
    assert full["accuracy_after"] > a["accuracy_before"] + 0.15 and dyn["accuracy_after"] > a["accuracy_before"] + 0.1
    assert dyn["instructions_per_sample"] < 0.7 * full["instructions_per_sample"]
    assert full["peak_ram_bytes"] < 256 * 1024
