"""The contract every op implements.

An op lives in one module of this package and one C file in ``kernels/``:
its shape rule, its float reference, its integer reference (the specification
that the C kernels must match bit for bit), its quantization rule and its C
emitter. Integer parameters (requantization multipliers, tables) are derived
from the tensors' quantization parameters by one function per op, used by both
the integer reference and the C emitter, so they cannot disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import GraphError
from ..ir.graph import Graph, Node, QuantParams, Tensor
from ..quant.fixedpoint import round_half_away

if TYPE_CHECKING:  # pragma: no cover
    from ..codegen.context import CodegenContext


class OpDef:
    name: str = ""
    kernel: str | None = None  # C source stem in ops/kernels (mf_<kernel>.c)
    fusable_activation = False  # may carry act_min/act_max attributes
    # Elementwise: the output may reuse the buffer of an input of the same shape
    # whose last reader is this node.
    inplace = False
    output_shares_input_quant = False  # output quantization = input 0's (pools, layout ops)
    num_inputs: tuple[int, int] = (1, 1)  # min, max

    # -- shape rule -------------------------------------------------------------
    def infer(self, node: Node, graph: Graph) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def check(self, node: Node, graph: Graph) -> None:
        lo, hi = self.num_inputs
        if not lo <= len(node.inputs) <= hi:
            raise GraphError(f"node '{node.name}' ({node.op}) takes {lo}..{hi} inputs, got {len(node.inputs)}")
        inferred = self.infer(node, graph)
        for t, shape in zip(node.outputs, inferred):
            if graph.tensors[t].shape != tuple(shape):
                raise GraphError(
                    f"node '{node.name}' ({node.op}): output '{t}' is declared {graph.tensors[t].shape} "
                    f"but the op produces {tuple(shape)}"
                )
        if self.fusable_activation:
            lo_a, hi_a = node.attrs.get("act_min"), node.attrs.get("act_max")
            if lo_a is not None and hi_a is not None and lo_a > hi_a:
                raise GraphError(f"node '{node.name}': activation range [{lo_a}, {hi_a}] is empty")
        if "weight_storage" in node.attrs:
            from .weight_storage import check_weight_storage

            check_weight_storage(node, graph)

    # -- references ---------------------------------------------------------------
    def run_float(self, node: Node, graph: Graph, xs: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def run_int(self, node: Node, graph: Graph, xs: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    # -- quantization -------------------------------------------------------------
    def output_quant(self, node: Node, graph: Graph, observed: QuantParams) -> QuantParams:
        """Quantization of the output, given the input tensors' (already set) and the observed range."""
        if self.output_shares_input_quant:
            return graph.tensors[node.inputs[0]].quant
        return observed

    def quantize_constants(self, node: Node, graph: Graph, options: dict[str, Any]) -> None:
        """Replace float constant inputs by quantized ones (weights, biases). Default: none."""
        for t in node.inputs:
            if t and graph.tensors[t].is_const and graph.tensors[t].dtype == "float32":
                raise GraphError(f"node '{node.name}' ({node.op}) has a float constant input '{t}' "
                                 "that its quantization rule does not handle")

    # -- C ------------------------------------------------------------------------
    def emit_c(self, node: Node, graph: Graph, ctx: "CodegenContext") -> str:
        raise NotImplementedError

    # -- costs --------------------------------------------------------------------
    def macs(self, node: Node, graph: Graph) -> int:
        return 0

    # -- memory -------------------------------------------------------------------
    def overlap_shift(self, node: Node, graph: Graph, alignment: int = 1) -> int | None:
        """Where the output may start relative to input 0 when this node is that input's last reader:
        the largest s <= 0, a multiple of `alignment`, that is safe for every kernel that can run the
        node (ops/overlap.py); None: the output must not share a byte with the input (the default)."""
        return None


# --- helpers shared by op modules ----------------------------------------------------

def t_in(graph: Graph, node: Node, i: int = 0) -> Tensor:
    return graph.tensors[node.inputs[i]]


def t_out(graph: Graph, node: Node, i: int = 0) -> Tensor:
    return graph.tensors[node.outputs[i]]


def require_attrs(node: Node, *names: str) -> None:
    missing = [n for n in names if n not in node.attrs]
    if missing:
        raise GraphError(f"node '{node.name}' ({node.op}) lacks attribute(s) {missing}")


def apply_float_activation(node: Node, y: np.ndarray) -> np.ndarray:
    lo, hi = node.attrs.get("act_min"), node.attrs.get("act_max")
    if lo is not None or hi is not None:
        y = np.clip(y, -np.inf if lo is None else lo, np.inf if hi is None else hi)
    return y


def quantized_activation_range(node: Node, q: QuantParams) -> tuple[int, int]:
    """TFLite CalculateActivationRangeQuantized: the fused clamp in the int8 domain."""
    lo, hi = -128, 127
    scale = np.float32(q.s)

    def quantize(f: float) -> int:
        return q.zp + int(round_half_away(np.float32(f) / scale))

    if node.attrs.get("act_min") is not None:
        lo = max(lo, quantize(node.attrs["act_min"]))
    if node.attrs.get("act_max") is not None:
        hi = min(hi, quantize(node.attrs["act_max"]))
    return lo, hi


def c_array(values, per_line: int = 16) -> str:
    vals = [str(int(v)) for v in np.asarray(values).ravel()]
    lines = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
    return "{\n  " + ",\n  ".join(lines) + "\n}" if vals else "{0}"


def conv_out_size(size: int, k: int, stride: int, dil: int, pad_lo: int, pad_hi: int) -> int:
    eff = dil * (k - 1) + 1
    out = (size + pad_lo + pad_hi - eff) // stride + 1
    return out


def shape4(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Pad a shape on the left to rank 4 (for the C kernels' broadcast strides)."""
    if len(shape) > 4:
        raise GraphError(f"tensors of rank {len(shape)} are not supported (at most 4)")
    return (1,) * (4 - len(shape)) + tuple(shape)
