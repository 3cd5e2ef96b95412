"""The ONNX frontend: an ONNX model -> a mcuforge Graph.

* A float model (as ``torch.onnx.export`` writes it) becomes a float graph, like
  the torch frontend's: batch norms folded, activations fused; quantize it with a
  calibration set (``mcuforge.quant.ptq.quantize``).
* A QDQ model (QuantizeLinear/DequantizeLinear pairs around float ops, as
  ``onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QDQ)``
  writes it) becomes a quantized graph: activation parameters from the Q/DQ pairs,
  weights and biases from the dequantized initializers. No calibration is needed.
  What TFLite's int8 scheme represents exactly is converted (uint8 tensors become
  int8 with the zero point shifted by -128); what it cannot (asymmetric or
  non-8-bit weights, per-channel or 16-bit activations) is an error.

Conversion walks the ONNX nodes once (they are topologically sorted). Every ONNX
value becomes an activation (``Act``: an IR tensor and its layout, see
``_layout``) or a numpy constant: initializers, Constant nodes and everything
computed from constants and static shapes only (``Shape -> Gather -> Concat ->
Reshape`` chains) are evaluated at import. ONNX is NCHW like torch, and
``graph.meta["io"]`` is recorded as the torch frontend does, so users feed NCHW
arrays. The batch (dimension 0 of every activation) may be symbolic; every other
dimension must be static.

A QDQ model is converted in two steps: first as a float graph whose tensors carry
the Q/DQ parameters as their intended quantization (QuantizeLinear and
DequantizeLinear on activations are identities), which the float passes optimize
like any other; then ``_quantize_qdq`` turns the annotated float graph into an
int8 graph, inserting a requantization where an op fixes its output parameters
(softmax, pools, layout ops) and the model wants others.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ModelFormatError, QuantizationError, UnsupportedOpError
from ..ir.graph import Graph, Node, QuantParams, Tensor
from ..ops import OPS
from ..passes import BATCH_NORM, optimize
from ..quant.fixedpoint import round_half_away
from ._layout import Act, GraphBuilder, Layout, ints

__all__ = ["load_onnx", "from_onnx_model", "supported_ops"]

MIN_OPSET = 7


# --- public API ---------------------------------------------------------------------------------

def load_onnx(path: str | Path) -> Graph:
    """Load a .onnx file and convert it (float graph, or quantized graph for a QDQ model)."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise ModelFormatError(f"model file '{path}' does not exist")
    if not path.is_file():
        raise ModelFormatError(f"model file '{path}' is not a file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, missing external data, ...
        raise ModelFormatError(f"'{path}' is not a readable ONNX model: {type(exc).__name__}: "
                               f"{_first_line(exc)}") from None
    return from_onnx_model(model, name=path.stem, source=f"'{path}'")


def from_onnx_model(model: Any, name: str = "model", source: str = "the ONNX model") -> Graph:
    """Convert an ``onnx.ModelProto``."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        raise ModelFormatError(f"{source} is not an ONNX ModelProto (got {type(model).__name__})")
    if not model.HasField("graph") or (not model.graph.node and not model.graph.input):
        raise ModelFormatError(f"{source} is not a valid ONNX model: it has no graph")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelFormatError(f"{source} is not a valid ONNX model: {_first_line(exc)}") from None
    cv = _Converter(model, name)
    graph = cv.convert()
    graph = optimize(graph)
    if cv.qdq:
        graph = _quantize_qdq(graph, cv)
    else:  # weight-only Q/DQ: a float model; PTQ chooses the quantization
        for t in graph.tensors.values():
            t.quant = None
    graph.validate()
    return graph


def supported_ops() -> list[str]:
    """The ONNX op types the frontend converts (on activations; any op on constants is folded)."""
    return sorted(set(_HANDLERS) | {"QuantizeLinear", "DequantizeLinear", "Shape", "Size", "Constant"})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- values ---------------------------------------------------------------------------------------

@dataclass
class _ONode:
    """An ONNX node with its attributes decoded."""

    index: int
    name: str
    op: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]

    def where(self) -> str:
        return f"node '{self.name}' (#{self.index}, {self.op})"


@dataclass(frozen=True)
class _Unavailable:
    """A value mcuforge does not compute (dropout masks, pooling indices); an error only if read."""

    what: str


@dataclass
class _QInfo:
    """The parameters of a DequantizeLinear of a constant (weights, biases, constant operands)."""

    scale: np.ndarray  # float32, 1-D
    zero_point: np.ndarray  # int64, 1-D, same length
    axis: int | None  # the per-channel axis of the constant (None: per tensor)
    dtype: str  # numpy name of the integer type: int8, uint8, int32, ...
    raw: np.ndarray  # the integer data

    def params(self, axis_map: dict[int, int] | None = None) -> QuantParams | None:
        """int8-scheme parameters (uint8 zero points shifted by -128); `axis_map` maps the
        ONNX per-channel axis to the IR axis. None if not representable (e.g. other axis)."""
        zp = self.zero_point - 128 if self.dtype == "uint8" else self.zero_point
        if self.axis is None:
            return QuantParams(self.scale[:1], zp[:1], None)
        if axis_map is None or self.axis not in axis_map:
            return None
        return QuantParams(self.scale, zp, axis_map[self.axis])


# --- the op table ---------------------------------------------------------------------------------

_HANDLERS: dict[str, Callable] = {}
_ELEMENTWISE: set[str] = {"QuantizeLinear", "DequantizeLinear"}
_CHANNEL_LAST: set[str] = set()


def _handles(*ops: str, elementwise: bool = False, channel_last: bool = False):
    def register(fn):
        for op in ops:
            _HANDLERS[op] = fn
            if elementwise:
                _ELEMENTWISE.add(op)
            if channel_last:
                _CHANNEL_LAST.add(op)
        return fn
    return register


_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_DOMAINS = ("", "ai.onnx")
_FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}


# --- the converter --------------------------------------------------------------------------------

class _Converter(GraphBuilder):
    def __init__(self, model: Any, name: str) -> None:
        super().__init__(name)
        self.model = model
        self.env: dict[str, Any] = {}  # ONNX value name -> Act | np.ndarray | _Unavailable
        self.qinfo: dict[str, _QInfo] = {}  # ONNX value name (a dequantized constant) -> its Q params
        self.raw_bias: dict[str, np.ndarray] = {}  # IR constant -> its int32 data in the QDQ model
        self.qdq = False  # the model quantizes activations (QuantizeLinear on an activation)
        self.batch: int | None = None  # the declared batch size (None: symbolic)
        self.opset = 0
        self.nodes: list[_ONode] = []
        self.consumers: dict[str, list[_ONode]] = {}
        self.producer: dict[str, _ONode] = {}

    # -- driver --------------------------------------------------------------------
    def convert(self) -> Graph:
        import onnx
        from onnx import numpy_helper

        model = self.model
        self.opset = self._default_opset()
        g = model.graph
        for i, n in enumerate(g.node):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
            node = _ONode(i, n.name or f"{n.op_type}_{i}", n.op_type, n.domain, list(n.input), list(n.output), attrs)
            self.nodes.append(node)
            for t in node.inputs:
                if t:
                    self.consumers.setdefault(t, []).append(node)
            for t in node.outputs:
                self.producer[t] = node
        for init in g.initializer:
            try:
                self.env[init.name] = numpy_helper.to_array(init)
            except Exception as exc:
                raise ModelFormatError(f"initializer '{init.name}' cannot be read: {_first_line(exc)}") from None
        for init in g.sparse_initializer:
            raise UnsupportedOpError(f"sparse initializer '{init.values.name}' is not supported")

        io: dict[str, dict] = {}
        user_inputs = [v for v in g.input if v.name not in self.env]
        for v in user_inputs:
            act = self._graph_input(v)
            self.env[v.name] = act
            io[act.name] = self.io_entry(act)
        if not self.g.inputs:
            raise UnsupportedOpError("the ONNX model has no (non-constant) inputs")
        self._check_supported()

        for node in self.nodes:
            for t in node.inputs:
                if t and t not in self.env:
                    raise ModelFormatError(f"{node.where()} reads '{t}', which is not computed before it "
                                           "(the ONNX graph is not topologically sorted or is incomplete)")
            results = self._convert_node(node)
            if len(results) < len([o for o in node.outputs if o]):
                results = list(results) + [_Unavailable(f"output of {node.op}")] * len(node.outputs)
            for name, value in zip(node.outputs, results):
                if name:
                    self.env[name] = value

        for v in g.output:
            act = self._graph_output(v.name)
            io[act.name] = self.io_entry(act)
        if not self.g.outputs:
            raise UnsupportedOpError("the ONNX model has no outputs")
        for v, ir_name in zip(g.output, list(self.g.outputs)):  # outputs keep the model's names
            new = self._rename(ir_name, _ident(v.name))
            io[new] = io.pop(ir_name)
        self.g.meta["io"] = io
        self.g.meta["source"] = {"framework": "onnx", "opset": self.opset,
                                 "producer": f"{model.producer_name} {model.producer_version}".strip()}
        self.g.prune()
        return self.g

    def _default_opset(self) -> int:
        import onnx

        versions = [o.version for o in self.model.opset_import if o.domain in _DOMAINS]
        if not versions:
            raise ModelFormatError("the ONNX model imports no version of the default operator set")
        opset = max(versions)
        newest = onnx.defs.onnx_opset_version()
        if opset < MIN_OPSET:
            raise UnsupportedOpError(f"ONNX opset {opset} is too old; mcuforge reads opsets {MIN_OPSET} to "
                                     f"{newest} (convert with onnx.version_converter)")
        if opset > newest:
            raise UnsupportedOpError(f"ONNX opset {opset} is newer than the installed onnx package knows "
                                     f"(up to {newest}); upgrade onnx")
        return opset

    def _check_supported(self) -> None:
        """Name every op the conversion cannot handle at once. An op is a problem only if it
        reads an activation: ops on constants and static shapes are evaluated."""
        dynamic = set(self.g.inputs) | {n for n, v in self.env.items() if isinstance(v, Act)}
        problems = []
        for node in self.nodes:
            if not any(t in dynamic for t in node.inputs if t):
                continue
            if node.op in ("Shape", "Size") and node.domain in _DOMAINS:
                continue  # static shapes: constants
            dynamic.update(o for o in node.outputs if o)
            known = node.op in _HANDLERS or node.op in _QDQ_OPS
            if not known or node.domain not in _DOMAINS + ("com.microsoft",) or (
                    node.domain == "com.microsoft" and node.op not in _QDQ_OPS):
                problems.append(node)
        if problems:
            def label(n):
                return f"{n.domain}::{n.op}" if n.domain not in _DOMAINS else n.op
            uses = "; ".join(f"node '{n.name}' (#{n.index}) uses ONNX op {label(n)}" for n in problems)
            raise UnsupportedOpError(f"{uses}, which mcuforge does not support. "
                                     f"Supported ONNX ops: {', '.join(supported_ops())}")

    def _convert_node(self, node: _ONode) -> list[Any]:
        if node.op == "Constant":
            return [self._constant(node)]
        values = [self.env[t] if t else None for t in node.inputs]
        for v in values:
            if isinstance(v, _Unavailable):
                raise UnsupportedOpError(f"{node.where()} reads a {v.what}, which mcuforge does not compute")
        if node.op in _QDQ_OPS:
            return [_quantize_linear(self, node) if node.op == "QuantizeLinear" else _dequantize_linear(self, node)]
        if not any(isinstance(v, Act) for v in values):
            return self._fold(node, values)
        if node.op == "Shape":
            return [_shape_of(self, node)]
        if node.op == "Size":
            return [np.array(int(np.prod(self._full_shape(self.act(node, 0)))), np.int64)]
        out = _HANDLERS[node.op](self, node)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    # -- constants ---------------------------------------------------------------------
    def _constant(self, node: _ONode) -> np.ndarray:
        from onnx import numpy_helper

        a = node.attrs
        if "value" in a:
            return numpy_helper.to_array(a["value"])
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                           ("value_ints", np.int64)):
            if key in a:
                return np.array(a[key], dtype)
        raise self.fail(node, f"Constant with attribute(s) {sorted(a)} is not supported")

    def _fold(self, node: _ONode, values: list) -> list[Any]:
        """Evaluate a node whose inputs are all constants."""
        fn = _FOLDERS.get(node.op)
        try:
            if fn is not None and node.domain in _DOMAINS:
                out = fn(node, values, self.opset)
                return list(out) if isinstance(out, (tuple, list)) else [out]
            return self._fold_reference(node, values)
        except (UnsupportedOpError, ModelFormatError):
            raise
        except Exception as exc:
            raise UnsupportedOpError(f"{node.where()} on constants could not be evaluated: "
                                     f"{_first_line(exc)}") from exc

    def _fold_reference(self, node: _ONode, values: list) -> list[Any]:
        from onnx.reference import ReferenceEvaluator

        proto = self.model.graph.node[node.index]
        opsets = {o.domain or "": o.version for o in self.model.opset_import}
        ev = ReferenceEvaluator(proto, opsets=opsets)
        feeds = {t: v for t, v in zip(node.inputs, values) if t}
        return [np.asarray(r) for r in ev.run(None, feeds)]

    # -- value access ----------------------------------------------------------------------
    def fail(self, node: _ONode, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{node.where()}: {why}")

    def value(self, node: _ONode, i: int) -> Any:
        if i >= len(node.inputs) or not node.inputs[i]:
            return None
        return self.env[node.inputs[i]]

    def act(self, node: _ONode, i: int = 0, what: str = "input") -> Act:
        v = self.value(node, i)
        if not isinstance(v, Act):
            raise self.fail(node, f"its {what} must be computed from the model input (got a constant)")
        return v

    def const(self, node: _ONode, i: int, what: str, dtype=np.float32) -> np.ndarray | None:
        """Constant input i (None if absent); activations are refused."""
        v = self.value(node, i)
        if v is None:
            return None
        if isinstance(v, Act):
            raise self.fail(node, f"its {what} must be a constant (an initializer), not computed from the input")
        return np.asarray(v).astype(dtype) if dtype is not None else np.asarray(v)

    def attr(self, node: _ONode, name: str, default: Any = None) -> Any:
        return node.attrs.get(name, default)

    def _full_shape(self, a: Act) -> tuple[int, ...]:
        """The ONNX shape with the declared batch (what Shape returns)."""
        return (self.batch or 1,) + tuple(a.tshape[1:])

    def add_qconst(self, base: str, data: np.ndarray, q: QuantParams | None) -> str:
        """A float constant carrying the quantization its QDQ model gave it (see _quantize_qdq)."""
        name = self.add_const(base, data)
        if q is not None:
            t = self.g.tensors[name]
            if q.axis is None or t.shape[q.axis] == len(q.scale):
                t.quant = q
        return name

    def weight_quant(self, node: _ONode, i: int, axis_map: dict[int, int]) -> QuantParams | None:
        """The QDQ parameters of weight input i, mapped to the IR weight's axes."""
        info = self.qinfo.get(node.inputs[i]) if i < len(node.inputs) else None
        if info is None:
            return None
        if info.dtype not in ("int8", "uint8"):
            raise QuantizationError(f"{node.where()}: weights '{node.inputs[i]}' are {info.dtype}; mcuforge "
                                    "imports 8-bit weights only (TFLite int8 scheme)")
        q = info.params(axis_map)
        if q is None:
            raise QuantizationError(f"{node.where()}: weights '{node.inputs[i]}' are quantized per channel "
                                    f"along axis {info.axis}, which is not the output-channel axis; "
                                    "mcuforge needs per-output-channel or per-tensor weight scales")
        if np.any(q.zero_point != 0):
            raise QuantizationError(f"{node.where()}: weights '{node.inputs[i]}' are quantized asymmetrically "
                                    f"(zero point {info.zero_point.tolist()[:4]}); mcuforge (TFLite int8) needs "
                                    "symmetric weights: quantize with WeightSymmetric=True (int8 weights)")
        return q

    def bias_const(self, node: _ONode, i: int, base: str, data: np.ndarray, transformed: bool) -> str:
        """The IR bias constant; keeps the QDQ model's int32 data where the bias was not transformed."""
        info = self.qinfo.get(node.inputs[i])
        name = self.add_const(base, data)
        if info is not None and not transformed and info.dtype == "int32" and info.raw.size == data.size:
            o = data.size
            t = self.g.tensors[name]
            t.quant = QuantParams(np.broadcast_to(info.scale, (o,)).copy() if info.scale.size in (1, o)
                                  else np.ones(o, np.float32), np.zeros(o, np.int64), 0)
            self.raw_bias[name] = info.raw.reshape(-1).astype(np.int64)
        return name

    # -- graph inputs and outputs ------------------------------------------------------------------
    def _graph_input(self, v: Any) -> Act:
        tt = v.type.tensor_type if v.type.HasField("tensor_type") else None
        if tt is None:
            raise UnsupportedOpError(f"model input '{v.name}' is not a tensor")
        if tt.elem_type not in _FLOAT_TYPES:
            raise UnsupportedOpError(f"model input '{v.name}' has element type {_elem_name(tt.elem_type)}; "
                                     "mcuforge imports models with float inputs")
        if not tt.HasField("shape"):
            raise UnsupportedOpError(f"model input '{v.name}' has no shape; give the model static input shapes "
                                     "(only the batch dimension may be dynamic)")
        dims = list(tt.shape.dim)
        if not dims:
            raise UnsupportedOpError(f"model input '{v.name}' is a scalar; inputs need a batch dimension")
        rest = []
        for axis, d in enumerate(dims[1:], start=1):
            if not d.HasField("dim_value") or d.dim_value <= 0:
                label = f"'{d.dim_param}'" if d.HasField("dim_param") else "of unknown size"
                raise UnsupportedOpError(f"model input '{v.name}' has a dynamic dimension {label} at axis {axis}; "
                                         "only the batch (axis 0) may be dynamic: export with static sizes")
            rest.append(int(d.dim_value))
        if dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            batch = int(dims[0].dim_value)
            if self.batch is not None and batch != self.batch:
                raise UnsupportedOpError(f"model inputs have different batch sizes ({self.batch}, {batch})")
            self.batch = batch
        tshape = (1, *rest)
        layout = Layout.plain(len(tshape))
        if len(tshape) == 4 or (len(tshape) == 3 and self._feeds_channel_last(v.name)):
            layout = Layout.channel_last(len(tshape))
        name = self.g.unique_name(_ident(v.name))
        self.g.add_tensor(Tensor(name, layout.ir_shape(tshape)))
        self.g.inputs.append(name)
        return Act(name, tshape, layout)

    def _feeds_channel_last(self, value: str, depth: int = 0) -> bool:
        """Whether the value reaches a channel-last op (conv, pool, BN) directly or through
        elementwise ops: then it enters the IR channel-last."""
        if depth > 64:
            return False
        for user in self.consumers.get(value, []):
            if user.op in _CHANNEL_LAST:
                return True
            if user.op in _ELEMENTWISE and any(self._feeds_channel_last(o, depth + 1) for o in user.outputs if o):
                return True
        return False

    def _rename(self, old: str, new: str) -> str:
        """Rename IR tensor `old` to `new` where that name is free; returns the final name."""
        g = self.g
        if old == new or new in g.tensors or any(n.name == new for n in g.nodes) or old in g.inputs:
            return old
        t = g.tensors.pop(old)
        t.name = new
        g.tensors[new] = t
        for n in g.nodes:
            n.inputs = [new if x == old else x for x in n.inputs]
            n.outputs = [new if x == old else x for x in n.outputs]
        g.outputs = [new if x == old else x for x in g.outputs]
        return new

    def _graph_output(self, name: str) -> Act:
        v = self.env.get(name)
        if not isinstance(v, Act):
            raise UnsupportedOpError(f"model output '{name}' is not computed from the model input "
                                     "(a constant or non-tensor output)")
        if v.name in self.g.inputs or v.name in self.g.outputs:
            # An output must be a tensor of its own: copy (a reshape to the same shape).
            copy = self.reshape_ir(v, self.g.tensors[v.name].shape, v.layout, _ident(name) + "_out")
            self.g.tensors[copy.name].quant = self.g.tensors[v.name].quant
            v = copy
        self.g.outputs.append(v.name)
        return v


def _ident(name: str) -> str:
    """A readable tensor name from an ONNX value name ('/conv1/Conv_output_0' -> 'conv1_Conv_output_0')."""
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name).strip("_")
    while "__" in out:
        out = out.replace("__", "_")
    return out or "t"


