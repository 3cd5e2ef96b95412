"""Model importers, and the mapping between a framework's tensor layout and the IR's.

``load_model(path)`` picks the importer from the file suffix. Importers record in
``graph.meta["io"]``, per graph input and output tensor, how an array in the
framework's layout maps to the IR tensor::

    {"<tensor>": {"torch_shape": [1, C, H, W], "perm": [0, 2, 3, 1], "ir_shape": [1, H, W, C]}}

meaning ``ir = user.transpose(perm).reshape(N, *ir_shape[1:])`` for a batch of N.
``to_ir_layout`` / ``from_ir_layout`` apply that mapping (the identity where a
graph has no entry, e.g. a graph built in the IR directly).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError, ModelFormatError
from ..ir.graph import Graph

# suffix -> importer name; None: the format is known but its importer is not written yet
FORMATS = {".pt2": "torch.export program", ".mcf": "mcuforge graph", ".onnx": "ONNX model",
           ".tflite": "TFLite int8 flatbuffer"}


def load_model(path: str | Path) -> Graph:
    """Load a model file as a Graph, dispatching on the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        from .torch import load_pt2  # late import: torch takes seconds to import

        return load_pt2(path)
    if suffix == ".mcf":
        from ..ir import load_graph

        return load_graph(path)
    if suffix == ".onnx":
        from .onnx import load_onnx

        return load_onnx(path)
    if suffix == ".tflite":
        from .tflite import load_tflite

        return load_tflite(path)
    accepted = ", ".join(f"{s} ({d})" for s, d in FORMATS.items() if d)
    if suffix in FORMATS:
        raise ModelFormatError(f"'{path}': the {suffix} importer is not available yet; "
                               f"accepted formats: {accepted}")
    raise ModelFormatError(f"'{path}': unknown model format '{suffix or '(no suffix)'}'; "
                           f"accepted formats: {accepted}")


def _entry(graph: Graph, name: str) -> dict | None:
    if name not in graph.tensors:
        raise InputError(f"graph '{graph.name}' has no tensor '{name}'")
    return graph.meta.get("io", {}).get(name)


def to_ir_layout(graph: Graph, name: str, array: np.ndarray) -> np.ndarray:
    """A batch in the source framework's layout -> the IR layout of tensor `name`."""
    a = np.asarray(array)
    io = _entry(graph, name)
    if io is None:
        return a
    expected = tuple(io["torch_shape"][1:])
    if a.ndim != len(io["torch_shape"]) or tuple(a.shape[1:]) != expected:
        raise InputError(f"'{name}' expects arrays of shape (N, {', '.join(map(str, expected))}), "
                         f"got {a.shape}")
    return np.ascontiguousarray(a.transpose(io["perm"]).reshape((a.shape[0],) + tuple(io["ir_shape"][1:])))


def from_ir_layout(graph: Graph, name: str, array: np.ndarray) -> np.ndarray:
    """A batch of IR tensor `name` -> the source framework's layout."""
    a = np.asarray(array)
    io = _entry(graph, name)
    if io is None:
        return a
    perm, tshape = io["perm"], io["torch_shape"]
    permuted = (a.shape[0],) + tuple(tshape[p] for p in perm)[1:]
    return np.ascontiguousarray(a.reshape(permuted).transpose(np.argsort(perm)))


__all__ = ["FORMATS", "load_model", "to_ir_layout", "from_ir_layout"]
