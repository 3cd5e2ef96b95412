"""C emission of the fast kernels for cores with the DSP extension (ops/kernels/mf_*_dsp.c).

The op emitters (conv2d incl. depthwise, fully_connected, add) call in here when
``ctx.target.has_dsp`` (the pools pick mf_pool_dsp.c themselves: same parameters); an emitter
returns None for a configuration its kernel does not cover and the op falls back to its
portable kernel. Nothing here changes the integer semantics: every constant is
derived from the op's own parameters (``requant``, ``params``) and the kernels are tested
bit-exact against the integer reference, on the host (emulated intrinsics, sanitizers) and
on QEMU.

Work moved to code generation:

* the input zero point is folded into the bias, bias' = bias - zp_x sum(w) (modulo 2^32, as
  the int32 accumulator computes), so activations enter the products raw and padding
  reads as zp_x;
* weights are packed as little-endian words in the order the kernel reads them;
* per layer, the requantization variant: ``fast`` (SMMLAR, see kernels/mf_dsp.h) where every
  channel has a right shift >= 1 and the layer's exact accumulator range (from its weights,
  bias and the int8 input range) keeps the fast formula's intermediates in int32; else ``exact``
  (TFLite's MultiplyByQuantizedMultiplier); ``_clamp`` where the fused activation narrows
  [-128, 127].
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Node
from .base import quantized_activation_range, t_in, t_out
from .weight_storage import emit_dsp_decode, emit_wstore, is_compressed

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
Q_WORDS = 4  # per output channel: bias, multiplier, a, b (kernels/mf_dsp.h)
HEADERS = ("mf_dsp.h", "mf_dsp_kernels.h")


def wrap32(v) -> np.ndarray:
    """Values modulo 2^32 as int32 (what an int32 accumulator holds)."""
    return ((np.asarray(v, np.int64) + 2**31) % 2**32 - 2**31).astype(np.int64)


def acc_range(w: np.ndarray, bias: np.ndarray, zp_x: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-output-channel range of bias + sum (x - zp_x) w over int8 inputs x (w: [O, K])."""
    w = w.astype(np.int64)
    hi_x, lo_x = 127 - zp_x, -128 - zp_x
    amax = bias + np.where(w > 0, w * hi_x, w * lo_x).sum(axis=1)
    amin = bias + np.where(w > 0, w * lo_x, w * hi_x).sum(axis=1)
    return amin, amax


def fast_requant_ok(amin, amax, mult, shift, zp_y: int, acc_scale: int = 2) -> bool:
    """Whether mf_dsp_requant's fast form is exact for every accumulator in [amin, amax].

    acc_scale: the factor the kernel holds the accumulator with before SMMLAR (2: acc * 2)."""
    amin, amax = np.asarray(amin, np.int64), np.asarray(amax, np.int64)
    mult, shift = np.asarray(mult, np.int64), np.asarray(shift, np.int64)
    e = np.where(mult == 0, 1, -shift)
    if np.any(e < 1) or np.any(e > 30):
        return False
    if np.any(amin * acc_scale < INT32_MIN) or np.any(amax * acc_scale > INT32_MAX):
        return False
    c = (1 << (e - 1)) + zp_y * (1 << e)
    rmax = (amax * mult) // 2**31 + 1
    rmin = (amin * mult) // 2**31 - 1
    return bool(np.all(rmax + c <= INT32_MAX) and np.all(rmin + c - 1 >= INT32_MIN))


def requant_records(bias_folded, mult, shift, zp_y: int, fast: bool, bias_scale: int = 1) -> np.ndarray:
    """[O, 4] int32 records: bias' (times bias_scale), multiplier, and (C, e) or (shift, zp_y)."""
    o = len(mult)
    rec = np.zeros((o, Q_WORDS), np.int64)
    rec[:, 0] = wrap32(np.asarray(bias_folded, np.int64) * bias_scale)
    rec[:, 1] = mult
    if fast:
        e = np.where(np.asarray(mult) == 0, 1, -np.asarray(shift, np.int64))
        rec[:, 2] = (1 << (e - 1)) + zp_y * (1 << e)
        rec[:, 3] = e
    else:
        rec[:, 2] = shift
        rec[:, 3] = zp_y
    return rec


