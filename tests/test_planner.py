"""The static memory planner: placement invariants on random graphs, aliasing and in-place
rules as documented in mcuforge.codegen.planner, and an arena simulation that runs the
integer reference through the planned offsets (a bad overlap corrupts a live tensor)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcuforge import reference
from mcuforge.codegen import plan_memory
from mcuforge.ops import get_op

from _graphs import Builder, quantize_random, random_graph

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def quantized_random_graph(seed: int):
    g = random_graph(seed, max_nodes=12)
    return quantize_random(g, np.random.default_rng(seed), log_scales=[0.0])


def lifetimes(g):
    """Per activation tensor: (step that writes it, last step that reads it); inputs -1, outputs end."""
    end = len(g.nodes)
    first = {t: -1 for t in g.inputs}
    last = {t: -1 for t in g.inputs}
    for i, n in enumerate(g.nodes):
        for t in n.outputs:
            first[t], last[t] = i, i
        for t in n.inputs:
            if t in first:
                last[t] = max(last[t], i)
    for t in g.outputs:
        last[t] = end
    return first, last


def check_plan_invariants(g, plan, alignment):
    acts = g.activation_tensors()
    first, last = lifetimes(g)
    # Every activation is in exactly one buffer, at that buffer's offset, and fits it.
    where = {}
    for bi, b in enumerate(plan.buffers):
        for t in b.tensors:
            assert t not in where, f"tensor {t} in two buffers"
            where[t] = bi
            assert plan.offsets[t] == b.offset
            assert g.tensors[t].nbytes <= b.size
        assert b.size == max(g.tensors[t].nbytes for t in b.tensors)
        # Lifetime of a buffer: first write to last read of any of its tensors.
        assert b.first == min(first[t] for t in b.tensors)
        assert b.last == max(max(last[t] for t in b.tensors), max(first[t] for t in b.tensors))
    assert set(where) == set(acts) == set(plan.offsets)
    # Alignment and bounds.
    for b in plan.buffers:
        assert b.offset >= 0 and b.offset % alignment == 0, (b.offset, alignment)
        assert b.offset + b.size <= plan.arena_size
    assert plan.arena_size % alignment == 0
    # No two buffers alive at the same step share a byte, except a listed overlap's input and
    # output buffers at the step of its node (the input's last, the output's first).
    step = {n.name: i for i, n in enumerate(g.nodes)}
    handover = {(where[o.input], where[o.output]): step[o.node] for o in plan.overlaps}
    for i, a in enumerate(plan.buffers):
        for j, b in enumerate(plan.buffers):
            if j <= i or not (a.first <= b.last and b.first <= a.last):
                continue
            if a.offset + a.size <= b.offset or b.offset + b.size <= a.offset:
                continue
            s = handover.get((i, j), handover.get((j, i)))
            assert s is not None and max(a.first, b.first) == s == min(a.last, b.last), \
                f"live buffers overlap: {a} and {b}"
    for o in plan.overlaps:
        assert plan.offsets[o.output] - plan.offsets[o.input] == o.shift <= 0
    # The arena holds the largest set of simultaneously live buffers (less what overlaps share
    # at their step), and never exceeds the unplanned total (every activation but reshape
    # aliases in its own buffer).
    steps = range(-1, len(g.nodes) + 1)
    peak = max(sum(b.size for b in plan.buffers if b.first <= s <= b.last)
               - sum(o.shared for o in plan.overlaps if step[o.node] == s) for s in steps)
    assert plan.arena_size >= peak
    unplanned = sum(-(-g.tensors[t].nbytes // alignment) * alignment for t in acts
                    if g.producer(t) is None or g.producer(t).op != "reshape")
    assert plan.naive_size == unplanned
    assert plan.arena_size <= plan.naive_size


def check_sharing_rules(g, plan, allow_inplace):
    """Reshape outputs alias their input; in-place exactly where the documented rule allows."""
    first, last = lifetimes(g)
    buf_of = {t: i for i, b in enumerate(plan.buffers) for t in b.tensors}
    for i, n in enumerate(g.nodes):
        out = n.outputs[0]
        if n.op == "reshape":
            assert plan.offsets[out] == plan.offsets[n.inputs[0]]
            assert buf_of[out] == buf_of[n.inputs[0]]
            continue
        if not get_op(n.op).inplace:
            # An op that is not in place never shares its output with an input buffer.
            for t in n.inputs:
                if t in buf_of:
                    assert buf_of[t] != buf_of[out], f"{n.name} ({n.op}) shares a buffer with its input"
            continue
        # The documented rule: an input of the same shape whose buffer (the tensors sharing it
        # that exist before this step) is last read by this node and is not a graph output.
        candidates = []
        for t in n.inputs:
            if t not in buf_of or g.tensors[t].shape != g.tensors[out].shape:
                continue
            group = [u for u in plan.buffers[buf_of[t]].tensors if first[u] < i]
            if max(last[u] for u in group) == i and t not in g.outputs:
                candidates.append(t)
        if allow_inplace and candidates:
            assert n.name in plan.inplace, f"{n.name} ({n.op}) could run in place on {candidates}"
        if n.name in plan.inplace:
            assert allow_inplace
            shared = [t for t in n.inputs if t in buf_of and buf_of[t] == buf_of[out]]
            assert shared and shared[0] in candidates, (n.name, shared, candidates)
        else:
            assert all(buf_of.get(t) != buf_of[out] for t in n.inputs)


def check_overlap_rules(g, plan, alignment, allow_overlap, take_all):
    """Overlaps only where documented: the node is the last reader of its input's buffer, the
    shift is its op's; with choose_overlaps=False every such node overlaps."""
    step = {n.name: i for i, n in enumerate(g.nodes)}
    buf_of = {t: b for b in plan.buffers for t in b.tensors}
    eligible = {}
    for i, n in enumerate(g.nodes):
        x = n.inputs[0] if n.inputs else None
        if x in buf_of and buf_of[x].last == i and n.name not in plan.inplace and n.op != "reshape":
            s = get_op(n.op).overlap_shift(n, g, alignment)
            if s is not None:
                eligible[n.name] = s
    assert allow_overlap or plan.overlaps == []
    for o in plan.overlaps:
        n = g.nodes[step[o.node]]
        assert (o.input, o.output) == (n.inputs[0], n.outputs[0])
        assert o.input not in g.outputs and o.node in eligible and o.shift == eligible[o.node] <= 0
        lo = max(plan.offsets[o.input], plan.offsets[o.output])
        hi = min(plan.offsets[o.input] + g.tensors[o.input].nbytes, plan.offsets[o.output] + g.tensors[o.output].nbytes)
        assert o.shared == hi - lo > 0
    if allow_overlap and take_all:
        assert [o.node for o in plan.overlaps] == [n.name for n in g.nodes if n.name in eligible]


