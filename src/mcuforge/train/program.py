"""What a quantized graph needs for on-device training, derived once at generation time.

`build_program(graph, config)` checks that errors can flow back through every node
between the loss and the deepest trainable layer, fixes the static part of every
error scale, and turns every real-valued constant of the training arithmetic
(learning rate x scales) into integer multipliers and shifts. The numpy twin
(fqt.py) and the C generator (codegen.py) both read this one program, so they
cannot disagree about a constant. Float arithmetic happens here only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import GraphError, InputError
from ..ir.graph import Graph, Node
from ..ops import get_op
from ..ops.base import quantized_activation_range

TRAINABLE_OPS = ("conv2d", "fully_connected")
BACKWARD_OPS = ("conv2d", "fully_connected", "max_pool2d", "avg_pool2d", "reshape", "add")
POLICIES = ("full", "bias", "dynamic")
LOSSES = ("ce", "mse")
UNSEEN_EST = 1 << 20  # importance estimate of a layer whose error was never computed: visit it first
EST_CLAMP = 1 << 20
UPDATE_MACS = 8  # the cost model charges a weight update (mulshift, random draw, rounding) as 8 MACs
GATE_STEP = 1 << 14  # loss gate: the threshold's rise + fall per sample (Q16 log2: a quarter bit)
GATE_SAVE = 8  # loss gate: at most this many gated steps' budget is saved up


@dataclass
class TrainConfig:
    """How to train. `lr` is the SGD step size in real units (as float SGD on the same loss,
    batch 1); everything else the run time does in integers."""

    loss: str = "ce"  # ce (softmax cross-entropy, label = class) | mse (target = int8 tensor)
    lr: float = 0.01
    momentum: float = 0.0  # SGD momentum (Q15 at run time); 0: no momentum buffers
    rounding: str = "stochastic"  # stochastic | nearest (weight updates)
    seed: int = 0x5EED1234  # stochastic rounding
    policy: str = "full"  # full: all trainable layers | bias: biases only | dynamic: budgeted partial
    budget: float = 1.0  # dynamic: fraction of the full update's backward MACs spent per step
    trainable: list[str] | None = None  # conv/fc node names; None: all of them
    lr_halve_every: int = 0  # learning-rate schedule: halve every N steps (0: constant)
    bias_visited: bool = True  # dynamic: also update the biases of every layer the error reached
    age_q8: int = 32  # dynamic: growth per step of an unvisited layer's importance estimate (log2, Q8)
    # dynamic: no step plans with less than this fraction of the full backward; a smaller budget goes to
    # fewer samples (those with the largest loss gradient), the others skip the backward (0: never)
    min_step_budget: float = 0.3
    max_adapt: int = 12  # at most this many doublings of a channel's weight scale
    adapt_after: int = 16  # a channel's scale doubles once this many of its weight updates were clipped

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise InputError(f"loss must be one of {', '.join(LOSSES)}, got '{self.loss}'")
        if self.policy not in POLICIES:
            raise InputError(f"policy must be one of {', '.join(POLICIES)}, got '{self.policy}'")
        if self.rounding not in ("stochastic", "nearest"):
            raise InputError(f"rounding must be stochastic or nearest, got '{self.rounding}'")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"the learning rate must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise InputError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.budget <= 1:
            raise InputError(f"the budget must be a fraction in (0, 1], got {self.budget}")
        if not 0 <= self.min_step_budget <= 1:
            raise InputError(f"the minimum step budget must be a fraction in [0, 1], got {self.min_step_budget}")
        if self.lr_halve_every < 0 or not 0 <= self.max_adapt <= 24 or not 1 <= self.adapt_after < 2**30:
            raise InputError("lr_halve_every must be >= 0, max_adapt in [0, 24] and adapt_after >= 1")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def resolve_trainable(graph: Graph, spec: str | list[str] | None) -> list[str]:
    """Trainable conv/fc node names from 'all', 'last:K' (or 'last-K'), or names/indices (comma list).

    Indices count conv/fc layers from 0 in graph order; negative ones count from the end."""
    layers = [n.name for n in graph.nodes if n.op in TRAINABLE_OPS]
    if not layers:
        raise GraphError(f"graph '{graph.name}' has no conv2d or fully_connected layer to train")
    if spec is None or spec == "all":
        return layers
    items = spec if isinstance(spec, list) else [s.strip() for s in str(spec).split(",") if s.strip()]
    if len(items) == 1 and isinstance(items[0], str):
        low = items[0].lower()
        for pre in ("last:", "last-", "last"):
            if low.startswith(pre) and low[len(pre):].isdigit():
                k = int(low[len(pre):])
                if not 1 <= k <= len(layers):
                    raise InputError(f"--trainable {items[0]}: the model has {len(layers)} trainable layers")
                return layers[-k:]
    out = []
    for it in items:
        if isinstance(it, str) and it in layers:
            name = it
        else:
            try:
                name = layers[int(it)]
            except (ValueError, IndexError):
                raise InputError(f"--trainable: '{it}' is not a conv/fc layer of the model (layers: "
                                 f"{', '.join(f'{i}={n}' for i, n in enumerate(layers))}; or 'all', 'last:K')") from None
        if name not in out:
            out.append(name)
    return [n for n in layers if n in out]


def decompose(real) -> tuple[np.ndarray, np.ndarray]:
    """real > 0 -> (M, S) with real = M 2^(S - 31), M in [2^30, 2^31) (no range limit on S)."""
    real = np.atleast_1d(np.asarray(real, np.float64))
    if np.any(~np.isfinite(real)) or np.any(real <= 0):
        raise GraphError(f"training constants must be finite and positive, got {real}")
    m, e = np.frexp(real)
    mm = np.floor(m * 2.0**31 + 0.5).astype(np.int64)
    carry = mm == 2**31
    return np.where(carry, mm // 2, mm), np.where(carry, e + 1, e).astype(np.int64)


@dataclass
class Geometry:
    """A conv2d or fully_connected layer as a convolution over [H, W, C] (fc: H = rows, W = 1, 1x1)."""

    in_h: int
    in_w: int
    in_c: int
    out_h: int
    out_w: int
    out_c: int
    k_h: int
    k_w: int
    stride_h: int = 1
    stride_w: int = 1
    dil_h: int = 1
    dil_w: int = 1
    pad_top: int = 0
    pad_bottom: int = 0
    pad_left: int = 0
    pad_right: int = 0
    groups: int = 1

    @property
    def cg(self) -> int:
        return self.in_c // self.groups

    @property
    def og(self) -> int:
        return self.out_c // self.groups

    @property
    def k(self) -> int:  # weights per output channel
        return self.k_h * self.k_w * self.cg

    @property
    def positions(self) -> int:
        return self.out_h * self.out_w

    @property
    def macs(self) -> int:
        return self.positions * self.out_c * self.k


def geometry(node: Node, graph: Graph) -> Geometry:
    x, w, y = (graph.tensors[node.inputs[0]], graph.tensors[node.inputs[1]], graph.tensors[node.outputs[0]])
    if node.op == "fully_connected":
        rows = int(np.prod(x.shape[:-1]))
        return Geometry(rows, 1, w.shape[1], rows, 1, w.shape[0], 1, 1)
    a = node.attrs
    pt, pb, pl, pr = a["pads"]
    return Geometry(x.shape[1], x.shape[2], x.shape[3], y.shape[1], y.shape[2], y.shape[3], w.shape[1], w.shape[2],
                    a["stride"][0], a["stride"][1], a["dilation"][0], a["dilation"][1], pt, pb, pl, pr,
                    int(a["groups"]))


@dataclass
class Layer:
    """A trainable conv/fc layer: j is its backward index (0 = the one nearest the loss)."""

    j: int
    node: str
    index: int  # node index in the graph
    geom: Geometry
    weight: str
    bias: str | None
    zp_x: int
    lo: int
    hi: int
    c_y: float  # static part of the error scale at the layer's output
    s_x: float
    s_w0: np.ndarray
    shift0: np.ndarray
    um: np.ndarray
    us: np.ndarray  # weight step multiplier lr c_y s_x / s_w0[o] = um 2^(us - 31)
    vm: np.ndarray
    vs: np.ndarray  # bias step multiplier lr c_y / (s_x s_w0[o])
    r0: np.ndarray  # Q15 ratio s_w0[o] / max s_w0 (input-error rescaling)
    imp_c: np.ndarray  # static part of the importance: Q8 2 log2(c_y s_x / input size) - log2(positions)
    blim: int  # |bias| limit that keeps the int32 accumulator from overflowing
    wbase: int  # index of the layer's first weight in the global numbering (random draws)
    prop: int  # MACs of the error propagation needed to reach this layer's output
    cw: int  # MACs of the layer's weight gradient (all channels) + UPDATE_MACS per weight update

    @property
    def O(self) -> int:  # noqa: N802
        return self.geom.out_c

    @property
    def K(self) -> int:  # noqa: N802
        return self.geom.k

    @property
    def penalty(self) -> int:
        """log2((prop + cw) / cw) in Q8: how much the error propagation to this layer dilutes its value."""
        return int(np.floor(256 * np.log2((self.prop + self.cw) / self.cw) + 0.5))

    @property
    def cwc(self) -> int:  # weight-gradient MACs of one channel, plus its weight updates
        return max(1, self.cw // self.O)


@dataclass
class Contribution:
    """An error flowing from `node` into its input `tensor` (static scale `c`)."""

    node: str
    tensor: str
    c: float
    m: int = 0  # merge multiplier: 256 c / c_first = m 2^(s - 31) (multi-consumer tensors)
    s: int = 0


@dataclass
class BwdNode:
    node: str
    op: str
    index: int
    J: int  # runs when the step's deepest visited layer has backward index >= J
    out: str
    mask: tuple[int, int, int, int] | None  # (lo, hi, pass_lo, pass_hi): see _mask
    layer: int | None  # trainable layer index j, if any
    contribs: list[Contribution] = field(default_factory=list)
    geom: Geometry | None = None  # conv/fc
    c_scale: float = 1.0  # conv/fc: max s_w0 (input-error scale factor)
    r0: np.ndarray | None = None  # frozen conv/fc: Q15 ratios
    zp_x: int = 0
    count: int = 1  # avg pool divisor
    direct: bool = False  # pools whose windows do not overlap: the int8 error is scattered without int32 sums


@dataclass
class ErrTensor:
    name: str
    shape: tuple[int, ...]
    c: float
    contribs: list[Contribution] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def multi(self) -> bool:
        return len(self.contribs) > 1


@dataclass
class Gate:
    """Loss-gated steps (dynamic policy with a budget below min_step_budget; docs/training.md): a sample
    whose loss-gradient L1 norm reaches a running threshold gets a step planned with step_macs, when the
    budget saved since the last one covers it; the others skip the backward."""

    step_macs: int  # the budget a gated step plans with
    up: int  # threshold rise after a sample that reached it (Q16 log2)
    down: int  # threshold fall after one that did not: up + down = GATE_STEP, down / GATE_STEP = budget / step
    cap: int  # the saved budget's limit (MACs)


def make_gate(config: TrainConfig, budget: int, full: int) -> Gate | None:
    step = int(math.floor(config.min_step_budget * full))
    if config.policy != "dynamic" or budget >= step:
        return None
    # the threshold settles where a fraction budget / step of the samples reach it (its rises and falls balance)
    down = (2 * GATE_STEP * budget + step) // (2 * step)
    return Gate(step, GATE_STEP - down, down, min(GATE_SAVE * step, 2**31 - 1 - budget))


@dataclass
class Program:
    graph_name: str
    config: TrainConfig
    input: str
    output: str
    logits: str  # the tensor the loss gradient is taken at (softmax input, or the output)
    softmax_final: bool
    num_classes: int
    c_out: float
    layers: list[Layer]  # backward order
    backward: list[BwdNode]  # reverse topological order, down to the deepest trainable layer
    errors: dict[str, ErrTensor]
    budget_macs: int
    full_macs: int  # backward MACs of a full update (weight gradients + error propagation)
    forward_macs: int
    gate: Gate | None = None  # dynamic policy below min_step_budget: loss-gated steps

    @property
    def step_macs(self) -> int:
        """The budget one step's plan spends (a gated step's is larger than the average, budget_macs)."""
        return self.gate.step_macs if self.gate is not None else self.budget_macs

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer(self, node: str) -> Layer:
        for L in self.layers:
            if L.node == node:
                return L
        raise KeyError(node)


def _mask(node: Node, graph: Graph) -> tuple[int, int, int, int] | None:
    """(lo, hi, pass_lo, pass_hi): the error passes where lo < y < hi. At a bound set by a fused activation
    (ReLU's zero, ReLU6's six) it stops: the true derivative. At a bound that is only int8 saturation of
    the output scale (pass_* = 1) it passes when it points back into the range (e < 0 at lo, e > 0 at hi;
    e = dL/dy): a straight-through estimate that lets a step which pushed activations out of their static
    range pull them back, instead of freezing the layer at saturation."""
    y = graph.tensors[node.outputs[0]]
    has_act = node.attrs.get("act_min") is not None or node.attrs.get("act_max") is not None
    if node.op in ("conv2d", "fully_connected", "add") or has_act:
        lo, hi = quantized_activation_range(node, y.quant)
        free = Node(node.name, node.op, node.inputs, node.outputs, {})
        lo8, hi8 = quantized_activation_range(free, y.quant)
        act_lo = node.attrs.get("act_min") is not None and lo > lo8 or (
            node.attrs.get("act_min") is not None and lo == lo8 and _act_sets(node, y, "act_min", lo8))
        act_hi = node.attrs.get("act_max") is not None and hi < hi8 or (
            node.attrs.get("act_max") is not None and hi == hi8 and _act_sets(node, y, "act_max", hi8))
        return lo, hi, int(not act_lo), int(not act_hi)
    return None


def _act_sets(node: Node, y, key: str, bound: int) -> bool:
    """Whether the fused activation's bound itself quantizes to the int8 bound (ReLU with zero point
    -128: its zero is a real bound even though it coincides with int8 saturation)."""
    f = np.float32(node.attrs[key]) / np.float32(y.quant.s)
    q = y.quant.zp + int(np.floor(abs(f) + 0.5)) * (1 if f >= 0 else -1)
    return q <= bound if key == "act_min" else q >= bound


def build_program(graph: Graph, config: TrainConfig) -> Program:
    config.validate()
    if not graph.is_quantized:
        raise GraphError(f"graph '{graph.name}' is not quantized: training runs on the int8 graph")
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise GraphError("on-device training handles models with one input and one output")
    names = config.trainable if config.trainable is not None else resolve_trainable(graph, None)
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    for name in names:
        if name not in index or graph.nodes[index[name]].op not in TRAINABLE_OPS:
            raise InputError(f"trainable layer '{name}' is not a conv2d/fully_connected node of the model")
    if not names:
        raise InputError("no trainable layer selected")
    trainable = sorted(names, key=lambda n: -index[n])  # backward order
    deepest = index[trainable[-1]]

    out = graph.outputs[0]
    prod = graph.producer(out)
    softmax_final = prod is not None and prod.op == "softmax"
    if softmax_final and config.loss != "ce":
        raise GraphError("the model ends with a softmax: train it with the cross-entropy loss (--loss ce)")
    logits = prod.inputs[0] if softmax_final else out
    lt = graph.tensors[logits]
    if config.loss == "ce":
        num_classes = int(lt.shape[-1])
        if lt.size != num_classes:
            raise GraphError(f"cross-entropy needs one row of class scores, the output is {lt.shape}")
        c_out = 1.0 / 256  # softmax probabilities are in 1/256 units
    else:
        num_classes = 0
        c_out = float(graph.tensors[out].quant.s) / graph.tensors[out].size
    if softmax_final and len(graph.consumers(logits)) != 1:
        raise GraphError(f"the logits '{logits}' feed more than the final softmax: not supported for training")
    if not softmax_final and graph.consumers(out):
        raise GraphError(f"the output '{out}' is also read inside the model: not supported for training")

    # reverse pass: which nodes run backward, the static error scales
    region = [n for n in graph.nodes if index[n.name] >= deepest]
    for n in region:
        if n.op == "softmax" and softmax_final and n is prod:
            continue
        if n.op not in BACKWARD_OPS:
            raise GraphError(f"training cannot pass errors through node '{n.name}' ({n.op}): between the loss and "
                             f"the deepest trainable layer only {', '.join(BACKWARD_OPS)} are supported "
                             "(train fewer layers with --trainable)")
        if n.op == "avg_pool2d":
            a = n.attrs
            if any(a["pads"]) and not a.get("count_include_pad"):
                raise GraphError(f"node '{n.name}' (avg_pool2d): padding left out of the count is not supported "
                                 "for training")
    errors: dict[str, ErrTensor] = {logits: ErrTensor(logits, graph.tensors[logits].shape, c_out)}
    backward: list[BwdNode] = []
    jpos = {name: j for j, name in enumerate(trainable)}
    layer_c: dict[str, float] = {}
    for n in reversed(region):
        if n.op == "softmax" and softmax_final and n is prod:
            continue
        i = index[n.name]
        J = sum(1 for t in trainable if index[t] > i)
        yname = n.outputs[0]
        if yname not in errors:
            raise GraphError(f"node '{n.name}' ({n.op}): its output '{yname}' gets no error from the loss")
        c_y = errors[yname].c
        bn = BwdNode(n.name, n.op, i, J, yname, _mask(n, graph), jpos.get(n.name))
        ins = [t for t in n.inputs[:1 if n.op in TRAINABLE_OPS else None] if t and not graph.tensors[t].is_const]
        if n.op in TRAINABLE_OPS:
            wq = graph.tensors[n.inputs[1]].quant
            o = graph.tensors[n.inputs[1]].shape[0]
            s_w0 = np.broadcast_to(wq.scale.astype(np.float64), (o,)).copy()
            bn.geom = geometry(n, graph)
            bn.c_scale = float(s_w0.max())
            bn.r0 = np.floor(32768 * s_w0 / s_w0.max() + 0.5).astype(np.int64)
            bn.zp_x = int(graph.tensors[n.inputs[0]].quant.zp)
            layer_c[n.name] = c_y
            factor = bn.c_scale
        elif n.op == "avg_pool2d":
            bn.count = int(n.attrs["kernel"][0] * n.attrs["kernel"][1])
            bn.direct = _no_overlap(n)
            factor = 1.0 / bn.count
        elif n.op == "max_pool2d":
            bn.zp_x = int(graph.tensors[n.inputs[0]].quant.zp)
            bn.direct = _no_overlap(n)
            factor = 1.0
        else:
            factor = 1.0
        for t in ins:
            p = graph.producer(t)
            if p is None or index[p.name] < deepest:
                continue  # graph input, or below the deepest trainable layer: no error needed
            c = Contribution(n.name, t, c_y * factor)
            et = errors.setdefault(t, ErrTensor(t, graph.tensors[t].shape, c.c))
            if et.contribs:
                (m,), (s,) = decompose(256.0 * c.c / et.c)
                c.m, c.s = int(m), int(s)
            et.contribs.append(c)
            bn.contribs.append(c)
        backward.append(bn)

    layers: list[Layer] = []
    wbase = 0
    conv_nodes = [b for b in backward if b.op in TRAINABLE_OPS]
    for j, name in enumerate(trainable):
        n = graph.nodes[index[name]]
        x, wt, y = (graph.tensors[n.inputs[0]], graph.tensors[n.inputs[1]], graph.tensors[n.outputs[0]])
        if wt.dtype != "int8" or x.dtype != "int8" or y.dtype != "int8":
            raise GraphError(f"layer '{name}': training needs int8 input, weights and output")
        if len(graph.consumers(n.inputs[1])) != 1 or (len(n.inputs) > 2 and n.inputs[2]
                                                       and len(graph.consumers(n.inputs[2])) != 1):
            raise GraphError(f"layer '{name}': its weights are shared with another layer")
        g = geometry(n, graph)
        o = g.out_c
        s_w0 = np.broadcast_to(wt.quant.scale.astype(np.float64), (o,)).copy()
        s_x = float(x.quant.s)
        c_y = layer_c[name]
        mult, shift = get_op(n.op).requant(n, graph)[:2]
        lr = float(config.lr)
        um, us = decompose(lr * c_y * s_x / s_w0)
        vm, vs = decompose(lr * c_y / (s_x * s_w0))
        n_x = x.size
        # importance = log2 of the first-order loss decrease of a channel's SGD step per MAC spent on it,
        # eta |g_o|^2 / (P K) with |g_o| ~ sqrt(K) A[o] c_y 2^x s_x S_x / |x|: the static part, Q8
        imp_c = np.full(o, int(np.floor(256 * (2 * np.log2(c_y * s_x / n_x) - np.log2(g.positions)) + 0.5)),
                        np.int64)
        # propagation to reach this layer: every conv/fc above it passes its error down
        prop = sum(b.geom.macs for b in conv_nodes if b.index > index[name])
        lo, hi = quantized_activation_range(n, y.quant)
        bias = n.inputs[2] if len(n.inputs) > 2 and n.inputs[2] else None
        layers.append(Layer(
            j=j, node=name, index=index[name], geom=g, weight=n.inputs[1], bias=bias, zp_x=int(x.quant.zp),
            lo=lo, hi=hi, c_y=c_y, s_x=s_x, s_w0=s_w0, shift0=np.asarray(shift, np.int64),
            um=um, us=us, vm=vm, vs=vs, r0=np.floor(32768 * s_w0 / s_w0.max() + 0.5).astype(np.int64),
            imp_c=imp_c, blim=2**31 - 1 - g.k * 255 * 128, wbase=wbase, prop=prop,
            cw=g.macs + UPDATE_MACS * o * g.k))
        wbase += o * g.k
        _check_bounds(layers[-1], n)
    for b in conv_nodes:
        _check_input_grad_bound(b)
    full = layers[-1].prop + sum(L.cw for L in layers)
    budget = full if config.policy != "dynamic" else int(math.floor(config.budget * full))
    fwd = sum(get_op(n.op).macs(n, graph) for n in graph.nodes)
    if full >= 2**31:
        raise GraphError("the model is too large for the training kernels' int32 cost bookkeeping")
    return Program(graph.name, config, graph.inputs[0], out, logits, softmax_final, num_classes, c_out,
                   layers, backward, errors, budget, full, fwd, make_gate(config, budget, full))


def _no_overlap(n: Node) -> bool:
    (kh, kw), (sh, sw) = n.attrs["kernel"], n.attrs["stride"]
    return sh >= kh and sw >= kw


def _check_bounds(L: Layer, node: Node) -> None:
    """The int32 weight and bias gradients cannot overflow: |sum_p e (x - zp)| <= P 127 255."""
    if L.geom.positions * 127 * 255 >= 2**31:
        raise GraphError(f"layer '{node.name}': {L.geom.positions} output positions could overflow the int32 "
                         "weight gradient")


def _check_input_grad_bound(b: BwdNode) -> None:
    g = b.geom
    taps = -(-g.k_h // g.stride_h) * -(-g.k_w // g.stride_w) if g.dil_h == 1 and g.dil_w == 1 else g.k_h * g.k_w
    if taps * g.og * 127 * 127 >= 2**31:
        raise GraphError(f"node '{b.node}': the int32 input-error accumulator could overflow")

