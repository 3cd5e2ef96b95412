"""Structured pruning (channels physically removed, with Torch-Pruning's dependency graph) and
unstructured pruning (weights zeroed), at given per-layer rates.

Structured: removing output channel c of a prunable layer also removes what is coupled to it (its
batch-norm entries, the depthwise conv channel it feeds, input channel c of every consumer, residual
partners); torch_pruning.DependencyGraph finds those groups. The pruned model is an ordinary smaller
nn.Module: it exports with torch.export and deploys as any other.
"""
from __future__ import annotations

import copy

import numpy as np


def _pruner_fn(mod):
    import torch_pruning as tp
    import torch.nn as nn

    if isinstance(mod, nn.Linear):
        return tp.prune_linear_out_channels
    return tp.prune_conv_out_channels


def out_channels(mod) -> int:
    return int(mod.weight.shape[0])


def kept_channels(n: int, rate: float, round_to: int = 4, min_channels: int = 2) -> int:
    """Channels left of ``n`` after pruning ``rate`` of them: rounded up to a multiple of ``round_to``
    (the DSP kernels run fastest on channel counts divisible by 4: other counts take remainder paths)
    and never fewer than ``min_channels``."""
    keep = n - int(round(float(np.clip(rate, 0.0, 1.0)) * n))
    if round_to > 1 and n >= 2 * round_to:
        keep = -(-keep // round_to) * round_to
    return int(min(n, max(keep, min(min_channels, n))))


def prune_structured(model, example, rates: dict[str, float], scores: dict[str, np.ndarray],
                     round_to: int = 4, min_channels: int = 2):
    """A pruned copy of ``model``: in every layer of ``rates``, the lowest-scored output channels are
    removed (``scores[layer]``, one score per channel, higher = keep). The original is untouched."""
    import torch
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    if not any(r > 0 for r in rates.values()):
        return pruned
    graph = tp.DependencyGraph().build_dependency(pruned, example_inputs=example, verbose=False)
    mods = dict(pruned.named_modules())
    for name, rate in rates.items():
        mod = mods[name]
        n = out_channels(mod)
        score = np.asarray(scores[name], np.float64)
        if len(score) != n:  # already pruned through a coupled layer (e.g. a residual partner)
            continue
        keep = kept_channels(n, rate, round_to, min_channels)
        if keep >= n:
            continue
        drop = np.argsort(score, kind="stable")[: n - keep]
        group = graph.get_pruning_group(mod, _pruner_fn(mod), idxs=sorted(int(i) for i in drop))
        if graph.check_pruning_group(group):
            group.prune()
    with torch.no_grad():
        pruned(example)  # fails here, not later, if the pruned shapes are inconsistent
    return pruned


def prune_unstructured(model, rates: dict[str, float]):
    """A copy of ``model`` with the smallest-magnitude ``rate`` of each layer's weights set to zero
    (kept zero during fine-tuning by ``keep_zeros``)."""
    import torch

    pruned = copy.deepcopy(model).eval()
    mods = dict(pruned.named_modules())
    with torch.no_grad():
        for name, rate in rates.items():
            w = mods[name].weight
            k = int(round(float(np.clip(rate, 0, 1)) * w.numel()))
            if k == 0:
                continue
            cut = w.abs().flatten().kthvalue(k).values
            w[w.abs() <= cut] = 0.0
    return pruned


def channel_counts(model, layers: list[str]) -> dict[str, int]:
    mods = dict(model.named_modules())
    return {n: out_channels(mods[n]) for n in layers}
