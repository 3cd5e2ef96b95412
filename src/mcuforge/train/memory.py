"""Static memory plan of a training step.

One timeline: forward steps 0..N-1 (node i), the loss at step N, then the backward of
node i at step 2N - i. Buffers:

* activations (int8, the arena the inference code also uses): alive from the node that
  writes them to their last forward reader, extended to the backward step that reads them
  when the backward needs them (kept: a conv/fc's input for its weight gradient, outputs
  whose clamp masks the error, max-pool inputs for the argmax);
* errors (int8, same arena): from the step that completes them to their producer's backward;
* gradient accumulators (int32, their own arena, so that int32 and int8 accesses never alias):
  alive during the one step that fills and normalizes them.

Placement is greedy by decreasing size (as the inference planner), each buffer at the lowest
offset that overlaps no placed buffer alive at the same time. The naive layout gives every
buffer its own memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..codegen.planner import MemoryPlan
from ..ir.graph import Graph
from ..ops import get_op
from .program import Program

ALIGN = 4


def _align(x: int) -> int:
    return (x + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Buf:
    name: str
    kind: str  # activation | kept | error | accumulator | probabilities
    size: int
    first: int
    last: int
    tensors: list[str] = field(default_factory=list)
    offset: int = -1


def place(bufs: list[Buf]) -> int:
    placed: list[Buf] = []
    for b in sorted(bufs, key=lambda b: (-b.size, b.first, b.name)):
        live = sorted((p for p in placed if p.first <= b.last and b.first <= p.last), key=lambda p: p.offset)
        offset = 0
        for p in live:
            if offset + b.size <= p.offset:
                break
            offset = max(offset, _align(p.offset + p.size))
        b.offset = offset
        placed.append(b)
    return _align(max((b.offset + b.size for b in bufs), default=0))


@dataclass
class TrainPlan:
    plan: MemoryPlan  # the arena (activations + errors), as the inference emitters read it
    acc_size: int  # the int32 accumulator arena, bytes
    bytes8: list[Buf]  # int8 arena buffers
    bytes32: list[Buf]  # accumulator buffers
    err_offset: dict[str, int]  # error buffer of each tensor (key: tensor, or "tensor@i" for contribution i)
    acc_offset: dict[str, int]  # accumulator (bytes into the int32 arena) by key
    prob_offset: int | None
    kept: list[str]
    naive_bytes: int
    inference_arena: int

    def summary(self) -> dict:
        kinds: dict[str, int] = {}
        for b in self.bytes8 + self.bytes32:
            kinds[b.kind] = kinds.get(b.kind, 0) + b.size
        return {"arena_bytes": self.plan.arena_size, "accumulator_bytes": self.acc_size,
                "buffer_bytes_by_kind": kinds, "kept_activations": self.kept,
                "naive_bytes": self.naive_bytes, "inference_arena_bytes": self.inference_arena}


def _direct(prog: Program, node: str) -> bool:
    """Contributions written straight as int8 (no int32 accumulator): reshape, add, non-overlapping pools."""
    b = next(b for b in prog.backward if b.node == node)
    return b.op in ("reshape", "add") or b.direct


def plan_training(graph: Graph, prog: Program) -> TrainPlan:
    from ..codegen.planner import plan_memory

    n_nodes = len(graph.nodes)
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    loss_step = n_nodes

    def bstep(node: str) -> int:
        return 2 * n_nodes - index[node]

    # activation groups (reshape outputs alias their input)
    parent = {t: t for t in graph.activation_tensors()}

    def root(t: str) -> str:
        while parent[t] != t:
            t = parent[t]
        return t

    for n in graph.nodes:
        if getattr(get_op(n.op, n), "alias_input", False):
            parent[root(n.outputs[0])] = root(n.inputs[0])
    first = {t: -1 for t in graph.inputs}
    last = {t: -1 for t in parent}
    for i, n in enumerate(graph.nodes):
        for t in n.outputs:
            first[t] = i
        for t in n.inputs:
            if t in last:
                last[t] = max(last[t], i)
    for t in graph.outputs:
        last[t] = max(last[t], loss_step)
    last[prog.logits] = max(last[prog.logits], loss_step)
    kept: set[str] = set()
    for bn in prog.backward:
        node = graph.node(bn.node)
        uses = []
        if bn.mask is not None:
            uses.append(bn.out)
        if bn.layer is not None:
            uses.append(node.inputs[0])
        if bn.op == "max_pool2d" and bn.contribs:
            uses.append(node.inputs[0])
        for t in uses:
            kept.add(t)
            last[t] = max(last[t], bstep(bn.node))
    groups: dict[str, list[str]] = {}
    for t in parent:
        groups.setdefault(root(t), []).append(t)
    bufs8 = [Buf("act:" + r, "kept" if any(t in kept for t in ts) else "activation",
                 max(graph.tensors[t].nbytes for t in ts), min(first[t] for t in ts),
                 max(max(last[t], first[t]) for t in ts), ts) for r, ts in groups.items()]
    bufs32: list[Buf] = []

    # errors and accumulators
    err_key: dict[str, Buf] = {}
    acc_key: dict[str, Buf] = {}
    run_step = {bn.node: bstep(bn.node) for bn in prog.backward}
    lt = prog.errors[prog.logits]
    err_key[prog.logits] = Buf("err:" + prog.logits, "error", lt.size, loss_step, 0)
    acc_key[prog.logits] = Buf("acc:" + prog.logits, "accumulator", 4 * lt.size, loss_step, loss_step)
    prob = None
    if prog.config.loss == "ce" and not prog.softmax_final:
        prob = Buf("prob", "probabilities", lt.size, loss_step, loss_step)
        bufs8.append(prob)
    for name, et in prog.errors.items():
        prod = graph.producer(name)
        use = run_step[prod.name]
        if name == prog.logits:
            err_key[name].last = use
            continue
        steps = [run_step[c.node] for c in et.contribs]
        if et.multi:
            for i, (c, s) in enumerate(zip(et.contribs, steps)):
                err_key[f"{name}@{i}"] = Buf(f"err:{name}@{i}", "error", et.size, s, max(steps))
                if not _direct(prog, c.node):
                    acc_key[f"{name}@{i}"] = Buf(f"acc:{name}@{i}", "accumulator", 4 * et.size, s, s)
            acc_key[name] = Buf(f"acc:{name}", "accumulator", 4 * et.size, max(steps), max(steps))
            err_key[name] = Buf("err:" + name, "error", et.size, max(steps), use)
        else:
            err_key[name] = Buf("err:" + name, "error", et.size, steps[0], use)
            if not _direct(prog, et.contribs[0].node):
                acc_key[name] = Buf("acc:" + name, "accumulator", 4 * et.size, steps[0], steps[0])
    bufs8 += list(err_key.values())
    bufs32 += list(acc_key.values())
    arena = place(bufs8)
    acc_size = place(bufs32)
    offsets = {t: b.offset for b in bufs8 if b.name.startswith("act:") for t in b.tensors}
    naive = sum(_align(b.size) for b in bufs8 + bufs32)
    inference = plan_memory(graph).arena_size
    plan = MemoryPlan(offsets, [], arena, naive, [])
    return TrainPlan(plan, acc_size, bufs8, bufs32, {k: b.offset for k, b in err_key.items()},
                     {k: b.offset for k, b in acc_key.items()}, prob.offset if prob else None,
                     sorted(kept), naive, inference)
