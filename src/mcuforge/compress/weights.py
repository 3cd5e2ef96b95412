"""Weight formats the search may give the low-sensitivity layers: int8, packed int4/int2, or a
shared-weight codebook of 16 or 4 entries (storage: compress.storage, part of the C library).

During the search a format is simulated on the float torch model (the same per-channel symmetric
grid, or k-means of the layer's per-channel int8 values, as compress.storage applies to the
quantized graph), so a trial's metric reflects it without exporting; the chosen model gets the real
storage on its quantized graph.
"""
from __future__ import annotations

import numpy as np

from . import CompressError

FORMATS = {"int8": None, "int4": ("bits", 4), "int2": ("bits", 2), "codebook16": ("k", 16), "codebook4": ("k", 4)}


def check_formats(names: list[str]) -> list[str]:
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise CompressError(f"unknown weight format {', '.join(map(repr, bad)) or '(none)'} "
                            f"(choose from {', '.join(FORMATS)})")
    return names


def index_bits(fmt: str) -> int:
    """Bits per weight in flash."""
    kind = FORMATS[fmt]
    if kind is None:
        return 8
    return kind[1] if kind[0] == "bits" else int(np.ceil(np.log2(kind[1])))


def simulate(model, layers: list[str], fmt: str, seed: int = 0):
    """Give ``layers`` of ``model`` (in place) the weights ``fmt`` would store."""
    import torch

    kind = FORMATS[fmt]
    if kind is None:
        return model
    mods = dict(model.named_modules())
    with torch.no_grad():
        for name in layers:
            w = mods[name].weight
            flat = w.reshape(w.shape[0], -1).double()
            if kind[0] == "bits":
                qmax = 2 ** (kind[1] - 1) - 1
                scale = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / qmax
                w.copy_((torch.round(flat / scale).clamp(-qmax, qmax) * scale).reshape(w.shape).to(w.dtype))
            else:
                from sklearn.cluster import KMeans

                scale = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
                q = torch.round(flat / scale).clamp(-127, 127).numpy().reshape(-1, 1)
                k = min(kind[1], len(np.unique(q)))
                km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(q)
                shared = np.round(km.cluster_centers_[km.labels_, 0]).reshape(flat.shape)
                w.copy_((torch.from_numpy(shared) * scale).reshape(w.shape).to(w.dtype))
    return model


def apply_to_graph(qgraph, ir_layers: list[str], fmt: str, float_graph=None, seed: int = 0):
    """The quantized graph with ``ir_layers`` stored in ``fmt`` (compress.storage)."""
    from .storage import float_weights_of, quantize_weights_to_bits, share_weights

    kind = FORMATS[fmt]
    if kind is None or not ir_layers:
        return qgraph
    if kind[0] == "bits":
        floats = float_weights_of(float_graph) if float_graph is not None else None
        return quantize_weights_to_bits(qgraph, {n: kind[1] for n in ir_layers}, floats)
    return share_weights(qgraph, {n: kind[1] for n in ir_layers}, seed=seed)
