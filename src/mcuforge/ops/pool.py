"""avg_pool2d and max_pool2d over NHWC windows, with a fused clamp.

attrs: kernel [kh,kw], stride [sh,sw], pads [top,bottom,left,right],
       count_include_pad (avg only), act_min, act_max
Input and output share quantization (TFLite). Integer semantics:
avg: the int8 values in the window are summed (padding counts as the zero
point when count_include_pad, else is left out of sum and count), then divided
by the count rounding half away from zero; max: the largest int8 value.
Global average pooling is avg_pool2d with the window covering the input.
"""

from __future__ import annotations

import numpy as np

from ..errors import GraphError
from .base import (OpDef, apply_float_activation, conv_out_size, quantized_activation_range,
                   require_attrs, t_in, t_out)
from .overlap import largest_safe_shift, last_pixel_reader


def _windows(x: np.ndarray, kernel, stride, pads, fill) -> np.ndarray:
    """[N, OH, OW, KH, KW, C] windows of x padded with `fill`."""
    kh, kw = kernel
    sh, sw = stride
    pt, pb, pl, pr = pads
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=fill)
    oh = conv_out_size(x.shape[1], kh, sh, 1, pt, pb)
    ow = conv_out_size(x.shape[2], kw, sw, 1, pl, pr)
    rows = (np.arange(oh) * sh)[:, None] + np.arange(kh)
    cols = (np.arange(ow) * sw)[:, None] + np.arange(kw)
    return xp[:, rows[:, None, :, None], cols[None, :, None, :], :]


