"""The PyTorch frontend: a ``torch.export`` program -> a float mcuforge Graph.

Conversion walks the exported ATen graph once. Every torch value becomes one of

* an activation (``_Act``): an IR tensor plus the layout that relates it to the
  torch value (``_Layout``),
* a constant (a torch tensor, or a Python number): parameters, buffers and
  anything computed from constants only (evaluated eagerly: weight transposes,
  lifted tensors, ``torch.zeros``...),
* a tuple of those (multi-output ops, read with getitem).

Layouts. IR activations are channel-last with batch 1. A 4-D torch value
(N,C,H,W) normally lives in IR as NHWC, a 3-D value (N,C,L) as N,1,L,C, others
in torch order ("plain"). Each op asks for the layout it needs and the converter
inserts the transpose/reshape (``_Converter.relayout``); ``passes.optimize`` then
removes the data movement that turns out to be free. A torch permute costs
nothing: only the recorded layout changes. The batch dimension is dim 0 of every
activation; the exported program may have any (even symbolic) batch size, the
IR has batch 1.

``graph.meta["io"]`` records, for each graph input and output, how an array in
torch layout maps to the IR tensor (see ``mcuforge.frontends.to_ir_layout``).
"""

from __future__ import annotations

import logging
import operator
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ModelFormatError, UnsupportedOpError
from ..ir.graph import Graph, Tensor
from ..passes import BATCH_NORM, optimize
from ._layout import Act as _Act, GraphBuilder, Layout as _Layout, ints as _ints

__all__ = ["from_torch", "from_exported", "load_pt2"]


# --- public API ---------------------------------------------------------------------------------