def _elem_name(elem_type: int) -> str:
    import onnx

    try:
        return onnx.TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"type {elem_type}"


def _name(node: _ONode) -> str:
    """The base name of the IR tensors a node produces."""
    return _ident(node.outputs[0] if node.outputs and node.outputs[0] else node.name)


# --- constant folding ---------------------------------------------------------------------------

_FOLDERS: dict[str, Callable] = {}


def _folds(*ops: str):
    def register(fn):
        for op in ops:
            _FOLDERS[op] = fn
        return fn
    return register


def _axes_input(node: _ONode, values: list, opset: int, since: int) -> list[int] | None:
    """Axes given as an attribute (before opset `since`) or as input 1."""
    if opset < since or "axes" in node.attrs:
        axes = node.attrs.get("axes")
        return None if axes is None else [int(a) for a in axes]
    if len(values) > 1 and values[1] is not None:
        return [int(a) for a in np.asarray(values[1]).reshape(-1)]
    return None


@_folds("Identity", "Dropout")
def _fold_identity(node, v, opset):
    return [v[0]]


@_folds("Cast")
def _fold_cast(node, v, opset):
    from onnx import helper

    return np.asarray(v[0]).astype(helper.tensor_dtype_to_np_dtype(node.attrs["to"]))


@_folds("Gather")
def _fold_gather(node, v, opset):
    return np.take(np.asarray(v[0]), np.asarray(v[1]).astype(np.int64), axis=node.attrs.get("axis", 0))


