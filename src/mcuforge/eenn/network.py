"""The early-exit network artifact exchanged by augmentation, search, evaluation and code generation.

A directory::

    eenn.json        classes, exits, decision, mapping, link model, per-part costs, provenance
    segment0.mcf ..  int8 backbone segments; segment k's input is segment k-1's output
    head0.mcf ..     int8 exit heads; head k reads segment k's output and ends in an int8 softmax
                     (scale 1/256, zero point -128), like the last segment

Exit k < E-1 is head k after segment k; exit E-1 is the end of the last segment. ``mapping[k]`` names
the target that runs segment k (and head k); where consecutive segments sit on different targets,
segment k's output crosses the link.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import McuforgeError
from ..ir.graph import Graph
from ..ir.serialize import load_graph, save_graph
from .decisions import Decision, Outcome

FORMAT = "mcuforge-eenn/1"


class EennError(McuforgeError):
    """An early-exit network that is malformed or cannot be built or deployed."""


@dataclass
class LinkModel:
    """A link between two targets: time = latency + bytes / bandwidth; energy = bytes * energy_per_byte."""

    bandwidth_bytes_s: float = 125_000.0     # ~1 Mbit/s (BLE 2M PHY payload rate order of magnitude)
    latency_s: float = 0.005
    energy_per_byte_j: float = 50e-9

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class EarlyExitNetwork:
    segments: list[Graph]
    heads: list[Graph]
    decision: Decision = field(default_factory=lambda: Decision("none", []))
    mapping: list[str] = field(default_factory=list)      # target per segment ("" = the single target)
    link: LinkModel = field(default_factory=LinkModel)
    classes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)              # provenance, exit accuracies, costs

    @property
    def n_exits(self) -> int:
        return len(self.segments)

    def check(self) -> None:
        if not self.segments:
            raise EennError("an early-exit network needs at least one segment")
        if len(self.heads) != len(self.segments) - 1:
            raise EennError(f"{len(self.segments)} segments need {len(self.segments) - 1} exit heads, "
                            f"got {len(self.heads)}")
        for k in range(1, len(self.segments)):
            a = self.segments[k - 1].tensors[self.segments[k - 1].outputs[0]]
            b = self.segments[k].tensors[self.segments[k].inputs[0]]
            if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
                raise EennError(f"segment {k} reads {b.shape} {b.dtype}, segment {k - 1} writes "
                                f"{a.shape} {a.dtype}")
        for k, h in enumerate(self.heads):
            a = self.segments[k].tensors[self.segments[k].outputs[0]]
            b = h.tensors[h.inputs[0]]
            if tuple(a.shape) != tuple(b.shape):
                raise EennError(f"head {k} reads {b.shape}, segment {k} writes {a.shape}")
        if self.mapping and len(self.mapping) != len(self.segments):
            raise EennError(f"mapping names {len(self.mapping)} targets for {len(self.segments)} segments")
        self.decision.check(self.n_exits)

    def cut_bytes(self, k: int) -> int:
        """Bytes of segment k's output (what crosses a link placed after segment k)."""
        g = self.segments[k]
        return int(g.tensors[g.outputs[0]].nbytes)

    def cost(self, outcome: Outcome, segment_cost: list[float], head_cost: list[float]) -> float:
        """Cost of one decision from per-part costs (instructions, MACs, seconds, joules...)."""
        return float(sum(segment_cost[: outcome.exit + 1]) + sum(head_cost[h] for h in outcome.heads))

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        self.check()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for k, g in enumerate(self.segments):
            save_graph(g, path / f"segment{k}.mcf")
        for k, g in enumerate(self.heads):
            save_graph(g, path / f"head{k}.mcf")
        doc = {"format": FORMAT, "n_exits": self.n_exits, "decision": self.decision.to_json(),
               "mapping": list(self.mapping), "link": self.link.to_json(), "classes": list(self.classes),
               "meta": self.meta}
        (path / "eenn.json").write_text(json.dumps(doc, indent=1, default=_json_default))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EarlyExitNetwork":
        path = Path(path)
        f = path / "eenn.json"
        if not f.is_file():
            raise EennError(f"{path}: not an early-exit network (no eenn.json)")
        try:
            doc = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise EennError(f"{f}: corrupt ({e})") from e
        if doc.get("format") != FORMAT:
            raise EennError(f"{f}: format {doc.get('format')!r}, expected {FORMAT!r}")
        n = int(doc["n_exits"])
        net = cls(segments=[load_graph(path / f"segment{k}.mcf") for k in range(n)],
                  heads=[load_graph(path / f"head{k}.mcf") for k in range(n - 1)],
                  decision=Decision.from_json(doc["decision"]), mapping=list(doc.get("mapping", [])),
                  link=LinkModel(**doc.get("link", {})), classes=list(doc.get("classes", [])),
                  meta=doc.get("meta", {}))
        net.check()
        return net


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)
