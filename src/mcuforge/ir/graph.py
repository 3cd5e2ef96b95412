"""Graph, Tensor, Node and QuantParams.

Conventions that every pass, reference and backend relies on:

* Activation tensors are channel-last (NHWC for images, N,1,L,C for 1-D signals,
  N,C for vectors) and have the batch dimension first; the IR describes one
  sample, so the batch dimension is 1. The reference interpreter runs any batch.
* A tensor with ``data`` is a constant (weights, biases, tables); every other
  tensor is a graph input or the output of exactly one node.
* Quantized tensors follow TFLite's int8 scheme: ``real = scale * (q - zero_point)``,
  per-tensor (``axis is None``) or per-channel along ``axis``.
* ``Graph.nodes`` is always kept in topological order.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from ..errors import GraphError

DTYPES = {"float32": np.float32, "int8": np.int8, "int16": np.int16, "int32": np.int32}
DTYPE_RANGE = {"int8": (-128, 127), "int16": (-32768, 32767), "int32": (-(2**31), 2**31 - 1)}


@dataclass
class QuantParams:
    """Affine quantization: real = scale * (q - zero_point)."""

    scale: np.ndarray  # float32, shape (1,) per-tensor or (C,) per-channel
    zero_point: np.ndarray  # int64, same shape as scale
    axis: int | None = None  # quantized dimension for per-channel parameters

    def __post_init__(self) -> None:
        self.scale = np.atleast_1d(np.asarray(self.scale, dtype=np.float32))
        self.zero_point = np.atleast_1d(np.asarray(self.zero_point, dtype=np.int64))
        if self.scale.shape != self.zero_point.shape:
            raise GraphError(
                f"quantization scale {self.scale.shape} and zero point "
                f"{self.zero_point.shape} differ in shape"
            )
        if not np.all(np.isfinite(self.scale)) or np.any(self.scale <= 0):
            raise GraphError(f"quantization scales must be finite and positive, got {self.scale}")

    @classmethod
    def per_tensor(cls, scale: float, zero_point: int = 0) -> "QuantParams":
        return cls(np.array([scale], np.float32), np.array([zero_point], np.int64), None)

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def s(self) -> float:
        """The scale of a per-tensor quantization."""
        if self.per_channel:
            raise GraphError("per-channel quantization has no single scale")
        return float(self.scale[0])

    @property
    def zp(self) -> int:
        """The zero point of a per-tensor quantization."""
        if self.per_channel:
            raise GraphError("per-channel quantization has no single zero point")
        return int(self.zero_point[0])

    def same_as(self, other: "QuantParams | None") -> bool:
        return (
            other is not None
            and self.axis == other.axis
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    def _broadcast(self, arr: np.ndarray, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.per_channel:
            return self.scale.astype(np.float64)[0], self.zero_point[0]
        shape = [1] * ndim
        shape[self.axis] = -1
        return self.scale.astype(np.float64).reshape(shape), self.zero_point.reshape(shape)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        scale, zp = self._broadcast(q, q.ndim)
        return ((q.astype(np.int64) - zp) * scale).astype(np.float32)

    def quantize(self, x: np.ndarray, dtype: str = "int8") -> np.ndarray:
        """Round half away from zero (TFLite's rounding), then saturate."""
        scale, zp = self._broadcast(x, x.ndim)
        lo, hi = DTYPE_RANGE[dtype]
        scaled = np.asarray(x, np.float64) / scale
        q = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + zp
        return np.clip(q, lo, hi).astype(DTYPES[dtype])

    def to_json(self) -> dict[str, Any]:
        return {
            "scale": [float(v) for v in self.scale],
            "zero_point": [int(v) for v in self.zero_point],
            "axis": self.axis,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "QuantParams":
        return cls(np.array(d["scale"], np.float32), np.array(d["zero_point"], np.int64), d.get("axis"))


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    quant: QuantParams | None = None
    data: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.shape = tuple(int(d) for d in self.shape)
        if self.dtype not in DTYPES:
            raise GraphError(f"tensor '{self.name}': unknown dtype '{self.dtype}'")
        if self.data is not None:
            self.data = np.array(self.data, dtype=DTYPES[self.dtype], order="C")  # keeps rank 0
            if tuple(self.data.shape) != self.shape:
                raise GraphError(
                    f"tensor '{self.name}': data of shape {self.data.shape} "
                    f"does not match declared shape {self.shape}"
                )

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(DTYPES[self.dtype]).itemsize

    def float_data(self) -> np.ndarray:
        """Constant data in real units (dequantized for quantized constants)."""
        if self.data is None:
            raise GraphError(f"tensor '{self.name}' is not a constant")
        if self.dtype == "float32" or self.quant is None:
            return self.data.astype(np.float32)
        return self.quant.dequantize(self.data)


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


class Graph:
    """A dataflow graph in topological order."""

    def __init__(self, name: str = "model") -> None:
        self.name = name
        self.tensors: dict[str, Tensor] = {}
        self.nodes: list[Node] = []
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        # Free-form facts: io layout of the source framework, provenance, quantization recipe.
        self.meta: dict[str, Any] = {}

    # -- construction -------------------------------------------------------
    def add_tensor(self, tensor: Tensor) -> Tensor:
        if tensor.name in self.tensors:
            raise GraphError(f"tensor '{tensor.name}' is defined twice")
        self.tensors[tensor.name] = tensor
        return tensor

    def unique_name(self, base: str) -> str:
        if base not in self.tensors and all(n.name != base for n in self.nodes):
            return base
        i = 1
        while f"{base}_{i}" in self.tensors or any(n.name == f"{base}_{i}" for n in self.nodes):
            i += 1
        return f"{base}_{i}"

    def add_const(self, name: str, data: np.ndarray, dtype: str | None = None,
                  quant: QuantParams | None = None) -> str:
        name = self.unique_name(name)
        dtype = dtype or {np.dtype(v): k for k, v in DTYPES.items()}.get(np.asarray(data).dtype, "float32")
        self.add_tensor(Tensor(name, np.shape(data), dtype, quant, np.asarray(data)))
        return name

    def add_node(self, op: str, inputs: list[str], outputs: list[str], name: str | None = None,
                 **attrs: Any) -> Node:
        node = Node(self.unique_name(name or op), op, list(inputs), list(outputs), dict(attrs))
        self.nodes.append(node)
        return node

    # -- queries ------------------------------------------------------------
    def producer(self, tensor: str) -> Node | None:
        for n in self.nodes:
            if tensor in n.outputs:
                return n
        return None

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise GraphError(f"no node named '{name}'")

    def activation_tensors(self) -> list[str]:
        """Tensors that hold run-time data (graph inputs and node outputs)."""
        names = list(self.inputs)
        for n in self.nodes:
            names.extend(n.outputs)
        return names

    @property
    def is_quantized(self) -> bool:
        return all(self.tensors[t].dtype != "float32" for t in self.activation_tensors())

    # -- editing ------------------------------------------------------------
    def replace_uses(self, old: str, new: str) -> None:
        for n in self.nodes:
            n.inputs = [new if t == old else t for t in n.inputs]
        self.outputs = [new if t == old else t for t in self.outputs]

    def remove_node(self, node: Node) -> None:
        self.nodes.remove(node)

    def prune(self) -> None:
        """Drop nodes whose outputs nobody uses and tensors nobody references."""
        changed = True
        while changed:
            changed = False
            used = set(self.outputs)
            for n in self.nodes:
                used.update(n.inputs)
            for n in list(self.nodes):
                if not any(o in used for o in n.outputs):
                    self.nodes.remove(n)
                    changed = True
        referenced = set(self.inputs) | set(self.outputs)
        for n in self.nodes:
            referenced.update(n.inputs)
            referenced.update(n.outputs)
        for name in list(self.tensors):
            if name not in referenced:
                del self.tensors[name]

    def toposort(self) -> None:
        """Reorder nodes topologically (stable); raise on cycles."""
        available = set(self.inputs) | {t for t, v in self.tensors.items() if v.is_const}
        remaining = list(self.nodes)
        ordered: list[Node] = []
        while remaining:
            for i, n in enumerate(remaining):
                if all(t in available or t == "" for t in n.inputs):
                    ordered.append(n)
                    available.update(n.outputs)
                    del remaining[i]
                    break
            else:
                names = ", ".join(n.name for n in remaining[:5])
                raise GraphError(f"graph has a cycle or an undefined input among nodes: {names}")
        self.nodes = ordered

    def copy(self) -> "Graph":
        return copy.deepcopy(self)

    # -- validation ---------------------------------------------------------
    def validate(self) -> None:
        """Check structure, shapes, dtypes and quantization; raise GraphError with the culprit."""
        from ..ops import get_op  # late import: ops depend on the IR

        if not self.inputs:
            raise GraphError("graph has no inputs")
        if not self.outputs:
            raise GraphError("graph has no outputs")
        for t in self.inputs + self.outputs:
            if t not in self.tensors:
                raise GraphError(f"graph input/output '{t}' is not a tensor of the graph")
        for t in self.inputs:
            if self.tensors[t].is_const:
                raise GraphError(f"graph input '{t}' is a constant")
        produced: dict[str, str] = {}
        available = set(self.inputs) | {t for t, v in self.tensors.items() if v.is_const}
        seen_names: set[str] = set()
        for n in self.nodes:
            if n.name in seen_names:
                raise GraphError(f"node name '{n.name}' is used twice")
            seen_names.add(n.name)
            opdef = get_op(n.op, node=n)
            for t in n.inputs:
                if t == "":
                    continue
                if t not in self.tensors:
                    raise GraphError(f"node '{n.name}' ({n.op}) reads unknown tensor '{t}'")
                if t not in available:
                    raise GraphError(
                        f"node '{n.name}' ({n.op}) reads '{t}' before it is computed "
                        "(nodes are not in topological order, or the graph has a cycle)"
                    )
            for t in n.outputs:
                if t not in self.tensors:
                    raise GraphError(f"node '{n.name}' ({n.op}) writes unknown tensor '{t}'")
                if t in produced or t in self.inputs or self.tensors[t].is_const:
                    raise GraphError(f"tensor '{t}' is written by more than one source (node '{n.name}')")
                produced[t] = n.name
                available.add(t)
            opdef.check(n, self)
        for t in self.outputs:
            if t not in available:
                raise GraphError(f"graph output '{t}' is never computed")
        for t in self.activation_tensors():
            tensor = self.tensors[t]
            if tensor.dtype != "float32" and tensor.quant is None:
                raise GraphError(f"tensor '{t}' has dtype {tensor.dtype} but no quantization parameters")
            if tensor.quant is not None and tensor.quant.per_channel:
                raise GraphError(f"activation tensor '{t}' must be quantized per tensor")
        for t, tensor in self.tensors.items():
            q = tensor.quant
            if q is not None and q.per_channel:
                if not (0 <= q.axis < len(tensor.shape)) or tensor.shape[q.axis] != len(q.scale):
                    raise GraphError(
                        f"tensor '{t}': per-channel quantization along axis {q.axis} has "
                        f"{len(q.scale)} scales for shape {tensor.shape}"
                    )

    def summary(self) -> str:
        lines = [f"graph '{self.name}': inputs {self.inputs} outputs {self.outputs}"]
        for n in self.nodes:
            shapes = [self.tensors[t].shape for t in n.outputs]
            lines.append(f"  {n.name}: {n.op}({', '.join(n.inputs)}) -> {shapes} {n.attrs}")
        return "\n".join(lines)


def iter_const_inputs(graph: Graph, node: Node) -> Iterable[Tensor]:
    for t in node.inputs:
        if t and graph.tensors[t].is_const:
            yield graph.tensors[t]