@_folds("Unsqueeze")
def _fold_unsqueeze(node, v, opset):
    x = np.asarray(v[0])
    axes = _axes_input(node, v, opset, 13)
    rank = x.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        x = np.expand_dims(x, a)
    return x


@_folds("Squeeze")
def _fold_squeeze(node, v, opset):
    x = np.asarray(v[0])
    axes = _axes_input(node, v, opset, 13)
    return np.squeeze(x) if axes is None else np.squeeze(x, tuple(a % x.ndim for a in axes))


@_folds("Concat")
def _fold_concat(node, v, opset):
    return np.concatenate([np.asarray(x) for x in v if x is not None], axis=node.attrs["axis"])


@_folds("Reshape")
def _fold_reshape(node, v, opset):
    x = np.asarray(v[0])
    shape = (_reshape_target(node.attrs.get("shape"), x.shape, False) if opset < 5
             else _reshape_target(v[1], x.shape, bool(node.attrs.get("allowzero", 0))))
    return x.reshape(shape)


@_folds("Transpose")
def _fold_transpose(node, v, opset):
    return np.transpose(np.asarray(v[0]), node.attrs.get("perm"))


@_folds("Add", "Sub", "Mul", "Div")
def _fold_arith(node, v, opset):
    a, b = np.asarray(v[0]), np.asarray(v[1])
    if node.op == "Div" and np.issubdtype(a.dtype, np.integer):
        return np.trunc(a / b).astype(a.dtype)  # ONNX integer division truncates toward zero
    fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[node.op]
    return fn(a, b).astype(np.result_type(a, b))


@_folds("Neg")
def _fold_neg(node, v, opset):
    return -np.asarray(v[0])


@_folds("Sqrt")
def _fold_sqrt(node, v, opset):
    return np.sqrt(np.asarray(v[0]))


@_folds("Slice")
def _fold_slice(node, v, opset):
    x = np.asarray(v[0])
    if opset < 10:
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes, steps = node.attrs.get("axes"), None
    else:
        starts, ends = np.asarray(v[1]).tolist(), np.asarray(v[2]).tolist()
        axes = np.asarray(v[3]).tolist() if len(v) > 3 and v[3] is not None else None
        steps = np.asarray(v[4]).tolist() if len(v) > 4 and v[4] is not None else None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a % x.ndim] = slice(int(s), int(e), int(st))
    return x[tuple(index)]


@_folds("ConstantOfShape")
def _fold_constant_of_shape(node, v, opset):
    from onnx import numpy_helper

    fill = numpy_helper.to_array(node.attrs["value"]) if "value" in node.attrs else np.zeros(1, np.float32)
    return np.full(tuple(int(d) for d in np.asarray(v[0]).reshape(-1)), fill.reshape(-1)[0], fill.dtype)