class _Pool2D(OpDef):
    fusable_activation = True
    output_shares_input_quant = True
    kernel = "pool"

    def infer(self, node, graph):
        require_attrs(node, "kernel", "stride", "pads")
        x = t_in(graph, node)
        if len(x.shape) != 4:
            raise GraphError(f"node '{node.name}' ({node.op}): input must be rank 4 (NHWC), got {x.shape}")
        (kh, kw), (sh, sw), (pt, pb, pl, pr) = node.attrs["kernel"], node.attrs["stride"], node.attrs["pads"]
        if max(pt, pb) >= kh or max(pl, pr) >= kw:
            raise GraphError(f"node '{node.name}' ({node.op}): padding must be smaller than the window")
        oh = conv_out_size(x.shape[1], kh, sh, 1, pt, pb)
        ow = conv_out_size(x.shape[2], kw, sw, 1, pl, pr)
        if oh < 1 or ow < 1:
            raise GraphError(f"node '{node.name}' ({node.op}): window larger than the input {x.shape}")
        return [(x.shape[0], oh, ow, x.shape[3])]

    def check(self, node, graph):
        super().check(node, graph)
        qi, qo = t_in(graph, node).quant, t_out(graph, node).quant
        if qi is not None and not qi.same_as(qo):
            raise GraphError(f"node '{node.name}' ({node.op}): input and output must share quantization")

    def overlap_shift(self, node, graph, alignment=1):
        """The kernels' orders (ops/overlap.py): mf_*_pool_s8 (portable): per output pixel in raster
        order, per channel: the window, then the byte; mf_*_pool_dsp_s8: per output pixel, per block
        of 4 channels (the last channels one by one): the window, then the block's bytes."""
        x, y = t_in(graph, node), t_out(graph, node)
        a = node.attrs
        c = x.shape[3]
        qlast = last_pixel_reader(x.shape, y.shape, a["kernel"], a["stride"], (1, 1), a["pads"]).reshape(-1, 1)
        unread = qlast < 0
        q = np.arange(y.shape[1] * y.shape[2])[:, None]
        ch = np.arange(c)
        c4 = c & ~3
        block, blocks = np.where(ch < c4, ch // 4, c4 // 4 + ch - c4), c4 // 4 + c - c4
        timelines = [(np.where(unread, -1, qlast * c + ch), q * c + ch),
                     (np.where(unread, -1, qlast * blocks + block), q * blocks + block)]
        return largest_safe_shift([(np.ravel(r), np.ravel(w)) for r, w in timelines], alignment)

    def _emit(self, node, graph, ctx, fn: str) -> str:
        x, y = t_in(graph, node), t_out(graph, node)
        a = node.attrs
        lo, hi = quantized_activation_range(node, y.quant)
        p = ctx.ident(node.name + "_p")
        ctx.decl(
            f"static const mf_pool_params {p} = {{ {x.shape[1]}, {x.shape[2]}, {x.shape[3]}, "
            f"{y.shape[1]}, {y.shape[2]}, {a['kernel'][0]}, {a['kernel'][1]}, {a['stride'][0]}, "
            f"{a['stride'][1]}, {a['pads'][0]}, {a['pads'][2]}, "
            f"{1 if a.get('count_include_pad') else 0}, {x.quant.zp}, {lo}, {hi} }};"
        )
        if ctx.target.has_dsp:  # four channels per word (kernels/mf_pool_dsp.c)
            ctx.use_kernel_files("mf_dsp.h", "mf_dsp_kernels.h", "mf_pool_dsp.c")
            fn = fn.replace("_s8", "_dsp_s8")
        return f"{fn}(&{p}, {ctx.buf(node.inputs[0])}, {ctx.buf(node.outputs[0])});"


class AvgPool2D(_Pool2D):
    name = "avg_pool2d"

    def run_float(self, node, graph, xs):
        a = node.attrs
        win = _windows(xs[0].astype(np.float64), a["kernel"], a["stride"], a["pads"], np.nan)
        if a.get("count_include_pad"):
            y = np.nan_to_num(win, nan=0.0).mean(axis=(3, 4))
        else:
            y = np.nanmean(win, axis=(3, 4))
        return [apply_float_activation(node, y).astype(np.float32)]

    def run_int(self, node, graph, xs):
        a = node.attrs
        zp = t_in(graph, node).quant.zp
        if a.get("count_include_pad"):
            win = _windows(xs[0].astype(np.int64), a["kernel"], a["stride"], a["pads"], zp)
            total = win.sum(axis=(3, 4))
            count = np.full_like(total, a["kernel"][0] * a["kernel"][1])
        else:
            marker = np.iinfo(np.int64).min
            win = _windows(xs[0].astype(np.int64), a["kernel"], a["stride"], a["pads"], marker)
            valid = win != marker
            total = np.where(valid, win, 0).sum(axis=(3, 4))
            count = valid.sum(axis=(3, 4))
        # C division truncates toward zero; TFLite rounds half away from zero by adding count/2.
        half = count // 2
        num = np.where(total > 0, total + half, total - half)
        y = np.sign(num) * (np.abs(num) // count)
        lo, hi = quantized_activation_range(node, t_out(graph, node).quant)
        return [np.clip(y, lo, hi).astype(np.int8)]

    def emit_c(self, node, graph, ctx):
        return self._emit(node, graph, ctx, "mf_avg_pool_s8")


class MaxPool2D(_Pool2D):
    name = "max_pool2d"

    def run_float(self, node, graph, xs):
        a = node.attrs
        win = _windows(xs[0].astype(np.float64), a["kernel"], a["stride"], a["pads"], -np.inf)
        return [apply_float_activation(node, win.max(axis=(3, 4))).astype(np.float32)]

    def run_int(self, node, graph, xs):
        a = node.attrs
        win = _windows(xs[0].astype(np.int64), a["kernel"], a["stride"], a["pads"], -(2**31))
        lo, hi = quantized_activation_range(node, t_out(graph, node).quant)
        return [np.clip(win.max(axis=(3, 4)), lo, hi).astype(np.int8)]

    def emit_c(self, node, graph, ctx):
        return self._emit(node, graph, ctx, "mf_max_pool_s8")
