"""Costs of the parts of an early-exit network, per device, and of one decision on a mapping.

Instructions are exact: the combined int8 graph (backbone + every candidate exit, see ``augment``) is
built into Cortex-M4 firmware (DSP kernels) and ``mcuforge bench`` counts every layer's instructions
on QEMU (instruction-counting TCG plugin); a segment or head costs the sum of its layers, plus the
invocation overhead of one library call (the part of the count outside the layers). MACs come from
the op definitions.

Time and energy model (an estimate; say so wherever it is shown):

    time on an MCU      = instructions x CPI(core) / clock         (targets.table: CPI and clock)
    time on the edge CPU = instructions / ips                       (M4-instruction equivalents per s)
    energy              = sum over devices of active power x time on it
                          + bytes crossing a link x energy per byte  (link: network.LinkModel)
    link time           = latency + bytes / bandwidth, per crossing

Idle and sleep power, the radio's fixed wake-up cost beyond ``latency`` and the decision logic
itself (a few hundred instructions) are not modelled. Active powers are datasheet-typical run-mode
figures at 3.3 V (order of magnitude; see ``DEVICES[...].source``).
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import McuforgeError
from .augment import Augmented, slice_graph
from .decisions import Outcome
from .network import LinkModel

ENERGY_MODEL = ("energy = active power x time per device (instructions x CPI / clock; edge CPU: "
                "instructions / ips) + bytes over a link x energy per byte; idle power not modelled; "
                "powers are datasheet-typical run-mode figures at 3.3 V")


class CostError(McuforgeError):
    """A device that is not in the table, or costs that do not match the candidates."""


@dataclass(frozen=True)
class Device:
    name: str
    clock_hz: float
    cycles_per_instruction: float     # per Cortex-M4 instruction of the int8 kernels
    active_power_w: float
    source: str

    def seconds(self, instructions: float) -> float:
        return instructions * self.cycles_per_instruction / self.clock_hz


def _mcu(name: str, power_w: float, source: str) -> Device:
    from ..targets.table import get_target

    t = get_target(name)
    return Device(name, float(t.clock_hz), float(t.core.cpi), power_w, source)


def devices() -> dict[str, Device]:
    return {
        "cortex-m4": _mcu("cortex-m4", 0.110e-3 * 120 * 3.3,
                          "STM32L4R5 (Cortex-M4, 120 MHz) datasheet: run mode ~110 uA/MHz from flash "
                          "-> 13 mA x 3.3 V = 44 mW"),
        "cortex-m7": _mcu("cortex-m7", 0.280e-3 * 400 * 3.3,
                          "STM32H743 (Cortex-M7, 400 MHz) datasheet: run mode ~280 uA/MHz "
                          "-> 112 mA x 3.3 V = 0.37 W"),
        # A Raspberry-Pi-3-class gateway (4x Cortex-A53, 1.4 GHz, NEON): int8 kernels do about two
        # Cortex-M4 instructions' worth of work per cycle (an assumption), ~2 W above idle under load.
        "edge-cpu": Device("edge-cpu", 1.4e9, 0.5, 2.0,
                           "Cortex-A53 quad at 1.4 GHz (Raspberry Pi 3 B+ class): ~2 W above idle under load; "
                           "0.5 cycles per M4-kernel instruction assumed (NEON)"),
    }


def parse_targets(text: str | list[str]) -> list[str]:
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    table = devices()
    bad = [t for t in names if t not in table]
    if bad or not names:
        raise CostError(f"unknown target {', '.join(bad) or '(none)'} for the eenn mapping; "
                        f"choose 1 to 3 of {', '.join(table)}")
    if len(names) > 3 or len(set(names)) != len(names):
        raise CostError(f"--targets takes 1 to 3 different devices, got {', '.join(names)}")
    return names


@dataclass
class CandidateCosts:
    """Per-part costs of every candidate: backbone prefix sums at each cut, every head, the final."""

    target: str                       # where instructions were counted
    invoke_overhead: float            # instructions of one library call outside its layers
    backbone_instr: float             # the whole backbone (without overhead)
    backbone_macs: int
    cut_instr: list[float]            # backbone instructions up to cut k
    cut_macs: list[int]
    cut_bytes: list[int]              # bytes of the cut tensor (int8)
    head_instr: dict[str, float]      # "cut{k}/{arch}" -> instructions
    head_macs: dict[str, int]
    layers: dict[str, float]          # node name -> instructions (the measurement)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "CandidateCosts":
        return cls(**d)

    def parts(self, exits: list[tuple[int, str]]) -> tuple[list[float], list[float], list[int], list[int]]:
        """(segment instructions, head instructions, segment MACs, head MACs) for a configuration;
        every part includes one invocation overhead."""
        exits = sorted(exits)
        ci = [0.0] + [self.cut_instr[c] for c, _ in exits] + [self.backbone_instr]
        cm = [0] + [self.cut_macs[c] for c, _ in exits] + [self.backbone_macs]
        seg_i = [b - a + self.invoke_overhead for a, b in zip(ci[:-1], ci[1:])]
        seg_m = [b - a for a, b in zip(cm[:-1], cm[1:])]
        head_i = [self.head_instr[f"cut{c}/{a}"] + self.invoke_overhead for c, a in exits]
        head_m = [self.head_macs[f"cut{c}/{a}"] for c, a in exits]
        return seg_i, head_i, seg_m, head_m


def measure_candidate_costs(aug: Augmented, target: str = "cortex-m4", samples: int = 2) -> CandidateCosts:
    """Count the instructions of every layer of the combined graph on QEMU (see the module doc)."""
    from ..codegen import generate
    from ..ops import get_op
    from ..targets.bench import bench
    from ..targets.table import get_target

    tgt = get_target(target)
    g = aug.graph
    rng = np.random.default_rng(0)
    shape = g.tensors[aug.input].shape
    xq = rng.integers(-128, 128, size=(samples,) + tuple(shape[1:])).astype(np.int8)
    with tempfile.TemporaryDirectory(prefix="mcuforge-eenn-cost-") as tmp:
        generate(g, Path(tmp) / "lib", prefix="eenn_all", target=tgt)
        res = bench(Path(tmp) / "lib", tgt, inputs=[xq])
    layers = {row["name"]: float(row["instructions"]) for row in res["layers"]}
    missing = [n.name for n in g.nodes if n.name not in layers]
    if missing:
        raise CostError(f"the profile has no count for layer(s) {', '.join(missing[:4])}")
    macs = {n.name: int(get_op(n.op).macs(n, g)) for n in g.nodes}
    overhead = float(res["instructions"]["per_inference"]) - float(res["instructions"]["layers_sum"])

    def part(a: str, b: str) -> tuple[float, int]:
        nodes = slice_graph(g, a, b).nodes
        return float(sum(layers[n.name] for n in nodes)), int(sum(macs[n.name] for n in nodes))

    bi, bm = part(aug.input, aug.final)
    cut = [part(aug.input, c.tensor) for c in aug.cuts]
    heads = {f"cut{c.cut}/{c.arch}": part(aug.cuts[c.cut].tensor, c.output) for c in aug.candidates}
    return CandidateCosts(target, max(0.0, overhead), bi, bm, [c[0] for c in cut], [c[1] for c in cut],
                          [int(np.prod(c.shape)) for c in aug.cuts], {k: v[0] for k, v in heads.items()},
                          {k: v[1] for k, v in heads.items()}, layers)


def candidate_costs(aug: Augmented, cache_dir: str | Path | None, target: str = "cortex-m4") -> CandidateCosts:
    """``measure_candidate_costs``, cached as costs_<target>.json in ``cache_dir`` (keyed by the model)."""
    f = Path(cache_dir) / f"costs_{target}.json" if cache_dir else None
    key = aug.meta.get("model_sha")
    if f is not None and f.is_file():
        try:
            d = json.loads(f.read_text())
            if d.get("model_sha") == key:
                return CandidateCosts.from_json(d["costs"])
        except (ValueError, KeyError, TypeError):
            pass
    costs = measure_candidate_costs(aug, target)
    if f is not None:
        tmp = f.with_suffix(".json.partial")
        tmp.write_text(json.dumps({"model_sha": key, "costs": costs.to_json()}))
        tmp.replace(f)
    return costs


@dataclass
class SampleCost:
    instructions: float
    macs: float
    seconds: float
    joules: float
    link_bytes: int


def outcome_cost(outcome: Outcome, seg_i: list[float], head_i: list[float], seg_m: list[int], head_m: list[int],
                 cut_bytes: list[int], mapping: list[str], link: LinkModel,
                 table: dict[str, Device] | None = None) -> SampleCost:
    """The cost of one decision: what ran (segments 0..exit, the heads evaluated) on the devices of
    ``mapping`` (one per segment; heads run with their segment), plus each link crossing on the way."""
    table = table or devices()
    instr = macs = secs = joules = 0.0
    nbytes = 0
    for k in range(outcome.exit + 1):
        dev = table[mapping[k]]
        if k > 0 and mapping[k] != mapping[k - 1]:
            nbytes += cut_bytes[k - 1]
            t = link.latency_s + cut_bytes[k - 1] / link.bandwidth_bytes_s
            secs += t
            joules += cut_bytes[k - 1] * link.energy_per_byte_j
        part_i = seg_i[k] + (head_i[k] if k in outcome.heads else 0.0)
        macs += seg_m[k] + (head_m[k] if k in outcome.heads else 0)
        t = dev.seconds(part_i)
        instr += part_i
        secs += t
        joules += dev.active_power_w * t
    return SampleCost(instr, macs, secs, joules, nbytes)