def from_torch(module: torch.nn.Module, example_inputs: tuple | torch.Tensor, name: str = "model") -> Graph:
    """Export `module` in eval mode with torch.export and convert it."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    was_training = module.training
    try:
        ep = torch.export.export(module.eval(), tuple(example_inputs))
    except Exception as exc:  # torch raises many types; the user needs the reason, not the type
        raise UnsupportedOpError(f"torch.export could not export the model: {exc}") from exc
    finally:
        module.train(was_training)  # leave the caller's module as it was
    return from_exported(ep, name=name)


def from_exported(ep: torch.export.ExportedProgram, name: str = "model") -> Graph:
    """Convert an ExportedProgram (from torch.export.export or torch.export.load)."""
    graph = _Converter(ep, name).convert()
    graph = optimize(graph)
    graph.validate()
    return graph


def load_pt2(path: str | Path) -> Graph:
    """Load a program saved with torch.export.save and convert it."""
    path = Path(path)
    if not path.exists():
        raise ModelFormatError(f"model file '{path}' does not exist")
    if not path.is_file():
        raise ModelFormatError(f"model file '{path}' is not a file")
    if not zipfile.is_zipfile(path):
        raise ModelFormatError(f"'{path}' is not a readable torch.export program (.pt2): not a zip archive")
    # torch logs its own traceback before raising; the user gets our one-line error instead.
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.CRITICAL)
    from ..quant import squeeze_threshold  # noqa: F401  registers mcuforge::quantize_levels for the loader

    try:
        ep = torch.export.load(str(path))
    except Exception as exc:  # zip errors, unpickling errors, version mismatches...
        raise ModelFormatError(f"'{path}' is not a readable torch.export program (.pt2): "
                               f"{type(exc).__name__}: {exc}") from None
    finally:
        export_log.setLevel(level)
    return from_exported(ep, name=path.stem)


# --- values ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Unavailable:
    """A value mcuforge cannot compute (pooling indices, BN's saved statistics);
    an error only if something reads it."""

    what: str


# --- the op table ---------------------------------------------------------------------------------

_HANDLERS: dict[str, Callable] = {}
# Ops that preserve the layout of their (first) input: the graph-input layout choice looks
# through them to see whether a channel-last op follows.
_ELEMENTWISE: set[str] = set()
# Ops that work on channel-last data.
_CHANNEL_LAST: set[str] = set()


def _handles(*targets: str, elementwise: bool = False, channel_last: bool = False):
    def register(fn):
        for t in targets:
            _HANDLERS[t] = fn
            if elementwise:
                _ELEMENTWISE.add(t)
            if channel_last:
                _CHANNEL_LAST.add(t)
        return fn
    return register


# Ops that assert or constrain and produce nothing we need.
_IGNORED = {"aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
            "aten.sym_constrain_range_for_size.default", "aten._assert_async.msg",
            "aten.sym_constrain_range.default"}


# Why an unsupported op is there, where the torch source is not obvious from the ATen name.
_HINTS = {
    "aten.pad.default": " (explicit padding, or a convolution with padding_mode other than 'zeros')",
    "aten.constant_pad_nd.default": " (explicit padding)",
    "aten.reflection_pad1d.default": " (padding_mode='reflect')",
    "aten.reflection_pad2d.default": " (padding_mode='reflect')",
    "aten.replication_pad1d.default": " (padding_mode='replicate')",
    "aten.replication_pad2d.default": " (padding_mode='replicate')",
}


def _has_tensor_value(node: torch.fx.Node) -> bool:
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        return any(isinstance(v, torch.Tensor) for v in val)
    return val is None or isinstance(val, torch.Tensor)


def _target_name(node: torch.fx.Node) -> str:
    if node.target is operator.getitem:
        return "getitem"
    return str(node.target)


def supported_ops() -> list[str]:
    """The ATen ops the frontend converts (overload names, e.g. 'aten.conv2d.default')."""
    return sorted(_HANDLERS)


def _supported_summary() -> str:
    """The torch-level ops users recognize (no in-place variants or plumbing)."""
    plumbing = {"alias", "detach", "lift_fresh_copy", "sym_size", "to", "_to_copy", "_unsafe_view"}
    packets = {t.split(".")[1] for t in _HANDLERS if t.startswith("aten.")}
    return ", ".join(sorted(p for p in packets if not p.endswith("_") and p not in plumbing))


# --- the converter --------------------------------------------------------------------------------

class _Converter(GraphBuilder):
    def __init__(self, ep: torch.export.ExportedProgram, name: str) -> None:
        super().__init__(name)
        self.ep = ep
        self.env: dict[torch.fx.Node, Any] = {}
        self.batch: Any = None  # the exported program's batch size (int or SymInt)

    # -- driver --------------------------------------------------------------------
    def convert(self) -> Graph:
        from torch.export.graph_signature import InputKind, OutputKind

        sig = self.ep.graph_signature
        gm = self.ep.graph_module
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(sig.input_specs):
            raise ModelFormatError("the exported program's signature does not match its graph")
        self._check_supported(gm.graph, placeholders, sig)
        io: dict[str, dict] = {}
        for node, spec in zip(placeholders, sig.input_specs):
            if spec.kind == InputKind.USER_INPUT:
                act = self._graph_input(node)
                self.env[node] = act
                io[act.name] = self.io_entry(act)
            elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                self.env[node] = self._lifted_constant(spec.target)
            elif spec.kind == InputKind.TOKEN:
                self.env[node] = None
            else:
                raise UnsupportedOpError(f"model input '{node.name}' is a {spec.kind.name.lower()}, "
                                         "which mcuforge does not support")
        if not self.g.inputs:
            raise UnsupportedOpError("the model has no tensor inputs")

        with torch.no_grad():
            for node in gm.graph.nodes:
                if node.op == "call_function":
                    self.env[node] = self._convert_node(node)
                elif node.op not in ("placeholder", "output"):
                    raise UnsupportedOpError(f"node '{node.name}' is a '{node.op}' node, which "
                                             "mcuforge does not support (export with torch.export)")

        out_node = next(n for n in gm.graph.nodes if n.op == "output")
        results = out_node.args[0]
        for value, spec in zip(results, sig.output_specs):
            if spec.kind != OutputKind.USER_OUTPUT:
                continue  # buffer mutations (only in training-mode exports, rejected elsewhere)
            act = self._graph_output(value)
            io[act.name] = self.io_entry(act)
        if not self.g.outputs:
            raise UnsupportedOpError("the model has no tensor outputs")
        self.g.meta["io"] = io
        self.g.meta["source"] = {"framework": "torch", "torch_version": torch.__version__}
        self.g.prune()
        return self.g

    def _check_supported(self, fx_graph, placeholders, sig) -> None:
        """Name every op the conversion cannot handle at once (not just the first).
        An op is a problem only if it depends on a model input: ops on constants
        are evaluated eagerly."""
        from torch.export.graph_signature import InputKind

        dynamic = {node for node, spec in zip(placeholders, sig.input_specs)
                   if spec.kind == InputKind.USER_INPUT}
        problems = []
        for node in fx_graph.nodes:
            if node.op != "call_function" or not any(a in dynamic for a in node.all_input_nodes):
                continue
            if not _has_tensor_value(node):
                continue  # shape arithmetic on a dynamic batch size: evaluated as numbers
            dynamic.add(node)
            if _target_name(node) not in _HANDLERS and _target_name(node) not in _IGNORED:
                problems.append(node)
        if problems:
            raise _unsupported(problems)

    def _convert_node(self, node: torch.fx.Node) -> Any:
        target = _target_name(node)
        if target in _IGNORED:
            return None
        if target == "getitem":  # picking a part of a tuple reads none of the others
            return _HANDLERS[target](self, node)
        args = _flatten(self._resolve([node.args, list(node.kwargs.values())]))
        if not any(isinstance(a, (_Act, _Unavailable)) for a in args):
            return self._fold_constant(node)
        for a in args:
            if isinstance(a, _Unavailable):
                raise UnsupportedOpError(f"node '{node.name}' ({target}) reads {a.what}, "
                                         "which mcuforge does not compute")
        if target not in _HANDLERS:
            raise _unsupported([node])
        return _HANDLERS[target](self, node)

    def _fold_constant(self, node: torch.fx.Node) -> Any:
        """Evaluate an op whose inputs are all constants (weight transposes, lifted tensors)."""
        args = self._resolve(node.args)
        kwargs = {k: self._resolve(v) for k, v in node.kwargs.items()}
        try:
            return node.target(*args, **kwargs)
        except Exception as exc:
            raise UnsupportedOpError(f"node '{node.name}' ({_target_name(node)}) on constants "
                                     f"could not be evaluated: {exc}") from exc

    # -- value access ---------------------------------------------------------------------
    def _resolve(self, a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self._resolve(x) for x in a)
        return a


    def arg(self, node: torch.fx.Node, i: int, name: str, default: Any = None) -> Any:
        """Argument `i` (or keyword `name`) of an ATen call, resolved to its value."""
        if i < len(node.args):
            return self._resolve(node.args[i])
        return self._resolve(node.kwargs.get(name, default))

    def act(self, node: torch.fx.Node, value: Any, what: str = "input") -> _Act:
        if not isinstance(value, _Act):
            raise UnsupportedOpError(f"node '{node.name}' ({_target_name(node)}): its {what} must be "
                                     "computed from the model input (got a constant)")
        return value

    def const(self, node: torch.fx.Node, value: Any, what: str) -> np.ndarray | None:
        """A constant as float32 numpy (None stays None); activations are refused."""
        if value is None:
            return None
        if isinstance(value, _Act):
            raise UnsupportedOpError(f"node '{node.name}' ({_target_name(node)}): its {what} must be a "
                                     "constant (parameter or buffer), not computed from the input")
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().to(torch.float32).numpy()
        return np.asarray(value, np.float32)

    def fail(self, node: torch.fx.Node, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"node '{node.name}' ({_target_name(node)}): {why}")

    # -- shapes -----------------------------------------------------------------------------
    def tshape(self, node: torch.fx.Node) -> tuple[int, ...]:
        """The torch shape of a node's (tensor) result with batch 1."""
        val = node.meta.get("val")
        if isinstance(val, (tuple, list)):
            val = val[0]
        if not isinstance(val, torch.Tensor):
            raise self.fail(node, "has no tensor shape in the exported program")
        return self._static_shape(node, val)

    def _static_shape(self, node: torch.fx.Node, val: torch.Tensor) -> tuple[int, ...]:
        if val.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise self.fail(node, f"produces a {val.dtype} tensor; mcuforge computes float tensors only")
        shape = tuple(val.shape)
        if not shape:
            raise self.fail(node, "produces a scalar; activations must keep the batch dimension")
        if self.batch is not None and _known(shape[0]) and _known(self.batch) and int(shape[0]) != int(self.batch):
            raise self.fail(node, f"changes the batch dimension (size {shape[0]}, batch {self.batch}); "
                                  "mcuforge needs the batch as dimension 0 of every tensor")
        rest = []
        for d in shape[1:]:
            if not _known(d):
                raise self.fail(node, f"has a dynamic dimension {d}; only the batch may be dynamic")
            rest.append(int(d))
        return (1, *rest)

    # -- graph inputs and outputs ------------------------------------------------------------------
    def _graph_input(self, node: torch.fx.Node) -> _Act:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise UnsupportedOpError(f"model input '{node.name}' is not a tensor")
        if self.batch is None:
            if val.dim() == 0:
                raise UnsupportedOpError(f"model input '{node.name}' is a scalar; inputs need a batch dimension")
            self.batch = val.shape[0]
        tshape = self._static_shape(node, val)
        # Images (N,C,H,W) enter channel-last; N,C,L signals only where a conv, pool or
        # batch norm reads them (N,T,F sequences for Linear layers stay in torch order).
        layout = _Layout.plain(len(tshape))
        if len(tshape) == 4 or (len(tshape) == 3 and self._feeds_channel_last(node)):
            layout = _Layout.channel_last(len(tshape))
        name = self.g.unique_name(node.name)
        self.g.add_tensor(Tensor(name, layout.ir_shape(tshape)))
        self.g.inputs.append(name)
        return _Act(name, tshape, layout)

    def _feeds_channel_last(self, node: torch.fx.Node) -> bool:
        """Whether the value reaches a channel-last op (conv, pool, BN) directly or
        through elementwise ops: then it enters the IR channel-last."""
        for user in node.users:
            t = _target_name(user)
            if t in _CHANNEL_LAST or (t in _ELEMENTWISE and self._feeds_channel_last(user)):
                return True
        return False

    def _graph_output(self, value: Any) -> _Act:
        v = self._resolve(value)
        if not isinstance(v, _Act):
            raise UnsupportedOpError(f"model output '{value}' is not computed from the model input "
                                     "(a constant or non-tensor output)")
        if v.name in self.g.inputs or v.name in self.g.outputs:
            # An output must be a tensor of its own: copy (a reshape to the same shape).
            v = self.reshape_ir(v, self.g.tensors[v.name].shape, v.layout, v.name + "_out")
        self.g.outputs.append(v.name)
        return v

    def _lifted_constant(self, target: str) -> torch.Tensor:
        # copies: folding in-place ops on constants must not alter the caller's program
        if target in self.ep.state_dict:
            return self.ep.state_dict[target].detach().clone()
        if target in self.ep.constants:
            c = self.ep.constants[target]
            return c.detach().clone() if isinstance(c, torch.Tensor) else c
        raise ModelFormatError(f"the exported program has no value for '{target}'")


def _flatten(v: Any) -> list:
    if isinstance(v, (list, tuple)):
        return [x for item in v for x in _flatten(item)]
    return [v]


def _unsupported(nodes: list[torch.fx.Node]) -> UnsupportedOpError:
    """One error naming every unsupported node and its ATen op, and what is supported."""
    uses = "; ".join(f"node '{n.name}' uses {_target_name(n)}{_HINTS.get(_target_name(n), '')}" for n in nodes)
    return UnsupportedOpError(f"{uses}, which mcuforge does not support. "
                              f"Supported ATen ops: {_supported_summary()}")


def _known(d) -> bool:
    try:
        int(d)
        return True
    except Exception:
        return False


# --- handlers: identity and elementwise ---------------------------------------------------------------

@_handles("aten.clone.default", "aten.alias.default", "aten.detach.default", "aten.detach_.default",
          "aten.contiguous.default", "aten.lift_fresh_copy.default", elementwise=True)
def _identity(cv: _Converter, node):
    return cv.act(node, cv.arg(node, 0, "self"))


@_handles("aten.dropout.default", "aten.dropout_.default", "aten.feature_dropout.default",
          "aten.alpha_dropout.default", "aten.feature_alpha_dropout.default", elementwise=True)
def _dropout(cv: _Converter, node):
    if cv.arg(node, 2, "train", False):
        raise cv.fail(node, "dropout is in training mode; export the model in eval mode (model.eval())")
    return cv.act(node, cv.arg(node, 0, "input"))


@_handles("aten._to_copy.default", "aten.to.dtype", elementwise=True)
def _to_copy(cv: _Converter, node):
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor) and val.dtype != torch.float32:
        raise cv.fail(node, f"converts to {val.dtype}; mcuforge computes in float32")
    return cv.act(node, cv.arg(node, 0, "self"))


