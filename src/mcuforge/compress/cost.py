"""Cheap, target-calibrated estimates of a pruned model's instructions, flash and RAM.

`mcuforge bench` runs the unpruned model, and a copy with every prunable layer at half width, on the
emulated target and gives every IR layer's exact instruction count. Each conv/fc layer's count is
fitted through both points as

    instructions = a x MACs + b x MACs / out_channels

(the second term: work per output position that does not shrink with the output channels, such as
im2col), and a pruned model is estimated as the sum of its MAC layers' fits, plus every other layer's
measured count scaled by its input's channel ratio, plus the call overhead.

The torch model is profiled with forward hooks (no export): its conv/linear modules run in the
order of the IR's MAC layers (batch norm and activations are folded/fused into them), which is
checked on the unpruned model. Flash: the measured total, with every MAC layer's constants
(weights at their bit width, int32 bias, int32 multiplier and shift per output channel) replaced
by the pruned layer's. RAM: the measured total with the arena scaled by the largest
input + output activation of a layer. The chosen model is always measured, never estimated.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

PER_CHANNEL_BYTES = 12  # int32 bias, multiplier and shift per output channel


@dataclass
class LayerProfile:
    name: str          # torch module name
    macs: int          # per sample
    out_channels: int
    weight_params: int
    act_bytes: int     # input + output elements (int8 bytes) per sample


def profile(model, example) -> list[LayerProfile]:
    """The conv/linear modules of ``model`` in execution order, with MACs and sizes for one sample."""
    import torch
    import torch.nn as nn

    rows: list[LayerProfile] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(mod, inputs, out):
        x = inputs[0]
        per_out = mod.weight[0].numel()  # in_channels / groups x kernel taps (or in_features)
        rows.append(LayerProfile(names[mod], int(out[0].numel() * per_out), int(mod.weight.shape[0]),
                                 int(mod.weight.numel()), int(x[0].numel() + out[0].numel())))

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return rows


@dataclass
class CostModel:
    """Per-layer costs of the unpruned model measured on the target, and how to scale them."""

    target: str
    instructions: int            # measured per inference, unpruned
    flash: int                   # measured firmware flash total
    ram: int                     # measured firmware RAM total
    arena: int
    overhead: float              # instructions outside the layers (call, return)
    mac_layers: list[dict] = field(default_factory=list)    # torch name, base MACs, instructions per MAC, ...
    other_layers: list[dict] = field(default_factory=list)  # IR name, instructions, index of the MAC layer before
    per_layer_fit: bool = True   # False: the IR's MAC layers did not match the torch modules (one ratio for all)
    points: int = 1              # measurements the per-layer costs are fitted to

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "CostModel":
        return cls(**d)

    @classmethod
    def from_bench(cls, bench: dict, base: list[LayerProfile], bench2: dict | None = None,
                   pruned: list[LayerProfile] | None = None) -> "CostModel":
        """From the unpruned model's bench, and optionally a second one of a uniformly pruned model:
        with two points, every MAC layer gets instructions = a MACs + b MACs / out_channels (the
        second term: work per output position that does not shrink with the output channels,
        e.g. im2col), fitted exactly through both measurements."""
        ir_mac = [r for r in bench["layers"] if r["macs"]]
        fit = len(ir_mac) == len(base) and all(r["macs"] == p.macs for r, p in zip(ir_mac, base))
        ir_mac2 = [r for r in bench2["layers"] if r["macs"]] if bench2 is not None else []
        two = fit and pruned is not None and len(ir_mac2) == len(pruned) == len(base) and all(
            r["macs"] == p.macs for r, p in zip(ir_mac2, pruned))
        ins = bench["instructions"]
        total_ipm = sum(float(r["instructions"]) for r in ir_mac) / max(1, sum(r["macs"] for r in ir_mac))
        mac_layers, other, last = [], [], -1
        for r in bench["layers"]:
            if r["macs"]:
                last += 1
                if last < len(base):
                    p = base[last]
                    a, b = (float(r["instructions"]) / r["macs"] if fit else total_ipm), 0.0
                    if two:
                        q, r2 = pruned[last], ir_mac2[last]
                        feats = np.array([[p.macs, p.macs / p.out_channels], [q.macs, q.macs / q.out_channels]])
                        a, b = np.linalg.lstsq(feats, np.array([float(r["instructions"]),
                                                                float(r2["instructions"])]), rcond=None)[0]
                    mac_layers.append({"name": p.name, "macs": p.macs, "out_channels": p.out_channels,
                                       "weight_params": p.weight_params, "act_bytes": p.act_bytes,
                                       "ir_name": r["name"], "per_mac": float(a), "per_column": float(b)})
            else:
                other.append({"ir_name": r["name"], "instructions": float(r["instructions"]), "after": last})
        return cls(target=bench["target"]["name"], instructions=int(round(float(ins["per_inference"]))),
                   flash=int(bench["flash"]["total"]), ram=int(bench["ram"]["total"]), arena=int(bench["ram"]["arena"]),
                   overhead=float(ins["outside_layers"]), mac_layers=mac_layers, other_layers=other, per_layer_fit=fit,
                   points=2 if two else 1)

    def estimate(self, layers: list[LayerProfile], weight_bits: dict[str, int] | None = None) -> dict:
        """Estimated instructions, flash and RAM of a pruned model profiled by `profile`."""
        weight_bits = weight_bits or {}
        if len(layers) != len(self.mac_layers):
            raise ValueError("the pruned model has a different layer structure than the one measured")
        instr = self.overhead
        flash = float(self.flash)
        ratio = []
        for base, p in zip(self.mac_layers, layers):
            instr += max(0.0, base["per_mac"] * p.macs + base.get("per_column", 0.0) * p.macs / p.out_channels)
            ratio.append(p.out_channels / base["out_channels"])
            bits = weight_bits.get(p.name, 8)
            flash += (np.ceil(p.weight_params * bits / 8) + PER_CHANNEL_BYTES * p.out_channels
                      - base["weight_params"] - PER_CHANNEL_BYTES * base["out_channels"])
        for o in self.other_layers:
            instr += o["instructions"] * (ratio[o["after"]] if o["after"] >= 0 else 1.0)
        peak_base = max(b["act_bytes"] for b in self.mac_layers)
        peak = max(p.act_bytes for p in layers)
        arena = self.arena * peak / peak_base
        return {"instructions": int(round(instr)), "flash": int(round(flash)),
                "ram": int(round(self.ram - self.arena + arena)), "macs": int(sum(p.macs for p in layers))}
