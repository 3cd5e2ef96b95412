"""Which output channels (filters, neurons) of a layer matter: three importance criteria.

Every criterion scores the output channels of a prunable layer (a conv or linear layer whose output
channels can be removed, with everything coupled to them: batch norm, depthwise convs, the next
layer's input channels) from its weights or from a calibration set:

* ``l1``: the L1 norm of each filter's weights (magnitude; no data);
* ``taylor``: first-order Taylor estimate of the loss change when the channel is removed,
  mean |activation x gradient| over the calibration set and the channel's positions;
* ``deeplift``: DeepLIFT relevance (captum ``LayerDeepLift``, all-zero baseline) of the layer's
  output for the true class (classification) or the summed output (regression, autoencoder),
  mean |attribution| per channel over the calibration set (Sabih et al.).
"""
from __future__ import annotations

import numpy as np

CRITERIA = ("l1", "taylor", "deeplift")


def _torch():
    import torch

    return torch


def prunable_layers(model, example) -> list[str]:
    """Names of the conv/linear modules whose output channels can be pruned: not depthwise (those are
    pruned with the layer that feeds them) and not the model's output layer (its outputs are the task's)."""
    torch = _torch()
    nn = torch.nn
    out_layer = _output_layer(model, example)
    names = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            if mod.groups > 1 and mod.groups == mod.in_channels:
                continue
            if mod.groups > 1:  # grouped (non-depthwise) convs: channel coupling across groups is not handled
                continue
            if mod.out_channels < 2:
                continue
        elif isinstance(mod, nn.Linear):
            if mod.out_features < 2:
                continue
        else:
            continue
        if mod is not out_layer:
            names.append(name)
    return names


def _output_layer(model, example):
    """The last conv/linear module to run in a forward pass."""
    torch = _torch()
    order = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules()
             if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return order[-1] if order else None


def _batches(x: np.ndarray, y: np.ndarray | None, batch: int):
    torch = _torch()
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch], np.float32))
        yb = None if y is None else torch.from_numpy(np.ascontiguousarray(y[i:i + batch]))
        yield xb, yb


def _channel_mean_abs(t) -> np.ndarray:
    """(N, C, ...) -> per-channel sum over N and positions of |t|, and the count of terms per channel."""
    a = t.detach().abs()
    return a.transpose(0, 1).reshape(a.shape[1], -1).sum(dim=1).double().numpy(), a[:, 0].numel()


def l1_importance(model, layers: list[str]) -> dict[str, np.ndarray]:
    mods = dict(model.named_modules())
    return {n: mods[n].weight.detach().abs().reshape(mods[n].weight.shape[0], -1).sum(1).double().numpy()
            for n in layers}


def _loss_fn(task: str):
    torch = _torch()
    if task == "classification":
        return lambda out, x, y: torch.nn.functional.cross_entropy(out, y.long(), reduction="sum")
    if task == "regression":
        return lambda out, x, y: torch.nn.functional.mse_loss(out, y.float().reshape(out.shape), reduction="sum")
    return lambda out, x, y: torch.nn.functional.mse_loss(out, x.reshape(out.shape), reduction="sum")


def taylor_importance(model, layers: list[str], x: np.ndarray, y: np.ndarray | None, task: str,
                      batch: int = 64) -> dict[str, np.ndarray]:
    torch = _torch()
    mods = dict(model.named_modules())
    acts: dict[str, object] = {}
    sums = {n: 0.0 for n in layers}
    count = {n: 0 for n in layers}

    def keep(name):
        def hook(m, i, o):
            o.retain_grad()
            acts[name] = o
        return hook

    hooks = [mods[n].register_forward_hook(keep(n)) for n in layers]
    loss_fn = _loss_fn(task)
    model.eval()
    try:
        for xb, yb in _batches(x, y, batch):
            model.zero_grad()
            out = model(xb)
            loss_fn(out, xb, yb).backward()
            for n in layers:
                a = acts[n]
                s, c = _channel_mean_abs(a * a.grad)
                sums[n] = sums[n] + s
                count[n] += c
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad()
    return {n: sums[n] / max(count[n], 1) for n in layers}


class _Summed(_torch().nn.Module):
    """DeepLIFT attributes one scalar per sample: the summed output of a regressor or autoencoder."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).reshape(len(x), -1).sum(dim=1, keepdim=True)


def deeplift_importance(model, layers: list[str], x: np.ndarray, y: np.ndarray | None, task: str,
                        batch: int = 64) -> dict[str, np.ndarray]:
    import warnings

    from captum.attr import LayerDeepLift

    model.eval()
    mods = dict(model.named_modules())
    wrapped = model if task == "classification" else _Summed(model)
    out = {}
    for n in layers:
        explainer = LayerDeepLift(wrapped, mods[n])
        total, count = 0.0, 0
        for xb, yb in _batches(x, y, batch):
            target = yb.long() if task == "classification" else 0
            with warnings.catch_warnings():  # captum warns about setting requires_grad on the inputs
                warnings.simplefilter("ignore")
                attr = explainer.attribute(xb, baselines=xb * 0, target=target)
            s, c = _channel_mean_abs(attr)
            total, count = total + s, count + c
        out[n] = total / max(count, 1)
    return out


def channel_importance(model, layers: list[str], criterion: str, x: np.ndarray | None = None,
                       y: np.ndarray | None = None, task: str = "classification") -> dict[str, np.ndarray]:
    """Per-channel importance (higher = keep) of every layer in ``layers`` by ``criterion``."""
    from . import CompressError

    if criterion == "l1":
        return l1_importance(model, layers)
    if criterion not in CRITERIA:
        raise CompressError(f"unknown importance criterion '{criterion}' (choose from {', '.join(CRITERIA)})")
    if x is None or len(x) == 0:
        raise CompressError(f"the {criterion} criterion needs calibration data")
    if criterion == "taylor":
        return taylor_importance(model, layers, x, y, task)
    return deeplift_importance(model, layers, x, y, task)
