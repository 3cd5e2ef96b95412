"""Shared fixtures: small float graphs built directly in the IR."""

from __future__ import annotations

import shutil
import sys
import tempfile

import numpy as np
import pytest

from mcuforge.ir import Graph, Tensor


def build_small_cnn(seed: int = 0) -> Graph:
    """conv3x3+relu -> maxpool -> global avg pool -> reshape -> fc -> softmax, input 1x8x8x2 (NHWC)."""
    rng = np.random.default_rng(seed)
    g = Graph("small_cnn")
    g.add_tensor(Tensor("x", (1, 8, 8, 2)))
    g.inputs = ["x"]
    w = g.add_const("conv_w", rng.normal(size=(6, 3, 3, 2)).astype(np.float32))
    b = g.add_const("conv_b", rng.normal(size=6).astype(np.float32))
    g.add_tensor(Tensor("c", (1, 8, 8, 6)))
    g.add_node("conv2d", ["x", w, b], ["c"], name="conv", stride=[1, 1], dilation=[1, 1], pads=[1, 1, 1, 1],
               groups=1, act_min=0.0, act_max=None)
    g.add_tensor(Tensor("m", (1, 4, 4, 6)))
    g.add_node("max_pool2d", ["c"], ["m"], name="pool", kernel=[2, 2], stride=[2, 2], pads=[0, 0, 0, 0])
    g.add_tensor(Tensor("a", (1, 1, 1, 6)))
    g.add_node("avg_pool2d", ["m"], ["a"], name="gap", kernel=[4, 4], stride=[1, 1], pads=[0, 0, 0, 0])
    g.add_tensor(Tensor("r", (1, 6)))
    g.add_node("reshape", ["a"], ["r"], name="flatten", shape=[1, 6])
    fw = g.add_const("fc_w", rng.normal(size=(4, 6)).astype(np.float32))
    fb = g.add_const("fc_b", rng.normal(size=4).astype(np.float32))
    g.add_tensor(Tensor("f", (1, 4)))
    g.add_node("fully_connected", ["r", fw, fb], ["f"], name="fc")
    g.add_tensor(Tensor("s", (1, 4)))
    g.add_node("softmax", ["f"], ["s"], name="softmax")
    g.outputs = ["s"]
    g.validate()
    return g


@pytest.fixture
def small_cnn() -> Graph:
    return build_small_cnn()


@pytest.fixture
def calib_nhwc() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(64, 8, 8, 2)).astype(np.float32)


def run_mcuforge(capsys, *args) -> tuple[int, str, str]:
    """Run the `mcuforge` command in-process: (exit code, stdout, stderr)."""
    from mcuforge import cli

    old = sys.argv
    sys.argv = ["mcuforge", *map(str, args)]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def arm_toolchain_cache():
    """The ARM toolchain and QEMU must be there (CI installs them: no skipping), and firmware builds of
    the module go to a cache of their own (fresh kernels, not another module's objects)."""
    missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: `make setup` installs them", pytrace=False)
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCUFORGE_CACHE", d)
        yield
