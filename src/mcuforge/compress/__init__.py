"""Make models fit: structured pruning guided by a layer-wise sensitivity analysis and by channel
importance (L1 magnitude, Taylor, DeepLIFT relevance), searched against a budget on a target.

    importance.py   per-channel importance criteria, prunable layers
    prune.py        structured (Torch-Pruning dependency graph) and unstructured pruning
    sensitivity.py  per-layer sensitivity analysis, global weighted rates, the chart
    cost.py         instructions / flash / RAM estimates calibrated by one QEMU measurement
    search.py       `mcuforge compress`: set-up, Optuna search, deploy and measure the chosen model
"""
from ..errors import McuforgeError


class CompressError(McuforgeError):
    """A compression request cannot be served (unknown criterion, impossible budget, bad study)."""


__all__ = ["CompressError"]