def _reshape_target(shape, in_shape, allowzero: bool) -> tuple[int, ...]:
    """ONNX Reshape's target shape: 0 copies the input dimension (unless allowzero), -1 is inferred."""
    shape = [int(d) for d in np.asarray(shape).reshape(-1)]
    out = [in_shape[i] if d == 0 and not allowzero else d for i, d in enumerate(shape)]
    if out.count(-1) > 1:
        raise ValueError(f"Reshape target {shape} has more than one -1")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        total = int(np.prod(in_shape))
        if known == 0 or total % known:
            raise ValueError(f"cannot reshape {tuple(in_shape)} to {shape}")
        out[out.index(-1)] = total // known
    if int(np.prod(out)) != int(np.prod(in_shape)):
        raise ValueError(f"cannot reshape {tuple(in_shape)} to {shape}")
    return tuple(out)


def _shape_of(cv: _Converter, node: _ONode) -> np.ndarray:
    shape = np.array(cv._full_shape(cv.act(node, 0)), np.int64)
    start, end = node.attrs.get("start", 0), node.attrs.get("end")
    return shape[start:end]


# --- QuantizeLinear / DequantizeLinear -------------------------------------------------------------------

def _qparams_inputs(cv: _Converter, node: _ONode, zp_dtype_default: str) -> tuple[np.ndarray, np.ndarray, str]:
    scale = cv.const(node, 1, "scale")
    if scale is None:
        raise cv.fail(node, "has no scale")
    zp = cv.const(node, 2, "zero point", dtype=None)
    if zp is not None:
        dtype = zp.dtype.name
    elif node.attrs.get("output_dtype"):
        from onnx import helper

        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(node.attrs["output_dtype"])).name
    else:
        dtype = zp_dtype_default
    if zp is None:
        zp = np.zeros(scale.shape, np.int64)
    if node.attrs.get("block_size"):
        raise QuantizationError(f"{node.where()}: blocked quantization (block_size) is not supported")
    scale = np.asarray(scale, np.float32)
    if np.any(~np.isfinite(scale)) or np.any(scale <= 0):
        raise QuantizationError(f"{node.where()}: quantization scales must be positive, got {scale.reshape(-1)[:4]}")
    return scale, np.broadcast_to(np.asarray(zp).astype(np.int64), scale.shape), dtype


def _quantize_linear(cv: _Converter, node: _ONode):
    x = cv.value(node, 0)
    scale, zp, dtype = _qparams_inputs(cv, node, "uint8")
    axis = node.attrs.get("axis", 1)
    if not isinstance(x, Act):  # a constant: quantize it now (round half to even, saturate)
        x = np.asarray(x, np.float32)
        info = np.iinfo(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else None
        if info is None:
            raise QuantizationError(f"{node.where()}: quantization to {dtype} is not supported")
        s, z = (scale, zp) if scale.size == 1 else (_along(scale, axis, x.ndim), _along(zp, axis, x.ndim))
        return np.clip(np.rint(x / s) + z, info.min, info.max).astype(dtype)
    if dtype not in ("int8", "uint8"):
        raise QuantizationError(f"{node.where()}: activation '{node.inputs[0]}' is quantized to {dtype}; "
                                "mcuforge quantizes activations to 8 bits (int8, or uint8 converted to int8)")
    if scale.size != 1:
        raise QuantizationError(f"{node.where()}: activation '{node.inputs[0]}' is quantized per channel "
                                f"({scale.size} scales); mcuforge (TFLite int8) quantizes activations per tensor")
    q = QuantParams.per_tensor(float(scale.reshape(-1)[0]),
                               int(zp.reshape(-1)[0]) - (128 if dtype == "uint8" else 0))
    t = cv.g.tensors[x.name]
    if t.quant is not None and not t.quant.same_as(q):
        raise QuantizationError(f"{node.where()}: activation '{node.inputs[0]}' is quantized twice with "
                                f"different parameters ({t.quant.s:.6g}/{t.quant.zp} and {q.s:.6g}/{q.zp})")
    t.quant = q
    cv.qdq = True
    return x


def _dequantize_linear(cv: _Converter, node: _ONode):
    x = cv.value(node, 0)
    raw_dtype = np.asarray(x).dtype.name if not isinstance(x, Act) else "uint8"
    scale, zp, dtype = _qparams_inputs(cv, node, raw_dtype)
    axis = node.attrs.get("axis", 1)
    if isinstance(x, Act):  # the D of a Q-DQ pair: the value is the quantized activation itself
        t = cv.g.tensors[x.name]
        q = QuantParams.per_tensor(float(scale.reshape(-1)[0]),
                                   int(zp.reshape(-1)[0]) - (128 if dtype == "uint8" else 0))
        if t.quant is None:
            raise QuantizationError(f"{node.where()}: dequantizes '{node.inputs[0]}', which no QuantizeLinear "
                                    "quantized (integer model inputs are not supported)")
        if scale.size != 1 or not t.quant.same_as(q):
            raise QuantizationError(f"{node.where()}: dequantizes '{node.inputs[0]}' with parameters other "
                                    "than its QuantizeLinear's")
        return x
    raw = np.asarray(x)
    if not np.issubdtype(raw.dtype, np.integer):
        raise QuantizationError(f"{node.where()}: dequantizes a {raw.dtype} constant; expected integers")
    if scale.size == 1:
        y = ((raw.astype(np.int64) - zp.reshape(-1)[0]) * scale.reshape(-1)[0]).astype(np.float32)
        info = _QInfo(scale.reshape(1), zp.reshape(1), None, raw.dtype.name, raw)
    else:
        ax = axis % raw.ndim
        y = ((raw.astype(np.int64) - _along(zp, ax, raw.ndim)) * _along(scale, ax, raw.ndim)).astype(np.float32)
        info = _QInfo(scale.reshape(-1), zp.reshape(-1), ax, raw.dtype.name, raw)
    cv.qinfo[node.outputs[0]] = info
    return y


def _along(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return np.asarray(v).reshape(shape)


# --- handlers: identity and elementwise ---------------------------------------------------------------

@_handles("Identity", elementwise=True)
def _identity(cv, node):
    return cv.act(node, 0)


@_handles("Dropout", elementwise=True)
def _dropout(cv, node):
    training = cv.const(node, 2, "training_mode", dtype=None)
    if training is not None and bool(np.asarray(training).reshape(-1)[0]):
        raise cv.fail(node, "dropout is in training mode; export the model in eval mode (model.eval())")
    return [cv.act(node, 0), _Unavailable("dropout mask")]


@_handles("Cast", elementwise=True)
def _cast(cv, node):
    from onnx import TensorProto

    if node.attrs.get("to") not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
        raise cv.fail(node, f"casts to {_elem_name(node.attrs.get('to', 0))}; mcuforge computes in float32")
    return cv.act(node, 0)


def _unary(cv, node, op: str, **attrs) -> Act:
    x = cv.act(node, 0)
    return cv.emit(op, [x.name], x.tshape, x.layout, _name(node), **attrs)


def _bound(v) -> float | None:
    if v is None:
        return None
    f = float(np.asarray(v, np.float64).reshape(-1)[0])
    return None if not math.isfinite(f) or abs(f) >= 3.4e38 else f


@_handles("Relu", elementwise=True)
def _relu(cv, node):
    return _unary(cv, node, "clamp", min=0.0, max=None)


@_handles("Clip", elementwise=True)
def _clip(cv, node):
    if cv.opset < 11:
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
    else:
        lo, hi = cv.const(node, 1, "min bound"), cv.const(node, 2, "max bound")
    return _unary(cv, node, "clamp", min=_bound(lo), max=_bound(hi))


@_handles("LeakyRelu", elementwise=True)
def _leaky_relu(cv, node):
    return _unary(cv, node, "leaky_relu", alpha=float(node.attrs.get("alpha", 0.01)))


@_handles("Sigmoid", elementwise=True)
def _sigmoid(cv, node):
    return _unary(cv, node, "sigmoid")


@_handles("Tanh", elementwise=True)
def _tanh(cv, node):
    return _unary(cv, node, "tanh")


@_handles("Abs", elementwise=True)
def _abs(cv, node):
    if "abs" not in OPS:
        raise cv.fail(node, "abs is not available in this mcuforge")
    return _unary(cv, node, "abs")


def _hard_sigmoid(cv, node, x: Act, alpha: float, beta: float, base: str) -> Act:
    """clamp(alpha x + beta, 0, 1) as a mul and an add with a fused clamp."""
    scaled = x
    if alpha != 1.0:
        k = cv.const_operand(node, x, np.array(alpha, np.float32))
        scaled = cv.emit("mul", [x.name, k], x.tshape, x.layout, base + "_scaled")
    b = cv.const_operand(node, x, np.array(beta, np.float32))
    return cv.emit("add", [scaled.name, b], x.tshape, x.layout, base, act_min=0.0, act_max=1.0)


@_handles("HardSigmoid", elementwise=True)
def _hardsigmoid(cv, node):
    x = cv.act(node, 0)
    return _hard_sigmoid(cv, node, x, float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5)),
                         _name(node))


