"""Static memory planner: every activation tensor gets an offset in one arena.

1. Buffers: a reshape output shares its input's buffer; an elementwise op
   (``OpDef.inplace``) writes into an input buffer of the same size whose
   last reader it is. Shared tensors form one buffer (union-find).
2. Lifetimes: a buffer lives from the step that first writes it (graph inputs:
   before step 0) to the last step that reads it (graph outputs: to the end).
3. Placement: greedy by decreasing size (as TFLM's greedy planner), each buffer
   at the lowest aligned offset that overlaps no placed buffer alive at the
   same time. The arena size is the highest end offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir.graph import Graph
from ..ops import get_op


@dataclass
class Buffer:
    tensors: list[str]
    size: int
    first: int
    last: int
    offset: int = -1


@dataclass
class MemoryPlan:
    offsets: dict[str, int]  # tensor -> arena offset
    buffers: list[Buffer] = field(default_factory=list)
    arena_size: int = 0
    naive_size: int = 0  # every activation in its own buffer: what planning saves against
    inplace: list[str] = field(default_factory=list)  # nodes that run in place


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def plan_memory(graph: Graph, alignment: int = 4, allow_inplace: bool = True) -> MemoryPlan:
    parent: dict[str, str] = {t: t for t in graph.activation_tensors()}

    def root(t: str) -> str:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    end = len(graph.nodes)
    last_use: dict[str, int] = {t: -1 for t in parent}
    for i, n in enumerate(graph.nodes):
        for t in n.inputs:
            if t in last_use:
                last_use[t] = max(last_use[t], i)
    for t in graph.outputs:
        last_use[t] = end

    def group_last_use(r: str) -> int:
        return max(last_use[t] for t in parent if root(t) == r)

    inplace_nodes: list[str] = []
    for i, n in enumerate(graph.nodes):
        opdef = get_op(n.op, n)
        if getattr(opdef, "alias_input", False):
            parent[root(n.outputs[0])] = root(n.inputs[0])
            continue
        if not (allow_inplace and opdef.inplace):
            continue
        out = graph.tensors[n.outputs[0]]
        for t in n.inputs:
            if t not in parent or graph.tensors[t].nbytes != out.nbytes or graph.tensors[t].shape != out.shape:
                continue
            r = root(t)
            if group_last_use(r) == i and t not in graph.outputs:
                parent[root(n.outputs[0])] = r
                inplace_nodes.append(n.name)
                break

    groups: dict[str, list[str]] = {}
    for t in parent:
        groups.setdefault(root(t), []).append(t)
    first_def: dict[str, int] = {t: -1 for t in graph.inputs}
    for i, n in enumerate(graph.nodes):
        for t in n.outputs:
            first_def[t] = i
    buffers = [
        Buffer(ts, max(graph.tensors[t].nbytes for t in ts), min(first_def[t] for t in ts),
               max(max(last_use[t] for t in ts), max(first_def[t] for t in ts)))
        for ts in groups.values()
    ]
    placed: list[Buffer] = []
    for b in sorted(buffers, key=lambda b: (-b.size, b.first)):
        live = sorted((p for p in placed if p.first <= b.last and b.first <= p.last), key=lambda p: p.offset)
        offset = 0
        for p in live:
            if offset + b.size <= p.offset:
                break
            offset = max(offset, _align(p.offset + p.size, alignment))
        b.offset = offset
        placed.append(b)
    offsets = {t: b.offset for b in buffers for t in b.tensors}
    arena = max((b.offset + b.size for b in buffers), default=0)
    naive = sum(_align(graph.tensors[t].nbytes, alignment) for t in parent if graph.producer(t) is None
                or not getattr(get_op(graph.producer(t).op), "alias_input", False))
    return MemoryPlan(offsets, buffers, _align(arena, alignment), naive, inplace_nodes)
