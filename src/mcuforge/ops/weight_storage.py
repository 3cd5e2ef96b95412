"""How the weights of a conv2d (depthwise included) or fully_connected node are stored in C.

The IR weight tensor is always int8 with its per-channel scales and the integer reference
never changes; the node attribute ``weight_storage`` only restricts which int8 values occur
and tells the C emitter how to store them:

* ``{"format": "int8"}`` (the default, also when the attribute is absent): one byte per weight.
* ``{"format": "packed", "bits": 4 | 2}``: values in [-8, 7] / [-2, 1] as two's complement
  nibbles / crumbs, 2 / 4 per byte, the first weight in the lowest bits.
* ``{"format": "codebook", "k": K}`` (K <= 16): at most K distinct int8 values per layer; a
  codebook of the distinct values (ascending int8) and one index per weight, packed as nibbles,
  or as crumbs where the codebook has at most 4 entries.
* ``{"format": "sparse"}``: zeros are skipped. Per output channel, its weights in IR order
  ([KH, KW, C/groups] or [K]) become entries (gap, value): gap (uint8) is the number of
  positions skipped since the previous entry (or the channel start), value (int8) the weight
  at the next position. A run of more than 255 zeros takes a filler entry (255, 0). Arrays:
  ``counts`` (uint16, entries per output channel), ``gaps`` (uint8), ``values`` (int8):
  2 bytes per output channel + 2 bytes per entry.

Packed values and indices follow the IR order ([O, KH, KW, C/groups] or [O, K]), which is
the portable kernels' read order: they decode each weight where they use it
(kernels/mf_wstore.c). The DSP kernels read int8 weights pre-arranged in words; for them a
compressed layer is decoded once per inference into that arrangement in the kernel scratch
(RAM), which costs one pass over the layer's weights instead of a decode per MAC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import GraphError
from ..ir.graph import Graph, Node

FORMATS = ("int8", "packed", "codebook", "sparse")
WEIGHT_OPS = ("conv2d", "fully_connected")
PACKED_RANGE = {4: (-8, 7), 2: (-2, 1)}
MAX_CODEBOOK = 16
# format codes shared with kernels/mf_wstore.h
C_FORMAT = {"packed4": 1, "packed2": 2, "codebook4": 3, "codebook2": 4, "sparse": 5}


def weight_storage(node: Node) -> dict:
    """The node's storage declaration, {"format": "int8"} when it has none."""
    return dict(node.attrs.get("weight_storage") or {"format": "int8"})


def is_compressed(node: Node) -> bool:
    return weight_storage(node)["format"] != "int8"


def check_weight_storage(node: Node, graph: Graph) -> None:
    """Reject a malformed declaration, or weights that violate it, naming the node."""
    ws = node.attrs.get("weight_storage")
    if ws is None:
        return
    where = f"node '{node.name}' ({node.op})"
    if node.op not in WEIGHT_OPS:
        raise GraphError(f"{where}: weight_storage applies to conv2d and fully_connected only")
    if not isinstance(ws, dict) or ws.get("format") not in FORMATS:
        raise GraphError(f"{where}: weight_storage {ws!r} must be a dict with 'format' one of {', '.join(FORMATS)}")
    fmt = ws["format"]
    allowed = {"int8": {"format"}, "packed": {"format", "bits"}, "codebook": {"format", "k"},
               "sparse": {"format"}}[fmt]
    if set(ws) - allowed:
        raise GraphError(f"{where}: weight_storage '{fmt}' takes only {sorted(allowed)}, got {sorted(ws)}")
    wt = graph.tensors[node.inputs[1]]
    if not wt.is_const:
        raise GraphError(f"{where}: weight_storage needs constant weights")
    if fmt == "int8":
        return
    if wt.dtype != "int8":
        raise GraphError(f"{where}: weight_storage '{fmt}' needs int8 weights, '{wt.name}' is {wt.dtype} "
                         "(quantize the graph first)")
    w = wt.data
    if fmt == "packed":
        bits = ws.get("bits")
        if bits not in PACKED_RANGE:
            raise GraphError(f"{where}: packed weights take bits 4 or 2, got {bits!r}")
        lo, hi = PACKED_RANGE[bits]
        if w.size and (int(w.min()) < lo or int(w.max()) > hi):
            raise GraphError(f"{where}: weights of '{wt.name}' span [{int(w.min())}, {int(w.max())}], outside "
                             f"[{lo}, {hi}] of their declared {bits}-bit storage")
    elif fmt == "codebook":
        k = ws.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_CODEBOOK:
            raise GraphError(f"{where}: codebook size k must be an integer in 1..{MAX_CODEBOOK}, got {k!r}")
        distinct = len(np.unique(w))
        if distinct > k:
            raise GraphError(f"{where}: weights of '{wt.name}' take {distinct} distinct values, more than the "
                             f"declared codebook of {k}")
    elif fmt == "sparse":
        rows = w.reshape(w.shape[0], -1)
        if rows.shape[1] >= 2**16:
            raise GraphError(f"{where}: sparse storage supports at most 65,535 weights per output channel, "
                             f"'{wt.name}' has {rows.shape[1]}")


