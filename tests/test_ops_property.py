"""Property-based bit-exactness: for every op, random configurations and random
quantization parameters, the integer reference (the specification) and the
generated C library (built with -fsanitize=address,undefined, any report fails)
agree bit for bit on random int8 inputs covering -128..127.

Each op's strategy draws a configuration dict (printed on failure, with the seed
for weights, calibration data and inputs), so a failing example reproduces.
The default run tests CASES[op][2] configurations per op (derandomized, so a
failure reproduces run after run) and also asserts that the generated examples
reached the features listed in CASES[op][3]; the ``slow`` variant
(``pytest -m slow``) tests SLOW_FACTOR times as many. Plus hand-made and random
multi-op graphs (buffer sharing, aliasing, in-place ops end to end) and
regression tests for the bugs this suite found.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mcuforge.ir import QuantParams
from mcuforge.ops import OPS
from mcuforge.ops.layout import Concat
from mcuforge.ops.softmax import softmax_params

from _graphs import (Builder, check_bit_exact, perturb_quant, quantize_random, random_graph)

SLOW_FACTOR = 10


@pytest.fixture(scope="module", autouse=True)
def _private_build_cache():
    """Compile every runner afresh into a throw-away cache (no reuse of stale binaries)."""
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCUFORGE_CACHE", d)
        yield


# --- shared strategies ------------------------------------------------------------------

seeds = st.integers(0, 2**32 - 1)
quant_cfg = st.fixed_dictionaries({
    "log_scale": st.floats(-3, 3),       # calibration data scale 10^-3 .. 10^3
    "offset": st.floats(-1, 1),          # asymmetric ranges -> zero points
    "method": st.sampled_from(["minmax", "percentile", "mse"]),
    "perturb": st.booleans(),            # odd scales / zero points on top of PTQ
})
act_cfg = st.one_of(
    st.sampled_from([(None, None), (0.0, None), (0.0, 6.0), (None, 6.0), (-1.0, 1.0)]),
    st.tuples(st.floats(-3, 1), st.floats(0.01, 6)).map(lambda t: (t[0], t[0] + t[1])),
    st.tuples(st.just(None), st.floats(-2, 4)),
)


def small_shape(draw, min_rank=2, max_rank=4, max_dim=12):
    rank = draw(st.integers(min_rank, max_rank))
    return (1,) + tuple(draw(st.integers(1, max_dim)) for _ in range(rank - 1))


def act_attrs(act):
    return {"act_min": act[0], "act_max": act[1]}


def quantize_cfg(g, cfg, rng, log_scales=None, per_channel_dense=True):
    qc = cfg["quant"]
    q = quantize_random(g, rng, log_scales=log_scales or [qc["log_scale"]], offsets=[qc["offset"]],
                        method=qc["method"], per_channel_dense=per_channel_dense)
    if qc["perturb"]:
        perturb_quant(q, rng)
    return q


def jitter_weight_scales(q, rng):
    """Multiply per-channel weight scales by random factors (odd per-channel multipliers)."""
    for node in q.nodes:
        if node.op in ("conv2d", "fully_connected"):
            wq = q.tensors[node.inputs[1]].quant
            wq.scale = (wq.scale * 2.0 ** rng.uniform(-1.5, 1.5, size=wq.scale.shape)).astype(np.float32)


# --- per-op configurations and graphs ------------------------------------------------------

@st.composite
def conv2d_cfg(draw):
    mode = draw(st.sampled_from(["regular", "grouped", "depthwise", "1d", "1d-depthwise"]))
    one_d = mode.startswith("1d")
    if mode in ("depthwise", "1d-depthwise"):
        c = draw(st.integers(1, 40))
        groups, o = c, c * draw(st.integers(1, 3))  # depth multiplier 1..3
    elif mode == "grouped":
        groups = draw(st.integers(2, 4))
        c = groups * draw(st.integers(1, 8))
        o = groups * draw(st.integers(1, 6))
    else:
        c, o, groups = draw(st.integers(1, 40)), draw(st.integers(1, 40)), 1
    kh = 1 if one_d else draw(st.integers(1, 5))
    kw = draw(st.integers(1, 5))
    sh, dh = (1, 1) if one_d else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    sw, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pt, pb = (0, 0) if one_d else (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    pl, pr = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    h = 1 if one_d else draw(st.integers(max(1, eh - pt - pb), 20))
    w = draw(st.integers(max(1, ew - pl - pr), 20))
    oh, ow = (h + pt + pb - eh) // sh + 1, (w + pl + pr - ew) // sw + 1
    assume(oh * ow * o * kh * kw * (c // groups) <= 1_500_000)
    return dict(mode=mode, c=c, o=o, groups=groups, h=h, w=w, kernel=(kh, kw), stride=(sh, sw),
                dilation=(dh, dw), pads=(pt, pb, pl, pr), bias=draw(st.booleans()), act=draw(act_cfg),
                w_log_scale=draw(st.floats(-2, 1)), b_log_scale=draw(st.floats(-2, 2.5)),
                zero_filter=draw(st.booleans()), jitter=draw(st.booleans()),
                quant=draw(quant_cfg), seed=draw(seeds))


def build_conv2d(cfg, rng, features):
    b = Builder()
    x = b.input((1, cfg["h"], cfg["w"], cfg["c"]))
    kh, kw = cfg["kernel"]
    wt = rng.normal(size=(cfg["o"], kh, kw, cfg["c"] // cfg["groups"])) * 10.0 ** cfg["w_log_scale"]
    if cfg["zero_filter"]:
        wt[rng.integers(cfg["o"])] = 0.0
    inputs = [x, b.const("w", wt)]
    if cfg["bias"]:
        inputs.append(b.const("b", rng.normal(size=cfg["o"]) * 10.0 ** cfg["b_log_scale"]))
    y = b.op("conv2d", inputs, stride=list(cfg["stride"]), dilation=list(cfg["dilation"]),
             pads=list(cfg["pads"]), groups=cfg["groups"], **act_attrs(cfg["act"]))
    q = quantize_cfg(b.finish(y), cfg, rng)
    if cfg["jitter"]:
        jitter_weight_scales(q, rng)
    features.add(cfg["mode"])
    if cfg["groups"] == cfg["c"] and cfg["o"] > cfg["c"]:
        features.add("depth-multiplier")
    if max(cfg["dilation"]) > 1 and max(cfg["stride"]) > 1 and max(cfg["pads"]) > 0:
        features.add("strided-dilated-padded")
    return q


@st.composite
def fc_cfg(draw):
    lead = small_shape(draw, 1, 3, 6)
    return dict(lead=lead, k=draw(st.integers(1, 64)), o=draw(st.integers(1, 40)),
                bias=draw(st.booleans()), act=draw(act_cfg), per_channel=draw(st.booleans()),
                w_log_scale=draw(st.floats(-2, 1)), b_log_scale=draw(st.floats(-2, 2.5)),
                jitter=draw(st.booleans()), quant=draw(quant_cfg), seed=draw(seeds))


def build_fully_connected(cfg, rng, features):
    b = Builder()
    x = b.input(cfg["lead"] + (cfg["k"],))
    inputs = [x, b.const("w", rng.normal(size=(cfg["o"], cfg["k"])) * 10.0 ** cfg["w_log_scale"])]
    if cfg["bias"]:
        inputs.append(b.const("b", rng.normal(size=cfg["o"]) * 10.0 ** cfg["b_log_scale"]))
    y = b.op("fully_connected", inputs, **act_attrs(cfg["act"]))
    q = quantize_cfg(b.finish(y), cfg, rng, per_channel_dense=cfg["per_channel"])
    if cfg["jitter"] and cfg["per_channel"]:
        jitter_weight_scales(q, rng)
    assert q.tensors[q.nodes[0].inputs[1]].quant.per_channel == cfg["per_channel"]
    features.add("per-channel" if cfg["per_channel"] else "per-tensor")
    return q


@st.composite
def pool_cfg(draw):
    c = draw(st.integers(1, 40))
    if draw(st.booleans()) and draw(st.booleans()):  # global pooling
        h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))
        kernel, stride, pads = (h, w), (1, 1), (0, 0, 0, 0)
    else:
        one_d = draw(st.booleans()) and draw(st.booleans())
        kh = 1 if one_d else draw(st.integers(1, 5))
        kw = draw(st.integers(1, 5))
        stride = (1 if one_d else draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        pads = (0 if one_d else draw(st.integers(0, min(2, kh - 1))), 0 if one_d else draw(st.integers(0, min(2, kh - 1))),
                draw(st.integers(0, min(2, kw - 1))), draw(st.integers(0, min(2, kw - 1))))
        h = 1 if one_d else draw(st.integers(max(1, kh - pads[0] - pads[1]), 20))
        w = draw(st.integers(max(1, kw - pads[2] - pads[3]), 20))
        kernel = (kh, kw)
    return dict(c=c, h=h, w=w, kernel=kernel, stride=stride, pads=pads,
                count_include_pad=draw(st.booleans()), act=draw(act_cfg), quant=draw(quant_cfg),
                seed=draw(seeds))


def _build_pool(op, cfg, rng, features):
    b = Builder()
    x = b.input((1, cfg["h"], cfg["w"], cfg["c"]))
    attrs = dict(kernel=list(cfg["kernel"]), stride=list(cfg["stride"]), pads=list(cfg["pads"]),
                 **act_attrs(cfg["act"]))
    if op == "avg_pool2d":
        attrs["count_include_pad"] = cfg["count_include_pad"]
    y = b.op(op, [x], **attrs)
    q = quantize_cfg(b.finish(y), cfg, rng)
    if max(cfg["pads"]) > 0:
        features.add("padded" + ("-incl" if cfg["count_include_pad"] else "-excl"))
    if cfg["kernel"] == (cfg["h"], cfg["w"]):
        features.add("global")
    return q


def build_avg_pool2d(cfg, rng, features):
    return _build_pool("avg_pool2d", cfg, rng, features)


def build_max_pool2d(cfg, rng, features):
    return _build_pool("max_pool2d", cfg, rng, features)


@st.composite
def binary_cfg(draw):
    out = small_shape(draw, 2, 4, 10)
    rank = len(out)

    def operand():
        kind = draw(st.sampled_from(["full", "bcast", "const", "scalar"]))
        if kind == "full":
            return kind, out
        if kind == "bcast":
            return kind, (1,) + tuple(d if draw(st.booleans()) else 1 for d in out[1:])
        if kind == "scalar":
            return "const", (1,)  # a 0-d constant is not representable in the IR
        n = draw(st.integers(1, rank - 1))
        return kind, tuple(d if draw(st.booleans()) else 1 for d in out[rank - n:])

    same = draw(st.integers(0, 3)) == 0  # op(x, x): both operands are one tensor
    if same:
        a = b = ("full", out)
    else:
        a, b = operand(), operand()
        if a[0] == "const" and b[0] == "const":
            a = ("full", out)
    return dict(a=a, b=b, same=same,
                act=draw(act_cfg), log_scales=[draw(st.floats(-3, 3)), draw(st.floats(-3, 3))],
                const_log_scale=draw(st.floats(-2, 2)), quant=draw(quant_cfg), seed=draw(seeds))


def _build_binary(op, cfg, rng, features):
    bld = Builder()
    operands = []
    for kind, shape in (cfg["a"], cfg["b"]):
        if kind == "const":
            operands.append(bld.const("k", rng.normal(size=shape) * 10.0 ** cfg["const_log_scale"]))
            features.add("const")
        elif cfg["same"] and operands:
            operands.append(operands[0])
            features.add("same")
        else:
            operands.append(bld.input(shape))
    y = bld.op(op, operands, **act_attrs(cfg["act"]))
    q = quantize_cfg(bld.finish(y), cfg, rng, log_scales=cfg["log_scales"])
    shapes = [q.tensors[t].shape for t in operands]
    if any(s != q.tensors[y].shape for s in shapes):
        features.add("broadcast")
    return q


def build_add(cfg, rng, features):
    return _build_binary("add", cfg, rng, features)


def build_mul(cfg, rng, features):
    return _build_binary("mul", cfg, rng, features)


@st.composite
def unary_cfg(draw):
    lo = draw(st.one_of(st.none(), st.just(0.0), st.floats(-3, 3)))
    hi = draw(st.one_of(st.none(), st.just(6.0), st.floats(-3, 3)))
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    return dict(shape=small_shape(draw, 2, 4, 12), lo=lo, hi=hi, alpha=draw(st.floats(0.0, 2.0)),
                quant=draw(quant_cfg), seed=draw(seeds))


def _build_unary(op, cfg, rng, features):
    b = Builder()
    x = b.input(cfg["shape"])
    attrs = {"clamp": {"min": cfg["lo"], "max": cfg["hi"]}, "leaky_relu": {"alpha": cfg["alpha"]}}.get(op, {})
    y = b.op(op, [x], **attrs)
    features.add(f"rank{len(cfg['shape'])}")
    return quantize_cfg(b.finish(y), cfg, rng)


def build_clamp(cfg, rng, features):
    return _build_unary("clamp", cfg, rng, features)


def build_leaky_relu(cfg, rng, features):
    return _build_unary("leaky_relu", cfg, rng, features)


def build_sigmoid(cfg, rng, features):
    return _build_unary("sigmoid", cfg, rng, features)


def build_tanh(cfg, rng, features):
    return _build_unary("tanh", cfg, rng, features)


@st.composite
def softmax_cfg(draw):
    lead = small_shape(draw, 1, 3, 4)
    return dict(shape=lead + (draw(st.integers(1, 40)),),
                beta=draw(st.one_of(st.sampled_from([1.0, 0.5, 2.0]), st.floats(0.05, 10.0))),
                # None: keep the calibrated input scale; else set it to 10^x (large -> diff_min cuts)
                in_log_scale=draw(st.one_of(st.none(), st.floats(-3, 1.6))),
                in_zp=draw(st.integers(-128, 127)), quant=draw(quant_cfg), seed=draw(seeds))


def build_softmax(cfg, rng, features):
    b = Builder()
    x = b.input(cfg["shape"])
    y = b.op("softmax", [x], beta=cfg["beta"])
    q = quantize_cfg(b.finish(y), cfg, rng)
    if cfg["in_log_scale"] is not None:
        q.tensors[x].quant = QuantParams.per_tensor(np.float32(10.0 ** cfg["in_log_scale"]), cfg["in_zp"])
        q.validate()
    assert q.tensors[y].quant.s == 1.0 / 256 and q.tensors[y].quant.zp == -128
    mult, left_shift, diff_min = softmax_params(cfg["beta"], q.tensors[x].quant.s)
    if diff_min > -255:
        features.add("diff_min")
    if left_shift >= 30:
        features.add("large-shift")
    return q


@st.composite
def reshape_cfg(draw):
    shape = small_shape(draw, 2, 4, 8)
    size = int(np.prod(shape))
    dims, rest = [], size
    for _ in range(draw(st.integers(0, 2))):
        divisors = [d for d in range(1, rest + 1) if rest % d == 0]
        d = draw(st.sampled_from(divisors))
        dims.append(d)
        rest //= d
    target = (1,) + tuple(dims) + (rest,)
    return dict(shape=shape, target=target, before=draw(st.booleans()), after=draw(st.booleans()),
                quant=draw(quant_cfg), seed=draw(seeds))


def build_reshape(cfg, rng, features):
    b = Builder()
    x = b.input(cfg["shape"])
    t = b.op("leaky_relu", [x], alpha=0.25) if cfg["before"] else x
    y = b.op("reshape", [t], shape=list(cfg["target"]))
    if cfg["after"]:
        y = b.op("mul", [y, b.const("k", rng.normal(size=cfg["target"][-1:]))])
        features.add("chain")
    return quantize_cfg(b.finish(y), cfg, rng)


@st.composite
def transpose_cfg(draw):
    shape = small_shape(draw, 2, 4, 12)
    perm = [0] + list(draw(st.permutations(list(range(1, len(shape))))))
    return dict(shape=shape, perm=perm, quant=draw(quant_cfg), seed=draw(seeds))


def build_transpose(cfg, rng, features):
    b = Builder()
    x = b.input(cfg["shape"])
    y = b.op("transpose", [x], perm=cfg["perm"])
    features.add(f"rank{len(cfg['shape'])}")
    return quantize_cfg(b.finish(y), cfg, rng)


@st.composite
def concat_cfg(draw):
    base = small_shape(draw, 2, 4, 8)
    axis = draw(st.integers(1, len(base) - 1))
    n = draw(st.integers(2, 4))
    sizes = [draw(st.integers(1, 8)) for _ in range(n)]
    return dict(base=base, axis=axis, sizes=sizes,
                mode=draw(st.sampled_from(["differ", "equal", "mixed"])),
                repeat=draw(st.booleans()), log_scales=[draw(st.floats(-3, 3)) for _ in range(n)],
                quant=draw(quant_cfg), seed=draw(seeds))


def build_concat(cfg, rng, features):
    b = Builder()
    inputs = []
    for i, size in enumerate(cfg["sizes"]):
        if cfg["repeat"] and i == len(cfg["sizes"]) - 1:
            inputs.append(inputs[0])  # the same tensor twice
            continue
        shape = list(cfg["base"])
        shape[cfg["axis"]] = size
        inputs.append(b.input(shape))
    y = b.op("concat", inputs, axis=cfg["axis"])
    q = quantize_cfg(b.finish(y), cfg, rng, log_scales=cfg["log_scales"])
    if cfg["mode"] != "differ":
        for i, t in enumerate(dict.fromkeys(inputs)):
            if cfg["mode"] == "equal" or i % 2 == 0:
                q.tensors[t].quant = QuantParams.per_tensor(q.tensors[y].quant.s, q.tensors[y].quant.zp)
    q.validate()
    node = q.nodes[0]
    for i in range(len(node.inputs)):
        features.add("memcpy" if Concat().requant(node, q, i) is None else "requantize")
    return q


CASES = {
    # op: (strategy, builder, configurations in the default run, features the examples must reach)
    "conv2d": (conv2d_cfg(), build_conv2d, 90,
               {"regular", "grouped", "depthwise", "1d", "depth-multiplier", "strided-dilated-padded"}),
    "fully_connected": (fc_cfg(), build_fully_connected, 36, {"per-channel", "per-tensor"}),
    "avg_pool2d": (pool_cfg(), build_avg_pool2d, 36, {"padded-incl", "padded-excl", "global"}),
    "max_pool2d": (pool_cfg(), build_max_pool2d, 24, {"global"}),
    "add": (binary_cfg(), build_add, 36, {"const", "broadcast", "same"}),
    "mul": (binary_cfg(), build_mul, 36, {"const", "broadcast"}),
    "clamp": (unary_cfg(), build_clamp, 12, {"rank2", "rank4"}),
    "leaky_relu": (unary_cfg(), build_leaky_relu, 12, {"rank2", "rank4"}),
    "sigmoid": (unary_cfg(), build_sigmoid, 12, {"rank2", "rank4"}),
    "tanh": (unary_cfg(), build_tanh, 12, {"rank2", "rank4"}),
    "softmax": (softmax_cfg(), build_softmax, 45, {"diff_min", "large-shift"}),
    "reshape": (reshape_cfg(), build_reshape, 12, {"chain"}),
    "transpose": (transpose_cfg(), build_transpose, 18, {"rank3", "rank4"}),
    "concat": (concat_cfg(), build_concat, 36, {"memcpy", "requantize"}),
}


# The integer core this suite covers. Ops registered later need a case here too.
CORE_OPS = {"conv2d", "fully_connected", "avg_pool2d", "max_pool2d", "add", "mul", "clamp", "leaky_relu",
            "sigmoid", "tanh", "softmax", "reshape", "transpose", "concat"}


def test_every_core_op_has_a_property_case():
    assert CORE_OPS <= set(OPS), CORE_OPS - set(OPS)
    assert set(CASES) == CORE_OPS, set(CASES) ^ CORE_OPS


def _run_cases(op: str, max_examples: int) -> None:
    strategy, build, _, wanted = CASES[op]
    features: set[str] = set()
    configs = []

    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])
    @given(cfg=strategy)
    def bit_exact(cfg):
        rng = np.random.default_rng(cfg["seed"])
        q = build(cfg, rng, features)
        assert q.nodes and any(n.op == op for n in q.nodes)
        check_bit_exact(q, rng)
        configs.append(cfg)

    bit_exact()
    assert len(configs) >= min(max_examples, 8), f"only {len(configs)} configurations ran"
    missing = wanted - features
    assert not missing, f"{op}: no generated configuration exercised {sorted(missing)}"


@pytest.mark.parametrize("op", list(CASES))
def test_op_bit_exact(op):
    _run_cases(op, CASES[op][2])


@pytest.mark.slow
@pytest.mark.parametrize("op", list(CASES))
def test_op_bit_exact_many(op):
    _run_cases(op, CASES[op][2] * SLOW_FACTOR)


# --- multi-op graphs: buffer sharing, aliasing and in-place ops end to end -----------------------

def _conv(b, rng, x, o, k=3, stride=1, groups=1, act=(0.0, None)):
    c = b.g.tensors[x].shape[3]
    p = k // 2
    return b.op("conv2d", [x, b.const("w", rng.normal(size=(o, k, k, c // groups))), b.const("b", rng.normal(size=o))],
                stride=[stride, stride], dilation=[1, 1], pads=[p, p, p, p], groups=groups, **act_attrs(act))


def classifier(rng):
    """conv -> max pool -> conv -> avg pool -> reshape -> fc -> softmax."""
    b = Builder("classifier")
    x = b.input((1, 12, 10, 3))
    y = _conv(b, rng, x, 8)
    y = b.op("max_pool2d", [y], kernel=[2, 2], stride=[2, 2], pads=[0, 0, 0, 0])
    y = _conv(b, rng, y, 12, act=(0.0, 6.0))
    y = b.op("avg_pool2d", [y], kernel=[6, 5], stride=[1, 1], pads=[0, 0, 0, 0])
    y = b.op("reshape", [y], shape=[1, 12])
    y = b.op("fully_connected", [y, b.const("w", rng.normal(size=(5, 12))), b.const("b", rng.normal(size=5))])
    return b.finish(b.op("softmax", [y]))


def residual(rng):
    """Two residual blocks with in-place elementwise ops and a depthwise conv."""
    b = Builder("residual")
    x = b.input((1, 8, 8, 6))
    y = _conv(b, rng, x, 6)
    for _ in range(2):
        z = _conv(b, rng, y, 6, groups=6, act=(None, None))
        z = b.op("leaky_relu", [z], alpha=0.1)
        y = b.op("add", [y, z], act_min=0.0)
        y = b.op("mul", [y, b.const("k", rng.uniform(0.5, 2.0, size=6))])
    y = b.op("tanh", [y])
    return b.finish(y)


def branches(rng):
    """Parallel branches concatenated (different quantizations), transposed, two outputs."""
    b = Builder("branches")
    x = b.input((1, 6, 6, 4))
    a = _conv(b, rng, x, 3, k=1)
    c = _conv(b, rng, x, 5, k=3, act=(None, None))
    s = b.op("sigmoid", [c])
    m = b.op("max_pool2d", [x], kernel=[3, 3], stride=[1, 1], pads=[1, 1, 1, 1])
    y = b.op("concat", [a, s, m], axis=3)
    t = b.op("transpose", [y], perm=[0, 3, 1, 2])
    r = b.op("reshape", [y], shape=[1, 36, 12])
    f = b.op("fully_connected", [r, b.const("w", rng.normal(size=(4, 12)))])
    return b.finish(t, f)


@pytest.mark.parametrize("make", [classifier, residual, branches], ids=lambda f: f.__name__)
@pytest.mark.parametrize("perturb", [False, True])
def test_multi_op_graph_bit_exact(make, perturb):
    rng = np.random.default_rng(7)
    g = make(rng)
    q = quantize_random(g, rng, log_scales=[0.0], offsets=[0.3])
    if perturb:
        perturb_quant(q, rng, prob=0.7)
    check_bit_exact(q, rng)


def _random_graph_cases(max_examples):
    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(graph_seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-2, 2), perturb=st.booleans())
    def bit_exact(graph_seed, log_scale, perturb):
        g = random_graph(graph_seed)
        rng = np.random.default_rng(graph_seed)
        q = quantize_random(g, rng, log_scales=[log_scale])
        if perturb:
            perturb_quant(q, rng)
        check_bit_exact(q, rng)

    bit_exact()


def test_random_graphs_bit_exact():
    _random_graph_cases(36)


@pytest.mark.slow
def test_random_graphs_bit_exact_many():
    _random_graph_cases(200)


# --- regressions found by this suite ----------------------------------------------------------

@pytest.mark.parametrize("beta,scale", [(2.0, 10.0), (10.0, 31.0), (1.0, 16.0)])
def test_softmax_left_shift_31_is_defined(beta, scale):
    """beta * s_x >= 16 gives left_shift 31: the kernel used (1 << 31), undefined in C."""
    b = Builder()
    x = b.input((1, 3, 7))
    q = quantize_random(b.finish(b.op("softmax", [x], beta=beta)), np.random.default_rng(0))
    q.tensors[x].quant = QuantParams.per_tensor(scale, 5)
    mult, left_shift, diff_min = softmax_params(beta, scale)
    assert left_shift == 31 and diff_min == 0
    rng = np.random.default_rng(1)
    check_bit_exact(q, rng)
    # Only the row maximum survives diff_min == 0: it gets all the probability mass.
    xs = rng.integers(-128, 128, size=(16, 3, 7)).astype(np.int8)
    ys = check_bit_exact(q, rng, xs=[xs])[0]
    is_max = xs == xs.max(axis=-1, keepdims=True)
    assert np.all(ys[~is_max] == -128)
    assert np.all(ys[is_max & (is_max.sum(-1, keepdims=True) == 1)] == 127)


@pytest.mark.parametrize("op", ["conv2d", "fully_connected"])
def test_saturated_bias_does_not_overflow_the_accumulator(op):
    """Tiny s_x * s_w saturates the int32 bias; bias + sum((x - zp) * w) must still fit int32."""
    rng = np.random.default_rng(0)
    b = Builder()
    if op == "conv2d":
        x = b.input((1, 4, 4, 8))
        w = b.const("w", rng.normal(size=(4, 3, 3, 8)) * 1e-3)
        y = b.op("conv2d", [x, w, b.const("b", np.full(4, 50.0))], stride=[1, 1], dilation=[1, 1],
                 pads=[1, 1, 1, 1], groups=1)
        k = 3 * 3 * 8
    else:
        x = b.input((1, 16))
        y = b.op("fully_connected", [x, b.const("w", rng.normal(size=(4, 16)) * 1e-3),
                                     b.const("b", np.full(4, -50.0))])
        k = 16
    q = quantize_random(b.finish(y), rng, log_scales=[-3.0], offsets=[0.0], method="minmax")
    bias = q.tensors[q.nodes[0].inputs[2]].data.astype(np.int64)
    assert np.all(np.abs(bias) + k * 255 * 128 <= 2**31 - 1)
    assert np.all(np.abs(bias) > 2**31 - 1 - k * 255 * 128 - 1)  # saturated, at the limit
    check_bit_exact(q, rng)


@pytest.mark.parametrize("op", ["mul", "conv2d"])
def test_degenerate_output_range_gives_no_oversized_shift(op):
    """An output that calibrates to [0, 0] gets a ~4e-11 scale and a multiplier >= 2^32:
    the C kernel shifted a 32-bit value by >= 32 bits (undefined). Found by the slow suite:
    mul(x, x) with act_max 0."""
    rng = np.random.default_rng(0)
    b = Builder()
    x = b.input((1, 3, 3, 2))
    if op == "mul":
        y = b.op("mul", [x, x], act_max=0.0)
    else:
        y = b.op("conv2d", [x, b.const("w", rng.normal(size=(3, 1, 1, 2)) * 10)], stride=[1, 1],
                 dilation=[1, 1], pads=[0, 0, 0, 0], groups=1, act_min=0.0, act_max=0.0)
    q = quantize_random(b.finish(y), rng, log_scales=[2.0], offsets=[0.0], method="minmax")
    assert q.tensors[y].quant.s < 1e-9
    ys = check_bit_exact(q, rng)[0]
    assert np.all(ys == q.tensors[y].quant.zp)  # real 0 everywhere, as the float model