def simulate(g, plan, x_int8):
    """Run one sample through an arena laid out by the plan; return the outputs read from it."""
    arena = np.zeros(max(plan.arena_size, 1), np.int8)

    def view(t):
        size = g.tensors[t].nbytes
        off = plan.offsets[t]
        return arena[off:off + size].reshape(g.tensors[t].shape)

    for t, x in zip(g.inputs, x_int8):
        view(t)[...] = x
    first, last = lifetimes(g)
    for i, n in enumerate(g.nodes):
        xs = [g.tensors[t].data if g.tensors[t].is_const else view(t).copy() for t in n.inputs]
        # A tensor that stays live across this step must not be overwritten by it.
        live = {t: view(t).copy() for t in plan.offsets if first[t] < i < last[t]}
        ys = get_op(n.op).run_int(n, g, xs)
        for t, y in zip(n.outputs, ys):
            if n.op == "reshape":
                assert np.array_equal(view(t), y)  # alias: the bytes are already there
            view(t)[...] = y
        for t, before in live.items():
            assert np.array_equal(view(t), before), f"step {i} ({n.name}) clobbered live tensor {t}"
    return [view(t).copy() for t in g.outputs]


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), alignment=st.sampled_from([1, 2, 4, 8, 16]),
       allow_inplace=st.booleans(), allow_overlap=st.booleans(), take_all=st.booleans())