def _unary(cv: _Converter, node, op: str, **attrs) -> _Act:
    x = cv.act(node, cv.arg(node, 0, "self"))
    out = cv.emit(op, [x.name], x.tshape, x.layout, node.name, **attrs)
    _mutate(cv, node, out)
    return out


def _mutate(cv: _Converter, node, out: _Act) -> None:
    """In-place ops (relu_, add_): later readers of the mutated value see the result."""
    if str(node.target).split(".")[-2].endswith("_") and isinstance(node.args[0], torch.fx.Node):
        cv.env[node.args[0]] = out


def _clamp(cv, node, lo, hi) -> _Act:
    return _unary(cv, node, "clamp", min=None if lo is None else float(lo), max=None if hi is None else float(hi))


@_handles("aten.relu.default", "aten.relu_.default", elementwise=True)
def _relu(cv, node):
    return _clamp(cv, node, 0.0, None)


@_handles("aten.relu6.default", "aten.relu6_.default", elementwise=True)
def _relu6(cv, node):
    return _clamp(cv, node, 0.0, 6.0)


@_handles("aten.hardtanh.default", "aten.hardtanh_.default", elementwise=True)
def _hardtanh(cv, node):
    return _clamp(cv, node, cv.arg(node, 1, "min_val", -1.0), cv.arg(node, 2, "max_val", 1.0))