@_handles("HardSwish", elementwise=True)
def _hardswish(cv, node):
    x = cv.act(node, 0)
    h = _hard_sigmoid(cv, node, x, 1.0 / 6.0, 0.5, _name(node) + "_hsig")
    return cv.emit("mul", [x.name, h.name], x.tshape, x.layout, _name(node))


# --- handlers: binary -----------------------------------------------------------------------------------

def _broadcast_tshape(cv, node, a, b) -> tuple[int, ...]:
    sa = a.tshape if isinstance(a, Act) else np.shape(a)
    sb = b.tshape if isinstance(b, Act) else np.shape(b)
    try:
        out = tuple(int(d) for d in np.broadcast_shapes(tuple(sa), tuple(sb)))
    except ValueError:
        raise cv.fail(node, f"shapes {tuple(sa)} and {tuple(sb)} do not broadcast") from None
    if len(out) == 0 or out[0] != 1:
        raise cv.fail(node, f"a constant of shape {tuple(sb if isinstance(a, Act) else sa)} varies along "
                            "the batch dimension")
    return out


def _binary(cv, node, op: str, a: Any, b: Any, qinfo: _QInfo | None = None) -> Act:
    """op(a, b) where at least one side is an activation; constants broadcast numpy-style."""
    tshape = _broadcast_tshape(cv, node, a, b)
    if isinstance(a, Act) and isinstance(b, Act):
        if a.rank != b.rank:
            a, b = cv.to_plain(node, a), cv.to_plain(node, b)
        a, b = cv.unify(node, [a, b])
        return cv.emit(op, [a.name, b.name], tshape, a.layout, _name(node))
    x, c = (a, b) if isinstance(a, Act) else (b, a)
    if x.tshape != tshape:  # the constant broadcasts the activation: compute in framework order
        x = cv.to_plain(node, x)
        if len(tshape) != x.rank:
            raise cv.fail(node, f"a constant of shape {np.shape(c)} adds dimensions to the activation {x.tshape}")
    data = cv.const_in_layout(node, x, np.asarray(c, np.float32))
    q = qinfo.params() if qinfo is not None and qinfo.axis is None and qinfo.dtype in ("int8", "uint8") else None
    k = cv.add_qconst(_name(node) + "_const", data, q)
    return cv.emit(op, [x.name, k], tshape, x.layout, _name(node))


def _operand_qinfo(cv, node, i: int) -> _QInfo | None:
    return cv.qinfo.get(node.inputs[i]) if i < len(node.inputs) else None


@_handles("Add", elementwise=True)
def _add(cv, node):
    a, b = cv.value(node, 0), cv.value(node, 1)
    folded = _fold_bias_into_matmul(cv, node, a, b)
    if folded is not None:
        return folded
    qi = _operand_qinfo(cv, node, 1 if isinstance(a, Act) else 0)
    return _binary(cv, node, "add", a, b, qi)


def _fold_bias_into_matmul(cv, node, a, b) -> Act | None:
    """MatMul(x, W) + c (nn.Linear on a 3-D input): c becomes the fully_connected's bias."""
    if isinstance(a, Act) == isinstance(b, Act):
        return None
    x_name = node.inputs[0] if isinstance(a, Act) else node.inputs[1]
    x, c = (a, b) if isinstance(a, Act) else (b, a)
    prod = cv.producer.get(x_name)
    if prod is None or prod.op != "MatMul" or len(cv.consumers.get(x_name, [])) != 1:
        return None
    fc = cv.g.producer(x.name)
    if fc is None or fc.op != "fully_connected" or len(fc.inputs) != 2:
        return None
    n = x.tshape[-1]
    c = np.asarray(c, np.float32)
    if c.size != n or (c.ndim and c.shape[-1] != n) or c.ndim > x.rank:
        return None
    fc.inputs.append(cv.add_const(_name(node) + "_bias", c.reshape(n)))
    return x


@_handles("Sub", elementwise=True)
def _sub(cv, node):
    a, b = cv.value(node, 0), cv.value(node, 1)
    if isinstance(b, Act):
        k = cv.const_operand(node, b, np.array(-1.0, np.float32))
        b = cv.emit("mul", [b.name, k], b.tshape, b.layout, _name(node) + "_neg")
    else:
        b = -np.asarray(b, np.float32)
    return _binary(cv, node, "add", a, b)


@_handles("Mul", elementwise=True)
def _mul(cv, node):
    a, b = cv.value(node, 0), cv.value(node, 1)
    qi = _operand_qinfo(cv, node, 1 if isinstance(a, Act) else 0)
    return _binary(cv, node, "mul", a, b, qi)


@_handles("Div", elementwise=True)
def _div(cv, node):
    a, b = cv.value(node, 0), cv.value(node, 1)
    if isinstance(b, Act):
        raise cv.fail(node, "division by a computed tensor is not supported (only by constants)")
    return _binary(cv, node, "mul", a, 1.0 / np.asarray(b, np.float32))


@_handles("Neg", elementwise=True)
def _neg(cv, node):
    return _binary(cv, node, "mul", cv.act(node, 0), np.array(-1.0, np.float32))


# --- handlers: convolution and dense --------------------------------------------------------------------

def _spatial_pads(cv, node, in_sizes, kernel, strides, dilations) -> tuple[list[int], list[int]]:
    """(begin, end) paddings per spatial axis, auto_pad resolved."""
    nd = len(in_sizes)
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = ints(node.attrs.get("pads", [0] * (2 * nd)), 2 * nd, "pads")
        return pads[:nd], pads[nd:]
    if auto == "VALID":
        return [0] * nd, [0] * nd
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        lo, hi = [], []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            lo.append(small if auto == "SAME_UPPER" else total - small)
            hi.append(total - lo[-1])
        return lo, hi
    raise cv.fail(node, f"unknown auto_pad '{auto}'")


def _out_size(size, k, s, d, lo, hi) -> int:
    return (size + lo + hi - ((k - 1) * d + 1)) // s + 1


@_handles("Conv", channel_last=True)
def _conv(cv, node):
    x = cv.act(node, 0)
    w = cv.const(node, 1, "weight")
    b = cv.const(node, 2, "bias")
    nd = w.ndim - 2
    if nd not in (1, 2) or x.rank != nd + 2:
        raise cv.fail(node, f"only 1-D and 2-D convolutions are supported (weight {w.shape}, input rank {x.rank})")
    kernel = list(w.shape[2:])
    if node.attrs.get("kernel_shape") and list(node.attrs["kernel_shape"]) != kernel:
        raise cv.fail(node, f"kernel_shape {node.attrs['kernel_shape']} does not match the weight {w.shape}")
    strides = ints(node.attrs.get("strides", 1), nd, "strides")
    dilations = ints(node.attrs.get("dilations", 1), nd, "dilations")
    groups = int(node.attrs.get("group", 1))
    if x.tshape[1] != w.shape[1] * groups:
        raise cv.fail(node, f"input has {x.tshape[1]} channels, the weight {w.shape} with group={groups} "
                            f"expects {w.shape[1] * groups}")
    lo, hi = _spatial_pads(cv, node, x.tshape[2:], kernel, strides, dilations)
    out_sp = [_out_size(*a) for a in zip(x.tshape[2:], kernel, strides, dilations, lo, hi)]
    if min(out_sp) < 1:
        raise cv.fail(node, f"the kernel {kernel} does not fit the input {x.tshape}")
    x = cv.to_channel_last(node, x)
    if nd == 1:  # N,C,L -> N,1,L,C: a conv2d with a 1xK kernel
        w = w[:, :, None, :]
        strides, dilations, pads = [1, strides[0]], [1, dilations[0]], [0, 0, lo[0], hi[0]]
    else:
        pads = [lo[0], hi[0], lo[1], hi[1]]
    base = _name(node)
    inputs = [x.name, cv.add_qconst(base + "_weight", w.transpose(0, 2, 3, 1), cv.weight_quant(node, 1, {0: 0}))]
    if b is not None:
        inputs.append(cv.bias_const(node, 2, base + "_bias", b.reshape(-1), False))
    tshape = (1, w.shape[0], *out_sp)
    return cv.emit("conv2d", inputs, tshape, x.layout, base, stride=strides, dilation=dilations, pads=pads,
                   groups=groups)


