"""Compressed weight storage of quantized graphs: low-bit weights, weight sharing, sparsity.

Every function here takes a quantized graph and returns a new one; the input is untouched.
They change which int8 values a conv2d / fully_connected weight tensor holds (and, for low-bit
weights, its scales and what depends on them) and set the node attribute ``weight_storage``
that tells the C emitter how to store them (formats: mcuforge.ops.weight_storage). The
integer reference computes exactly as for any int8 graph, and the generated C is bit-exact
with it.
"""

from __future__ import annotations

import numpy as np

from ..errors import McuforgeError
from ..ir.graph import Graph, Node
from ..ops.dsp import dsp_weight_bytes
from ..ops.weight_storage import (MAX_CODEBOOK, PACKED_RANGE, WEIGHT_OPS, encode_weights, is_compressed,
                                  weight_storage)

BITS = (8, 4, 2)


class StorageError(McuforgeError):
    """A compression request names an unknown layer or an unsupported setting."""


def weight_layers(graph: Graph) -> list[Node]:
    """The conv2d (depthwise included) and fully_connected nodes with constant weights, in order."""
    return [n for n in graph.nodes if n.op in WEIGHT_OPS and graph.tensors[n.inputs[1]].is_const]


def _check_names(graph: Graph, names, what: str) -> None:
    known = {n.name for n in weight_layers(graph)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise StorageError(f"{what}: no conv2d/fully_connected layer named {', '.join(map(repr, unknown))} "
                           f"(layers: {', '.join(sorted(known)) or 'none'})")


def _check_quantized(graph: Graph) -> None:
    if not graph.is_quantized:
        raise StorageError(f"graph '{graph.name}' is not quantized: compress weights after quantization")


def quantize_weights_to_bits(graph: Graph, bits: dict[str, int],
                             float_weights: dict[str, np.ndarray] | None = None) -> Graph:
    """Per-layer 8-, 4- or 2-bit symmetric per-channel weights.

    bits: node name -> 8, 4 or 2. Each named node's weights are re-quantized symmetrically per
    output channel (per tensor where the layer was) to [-qmax, qmax], qmax = 2^(bits-1) - 1
    (127, 7, 1; scale = max|w| / qmax), from `float_weights[name]` (the float weights in the
    IR layout, e.g. of the float graph before PTQ) when given, else from the dequantized int8
    weights. The int32 bias is re-quantized at the new s_x * s_w from its real value; the
    requantization multipliers follow from the scales (ops derive them). 4- and 2-bit layers
    get ``weight_storage = {"format": "packed", "bits": b}``, 8-bit layers lose any storage
    attribute. Same semantics as quant/ptq.py: ops.conv.quantize_weight_and_bias does the work.
    """
    from ..ops.conv import quantize_weight_and_bias

    _check_quantized(graph)
    _check_names(graph, bits, "weight bits")
    bad = {k: v for k, v in bits.items() if v not in BITS}
    if bad:
        raise StorageError(f"weight bits must be 8, 4 or 2, got {bad}")
    g = graph.copy()
    for node in weight_layers(g):
        if node.name not in bits:
            continue
        b = bits[node.name]
        wt = g.tensors[node.inputs[1]]
        per_channel = wt.quant.per_channel
        if float_weights is not None and node.name in float_weights:
            w = np.asarray(float_weights[node.name], np.float32)
            if w.shape != wt.shape:
                raise StorageError(f"float weights of '{node.name}' have shape {w.shape}, the layer's {wt.shape}")
        else:
            w = wt.float_data()
        wt.data, wt.dtype, wt.quant = w, "float32", None
        if len(node.inputs) > 2 and node.inputs[2]:
            bt = g.tensors[node.inputs[2]]
            bt.data, bt.dtype, bt.quant = bt.float_data(), "float32", None
        quantize_weight_and_bias(node, g, per_channel=per_channel, qmax=2 ** (b - 1) - 1)
        if b == 8:
            node.attrs.pop("weight_storage", None)
        else:
            node.attrs["weight_storage"] = {"format": "packed", "bits": b}
    g.validate()
    return g


def share_weights(graph: Graph, k: dict[str, int], relevance: dict[str, np.ndarray] | None = None,
                  seed: int = 0) -> Graph:
    """Per-layer weight sharing: k-means of the layer's int8 weights into a codebook of k values.

    k: node name -> codebook size (2..16). relevance: node name -> non-negative weights of the
    layer's shape (e.g. DeepLIFT relevance), used as k-means sample weights so that relevant
    weights keep their values more closely. The centroids are rounded to int8; every weight is
    replaced by its cluster's rounded centroid (rounding may merge centroids: at most k distinct
    values). Sets ``weight_storage = {"format": "codebook", "k": k}``.

    The int8 values are clustered directly, in the layer's own (per-channel) scales: with
    per-channel scales a float codebook would not give shared int8 values, while the int8 values
    are already each channel's weights normalized to its range, so clusters are comparable across
    channels. Scales, bias and requantization stay as they are, and the codebook holds exactly the
    int8 values the reference multiplies with.
    """
    from sklearn.cluster import KMeans

    _check_quantized(graph)
    _check_names(graph, k, "weight sharing")
    bad = {n: v for n, v in k.items() if not (isinstance(v, (int, np.integer)) and 2 <= v <= MAX_CODEBOOK)}
    if bad:
        raise StorageError(f"weight sharing takes 2..{MAX_CODEBOOK} codebook entries per layer, got {bad}")
    if relevance is not None:
        _check_names(graph, relevance, "relevance")
    g = graph.copy()
    for node in weight_layers(g):
        if node.name not in k:
            continue
        wt = g.tensors[node.inputs[1]]
        if wt.dtype != "int8":
            raise StorageError(f"layer '{node.name}': weight sharing needs int8 weights, has {wt.dtype}")
        w = wt.data.astype(np.float64).ravel()
        sample_weight = None
        if relevance is not None and node.name in relevance:
            r = np.asarray(relevance[node.name], np.float64)
            if r.size != w.size or np.any(r < 0) or not np.all(np.isfinite(r)):
                raise StorageError(f"relevance of '{node.name}' must be {wt.shape} non-negative finite values")
            sample_weight = r.ravel() + 1e-12  # all-zero relevance would leave k-means undefined
        kk = int(k[node.name])
        values = np.unique(w)
        if values.size <= kk:
            shared = wt.data.copy()  # already at most k distinct values
        else:
            km = KMeans(n_clusters=kk, n_init=4, random_state=seed).fit(w[:, None], sample_weight=sample_weight)
            centroids = np.clip(np.round(km.cluster_centers_[:, 0]), -128, 127)
            shared = centroids[km.labels_].reshape(wt.shape).astype(np.int8)
        wt.data = shared
        node.attrs["weight_storage"] = {"format": "codebook", "k": kk}
    g.validate()
    return g


def choose_sparse(graph: Graph, min_saving: float = 0.0) -> Graph:
    """Mark layers ``{"format": "sparse"}`` where that encoding is smaller than their current one.

    A layer switches when its sparse encoding takes fewer than (1 - min_saving) times the bytes of
    its present storage (int8, packed or codebook; see weight_flash_bytes)."""
    if not 0.0 <= min_saving < 1.0:
        raise StorageError(f"min_saving must be in [0, 1), got {min_saving}")
    _check_quantized(graph)
    g = graph.copy()
    current = weight_flash_bytes(g)
    for node in weight_layers(g):
        if g.tensors[node.inputs[1]].dtype != "int8":
            continue
        before = node.attrs.get("weight_storage")
        node.attrs["weight_storage"] = {"format": "sparse"}
        sparse = encode_weights(node, g).nbytes
        if sparse >= (1.0 - min_saving) * current[node.name]:
            if before is None:
                node.attrs.pop("weight_storage")
            else:
                node.attrs["weight_storage"] = before
    g.validate()
    return g


def weight_flash_bytes(graph: Graph, target=None) -> dict[str, int]:
    """Flash bytes of each conv/fc layer's weights in the generated C, by node name.

    Compressed layers: their encoded arrays (packed values or indices, codebook, sparse counts,
    gaps and values), the same on every target. int8 layers: one byte per weight with the
    portable kernels (target None or without DSP); the DSP kernels' padded words (conv, fc) or
    int16 weight pairs (depthwise) on DSP targets. Biases and requantization records are not
    counted (they do not depend on the storage)."""
    out = {}
    for node in weight_layers(graph):
        if is_compressed(node):
            out[node.name] = encode_weights(node, graph).nbytes
        elif target is not None and target.has_dsp:
            out[node.name] = dsp_weight_bytes(node, graph)
        else:
            out[node.name] = graph.tensors[node.inputs[1]].nbytes
    return out


def parse_layer_values(text: str, layers: list[str], what: str) -> dict[str, int]:
    """'4' (every layer) or 'conv1=4,fc=8' -> {layer: int}; clear errors for anything else."""
    text = text.strip()
    if not text:
        raise StorageError(f"{what}: empty value")
    try:
        if "=" not in text:
            v = int(text)
            return {name: v for name in layers}
        out = {}
        for part in text.split(","):
            name, _, value = part.partition("=")
            name = name.strip()
            if not name or not value.strip():
                raise ValueError(part)
            out[name] = int(value)
        return out
    except ValueError:
        raise StorageError(f"{what}: expected a number or LAYER=N[,LAYER=N...], got '{text}'") from None


def storage_summary(graph: Graph) -> list[dict]:
    """Per conv/fc layer: name, op, weights, storage, distinct values, flash bytes (portable)."""
    flash = weight_flash_bytes(graph)
    rows = []
    for node in weight_layers(graph):
        w = graph.tensors[node.inputs[1]].data
        rows.append({"name": node.name, "op": node.op, "weights": int(w.size), "storage": weight_storage(node),
                     "distinct": int(len(np.unique(w))), "zeros": float(np.mean(w == 0)),
                     "flash_bytes": flash[node.name]})
    return rows


__all__ = ["BITS", "PACKED_RANGE", "StorageError", "choose_sparse", "parse_layer_values", "quantize_weights_to_bits",
           "share_weights", "storage_summary", "weight_flash_bytes", "weight_layers"]


def apply_storage_options(graph: Graph, weight_bits: str | None = None, share: str | None = None,
                          sparse: str | None = None, float_weights: dict[str, np.ndarray] | None = None) -> Graph:
    """The CLI's --weight-bits, --share-weights and --sparse, applied in that order.

    weight_bits: '4' (every conv/fc layer) or 'conv1=4,fc=8'; share: '16' or 'conv1=16,...';
    sparse: 'auto' (choose_sparse) or 'off'."""
    layers = [n.name for n in weight_layers(graph)]
    if weight_bits:
        graph = quantize_weights_to_bits(graph, parse_layer_values(weight_bits, layers, "--weight-bits"),
                                         float_weights)
    if share:
        graph = share_weights(graph, parse_layer_values(share, layers, "--share-weights"))
    if sparse not in (None, "off", "auto"):
        raise StorageError(f"--sparse: expected auto or off, got '{sparse}'")
    if sparse == "auto":
        graph = choose_sparse(graph)
    return graph


def float_weights_of(float_graph: Graph) -> dict[str, np.ndarray]:
    """The float weights of a graph before PTQ by node name (quantize keeps the node names)."""
    return {n.name: float_graph.tensors[n.inputs[1]].data for n in weight_layers(float_graph)
            if float_graph.tensors[n.inputs[1]].dtype == "float32"}
