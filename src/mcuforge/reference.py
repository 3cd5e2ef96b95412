"""The numpy reference interpreter.

``mode="float"`` runs the float semantics (on a quantized graph: on dequantized
constants, with float activations); ``mode="int"`` runs the integer semantics of
a quantized graph, the specification every C kernel is tested against.
Inputs and outputs carry a leading batch dimension of any size.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import GraphError, InputError
from .ir.graph import Graph
from .ops import get_op


def _check_inputs(graph: Graph, inputs: list[np.ndarray], dtype) -> list[np.ndarray]:
    if len(inputs) != len(graph.inputs):
        raise InputError(f"model '{graph.name}' takes {len(graph.inputs)} input(s), got {len(inputs)}")
    out = []
    for name, x in zip(graph.inputs, inputs):
        t = graph.tensors[name]
        x = np.asarray(x)
        if x.ndim != len(t.shape) or tuple(x.shape[1:]) != t.shape[1:]:
            raise InputError(f"input '{name}' must have shape (N, {', '.join(map(str, t.shape[1:]))}) "
                             f"(N samples), got {x.shape}")
        out.append(x.astype(dtype))
    return out


def run(graph: Graph, inputs: list[np.ndarray] | np.ndarray, mode: str = "int",
        observe: Callable[[str, np.ndarray], None] | None = None) -> list[np.ndarray]:
    """Run the graph; `observe(tensor_name, value)` sees every activation (calibration)."""
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    if mode == "int":
        if not graph.is_quantized:
            raise GraphError(f"graph '{graph.name}' is not quantized: integer mode needs a quantized graph")
        inputs = _check_inputs(graph, inputs, np.int8)
    elif mode == "float":
        inputs = _check_inputs(graph, inputs, np.float32)
    else:
        raise ValueError(f"mode must be 'int' or 'float', got {mode!r}")
    values: dict[str, np.ndarray] = dict(zip(graph.inputs, inputs))
    if observe is not None:
        for name, x in values.items():
            observe(name, x)
    remaining_uses: dict[str, int] = {}
    for n in graph.nodes:
        for t in n.inputs:
            remaining_uses[t] = remaining_uses.get(t, 0) + 1
    keep = set(graph.outputs)
    for node in graph.nodes:
        opdef = get_op(node.op, node)
        xs = []
        for t in node.inputs:
            if t == "":
                xs.append(None)
                continue
            tensor = graph.tensors[t]
            if tensor.is_const:
                xs.append(tensor.data if mode == "int" else tensor.float_data())
            else:
                xs.append(values[t])
        ys = opdef.run_int(node, graph, xs) if mode == "int" else opdef.run_float(node, graph, xs)
        for t, y in zip(node.outputs, ys):
            values[t] = y
            if observe is not None:
                observe(t, y)
        for t in node.inputs:  # free what nobody reads any more
            remaining_uses[t] -= 1
            if remaining_uses[t] == 0 and t not in keep and t in values:
                del values[t]
    return [values[t] for t in graph.outputs]