def _dense(cv, node, x: Act, w: np.ndarray, b: np.ndarray | None, wq: QuantParams | None,
           bias_index: int | None, bias_transformed: bool) -> Act:
    x = cv.to_plain(node, x)  # fully_connected works on the last axis
    if w.shape[1] != x.tshape[-1]:
        raise cv.fail(node, f"input {x.tshape} does not match the weight (K={w.shape[1]})")
    base = _name(node)
    inputs = [x.name, cv.add_qconst(base + "_weight", w, wq)]
    if b is not None:
        bias = np.broadcast_to(b, (w.shape[0],)).astype(np.float32)
        inputs.append(cv.bias_const(node, bias_index, base + "_bias", bias, bias_transformed))
    tshape = x.tshape[:-1] + (w.shape[0],)
    return cv.emit("fully_connected", inputs, tshape, Layout.plain(len(tshape)), base)


@_handles("Gemm")
def _gemm(cv, node):
    x = cv.act(node, 0)
    if node.attrs.get("transA", 0):
        raise cv.fail(node, "transA=1 (a transposed activation) is not supported")
    if x.rank != 2:
        raise cv.fail(node, f"Gemm needs a 2-D input, got {x.tshape}")
    w = cv.const(node, 1, "weight B")
    trans_b = bool(node.attrs.get("transB", 0))
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    if w.ndim != 2:
        raise cv.fail(node, f"weight must be a matrix, got shape {w.shape}")
    wq = cv.weight_quant(node, 1, {0: 0} if trans_b else {1: 0}) if alpha == 1.0 else None
    w = (w if trans_b else w.T) * np.float32(alpha)
    c = cv.const(node, 2, "bias C")
    transformed = beta != 1.0
    if c is not None:
        n = w.shape[0]
        if c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1):
            raise cv.fail(node, f"bias C of shape {c.shape} is not a per-output vector")
        transformed = transformed or c.size != n
        c = np.broadcast_to(c.reshape(-1), (n,)) * np.float32(beta)
    return _dense(cv, node, x, w, c, wq, 2, transformed)


@_handles("MatMul")
def _matmul(cv, node):
    a, b = cv.value(node, 0), cv.value(node, 1)
    if not isinstance(a, Act):
        raise cv.fail(node, "a constant times a computed tensor is not supported (only x @ W with constant W)")
    if isinstance(b, Act):
        raise cv.fail(node, "the product of two computed tensors is not supported (only x @ W with constant W)")
    w = np.asarray(b, np.float32)
    if w.ndim != 2 or a.rank < 2:
        raise cv.fail(node, f"only x @ W with a 2-D constant W is supported (W {w.shape}, x {a.tshape})")
    return _dense(cv, node, a, w.T, None, cv.weight_quant(node, 1, {1: 0}), None, False)


@_handles("BatchNormalization", channel_last=True)
def _batch_norm(cv, node):
    x = cv.act(node, 0)
    if node.attrs.get("training_mode", 0):
        raise cv.fail(node, "batch norm is in training mode; export the model in eval mode (model.eval())")
    gamma, beta = cv.const(node, 1, "scale"), cv.const(node, 2, "bias")
    mean, var = cv.const(node, 3, "mean"), cv.const(node, 4, "variance")
    eps = float(node.attrs.get("epsilon", 1e-5))
    c = x.tshape[1] if x.rank > 1 else 0
    if any(v is None or v.size != c for v in (gamma, beta, mean, var)):
        raise cv.fail(node, f"scale, bias, mean and variance must have {c} values (the channels)")
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    shift = beta.astype(np.float64) - mean * scale
    if x.rank == 2:
        x = cv.to_plain(node, x)
    elif x.rank in (3, 4):
        x = cv.to_channel_last(node, x)  # the channel is the last IR axis
    else:
        raise cv.fail(node, f"batch norm of a rank-{x.rank} tensor is not supported")
    base = _name(node)
    out = cv.emit(BATCH_NORM, [x.name, cv.add_const(base + "_scale", scale), cv.add_const(base + "_shift", shift)],
                  x.tshape, x.layout, base)
    return [out] + [_Unavailable("batch-norm statistic")] * (len(node.outputs) - 1)


# --- handlers: pooling ---------------------------------------------------------------------------------