@_handles("aten.clamp.default", "aten.clamp_.default", elementwise=True)
def _clamp_op(cv, node):
    lo, hi = cv.arg(node, 1, "min"), cv.arg(node, 2, "max")
    if isinstance(lo, (torch.Tensor, _Act)) or isinstance(hi, (torch.Tensor, _Act)):
        raise cv.fail(node, "clamp bounds must be numbers")
    return _clamp(cv, node, lo, hi)


@_handles("aten.clamp_min.default", "aten.clamp_min_.default", elementwise=True)
def _clamp_min(cv, node):
    return _clamp(cv, node, cv.arg(node, 1, "min"), None)


@_handles("aten.clamp_max.default", "aten.clamp_max_.default", elementwise=True)
def _clamp_max(cv, node):
    return _clamp(cv, node, None, cv.arg(node, 1, "max"))


@_handles("aten.leaky_relu.default", "aten.leaky_relu_.default", elementwise=True)
def _leaky_relu(cv, node):
    return _unary(cv, node, "leaky_relu", alpha=float(cv.arg(node, 1, "negative_slope", 0.01)))


@_handles("aten.sigmoid.default", "aten.sigmoid_.default", elementwise=True)
def _sigmoid(cv, node):
    return _unary(cv, node, "sigmoid")


@_handles("aten.tanh.default", "aten.tanh_.default", elementwise=True)
def _tanh(cv, node):
    return _unary(cv, node, "tanh")


@_handles("aten.abs.default", "aten.abs_.default", elementwise=True)
def _abs(cv, node):
    return _unary(cv, node, "abs")


@_handles("aten.log.default", elementwise=True)
def _log(cv, node):
    """log(|x| + eps) with a constant eps > 0 (log compression) becomes one log_abs table;
    the abs and add it reads are left unused and pruned."""
    src = node.args[0]
    if (isinstance(src, torch.fx.Node) and _target_name(src) in ("aten.add.Tensor", "aten.add.Scalar")
            and len(src.users) == 1 and isinstance(src.args[0], torch.fx.Node)
            and _target_name(src.args[0]) == "aten.abs.default" and len(src.args[0].users) == 1):
        eps = cv._resolve(src.args[1]) if len(src.args) > 1 else None
        alpha = src.kwargs.get("alpha", 1)
        if isinstance(eps, torch.Tensor) and eps.numel() == 1:
            eps = float(eps)
        if isinstance(eps, (int, float)) and eps * alpha > 0:
            x = cv.act(node, cv._resolve(src.args[0].args[0]))
            return cv.emit("log_abs", [x.name], x.tshape, x.layout, node.name, eps=float(eps * alpha))
    raise cv.fail(node, "log is supported only as log(abs(x) + eps) with a constant eps > 0 "
                        "(log compression), which becomes an int8 table")


@_handles("mcuforge.quantize_levels.default", elementwise=True)
def _quantize_levels(cv, node):
    """The frozen Squeeze-and-Threshold activation (mcuforge.quant.squeeze_threshold): one table
    onto the 2^b-level grid."""
    t, levels = cv.arg(node, 1, "threshold"), cv.arg(node, 2, "levels")
    if not isinstance(t, (int, float)) or not isinstance(levels, int):
        raise cv.fail(node, "threshold and levels must be numbers")
    return _unary_named(cv, node, "quantize_levels", "x", threshold=float(t), levels=int(levels))