def pack_words(b: np.ndarray) -> np.ndarray:
    """int8 bytes (last axis a multiple of 4) -> little-endian uint32 words."""
    u = np.ascontiguousarray(b.astype(np.int8)).view(np.uint8).astype(np.uint64)
    u = u.reshape(-1, 4)
    return (u[:, 0] | (u[:, 1] << 8) | (u[:, 2] << 16) | (u[:, 3] << 24)).astype(np.uint64)


def _variant(fast: bool, lo: int, hi: int) -> str:
    return ("fast" if fast else "exact") + ("_clamp" if (lo, hi) != (-128, 127) else "")


def _bias(graph: Graph, node: Node, o: int) -> np.ndarray:
    if len(node.inputs) > 2 and node.inputs[2]:
        return graph.tensors[node.inputs[2]].data.astype(np.int64).reshape(o)
    return np.zeros(o, np.int64)


def _requant_setup(op, node, graph, w2d: np.ndarray):
    """Folded bias, records and variant for a conv/fc layer with weights w2d [O, K]."""
    x, y = t_in(graph, node, 0), t_out(graph, node)
    mult, shift, (lo, hi) = op.requant(node, graph)
    o = w2d.shape[0]
    bias = _bias(graph, node, o)
    zp_x, zp_y = int(x.quant.zp), int(y.quant.zp)
    amin, amax = acc_range(w2d, bias, zp_x)
    fast = fast_requant_ok(amin, amax, mult, shift, zp_y)
    folded = bias - zp_x * w2d.astype(np.int64).sum(axis=1)
    return requant_records(folded, mult, shift, zp_y, fast), _variant(fast, lo, hi), lo, hi


def _weights(node: Node, graph: Graph, ctx, words: np.ndarray, kernel_scratch: int, k: int, og: int,
             lanes: int, chunks: int) -> tuple[str, str, str]:
    """The packed weight words of a conv/fc kernel: (their C expression, code to run before the kernel,
    the kernel's scratch). int8 storage: a flash array. Compressed storage (ops/weight_storage.py):
    decoded into the words' arrangement at the start of the scratch, the kernel's scratch after it."""
    if not is_compressed(node):
        return ctx.array(node.name + "_wpk", words, "uint32_t"), "", ctx.scratch(kernel_scratch)
    nbytes = 4 * words.size
    scratch = ctx.scratch(nbytes + kernel_scratch)
    decode = emit_dsp_decode(node, graph, ctx, scratch, k, og, lanes, chunks, nbytes)
    return scratch, decode + "\n    ", f"({scratch} + {words.size})"


# --- conv2d ------------------------------------------------------------------------------------

