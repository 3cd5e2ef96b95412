"""conv2d: 2-D convolution over NHWC with groups (depthwise included), stride,
dilation, explicit padding and a fused clamp. 1-D convolutions are conv2d over
N,1,L,C tensors.

inputs: x [N,H,W,C], weight [O,KH,KW,C/groups], bias [O] (optional)
attrs:  stride [sh,sw], dilation [dh,dw], pads [top,bottom,left,right], groups,
        act_min, act_max
Integer semantics (TFLite per-channel conv): acc = bias + sum (x - zp_x) * w;
y = clamp(zp_y + MultiplyByQuantizedMultiplier(acc, M[o], shift[o])), with
M[o] * 2^shift[o] = s_x * s_w[o] / s_y. Padding contributes zero.
"""

from __future__ import annotations

import numpy as np

from ..errors import GraphError
from ..ir.graph import Graph, Node, QuantParams
from ..quant.fixedpoint import multiply_by_quantized_multiplier, quantize_multipliers, round_half_away
from .base import (OpDef, apply_float_activation, conv_out_size, quantized_activation_range,
                   require_attrs, t_in, t_out)
from .overlap import largest_safe_shift, last_pixel_reader
from .weight_storage import portable_weights


def conv2d_nhwc(x: np.ndarray, w: np.ndarray, stride, dilation, pads, groups: int) -> np.ndarray:
    """Float64 convolution; exact for integer-valued inputs (sums stay below 2^53)."""
    n, h, wd, c = x.shape
    o, kh, kw, cg = w.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh = conv_out_size(h, kh, sh, dh, pt, pb)
    ow = conv_out_size(wd, kw, sw, dw, pl, pr)
    # Gather patches [N, OH, OW, KH, KW, C] with strided views (no copies until reshape).
    rows = (np.arange(oh) * sh)[:, None] + np.arange(kh) * dh  # [OH, KH]
    cols = (np.arange(ow) * sw)[:, None] + np.arange(kw) * dw  # [OW, KW]
    patches = xp[:, rows[:, None, :, None], cols[None, :, None, :], :]  # [N,OH,OW,KH,KW,C]
    g = groups
    og = o // g
    patches = patches.reshape(n * oh * ow, kh * kw, g, cg).transpose(0, 2, 1, 3).reshape(n * oh * ow, g, kh * kw * cg)
    wg = w.astype(np.float64).reshape(g, og, kh * kw * cg)
    y = np.einsum("pgk,gok->pgo", patches, wg, optimize=True)
    return y.reshape(n, oh, ow, o)