def _unary_named(cv: _Converter, node, op: str, arg: str, **attrs) -> _Act:
    x = cv.act(node, cv.arg(node, 0, arg))
    return cv.emit(op, [x.name], x.tshape, x.layout, node.name, **attrs)


# Composite activations, built from IR ops (MobileNetV3 / EfficientNet heads).
@_handles("aten.silu.default", "aten.silu_.default", elementwise=True)
def _silu(cv, node):
    x = cv.act(node, cv.arg(node, 0, "self"))
    s = cv.emit("sigmoid", [x.name], x.tshape, x.layout, node.name + "_sigmoid")
    out = cv.emit("mul", [x.name, s.name], x.tshape, x.layout, node.name)
    _mutate(cv, node, out)
    return out


def _hard_sigmoid(cv, node, x: _Act, base: str) -> _Act:
    """relu6(x + 3) / 6, as add with a fused clamp and a mul."""
    three = cv.const_operand(node, x, np.array(3.0, np.float32))
    r = cv.emit("add", [x.name, three], x.tshape, x.layout, base + "_relu6", act_min=0.0, act_max=6.0)
    sixth = cv.const_operand(node, x, np.array(1.0 / 6.0, np.float32))
    return cv.emit("mul", [r.name, sixth], x.tshape, x.layout, base)


@_handles("aten.hardsigmoid.default", "aten.hardsigmoid_.default", elementwise=True)
def _hardsigmoid(cv, node):
    x = cv.act(node, cv.arg(node, 0, "self"))
    out = _hard_sigmoid(cv, node, x, node.name)
    _mutate(cv, node, out)
    return out


@_handles("aten.hardswish.default", "aten.hardswish_.default", elementwise=True)
def _hardswish(cv, node):
    x = cv.act(node, cv.arg(node, 0, "self"))
    h = _hard_sigmoid(cv, node, x, node.name + "_hsig")
    out = cv.emit("mul", [x.name, h.name], x.tshape, x.layout, node.name)
    _mutate(cv, node, out)
    return out


# --- handlers: binary -----------------------------------------------------------------------------------

def _unify(cv: _Converter, node, acts: list[_Act]) -> list[_Act]:
    return cv.unify(node, acts)


def _binary(cv: _Converter, node, op: str, a: Any, b: Any) -> _Act:
    """op(a, b) where at least one side is an activation; constants broadcast torch-style."""
    tshape = cv.tshape(node)
    if isinstance(a, _Act) and isinstance(b, _Act):
        if a.rank != b.rank:
            a, b = cv.to_plain(node, a), cv.to_plain(node, b)
        a, b = _unify(cv, node, [a, b])
        return cv.emit(op, [a.name, b.name], tshape, a.layout, node.name)
    x, c = (a, b) if isinstance(a, _Act) else (b, a)
    c = cv.const(node, c, "constant operand")
    return cv.emit(op, [x.name, cv.const_operand(node, x, c)], tshape, x.layout, node.name)


def _scaled(cv: _Converter, node, v: Any, factor: float, base: str) -> Any:
    """v * factor for a constant or an activation (torch's alpha, subtraction)."""
    if factor == 1:
        return v
    if isinstance(v, _Act):
        k = cv.const_operand(node, v, np.array(factor, np.float32))
        return cv.emit("mul", [v.name, k], v.tshape, v.layout, base)
    return cv.const(node, v, "operand") * np.float32(factor)


@_handles("aten.add.Tensor", "aten.add_.Tensor", "aten.add.Scalar", "aten.sub.Tensor", "aten.sub_.Tensor",
          "aten.sub.Scalar", elementwise=True)
def _add(cv, node):
    sign = -1.0 if ".sub" in str(node.target) else 1.0
    alpha = cv.arg(node, 2, "alpha", 1)
    a, b = cv.arg(node, 0, "self"), cv.arg(node, 1, "other")
    b = _scaled(cv, node, b, sign * float(alpha), node.name + "_scaled")
    out = _binary(cv, node, "add", a, b)
    _mutate(cv, node, out)
    return out


@_handles("aten.rsub.Scalar", "aten.rsub.Tensor", elementwise=True)
def _rsub(cv, node):  # other - alpha * self
    a, b = cv.arg(node, 0, "self"), cv.arg(node, 1, "other")
    a = _scaled(cv, node, a, -float(cv.arg(node, 2, "alpha", 1)), node.name + "_scaled")
    return _binary(cv, node, "add", a, b)


@_handles("aten.neg.default", elementwise=True)
def _neg(cv, node):
    return _binary(cv, node, "mul", cv.arg(node, 0, "self"), -1.0)


@_handles("aten.mul.Tensor", "aten.mul_.Tensor", "aten.mul.Scalar", elementwise=True)
def _mul(cv, node):
    out = _binary(cv, node, "mul", cv.arg(node, 0, "self"), cv.arg(node, 1, "other"))
    _mutate(cv, node, out)
    return out


@_handles("aten.div.Tensor", "aten.div_.Tensor", "aten.div.Scalar", elementwise=True)
def _div(cv, node):
    if cv.arg(node, 2, "rounding_mode") is not None:
        raise cv.fail(node, "division with rounding is not supported")
    a, b = cv.arg(node, 0, "self"), cv.arg(node, 1, "other")
    if isinstance(b, _Act):
        raise cv.fail(node, "division by a computed tensor is not supported (only by constants)")
    out = _binary(cv, node, "mul", a, 1.0 / cv.const(node, b, "divisor"))
    _mutate(cv, node, out)
    return out


