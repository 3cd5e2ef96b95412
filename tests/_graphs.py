"""Helpers shared by the bit-exactness, planner and IR tests.

* ``Builder`` -- build small float graphs (output shapes from the ops' shape rules).
* ``quantize_random`` -- PTQ with random calibration data whose scale varies by
  orders of magnitude (one scale per graph input).
* ``perturb_quant`` -- overwrite activation scales / zero points with odd values
  while keeping the graph valid (shared quantization, fixed softmax output).
* ``random_graph`` -- a random multi-op float graph (NHWC) from a numpy seed.
* ``check_bit_exact`` -- integer reference == generated C under ASan/UBSan.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np

from mcuforge import reference
from mcuforge.codegen import generate
from mcuforge.ir import Graph, Node, QuantParams, Tensor
from mcuforge.ops import get_op
from mcuforge.quant.ptq import quantize
from mcuforge.targets.host import run_host

FIXED_OUTPUT_QUANT = {"softmax", "sigmoid", "tanh"}


class Builder:
    """Adds nodes to a float graph; output shapes come from the op's shape rule."""

    def __init__(self, name: str = "prop") -> None:
        self.g = Graph(name)

    def input(self, shape, name: str = "x") -> str:
        name = self.g.unique_name(name)
        self.g.add_tensor(Tensor(name, tuple(shape)))
        self.g.inputs.append(name)
        return name

    def const(self, name: str, data) -> str:
        return self.g.add_const(name, np.asarray(data, np.float32))

    def op(self, op: str, inputs, **attrs) -> str:
        name = self.g.unique_name(op)
        node = Node(name, op, list(inputs), [], attrs)
        out = self.g.unique_name(f"{name}_out")
        node.outputs = [out]
        shape = get_op(op).infer(node, self.g)[0]
        self.g.add_tensor(Tensor(out, tuple(shape)))
        self.g.nodes.append(node)
        return out

    def finish(self, *outputs: str) -> Graph:
        self.g.outputs = list(outputs)
        self.g.validate()
        return self.g


def calibration_data(graph: Graph, rng: np.random.Generator, log_scales=None, offsets=None,
                     n: int = 16) -> list[np.ndarray]:
    """Normal data per input, scaled by 10**log_scale and shifted by offset * scale."""
    data = []
    for i, name in enumerate(graph.inputs):
        shape = graph.tensors[name].shape[1:]
        ls = rng.uniform(-3, 3) if log_scales is None else log_scales[i % len(log_scales)]
        off = rng.uniform(-1, 1) if offsets is None else offsets[i % len(offsets)]
        scale = 10.0 ** ls
        data.append((rng.normal(size=(n,) + shape) * scale + off * scale).astype(np.float32))
    return data


def quantize_random(graph: Graph, rng: np.random.Generator, log_scales=None, offsets=None,
                    method: str | None = None, per_channel_dense: bool = True) -> Graph:
    calib = calibration_data(graph, rng, log_scales, offsets)
    method = method or str(rng.choice(["minmax", "percentile", "mse"]))
    return quantize(graph, calib, method=method, per_channel_dense=per_channel_dense)


def _first_activation_input(q: Graph, node: Node) -> str | None:
    for t in node.inputs:
        if t and not q.tensors[t].is_const:
            return t
    return None


def perturb_quant(q: Graph, rng: np.random.Generator, prob: float = 0.5) -> Graph:
    """Give some activations odd scales / zero points; keep shared and fixed quantizations valid.

    Modes: a random factor in 2^[-3, 3], an exact power of two, a new zero point only,
    or the scale (and zero point) of the producer's input (multiplier exactly 1).
    """
    producer = {t: n for n in q.nodes for t in n.outputs}
    for name in q.activation_tensors():
        node = producer.get(name)
        if node is not None:
            opdef = get_op(node.op)
            if opdef.output_shares_input_quant or node.op in FIXED_OUTPUT_QUANT:
                continue
        if rng.random() >= prob:
            continue
        t = q.tensors[name]
        s, zp = t.quant.s, t.quant.zp
        mode = rng.integers(0, 4)
        if mode == 0:
            s = s * 2.0 ** rng.uniform(-3, 3)
            zp = int(np.clip(zp + rng.integers(-40, 41), -128, 127))
        elif mode == 1:
            s = 2.0 ** round(np.log2(s) + rng.integers(-2, 3))
        elif mode == 2:
            zp = int(rng.integers(-128, 128))
        else:
            src = _first_activation_input(q, node) if node is not None else None
            if src is not None:
                s, zp = q.tensors[src].quant.s, q.tensors[src].quant.zp
                if rng.random() < 0.5:
                    zp = int(rng.integers(-128, 128))
        t.quant = QuantParams.per_tensor(np.float32(s), zp)
    # Re-establish quantizations that ops require to be shared with their input.
    for node in q.nodes:
        if get_op(node.op).output_shares_input_quant:
            q.tensors[node.outputs[0]].quant = copy.deepcopy(q.tensors[node.inputs[0]].quant)
    q.validate()
    return q


def random_int8_inputs(q: Graph, rng: np.random.Generator, n: int = 32) -> list[np.ndarray]:
    """Uniform over -128..127; sample 0 all -128, sample 1 all 127, sample 2 all zero point."""
    xs = []
    for name in q.inputs:
        t = q.tensors[name]
        x = rng.integers(-128, 128, size=(n,) + t.shape[1:], dtype=np.int64).astype(np.int8)
        x[0], x[1], x[2] = -128, 127, t.quant.zp
        xs.append(x)
    return xs