def test_random_graph_plans(seed, alignment, allow_inplace, allow_overlap, take_all):
    g = quantized_random_graph(seed)
    plan = plan_memory(g, alignment=alignment, allow_inplace=allow_inplace, allow_overlap=allow_overlap,
                       choose_overlaps=not take_all)
    check_plan_invariants(g, plan, alignment)
    check_sharing_rules(g, plan, allow_inplace)
    check_overlap_rules(g, plan, alignment, allow_overlap, take_all)
    if not allow_inplace:
        assert plan.inplace == []
    if allow_overlap and not take_all:  # overlaps are taken only where they make the arena smaller
        without = plan_memory(g, alignment=alignment, allow_inplace=allow_inplace, allow_overlap=False)
        assert plan.arena_size <= without.arena_size
        assert plan.overlaps == [] or plan.arena_size < without.arena_size


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), alignment=st.sampled_from([1, 4, 16]))
def test_arena_simulation_matches_reference(seed, alignment):
    g = quantized_random_graph(seed)
    plan = plan_memory(g, alignment=alignment)
    rng = np.random.default_rng(seed)
    xs = [rng.integers(-128, 128, size=(3,) + g.tensors[t].shape[1:]).astype(np.int8) for t in g.inputs]
    want = reference.run(g, xs, "int")
    for k in range(3):
        got = simulate(g, plan, [x[k:k + 1] for x in xs])
        for w, o in zip(want, got):
            assert np.array_equal(w[k:k + 1], o)


# --- documented sharing on hand-made graphs ----------------------------------------------------

def _quantized(b, *outs):
    return quantize_random(b.finish(*outs), np.random.default_rng(0), log_scales=[0.0])


def _conv(b, x, o, rng=np.random.default_rng(3)):
    c = b.g.tensors[x].shape[3]
    return b.op("conv2d", [x, b.const("w", rng.normal(size=(o, 3, 3, c)))], stride=[1, 1],
                dilation=[1, 1], pads=[1, 1, 1, 1], groups=1)


def test_elementwise_chain_runs_in_place():
    b = Builder()
    x = b.input((1, 8, 8, 4))
    y = _conv(b, x, 8)
    s = b.op("sigmoid", [y])
    t = b.op("tanh", [s])
    lr = b.op("leaky_relu", [t], alpha=0.1)
    out = b.op("add", [lr, b.const("k", np.arange(8.0))])
    q = _quantized(b, out)
    plan = plan_memory(q, allow_overlap=False)  # the conv could also overlap x (tests/test_overlap.py)
    assert plan.inplace == [q.producer(t).name for t in (s, t, lr, out)]
    assert len({plan.offsets[n] for n in (y, s, t, lr, out)}) == 1
    check_plan_invariants(q, plan, 4)
    size = 8 * 8 * 8
    assert plan.arena_size == 8 * 8 * 4 + size  # the input and one shared buffer
    no_inplace = plan_memory(q, allow_inplace=False, allow_overlap=False)
    assert no_inplace.inplace == [] and no_inplace.arena_size > plan.arena_size
    assert plan.arena_size < plan.naive_size


def test_no_in_place_on_a_tensor_read_later_or_a_graph_output():
    b = Builder()
    x = b.input((1, 4, 4, 3))
    y = _conv(b, x, 3)
    s = b.op("sigmoid", [y])          # y is read again by the add: not in place
    a = b.op("add", [y, s])           # both inputs die here: in place
    m = b.op("tanh", [a])             # a is a graph output: not in place
    q = _quantized(b, a, m)
    plan = plan_memory(q)
    names = {t: q.producer(t).name for t in (s, a, m)}
    assert names[s] not in plan.inplace
    assert names[a] in plan.inplace
    assert names[m] not in plan.inplace
    assert plan.offsets[a] in (plan.offsets[y], plan.offsets[s])
    assert plan.offsets[m] != plan.offsets[a]
    check_plan_invariants(q, plan, 4)


