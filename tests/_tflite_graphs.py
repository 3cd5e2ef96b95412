"""Random int8 graphs that TFLite can express, for the TFLM bit-exactness tests.

``random_tflite_graph(seed)`` builds a float graph of 1..8 ops drawn from every op
family the TFLite importer/exporter handles (conv incl. depthwise/grouped/dilated
with VALID, SAME or odd explicit padding, fully connected, pools, add/mul with
broadcast and constants, softmax, concat, reshape, transpose, pad, mean, quantize,
the TFLM table ops), quantizes it with random calibration data and then perturbs
activation scales and zero points. Unary table ops use table_method 'tflm'.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np

from mcuforge import reference
from mcuforge.codegen import generate
from mcuforge.errors import UnsupportedOpError
from mcuforge.export import to_tflite_bytes
from mcuforge.ir import Graph, Node, QuantParams, Tensor
from mcuforge.ops import get_op
from mcuforge.quant.ptq import quantize
from mcuforge.targets.host import run_host
from mcuforge.tflm import run_tflm

FIXED = {"softmax", "sigmoid", "tanh"}
ACTS = [(None, None), (0.0, None), (0.0, 6.0), (-1.0, 1.0)]


class _B:
    def __init__(self, name):
        self.g = Graph(name)

    def input(self, shape):
        name = self.g.unique_name("x")
        self.g.add_tensor(Tensor(name, tuple(shape)))
        self.g.inputs.append(name)
        return name

    def const(self, name, data):
        return self.g.add_const(name, np.asarray(data, np.float32))

    def op(self, op, inputs, **attrs):
        name = self.g.unique_name(op)
        node = Node(name, op, list(inputs), [], attrs)
        out = self.g.unique_name(f"{name}_out")
        node.outputs = [out]
        shape = get_op(op).infer(node, self.g)[0]
        self.g.add_tensor(Tensor(out, tuple(shape)))
        self.g.nodes.append(node)
        return out

    def shape(self, t):
        return self.g.tensors[t].shape


def _same(size, k, s, d):
    eff = (k - 1) * d + 1
    out = (size + s - 1) // s
    total = max((out - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


def _conv(b, rng, x, kind):
    n, h, w, c = b.shape(x)
    k = [int(rng.integers(1, min(h, 5) + 1)), int(rng.integers(1, min(w, 5) + 1))]
    stride = [int(rng.integers(1, 4)), int(rng.integers(1, 4))]
    dil = [1, 1]
    if rng.random() < 0.2:
        dil = [int(rng.integers(1, 3)), int(rng.integers(1, 3))]
        if (k[0] - 1) * dil[0] + 1 > h or (k[1] - 1) * dil[1] + 1 > w:
            dil = [1, 1]
    mode = rng.choice(["valid", "same", "odd"])
    if mode == "valid":
        pads = [0, 0, 0, 0]
    elif mode == "same":
        pads = list(_same(h, k[0], stride[0], dil[0]) + _same(w, k[1], stride[1], dil[1]))
    else:
        pads = [int(v) for v in rng.integers(0, 3, size=4)]
    if kind == "dw":
        mult = int(rng.integers(1, 3))
        groups, o, cg = c, c * mult, 1
    elif kind == "grouped" and c >= 2:
        divs = [d for d in range(2, c + 1) if c % d == 0]
        groups = int(rng.choice(divs))
        o, cg = groups * int(rng.integers(1, 4)), c // groups
    else:
        groups, o, cg = 1, int(rng.integers(1, 17)), c
    wt = rng.normal(size=(o, k[0], k[1], cg)) * (10.0 ** rng.uniform(-1, 0.5))
    inputs = [x, b.const("w", wt)]
    if rng.random() < 0.85:
        inputs.append(b.const("b", rng.normal(size=o) * 10.0 ** rng.uniform(-1, 1)))
    act = ACTS[int(rng.integers(len(ACTS)))]
    try:
        return b.op("conv2d", inputs, stride=stride, dilation=dil, pads=pads, groups=groups,
                    act_min=act[0], act_max=act[1])
    except Exception:
        b.g.nodes.pop()
        return None


def random_tflite_graph(seed: int, max_nodes: int = 8) -> Graph:
    """A random graph the exporter accepts (draws again, deterministically, on a refusal)."""
    for attempt in range(20):
        q = _random_graph(seed * 1000 + attempt, max_nodes)
        if not _accumulators_fit(q):
            continue
        try:
            to_tflite_bytes(q)
        except UnsupportedOpError:
            continue
        q.name = f"tfl{seed}"
        return q
    raise AssertionError(f"seed {seed}: no exportable graph in 20 draws")


def _accumulators_fit(q: Graph) -> bool:
    """bias + sum((x - zp) w) stays in int32 (C and TFLM accumulate in int32; the reference does not)."""
    for n in q.nodes:
        if n.op in ("conv2d", "fully_connected") and len(n.inputs) > 2 and n.inputs[2]:
            k = int(np.prod(q.tensors[n.inputs[1]].shape[1:]))
            if np.abs(q.tensors[n.inputs[2]].data.astype(np.int64)).max() > 2**31 - 1 - k * 255 * 128:
                return False
    return True


def _random_graph(seed: int, max_nodes: int) -> Graph:
    rng = np.random.default_rng(seed)
    b = _B(f"tfl{seed}")
    h, w, c = int(rng.integers(1, 11)), int(rng.integers(1, 11)), int(rng.integers(1, 9))
    pool = [b.input((1, h, w, c))]
    if rng.random() < 0.15:
        pool.append(b.input((1, h, w, c)))
    for _ in range(int(rng.integers(1, max_nodes + 1))):
        x = pool[int(rng.integers(len(pool)))]
        s = b.shape(x)
        kind = str(rng.choice(["conv", "conv", "dw", "grouped", "fc", "avg", "max", "add", "mul", "addconst",
                               "softmax", "concat", "reshape", "transpose", "pad", "mean", "quantize", "unary"]))
        if len(s) != 4 and kind in ("conv", "dw", "grouped", "avg", "max", "concat", "transpose", "mean"):
            kind = str(rng.choice(["fc", "unary", "softmax", "add", "quantize"]))
        y = None
        if kind in ("conv", "dw", "grouped"):
            y = _conv(b, rng, x, kind)
        elif kind == "fc":
            if len(s) != 2:
                x = b.op("reshape", [x], shape=[1, int(np.prod(s[1:]))])
            k = b.shape(x)[-1]
            o = int(rng.integers(1, 33))
            inputs = [x, b.const("w", rng.normal(size=(o, k)) * 10.0 ** rng.uniform(-1.5, 0))]
            if rng.random() < 0.85:
                inputs.append(b.const("b", rng.normal(size=o)))
            act = ACTS[int(rng.integers(len(ACTS)))]
            y = b.op("fully_connected", inputs, act_min=act[0], act_max=act[1])
        elif kind in ("avg", "max"):
            k = [int(rng.integers(1, min(s[1], 4) + 1)), int(rng.integers(1, min(s[2], 4) + 1))]
            st = [int(rng.integers(1, 4)), int(rng.integers(1, 4))]
            mode = rng.choice(["valid", "same", "include_pad"] if kind == "avg" else ["valid", "same", "odd"])
            if mode == "valid":
                pads = [0, 0, 0, 0]
            elif mode == "same":
                pads = list(_same(s[1], k[0], st[0], 1) + _same(s[2], k[1], st[1], 1))
            else:
                pads = [int(rng.integers(0, k[0])), int(rng.integers(0, k[0])), int(rng.integers(0, k[1])),
                        int(rng.integers(0, k[1]))]
            act = ACTS[int(rng.integers(len(ACTS)))]
            extra = {"count_include_pad": mode == "include_pad"} if kind == "avg" else {}
            try:
                y = b.op("avg_pool2d" if kind == "avg" else "max_pool2d", [x], kernel=k, stride=st, pads=pads,
                         act_min=act[0], act_max=act[1], **extra)
            except Exception:
                b.g.nodes.pop()
        elif kind in ("add", "mul"):
            same = [t for t in pool if b.shape(t) == s]
            other = same[int(rng.integers(len(same)))]
            act = ACTS[int(rng.integers(len(ACTS)))]
            y = b.op(kind, [x, other], act_min=act[0], act_max=act[1])
        elif kind == "addconst":
            shape = (1,) * (len(s) - 1) + (s[-1],) if rng.random() < 0.7 else s
            y = b.op(str(rng.choice(["add", "mul"])), [x, b.const("k", rng.normal(size=shape))])
        elif kind == "softmax":
            y = b.op("softmax", [x], beta=float(rng.choice([1.0, 0.5, 2.0])))
        elif kind == "concat":
            same = [t for t in pool if len(b.shape(t)) == 4 and b.shape(t)[:3] == s[:3]]
            other = same[int(rng.integers(len(same)))]
            axis = 3
            if rng.random() < 0.3:
                same = [t for t in pool if len(b.shape(t)) == 4 and b.shape(t)[0] == 1 and
                        b.shape(t)[2:] == s[2:]]
                other, axis = same[int(rng.integers(len(same)))], 1
            y = b.op("concat", [x, other], axis=axis)
        elif kind == "reshape":
            target = [1, s[2], s[1], s[3]] if len(s) == 4 else [1, int(np.prod(s[1:]))]
            y = b.op("reshape", [x], shape=target)
        elif kind == "transpose":
            perm = [0] + [int(p) + 1 for p in rng.permutation(3)]
            y = b.op("transpose", [x], perm=perm)
        elif kind == "pad":
            pads = [0, 0] + [int(v) for v in rng.integers(0, 3, size=2 * (len(s) - 1))]
            value = 0.0 if rng.random() < 0.7 else float(rng.normal())
            y = b.op("pad", [x], pads=pads, value=value)
        elif kind == "mean":
            axes = [[1, 2], [1], [2], [3], [1, 2, 3]][int(rng.integers(5))]
            y = b.op("mean", [x], axes=axes, keepdims=bool(rng.random() < 0.6))
        elif kind == "quantize":
            y = b.op("quantize", [x])
        else:
            op = str(rng.choice(["sigmoid", "tanh", "relu", "relu6", "leaky_relu"]))
            if op == "relu":
                y = b.op("clamp", [x], min=0.0, max=None, table_method="tflm", tflm_op="RELU")
            elif op == "relu6":
                y = b.op("clamp", [x], min=0.0, max=6.0, table_method="tflm", tflm_op="RELU6")
            elif op == "relu1":
                y = b.op("clamp", [x], min=-1.0, max=1.0, table_method="tflm", tflm_op="RELU_N1_TO_1")
            elif op == "leaky_relu":
                y = b.op("leaky_relu", [x], alpha=float(np.float32(rng.uniform(0.01, 0.5))), table_method="tflm")
            else:
                y = b.op(op, [x], table_method="tflm")
        if y is not None:
            pool.append(y)
    outs = [pool[-1]] if pool[-1] not in b.g.inputs else []
    if not outs:
        outs = [b.op("quantize", [pool[0]])]
    if len(pool) > 3 and rng.random() < 0.3:
        extra = pool[int(rng.integers(1, len(pool) - 1))]
        if extra not in outs and extra not in b.g.inputs:
            outs.append(extra)
    b.g.outputs = outs
    b.g.prune()
    b.g.validate()
    q = quantize(b.g, [(rng.normal(size=(16,) + b.shape(t)[1:]) * 10.0 ** rng.uniform(-2, 2)
                        + rng.uniform(-1, 1) * 10.0 ** rng.uniform(-2, 2)).astype(np.float32) for t in b.g.inputs],
                 method=str(rng.choice(["minmax", "percentile", "mse"])))
    _perturb(q, rng)
    return q


def _perturb(q: Graph, rng) -> None:
    producer = {t: n for n in q.nodes for t in n.outputs}
    for name in q.activation_tensors():
        node = producer.get(name)
        if node is not None and (get_op(node.op).output_shares_input_quant or node.op in FIXED):
            continue
        if rng.random() >= 0.4:
            continue
        t = q.tensors[name]
        s, zp = t.quant.s, t.quant.zp
        mode = int(rng.integers(0, 3))
        if mode == 0:
            s *= 2.0 ** rng.uniform(-2, 2)
            zp = int(np.clip(zp + rng.integers(-30, 31), -128, 127))
        elif mode == 1 and node is not None:  # the input's quantization (mean: same-quant path)
            src = next((i for i in node.inputs if i and not q.tensors[i].is_const), None)
            if src is not None:
                s, zp = q.tensors[src].quant.s, q.tensors[src].quant.zp
        else:
            zp = int(rng.integers(-128, 128))
        t.quant = QuantParams.per_tensor(np.float32(s), zp)
    for node in q.nodes:
        if get_op(node.op).output_shares_input_quant:
            q.tensors[node.outputs[0]].quant = copy.deepcopy(q.tensors[node.inputs[0]].quant)
    q.validate()


def random_inputs(q: Graph, rng, n: int) -> list[np.ndarray]:
    xs = []
    for name in q.inputs:
        t = q.tensors[name]
        x = rng.integers(-128, 128, size=(n,) + t.shape[1:]).astype(np.int8)
        x[0], x[1], x[2] = -128, 127, t.quant.zp
        xs.append(x)
    return xs


def compare(name: str, want: np.ndarray, got: np.ndarray, what: str, graph: Graph) -> int:
    got = got.reshape(want.shape)
    bad = int(np.count_nonzero(want != got))
    if bad:
        idx = tuple(np.argwhere(want != got)[0])
        raise AssertionError(f"{what}: output '{name}': {bad} of {want.size} values differ; first at {idx}: "
                             f"{want[idx]} vs {got[idx]}\n{graph.summary()}\n"
                             + "\n".join(f"  {t}: {graph.tensors[t].quant.to_json()}"
                                         for t in graph.activation_tensors()))
    return bad


def check_vs_tflm(q: Graph, xs: list[np.ndarray], host: bool = True, sanitize: bool = True) -> list[np.ndarray]:
    """reference == TFLM(exported .tflite) [== host C] bit for bit; returns the reference outputs."""
    want = reference.run(q, xs, "int")
    data = to_tflite_bytes(q)
    got = run_tflm(data, xs)
    for name, w, t in zip(q.outputs, want, got):
        compare(name, w, t, "reference vs TFLM", q)
    if host:
        with tempfile.TemporaryDirectory() as d:
            generate(q, Path(d) / "lib")
            cs = run_host(Path(d) / "lib", xs, sanitize=sanitize)
        for name, w, cc in zip(q.outputs, want, cs):
            compare(name, w, cc, "reference vs host C", q)
    return want
