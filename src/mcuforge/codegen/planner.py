"""Static memory planner: every activation tensor gets an offset in one arena.

1. Buffers: a reshape output shares its input's buffer; an elementwise op
   (``OpDef.inplace``) writes into an input buffer of the same size whose
   last reader it is. Shared tensors form one buffer (union-find).
2. Lifetimes: a buffer lives from the step that first writes it (graph inputs:
   before step 0) to the last step that reads it (graph outputs: to the end).
3. Overlaps (tensor overlapping, as TinyEngine): where a node is the last reader of
   its input's buffer (so the input is no graph output and nothing reads it later) and
   its op allows it (``OpDef.overlap_shift``: conv2d, pools), the output's buffer may
   start s <= 0 bytes from the input's and share bytes with it, s being safe for every
   kernel that can run the node (ops/overlap.py). Buffers linked so form a chain with
   fixed distances; chains can drift downwards, so which overlaps to take is chosen by
   the arena they give: the better of all and none, then each overlap switched on or
   off while that makes the arena smaller.
4. Placement: greedy by decreasing size (as TFLM's greedy planner; a chain counts
   with its whole span), each buffer (chain) at the lowest aligned offset where it
   overlaps no placed buffer alive at the same time; the buffers of one chain are
   checked one by one, each with its own lifetime. The arena size is the highest end offset.
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
class Overlap:
    node: str
    input: str
    output: str
    shift: int   # output offset - input offset (<= 0)
    shared: int  # bytes of the input that the output may overwrite


@dataclass
class MemoryPlan:
    offsets: dict[str, int]  # tensor -> arena offset
    buffers: list[Buffer] = field(default_factory=list)
    arena_size: int = 0
    naive_size: int = 0  # every activation in its own buffer: what planning saves against
    inplace: list[str] = field(default_factory=list)  # nodes that run in place
    overlaps: list[Overlap] = field(default_factory=list)  # nodes whose output overlaps their dying input


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def plan_memory(graph: Graph, alignment: int = 4, allow_inplace: bool = True, allow_overlap: bool = True,
                choose_overlaps: bool = True) -> MemoryPlan:
    """choose_overlaps=False takes every allowed overlap (the most overlapping layout, for tests)."""
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
    index = {t: k for k, b in enumerate(buffers) for t in b.tensors}

    # Overlap candidates: the node is the last reader of its input's buffer (which therefore is no
    # graph output); the output starts a new buffer here (not an alias or in-place node).
    candidates: list[tuple[int, int, Overlap]] = []  # (input buffer, output buffer, overlap)
    for i, n in enumerate(graph.nodes if allow_overlap else []):
        if not n.inputs or n.inputs[0] not in index or n.name in inplace_nodes:
            continue
        x, y = n.inputs[0], n.outputs[0]
        bx, by = index[x], index[y]
        if bx == by or buffers[bx].last != i or buffers[by].first != i:
            continue
        s = get_op(n.op, n).overlap_shift(n, graph, alignment)
        if s is None:
            continue
        nx, ny = graph.tensors[x].nbytes, graph.tensors[y].nbytes
        candidates.append((bx, by, Overlap(n.name, x, y, s, max(0, min(nx, s + ny) - max(0, s)))))

    def place(chosen: list[tuple[int, int, Overlap]]) -> tuple[int, list[int]]:
        """Arena size and buffer offsets with the chosen overlaps."""
        nxt = {bx: (by, o.shift) for bx, by, o in chosen}
        has_prev = {by for _, by, _ in chosen}
        chains = []  # (span, first step, [(buffer, offset in the chain)])
        for k in range(len(buffers)):
            if k in has_prev:
                continue
            members, rel = [(k, 0)], 0
            while members[-1][0] in nxt:
                b, s = nxt[members[-1][0]]
                rel += s
                members.append((b, rel))
            low = min(r for _, r in members)
            members = [(b, r - low) for b, r in members]
            span = max(r + buffers[b].size for b, r in members)
            chains.append((span, min(buffers[b].first for b, _ in members), members))
        offsets = [-1] * len(buffers)
        placed: list[int] = []
        for _, _, members in sorted(chains, key=lambda c: (-c[0], c[1])):
            # chain offsets X where a member would overlap a placed, simultaneously live buffer p: a < X < b
            forbidden = []
            for b, r in members:
                mb = buffers[b]
                for p in placed:
                    pb = buffers[p]
                    if pb.first <= mb.last and mb.first <= pb.last:
                        forbidden.append((offsets[p] - r - mb.size, offsets[p] + pb.size - r))
            base = 0
            for lo, hi in sorted(forbidden):
                if base <= lo:
                    break
                base = max(base, _align(hi, alignment))
            for b, r in members:
                offsets[b] = base + r
                placed.append(b)
        arena = max((offsets[k] + b.size for k, b in enumerate(buffers)), default=0)
        return _align(arena, alignment), offsets

    chosen: list[tuple[int, int, Overlap]] = []
    if candidates and not choose_overlaps:
        chosen = list(candidates)
    elif candidates:
        best = place([])[0]
        arena_all = place(candidates)[0]
        on = [arena_all < best] * len(candidates)
        best = min(best, arena_all)
        for _ in range(3):  # passes of single switches, while they help
            improved = False
            for k in range(len(candidates)):
                on[k] = not on[k]
                arena = place([c for c, f in zip(candidates, on) if f])[0]
                if arena < best:
                    best, improved = arena, True
                else:
                    on[k] = not on[k]
            if not improved:
                break
        chosen = [c for c, f in zip(candidates, on) if f]
    arena, offsets = place(chosen)
    for b, off in zip(buffers, offsets):
        b.offset = off
    naive = sum(_align(graph.tensors[t].nbytes, alignment) for t in parent if graph.producer(t) is None
                or not getattr(get_op(graph.producer(t).op), "alias_input", False))
    return MemoryPlan({t: b.offset for b in buffers for t in b.tensors}, buffers, arena, naive, inplace_nodes,
                      [o for _, _, o in chosen])
