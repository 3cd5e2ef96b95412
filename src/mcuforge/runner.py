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


def read_arrays(path: str | Path, names: list[str], what: str) -> list[np.ndarray]:
    """One array per name from a .npy file (exactly one name) or a .npz file (keyed by the names, or
    arr_0, arr_1, ... in that order, as np.savez writes positional arrays)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file '{path}' does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for bad files
        raise InputError(f"{what} file '{path}' is not a readable .npy/.npz array ({exc})") from None
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            raise InputError(f"the model has {len(names)} inputs ({', '.join(names)}): give the {what} as an .npz "
                             f"file with one array per input name")
        return [data]
    with data:
        keys = list(data.files)
        if all(n in keys for n in names):
            return [data[n] for n in names]
        positional = [f"arr_{i}" for i in range(len(names))]
        if sorted(keys) == sorted(positional):
            return [data[k] for k in positional]
    raise InputError(f"{what} file '{path}' holds {', '.join(keys) or 'nothing'}; the model's inputs are "
                     f"{', '.join(names)} (name the arrays so, or save them positionally in that order)")


def write_arrays(path: str | Path, names: list[str], arrays: list[np.ndarray]) -> None:
    """One output: .npy; several: .npz keyed by output name (the path must end in .npz)."""
    path = Path(path)
    if len(arrays) > 1 and path.suffix != ".npz":
        raise InputError(f"the model has {len(arrays)} outputs ({', '.join(names)}): give --output a .npz path")
    try:
        if len(arrays) == 1 and path.suffix != ".npz":
            np.save(path, arrays[0])
        else:
            np.savez(path, **dict(zip(names, arrays)))
    except OSError as exc:
        raise InputError(f"cannot write '{path}': {exc.strerror or exc}") from None


def run_library(lib: str | Path, graph: Graph, xs: list[np.ndarray], target: str, dequantize: bool = False,
                ram: str | None = None, flash: str | None = None) -> list[np.ndarray]:
    """One batch per graph input through the library; one batch per graph output back. target:
    reference, host, or a Cortex-M core/board run on QEMU (ram/flash override its sizes)."""
    from .targets.table import is_target, unknown_target_message

    if target not in ("reference", "host") and not is_target(target):
        raise InputError(unknown_target_message(target, ("reference", "host")))
    if len(xs) != len(graph.inputs):
        raise InputError(f"the model has {len(graph.inputs)} inputs, got {len(xs)} arrays")
    xq = [prepare_input(graph, name, x) for name, x in zip(graph.inputs, xs)]
    if len({len(x) for x in xq}) > 1:
        raise InputError(f"every input needs the same number of samples, got {', '.join(str(len(x)) for x in xq)}")
    if target == "reference":
        ys = reference.run(graph, xq, mode="int")
    elif target == "host":
        from .targets.host import run_host

        ys = run_host(lib, xq)
    else:
        from .targets.cortex_m import run_cortex_m

        ys = run_cortex_m(lib, xq, target, ram=ram, flash=flash)
    return [finish_output(graph, name, y, dequantize) for name, y in zip(graph.outputs, ys)]