def emit_conv2d(op, node: Node, graph: Graph, ctx) -> str | None:
    x, wt, y = t_in(graph, node, 0), t_in(graph, node, 1), t_out(graph, node)
    a = node.attrs
    groups = int(a["groups"])
    o, kh, kw, cg = wt.shape
    if wt.dtype != "int8" or x.dtype != "int8" or y.dtype != "int8" or x.shape[0] != 1:
        return None
    if groups > 1 and cg == 1:
        return emit_dwconv(op, node, graph, ctx)
    og = o // groups
    og_pad = og + (og & 1)
    k = kh * kw * cg
    chunks = -(-k // 8) * 2
    w = wt.data.astype(np.int64).reshape(o, k)
    rec, variant, lo, hi = _requant_setup(op, node, graph, w)
    # per group: output channels padded to even, columns padded to 4 * chunks
    wg = np.zeros((groups, og_pad, chunks * 4), np.int64)
    wg[:, :og, :k] = w.reshape(groups, og, k)
    # [g, pair, 2, chunks, 4] -> [g, pair, chunks, 2, 4]: per chunk the two channels' words
    words = pack_words(wg.reshape(groups, og_pad // 2, 2, chunks, 4).transpose(0, 1, 3, 2, 4))
    rg = np.zeros((groups, og_pad, Q_WORDS), np.int64)
    rg[:, :og] = rec.reshape(groups, og, Q_WORDS)
    # per pair of channels: bias0, bias1, (multiplier, a, b) of channel 0, then of channel 1
    rg = rg.reshape(groups, og_pad // 2, 2, Q_WORDS)
    rg = np.concatenate([rg[:, :, :, 0], rg[:, :, 0, 1:], rg[:, :, 1, 1:]], axis=2)
    ctx.use_kernel_files(*HEADERS, "mf_conv_dsp.c")
    kernel_scratch = 24 * chunks + (4 * chunks if cg % 4 else 0)  # 3 int16 columns (+ a byte stage)
    w_id, decode, scratch = _weights(node, graph, ctx, words, kernel_scratch, k, og, 2, chunks)
    q_id = ctx.array(node.name + "_q", rg, "int32_t")
    p = ctx.ident(node.name + "_p")
    ctx.decl(
        f"static const mf_conv_dsp_params {p} = {{\n"
        f"  {x.shape[1]}, {x.shape[2]}, {x.shape[3]}, {y.shape[1]}, {y.shape[2]}, {y.shape[3]},\n"
        f"  {kh}, {kw}, {a['stride'][0]}, {a['stride'][1]}, {a['dilation'][0]}, {a['dilation'][1]}, "
        f"{a['pads'][0]}, {a['pads'][2]}, {groups},\n"
        f"  {x.quant.zp}, {chunks}, {lo}, {hi}, {q_id}, {w_id}\n}};"
    )
    return decode + (f"mf_conv_dsp_s8_{variant}(&{p}, {ctx.buf(node.inputs[0])}, {ctx.buf(node.outputs[0])}, "
                     f"{scratch});")


def emit_dwconv(op, node: Node, graph: Graph, ctx) -> str:
    """Depthwise conv2d (groups = in_c, weights [C m, KH, KW, 1]) -> mf_dwconv_dsp.c."""
    x, wt, y = t_in(graph, node, 0), t_in(graph, node, 1), t_out(graph, node)
    a = node.attrs
    o, kh, kw, _ = wt.shape
    _, h, wd, c = x.shape
    _, oh, ow, _ = y.shape
    (sh, sw), (dh, dw), pads = a["stride"], a["dilation"], a["pads"]
    w = wt.data.astype(np.int64).reshape(o, kh, kw)
    mult, shift, (lo, hi) = op.requant(node, graph)
    bias = _bias(graph, node, o)
    zp_x, zp_y = int(x.quant.zp), int(y.quant.zp)
    amin, amax = acc_range(w.reshape(o, -1), bias, zp_x)
    fast = fast_requant_ok(amin, amax, mult, shift, zp_y)
    scale = 2 if fast else 1  # the fast variants keep 2 acc: weights and bias doubled (2 w fits int16)
    folded = bias - zp_x * w.reshape(o, -1).sum(axis=1)
    rec = requant_records(folded, mult, shift, zp_y, fast, bias_scale=scale)
    # The kernel's rows: the input's rows, or its columns (transposed) where that makes them long
    # and 3-wide at stride 1 (the two-output form).
    three_n = kw == 3 and sw == 1 and dw == 1
    three_t = kh == 3 and sh == 1 and dh == 1
    transposed = three_t and (not three_n or oh > ow)
    if transposed:
        geo = dict(in_h=wd, in_w=h, in_sy=c, in_sx=wd * c, out_h=ow, out_w=oh, out_sy=c * (o // c),
                   out_sx=ow * o, k=(kw, kh), s=(sw, sh), d=(dw, dh), pad=(pads[2], pads[0]))
        w = w.transpose(0, 2, 1)
    else:
        geo = dict(in_h=h, in_w=wd, in_sy=wd * c, in_sx=c, out_h=oh, out_w=ow, out_sy=ow * o, out_sx=o,
                   k=(kh, kw), s=(sh, sw), d=(dh, dw), pad=(pads[0], pads[2]))
    vkh, vkw = geo["k"]
    three = vkw == 3 and geo["s"][1] == 1 and geo["d"][1] == 1
    ws = w * scale
    if three:  # per row (w0, w1), (w1, w2)
        pairs = np.stack([ws[:, :, 0:2], ws[:, :, 1:3]], axis=2)  # [o, kh, 2, 2]
    else:  # per row (w[2i], w[2i+1]), zero-padded
        kp = (vkw + 1) // 2
        padded = np.zeros((o, vkh, 2 * kp), np.int64)
        padded[:, :, :vkw] = ws
        pairs = padded
    pairs = pairs.reshape(o, -1, 2)
    words = (pairs[:, :, 0] & 0xFFFF) | ((pairs[:, :, 1] & 0xFFFF) << 16)
    blob = np.concatenate([words, rec & 0xFFFFFFFF], axis=1)  # per channel: weights, then its record
    plane_h = (geo["out_h"] - 1) * geo["s"][0] + (vkh - 1) * geo["d"][0] + 1
    plane_w = (geo["out_w"] - 1) * geo["s"][1] + (vkw - 1) * geo["d"][1] + 1 + 2
    plane_w += plane_w & 1
    ctx.use_kernel_files(*HEADERS, "mf_dwconv_dsp.c")
    planes = 4 * (plane_h * plane_w + 2)  # two int16 planes
    decode = ""
    if is_compressed(node):  # the blob is built in the scratch from the decoded weights and the records
        tmp_words = -(-(o * kh * kw) // 4)
        base = ctx.scratch(4 * (blob.size + tmp_words) + planes)
        ws = emit_wstore(node, graph, ctx)
        q_id = ctx.array(node.name + "_q", rec, "int32_t")
        decode = (f"mf_wdecode_dwconv(&{ws}, {q_id}, {base}, (int8_t *)({base} + {blob.size}), {o}, {kh}, {kw}, "
                  f"{int(transposed)}, {int(three)}, {scale});\n    ")
        w_id, scratch = base, f"({base} + {blob.size + tmp_words})"
    else:
        w_id = ctx.array(node.name + "_wq", blob, "uint32_t")
        scratch = ctx.scratch(planes)
    p = ctx.ident(node.name + "_p")
    g = geo
    ctx.decl(
        f"static const mf_dwconv_dsp_params {p} = {{\n"
        f"  {g['in_h']}, {g['in_w']}, {g['in_sy']}, {g['in_sx']}, {c}, {o // c},\n"
        f"  {g['out_h']}, {g['out_w']}, {g['out_sy']}, {g['out_sx']},\n"
        f"  {vkh}, {vkw}, {g['s'][0]}, {g['s'][1]}, {g['d'][0]}, {g['d'][1]}, {g['pad'][0]}, {g['pad'][1]},\n"
        f"  {zp_x}, {plane_h}, {plane_w}, {int(three)}, {lo}, {hi}, {w_id}\n}};"
        + (" /* transposed: kernel rows are the input's columns */" if transposed else "")
    )
    return decode + (f"mf_dwconv_dsp_s8_{_variant(fast, lo, hi)}(&{p}, {ctx.buf(node.inputs[0])}, "
                     f"{ctx.buf(node.outputs[0])}, {scratch});")


def dsp_weight_bytes(node: Node, graph: Graph) -> int:
    """Flash bytes of an int8 conv/fc layer's weights as the emitters above arrange them (without the
    requantization records): padded words (conv, fc), int16 weight pairs (depthwise)."""
    x, wt, y = t_in(graph, node, 0), t_in(graph, node, 1), t_out(graph, node)
    if node.op == "fully_connected":
        o, k = wt.shape
        return -(-o // 4) * 4 * (-(-k // 8) * 2) * 4
    o, kh, kw, cg = wt.shape
    a = node.attrs
    groups = int(a["groups"])
    if not (groups > 1 and cg == 1):
        og = o // groups
        return groups * (og + (og & 1)) * (-(-(kh * kw * cg) // 8) * 2) * 4
    (sh, sw), (dh, dw) = a["stride"], a["dilation"]
    three_n = kw == 3 and sw == 1 and dw == 1
    three_t = kh == 3 and sh == 1 and dh == 1
    transposed = three_t and (not three_n or y.shape[1] > y.shape[2])
    vkh, vkw = (kw, kh) if transposed else (kh, kw)
    vsw, vdw = (sh, dh) if transposed else (sw, dw)
    three = vkw == 3 and vsw == 1 and vdw == 1
    return o * vkh * (2 if three else (vkw + 1) // 2) * 4


# --- fully_connected -----------------------------------------------------------------------------

def emit_fc(op, node: Node, graph: Graph, ctx) -> str | None:
    x, wt, y = t_in(graph, node, 0), t_in(graph, node, 1), t_out(graph, node)
    if wt.dtype != "int8" or x.dtype != "int8" or y.dtype != "int8":
        return None
    o, k = wt.shape
    rows = int(np.prod(x.shape[:-1]))
    chunks = -(-k // 8) * 2
    w = wt.data.astype(np.int64).reshape(o, k)
    rec, variant, lo, hi = _requant_setup(op, node, graph, w)
    o4 = -(-o // 4) * 4
    wp = np.zeros((o4, chunks * 4), np.int64)
    wp[:o, :k] = w
    # [group, 4 features, chunks, 4] -> [group, chunks, 4 features, 4]
    words = pack_words(wp.reshape(o4 // 4, 4, chunks, 4).transpose(0, 2, 1, 3))
    rq = np.zeros((o4, Q_WORDS), np.int64)
    rq[:o] = rec
    # per group of 4 features: the 4 biases, then (multiplier, a, b) of each
    rq = rq.reshape(o4 // 4, 4, Q_WORDS)
    rq = np.concatenate([rq[:, :, 0], rq[:, :, 1:].reshape(o4 // 4, 12)], axis=1)
    ctx.use_kernel_files(*HEADERS, "mf_dense_dsp.c")
    w_id, decode, scratch = _weights(node, graph, ctx, words, 8 * chunks, k, o, 4, chunks)
    q_id = ctx.array(node.name + "_q", rq, "int32_t")
    p = ctx.ident(node.name + "_p")
    ctx.decl(f"static const mf_fc_dsp_params {p} = {{ {rows}, {k}, {o}, {chunks}, {lo}, {hi}, {q_id}, {w_id} }};")
    return decode + f"mf_fc_dsp_s8_{variant}(&{p}, {ctx.buf(node.inputs[0])}, {ctx.buf(node.outputs[0])}, {scratch});"


# --- add ------------------------------------------------------------------------------------------

def emit_add(op, node: Node, graph: Graph, ctx) -> str | None:
    """Same-shape int8 add -> mf_binary_dsp.c (two 256-entry tables of each input's exact rescaling)."""
    from ..quant.fixedpoint import multiply_by_quantized_multiplier

    a, b, y = t_in(graph, node, 0), t_in(graph, node, 1), t_out(graph, node)
    if a.shape != b.shape or a.shape != y.shape or {a.dtype, b.dtype, y.dtype} != {"int8"}:
        return None
    prm = op.params(node, graph)
    v = np.arange(-128, 128, dtype=np.int64)
    ls = prm["left_shift"]
    ta = 2 * multiply_by_quantized_multiplier((v - a.quant.zp) << ls, prm["a_mult"], prm["a_shift"])
    tb = 2 * multiply_by_quantized_multiplier((v - b.quant.zp) << ls, prm["b_mult"], prm["b_shift"])
    ta, tb = np.asarray(ta, np.int64), np.asarray(tb, np.int64)
    smin, smax = int(ta.min() + tb.min()), int(ta.max() + tb.max())
    if min(ta.min(), tb.min(), smin) < INT32_MIN or max(ta.max(), tb.max(), smax) > INT32_MAX:
        return None  # the doubled sums would not fit the kernel's int32
    lo, hi = quantized_activation_range(node, y.quant)
    zp_y = int(y.quant.zp)
    mult, shift = np.array([prm["out_mult"]]), np.array([prm["out_shift"]])
    fast = fast_requant_ok([smin // 2], [smax // 2], mult, shift, zp_y)
    rec = requant_records([0], mult, shift, zp_y, fast)[0]
    ctx.use_kernel_files(*HEADERS, "mf_binary_dsp.c")
    ta_id = ctx.array(node.name + "_ta", ta, "int32_t")
    tb_id = ctx.array(node.name + "_tb", tb, "int32_t")
    p = ctx.ident(node.name + "_p")
    ctx.decl(f"static const mf_add_dsp_params {p} = {{ {y.size}, {ta_id} + 128, {tb_id} + 128, "
             f"{rec[1]}, {rec[2]}, {rec[3]}, {lo}, {hi} }};")
    return (f"mf_add_dsp_s8_{_variant(fast, lo, hi)}(&{p}, {ctx.buf(node.inputs[0])}, {ctx.buf(node.inputs[1])}, "
            f"{ctx.buf(node.outputs[0])});")
