"""Decision mechanisms of early-exit networks: the integer specification.

Every exit ends in an int8 softmax whose output quantization is scale 1/256, zero point -128, so
``u = q + 128`` (0..255) is the class probability in 1/256. All decisions are integer functions of
``u`` and of the state kept between invocations, so the generated C (eenn runtime) reproduces them
exactly; thresholds are integers in the same units.

Exits are numbered 0..E-1; exit E-1 is the backbone's own classifier (always final). Segment k of the
backbone runs before exit k can be evaluated; exit k < E-1 evaluates head k.

kinds (``Decision.kind``):

* ``none``:       always the final exit (the single-exit model).
* ``confidence``: stop at the first exit k < E-1 with max(u) >= T[k].
* ``margin``:     stop at the first exit k < E-1 with top1(u) - top2(u) >= T[k].
* ``entropy``:    stop at the first exit k < E-1 with sum_i ENTROPY_Q12[u_i] <= T[k],
                  ENTROPY_Q12[u] = round(-(u/256) ln(u/256) * 4096) (0 for u = 0).
* ``difference``  (Difference Detection): evaluate exit 0 only; if a reference scene is held,
                  sum_i |u_i - ref_i| <= T[0] and argmax(u) == argmax(ref), answer the reference
                  scene's class at exit 0. Otherwise run the full network (segments 0..E-1, head 0
                  already run), answer the final exit's class, and make (u of exit 0, that class) the
                  new reference. The class check is ours (Sponner et al. use the distance alone): an
                  early exit that is confidently wrong puts two different scenes within a small
                  distance, and one missed change costs the whole next scene; with the check the
                  accuracy no longer falls off a cliff as T grows (benchmarks/eenn.py).
* ``patience``    (Temporal Patience): at each exit k < E-1, stop if a previous result is held,
                  argmax(u) equals it and max(u) >= T[k] (T[k] = 0: class agreement alone); else go
                  on; the final exit always stops. The answer becomes the previous result.

argmax ties go to the lowest class index. ``reset()`` forgets the state (new stream).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import McuforgeError

KINDS = ("none", "confidence", "margin", "entropy", "difference", "patience")

ENTROPY_Q12 = np.zeros(256, dtype=np.int32)
_u = np.arange(1, 256, dtype=np.float64) / 256.0
ENTROPY_Q12[1:] = np.floor(-_u * np.log(_u) * 4096.0 + 0.5).astype(np.int32)
del _u


class DecisionError(McuforgeError):
    """A decision mechanism that cannot be used (unknown kind, wrong number of thresholds)."""


@dataclass
class Decision:
    kind: str = "confidence"
    thresholds: list[int] = field(default_factory=list)   # one per non-final exit (difference: [T])

    def check(self, n_exits: int) -> None:
        if self.kind not in KINDS:
            raise DecisionError(f"unknown decision mechanism {self.kind!r}; choose from {', '.join(KINDS)}")
        want = {"none": 0, "difference": 1}.get(self.kind, n_exits - 1)
        if len(self.thresholds) != want:
            raise DecisionError(f"decision {self.kind!r} on {n_exits} exits needs {want} threshold(s), "
                                f"got {len(self.thresholds)}")
        if self.kind == "difference" and n_exits < 2:
            raise DecisionError("difference detection needs an early exit besides the final one")

    def to_json(self) -> dict:
        return {"kind": self.kind, "thresholds": [int(t) for t in self.thresholds]}

    @classmethod
    def from_json(cls, d: dict) -> "Decision":
        return cls(d["kind"], [int(t) for t in d.get("thresholds", [])])


@dataclass(frozen=True)
class Outcome:
    cls: int                 # the answer
    exit: int                # the exit that answered (segments 0..exit ran)
    heads: tuple[int, ...]   # the early-exit heads that were evaluated


def argmax(u: np.ndarray) -> int:
    return int(np.argmax(u))  # numpy returns the first maximum: lowest index on ties


def _score_stops(kind: str, u: np.ndarray, t: int) -> bool:
    u = u.astype(np.int32)
    if kind == "confidence":
        return int(u.max()) >= t
    if kind == "margin":
        top = np.sort(u)[::-1]
        return int(top[0]) - int(top[1] if len(top) > 1 else 0) >= t
    if kind == "entropy":
        return int(ENTROPY_Q12[u].sum()) <= t
    raise AssertionError(kind)


class Decider:
    """One stream's decisions. ``step(exit_output)`` asks ``exit_output(k)`` (u of exit k, running
    whatever it needs) lazily, in the order the C runtime does."""

    def __init__(self, decision: Decision, n_exits: int) -> None:
        decision.check(n_exits)
        self.decision, self.n_exits = decision, n_exits
        self.reset()

    def reset(self) -> None:
        self.valid = False
        self.prev = 0
        self.ref: np.ndarray | None = None

    def step(self, exit_output: Callable[[int], np.ndarray]) -> Outcome:
        kind, T, last = self.decision.kind, self.decision.thresholds, self.n_exits - 1
        if kind == "none":
            c = argmax(exit_output(last))
            return Outcome(c, last, ())
        if kind == "difference":
            u0 = exit_output(0).astype(np.int32)
            if self.valid and argmax(u0) == argmax(self.ref) and int(np.abs(u0 - self.ref).sum()) <= T[0]:
                return Outcome(self.prev, 0, (0,))
            c = argmax(exit_output(last))
            self.valid, self.prev, self.ref = True, c, u0
            return Outcome(c, last, (0,))
        for k in range(last):
            u = exit_output(k)
            if kind == "patience":
                c = argmax(u)
                if self.valid and c == self.prev and int(u.max()) >= T[k]:
                    return Outcome(c, k, tuple(range(k + 1)))
            elif _score_stops(kind, u, T[k]):
                c = argmax(u)
                self.valid, self.prev = True, c
                return Outcome(c, k, tuple(range(k + 1)))
        c = argmax(exit_output(last))
        self.valid, self.prev = True, c
        return Outcome(c, last, tuple(range(last)))


def simulate(decision: Decision, exit_u: Sequence[np.ndarray]) -> list[Outcome]:
    """Decisions over a stream from precomputed exit outputs: exit_u[k] has shape (n_samples, classes)
    (u = int8 softmax output + 128). The state runs through the stream in order."""
    n = len(exit_u[0])
    if any(len(a) != n for a in exit_u):
        raise DecisionError("every exit needs outputs for every sample of the stream")
    d = Decider(decision, len(exit_u))
    return [d.step(lambda k, i=i: exit_u[k][i]) for i in range(n)]


def u_from_int8(q: np.ndarray) -> np.ndarray:
    """u (0..255) from an exit's int8 softmax output (scale 1/256, zero point -128)."""
    return q.astype(np.int32) + 128
