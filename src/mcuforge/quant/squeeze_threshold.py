"""Double-stage Squeeze-and-Threshold (ST) low-bit activation quantization (Wu et al.).

Quantization-aware training of b-bit (2..4, any 1..8) unsigned activations after ReLUs whose
clipping threshold is learned by an attention stage:

stage 1 (training)  ``SqueezeThreshold``: global-average-pool "squeeze" of the feature map
                    (N, C, ...) -> (N, C), a small FC bottleneck C -> C/r -> 1 (ReLU, softplus)
                    gives a per-sample threshold; the batch mean is the layer's threshold t for
                    this step and feeds an exponential moving average (``running_threshold``).
                    The activation is clip(x, 0, t) quantized uniformly to 2^b levels in [0, t]
                    with a straight-through estimator for the rounding (gradients reach x inside
                    [0, t] and t through the clip and the step size).
stage 2 (inference) ``freeze``: each ST module becomes ``FrozenThreshold`` -- a fixed clamp and
                    uniform quantization with t = the running threshold -- which calls the
                    custom op ``mcuforge::quantize_levels``; torch.export keeps it as one node
                    and the torch frontend maps it to the ``quantize_levels`` IR table op.

Deployment: the frozen activation's values k * t / (2^b - 1), k = 0 .. 2^b - 1, are carried in
int8 storage with quantization (scale t / (2^b - 1), zero point -128); the producer's int8 output
is snapped onto that grid by a 256-entry table (mf_lut_s8), so host C equals the integer
reference bit for bit. Packed sub-byte (int4, int2) storage is not implemented: see
``check_activation_bits``.

``to_squeeze_threshold``  float model -> ST-QAT model (after every nn.ReLU / nn.ReLU6 module,
                          i.e. every conv/linear(+BN)+ReLU; functional relus are not seen).
``qat_finetune``          short fine-tune with the zoo's training loop (mcuforge.zoo.trainer.fit).
``freeze``                ST-QAT model -> frozen, exportable model.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn as nn

from ..errors import InputError


@torch.library.custom_op("mcuforge::quantize_levels", mutates_args=())
def quantize_levels(x: torch.Tensor, threshold: float, levels: int) -> torch.Tensor:
    """round(clip(x, 0, t) * L / t) * t / L, L = levels - 1 (float32)."""
    top = levels - 1
    return torch.round(torch.clamp(x, 0.0, threshold) * (top / threshold)) * (threshold / top)


@quantize_levels.register_fake
def _(x, threshold, levels):
    return torch.empty_like(x)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def fake_quantize(x: torch.Tensor, t: torch.Tensor, bits: int) -> torch.Tensor:
    """clip(x, 0, t) on 2^bits uniform levels, straight-through rounding; t broadcasts over x."""
    top = 2 ** bits - 1
    y = torch.minimum(torch.relu(x), t)
    return _round_ste(y * (top / t)) * (t / top)


class SqueezeThreshold(nn.Module):
    """Learned-threshold b-bit activation quantizer, inserted after a ReLU (stage 1)."""

    def __init__(self, channels: int, bits: int, reduction: int = 4, momentum: float = 0.1,
                 init_threshold: float = 4.0, max_threshold: float | None = None) -> None:
        super().__init__()
        if not 1 <= int(bits) <= 8:
            raise InputError(f"SqueezeThreshold: bits must be in 1..8, got {bits}")
        self.channels, self.bits, self.momentum = int(channels), int(bits), float(momentum)
        self.max_threshold = None if max_threshold is None else float(max_threshold)  # 6 after a ReLU6
        hidden = max(2, self.channels // reduction)
        self.fc1 = nn.Linear(self.channels, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        self.register_buffer("running_threshold", torch.tensor(float(init_threshold)))
        self.set_threshold(init_threshold)

    def set_threshold(self, t: float) -> None:
        """Start the attention stage at threshold t: fc2 ~ 0, softplus(bias) = t."""
        t = max(float(t), 1e-3)
        with torch.no_grad():
            self.fc2.weight.mul_(0.01)
            self.fc2.bias.fill_(t + math.log(-math.expm1(-t)))  # inverse softplus
            self.running_threshold.fill_(t)

    def threshold(self, x: torch.Tensor) -> torch.Tensor:
        """Stage 1: squeeze (global average pool) -> FC bottleneck -> per-sample threshold -> batch mean."""
        s = x.mean(dim=tuple(range(2, x.dim()))) if x.dim() > 2 else x
        t = (nn.functional.softplus(self.fc2(torch.relu(self.fc1(s)))) + 1e-3).mean()
        return t if self.max_threshold is None else torch.clamp(t, max=self.max_threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            t = self.threshold(x)
            with torch.no_grad():
                self.running_threshold.lerp_(t.detach(), self.momentum)
        else:
            t = self.running_threshold
        return fake_quantize(x, t, self.bits)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, bits={self.bits}, threshold={float(self.running_threshold):.4g}"


class FrozenThreshold(nn.Module):
    """Stage 2: fixed clamp to [0, t] and uniform quantization to 2^bits levels (exportable)."""

    def __init__(self, threshold: float, bits: int) -> None:
        super().__init__()
        self.threshold, self.bits = float(threshold), int(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_levels(x, self.threshold, 2 ** self.bits)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold:.6g}, bits={self.bits}"


def _relu_paths(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    return [(parent, name, child) for parent in model.modules()
            for name, child in parent.named_children() if isinstance(child, (nn.ReLU, nn.ReLU6))]


def to_squeeze_threshold(model: nn.Module, bits: int, calib: np.ndarray | None = None,
                         percentile: float = 99.9, reduction: int = 4) -> nn.Module:
    """A copy of `model` with a SqueezeThreshold after every nn.ReLU / nn.ReLU6 module.

    The channel count of each comes from a forward pass on `calib` (a batch of inputs, required),
    which also sets each initial threshold to the `percentile` of that ReLU's output."""
    if calib is None or len(calib) == 0:
        raise InputError("to_squeeze_threshold needs a calibration batch (channel counts, initial thresholds)")
    model = copy.deepcopy(model).eval()
    relus = _relu_paths(model)
    if not relus:
        raise InputError("to_squeeze_threshold: the model has no nn.ReLU / nn.ReLU6 module to quantize after")
    seen: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=id(m): seen.setdefault(k, o.detach()))
             for _, _, m in relus]
    with torch.no_grad():
        model(torch.from_numpy(np.ascontiguousarray(calib, np.float32)))
    for h in hooks:
        h.remove()
    for parent, name, relu in relus:
        out = seen.get(id(relu))
        if out is None:
            continue  # not on the forward path
        cap = 6.0 if isinstance(relu, nn.ReLU6) else None
        st = SqueezeThreshold(out.shape[1], bits, reduction=reduction, max_threshold=cap)
        hi = float(np.percentile(out.numpy(), percentile))
        hi = hi if cap is None else min(hi, cap)
        st.set_threshold(hi if hi > 0 else 1.0)
        setattr(parent, name, nn.Sequential(relu, st))
    return model


