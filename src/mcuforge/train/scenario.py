"""The adaptation scenario: a digits CNN trained in float, deployed int8, adapted on device to a shifted
domain; float32 PyTorch fine-tuning of the same layers on the same samples in the same order as the
baseline.

Domains (applied to sklearn's 8x8 digits in [0, 1], deterministic per seed):

* ``rotate``: every digit rotated by 30 degrees (bilinear), as a mounted-askew camera sees them;
* ``sensor``: a different sensor: shifted one pixel right, contrast reduced to 70 % on a raised
  background, Gaussian noise (sigma 0.15), clipped to [0, 1];
* ``invert``: light digits on a dark background (1 - x).

The adaptation stream is the shifted training split in a seeded order (repeated `epochs` times); the
shifted test split measures accuracy before and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..ir.graph import Graph

DOMAINS = ("rotate", "sensor", "invert")


def shift_domain(x: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """x: float32 (N, 1, 8, 8) in [0, 1] -> the same digits in domain `kind`."""
    rng = np.random.default_rng(seed)
    if kind == "rotate":
        from scipy.ndimage import rotate

        y = np.stack([rotate(im[0], 30, reshape=False, order=1, mode="constant")[None] for im in x])
    elif kind == "sensor":
        y = np.roll(x, 1, axis=3)
        y[..., 0] = 0
        y = 0.15 + 0.7 * y + rng.normal(0, 0.15, size=y.shape)
    elif kind == "invert":
        y = 1.0 - x
    else:
        raise InputError(f"unknown domain '{kind}' (choose from {', '.join(DOMAINS)})")
    return np.clip(y, 0, 1).astype(np.float32)


@dataclass
class Scenario:
    float_graph: Graph  # BN folded, float (the baseline's parameters)
    qgraph: Graph  # deployed int8
    x_stream: np.ndarray  # float32, IR layout (N, 8, 8, 1): the adaptation samples in order
    y_stream: np.ndarray
    x_test: np.ndarray  # shifted test split, IR layout
    y_test: np.ndarray
    x_test_clean: np.ndarray
    domain: str

    def quantize(self, x: np.ndarray) -> np.ndarray:
        return self.qgraph.tensors[self.qgraph.inputs[0]].quant.quantize(x)

    def accuracy(self, graph: Graph, clean: bool = False) -> float:
        from .. import reference

        x = self.x_test_clean if clean else self.x_test
        return float(np.mean(np.argmax(reference.run(graph, [self.quantize(x)])[0], -1) == self.y_test))


def digits_model(out: Path | None = None, epochs: int = 20, seed: int = 0, progress=None) -> tuple[Graph, Graph]:
    """The demo's digits CNN trained in float (cached in `out` as digits_float.mcf / digits_int8.mcf)."""
    from ..ir.serialize import load_graph, save_graph

    if out is not None and (Path(out) / "digits_int8.mcf").is_file():
        return load_graph(Path(out) / "digits_float.mcf"), load_graph(Path(out) / "digits_int8.mcf")
    import torch

    from ..demo import digits_cnn, digits_split, train_classifier
    from ..frontends import to_ir_layout
    from ..frontends.torch import from_exported
    from ..quant.ptq import quantize

    x_train, _, y_train, _ = digits_split(seed)
    model = train_classifier(digits_cnn(), x_train, y_train, epochs, seed, progress)
    ep = torch.export.export(model, (torch.from_numpy(x_train[:1]),))
    graph = from_exported(ep, name="digits_cnn")
    qgraph = quantize(graph, [to_ir_layout(graph, graph.inputs[0], x_train)])
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        save_graph(graph, Path(out) / "digits_float.mcf")
        save_graph(qgraph, Path(out) / "digits_int8.mcf")
    return graph, qgraph


def build_scenario(float_graph: Graph, qgraph: Graph, domain: str = "rotate", epochs: int = 1, seed: int = 0,
                   samples: int | None = None, order_seed: int | None = None) -> Scenario:
    """The shifted splits (seed: split and noise) and the adaptation stream (order_seed, default seed)."""
    from ..demo import digits_split
    from ..frontends import to_ir_layout

    x_train, x_test, y_train, y_test = digits_split(seed)
    xs = shift_domain(x_train, domain, seed + 1)
    xt = shift_domain(x_test, domain, seed + 2)
    rng = np.random.default_rng((seed if order_seed is None else order_seed) + 3)
    order = np.concatenate([rng.permutation(len(xs)) for _ in range(epochs)])
    if samples is not None:
        order = order[:samples]
    name = qgraph.inputs[0]
    ir = lambda a: to_ir_layout(qgraph, name, a)  # noqa: E731
    return Scenario(float_graph, qgraph, ir(xs[order]), y_train[order], ir(xt), y_test, ir(x_test), domain)


def float_finetune(sc: Scenario, trainable: list[str], lr: float, momentum: float = 0.0,
                   lr_halve_every: int = 0) -> dict:
    """The float32 baseline: SGD (batch 1) of the same layers of the float model on the same stream."""
    import torch

    from .torch_ref import IRModule, finetune_float

    def acc(m, x) -> float:
        with torch.no_grad():
            return float((m(torch.from_numpy(x)).argmax(-1).numpy() == sc.y_test).mean())

    before = acc(IRModule(sc.float_graph), sc.x_test)
    m = finetune_float(sc.float_graph, sc.x_stream, sc.y_stream, trainable, lr, momentum,
                       lr_halve_every=lr_halve_every)
    return {"accuracy_before": before, "accuracy_after": acc(m, sc.x_test),
            "accuracy_clean_after": acc(m, sc.x_test_clean)}
