"""TensorFlow Lite Micro as an oracle: run a .tflite model in the real TFLM interpreter.

Uses the PyPI package ``tflite-micro`` (the TFLM interpreter with its reference
kernels, built for Linux x86-64). ``run_tflm`` feeds a batch sample by sample;
``tflm_arena`` reports the arena TFLM's recording allocator used (the figure a
TFLM deployment must reserve), split into the planned activation part (head)
and the persistent part (tail).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from .errors import ToolchainError


def _runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as exc:
        raise ToolchainError(f"the TFLM interpreter needs the 'tflite-micro' package (pip install tflite-micro; "
                             f"Linux x86-64): {exc}") from None
    return runtime


def _model_bytes(model) -> bytes:
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    return Path(model).read_bytes()


def interpreter(model, arena_size: int | None = None):
    data = _model_bytes(model)
    arena = arena_size or max(1 << 20, 16 * len(data))
    try:
        return _runtime().Interpreter.from_bytes(data, arena_size=arena)
    except (RuntimeError, ValueError) as exc:
        raise ToolchainError(f"TFLM refused the model: {exc}") from None


def io_counts(model) -> tuple[int, int]:
    """(number of inputs, number of outputs) of the model's first subgraph."""
    from .frontends.tflite import read_model

    sg = read_model(_model_bytes(model)).subgraphs[0]
    return len(sg.inputs), len(sg.outputs)


def run_tflm(model, inputs: list[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """Run a batch (each input [N, ...] in the model's own shape and dtype) through TFLM."""
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    model = _model_bytes(model)
    n_in, n_out = io_counts(model)
    if len(inputs) != n_in:
        raise ValueError(f"the model takes {n_in} inputs, got {len(inputs)}")
    interp = interpreter(model)
    n = inputs[0].shape[0]
    details = []
    for j in range(len(inputs)):
        d = interp.get_input_details(j)
        details.append((tuple(int(s) for s in d["shape"]), d["dtype"]))
    outs: list[list[np.ndarray]] = []
    for i in range(n):
        for j, x in enumerate(inputs):
            shape, dtype = details[j]
            interp.set_input(np.ascontiguousarray(x[i]).reshape(shape).astype(dtype, copy=False), j)
        interp.invoke()
        outs.append([np.array(interp.get_output(k)) for k in range(n_out)])
    return [np.stack([s[k] for s in outs]) for k in range(len(outs[0]))]


def tflm_arena(model) -> dict[str, int]:
    """TFLM's arena use after one inference: {"total", "head", "tail"} in bytes."""
    model = _model_bytes(model)
    interp = interpreter(model)
    for j in range(io_counts(model)[0]):
        d = interp.get_input_details(j)
        interp.set_input(np.zeros(tuple(int(s) for s in d["shape"]), d["dtype"]), j)
    interp.invoke()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            interp.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("utf-8", "replace")
    found = {}
    for key in ("total", "head", "tail"):
        m = re.search(rf"Arena allocation {key} (\d+) bytes", text)
        if m:
            found[key] = int(m.group(1))
    if "total" not in found:
        raise ToolchainError(f"could not read TFLM's arena report: {text[:200]!r}")
    return found


__all__ = ["interpreter", "run_tflm", "tflm_arena"]