class Conv2D(OpDef):
    name = "conv2d"
    kernel = "conv"
    fusable_activation = True
    num_inputs = (2, 3)

    def infer(self, node: Node, graph: Graph):
        require_attrs(node, "stride", "dilation", "pads", "groups")
        x, w = t_in(graph, node, 0), t_in(graph, node, 1)
        if len(x.shape) != 4 or len(w.shape) != 4:
            raise GraphError(f"node '{node.name}' (conv2d): input and weight must be rank 4, "
                             f"got {x.shape} and {w.shape}")
        n, h, wd, c = x.shape
        o, kh, kw, cg = w.shape
        g = int(node.attrs["groups"])
        if g < 1 or c % g or o % g or c // g != cg:
            raise GraphError(f"node '{node.name}' (conv2d): {c} input channels, {o} filters of depth "
                             f"{cg} do not fit groups={g}")
        if len(node.inputs) == 3 and node.inputs[2] and t_in(graph, node, 2).shape != (o,):
            raise GraphError(f"node '{node.name}' (conv2d): bias must have shape ({o},)")
        sh, sw = node.attrs["stride"]
        dh, dw = node.attrs["dilation"]
        pt, pb, pl, pr = node.attrs["pads"]
        if min(sh, sw, dh, dw) < 1 or min(pt, pb, pl, pr) < 0:
            raise GraphError(f"node '{node.name}' (conv2d): bad stride/dilation/padding {node.attrs}")
        oh = conv_out_size(h, kh, sh, dh, pt, pb)
        ow = conv_out_size(wd, kw, sw, dw, pl, pr)
        if oh < 1 or ow < 1:
            raise GraphError(f"node '{node.name}' (conv2d): kernel larger than the padded input {x.shape}")
        return [(n, oh, ow, o)]

    def _core(self, node: Node, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        a = node.attrs
        return conv2d_nhwc(x, w, a["stride"], a["dilation"], a["pads"], int(a["groups"]))

    def run_float(self, node, graph, xs):
        y = self._core(node, xs[0], xs[1])
        if len(xs) > 2 and xs[2] is not None:
            y = y + xs[2].astype(np.float64)
        return [apply_float_activation(node, y).astype(np.float32)]

    def requant(self, node: Node, graph: Graph):
        """Per-output-channel multiplier and shift, and the activation range."""
        sx, sy = t_in(graph, node, 0).quant.s, t_out(graph, node).quant.s
        sw = t_in(graph, node, 1).quant.scale.astype(np.float64)
        o = t_in(graph, node, 1).shape[0]
        real = np.float64(sx) * np.broadcast_to(sw, (o,)) / np.float64(sy)
        mult, shift = quantize_multipliers(real)
        return mult, shift, quantized_activation_range(node, t_out(graph, node).quant)

    def run_int(self, node, graph, xs):
        zx = t_in(graph, node, 0).quant.zp
        acc = self._core(node, xs[0].astype(np.int64) - zx, xs[1]).astype(np.int64)
        return [self.requantize_accumulator(node, graph, acc, xs[2] if len(xs) > 2 else None)]

    def requantize_accumulator(self, node: Node, graph: Graph, acc: np.ndarray, bias) -> np.ndarray:
        """bias + acc -> int8 output: per-channel MultiplyByQuantizedMultiplier, zero point, clamp."""
        if bias is not None:
            acc = acc + bias.astype(np.int64)
        mult, shift, (lo, hi) = self.requant(node, graph)
        y = multiply_by_quantized_multiplier(acc, mult, shift) + t_out(graph, node).quant.zp
        return np.clip(y, lo, hi).astype(np.int8)

    def quantize_constants(self, node, graph, options):
        quantize_weight_and_bias(node, graph, per_channel=True)

    def macs(self, node, graph):
        n, oh, ow, o = t_out(graph, node).shape
        _, kh, kw, cg = t_in(graph, node, 1).shape
        return oh * ow * o * kh * kw * cg

    def overlap_shift(self, node, graph, alignment=1):
        """The kernels' orders (ops/overlap.py), all of which must tolerate the shift:

        * mf_conv2d_s8 and mf_conv2d_ws_s8 (portable; compressed weights): per output pixel in raster
          order, per output channel o: read o's group over the window, write byte o. So the pixel's
          window is read again after its first bytes are written.
        * mf_conv_dsp_s8_* (DSP, not depthwise; compressed weights are decoded into the scratch
          first): per 3 output pixels, per group: the im2col of the 3 windows, then the group's
          channels of the 3 pixels.
        * mf_dwconv_dsp_s8_* (DSP depthwise): channel-outer. Per pair of input channels, every pixel of
          the pair is widened into the planes (scratch), then the pair's output channels are written
          at every pixel. Only writes that land on an input byte of the same or an earlier pair are
          safe: with one output per input channel, shifts by whole pixels.
        """
        x, wt, y = t_in(graph, node, 0), t_in(graph, node, 1), t_out(graph, node)
        if x.shape[0] != 1:
            return None
        a = node.attrs
        _, h, wd, c = x.shape
        _, oh, ow, o = y.shape
        _, kh, kw, cg = wt.shape
        groups = int(a["groups"])
        og = o // groups
        qlast = last_pixel_reader(x.shape, y.shape, (kh, kw), a["stride"], a["dilation"], a["pads"])
        qlast = qlast.reshape(-1, 1)
        unread = qlast < 0
        group_in, group_out = np.arange(c) // cg, np.arange(o) // og
        q = np.arange(oh * ow)[:, None]
        portable = (np.where(unread, -1, qlast * o + (group_in + 1) * og - 1), q * o + np.arange(o))
        if groups > 1 and cg == 1:
            pair_in, pair_out = np.arange(c) // 2, group_out // 2
            dsp = (np.broadcast_to(pair_in, (h * wd, c)), np.broadcast_to(pair_out, (oh * ow, o)))
        else:
            dsp = (np.where(unread, -1, qlast // 3 * groups + group_in), q // 3 * groups + group_out)
        return largest_safe_shift([(np.ravel(r), np.ravel(w)) for r, w in (portable, dsp)], alignment)

    def emit_c(self, node, graph, ctx):
        if ctx.target.has_dsp:  # fast kernels for DSP-extension cores (ops/dsp.py)
            from .dsp import emit_conv2d

            code = emit_conv2d(self, node, graph, ctx)
            if code:
                return code
        x, w, y = t_in(graph, node, 0), t_in(graph, node, 1), t_out(graph, node)
        a = node.attrs
        mult, shift, (lo, hi) = self.requant(node, graph)
        p = ctx.ident(node.name + "_p")
        m_id = ctx.array(node.name + "_mult", mult, "int32_t")
        s_id = ctx.array(node.name + "_shift", shift, "int32_t")
        bias = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else "NULL"
        ctx.decl(
            f"static const mf_conv_params {p} = {{\n"
            f"  {x.shape[1]}, {x.shape[2]}, {x.shape[3]}, {y.shape[1]}, {y.shape[2]}, {y.shape[3]},\n"
            f"  {w.shape[1]}, {w.shape[2]}, {a['stride'][0]}, {a['stride'][1]}, "
            f"{a['dilation'][0]}, {a['dilation'][1]}, {a['pads'][0]}, {a['pads'][2]}, {a['groups']},\n"
            f"  {-x.quant.zp}, {y.quant.zp}, {lo}, {hi}, {m_id}, {s_id}\n}};"
        )
        kernel, weights = portable_weights(node, graph, ctx, "mf_conv2d_s8")
        return f"{kernel}(&{p}, {ctx.buf(node.inputs[0])}, {weights}, {bias}, {ctx.buf(node.outputs[0])});"


def quantize_weight_and_bias(node: Node, graph: Graph, per_channel: bool, qmax: int = 127) -> None:
    """Symmetric int8 weights (per output channel or per tensor) in [-qmax, qmax] (127; 7 or 1 for
    4- or 2-bit weights), int32 bias at s_x * s_w."""
    wt = graph.tensors[node.inputs[1]]
    if wt.dtype != "float32":
        return  # already quantized (imported int8 model)
    w = wt.data.astype(np.float64)
    o = w.shape[0]
    if per_channel:
        maxabs = np.abs(w.reshape(o, -1)).max(axis=1)
    else:
        maxabs = np.full(1, np.abs(w).max())
    scale = np.where(maxabs > 0, maxabs / qmax, 1.0).astype(np.float32)
    wq = QuantParams(scale, np.zeros_like(scale, dtype=np.int64), 0 if per_channel else None)
    wt.data = np.clip(wq.quantize(w, "int8"), -qmax, qmax)
    wt.dtype, wt.quant = "int8", wq
    if len(node.inputs) > 2 and node.inputs[2]:
        bt = graph.tensors[node.inputs[2]]
        sx = np.float64(graph.tensors[node.inputs[0]].quant.s)
        bscale = (sx * scale.astype(np.float64)) * np.ones(o)
        # The kernels accumulate bias + sum((x - zp_x) * w) in int32: leave room for the sum
        # (|x - zp_x| <= 255, |w| <= 128, K terms) so that the accumulator cannot overflow.
        limit = 2**31 - 1 - int(np.prod(wt.shape[1:])) * 255 * 128
        bq = np.clip(round_half_away(bt.data.astype(np.float64) / bscale), -limit, limit)
        bt.data = bq.astype(np.int32)
        bt.dtype = "int32"
        bt.quant = QuantParams(bscale.astype(np.float32), np.zeros(o, np.int64), 0)
