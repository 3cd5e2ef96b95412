"""Augmentation: a trained classifier -> candidate exits -> an int8 early-exit network.

The flow (Sponner et al.'s augmentation, on mcuforge's IR):

1. The backbone (the trained model with an int8 softmax appended, so that its output is an exit like
   any other) is imported with the torch frontend.
2. Candidate exit points are the tensors where the IR graph can be cut: right after the node that
   writes them, nothing else computed so far is still needed (no skip connection crosses), they are
   feature maps (rank 4), and enough of the backbone's MACs remain after them to be worth skipping.
3. The float backbone runs once over the training split; the features at every candidate are cached,
   and exit branches (``HEAD_ARCHS``) are trained on them with the backbone frozen.
4. Every trained branch is exported with torch.export and grafted onto the float backbone graph at
   its cut tensor; the combined graph is quantized ONCE (min/max calibration). So every tensor of the
   backbone has the quantization it has in the backbone alone, and segment k's output quantization is
   segment k+1's input quantization by construction. ``slice_graph`` then cuts segments and heads out
   of the combined int8 graph; the chain of segments computes exactly the int8 single-exit model.
5. ``exit_outputs`` runs the combined int8 graph (numpy integer reference) on any inputs: the outputs
   of every candidate exit at once, which the search and the stream evaluation use without retraining.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import GraphError
from ..ir.graph import Graph, Tensor
from .network import EarlyExitNetwork, EennError, LinkModel
from .decisions import Decision

HEAD_ARCHS = ("pool_fc", "conv_pool_fc")
HEAD_ARCH_HELP = {"pool_fc": "global average pooling + dense",
                  "conv_pool_fc": "3x3 (1-D: 1x3) conv, stride 2, 32 channels, ReLU + global average pooling + dense"}
MIN_REMAINING_MACS = 0.10   # a cut with less than this share of the MACs after it saves too little


# --- the backbone -----------------------------------------------------------------------------------

@dataclass
class Backbone:
    """A trained zoo model ready to augment: the deployable torch module, its spec and data set."""

    name: str
    module: object                  # torch.nn.Module (eval, exportable)
    spec: object                    # zoo.ModelSpec
    data: str
    preset: str
    seed: int
    classes: list[str]
    calib: np.ndarray               # model inputs (torch layout) for quantization
    source: str


def load_backbone(model: str | Path, data: str | None = None, preset: str = "small", seed: int = 0,
                  train_if_missing: bool = True, on_phase=None) -> Backbone:
    """MODEL is a directory from `mcuforge train` (model.pt) or a zoo name (out/NAME is used, and
    trained with ``preset`` first if it holds no model.pt)."""
    import torch

    from .. import zoo
    from ..zoo.sinc import fix_sinc

    path = Path(model)
    if not (path / "model.pt").is_file():
        if path.exists() and path.is_dir() and str(model) not in zoo.MODELS:
            raise EennError(f"'{model}' holds no model.pt: give a zoo model name or a directory "
                            f"written by `mcuforge train`")
        spec = zoo.get(str(model))
        path = Path("out") / spec.name
        if not (path / "model.pt").is_file():
            if not train_if_missing:
                raise EennError(f"no trained {spec.name} in {path}: run `mcuforge train {spec.name}` first")
            if on_phase:
                on_phase(f"training {spec.name} on {data or spec.data} ({preset}) into {path}")
            zoo.train(spec.name, data=data, preset=preset, out=path, seed=seed)
    try:
        ckpt = torch.load(path / "model.pt", map_location="cpu", weights_only=False)
    except Exception as e:  # corrupt checkpoint
        raise EennError(f"{path / 'model.pt'}: not a readable checkpoint ({type(e).__name__})") from None
    spec = zoo.get(ckpt["model"])
    if spec.task != "classification":
        raise EennError(f"early exits need a classifier; '{spec.name}' is a {spec.task} model")
    if data is not None and data != ckpt["data"]:
        raise EennError(f"{path} was trained on '{ckpt['data']}', not '{data}'")
    net = spec.build(tuple(ckpt["input_shape"]), ckpt["n_out"])
    net.load_state_dict(ckpt["state_dict"])
    net = fix_sinc(net).eval()
    if hasattr(net, "for_export"):
        net = net.for_export().eval()
    metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").is_file() else {}
    classes = list(metrics.get("data_meta", {}).get("classes") or [str(i) for i in range(ckpt["n_out"])])
    return Backbone(spec.name, net, spec, ckpt["data"], ckpt.get("preset", preset), int(ckpt.get("seed", seed)),
                    classes, np.load(path / "calib.npy"), str(path))


# --- cutting graphs ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CutPoint:
    tensor: str                 # IR tensor after which the backbone can be cut
    node: str                   # the node that writes it
    shape: tuple[int, ...]      # IR shape (1, H, W, C); 1-D signals: (1, 1, L, C)
    macs_before: int            # backbone MACs up to and including `node`


def node_macs(graph: Graph) -> dict[str, int]:
    from ..ops import get_op

    return {n.name: int(get_op(n.op).macs(n, graph)) for n in graph.nodes}


def cut_points(graph: Graph, min_remaining: float = MIN_REMAINING_MACS) -> list[CutPoint]:
    """Tensors where ``graph`` can be cut into two consecutive parts joined by that tensor alone."""
    macs = node_macs(graph)
    total = max(1, sum(macs.values()))
    last_use: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        for t in n.inputs:
            if t and not graph.tensors[t].is_const:
                last_use[t] = i
    for t in graph.outputs:
        last_use[t] = len(graph.nodes)
    live = {t for t in graph.inputs}
    done, out = 0, []
    for i, n in enumerate(graph.nodes):
        done += macs[n.name]
        live.update(n.outputs)
        live = {t for t in live if last_use.get(t, -1) > i}
        t = n.outputs[0]
        if (live == {t} and len(graph.tensors[t].shape) == 4 and n.op != "reshape"
                and i < len(graph.nodes) - 1 and (total - done) / total >= min_remaining):
            out.append(CutPoint(t, n.name, tuple(graph.tensors[t].shape), done))
    return out


def slice_graph(graph: Graph, input_tensor: str, output_tensor: str, name: str | None = None) -> Graph:
    """The part of ``graph`` that computes ``output_tensor`` from ``input_tensor`` alone, as a graph
    of its own (tensors, constants and quantization copied). An error if it needs any other input."""
    needed, nodes = {output_tensor}, []
    for n in reversed(graph.nodes):
        if any(o in needed for o in n.outputs):
            nodes.append(n)
            needed.update(t for t in n.inputs if t and t != input_tensor and not graph.tensors[t].is_const)
    nodes.reverse()
    produced = {o for n in nodes for o in n.outputs}
    dangling = sorted(needed - produced - {input_tensor})
    if dangling:
        raise GraphError(f"cannot cut '{graph.name}' between '{input_tensor}' and '{output_tensor}': "
                         f"the part also reads {', '.join(dangling[:4])}")
    g = Graph(name or graph.name)
    g.inputs, g.outputs = [input_tensor], [output_tensor]
    for t in [input_tensor] + [t for n in nodes for t in list(n.inputs) + list(n.outputs)]:
        if t and t not in g.tensors:
            g.tensors[t] = graph.tensors[t]
    g.nodes = list(nodes)
    g = g.copy()
    io = {t: v for t, v in graph.meta.get("io", {}).items() if t in (input_tensor, output_tensor)}
    g.meta = {k: v for k, v in graph.meta.items() if k != "io"}
    if io:
        g.meta["io"] = io
    g.validate()
    return g


def graft(graph: Graph, part: Graph, at: str, prefix: str) -> str:
    """Add ``part`` (one input, one output) to ``graph`` reading tensor ``at``; its tensors and nodes
    get ``prefix``. Returns the name of the grafted output, which becomes a graph output."""
    src = part.inputs[0]
    if tuple(part.tensors[src].shape) != tuple(graph.tensors[at].shape):
        raise GraphError(f"'{part.name}' reads {part.tensors[src].shape}, '{at}' is {graph.tensors[at].shape}")
    rename = {src: at}
    for t, v in part.tensors.items():
        if t != src:
            rename[t] = graph.unique_name(prefix + t)
            graph.add_tensor(Tensor(rename[t], v.shape, v.dtype, v.quant, v.data))
    for n in part.nodes:
        graph.add_node(n.op, [rename.get(t, t) if t else t for t in n.inputs], [rename[t] for t in n.outputs],
                       name=prefix + n.name, **n.attrs)
    out = rename[part.outputs[0]]
    graph.outputs.append(out)
    return out


# --- exit branches ----------------------------------------------------------------------------------

def make_head(arch: str, shape: tuple[int, ...], n_classes: int, width: int = 32, seed: int = 0):
    """Exit branch ``arch`` for IR feature shape (1, H, W, C), as a torch module on NCHW input that
    ends in a softmax (``.body`` gives the logits, for training)."""
    import torch
    import torch.nn as nn

    if arch not in HEAD_ARCHS:
        raise EennError(f"unknown exit branch architecture {arch!r}; choose from {', '.join(HEAD_ARCHS)}")
    torch.manual_seed(seed)
    _, h, w, c = shape
    if arch == "pool_fc":
        body = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_classes))
    else:
        k, s, p = ((1, 3), (1, 2), (0, 1)) if h == 1 else (3, 2, 1)
        body = nn.Sequential(nn.Conv2d(c, width, k, s, p), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(width, n_classes))

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body
            self.softmax = nn.Softmax(dim=1)

        def forward(self, x):
            return self.softmax(self.body(x))

    return Head()


def nchw(features: np.ndarray) -> np.ndarray:
    """IR channel-last features (N, H, W, C) -> torch layout (N, C, H, W)."""
    return np.ascontiguousarray(features.transpose(0, 3, 1, 2))


def cache_features(graph: Graph, x_ir: np.ndarray, tensors: list[str], batch: int = 128) -> dict[str, np.ndarray]:
    """Run the float backbone over ``x_ir`` once; the values of ``tensors`` for every sample."""
    from .. import reference

    want, out = set(tensors), {t: [] for t in tensors}

    def observe(name, value):
        if name in want:
            out[name].append(np.asarray(value, np.float32))

    for i in range(0, len(x_ir), batch):
        reference.run(graph, [x_ir[i:i + batch]], mode="float", observe=observe)
    return {t: np.concatenate(v) for t, v in out.items()}


# --- the augmented model ----------------------------------------------------------------------------

@dataclass
class Candidate:
    """One candidate exit: branch ``arch`` at cut point ``cut``; ``output`` names its softmax in the
    combined graph."""

    cut: int
    arch: str
    output: str
    train_accuracy: float = 0.0


@dataclass
class Augmented:
    """The combined int8 graph (backbone + every candidate exit) and how to slice it."""

    graph: Graph                    # quantized; outputs[0] = the backbone's softmax, then the candidates
    input: str
    final: str
    cuts: list[CutPoint]
    candidates: list[Candidate]
    classes: list[str]
    meta: dict = field(default_factory=dict)

    def candidate(self, cut: int, arch: str) -> Candidate:
        for c in self.candidates:
            if c.cut == cut and c.arch == arch:
                return c
        raise EennError(f"no candidate exit {arch!r} at cut {cut}")

    def quantize_inputs(self, x_torch: np.ndarray) -> np.ndarray:
        from ..frontends import to_ir_layout

        return self.graph.tensors[self.input].quant.quantize(to_ir_layout(self.graph, self.input, x_torch))

    def exit_outputs(self, x_torch: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
        """u (int8 softmax + 128, int32) of every exit for a batch of model inputs: keys "final" and
        "cut{k}/{arch}"."""
        from .. import reference

        xq = self.quantize_inputs(x_torch)
        outs = [[] for _ in self.graph.outputs]
        for i in range(0, len(xq), batch):
            for j, y in enumerate(reference.run(self.graph, [xq[i:i + batch]], mode="int")):
                outs[j].append(y.reshape(len(y), -1).astype(np.int32) + 128)
        res = {"final": np.concatenate(outs[0])}
        for c, o in zip(self.candidates, outs[1:]):
            res[f"cut{c.cut}/{c.arch}"] = np.concatenate(o)
        return res

    def network(self, exits: list[tuple[int, str]], decision: Decision | None = None,
                mapping: list[str] | None = None, link: LinkModel | None = None,
                meta: dict | None = None) -> EarlyExitNetwork:
        """The early-exit network with branch ``arch`` at each cut of ``exits`` ((cut, arch), cuts in
        any order, at most one branch per cut)."""
        exits = sorted(exits)
        if len({c for c, _ in exits}) != len(exits):
            raise EennError("at most one exit branch per cut point")
        bounds = [self.input] + [self.cuts[c].tensor for c, _ in exits] + [self.final]
        segments = [slice_graph(self.graph, a, b, name=f"segment{k}") for k, (a, b) in
                    enumerate(zip(bounds[:-1], bounds[1:]))]
        heads = [slice_graph(self.graph, self.cuts[c].tensor, self.candidate(c, a).output, name=f"head{k}")
                 for k, (c, a) in enumerate(exits)]
        n = len(segments)
        net = EarlyExitNetwork(segments, heads, decision or Decision("none", []),
                               mapping=list(mapping) if mapping else [], link=link or LinkModel(),
                               classes=list(self.classes),
                               meta={**self.meta, "exits": [{"cut": c, "tensor": self.cuts[c].tensor, "arch": a}
                                                            for c, a in exits], **(meta or {})})
        if decision is None and n > 1:
            net.decision = Decision("confidence", [256] * (n - 1))  # never stops early: the final exit
        net.check()
        return net


def augment(backbone: Backbone, archs: tuple[str, ...] = HEAD_ARCHS, epochs: int = 30, max_cuts: int = 6,
            train_samples: int | None = None, on_phase=None) -> Augmented:
    """Candidate cut points, exit branches trained on the frozen backbone's cached features, and the
    combined int8 graph (see the module docstring)."""
    import torch

    from .. import data as datasets
    from .. import zoo
    from ..frontends import to_ir_layout
    from ..frontends.torch import from_torch
    from ..quant.ptq import quantize
    from ..zoo.trainer import fit

    phase = on_phase or (lambda s: None)
    t0 = time.perf_counter()
    phase(f"importing {backbone.name}")
    wrapped = torch.nn.Sequential(backbone.module, torch.nn.Softmax(dim=1)).eval()
    example = torch.from_numpy(np.ascontiguousarray(backbone.calib[:1], np.float32))
    graph = from_torch(wrapped, example, name=backbone.name)
    inp, final = graph.inputs[0], graph.outputs[0]
    cuts = cut_points(graph)
    if not cuts:
        raise EennError(f"'{backbone.name}' has no point where it can be cut into two parts")
    if len(cuts) > max_cuts:  # keep evenly spaced candidates (by MACs)
        keep = np.unique(np.round(np.linspace(0, len(cuts) - 1, max_cuts)).astype(int))
        cuts = [cuts[i] for i in keep]

    phase(f"caching features at {len(cuts)} cut points")
    tr = datasets.load(backbone.data, "train", backbone.preset, seed=backbone.seed)
    x_tr, y_tr = zoo.model_inputs(backbone.spec, tr.x), tr.y
    if train_samples is not None and len(x_tr) > train_samples:
        idx = np.sort(np.random.default_rng(0).choice(len(x_tr), train_samples, replace=False))
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    feats = cache_features(graph, to_ir_layout(graph, inp, x_tr), [c.tensor for c in cuts])

    combined = graph.copy()
    candidates: list[Candidate] = []
    n_classes = len(backbone.classes)
    for k, cut in enumerate(cuts):
        f = nchw(feats[cut.tensor])
        for arch in archs:
            phase(f"training exit {arch} at cut {k} ({cut.tensor}, {'x'.join(map(str, cut.shape[1:]))})")
            head = make_head(arch, cut.shape, n_classes, seed=k)
            fit(head.body, f, y_tr, "ce", epochs, seed=k, lr=3e-3, batch=64)
            with torch.no_grad():
                acc = float((head.body(torch.from_numpy(f)).argmax(1).numpy() == y_tr).mean())
            part = from_torch(head.eval(), torch.from_numpy(f[:1]), name=f"exit{k}_{arch}")
            out = graft(combined, part, cut.tensor, prefix=f"x{k}_{arch}_")
            candidates.append(Candidate(k, arch, out, acc))
    combined.validate()
    phase("quantizing backbone and exits (one calibration)")
    q = quantize(combined, [to_ir_layout(combined, inp, backbone.calib)], method="minmax")
    meta = {"model": backbone.name, "data": backbone.data, "preset": backbone.preset, "source": backbone.source,
            "archs": list(archs), "head_epochs": epochs, "augment_s": time.perf_counter() - t0,
            "cuts": [{"tensor": c.tensor, "node": c.node, "shape": list(c.shape), "macs_before": c.macs_before}
                     for c in cuts]}
    return Augmented(q, inp, final, cuts, candidates, list(backbone.classes), meta)


def single_model(backbone: Backbone) -> Graph:
    """The backbone alone (with its softmax), quantized like ``augment`` does: the reference the
    final exit must equal."""
    import torch

    from ..frontends import to_ir_layout
    from ..frontends.torch import from_torch
    from ..quant.ptq import quantize

    wrapped = torch.nn.Sequential(backbone.module, torch.nn.Softmax(dim=1)).eval()
    g = from_torch(wrapped, torch.from_numpy(np.ascontiguousarray(backbone.calib[:1], np.float32)),
                   name=backbone.name)
    return quantize(g, [to_ir_layout(g, g.inputs[0], backbone.calib)], method="minmax")


# --- persistence of the augmented model (so that search and benchmark need no retraining) -----------

def save_augmented(aug: Augmented, path: str | Path) -> Path:
    from ..ir.serialize import save_graph
    from ..outdir import staged_output_dir

    doc = {"input": aug.input, "final": aug.final, "classes": aug.classes, "meta": aug.meta,
           "cuts": [dict(tensor=c.tensor, node=c.node, shape=list(c.shape), macs_before=c.macs_before)
                    for c in aug.cuts],
           "candidates": [dict(cut=c.cut, arch=c.arch, output=c.output, train_accuracy=c.train_accuracy)
                          for c in aug.candidates]}
    with staged_output_dir(path) as stage:
        save_graph(aug.graph, stage / "augmented.mcf")
        (stage / "augmented.json").write_text(json.dumps(doc, indent=1))
    return Path(path)


def load_augmented(path: str | Path) -> Augmented:
    from ..ir.serialize import load_graph

    path = Path(path)
    doc = json.loads((path / "augmented.json").read_text())
    return Augmented(load_graph(path / "augmented.mcf"), doc["input"], doc["final"],
                     [CutPoint(c["tensor"], c["node"], tuple(c["shape"]), c["macs_before"]) for c in doc["cuts"]],
                     [Candidate(**c) for c in doc["candidates"]], doc["classes"], doc["meta"])


def augmented_for(model: str | Path, data: str | None = None, preset: str = "small", cache_dir: str | Path | None = None,
                  on_phase=None, **kw) -> Augmented:
    """``augment(load_backbone(model))``, cached in ``cache_dir`` (default: <model dir>/eenn_candidates)."""
    import hashlib

    bb = load_backbone(model, data, preset, on_phase=on_phase)
    cache = Path(cache_dir) if cache_dir else Path(bb.source) / "eenn_candidates"
    digest = hashlib.sha256((Path(bb.source) / "model.pt").read_bytes()).hexdigest()[:16]
    if (cache / "augmented.json").is_file():
        try:
            aug = load_augmented(cache)
            if aug.meta.get("model_sha") == digest:
                return aug
        except Exception:  # a damaged or stale cache is rebuilt
            pass
    aug = augment(bb, on_phase=on_phase, **kw)
    aug.meta["model_sha"] = digest
    save_augmented(aug, cache)
    return aug


def zoo_network(model: str | Path, exits: list[tuple[int, str]] | None = None, decision: Decision | None = None,
                data: str | None = None, on_phase=None) -> EarlyExitNetwork:
    """A ready EarlyExitNetwork for a zoo model (name or `mcuforge train` directory): by default the
    first and the last candidate cut with a conv_pool_fc branch each and confidence thresholds of 3/4."""
    aug = augmented_for(model, data, on_phase=on_phase)
    if exits is None:
        picks = sorted({0, len(aug.cuts) - 1})
        exits = [(c, "conv_pool_fc") for c in picks]
    if decision is None:
        decision = Decision("confidence", [192] * len(exits))
    return aug.network(exits, decision)
