"""Layout tracking shared by the importers of channel-first frameworks (torch, ONNX).

Both frameworks lay out images as N,C,H,W and signals as N,C,L; the IR is
channel-last with batch 1. An importer keeps, for every framework value it has
converted, an ``Act``: the IR tensor that holds it and the ``Layout`` that relates
the two. Each op asks for the layout it needs (``to_channel_last``, ``to_plain``)
and ``GraphBuilder.relayout`` inserts the transpose/reshape; ``passes.optimize``
later removes the data movement that turns out to be free. A framework transpose
costs nothing: only the recorded layout changes.

``GraphBuilder.io_entry`` gives the ``graph.meta["io"]`` record of a graph input or
output (see ``mcuforge.frontends.to_ir_layout``); the key "torch_shape" is the
framework-layout shape for every framework (NCHW for ONNX too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UnsupportedOpError
from ..ir.graph import Graph, Tensor

__all__ = ["Layout", "Act", "GraphBuilder", "ints"]


@dataclass(frozen=True)
class Layout:
    """How a framework value's elements sit in its IR tensor:
    ir = value.permute(perm), then (expand) a unit axis inserted at 1."""

    perm: tuple[int, ...]
    expand: bool = False  # 3-D signals: N,L,C -> N,1,L,C so that 1-D ops are 2-D ops

    @staticmethod
    def plain(rank: int) -> "Layout":
        return Layout(tuple(range(rank)))

    @staticmethod
    def channel_last(rank: int) -> "Layout":
        if rank == 4:
            return Layout((0, 2, 3, 1))
        if rank == 3:
            return Layout((0, 2, 1), True)
        return Layout.plain(rank)

    def permuted_shape(self, tshape) -> tuple[int, ...]:
        return tuple(tshape[p] for p in self.perm)

    def ir_shape(self, tshape) -> tuple[int, ...]:
        s = self.permuted_shape(tshape)
        return s[:1] + (1,) + s[1:] if self.expand else s

    def ir_axis(self, dim: int) -> int:
        pos = self.perm.index(dim)
        return pos + 1 if self.expand and pos >= 1 else pos

    def to_ir(self, array: np.ndarray) -> np.ndarray:
        """A full-rank constant in framework layout -> IR layout."""
        y = np.transpose(array, self.perm)
        return y[:, None] if self.expand else y


@dataclass(frozen=True)
class Act:
    """An activation: IR tensor `name` holds the framework value of shape `tshape` (batch 1)."""

    name: str
    tshape: tuple[int, ...]
    layout: Layout

    @property
    def rank(self) -> int:
        return len(self.tshape)


def ints(v, n: int, name: str) -> list[int]:
    """An int or a list of ints (length 1 broadcasts) as a list of length n."""
    if isinstance(v, (list, tuple, np.ndarray)):
        v = [int(x) for x in v]
        if len(v) == 1:
            v = v * n
    else:
        v = [int(v)] * n
    if len(v) != n:
        raise UnsupportedOpError(f"{name} {v} should have {n} values")
    return v


class GraphBuilder:
    """Builds an IR graph from framework values. Subclasses implement ``fail``;
    `node` arguments are the subclass's node objects and need a ``name``."""

    def __init__(self, name: str) -> None:
        self.g = Graph(name)

    def fail(self, node: Any, why: str) -> UnsupportedOpError:
        raise NotImplementedError

    # -- graph building ----------------------------------------------------------------------
    def emit(self, op: str, inputs: list[str], tshape, layout: Layout, base: str, **attrs) -> Act:
        out = self.g.unique_name(base)
        self.g.add_tensor(Tensor(out, layout.ir_shape(tshape)))
        self.g.add_node(op, inputs, [out], name=out + "_op", **attrs)
        return Act(out, tuple(tshape), layout)

    def add_const(self, base: str, data: np.ndarray) -> str:
        return self.g.add_const(base, np.ascontiguousarray(data, np.float32))

    def relayout(self, a: Act, target: Layout, base: str) -> Act:
        """The same framework value in another IR layout (transpose/reshape nodes)."""
        if a.layout == target:
            return a
        cur = a
        permuted = a.layout.permuted_shape(a.tshape)
        if a.layout.expand:  # drop the unit H axis
            cur = self.reshape_ir(cur, permuted, Layout(a.layout.perm), base)
        inv = np.argsort(a.layout.perm)
        r = [int(inv[p]) for p in target.perm]
        if r != sorted(r):
            out = self.g.unique_name(base + "_t")
            self.g.add_tensor(Tensor(out, target.permuted_shape(a.tshape)))
            self.g.add_node("transpose", [cur.name], [out], name=out + "_op", perm=r)
            cur = Act(out, a.tshape, Layout(target.perm))
        if target.expand:
            cur = self.reshape_ir(cur, target.ir_shape(a.tshape), target, base)
        return Act(cur.name, a.tshape, target)

    def reshape_ir(self, a: Act, ir_shape, layout: Layout, base: str) -> Act:
        out = self.g.unique_name(base + "_r")
        self.g.add_tensor(Tensor(out, tuple(ir_shape)))
        self.g.add_node("reshape", [a.name], [out], name=out + "_op", shape=list(ir_shape))
        return Act(out, a.tshape, layout)

    def to_channel_last(self, node: Any, a: Act) -> Act:
        if a.rank not in (3, 4):
            raise self.fail(node, f"needs a 3-D (N,C,L) or 4-D (N,C,H,W) input, got rank {a.rank}")
        return self.relayout(a, Layout.channel_last(a.rank), node.name)

    def to_plain(self, node: Any, a: Act) -> Act:
        return self.relayout(a, Layout.plain(a.rank), node.name)

    def const_operand(self, node: Any, a: Act, c: np.ndarray) -> str:
        """A constant broadcast against activation `a` (numpy broadcasting), in a's IR layout."""
        return self.add_const(node.name + "_const", self.const_in_layout(node, a, c))

    def const_in_layout(self, node: Any, a: Act, c: np.ndarray) -> np.ndarray:
        """The data of a constant broadcast against activation `a`, in a's IR layout."""
        c = np.asarray(c)
        if c.ndim > a.rank:
            raise self.fail(node, f"a constant of shape {c.shape} broadcasts beyond the activation "
                                  f"{a.tshape}")
        full = c.reshape((1,) * (a.rank - c.ndim) + c.shape)
        if full.shape[0] != 1:
            raise self.fail(node, f"a constant of shape {c.shape} varies along the batch dimension")
        return a.layout.to_ir(full)

    def unify(self, node: Any, acts: list[Act]) -> list[Act]:
        """Bring activations into one layout: the first non-plain one where ranks agree
        (channel-last data stays channel-last), framework order otherwise."""
        if len({a.layout for a in acts}) == 1:
            return acts
        if len({a.rank for a in acts}) == 1:
            target = next((a.layout for a in acts if a.layout != Layout.plain(a.rank)), acts[0].layout)
        else:
            target = None
        return [self.relayout(a, target or Layout.plain(a.rank), node.name) for a in acts]

    @staticmethod
    def io_entry(a: Act) -> dict:
        """The graph.meta["io"] record of a graph input or output."""
        return {"torch_shape": list(a.tshape), "perm": list(a.layout.perm),
                "ir_shape": list(a.layout.ir_shape(a.tshape))}
