"""Layer-wise sensitivity analysis (OpTC): prune each layer alone at rates 0.1 .. 0.9, without
fine-tuning, and measure the task metric on the validation split.

For every layer it records the metric at each rate, the largest rate whose metric stays at or
above the quality threshold, and a sensitivity in [0, 1]: the mean over the rates of the
metric's relative loss, (base - metric) / |base| clipped to [0, 1]. Global pruning gives each
layer a rate proportional to 1 - sensitivity.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

RATES = tuple(round(0.1 * i, 1) for i in range(1, 10))


def analyse(model, example, layers: list[str], scores: dict[str, np.ndarray], quality: Callable,
            threshold: float, rates=RATES, round_to: int = 4, progress: Callable | None = None) -> dict:
    """``quality(model) -> float`` (higher is better). Returns {"base", "threshold", "rates", "layers":
    {name: {"quality": [...], "max_rate": r, "sensitivity": s, "channels": n}}}."""
    from .prune import out_channels, prune_structured

    base = float(quality(model))
    mods = dict(model.named_modules())
    out = {"base": base, "threshold": float(threshold), "rates": list(rates), "layers": {}}
    done = 0
    for name in layers:
        qs = []
        for r in rates:
            qs.append(float(quality(prune_structured(model, example, {name: r}, scores, round_to))))
            done += 1
            if progress is not None:
                progress(done, len(layers) * len(rates))
        ok = [r for r, q in zip(rates, qs) if q >= threshold]
        # the largest rate such that it and every smaller rate stay above the threshold
        max_rate = 0.0
        for r, q in zip(rates, qs):
            if q < threshold:
                break
            max_rate = r
        drops = np.clip((base - np.asarray(qs)) / max(abs(base), 1e-12), 0.0, 1.0)
        out["layers"][name] = {"quality": qs, "max_rate": max_rate, "any_rate_ok": ok,
                               "sensitivity": float(drops.mean()), "channels": out_channels(mods[name])}
    return out


def global_rates(sens: dict, alpha: float, offsets: dict[str, float] | None = None,
                 cap: float = 0.9) -> dict[str, float]:
    """Per-layer pruning rates for global weighted pruning: alpha x (1 - s) / max(1 - s), plus optional
    per-layer offsets (the search's), clipped to [0, cap]."""
    offsets = offsets or {}
    keep = {n: 1.0 - v["sensitivity"] for n, v in sens["layers"].items()}
    top = max(keep.values()) if keep else 1.0
    return {n: float(np.clip(alpha * k / max(top, 1e-12) + offsets.get(n, 0.0), 0.0, cap)) for n, k in keep.items()}


def chart(sens: dict, path: Path, metric: str, title: str = "") -> Path:
    """One line per layer: metric vs pruning rate, the threshold, and each layer's sensitivity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4), dpi=120, gridspec_kw={"width_ratios": [3, 2]})
    rates = sens["rates"]
    for i, (name, v) in enumerate(sens["layers"].items()):
        ax.plot(rates, v["quality"], "o-", ms=3, label=f"{name} ({v['channels']} ch)", c=f"C{i % 10}")
    ax.axhline(sens["threshold"], ls="--", c="k", lw=0.8, label="threshold")
    ax.axhline(sens["base"], ls=":", c="0.5", lw=0.8, label="unpruned")
    ax.set_xlabel("pruning rate of the layer alone (no fine-tuning)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    names = list(sens["layers"])
    bx.barh(range(len(names)), [sens["layers"][n]["sensitivity"] for n in names],
            color=[f"C{i % 10}" for i in range(len(names))])
    for i, n in enumerate(names):
        bx.text(0.01, i, f"max rate {sens['layers'][n]['max_rate']:.1f}", va="center", fontsize=7)
    bx.set_yticks(range(len(names)), names, fontsize=7)
    bx.invert_yaxis()
    bx.set_xlabel("sensitivity (mean relative metric loss)")
    fig.suptitle(title or "layer sensitivity")
    from ..study import save_figure

    return save_figure(fig, path)
