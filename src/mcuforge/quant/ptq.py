"""Post-training quantization to TFLite's int8 scheme.

calibrate():  runs the float reference over a calibration set and records, per
              activation tensor, its exact min/max and a bounded random sample of
              its values.
quantize():   chooses each activation's range (min/max, percentile or MSE-optimal
              clipping), derives asymmetric int8 parameters with TFLite's
              zero-point nudging, lets each op fix or share its output
              quantization (softmax, sigmoid, pools, reshape, ...) and quantize
              its constants (symmetric per-channel int8 weights, int32 bias).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, QuantizationError
from ..ir.graph import Graph, QuantParams
from ..ops import get_op
from .. import reference

METHODS = ("minmax", "percentile", "mse")
SAMPLE_PER_TENSOR = 200_000


@dataclass
class TensorStats:
    lo: float = np.inf
    hi: float = -np.inf
    samples: list[np.ndarray] = field(default_factory=list)
    kept: int = 0


def calibrate(graph: Graph, calib: np.ndarray | list[np.ndarray], batch: int = 256, seed: int = 0,
              progress=None) -> dict[str, TensorStats]:
    if isinstance(calib, np.ndarray):
        calib = [calib]
    if not calib or any(np.asarray(c).size == 0 for c in calib):
        raise QuantizationError("calibration data is empty: give at least one sample per input")
    calib = [np.asarray(c, np.float32) for c in calib]
    if not all(np.all(np.isfinite(c)) for c in calib):
        raise QuantizationError("calibration data contains NaN or infinite values")
    n = calib[0].shape[0]
    rng = np.random.default_rng(seed)
    stats: dict[str, TensorStats] = {t: TensorStats() for t in graph.activation_tensors()}
    per_batch = max(1, SAMPLE_PER_TENSOR // max(1, (n + batch - 1) // batch))

    def observe(name: str, x: np.ndarray) -> None:
        s = stats[name]
        flat = np.asarray(x, np.float32).ravel()
        s.lo = min(s.lo, float(flat.min()))
        s.hi = max(s.hi, float(flat.max()))
        take = flat if flat.size <= per_batch else rng.choice(flat, per_batch, replace=False)
        s.samples.append(take)

    for start in range(0, n, batch):
        try:
            reference.run(graph, [c[start:start + batch] for c in calib], mode="float", observe=observe)
        except InputError as exc:
            raise QuantizationError(f"calibration data does not fit the model: {exc}") from None
        if progress is not None:
            progress(min(n, start + batch), n)
    return stats


def choose_qparams(lo: float, hi: float) -> QuantParams:
    """TFLite ChooseQuantizationParams for int8, with the range widened to contain 0."""
    qmin, qmax = -128, 127
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = (hi - lo) / (qmax - qmin)
    zp_from_min = qmin - lo / scale
    zp_from_max = qmax - hi / scale
    err_min = abs(qmin) + abs(lo / scale)
    err_max = abs(qmax) + abs(hi / scale)
    zp = zp_from_min if err_min < err_max else zp_from_max
    zp = int(np.clip(np.round(zp), qmin, qmax))
    return QuantParams.per_tensor(np.float32(scale), zp)


def _range(stats: TensorStats, method: str, percentile: float) -> tuple[float, float]:
    if method == "minmax" or not stats.samples:
        return stats.lo, stats.hi
    values = np.concatenate(stats.samples).astype(np.float64)
    if method == "percentile":
        lo = float(np.percentile(values, 100.0 - percentile))
        hi = float(np.percentile(values, percentile))
        return min(lo, 0.0), max(hi, 0.0)
    # mse: the clipping of the min/max range that minimizes the quantization error on the sample
    best, best_err = (stats.lo, stats.hi), np.inf
    for frac in np.linspace(0.2, 1.0, 33):
        q = choose_qparams(stats.lo * frac, stats.hi * frac)
        err = float(np.mean((q.dequantize(q.quantize(values)).astype(np.float64) - values) ** 2))
        if err < best_err:
            best, best_err = (stats.lo * frac, stats.hi * frac), err
    return best


def quantize(graph: Graph, calib: np.ndarray | list[np.ndarray], method: str = "minmax",
             percentile: float = 99.99, per_channel_dense: bool = True, progress=None) -> Graph:
    """A quantized copy of a float graph."""
    if method not in METHODS:
        raise QuantizationError(f"unknown calibration method '{method}' (choose one of {', '.join(METHODS)})")
    if not 50.0 < percentile <= 100.0:
        raise QuantizationError(f"percentile must be in (50, 100], got {percentile}")
    if graph.is_quantized:
        return graph.copy()
    stats = calibrate(graph, calib, progress=progress)
    q = graph.copy()
    options = {"per_channel_dense": per_channel_dense}

    def observed(name: str) -> QuantParams:
        return choose_qparams(*_range(stats[name], method, percentile))

    for name in q.inputs:
        t = q.tensors[name]
        t.quant, t.dtype = observed(name), "int8"
    for node in q.nodes:
        opdef = get_op(node.op, node)
        opdef.quantize_constants(node, q, options)
        for name in node.outputs:
            t = q.tensors[name]
            t.quant = opdef.output_quant(node, q, observed(name))
            t.dtype = "int8"
    n = calib[0].shape[0] if isinstance(calib, list) else np.asarray(calib).shape[0]
    q.meta["quantization"] = {"scheme": "tflite-int8", "method": method, "calibration_samples": int(n),
                              **({"percentile": percentile} if method == "percentile" else {})}
    from .levels import fuse_quantize_levels

    fuse_quantize_levels(q)  # b-bit activation grids (Squeeze-and-Threshold) requantized by their producers
    q.validate()
    return q
