"""Quantization-aware fine-tuning for low-bit weights (4 or 2 bits) of a trained zoo model.

Post-training requantization of int8 weights to 4 or 2 bits (storage.quantize_weights_to_bits)
can cost accuracy; fine-tuning with the weights fake-quantized to that grid recovers it:
every Conv1d/Conv2d/Linear weight is replaced, in the forward pass, by its symmetric
per-output-channel b-bit value (scale max|w| / (2^(b-1) - 1), round half away from zero, as the
integer quantizer), with a straight-through gradient. Batch norm is folded into the convolutions
on import; its per-channel factor commutes with per-channel symmetric quantization, so the folded
weights re-quantize to the same integers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..ir.graph import Graph


def _fake_quant(bits: int):
    import torch
    from torch import nn

    qmax = 2 ** (bits - 1) - 1

    class FakeQuant(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            flat = w.detach().reshape(w.shape[0], -1)
            scale = (flat.abs().amax(dim=1) / qmax).clamp_min(1e-12).reshape((-1,) + (1,) * (w.dim() - 1))
            s = w / scale
            q = torch.clamp(torch.sign(s) * torch.floor(s.abs() + 0.5), -qmax, qmax) * scale
            return w + (q - w).detach()  # straight-through estimator

    return FakeQuant()


def finetune_low_bit(model_dir: str | Path, bits: int, epochs: int = 3, lr_factor: float = 0.1, seed: int = 0,
                     method: str = "minmax") -> Graph:
    """Fine-tune a `mcuforge train` output (model.pt, calib.npy) with b-bit fake-quantized weights.

    Trains `epochs` epochs on the model's own training split (the zoo's loop, Adam with cosine
    decay from lr_factor x the model's training rate), exports, quantizes (PTQ with calib.npy) and
    returns the quantized graph with every conv/fc layer at `bits` (storage.quantize_weights_to_bits
    from the fine-tuned float weights, packed storage)."""
    import torch
    from torch.nn.utils import parametrize

    from .. import data as datasets
    from ..frontends import to_ir_layout
    from ..frontends.torch import from_exported
    from ..quant.ptq import quantize
    from ..zoo import get, model_inputs
    from ..zoo.sinc import fix_sinc
    from ..zoo.trainer import LOSSES, fit
    from .storage import StorageError, float_weights_of, quantize_weights_to_bits, weight_layers

    if bits not in (4, 2):
        raise StorageError(f"low-bit fine-tuning takes 4 or 2 bits, got {bits}")
    model_dir = Path(model_dir)
    ck = torch.load(model_dir / "model.pt", weights_only=False)
    spec = get(ck["model"])
    net = spec.build(tuple(ck["input_shape"]), ck["n_out"])
    net.load_state_dict(ck["state_dict"])
    tr = datasets.load(ck["data"], "train", ck["preset"], seed=ck["seed"])
    x = model_inputs(spec, tr.x)
    for module in net.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
            parametrize.register_parametrization(module, "weight", _fake_quant(bits))
    fit(net, x, tr.y, LOSSES[spec.task], epochs, seed, spec.lr * lr_factor, spec.batch,
        weight_decay=0.0)
    for module in net.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    deployable = fix_sinc(net).eval()
    if hasattr(deployable, "for_export"):
        deployable = deployable.for_export().eval()
    ep = torch.export.export(deployable, (torch.from_numpy(np.ascontiguousarray(x[:1], np.float32)),))
    graph = from_exported(ep, spec.name if hasattr(spec, "name") else "model")
    q = quantize(graph, [to_ir_layout(graph, graph.inputs[0], np.load(model_dir / "calib.npy"))], method=method)
    return quantize_weights_to_bits(q, {n.name: bits for n in weight_layers(q)}, float_weights_of(graph))