# --- handlers: layout ---------------------------------------------------------------------------------

@_handles("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default", "aten.flatten.using_ints",
          "aten.unflatten.int", "aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default",
          "aten.unsqueeze.default")
def _reshape(cv, node):
    x = cv.act(node, cv.arg(node, 0, "self"))
    tshape = cv.tshape(node)
    if tshape == x.tshape:
        return x
    x = cv.to_plain(node, x)  # a reshape reads torch's element order
    return cv.emit("reshape", [x.name], tshape, _Layout.plain(len(tshape)), node.name, shape=list(tshape))


def _relabel(cv, node, x: _Act, dims: list[int]) -> _Act:
    """permute(x, dims) costs nothing: the IR tensor stays, its layout changes."""
    dims = [d % x.rank for d in dims]
    if dims[0] != 0:
        raise cv.fail(node, "moves the batch dimension, which must stay first")
    inv = np.argsort(dims)
    perm = tuple(int(inv[p]) for p in x.layout.perm)
    return _Act(x.name, tuple(x.tshape[d] for d in dims), _Layout(perm, x.layout.expand))


@_handles("aten.permute.default")
def _permute(cv, node):
    x = cv.act(node, cv.arg(node, 0, "self"))
    return _relabel(cv, node, x, list(cv.arg(node, 1, "dims")))


@_handles("aten.transpose.int")
def _transpose(cv, node):
    x = cv.act(node, cv.arg(node, 0, "self"))
    d0, d1 = cv.arg(node, 1, "dim0") % x.rank, cv.arg(node, 2, "dim1") % x.rank
    dims = list(range(x.rank))
    dims[d0], dims[d1] = dims[d1], dims[d0]
    return _relabel(cv, node, x, dims)


@_handles("aten.cat.default", "aten.concat.default")
def _cat(cv, node):
    parts = cv.arg(node, 0, "tensors")
    if any(not isinstance(p, _Act) for p in parts):
        raise cv.fail(node, "concatenates a constant with computed tensors, which is not supported")
    acts = _unify(cv, node, list(parts))
    dim = cv.arg(node, 1, "dim", 0) % acts[0].rank
    if dim == 0:
        raise cv.fail(node, "concatenates along the batch dimension")
    return cv.emit("concat", [a.name for a in acts], cv.tshape(node), acts[0].layout, node.name,
                   axis=acts[0].layout.ir_axis(dim))


@_handles("aten.softmax.int", "aten._softmax.default")
def _softmax(cv, node):
    x = cv.act(node, cv.arg(node, 0, "self"))
    dim = cv.arg(node, 1, "dim") % x.rank
    if dim == 0:
        raise cv.fail(node, "softmax over the batch dimension is not supported")
    ir_rank = len(x.layout.ir_shape(x.tshape))
    if x.layout.ir_axis(dim) != ir_rank - 1:
        # softmax runs over the last IR axis: try torch order, then channel-last
        for layout in (_Layout.plain(x.rank), _Layout.channel_last(x.rank)):
            if layout.ir_axis(dim) == len(layout.ir_shape(x.tshape)) - 1:
                x = cv.relayout(x, layout, node.name)
                break
        else:
            raise cv.fail(node, f"softmax over dimension {dim} cannot be expressed over the last axis")
    return cv.emit("softmax", [x.name], x.tshape, x.layout, node.name, beta=1.0)


@_handles("getitem")
def _getitem(cv, node):
    seq, idx = cv._resolve(node.args[0]), node.args[1]
    if not isinstance(seq, (tuple, list)):
        raise cv.fail(node, "indexes a value that is not a tuple")
    return seq[idx]


@_handles("aten.sym_size.int")
def _sym_size(cv, node):
    x = cv.act(node, cv.arg(node, 0, "self"))
    return x.tshape[cv.arg(node, 1, "dim") % x.rank]


# --- handlers: convolution and dense --------------------------------------------------------------------

