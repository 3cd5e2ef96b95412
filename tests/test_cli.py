"""The `mcuforge` command as a user meets it: outputs, error messages, exit codes, output directories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_mcuforge
from mcuforge.ir import load_graph, save_graph


mcuforge = run_mcuforge


@pytest.fixture
def float_model(tmp_path, small_cnn, calib_nhwc):
    save_graph(small_cnn, tmp_path / "cnn.mcf")
    np.save(tmp_path / "calib.npy", calib_nhwc)
    return tmp_path / "cnn.mcf", tmp_path / "calib.npy"


def no_leftovers(parent: Path) -> bool:
    """No staging folders of a failed or finished job remain."""
    return not [p for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_deploy_run_reference_and_host_agree(tmp_path, capsys, float_model):
    model, calib = float_model
    lib = tmp_path / "lib"
    code, out, err = mcuforge(capsys, "deploy", model, "--calib", calib, "-o", lib)
    assert code == 0, err
    for name in ("model.h", "model.c", "mf_conv.c", "mf_kernels.h", "Makefile", "CMakeLists.txt",
                 "report.json", "report.md", "model.mcf", ".mcuforge"):
        assert (lib / name).is_file(), name
    assert "arena" in out and "fully_connected" in out
    report = json.loads((lib / "report.json").read_text())
    assert report["totals"]["macs"] == 8 * 8 * 6 * 3 * 3 * 2 + 6 * 4
    x = np.random.default_rng(5).normal(size=(20, 8, 8, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for target in ("reference", "host"):
        code, out, err = mcuforge(capsys, "run", lib, "--input", tmp_path / "x.npy", "--output",
                                  tmp_path / f"y_{target}.npy", "--target", target)
        assert code == 0, err
    y_ref, y_host = np.load(tmp_path / "y_reference.npy"), np.load(tmp_path / "y_host.npy")
    assert y_ref.dtype == np.int8 and y_ref.shape == (20, 4)
    np.testing.assert_array_equal(y_ref, y_host)
    # int8 inputs are taken as they are; --dequantize gives probabilities
    xq = load_graph(lib / "model.mcf").tensors["x"].quant.quantize(x)
    np.save(tmp_path / "xq.npy", xq)
    code, _, err = mcuforge(capsys, "run", lib, "--input", tmp_path / "xq.npy", "--output", tmp_path / "p.npy",
                            "--target", "host", "--dequantize")
    assert code == 0, err
    p = np.load(tmp_path / "p.npy")
    assert p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=0.05)
    np.testing.assert_array_equal(np.argmax(p, 1), np.argmax(y_ref, 1))


def test_deploy_without_calibration_fails_and_writes_nothing(tmp_path, capsys, float_model):
    model, _ = float_model
    code, out, err = mcuforge(capsys, "deploy", model, "-o", tmp_path / "lib")
    assert code != 0
    assert "--calib" in err and "float model" in err
    assert "Traceback" not in err
    assert not (tmp_path / "lib").exists() and no_leftovers(tmp_path)


def test_bad_calibration_shape_leaves_no_directory(tmp_path, capsys, float_model):
    model, _ = float_model
    np.save(tmp_path / "bad.npy", np.zeros((4, 3, 3), np.float32))
    code, _, err = mcuforge(capsys, "deploy", model, "--calib", tmp_path / "bad.npy", "-o", tmp_path / "lib")
    assert code != 0 and "calibration" in err and "shape" in err
    assert not (tmp_path / "lib").exists() and no_leftovers(tmp_path)


def test_corrupt_and_missing_model_files(tmp_path, capsys):
    bad = tmp_path / "bad.mcf"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    code, _, err = mcuforge(capsys, "deploy", bad, "-o", tmp_path / "lib")
    assert code != 0 and "corrupt" in err and "bad.mcf" in err
    code, _, err = mcuforge(capsys, "inspect", tmp_path / "nope.mcf")
    assert code != 0 and "no such file" in err
    odd = tmp_path / "model.h5"
    odd.write_text("x")
    code, _, err = mcuforge(capsys, "deploy", odd, "-o", tmp_path / "lib")
    assert code != 0 and ".pt2" in err
    assert not (tmp_path / "lib").exists()


def test_unsupported_op_names_node_and_op(tmp_path, capsys, small_cnn):
    small_cnn.nodes[1].op = "gelu"
    save_graph(small_cnn, tmp_path / "g.mcf")
    code, _, err = mcuforge(capsys, "inspect", tmp_path / "g.mcf")
    assert code != 0 and "'pool'" in err and "gelu" in err


def test_wrong_input_shape_and_dtype(tmp_path, capsys, float_model):
    model, calib = float_model
    lib = tmp_path / "lib"
    assert mcuforge(capsys, "deploy", model, "--calib", calib, "-o", lib)[0] == 0
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8, 3), np.float32))
    code, _, err = mcuforge(capsys, "run", lib, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert code != 0 and "must have shape (N, 8, 8, 2)" in err and "(3, 8, 8, 3)" in err
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8, 2), np.int32))
    code, _, err = mcuforge(capsys, "run", lib, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert code != 0 and "int8" in err and "int32" in err
    assert not (tmp_path / "y.npy").exists()


def test_unwritable_and_foreign_output_directories(tmp_path, capsys, float_model):
    model, calib = float_model
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    code, _, err = mcuforge(capsys, "deploy", model, "--calib", calib, "-o", blocker / "lib")
    assert code != 0 and "cannot write output directory" in err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code, _, err = mcuforge(capsys, "deploy", model, "--calib", calib, "-o", foreign)
    assert code != 0 and "not written by mcuforge" in err
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_redeploy_replaces_previous_output(tmp_path, capsys, float_model):
    model, calib = float_model
    lib = tmp_path / "lib"
    assert mcuforge(capsys, "deploy", model, "--calib", calib, "-o", lib)[0] == 0
    (lib / "stale.c").write_text("int stale;")
    assert mcuforge(capsys, "deploy", model, "--calib", calib, "-o", lib, "--name", "net")[0] == 0
    assert not (lib / "stale.c").exists() and (lib / "net.h").is_file() and not (lib / "model.h").exists()
    assert no_leftovers(tmp_path)


def test_bad_option_is_a_usage_error(tmp_path, capsys, float_model):
    model, calib = float_model
    code, _, err = mcuforge(capsys, "deploy", model, "--calib", calib, "-o", tmp_path / "l", "--method", "magic")
    assert code == 2 and "magic" in err
    code, _, err = mcuforge(capsys, "run", tmp_path / "missing", "--input", calib, "--output", tmp_path / "y.npy")
    assert code != 0 and "not a directory written by `mcuforge deploy`" in err


def test_debug_shows_traceback(tmp_path, capsys):
    code, _, err = mcuforge(capsys, "--debug", "inspect", tmp_path / "nope.mcf")
    assert code != 0 and "Traceback" in err


def _export(tmp_path, module, shape):
    import torch

    ep = torch.export.export(module.eval(), (torch.zeros(shape),))
    path = tmp_path / "m.pt2"
    torch.export.save(ep, path)
    return path


def test_several_inputs_and_outputs(tmp_path, capsys):
    """Calibration and run inputs as .npz (positional or by name), outputs as .npz keyed by output name."""
    import torch
    import torch.nn as nn

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(2, 4, 3, padding=1), nn.Linear(6, 3)

        def forward(self, image, vector):
            return self.conv(image).relu().mean((2, 3)), self.fc(vector)

    torch.manual_seed(0)
    ep = torch.export.export(TwoHeads().eval(), (torch.zeros(1, 2, 5, 5), torch.zeros(1, 6)))
    torch.export.save(ep, tmp_path / "two.pt2")
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 2, 5, 5)).astype(np.float32), rng.normal(size=(40, 6)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", a, b)
    lib = tmp_path / "lib"
    code, _, err = mcuforge(capsys, "deploy", tmp_path / "two.pt2", "--calib", tmp_path / "calib.npz", "-o", lib)
    assert code == 0, err
    g = load_graph(lib / "model.mcf")
    assert len(g.inputs) == 2 and len(g.outputs) == 2
    np.savez(tmp_path / "x.npz", **{g.inputs[0]: a[:9], g.inputs[1]: b[:9]})
    got = {}
    for target in ("reference", "host"):
        code, out, err = mcuforge(capsys, "run", lib, "--input", tmp_path / "x.npz", "--output",
                                  tmp_path / f"y_{target}.npz", "--target", target)
        assert code == 0, err
        with np.load(tmp_path / f"y_{target}.npz") as z:
            got[target] = {k: z[k] for k in z.files}
    assert sorted(got["host"]) == sorted(g.outputs)
    assert got["host"][g.outputs[0]].shape == (9, 4) and got["host"][g.outputs[1]].shape == (9, 3)
    for k in g.outputs:
        np.testing.assert_array_equal(got["reference"][k], got["host"][k])
    # several outputs need an .npz path: refused before anything runs or is written
    code, _, err = mcuforge(capsys, "run", lib, "--input", tmp_path / "x.npz", "--output", tmp_path / "y.npy")
    assert code != 0 and "2 outputs" in err and ".npz" in err and not (tmp_path / "y.npy").exists()
    # a single .npy for two inputs, and an .npz with the wrong names, say what is expected
    np.save(tmp_path / "one.npy", a)
    code, _, err = mcuforge(capsys, "run", lib, "--input", tmp_path / "one.npy", "--output", tmp_path / "y.npz")
    assert code != 0 and "2 inputs" in err and ".npz" in err
    np.savez(tmp_path / "bad.npz", first=a, second=b)
    code, _, err = mcuforge(capsys, "run", lib, "--input", tmp_path / "bad.npz", "--output", tmp_path / "y.npz")
    assert code != 0 and "first, second" in err and g.inputs[0] in err


def test_pt2_unsupported_op_and_corrupt_file(tmp_path, capsys):
    import torch.nn as nn

    path = _export(tmp_path, nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2)), (1, 4))
    np.save(tmp_path / "c.npy", np.zeros((8, 4), np.float32))
    code, _, err = mcuforge(capsys, "deploy", path, "--calib", tmp_path / "c.npy", "-o", tmp_path / "lib")
    assert code != 0 and "gelu" in err and "Traceback" not in err
    assert not (tmp_path / "lib").exists()
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"PK\x03\x04" + np.random.default_rng(0).bytes(200))
    code, _, err = mcuforge(capsys, "deploy", bad, "--calib", tmp_path / "c.npy", "-o", tmp_path / "lib")
    assert code != 0 and "bad.pt2" in err and "Traceback" not in err


def test_pt2_deploy_takes_torch_layout(tmp_path, capsys):
    """Calibration and run inputs are NCHW as torch takes them; outputs match torch's argmax."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 6 * 6, 5)).eval()
    path = _export(tmp_path, net, (1, 3, 6, 6))
    x = torch.randn(200, 3, 6, 6)
    np.save(tmp_path / "x.npy", x.numpy())
    code, out, err = mcuforge(capsys, "deploy", path, "--calib", tmp_path / "x.npy", "-o", tmp_path / "lib",
                              "--method", "mse")
    assert code == 0, err
    code, _, err = mcuforge(capsys, "run", tmp_path / "lib", "--input", tmp_path / "x.npy", "--output",
                            tmp_path / "y.npy", "--target", "host", "--dequantize")
    assert code == 0, err
    y = np.load(tmp_path / "y.npy")
    with torch.no_grad():
        ref = net(x).numpy()
    assert y.shape == ref.shape
    assert np.mean(np.argmax(y, 1) == np.argmax(ref, 1)) > 0.9
    assert np.abs(y - ref).max() < 0.1 * np.abs(ref).max()
    code, out, _ = mcuforge(capsys, "inspect", path)
    assert code == 0 and "conv2d" in out and "float" in out