@dataclass
class EncodedWeights:
    """The arrays a compressed layer's weights occupy in flash."""

    kind: str                     # a C_FORMAT key
    data: np.ndarray              # uint8: packed values / indices; sparse: gaps
    table: np.ndarray | None      # int8: codebook; sparse: values
    counts: np.ndarray | None     # uint16: sparse entries per output channel

    @property
    def nbytes(self) -> int:
        return int(self.data.size + (0 if self.table is None else self.table.size)
                   + (0 if self.counts is None else 2 * self.counts.size))


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes (< 2^bits) -> bytes, 8 / bits per byte, the first code in the lowest bits."""
    per = 8 // bits
    c = np.asarray(codes, np.int64).ravel() & ((1 << bits) - 1)
    c = np.concatenate([c, np.zeros((-c.size) % per, np.int64)]).reshape(-1, per)
    return (c << (np.arange(per) * bits)).sum(axis=1).astype(np.uint8)


def unpack_bits(data: np.ndarray, bits: int, n: int) -> np.ndarray:
    per = 8 // bits
    d = np.asarray(data, np.int64)[:, None] >> (np.arange(per) * bits)
    return (d & ((1 << bits) - 1)).ravel()[:n]


def sparse_entries(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[O, K] int8 -> (counts uint16 [O], gaps uint8 [E], values int8 [E]) (module docstring)."""
    counts, gaps, values = [], [], []
    for row in rows:
        n, prev = 0, -1
        for pos in np.flatnonzero(row):
            gap = int(pos) - prev - 1
            while gap > 255:  # filler: an explicit zero 256 positions on
                gaps.append(255)
                values.append(0)
                n, gap = n + 1, gap - 256
            gaps.append(gap)
            values.append(int(row[pos]))
            n, prev = n + 1, int(pos)
        counts.append(n)
    return (np.array(counts, np.uint16), np.array(gaps, np.uint8), np.array(values, np.int8))


def encode_weights(node: Node, graph: Graph) -> EncodedWeights:
    """The flash arrays of a compressed layer (a validated graph; not for int8 storage)."""
    ws = weight_storage(node)
    w = graph.tensors[node.inputs[1]].data
    fmt = ws["format"]
    if fmt == "packed":
        return EncodedWeights(f"packed{ws['bits']}", pack_bits(w, ws["bits"]), None, None)
    if fmt == "codebook":
        table = np.unique(w).astype(np.int8)
        bits = 2 if table.size <= 4 else 4
        idx = np.searchsorted(table, w.ravel())
        return EncodedWeights(f"codebook{bits}", pack_bits(idx, bits), table, None)
    if fmt == "sparse":
        counts, gaps, values = sparse_entries(w.reshape(w.shape[0], -1))
        return EncodedWeights("sparse", gaps, values, counts)
    raise GraphError(f"node '{node.name}': int8 weight storage has no encoding")


def decode_weights(enc: EncodedWeights, shape: tuple[int, ...]) -> np.ndarray:
    """The int8 weights back from their encoding (the C decoders' specification, for tests)."""
    n = int(np.prod(shape))
    if enc.kind.startswith("packed"):
        bits = int(enc.kind[-1])
        c = unpack_bits(enc.data, bits, n)
        return (c - ((c >> (bits - 1)) << bits)).astype(np.int8).reshape(shape)
    if enc.kind.startswith("codebook"):
        return enc.table[unpack_bits(enc.data, int(enc.kind[-1]), n)].reshape(shape)
    rows = np.zeros((shape[0], n // shape[0]), np.int8)
    e = 0
    for o, cnt in enumerate(enc.counts):
        pos = -1
        for _ in range(int(cnt)):
            pos += int(enc.data[e]) + 1
            rows[o, pos] = enc.table[e]
            e += 1
    return rows.reshape(shape)


def stored_weight_bytes(node: Node, graph: Graph) -> int:
    """Flash bytes of the node's weights in IR order (int8: one byte each; else the encoding)."""
    if not is_compressed(node):
        return graph.tensors[node.inputs[1]].nbytes
    return encode_weights(node, graph).nbytes


# --- C -------------------------------------------------------------------------------------------

HEADER, SOURCE = "mf_wstore.h", "mf_wstore.c"


def portable_weights(node: Node, graph: Graph, ctx, kernel: str) -> tuple[str, str]:
    """(kernel, weights argument) of a conv2d / fully_connected layer on the portable kernels: the
    compressed layers read an mf_wstore record (decoding per weight) with the `_ws` kernel variant."""
    if is_compressed(node):
        return kernel.replace("_s8", "_ws_s8"), "&" + emit_wstore(node, graph, ctx)
    return kernel, ctx.const(node.inputs[1])


def emit_wstore(node: Node, graph: Graph, ctx) -> str:
    """Emit the layer's encoded arrays and its mf_wstore descriptor; returns the descriptor's name."""
    enc = encode_weights(node, graph)
    ctx.use_kernel_files(HEADER, SOURCE)
    data = ctx.array(node.name + "_wdata", enc.data, "uint8_t")
    table = ctx.array(node.name + "_wtable", enc.table, "int8_t") if enc.table is not None else "NULL"
    counts = ctx.array(node.name + "_wcount", enc.counts, "uint16_t") if enc.counts is not None else "NULL"
    ident = ctx.ident(node.name + "_ws")
    ctx.decl(f"static const mf_wstore {ident} = {{ {C_FORMAT[enc.kind]}, {data}, {table}, {counts} }}; "
             f"/* {enc.kind} */")
    return ident


def emit_dsp_decode(node: Node, graph: Graph, ctx, scratch: str, k: int, og: int, lanes: int, chunks: int,
                    nbytes: int) -> str:
    """Decode a compressed layer into the DSP kernels' word arrangement at the start of the scratch.

    The arrangement: per group, blocks of `lanes` output channels (a zero channel pads the group's
    last block), per chunk of 4 weights the `lanes` channels' 4 bytes (nbytes in all). Returns the
    decode call, which the layer's code runs before the kernel."""
    ws = emit_wstore(node, graph, ctx)
    o = graph.tensors[node.inputs[1]].shape[0]
    return f"mf_wdecode_arranged(&{ws}, (int8_t *){scratch}, {nbytes}, {o}, {k}, {og}, {lanes}, {chunks});"