def _conv(cv: _Converter, node, x, w, b, stride, padding, dilation, groups) -> _Act:
    x = cv.act(node, x)
    w = cv.const(node, w, "weight")
    b = cv.const(node, b, "bias")
    nd = w.ndim - 2
    if nd not in (1, 2) or x.rank != nd + 2:
        raise cv.fail(node, f"only 1-D and 2-D convolutions are supported (weight {w.shape}, input rank {x.rank})")
    stride, dilation = _ints(stride, nd, "stride"), _ints(dilation, nd, "dilation")
    ksize = list(w.shape[2:])
    if isinstance(padding, str):
        if padding == "valid":
            lo = hi = [0] * nd
        elif padding == "same":  # torch: the odd extra pad goes at the end
            total = [d * (k - 1) for d, k in zip(dilation, ksize)]
            lo = [t // 2 for t in total]
            hi = [t - t // 2 for t in total]
        else:
            raise cv.fail(node, f"unknown padding '{padding}'")
    else:
        lo = hi = _ints(padding, nd, "padding")
    x = cv.to_channel_last(node, x)
    if nd == 1:  # N,C,L -> N,1,L,C: a conv2d with a 1xK kernel
        w = w[:, :, None, :]
        stride, dilation, pads = [1, stride[0]], [1, dilation[0]], [0, 0, lo[0], hi[0]]
    else:
        pads = [lo[0], hi[0], lo[1], hi[1]]
    inputs = [x.name, cv.add_const(node.name + "_weight", w.transpose(0, 2, 3, 1))]
    if b is not None:
        inputs.append(cv.add_const(node.name + "_bias", b))
    return cv.emit("conv2d", inputs, cv.tshape(node), x.layout, node.name, stride=stride,
                   dilation=dilation, pads=pads, groups=int(groups))


@_handles("aten.conv1d.default", "aten.conv2d.default", "aten.conv1d.padding", "aten.conv2d.padding",
          channel_last=True)
def _conv_nd(cv, node):
    return _conv(cv, node, cv.arg(node, 0, "input"), cv.arg(node, 1, "weight"), cv.arg(node, 2, "bias"),
                 cv.arg(node, 3, "stride", 1), cv.arg(node, 4, "padding", 0), cv.arg(node, 5, "dilation", 1),
                 cv.arg(node, 6, "groups", 1))


@_handles("aten.convolution.default", channel_last=True)
def _convolution(cv, node):
    if cv.arg(node, 6, "transposed"):
        raise cv.fail(node, "transposed convolution is not supported")
    return _conv(cv, node, cv.arg(node, 0, "input"), cv.arg(node, 1, "weight"), cv.arg(node, 2, "bias"),
                 cv.arg(node, 3, "stride"), cv.arg(node, 4, "padding"), cv.arg(node, 5, "dilation"),
                 cv.arg(node, 8, "groups"))


def _dense(cv: _Converter, node, x, w: np.ndarray, b: np.ndarray | None) -> _Act:
    x = cv.to_plain(node, cv.act(node, x))  # fully_connected works on the last torch axis
    if w.ndim != 2:
        raise cv.fail(node, f"weight must be a matrix, got shape {w.shape}")
    inputs = [x.name, cv.add_const(node.name + "_weight", w)]
    if b is not None:
        inputs.append(cv.add_const(node.name + "_bias", np.broadcast_to(b, (w.shape[0],))))
    tshape = cv.tshape(node)
    return cv.emit("fully_connected", inputs, tshape, _Layout.plain(len(tshape)), node.name)


@_handles("aten.linear.default")
def _linear(cv, node):
    return _dense(cv, node, cv.arg(node, 0, "input"), cv.const(node, cv.arg(node, 1, "weight"), "weight"),
                  cv.const(node, cv.arg(node, 2, "bias"), "bias"))


@_handles("aten.addmm.default")
def _addmm(cv, node):  # beta * bias + alpha * x @ w.T (decomposed linear)
    beta, alpha = float(cv.arg(node, 3, "beta", 1)), float(cv.arg(node, 4, "alpha", 1))
    w = cv.const(node, cv.arg(node, 2, "mat2"), "weight").T * alpha
    b = cv.const(node, cv.arg(node, 0, "self"), "bias") * beta
    return _dense(cv, node, cv.arg(node, 1, "mat1"), w, b)


@_handles("aten.mm.default", "aten.matmul.default")
def _mm(cv, node):  # x @ W with a constant matrix W
    rhs = cv.arg(node, 1, "mat2" if node.target is torch.ops.aten.mm.default else "other")
    return _dense(cv, node, cv.arg(node, 0, "self"), cv.const(node, rhs, "right operand").T, None)


@_handles("aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default", channel_last=True)
def _batch_norm(cv, node):
    legit = "legit" in str(node.target)
    x = cv.act(node, cv.arg(node, 0, "input"))
    gamma = cv.const(node, cv.arg(node, 1, "weight"), "weight")
    beta = cv.const(node, cv.arg(node, 2, "bias"), "bias")
    mean = cv.const(node, cv.arg(node, 3, "running_mean"), "running mean")
    var = cv.const(node, cv.arg(node, 4, "running_var"), "running variance")
    if not legit and cv.arg(node, 5, "training"):
        raise cv.fail(node, "batch norm is in training mode (batch statistics); export the model "
                            "in eval mode (model.eval())")
    if mean is None or var is None:
        raise cv.fail(node, "batch norm without running statistics (track_running_stats=False) "
                            "is not supported")
    eps = float(cv.arg(node, 6, "eps", 1e-5) if legit else cv.arg(node, 7, "eps", 1e-5))
    c = mean.shape[0]
    scale = (1.0 if gamma is None else gamma.astype(np.float64)) / np.sqrt(var.astype(np.float64) + eps)
    shift = (0.0 if beta is None else beta.astype(np.float64)) - mean * scale
    if x.rank == 2:
        x = cv.to_plain(node, x)
    else:
        x = cv.to_channel_last(node, x)  # the channel is the last IR axis
    out = cv.emit(BATCH_NORM, [x.name, cv.add_const(node.name + "_scale", np.broadcast_to(scale, (c,))),
                               cv.add_const(node.name + "_shift", np.broadcast_to(shift, (c,)))],
                  cv.tshape(node), x.layout, node.name)
    if legit:  # (output, saved mean, saved inverse std)
        return (out, _Unavailable("batch-norm statistics"), _Unavailable("batch-norm statistics"))
    return out


# --- handlers: pooling ---------------------------------------------------------------------------------

def _pool(cv: _Converter, node, op: str, x, kernel, stride, padding, ceil_mode=False, dilation=1,
          count_include_pad=True, divisor_override=None) -> _Act:
    x = cv.act(node, x)
    nd = x.rank - 2
    if nd not in (1, 2):
        raise cv.fail(node, f"only 1-D and 2-D pooling is supported (input rank {x.rank})")
    kernel = _ints(kernel, nd, "kernel_size")
    stride = _ints(stride, nd, "stride") if stride not in (None, [], ()) else list(kernel)
    padding = _ints(padding, nd, "padding")
    if any(d != 1 for d in _ints(dilation, nd, "dilation")):
        raise cv.fail(node, "pooling with dilation != 1 is not supported")
    if divisor_override is not None:
        raise cv.fail(node, "average pooling with divisor_override is not supported")
    tshape = cv.tshape(node)
    floor = [(s + 2 * p - k) // st + 1 for s, k, st, p in zip(x.tshape[2:], kernel, stride, padding)]
    if ceil_mode and list(tshape[2:]) != floor:
        raise cv.fail(node, f"ceil_mode=True gives output size {list(tshape[2:])} where mcuforge's "
                            f"pooling (floor mode) gives {floor}; use ceil_mode=False or pad the input")
    x = cv.to_channel_last(node, x)
    if nd == 1:
        kernel, stride, pads = [1, kernel[0]], [1, stride[0]], [0, 0, padding[0], padding[0]]
    else:
        pads = [padding[0], padding[0], padding[1], padding[1]]
    attrs = dict(kernel=kernel, stride=stride, pads=pads)
    if op == "avg_pool2d":
        attrs["count_include_pad"] = bool(count_include_pad)
    return cv.emit(op, [x.name], tshape, x.layout, node.name, **attrs)


@_handles("aten.avg_pool1d.default", "aten.avg_pool2d.default", channel_last=True)
def _avg_pool(cv, node):
    return _pool(cv, node, "avg_pool2d", cv.arg(node, 0, "self"), cv.arg(node, 1, "kernel_size"),
                 cv.arg(node, 2, "stride"), cv.arg(node, 3, "padding", 0), cv.arg(node, 4, "ceil_mode", False),
                 count_include_pad=cv.arg(node, 5, "count_include_pad", True),
                 divisor_override=cv.arg(node, 6, "divisor_override"))


@_handles("aten.max_pool1d.default", "aten.max_pool2d.default", "aten.max_pool1d_with_indices.default",
          "aten.max_pool2d_with_indices.default", channel_last=True)
def _max_pool(cv, node):
    out = _pool(cv, node, "max_pool2d", cv.arg(node, 0, "self"), cv.arg(node, 1, "kernel_size"),
                cv.arg(node, 2, "stride"), cv.arg(node, 3, "padding", 0), cv.arg(node, 5, "ceil_mode", False),
                dilation=cv.arg(node, 4, "dilation", 1))
    if "with_indices" in str(node.target):
        return (out, _Unavailable("max-pooling indices"))
    return out


def _adaptive(cv: _Converter, node, op: str) -> _Act:
    """Adaptive pooling whose output size divides the input size: a fixed window."""
    x = cv.act(node, cv.arg(node, 0, "self"))
    nd = x.rank - 2
    out_size = _ints(cv.arg(node, 1, "output_size"), nd, "output_size") if nd >= 1 else []
    sizes = x.tshape[2:]
    if any(s % o for s, o in zip(sizes, out_size)):
        raise cv.fail(node, f"adaptive pooling from {list(sizes)} to {out_size} needs windows of "
                            "different sizes; only output sizes that divide the input are supported")
    kernel = [s // o for s, o in zip(sizes, out_size)]
    return _pool(cv, node, op, x, kernel, kernel, 0)


@_handles("aten.adaptive_avg_pool1d.default", "aten.adaptive_avg_pool2d.default",
          "aten._adaptive_avg_pool2d.default", channel_last=True)
def _adaptive_avg(cv, node):
    return _adaptive(cv, node, "avg_pool2d")


@_handles("aten.adaptive_max_pool1d.default", "aten.adaptive_max_pool2d.default", channel_last=True)
def _adaptive_max(cv, node):
    return (_adaptive(cv, node, "max_pool2d"), _Unavailable("max-pooling indices"))


@_handles("aten.mean.dim", channel_last=True)
def _mean(cv, node):
    """mean over all spatial dimensions = global average pooling."""
    x = cv.act(node, cv.arg(node, 0, "self"))
    dims = cv.arg(node, 1, "dim")
    dims = sorted({d % x.rank for d in (dims if isinstance(dims, (list, tuple)) else [dims])})
    if x.rank not in (3, 4) or dims != list(range(2, x.rank)):
        raise cv.fail(node, f"mean over dimensions {dims} is not supported (only over all spatial "
                            "dimensions of an N,C,L or N,C,H,W tensor: global average pooling)")
    sizes = list(x.tshape[2:])
    xc = cv.to_channel_last(node, x)
    keep = tuple(x.tshape[:2]) + (1,) * (x.rank - 2)
    kernel, pads = ([1, sizes[0]] if x.rank == 3 else sizes), [0, 0, 0, 0]
    keepdim = bool(cv.arg(node, 2, "keepdim", False))
    pooled = cv.emit("avg_pool2d", [xc.name], keep, xc.layout, node.name if keepdim else node.name + "_pool",
                     kernel=kernel, stride=kernel, pads=pads, count_include_pad=True)
    if keepdim:
        return pooled
    flat = cv.to_plain(node, pooled)
    return cv.emit("reshape", [flat.name], cv.tshape(node), _Layout.plain(2), node.name,
                   shape=list(cv.tshape(node)))
