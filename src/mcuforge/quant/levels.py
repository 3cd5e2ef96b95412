"""Fusing b-bit activation grids (``quantize_levels``) into their producers after PTQ.

A ``quantize_levels`` node (frozen Squeeze-and-Threshold activation, threshold t, 2^b levels)
fixes its output quantization to the b-bit grid (scale t / (2^b - 1), zero point -128). Where its
input comes from an op with a fused activation (conv, fully connected, ...) that has no other
reader, the producer can requantize straight onto that grid: its output takes the grid's
quantization and its activation range becomes [max(act_min, 0), min(act_max, t)], i.e. int8
codes -128 .. -128 + 2^b - 1, and the table node goes away. That is one rounding (the
producer's fixed-point requantization) instead of two (int8 requantization, then the table),
so the integer model follows the float one more closely, and it saves the table pass.
"""

from __future__ import annotations

from ..ir.graph import Graph
from ..ops import get_op


def fuse_quantize_levels(graph: Graph) -> int:
    """In place on a quantized graph; returns the number of nodes fused."""
    fused = 0
    for node in [n for n in graph.nodes if n.op == "quantize_levels"]:
        x, y = node.inputs[0], node.outputs[0]
        producer = graph.producer(x)
        if (producer is None or not get_op(producer.op).fusable_activation or x in graph.outputs
                or graph.consumers(x) != [node] or len(producer.outputs) != 1):
            continue
        t = float(node.attrs["threshold"])
        lo, hi = producer.attrs.get("act_min"), producer.attrs.get("act_max")
        producer.attrs["act_min"] = 0.0 if lo is None else max(float(lo), 0.0)
        producer.attrs["act_max"] = t if hi is None else min(float(hi), t)
        producer.outputs[0] = y
        graph.remove_node(node)
        del graph.tensors[x]
        fused += 1
    if fused:
        graph.validate()
    return fused
