"""What every compiled runner shares: checking a batch, packing it into one file, unpacking the outputs.

A runner (host executable, Cortex-M firmware) reads the int8 inputs of each
sample one after another from one binary file, invokes the model once per
sample and writes the int8 outputs likewise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError, ToolchainError


def check_inputs(report: dict, inputs: list[np.ndarray]) -> int:
    """Validate int8 inputs (each [N, ...]) against the library's report; returns N."""
    if len(inputs) != len(report["inputs"]):
        raise InputError(f"the model takes {len(report['inputs'])} input(s), got {len(inputs)}")
    n = inputs[0].shape[0]
    for x, info in zip(inputs, report["inputs"]):
        if x.dtype != np.int8 or tuple(x.shape[1:]) != tuple(info["shape"][1:]) or x.shape[0] != n:
            raise InputError(f"input '{info['name']}' must be int8 of shape (N, "
                             f"{', '.join(map(str, info['shape'][1:]))}), got {x.dtype} {x.shape}")
    return n


def write_inputs(inputs: list[np.ndarray], path: Path) -> None:
    n = inputs[0].shape[0]
    np.concatenate([np.ascontiguousarray(x).reshape(n, -1) for x in inputs], axis=1).tofile(path)


def read_outputs(report: dict, path: Path, n: int, what: str = "runner") -> list[np.ndarray]:
    raw = np.fromfile(path, dtype=np.int8) if Path(path).exists() else np.zeros(0, np.int8)
    sizes = [int(np.prod(o["shape"][1:])) for o in report["outputs"]]
    if raw.size != n * sum(sizes):
        raise ToolchainError(f"{what} wrote {raw.size} output bytes, expected {n} x {sum(sizes)}")
    raw = raw.reshape(n, sum(sizes))
    outs, start = [], 0
    for size, info in zip(sizes, report["outputs"]):
        outs.append(raw[:, start:start + size].reshape((n,) + tuple(info["shape"][1:])))
        start += size
    return outs