def check_bit_exact(q: Graph, rng: np.random.Generator, n: int = 32, xs=None) -> list[np.ndarray]:
    """Integer reference == C (built with -fsanitize=address,undefined) bit for bit."""
    xs = random_int8_inputs(q, rng, n) if xs is None else xs
    want = reference.run(q, xs, "int")
    with tempfile.TemporaryDirectory() as d:
        lib = Path(d) / "lib"
        generate(q, lib)
        got = run_host(lib, xs, sanitize=True)
    assert len(got) == len(want) == len(q.outputs)
    for name, w, c in zip(q.outputs, want, got):
        assert w.dtype == np.int8 and c.dtype == np.int8, (name, w.dtype, c.dtype)
        assert w.shape == c.shape, (name, w.shape, c.shape)
        bad = np.argwhere(w != c)
        if bad.size:
            idx = tuple(bad[0])
            raise AssertionError(
                f"output '{name}': {len(bad)} of {w.size} values differ; first at {idx}: "
                f"reference {w[idx]} vs C {c[idx]}\n{q.summary()}\n"
                + "\n".join(f"  {t}: {q.tensors[t].quant.to_json()}" for t in q.activation_tensors()))
    return want


# --- random multi-op graphs ---------------------------------------------------------

def random_graph(seed: int, max_nodes: int = 10) -> Graph:
    """A random NHWC float graph mixing every op family; one or two outputs."""
    rng = np.random.default_rng(seed)
    b = Builder(f"rand{seed}")
    h, w = int(rng.integers(1, 9)), int(rng.integers(1, 9))
    c = int(rng.integers(1, 9))
    pool = [b.input((1, h, w, c))]
    if rng.random() < 0.3:
        pool.append(b.input((1, h, w, c), "x2"))
    shape = lambda t: b.g.tensors[t].shape  # noqa: E731
    n_nodes = int(rng.integers(1, max_nodes + 1))
    for _ in range(n_nodes):
        x = pool[int(rng.integers(len(pool)))]
        s = shape(x)
        kind = rng.choice(["conv", "dwconv", "pool", "unary", "binary", "binconst", "concat",
                           "reshape", "transpose", "chain"])
        if len(s) != 4 and kind in ("conv", "dwconv", "pool", "concat", "transpose"):
            kind = "unary"
        if kind == "conv":
            o = int(rng.integers(1, 9))
            k = int(rng.choice([1, 3]))
            p = k // 2
            y = b.op("conv2d", [x, b.const("w", rng.normal(size=(o, k, k, s[3]))),
                                b.const("b", rng.normal(size=o))],
                     stride=[1, 1], dilation=[1, 1], pads=[p, p, p, p], groups=1,
                     act_min=0.0 if rng.random() < 0.5 else None)
        elif kind == "dwconv":
            y = b.op("conv2d", [x, b.const("w", rng.normal(size=(s[3], 3, 3, 1)))],
                     stride=[1, 1], dilation=[1, 1], pads=[1, 1, 1, 1], groups=s[3])
        elif kind == "pool":
            op = str(rng.choice(["avg_pool2d", "max_pool2d"]))
            k = [min(2, s[1]), min(2, s[2])]
            y = b.op(op, [x], kernel=k, stride=k, pads=[0, 0, 0, 0])
        elif kind == "unary":
            op = str(rng.choice(["sigmoid", "tanh", "leaky_relu", "clamp"]))
            attrs = {"leaky_relu": {"alpha": 0.1}, "clamp": {"min": 0.0, "max": 6.0}}.get(op, {})
            y = b.op(op, [x], **attrs)
        elif kind == "binary":
            same = [t for t in pool if shape(t) == s]
            other = same[int(rng.integers(len(same)))]
            y = b.op(str(rng.choice(["add", "mul"])), [x, other] if rng.random() < 0.5 else [other, x])
        elif kind == "binconst":
            y = b.op(str(rng.choice(["add", "mul"])), [x, b.const("k", rng.normal(size=s[-1:]))])
        elif kind == "concat":
            same = [t for t in pool if len(shape(t)) == 4 and shape(t)[:3] == s[:3]]
            other = same[int(rng.integers(len(same)))]
            y = b.op("concat", [x, other], axis=3)
        elif kind == "reshape":
            target = [1, s[2], s[1], s[3]] if len(s) == 4 else [1, int(np.prod(s[1:]))]
            y = b.op("reshape", [x], shape=target)
        elif kind == "transpose":
            y = b.op("transpose", [x], perm=[0, 2, 1, 3])
        else:  # a chain of in-place candidates
            y = b.op("leaky_relu", [x], alpha=0.2)
            y = b.op("add", [y, b.const("k", rng.normal(size=s[-1:]))])
            y = b.op("tanh", [y])
        pool.append(y)
    outs = [pool[-1]]
    if len(pool) > 2 and rng.random() < 0.5:
        extra = pool[int(rng.integers(1, len(pool) - 1))]
        if extra not in outs and extra not in b.g.inputs:
            outs.append(extra)
    b.g.outputs = outs
    b.g.prune()
    b.g.validate()
    return b.g