def test_broadcast_operand_is_not_reused():
    b = Builder()
    small = b.input((1, 1, 1, 6), "small")
    big = b.input((1, 5, 5, 6), "big")
    y = b.op("mul", [small, big])
    q = _quantized(b, y)
    plan = plan_memory(q)
    assert plan.inplace == [q.producer(y).name]
    assert plan.offsets[y] == plan.offsets[big] != plan.offsets[small]
    check_plan_invariants(q, plan, 4)


def test_graph_input_may_be_overwritten_in_place():
    b = Builder()
    x = b.input((1, 10))
    y = b.op("leaky_relu", [x], alpha=0.5)
    q = _quantized(b, y)
    plan = plan_memory(q)
    assert plan.inplace == [q.producer(y).name] and plan.offsets[x] == plan.offsets[y]
    assert plan.arena_size == 12 and plan.naive_size == 24


def test_reshape_aliases_and_is_free():
    b = Builder()
    x = b.input((1, 4, 4, 2))
    y = _conv(b, x, 4)
    r1 = b.op("reshape", [y], shape=[1, 16, 4])
    r2 = b.op("reshape", [r1], shape=[1, 64])
    f = b.op("fully_connected", [r2, b.const("w", np.ones((3, 64)))])
    q = _quantized(b, f)
    plan = plan_memory(q)
    assert plan.offsets[y] == plan.offsets[r1] == plan.offsets[r2]
    assert len({id(bf) for bf in plan.buffers if y in bf.tensors or r2 in bf.tensors}) == 1
    # The alias extends the conv output's life up to the fc: the fc output is placed elsewhere.
    assert plan.offsets[f] + 3 <= plan.offsets[y] or plan.offsets[y] + 64 <= plan.offsets[f]
    check_plan_invariants(q, plan, 4)
    assert plan.naive_size == 32 + 64 + 4  # reshape outputs are not counted twice


def test_linear_chain_ping_pongs():
    b = Builder()
    x = b.input((1, 6, 6, 4))
    y = x
    for _ in range(5):
        y = _conv(b, y, 4)
    q = _quantized(b, y)
    plan = plan_memory(q)
    size = 6 * 6 * 4
    assert plan.arena_size == 2 * size
    assert plan.naive_size == 6 * size
    # Each conv could start (W + 2) C = 32 bytes below its dying input, but the chain would drift
    # to 144 + 5 x 32 bytes: ping-pong is smaller, so no overlap is taken.
    assert plan.overlaps == []
    assert plan_memory(q, choose_overlaps=False).arena_size == size + 5 * 32
    check_plan_invariants(q, plan, 4)


@pytest.mark.parametrize("alignment", [1, 8, 32])
def test_odd_sizes_are_aligned(alignment):
    b = Builder()
    x = b.input((1, 3, 1, 1))
    y = b.op("conv2d", [x, b.const("w", np.ones((5, 1, 1, 1)))], stride=[1, 1], dilation=[1, 1],
             pads=[0, 0, 0, 0], groups=1)
    z = b.op("concat", [y, x], axis=3)
    q = _quantized(b, z)
    plan = plan_memory(q, alignment=alignment)
    check_plan_invariants(q, plan, alignment)
    assert all(off % alignment == 0 for off in plan.offsets.values())


def test_dead_output_still_gets_its_own_live_range():
    """A node output nobody reads lives for the step that writes it."""
    b = Builder()
    x = b.input((1, 4, 4, 2))
    dead = _conv(b, x, 2)
    y = b.op("sigmoid", [x])
    y = b.op("tanh", [y])
    q = _quantized(b, y)
    plan = plan_memory(q)
    buf = next(bf for bf in plan.buffers if dead in bf.tensors)
    assert buf.first == buf.last == 0
    assert plan.offsets[dead] != plan.offsets[x]  # x is still needed when the conv writes
    check_plan_invariants(q, plan, 4)
