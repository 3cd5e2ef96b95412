"""Run a deployed library on a batch: the numpy integer reference or the host C build.

Inputs arrive in the user's layout (the framework's, e.g. NCHW for torch); float
inputs are quantized with the model's input parameters, int8 inputs are taken
as they are. Outputs leave in the user's layout, int8 or dequantized.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import reference
from .errors import InputError, ModelFormatError
from .frontends import from_ir_layout, to_ir_layout
from .ir.graph import Graph
from .ir.serialize import load_graph


def load_library(lib: str | Path) -> Graph:
    lib = Path(lib)
    if not lib.is_dir():
        raise ModelFormatError(f"'{lib}' is not a directory written by `mcuforge deploy`")
    if not (lib / "model.mcf").is_file() or not (lib / "report.json").is_file():
        raise ModelFormatError(f"'{lib}' is not a complete mcuforge library (model.mcf or report.json missing): "
                               "deploy the model again")
    return load_graph(lib / "model.mcf")


def user_shape(graph: Graph, name: str) -> tuple[int, ...]:
    """The shape (batch 1) the user's framework gives this input or output."""
    io = graph.meta.get("io", {}).get(name)
    return tuple(io["torch_shape"]) if io else graph.tensors[name].shape


def prepare_input(graph: Graph, name: str, x: np.ndarray) -> np.ndarray:
    """User-layout float32/int8 batch -> int8 batch in the IR layout."""
    expected = user_shape(graph, name)
    if x.ndim != len(expected) or tuple(x.shape[1:]) != tuple(expected[1:]):
        raise InputError(f"input '{name}' must have shape (N, {', '.join(map(str, expected[1:]))}), got {x.shape}")
    if x.dtype == np.int8:
        return to_ir_layout(graph, name, x)
    if x.dtype.kind != "f":
        raise InputError(f"input '{name}' must be float (quantized for you) or int8, got {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise InputError(f"input '{name}' contains NaN or infinite values")
    return graph.tensors[name].quant.quantize(to_ir_layout(graph, name, x.astype(np.float32)))


def finish_output(graph: Graph, name: str, y: np.ndarray, dequantize: bool) -> np.ndarray:
    if dequantize:
        y = graph.tensors[name].quant.dequantize(y)
    return from_ir_layout(graph, name, y)


def run_library(lib: str | Path, graph: Graph, x: np.ndarray, target: str, dequantize: bool = False,
                ram: str | None = None, flash: str | None = None) -> np.ndarray:
    """target: reference, host, or a Cortex-M core/board run on QEMU (ram/flash override its sizes)."""
    from .targets.table import is_target, unknown_target_message

    if target not in ("reference", "host") and not is_target(target):
        raise InputError(unknown_target_message(target, ("reference", "host")))
    xq = prepare_input(graph, graph.inputs[0], x)
    if target == "reference":
        y = reference.run(graph, [xq], mode="int")[0]
    elif target == "host":
        from .targets.host import run_host

        y = run_host(lib, [xq])[0]
    else:
        from .targets.cortex_m import run_cortex_m

        y = run_cortex_m(lib, [xq], target, ram=ram, flash=flash)[0]
    return finish_output(graph, graph.outputs[0], y, dequantize)