def qat_finetune(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 10, seed: int = 0,
                 lr: float = 1e-3, batch: int = 64, progress=None) -> nn.Module:
    """Quantization-aware fine-tune (cross-entropy) with the zoo's loop; returns the model in eval mode."""
    from ..zoo.trainer import fit

    return fit(model, x, y, "ce", epochs, seed, lr=lr, batch=batch, progress=progress)


def freeze(model: nn.Module) -> nn.Module:
    """A copy with every SqueezeThreshold replaced by FrozenThreshold(running threshold, bits)."""
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SqueezeThreshold):
                setattr(parent, name, FrozenThreshold(float(child.running_threshold), child.bits))
    return model


def thresholds(model: nn.Module) -> list[float]:
    """The (running or frozen) thresholds, in module order."""
    out = []
    for m in model.modules():
        if isinstance(m, SqueezeThreshold):
            out.append(float(m.running_threshold))
        elif isinstance(m, FrozenThreshold):
            out.append(m.threshold)
    return out


def check_activation_bits(bits: int | None) -> None:
    """Deployment accepts 8-bit activation storage only; b-bit ST activations run in int8 storage."""
    if bits is None or int(bits) == 8:
        return
    raise InputError(
        f"--activation-bits {bits}: packed {bits}-bit activation storage is not implemented yet. "
        f"Low-bit activations (Squeeze-and-Threshold QAT, mcuforge.quant.squeeze_threshold) run in int8 "
        f"storage on the 2^b-level grid (scale threshold / (2^b - 1), zero point -128): deploy the frozen "
        f"model without --activation-bits")
