"""The demo's last act: the deployed digits model adapts on the (emulated) device to rotated digits."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.table import Table

from ..ir.graph import Graph

DEMO_DOMAIN = "rotate"
DEMO_SAMPLES = 600
DEMO_BUDGET = 0.3


def adapt_on_device(out: Path, float_graph: Graph, qgraph: Graph, seed: int = 0, lr: float = 0.005) -> dict:
    """Deploy `qgraph` with a dynamic-partial training step for the Cortex-M4, stream DEMO_SAMPLES rotated
    digits through it on QEMU (host C without the ARM toolchain) and check host C == firmware."""
    from ..errors import McuforgeError, ToolchainError
    from ..targets.table import get_target
    from .codegen import generate_training_library
    from .program import TrainConfig
    from .runner import apply_state, run_train_cortex_m, run_train_host
    from .scenario import build_scenario

    t0 = time.perf_counter()
    sc = build_scenario(float_graph, qgraph, DEMO_DOMAIN, epochs=1, seed=seed, samples=DEMO_SAMPLES)
    target = get_target("cortex-m4")
    cfg = TrainConfig(lr=lr, policy="dynamic", budget=DEMO_BUDGET)
    report = generate_training_library(qgraph, out, cfg, prefix="digits", target=target)
    x, y = sc.quantize(sc.x_stream), sc.y_stream
    host = run_train_host(out, x, y)
    res = {"domain": DEMO_DOMAIN, "samples": len(x), "policy": "dynamic", "budget": DEMO_BUDGET,
           "accuracy_before": sc.accuracy(qgraph), "ram_plan_bytes": report["train"]["memory"]["ram"]["total_bytes"],
           "naive_ram_bytes": report["train"]["memory"]["naive_ram_bytes"]}
    try:
        m4 = run_train_cortex_m(out, x, y, target)
    except ToolchainError as exc:
        m4 = None
        res["cortex_m4_skipped"] = str(exc)
    final = (m4 or host).final
    res["accuracy_after"] = sc.accuracy(apply_state(qgraph, report, final))
    res["prequential_accuracy"] = float(np.mean((m4 or host).preds == y))
    if m4 is not None:
        if not all(a.equal(b) for a, b in zip(host.final, m4.final)):
            raise McuforgeError("on-device training: the Cortex-M4 firmware and host C ended with different weights")
        ins = np.asarray(m4.instructions, np.float64)
        res.update({"instructions_per_sample": float(ins.mean()), "instructions_min": int(ins.min()),
                    "instructions_max": int(ins.max()), "stack_train_step_bytes": m4.stats["stack_step"],
                    "host_equals_cortex_m4": True,
                    "estimated_ms_per_sample": target.estimate_cycles(float(ins.mean())) / target.clock_hz * 1e3})
    res["seconds"] = time.perf_counter() - t0
    return res


def adaptation_table(res: dict) -> Table:
    t = Table(title=f"on-device adaptation: {res['samples']} {res['domain']}d digits, one training step each "
                    f"(fully quantized SGD, dynamic partial updates at {res['budget']:g} of the backward MACs)",
              header_style="bold")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("accuracy on rotated test digits: before / after", f"{res['accuracy_before']:.2%} / "
              f"{res['accuracy_after']:.2%}")
    if "instructions_per_sample" in res:
        t.add_row("instructions per training sample (Cortex-M4, exact, QEMU)",
                  f"{res['instructions_per_sample']:,.0f} ({res['instructions_min']:,} .. {res['instructions_max']:,})")
        t.add_row("estimated time per sample at 120 MHz", f"{res['estimated_ms_per_sample']:.1f} ms")
        t.add_row("Cortex-M4 firmware vs host C: final weights", "[green]identical[/]")
    t.add_row("training RAM (planned; naive layout)", f"{res['ram_plan_bytes']:,} B ({res['naive_ram_bytes']:,} B)")
    return t