def _pool(cv, node, op: str) -> Act:
    x = cv.act(node, 0)
    nd = x.rank - 2
    if nd not in (1, 2):
        raise cv.fail(node, f"only 1-D and 2-D pooling is supported (input rank {x.rank})")
    kernel = ints(node.attrs["kernel_shape"], nd, "kernel_shape")
    strides = ints(node.attrs.get("strides", 1), nd, "strides")
    if any(d != 1 for d in ints(node.attrs.get("dilations", 1), nd, "dilations")):
        raise cv.fail(node, "pooling with dilation != 1 is not supported")
    if node.attrs.get("storage_order", 0):
        raise cv.fail(node, "storage_order=1 is not supported")
    lo, hi = _spatial_pads(cv, node, x.tshape[2:], kernel, strides, [1] * nd)
    floor = [_out_size(*a) for a in zip(x.tshape[2:], kernel, strides, [1] * nd, lo, hi)]
    if node.attrs.get("ceil_mode", 0):
        ceil = [-(-(s + p + q - k) // st) + 1 for s, k, st, p, q in zip(x.tshape[2:], kernel, strides, lo, hi)]
        # ONNX (like torch) drops a last window that would start in the end padding
        ceil = [c - 1 if (c - 1) * st >= s + p else c for c, s, st, p in zip(ceil, x.tshape[2:], strides, lo)]
        if ceil != floor:
            raise cv.fail(node, f"ceil_mode=1 gives output size {ceil} where mcuforge's pooling (floor mode) "
                                f"gives {floor}; use ceil_mode=0 or pad the input")
    if min(floor) < 1:
        raise cv.fail(node, f"the window {kernel} does not fit the input {x.tshape}")
    if any(p >= k for p, k in zip(lo + hi, kernel + kernel)):
        raise cv.fail(node, f"padding {lo + hi} must be smaller than the window {kernel}")
    xc = cv.to_channel_last(node, x)
    if nd == 1:
        kernel, strides, pads = [1, kernel[0]], [1, strides[0]], [0, 0, lo[0], hi[0]]
    else:
        pads = [lo[0], hi[0], lo[1], hi[1]]
    attrs = dict(kernel=kernel, stride=strides, pads=pads)
    if op == "avg_pool2d":
        attrs["count_include_pad"] = bool(node.attrs.get("count_include_pad", 0))
    return cv.emit(op, [xc.name], (1, x.tshape[1], *floor), xc.layout, _name(node), **attrs)


@_handles("AveragePool", channel_last=True)
def _avg_pool(cv, node):
    return _pool(cv, node, "avg_pool2d")


@_handles("MaxPool", channel_last=True)
def _max_pool(cv, node):
    return [_pool(cv, node, "max_pool2d"), _Unavailable("max-pooling indices")]


def _global_pool(cv, node, x: Act, op: str, keepdims: bool, base: str) -> Act:
    if x.rank not in (3, 4):
        raise cv.fail(node, f"global pooling needs an N,C,L or N,C,H,W input, got {x.tshape}")
    sizes = list(x.tshape[2:])
    xc = cv.to_channel_last(node, x)
    keep = tuple(x.tshape[:2]) + (1,) * (x.rank - 2)
    kernel = [1, sizes[0]] if x.rank == 3 else sizes
    attrs = dict(kernel=kernel, stride=kernel, pads=[0, 0, 0, 0])
    if op == "avg_pool2d":
        attrs["count_include_pad"] = True
    pooled = cv.emit(op, [xc.name], keep, xc.layout, base if keepdims else base + "_pool", **attrs)
    if keepdims:
        return pooled
    flat = cv.to_plain(node, pooled)
    return cv.emit("reshape", [flat.name], x.tshape[:2], Layout.plain(2), base, shape=list(x.tshape[:2]))


@_handles("GlobalAveragePool", channel_last=True)
def _global_avg(cv, node):
    return _global_pool(cv, node, cv.act(node, 0), "avg_pool2d", True, _name(node))


@_handles("GlobalMaxPool", channel_last=True)
def _global_max(cv, node):
    return _global_pool(cv, node, cv.act(node, 0), "max_pool2d", True, _name(node))


@_handles("ReduceMean", channel_last=True)
def _reduce_mean(cv, node):
    """mean over all spatial dimensions = global average pooling."""
    x = cv.act(node, 0)
    if cv.opset < 18 or "axes" in node.attrs:
        axes = node.attrs.get("axes")
    else:
        axes = cv.const(node, 1, "axes", dtype=np.int64)
        axes = None if axes is None or axes.size == 0 else axes
    if axes is None:
        if node.attrs.get("noop_with_empty_axes", 0):
            return x
        raise cv.fail(node, "a mean over all dimensions (the batch included) is not supported")
    dims = sorted({int(d) % x.rank for d in np.asarray(axes).reshape(-1)})
    if x.rank not in (3, 4) or dims != list(range(2, x.rank)):
        raise cv.fail(node, f"mean over axes {dims} is not supported (only over all spatial axes of an "
                            "N,C,L or N,C,H,W tensor: global average pooling)")
    return _global_pool(cv, node, x, "avg_pool2d", bool(node.attrs.get("keepdims", 1)), _name(node))


@_handles("Pad")
def _pad(cv, node):
    x = cv.act(node, 0)
    if "pad" not in OPS:
        raise cv.fail(node, "explicit padding is not available in this mcuforge")
    mode = node.attrs.get("mode", "constant")
    if mode != "constant":
        raise cv.fail(node, f"padding mode '{mode}' is not supported (only constant padding)")
    if cv.opset < 11:
        pads, value = list(node.attrs["pads"]), float(node.attrs.get("value", 0.0))
    else:
        pads = [int(p) for p in cv.const(node, 1, "pads", dtype=np.int64).reshape(-1)]
        cval = cv.const(node, 2, "constant value")
        value = 0.0 if cval is None or cval.size == 0 else float(cval.reshape(-1)[0])
    axes = list(range(x.rank))
    if len(node.inputs) > 3 and node.inputs[3]:
        axes = [int(a) % x.rank for a in cv.const(node, 3, "axes", dtype=np.int64).reshape(-1)]
    k = len(axes)
    before, after = [0] * x.rank, [0] * x.rank
    for i, a in enumerate(axes):
        before[a], after[a] = pads[i], pads[k + i]
    if before[0] or after[0]:
        raise cv.fail(node, "pads the batch dimension")
    if min(before + after) < 0:
        raise cv.fail(node, f"negative padding (cropping) {pads} is not supported")
    tshape = tuple(d + b + e for d, b, e in zip(x.tshape, before, after))
    if tshape == x.tshape:
        return x
    ir_pads = []
    for p in x.layout.perm:  # IR axes in the layout's order (the unit axis of expand is not padded)
        ir_pads += [before[p], after[p]]
    if x.layout.expand:
        ir_pads[2:2] = [0, 0]
    if len(ir_pads) > 8:
        raise cv.fail(node, f"padding a rank-{x.rank} tensor is not supported")
    return cv.emit("pad", [x.name], tshape, x.layout, _name(node), pads=ir_pads, value=value)


# --- handlers: layout ---------------------------------------------------------------------------------

def _reshape_to(cv, node, x: Act, tshape: tuple[int, ...]) -> Act:
    if tshape == x.tshape:
        return x
    if not tshape or tshape[0] != 1 or int(np.prod(tshape)) != int(np.prod(x.tshape)):
        raise cv.fail(node, f"reshapes {x.tshape} to {tshape}, which changes the batch dimension "
                            "(mcuforge needs the batch as dimension 0 of every tensor)")
    x = cv.to_plain(node, x)  # a reshape reads the framework's element order
    return cv.emit("reshape", [x.name], tshape, Layout.plain(len(tshape)), _name(node), shape=list(tshape))


def _batch_target(cv, node, x: Act, full: tuple[int, ...]) -> tuple[int, ...]:
    """A shape computed with the declared batch -> the same shape with batch 1."""
    batch = cv.batch or 1
    if not full or full[0] != batch:
        raise cv.fail(node, f"reshapes {cv._full_shape(x)} to {full}, which changes the batch dimension "
                            "(mcuforge needs the batch as dimension 0 of every tensor)")
    return (1,) + tuple(full[1:])


@_handles("Reshape")
def _reshape(cv, node):
    x = cv.act(node, 0)
    target = node.attrs.get("shape") if cv.opset < 5 else cv.const(node, 1, "shape", dtype=np.int64)
    try:
        full = _reshape_target(target, cv._full_shape(x), bool(node.attrs.get("allowzero", 0)))
    except ValueError as exc:
        raise cv.fail(node, str(exc)) from None
    return _reshape_to(cv, node, x, _batch_target(cv, node, x, full))


@_handles("Flatten")
def _flatten(cv, node):
    x = cv.act(node, 0)
    axis = int(node.attrs.get("axis", 1)) % (x.rank + 1) if x.rank else 0
    if axis == 0 or int(np.prod(x.tshape[1:axis])) != 1:
        raise cv.fail(node, f"Flatten(axis={node.attrs.get('axis', 1)}) merges the batch dimension with others")
    return _reshape_to(cv, node, x, (1, int(np.prod(x.tshape[axis:]))))


@_handles("Squeeze")
def _squeeze(cv, node):
    x = cv.act(node, 0)
    axes = _axes_input(node, [None, cv.value(node, 1)], cv.opset, 13)
    if axes is None:
        axes = [d for d in range(1, x.rank) if x.tshape[d] == 1]
    axes = sorted({a % x.rank for a in axes})
    if 0 in axes:
        raise cv.fail(node, "squeezes the batch dimension")
    if any(x.tshape[a] != 1 for a in axes):
        raise cv.fail(node, f"squeezes axes {axes} of {x.tshape}, which are not all of size 1")
    return _reshape_to(cv, node, x, tuple(d for i, d in enumerate(x.tshape) if i not in axes))


@_handles("Unsqueeze")
def _unsqueeze(cv, node):
    x = cv.act(node, 0)
    axes = _axes_input(node, [None, cv.value(node, 1)], cv.opset, 13)
    rank = x.rank + len(axes)
    axes = sorted({a % rank for a in axes})
    if 0 in axes:
        raise cv.fail(node, "inserts a dimension before the batch dimension")
    shape = list(x.tshape)
    for a in axes:
        shape.insert(a, 1)
    return _reshape_to(cv, node, x, tuple(shape))


@_handles("Transpose")
def _transpose(cv, node):
    """A transpose costs nothing: the IR tensor stays, its layout changes."""
    x = cv.act(node, 0)
    dims = [int(d) % x.rank for d in node.attrs.get("perm", list(range(x.rank))[::-1])]
    if dims[0] != 0:
        raise cv.fail(node, f"perm {dims} moves the batch dimension, which must stay first")
    inv = np.argsort(dims)
    perm = tuple(int(inv[p]) for p in x.layout.perm)
    return Act(x.name, tuple(x.tshape[d] for d in dims), Layout(perm, x.layout.expand))


@_handles("Concat")
def _concat(cv, node):
    parts = [cv.value(node, i) for i in range(len(node.inputs)) if node.inputs[i]]
    if any(not isinstance(p, Act) for p in parts):
        raise cv.fail(node, "concatenates a constant with computed tensors, which is not supported")
    if len({p.rank for p in parts}) != 1:
        raise cv.fail(node, "concatenates tensors of different ranks")
    acts = cv.unify(node, parts)
    axis = int(node.attrs["axis"]) % acts[0].rank
    if axis == 0:
        raise cv.fail(node, "concatenates along the batch dimension")
    tshape = list(acts[0].tshape)
    tshape[axis] = sum(a.tshape[axis] for a in acts)
    return cv.emit("concat", [a.name for a in acts], tuple(tshape), acts[0].layout, _name(node),
                   axis=acts[0].layout.ir_axis(axis))


@_handles("Softmax")
def _softmax(cv, node):
    x = cv.act(node, 0)
    axis = int(node.attrs.get("axis", -1 if cv.opset >= 13 else 1)) % x.rank
    if axis == 0:
        raise cv.fail(node, "softmax over the batch dimension is not supported")
    if cv.opset < 13 and any(d != 1 for d in x.tshape[axis + 1:]):
        # opset < 13: softmax over the flattened dimensions axis..end
        rows = (1, int(np.prod(x.tshape[1:axis])), int(np.prod(x.tshape[axis:])))
        rows = rows if rows[1] != 1 else (1, rows[2])
        flat = _reshape_to(cv, node, x, rows)
        y = cv.emit("softmax", [flat.name], flat.tshape, flat.layout, _name(node) + "_rows", beta=1.0)
        return _reshape_to(cv, node, y, x.tshape)
    ir_rank = len(x.layout.ir_shape(x.tshape))
    if x.layout.ir_axis(axis) != ir_rank - 1:
        # softmax runs over the last IR axis: try framework order, then channel-last
        for layout in (Layout.plain(x.rank), Layout.channel_last(x.rank)):
            if layout.ir_axis(axis) == len(layout.ir_shape(x.tshape)) - 1:
                x = cv.relayout(x, layout, _name(node))
                break
        else:
            raise cv.fail(node, f"softmax over axis {axis} cannot be expressed over the last axis")
    return cv.emit("softmax", [x.name], x.tshape, x.layout, _name(node), beta=1.0)


# --- QDQ: the annotated float graph -> an int8 graph ------------------------------------------------------

def _quantize_qdq(graph: Graph, cv: _Converter) -> Graph:
    """Give every tensor of an optimized, QDQ-annotated float graph its int8 form."""
    g = graph.copy()
    requantized: list[str] = []
    _global_means(g)
    for name in g.inputs:
        t = g.tensors[name]
        if t.quant is None:
            q = _shared_from_consumers(g, name)
            if q is None:
                raise QuantizationError(f"model input '{name}' is not quantized in the QDQ model "
                                        "(no QuantizeLinear reads it); mcuforge needs every activation quantized")
            t.quant = q
        t.dtype = "int8"
    for node in list(g.nodes):
        opdef = OPS[node.op]
        _quantize_node_constants(g, node, cv, requantized)
        y = node.outputs[0]
        t = g.tensors[y]
        wanted = t.quant
        required = None
        if opdef.output_shares_input_quant:
            required = g.tensors[node.inputs[0]].quant
        elif node.op == "softmax":
            required = opdef.output_quant(node, g, None)
        elif node.op in ("sigmoid", "tanh") and wanted is None:
            wanted = opdef.output_quant(node, g, None)
        if required is not None and node.op == "avg_pool2d" and wanted is not None \
                and not required.same_as(wanted) and _is_global(g, node) and "mean" in OPS:
            node.op, node.attrs = "mean", {"axes": [1, 2], "keepdims": True}  # TFLite MEAN requantizes
            required = None
        if wanted is None and required is None:
            raise QuantizationError(f"tensor '{y}' (output of {node.op} node '{node.name}') is not quantized in "
                                    "the QDQ model (no QuantizeLinear after it); mcuforge needs every activation "
                                    "quantized")
        t.dtype = "int8"
        if required is None or wanted is None or required.same_as(wanted):
            t.quant = required or wanted
        else:
            _requantize_output(g, node, required, wanted)
    g.meta["quantization"] = {"scheme": "tflite-int8", "method": "onnx-qdq",
                              **({"requantized_constants": requantized} if requantized else {})}
    if requantized:
        warnings.warn(f"{len(requantized)} constant(s) of the QDQ model had no exact int8 form after "
                      f"mcuforge's graph passes and were quantized again: {', '.join(requantized[:5])}",
                      stacklevel=3)
    return g


def _global_means(g: Graph) -> None:
    """A global average pool whose output the model quantizes differently from its input
    becomes TFLite's MEAN (one requantizing division instead of a pool and a requantization)."""
    if "mean" not in OPS:
        return
    for pool in [n for n in g.nodes if n.op == "avg_pool2d" and _is_global(g, n)]:
        x, y = pool.inputs[0], pool.outputs[0]
        qx = g.tensors[x].quant
        after = g.consumers(y)
        if (len(after) == 1 and after[0].op == "reshape" and y not in g.outputs
                and g.tensors[y].quant is None and len(g.tensors[after[0].outputs[0]].shape) == 2):
            out, keepdims, drop = after[0].outputs[0], False, after[0]
        else:
            out, keepdims, drop = y, True, None
        qy = g.tensors[out].quant
        if qx is None or qy is None or qx.same_as(qy):
            continue
        if drop is not None:
            g.remove_node(drop)
            pool.outputs[0] = out
            del g.tensors[y]
        pool.op, pool.attrs = "mean", {"axes": [1, 2], "keepdims": keepdims}


def _shared_from_consumers(g: Graph, name: str) -> QuantParams | None:
    """An unannotated input of layout ops/pools takes the quantization of their output."""
    for n in g.consumers(name):
        if OPS[n.op].output_shares_input_quant and n.inputs[0] == name:
            q = g.tensors[n.outputs[0]].quant
            if q is not None:
                return q
    return None


def _is_global(g: Graph, node: Node) -> bool:
    x = g.tensors[node.inputs[0]]
    return (len(x.shape) == 4 and list(node.attrs["kernel"]) == [x.shape[1], x.shape[2]]
            and not any(node.attrs["pads"]) and not node.attrs.get("act_min") and not node.attrs.get("act_max"))


def _requantize_output(g: Graph, node: Node, required: QuantParams, wanted: QuantParams) -> None:
    """node must produce `required`; the model wants `wanted`: write a new tensor and requantize it."""
    y = node.outputs[0]
    t = g.tensors[y]
    mid = g.unique_name(y + "_rq")
    g.add_tensor(Tensor(mid, t.shape, "int8", required))
    node.outputs[0] = mid
    t.quant = wanted
    if "quantize" in OPS:
        new = Node(g.unique_name(y + "_requant"), "quantize", [mid], [y], {})
    else:  # a one-input concat is a requantizing copy
        new = Node(g.unique_name(y + "_requant"), "concat", [mid], [y], {"axis": len(t.shape) - 1})
    g.nodes.insert(g.nodes.index(node) + 1, new)


def _exact_int8(t: Tensor) -> np.ndarray | None:
    """The int8 data whose dequantization is exactly t's float data, if there is one."""
    q = t.quant
    if q is None or np.any(q.zero_point < -128) or np.any(q.zero_point > 127):
        return None
    data = q.quantize(t.data.astype(np.float64), "int8")
    back = q.dequantize(data)
    if not np.allclose(back, t.data, rtol=1e-6, atol=0):
        return None
    return data


def _quantize_node_constants(g: Graph, node: Node, cv: _Converter, requantized: list[str]) -> None:
    opdef = OPS[node.op]
    if node.op in ("conv2d", "fully_connected"):
        w = g.tensors[node.inputs[1]]
        wq = _exact_int8(w) if w.dtype == "float32" else None
        if w.dtype == "float32" and wq is None:
            if w.quant is not None or cv.qdq:
                requantized.append(w.name)
            w.quant = None
            opdef.quantize_constants(node, g, {"per_channel_dense": True})
            return
        if wq is not None:
            w.data, w.dtype = wq, "int8"
        if len(node.inputs) > 2 and node.inputs[2]:
            _quantize_bias(g, node, cv, requantized)
        return
    if node.op in ("add", "mul"):
        for name in node.inputs:
            t = g.tensors[name]
            if t.is_const and t.dtype == "float32" and t.quant is not None:
                data = _exact_int8(t)
                if data is None:
                    t.quant = None
                    requantized.append(name)
                else:
                    t.data, t.dtype = data, "int8"
    for name in node.inputs:  # anything left: the op's own rule (symmetric per tensor)
        t = g.tensors[name]
        if t.is_const and t.dtype == "float32":
            t.quant = None
    opdef.quantize_constants(node, g, {"per_channel_dense": True})


def _quantize_bias(g: Graph, node: Node, cv: _Converter, requantized: list[str]) -> None:
    """int32 bias at s_x * s_w: the model's own int32 data where its scale is that one."""
    b, w = g.tensors[node.inputs[2]], g.tensors[node.inputs[1]]
    if b.dtype != "float32":
        return
    o = w.shape[0]
    expected = np.float64(g.tensors[node.inputs[0]].quant.s) * np.broadcast_to(
        w.quant.scale.astype(np.float64), (o,))
    raw = cv.raw_bias.get(b.name)
    if raw is not None and b.quant is not None and np.allclose(b.quant.scale, expected, rtol=1e-5, atol=0):
        data = raw
    else:
        if b.quant is not None:
            requantized.append(b.name)
        data = round_half_away(b.data.astype(np.float64) / expected)
        limit = 2**31 - 1 - int(np.prod(w.shape[1:])) * 255 * 128
        data = np.clip(data, -limit, limit)
    b.data = np.asarray(data, np.int64).reshape(o).astype(np.int32)
    b.dtype = "int32"
    b.quant = QuantParams(expected.astype(np.float32), np.zeros(o, np.int64), 0)
